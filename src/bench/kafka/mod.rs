//! `churnsignal bench kafka`: the live service end to end against a real broker.
//!
//! 1. A generated history is produced into fresh topics.
//! 2. A bare rdkafka consumer, configured as the service's, reads it all and does
//!    nothing else (the ceiling).
//! 3. `run` (the same `Service` as `churnsignal run`) processes the same messages:
//!    decode, engines, alerts produced and acknowledged, offsets committed.
//!    Both rates are taken from the first message to the last, so the group join is
//!    not counted; their ratio is the cost of churnsignal's work over reading alone.
//! 4. With the service caught up, the history goes on (see `offer::Continuation`): it is
//!    offered at a fixed rate; then in probes of a few seconds, from step 3's rate
//!    down and then bisected, for the highest rate the service keeps up with while the
//!    generator offers it live on the same cores (see `sustained`); then at half
//!    that rate.
//!    Event-to-alert latency (the input's append to the broker's log to the alert's
//!    acknowledgement) is recorded for every alert of the two latency phases (see
//!    `offer`). Step 3's rate drains a backlog with the generator idle; on a machine
//!    the generator shares, live input cannot be offered at that rate, so half of it is
//!    not a rate the service could sustain live.
//! 5. Exactly-once against at-least-once: `run` in exactly-once mode (transactions
//!    every 100 ms) on the same messages, alternating with further at-least-once runs
//!    (`guarantee_trials` of each, step 3 the first at-least-once one), each in a group
//!    and with output topics of its own. Single runs on a two-core machine that also
//!    hosts the broker vary by ±15%; the medians of alternating runs compare the
//!    modes under the same conditions, and every trial's figures are reported.
//! 6. Restore: a changelog partition holding the records of `restore_customers`
//!    customers is read back into an engine, as a newly assigned partition is.

mod offer;
mod restore;
mod sustained;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use crate::config::Config;
use crate::event::Family;
use crate::generate::{History, Spec};
use crate::kafka::producer::wall_now;
use crate::kafka::{Service, StartOptions};
use crate::time::{Timestamp, DAY_MS};
use offer::Continuation;
pub use offer::LatencyPhase;
pub use sustained::Probe;

/// Where the benchmark's history starts (2024-01-01), unless that is less than six
/// histories' length before the wall clock: the same history, day after day.
const HISTORY_START: i64 = 1_704_067_200_000;

/// Settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bootstrap servers of the broker to use.
    pub brokers: String,
    /// Customers in the history.
    pub customers: u32,
    /// Days of history.
    pub days: u32,
    /// Partitions of each topic.
    pub partitions: i32,
    /// Offered load of the first latency phase, events/s (the second offers half the
    /// highest rate `run` sustained).
    pub rate: u32,
    /// Length of each latency phase, seconds.
    pub latency_secs: u32,
    /// Generator seed.
    pub seed: u64,
    /// Customers in the restore phase.
    pub restore_customers: u32,
    /// Runs of each guarantee in the exactly-once comparison (at least 1).
    pub guarantee_trials: u32,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Events in the throughput phase.
    pub events: u64,
    /// Mean JSON message size, bytes.
    pub mean_event_bytes: f64,
    /// Partitions per topic.
    pub partitions: i32,
    /// Worker threads of the service.
    pub workers: usize,
    /// Producing the history, events/s.
    pub produce_rate: f64,
    /// Bare consumer, events/s.
    pub bare_consumer_rate: f64,
    /// Events per CPU-second of the bare consumer (this process, librdkafka's threads
    /// included).
    pub bare_events_per_cpu_sec: f64,
    /// `run`, events/s (alerts acknowledged, offsets committed).
    pub run_rate: f64,
    /// run / bare.
    pub ratio: f64,
    /// CPU time of this process (all threads) while `run` processed the history, seconds.
    pub run_cpu_secs: f64,
    /// Events per CPU-second of `run` (the per-core rate; the broker's CPU not included).
    pub run_events_per_cpu_sec: f64,
    /// Alerts in the throughput phase.
    pub alerts: u64,
    /// Latency at the fixed offered rate.
    pub latency_fixed: LatencyPhase,
    /// The highest rate `run` kept up with while the generator offered it live, on
    /// the same cores (see `sustained::kept_up`): the highest rate achieved in a probe
    /// it kept up with; if none, the lowest rate it processed in a probe.
    pub sustained_rate: f64,
    /// Whether a probe confirmed `sustained_rate` (it kept up).
    pub sustained_confirmed: bool,
    /// The probes, in order.
    pub sustained_probes: Vec<Probe>,
    /// Latency at half `sustained_rate`.
    pub latency_half_max: LatencyPhase,
    /// `run` in exactly-once mode (transactions every 100 ms), events/s: the median of
    /// its trials.
    pub exactly_once_rate: f64,
    /// At-least-once, events/s: the median of its trials (the first is `run_rate`).
    pub at_least_once_median_rate: f64,
    /// Median exactly-once rate / median at-least-once rate.
    pub exactly_once_ratio: f64,
    /// Exactly-once events per CPU-second of this process (the broker's work aside),
    /// median of the trials.
    pub exactly_once_events_per_cpu_sec: f64,
    /// At-least-once events per CPU-second, median of the trials.
    pub at_least_once_events_per_cpu_sec: f64,
    /// Each trial in the order run: (guarantee, events/s, events per CPU-second).
    pub guarantee_trials: Vec<(String, f64, f64)>,
    /// Customers restored in the restore phase.
    pub restore_customers: usize,
    /// Changelog records read.
    pub restore_records: u64,
    /// Changelog bytes read.
    pub restore_bytes: u64,
    /// Time to restore them, seconds.
    pub restore_secs: f64,
    /// Resident memory the restored engine holds, bytes per customer.
    pub restored_rss_per_customer: f64,
    /// Resident memory at the peak of the restore, bytes per customer (above what the
    /// process held before it).
    pub restore_peak_rss_per_customer: f64,
}

impl Report {
    /// Human rendering.
    pub fn render(&self) -> String {
        format!(
            "bench kafka: {} events ({:.0} B mean JSON), {} partitions per topic, {} workers\n\
             produce the history:        {:>10.0} events/s\n\
             bare consumer (read only):  {:>10.0} events/s  ({:.0} per CPU-second)\n\
             churnsignal run:            {:>10.0} events/s  ({} alerts produced and acknowledged)\n\
             run per CPU-second:         {:>10.0} events  ({:.2} CPU-s of this process)\n\
             run / bare consumer:        {:>10.2}\n\
             {}\n\
             highest rate sustained live (the generator on the same cores): {:.0} events/s{}; probes (offered/achieved/processed events/s, behind at the end): {}\n\
             {}\n\
             exactly-once (100 ms transactions) against at-least-once, medians of {} alternating runs each:\n\
             exactly-once {:.0} events/s, at-least-once {:.0} events/s: {:.2}; per CPU-second {:.0} against {:.0}\n\
             trials: {}\n\
             restore {} customers ({} records, {:.0} MB): {:.2} s, {:.0} customers/s\n\
             restore memory: {:.0} B/customer held after, {:.0} B/customer at the peak",
            self.events,
            self.mean_event_bytes,
            self.partitions,
            self.workers,
            self.produce_rate,
            self.bare_consumer_rate,
            self.bare_events_per_cpu_sec,
            self.run_rate,
            self.alerts,
            self.run_events_per_cpu_sec,
            self.run_cpu_secs,
            self.ratio,
            self.latency_fixed.render("a fixed rate"),
            self.sustained_rate,
            if self.sustained_confirmed {
                ""
            } else {
                " (not confirmed: it kept up with no probe; the lowest rate it processed)"
            },
            self.sustained_probes
                .iter()
                .map(|p| format!(
                    "{:.0}/{:.0}/{:.0}, {}",
                    p.offered, p.achieved, p.processed, p.behind
                ))
                .collect::<Vec<_>>()
                .join("; "),
            self.latency_half_max.render("half the highest sustained rate"),
            self.guarantee_trials.len() / 2,
            self.exactly_once_rate,
            self.at_least_once_median_rate,
            self.exactly_once_ratio,
            self.exactly_once_events_per_cpu_sec,
            self.at_least_once_events_per_cpu_sec,
            self.guarantee_trials
                .iter()
                .map(|(g, r, c)| format!("{g} {:.0}k/s ({:.0}k per CPU-s)", r / 1e3, c / 1e3))
                .collect::<Vec<_>>()
                .join(", "),
            self.restore_customers,
            self.restore_records,
            self.restore_bytes as f64 / 1e6,
            self.restore_secs,
            self.restore_customers as f64 / self.restore_secs.max(1e-9),
            self.restored_rss_per_customer,
            self.restore_peak_rss_per_customer,
        )
    }
}

