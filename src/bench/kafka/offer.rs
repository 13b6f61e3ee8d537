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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use super::{send_record, topic_of, BenchError};
use crate::bench::percentiles;
use crate::config::Config;
use crate::generate::{History, Spec};
use crate::kafka::producer::wall_now;
use crate::kafka::Status;
use crate::time::{Timestamp, DAY_MS};

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
    /// Events the service processed per second while the events were being offered.
    pub processed_rate: f64,
    /// Events in the broker's log but not yet processed by the service when the
    /// offering ended: how far behind it was (its consumer lag).
    pub behind_at_end: u64,
}

impl LatencyPhase {
    /// Human rendering, two lines.
    pub fn render(&self, what: &str) -> String {
        let p = |v: &[f64; 4]| format!("{:.0}/{:.0}/{:.0}/{:.0}", v[0], v[1], v[2], v[3]);
        format!(
            "latency at {what} ({} events/s offered, {:.0} achieved, {:.0} processed, {} behind at the end), {} alerts:\n\
             event-to-alert p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             by stage, p50/p90/p99/max ms: {}; the generator's produce() to append (not included): {}",
            self.offered_rate,
            self.achieved_rate,
            self.processed_rate,
            self.behind_at_end,
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
    /// Events in the broker's log so far.
    in_log: AtomicU64,
}

impl ClientContext for Upstream {}

impl ProducerContext for Upstream {
    /// The wall-clock ms of the `produce()` call.
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, r: &DeliveryResult<'_>, sent: Box<i64>) {
        if let Ok(m) = r {
            self.in_log.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = m.timestamp().to_millis() {
                let mut v = self.appended.lock().unwrap_or_else(|e| e.into_inner());
                v.push((at - *sent).max(0));
            }
        }
    }
}

/// The history going on after the benchmark's history: each offering continues on the
/// day after the last event the previous one offered, from a generator with a seed of
/// its own (the customers keep their ids). Stream time does not jump between phases: a
/// jump makes every customer due at once, which a live service sees only after a long
/// gap in its input.
pub(super) struct Continuation {
    base: Spec,
    k: u64,
    start: Timestamp,
}

impl Continuation {
    pub(super) fn after(history: &Spec) -> Continuation {
        Continuation {
            base: history.clone(),
            k: 0,
            start: Timestamp(history.start.0 + i64::from(history.days) * DAY_MS),
        }
    }

    /// The next offering's history.
    pub(super) fn next(&mut self) -> Spec {
        self.k += 1;
        Spec {
            seed: self.base.seed + self.k,
            start: self.start,
            days: self.base.days * 2,
            ..self.base.clone()
        }
    }

