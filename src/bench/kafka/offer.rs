//! The latency phases of `bench kafka`: with the service caught up, a continuation of
//! the history is offered at a steady rate, and every alert's latency is recorded,
//! from its input's Kafka timestamp to the alert's acknowledgement, split into stages
//! (see [`crate::kafka::trace`]).
//!
//! The benchmark's input topics take their timestamps from the broker
//! (`message.timestamp.type=LogAppendTime`), so an alert's latency counts from the
//! moment its input was in Kafka. The load generator's own part, from its `produce()`
//! call to the broker's append, is measured apart from its delivery reports: on a
//! two-core machine the generator, the broker and the service share the cores, and
//! that part is the generator's and the broker's, not churnsignal's.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use super::{topic_of, BenchError};
use crate::bench::percentiles;
use crate::config::Config;
use crate::generate::{History, Spec};
use crate::kafka::producer::wall_now;
use crate::kafka::Status;

/// What one latency phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPhase {
    /// Offered load, events/s.
    pub offered_rate: u32,
    /// Events actually offered per second.
    pub achieved_rate: f64,
    /// Alerts measured.
    pub samples: usize,
    /// Event-to-alert latency percentiles, ms: p50, p90, p99, max (from the input's
    /// append to the broker's log to the alert's acknowledgement).
    pub latency_ms: [f64; 4],
    /// The same percentiles of each stage (fetch, queue, sync, produce: see
    /// `kafka::trace`), each taken on its own (they do not add up to the total's).
    pub stage_ms: [[f64; 4]; 4],
    /// The load generator's `produce()` call to the broker's append, ms, over every
    /// event offered: not part of the latency above.
    pub upstream_ms: [f64; 4],
}

impl LatencyPhase {
    /// Human rendering, two lines.
    pub fn render(&self, what: &str) -> String {
        let p = |v: &[f64; 4]| format!("{:.0}/{:.0}/{:.0}/{:.0}", v[0], v[1], v[2], v[3]);
        format!(
            "latency at {what} ({} events/s offered, {:.0} achieved), {} alerts:\n\
             event-to-alert p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             by stage, p50/p90/p99/max ms: {}; the generator's produce() to append (not included): {}",
            self.offered_rate,
            self.achieved_rate,
            self.samples,
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2],
            self.latency_ms[3],
            crate::kafka::trace::STAGES
                .iter()
                .zip(&self.stage_ms)
                .map(|(s, v)| format!("{s} {}", p(v)))
                .collect::<Vec<_>>()
                .join(", "),
            p(&self.upstream_ms),
        )
    }
}

/// The generator's producer: records each event's `produce()` call to the broker's
/// append (the delivery report carries the broker's timestamp), ms.
struct Upstream {
    appended: Mutex<Vec<i64>>,
}

impl ClientContext for Upstream {}

impl ProducerContext for Upstream {
    /// The wall-clock ms of the `produce()` call.
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, r: &DeliveryResult<'_>, sent: Box<i64>) {
        if let Ok(m) = r {
            if let Some(at) = m.timestamp().to_millis() {
                let mut v = self.appended.lock().unwrap_or_else(|e| e.into_inner());
                v.push((at - *sent).max(0));
            }
        }
    }
}

/// Offers `spec`'s history at `rate` events/s for `secs` seconds to the running
/// service (which has processed `before` events so far), waits until it has processed
/// them, and takes the latencies it recorded meanwhile.
pub(super) fn offer(
    cfg: &Config,
    spec: Spec,
    rate: u32,
    secs: u32,
    status: &Status,
    before: u64,
) -> Result<(LatencyPhase, u64), BenchError> {
    // A short linger keeps the generator's batching small.
    let prod: ThreadedProducer<Upstream> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Upstream {
            appended: Mutex::new(Vec::new()),
        })
        .map_err(|error| BenchError::Client {
            what: "producer",
            error,
        })?;
    if let Some(l) = &status.latencies {
        l.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    // The events are made before the clock starts, so that the generator's own work
    // does not hold the offered rate down.
    let budget = Duration::from_secs(u64::from(secs));
    let count = u64::from(rate) * u64::from(secs);
    let (mut bytes, mut index) = (Vec::new(), Vec::new());
    for g in History::new(spec).take(count as usize) {
        let e = g.to_event();
        let start = bytes.len();
        bytes.extend_from_slice(e.customer_id.as_bytes());
        let key_end = bytes.len();
        g.write_json(&mut bytes)?;
        bytes.pop();
        index.push((topic_of(cfg, e.kind.family()), start, key_end, bytes.len()));
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let t1 = Instant::now();
    let mut offered = 0u64;
    for &(topic, start, key_end, end) in &index {
        let elapsed = t1.elapsed();
        if elapsed >= budget {
            break;
        }
        let due = period.mul_f64(offered as f64);
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
        let mut rec = BaseRecord::with_opaque_to(topic, Box::new(0))
            .key(&bytes[start..key_end])
            .payload(&bytes[key_end..end]);
        loop {
            rec.delivery_opaque = Box::new(wall_now().0);
            match prod.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        offered += 1;
    }
    let achieved = offered as f64 / t1.elapsed().as_secs_f64();
    prod.flush(Duration::from_secs(60))
        .map_err(|error| BenchError::Client {
            what: "flush",
            error,
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.events.load(Ordering::Relaxed) < before + offered && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The last alerts' acknowledgements.
    std::thread::sleep(Duration::from_millis(500));
    let recorded: Vec<crate::kafka::status::Latency> = status
        .latencies
        .as_ref()
        .map(|l| l.lock().map(|v| v.clone()).unwrap_or_default())
        .unwrap_or_default();
    let mut lat: Vec<i64> = recorded.iter().map(|(ms, _)| *ms).collect();
    lat.sort_unstable();
    let stage_ms: [[f64; 4]; 4] = std::array::from_fn(|k| {
        let mut v: Vec<i64> = recorded.iter().map(|(_, st)| st[k]).collect();
        v.sort_unstable();
        percentiles(&v)
    });
    let mut up = std::mem::take(
        &mut *prod
            .context()
            .appended
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    up.sort_unstable();
    Ok((
        LatencyPhase {
            offered_rate: rate,
            achieved_rate: achieved,
            samples: lat.len(),
            latency_ms: percentiles(&lat),
            stage_ms,
            upstream_ms: percentiles(&up),
        },
        offered,
    ))
}