fn topic_of(cfg: &Config, f: Family) -> &str {
    let t = &cfg.kafka.topics;
    match f {
        Family::Orders => &t.orders,
        Family::SupportTickets => &t.support_tickets,
        Family::Engagement => &t.engagement,
    }
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &[u8]) {
    send_record(p, BaseRecord::to(topic).key(key).payload(value));
}

/// Why `bench kafka` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A Kafka client of the benchmark itself (producer, bare consumer).
    #[error("{what}: {error}")]
    Client {
        /// Which client or call.
        what: &'static str,
        /// Why.
        error: rdkafka::error::KafkaError,
    },
    /// Creating or deleting the benchmark's topics.
    #[error(transparent)]
    Topics(#[from] crate::kafka::topics::TopicsError),
    /// The service under test.
    #[error(transparent)]
    Run(#[from] crate::kafka::RunError),
    /// The restore phase.
    #[error(transparent)]
    Restore(#[from] crate::kafka::changelog::RestoreError),
    /// A configuration value that is not allowed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Writing the generated history, or the async runtime.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The service did not process the history in time, or failed.
    #[error("run did not finish: {done} of {of} events, failure {failure:?}")]
    Unfinished {
        /// Events handled.
        done: u64,
        /// Events expected.
        of: u64,
        /// The service's failure, if any.
        failure: Option<crate::kafka::Failure>,
    },
}

/// Sends a record, waiting while the producer queue is full.
fn send_record<C, K, V>(p: &ThreadedProducer<C>, mut rec: BaseRecord<'_, K, V, C::DeliveryOpaque>)
where
    C: ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    V: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn producer(
    brokers: &str,
    linger_ms: u32,
) -> Result<ThreadedProducer<DefaultProducerContext>, BenchError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|error| BenchError::Client {
            what: "producer",
            error,
        })
}

/// Runs the benchmark.
pub fn run(opts: &Options, base: &Config) -> Result<Report, BenchError> {
    let mut cfg = base.clone();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let p = format!("bench-{stamp}");
    cfg.kafka.brokers = opts.brokers.clone();
    cfg.kafka.group_id = format!("{p}-run");
    cfg.kafka.topics.orders = format!("{p}-orders");
    cfg.kafka.topics.support_tickets = format!("{p}-tickets");
    cfg.kafka.topics.engagement = format!("{p}-engagement");
    cfg.kafka.topics.alerts = format!("{p}-alerts");
    cfg.kafka.topics.dead_letters = format!("{p}-dead");
    cfg.kafka.topics.changelog = format!("{p}-state");
    cfg.kafka.processing.guarantee = crate::config::Guarantee::AtLeastOnce;
    cfg.http.listen = String::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::kafka::topics::create_with(
        &cfg.kafka,
        opts.partitions,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    ))?;

    // 1. The history.
    // The history and its continuations (see step 4) end before the wall clock: events
    // from the future are dead letters. The default start unless that is too late.
    let latest = (wall_now().0 - 6 * i64::from(opts.days) * DAY_MS) / DAY_MS * DAY_MS;
    let spec = Spec {
        customers: opts.customers,
        days: opts.days,
        seed: opts.seed,
        start: Timestamp(HISTORY_START.min(latest)),
        ..Spec::default()
    };
    let prod = producer(&opts.brokers, 10)?;
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut buf = Vec::with_capacity(512);
    for g in History::new(spec.clone()) {
        buf.clear();
        g.write_json(&mut buf)?;
        buf.pop();
        let e = g.to_event();
        send(&prod, topic_of(&cfg, e.kind.family()), &e.customer_id, &buf);
        n += 1;
        bytes += buf.len() as u64;
    }
    prod.flush(Duration::from_secs(120))
        .map_err(|error| BenchError::Client {
            what: "flush",
            error,
        })?;
    let produce_rate = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!("bench kafka: produced {n} events at {produce_rate:.0}/s");

    // 2. A bare consumer.
    // The service's own consumer configuration, in its own group: the difference is
    // only what churnsignal does with the messages.
    let mut bc = crate::kafka::client::consumer_config(&cfg.kafka);
    bc.set("group.id", format!("{p}-bare"));
    let bare: BaseConsumer = bc.create().map_err(|error| BenchError::Client {
        what: "consumer",
        error,
    })?;
    let inputs: Vec<String> = cfg
        .kafka
        .input_topics()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    bare.subscribe(&names).map_err(|error| BenchError::Client {
        what: "subscribe",
        error,
    })?;
    let mut got = 0u64;
    let mut touched = 0u64;
    let mut first: Option<Instant> = None;
    let mut cpu0 = process_cpu_secs();
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n && Instant::now() < deadline {
        if let Some(Ok(m)) = bare.poll(Duration::from_millis(100)) {
            if first.is_none() {
                first = Some(Instant::now());
                cpu0 = process_cpu_secs();
            }
            touched += m.payload().map_or(0, |p| p.len() as u64);
            got += 1;
        }
    }
    let bare_rate = got as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64());
    let bare_per_cpu = got as f64 / (process_cpu_secs() - cpu0).max(1e-9);
    drop(bare);
    eprintln!("bench kafka: bare consumer read {got} events ({touched} bytes) at {bare_rate:.0}/s");

    // 3. The service on the same messages.
    let service = Service::start(
        cfg.clone(),
        StartOptions {
            record_latencies: true,
        },
    )?;
    let s = service.status().clone();
    let (run_rate, run_cpu) = time_run(&s, n)?;
    let alerts = s.alerts_sent.load(Ordering::Relaxed);
    eprintln!("bench kafka: run processed {n} events at {run_rate:.0}/s, {alerts} alerts");

    // 4. Latency at a fixed offered load; the highest rate sustained with the
    // generator offering live; latency at half of it. The history goes on.
    let mut history = Continuation::after(&spec);
    let mut processed = n;
    let fixed = offer::offer(
        &cfg,
        history.next(),
        opts.rate,
        f64::from(opts.latency_secs),
        &s,
        processed,
    )?;
    history.advance(fixed.last);
    processed += fixed.events;
    let latency_fixed = fixed.phase;
    let probes = sustained::search(&cfg, &mut history, run_rate, &s, &mut processed)?;
    let (sustained, sustained_confirmed) = sustained::sustained_rate(&probes);
    let half = (sustained / 2.0).round() as u32;
    let latency_half_max = offer::offer(
        &cfg,
        history.next(),
        half,
        f64::from(opts.latency_secs),
        &s,
        processed,
    )?
    .phase;
    let workers = if cfg.kafka.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.kafka.workers
    };
    service.stop()?;

    // 5. Exactly-once against at-least-once, alternating, each run in a group and with
    // output topics of its own.
    let mut trials = vec![(
        "at-least-once".to_owned(),
        run_rate,
        n as f64 / run_cpu.max(1e-9),
    )];
    let rounds = opts.guarantee_trials.max(1);
    for i in 0..rounds {
        for exactly in [true, false] {
            if !exactly && i + 1 == rounds {
                break;
            }
            let (label, rate, cpu) = guarantee_trial(&cfg, &rt, opts, &p, i, exactly, n)?;
            eprintln!("bench kafka: {label} run at {rate:.0}/s");
            trials.push((label, rate, n as f64 / cpu.max(1e-9)));
        }
    }
    let median_of = |label: &str, f: fn(&(String, f64, f64)) -> f64| -> f64 {
        let mut v: Vec<f64> = trials.iter().filter(|t| t.0 == label).map(f).collect();
        median(&mut v)
    };
    let eos_rate = median_of("exactly-once", |t| t.1);
    let alos_rate = median_of("at-least-once", |t| t.1);
    let eos_per_cpu = median_of("exactly-once", |t| t.2);
    let alos_per_cpu = median_of("at-least-once", |t| t.2);

    // 6. Restore.
    let r = restore::restore_phase(&cfg, opts.restore_customers)?;
    // The benchmark's topics (history, outputs and changelogs of every run) go.
    match rt.block_on(crate::kafka::topics::delete_prefixed(
        &cfg.kafka,
        &format!("{p}-"),
    )) {
        Ok(k) => eprintln!("bench kafka: deleted its {k} topics"),
        Err(e) => eprintln!("bench kafka: its topics (prefix {p}-) were not deleted: {e}"),
    }
    Ok(Report {
        events: n,
        mean_event_bytes: bytes as f64 / n.max(1) as f64,
        partitions: opts.partitions,
        workers,
        produce_rate,
        bare_consumer_rate: bare_rate,
        bare_events_per_cpu_sec: bare_per_cpu,
        run_rate,
        ratio: run_rate / bare_rate,
        run_cpu_secs: run_cpu,
        run_events_per_cpu_sec: n as f64 / run_cpu.max(1e-9),
        alerts,
        latency_fixed,
        sustained_rate: sustained,
        sustained_confirmed,
        sustained_probes: probes,
        latency_half_max,
        exactly_once_rate: eos_rate,
        at_least_once_median_rate: alos_rate,
        exactly_once_ratio: eos_rate / alos_rate,
        exactly_once_events_per_cpu_sec: eos_per_cpu,
        at_least_once_events_per_cpu_sec: alos_per_cpu,
        guarantee_trials: trials,
        restore_customers: r.customers,
        restore_records: r.records,
        restore_bytes: r.bytes,
        restore_secs: r.secs,
        restored_rss_per_customer: r.held_rss as f64 / r.customers.max(1) as f64,
        restore_peak_rss_per_customer: r.peak_rss as f64 / r.customers.max(1) as f64,
    })
}