    /// The offering went up to `last`: the next starts the day after.
    pub(super) fn advance(&mut self, last: Timestamp) {
        self.start = Timestamp(self.start.0.max((last.0.div_euclid(DAY_MS) + 1) * DAY_MS));
    }
}

/// The generator's pacing step.
const TICK: Duration = Duration::from_millis(1);

/// One offering: what it measured, the events offered, and the event time of the last
/// one (where the history has got to).
pub(super) struct Offered {
    pub phase: LatencyPhase,
    pub events: u64,
    pub last: Timestamp,
}

/// Offers `spec`'s history at `rate` events/s for `secs` seconds to the running
/// service (which has processed `before` events so far), waits until it has processed
/// them, and takes the latencies it recorded meanwhile.
pub(super) fn offer(
    cfg: &Config,
    spec: Spec,
    rate: u32,
    secs: f64,
    status: &Status,
    before: u64,
) -> Result<Offered, BenchError> {
    // librdkafka's defaults (linger.ms 5, as the Java producer's since Kafka 4.0), as
    // the services upstream of churnsignal would produce. At 1 ms, the generator's
    // produce requests (one a millisecond) cost the broker, on the same two cores,
    // more than the service's own requests: the broker took 0.88-1.07 CPUs at 20,000
    // events/s, against 0.51 at 5 ms. Latency counts from the append either way.
    let prod: ThreadedProducer<Upstream> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("partitioner", "murmur2_random")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Upstream {
            appended: Mutex::new(Vec::new()),
            in_log: AtomicU64::new(0),
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
    let budget = Duration::from_secs_f64(secs);
    let count = (f64::from(rate) * secs).ceil() as usize;
    let (mut bytes, mut index) = (Vec::new(), Vec::new());
    for g in History::new(spec).take(count) {
        let e = g.to_event();
        let start = bytes.len();
        bytes.extend_from_slice(e.customer_id.as_bytes());
        let key_end = bytes.len();
        g.write_json(&mut bytes)?;
        bytes.pop();
        index.push((
            topic_of(cfg, e.kind.family()),
            start,
            key_end,
            bytes.len(),
            e.occurred_at,
        ));
    }
    // Paced in ticks: every event due by now goes out at once, then the generator
    // sleeps to the next tick. (Sleeping before each event cost the generator a fifth
    // of a core at 20,000 events/s, on the cores the service and the broker share; in
    // ticks, a twentieth.)
    let t1 = Instant::now();
    let processed0 = status.events.load(Ordering::Relaxed);
    let mut offered = 0u64;
    let mut last = Timestamp(0);
    let mut next = 0;
    while next < index.len() {
        let elapsed = t1.elapsed();
        if elapsed >= budget {
            break;
        }
        let due = ((elapsed.as_secs_f64() * f64::from(rate)) as usize + 1).min(index.len());
        let now = wall_now().0;
        for &(topic, start, key_end, end, time) in &index[next..due] {
            let rec = BaseRecord::with_opaque_to(topic, Box::new(now))
                .key(&bytes[start..key_end])
                .payload(&bytes[key_end..end]);
            // A wait for room in a full queue counts in the generator's part.
            send_record(&prod, rec);
            offered += 1;
            last = last.max(time);
        }
        next = due;
        let elapsed = t1.elapsed();
        let tick = TICK.mul_f64((elapsed.as_secs_f64() / TICK.as_secs_f64()).floor() + 1.0);
        std::thread::sleep(tick.saturating_sub(elapsed));
    }
    let took = t1.elapsed().as_secs_f64();
    let processed = status.events.load(Ordering::Relaxed);
    let achieved = offered as f64 / took;
    let processed_rate = processed.saturating_sub(processed0) as f64 / took;
    // Behind the broker's log, not the generator: events still in the generator's
    // queue are not the service's lag.
    let in_log = prod.context().in_log.load(Ordering::Relaxed);
    let behind_at_end = (before + in_log).saturating_sub(processed);
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
    Ok(Offered {
        phase: LatencyPhase {
            offered_rate: rate,
            achieved_rate: achieved,
            samples: lat.len(),
            latency_ms: percentiles(&lat),
            stage_ms,
            upstream_ms: percentiles(&up),
            processed_rate,
            behind_at_end,
        },
        events: offered,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    #[test]
    fn each_continuation_starts_the_day_after_the_last_event_offered() {
        let day0 = Timestamp(super::super::HISTORY_START);
        let base = Spec {
            start: day0,
            days: 10,
            seed: 7,
            ..Spec::default()
        };
        let mut c = Continuation::after(&base);
        let first = c.next();
        assert_eq!(
            first.start.0,
            day0.0 + 10 * DAY_MS,
            "right after the history"
        );
        assert_ne!(first.seed, base.seed);
        c.advance(Timestamp(day0.0 + 12 * DAY_MS + 5));
        let second = c.next();
        assert_eq!(second.start.0, day0.0 + 13 * DAY_MS);
        assert_ne!(second.seed, first.seed);
        // An offering that sent nothing leaves the start where it was.
        c.advance(Timestamp(0));
        assert_eq!(c.next().start, second.start);
    }
}