/// One run of the comparison: the service on the history in a fresh group with fresh
/// output topics; (label, events/s, CPU seconds).
fn guarantee_trial(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    prefix: &str,
    round: u32,
    exactly: bool,
    n: u64,
) -> Result<(String, f64, f64), BenchError> {
    use crate::config::Guarantee;
    let (tag, guarantee, label) = if exactly {
        ("eos", Guarantee::ExactlyOnce, "exactly-once")
    } else {
        ("alos", Guarantee::AtLeastOnce, "at-least-once")
    };
    let mut c = cfg.clone();
    let name = format!("{prefix}-{tag}{round}");
    c.kafka.group_id = name.clone();
    c.kafka.topics.alerts = format!("{name}-alerts");
    c.kafka.topics.dead_letters = format!("{name}-dead");
    c.kafka.topics.changelog = format!("{name}-state");
    c.kafka.processing.guarantee = guarantee;
    rt.block_on(crate::kafka::topics::create(&c.kafka, opts.partitions, 1))?;
    let service = Service::start(c, StartOptions::default())?;
    let (rate, cpu) = time_run(service.status(), n)?;
    service.stop()?;
    Ok((label.to_owned(), rate, cpu))
}

/// The median (the mean of the middle two for an even count); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Waits until the service processed `n` events and every record it sent is
/// acknowledged; returns events/s from its first event and the process CPU used.
fn time_run(s: &crate::kafka::Status, n: u64) -> Result<(f64, f64), BenchError> {
    let mut first: Option<Instant> = None;
    let cpu0 = process_cpu_secs();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = s.events.load(Ordering::Relaxed);
        if done > 0 {
            first.get_or_insert_with(Instant::now);
        }
        let records =
            s.alerts_sent.load(Ordering::Relaxed) + s.dead_letters.load(Ordering::Relaxed);
        if done >= n && s.acked.load(Ordering::Relaxed) >= records {
            break;
        }
        if Instant::now() > deadline || s.failure().is_some() {
            return Err(BenchError::Unfinished {
                done,
                of: n,
                failure: s.failure(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
    Ok((n as f64 / secs, process_cpu_secs() - cpu0))
}

/// User + system CPU time of this process so far, seconds (Linux; 0 elsewhere).
pub fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) in parentheses.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0-based after ")" they are 11, 12.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_trial_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
