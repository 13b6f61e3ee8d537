//! `churnsignal demo`: the live service with zero setup. librdkafka's in-process mock
//! cluster stands in for Kafka; the real `run` code path (consumer group, partition
//! engines, producer, commits) processes a generated history of a few hundred customers
//! fed at a chosen speed, and the alerts are printed as they arrive on the alerts topic.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};

use crate::config::Config;
use crate::event::Family;
use crate::generate::{History, Spec};
use crate::kafka::{Service, StartOptions};

/// Demo options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Customers in the generated history.
    pub customers: u32,
    /// Days of history.
    pub days: u32,
    /// Simulated days per wall-clock second.
    pub speed: f64,
    /// Generator seed.
    pub seed: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz` (a free loopback port when
    /// none), so that a Prometheus can be pointed at the demo before it starts.
    pub listen: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            customers: 300,
            days: 180,
            speed: 12.0,
            seed: 42,
            listen: None,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Summary {
    /// Events produced (valid and invalid).
    pub events: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Alerts by status.
    pub by_status: BTreeMap<String, u64>,
    /// Alerts naming each signal (open and escalated).
    pub by_signal: BTreeMap<String, u64>,
    /// Customers at risk at the end (latest alert not resolved), by value tier.
    pub at_risk_by_tier: BTreeMap<String, u64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct Seen {
    summary: Summary,
    latest: BTreeMap<String, (String, String)>,
    alerts: u64,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A Kafka client or the mock cluster.
    #[error("{what}: {error}")]
    Kafka {
        /// Which client or call.
        what: &'static str,
        /// Why.
        error: rdkafka::error::KafkaError,
    },
    /// The service.
    #[error(transparent)]
    Run(#[from] crate::kafka::RunError),
    /// Writing an event.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn kafka(what: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> DemoError {
    move |error| DemoError::Kafka { what, error }
}

/// Runs the demo, writing what happens to `out`.
pub fn run(opts: &Options, out: &mut (dyn Write + Send)) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let mock = MockCluster::new(1).map_err(kafka("mock cluster"))?;
    let bootstrap = mock.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.brokers = bootstrap.clone();
    cfg.kafka.group_id = "churnsignal-demo".into();
    cfg.http.listen = opts.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    // The demo's customer API is on loopback and holds generated customers only.
    cfg.http.customer_api.listen = "127.0.0.1:0".into();
    cfg.http.customer_api.allow_unauthenticated = true;
    let t = cfg.kafka.topics.clone();
    // (the mock cluster has no CreateTopics: the changelog is made here too)
    for name in t.distinct().into_iter().chain([t.changelog.as_str()]) {
        mock.create_topic(name, 2, 1)
            .map_err(kafka("create topic"))?;
    }
    let service = Service::start(cfg.clone(), StartOptions::default())?;
    let _ = writeln!(
        out,
        "churnsignal demo: {} customers, {} days at {} days/s on an in-process Kafka (mock cluster {bootstrap}).",
        opts.customers, opts.days, opts.speed
    );
    if let (Some(a), Some(api)) = (service.http_addr(), service.api_addr()) {
        let _ = writeln!(
            out,
            "While it runs: curl http://{a}/metrics, http://{a}/readyz, http://{api}/customers/cust-0000007\n"
        );
    }

    let seen = Arc::new(std::sync::Mutex::new(Seen {
        summary: Summary::default(),
        latest: BTreeMap::new(),
        alerts: 0,
    }));
    let done = Arc::new(AtomicBool::new(false));
    let viewer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "churnsignal-demo-viewer")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(kafka("viewer"))?;
    viewer.subscribe(&[&t.alerts]).map_err(kafka("viewer"))?;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .map_err(kafka("producer"))?;

    let out = std::sync::Mutex::new(out);
    let produced = std::thread::scope(|scope| -> Result<u64, DemoError> {
        let seen_v = seen.clone();
        let done_v = done.clone();
        let out_p = &out;
        let printer = scope.spawn(move || {
            let mut lines = Vec::new();
            loop {
                match viewer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        if let Some(line) = m.payload().and_then(|p| record(&seen_v, p)) {
                            lines.push(line);
                        }
                    }
                    _ if done_v.load(Ordering::SeqCst) => break,
                    _ => {}
                }
                if !lines.is_empty() {
                    let mut o = out_p.lock().expect("out lock");
                    for l in lines.drain(..) {
                        let _ = writeln!(o, "{l}");
                    }
                    let _ = o.flush();
                }
            }
        });
        let spec = Spec {
            customers: opts.customers,
            days: opts.days,
            seed: opts.seed,
            start: history_start(opts.days, SystemTime::now()),
            ..Spec::default()
        };
        let day_wall = Duration::from_secs_f64(1.0 / opts.speed.max(0.01));
        let feed_start = Instant::now();
        let mut n = 0u64;
        let send = |topic: &str, key: &str, value: &[u8]| -> Result<(), DemoError> {
            let mut rec = BaseRecord::to(topic).key(key).payload(value);
            loop {
                match producer.send(rec) {
                    Ok(()) => return Ok(()),
                    Err((e, back)) => {
                        if !matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ) {
                            return Err(kafka("produce")(e));
                        }
                        rec = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        };
        let mut buf = Vec::with_capacity(512);
        for g in History::new(spec) {
            // Pace: day d is fed no earlier than d / speed seconds after the start.
            let due = day_wall * g.day;
            let elapsed = feed_start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
            let e = g.to_event();
            let topic = match e.kind.family() {
                Family::Orders => &t.orders,
                Family::SupportTickets => &t.support_tickets,
                Family::Engagement => &t.engagement,
            };
            buf.clear();
            g.write_json(&mut buf)?;
            buf.pop();
            send(topic, &e.customer_id, &buf)?;
            n += 1;
            // A few broken messages, as real feeds have: they go to the dead-letter topic.
            if n % 20_000 == 0 {
                send(&t.orders, &e.customer_id, b"{\"event_id\": \"truncated...")?;
                n += 1;
            }
        }
        producer
            .flush(Duration::from_secs(30))
            .map_err(kafka("flush"))?;
        // Wait until everything is processed and every alert has been printed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = service.status().clone();
        while Instant::now() < deadline {
            let processed = s.events.load(Ordering::Relaxed) >= n;
            let sent = s.alerts_sent.load(Ordering::Relaxed);
            let printed = seen.lock().expect("seen lock").alerts;
            if processed && printed >= sent {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done.store(true, Ordering::SeqCst);
        let _ = printer.join();
        Ok(n)
    })?;
    let report = service.stop()?;
    drop(producer);
    drop(mock);
    let mut seen = seen.lock().expect("seen lock");
    let latest = std::mem::take(&mut seen.latest);
    let mut summary = std::mem::take(&mut seen.summary);
    for (status, tier) in latest.values() {
        if status != "resolved" {
            *summary.at_risk_by_tier.entry(tier.clone()).or_default() += 1;
        }
    }
    summary.events = produced;
    summary.dead_letters = report.dead_letters;
    summary.seconds = started.elapsed().as_secs_f64();
    let out = out.into_inner().expect("out lock");
    let _ = write!(out, "{}", summary.render());
    let _ = out.flush();
    Ok(summary)
}

/// Records one alert and renders it as a line.
fn record(seen: &std::sync::Mutex<Seen>, payload: &[u8]) -> Option<String> {
    let a: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
    let status = s("status");
    let customer = s("customer_id");
    let tier = s("value_tier");
    let signals: Vec<String> = a["signals"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x["signal"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut g = seen.lock().ok()?;
    g.alerts += 1;
    *g.summary.by_status.entry(status.clone()).or_default() += 1;
    if status != "resolved" {
        for sig in &signals {
            *g.summary.by_signal.entry(sig.clone()).or_default() += 1;
        }
    }
    g.latest
        .insert(customer.clone(), (status.clone(), tier.clone()));
    let day = s("as_of").get(..10).unwrap_or("").to_owned();
    let why = a["signals"][0]["explanation"].as_str().unwrap_or("");
    Some(if status == "resolved" {
        format!(
            "{day}  RESOLVED   {customer}  {tier:<8} health {:>3}  all signals cleared",
            a["health_score"]
        )
    } else {
        format!(
            "{day}  {:<9}  {customer}  {tier:<8} health {:>3}  risk {:<8} {}  play {}\n            {why}",
            status.to_uppercase(),
            a["health_score"],
            s("risk"),
            signals.join("+"),
            s("recommended_play"),
        )
    })
}

impl Summary {
    /// The closing summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let total: u64 = self.by_status.values().sum();
        s.push_str(&format!(
            "\nSummary ({:.1} s): {} events ({} dead-lettered), {} alerts",
            self.seconds, self.events, self.dead_letters, total
        ));
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        s.push_str(&format!(" ({})\n", statuses.join(", ")));
        s.push_str("Alerts by signal:\n");
        for (k, v) in &self.by_signal {
            s.push_str(&format!("  {k:<20} {v}\n"));
        }
        s.push_str("Customers at risk at the end, by value tier:\n");
        if self.at_risk_by_tier.is_empty() {
            s.push_str("  none\n");
        }
        for (k, v) in &self.at_risk_by_tier {
            s.push_str(&format!("  {k:<20} {v}\n"));
        }
        s
    }
}

/// The first day of a history of `days` days that ends today (UTC): the service refuses
/// events from the future, so a history that reached past the wall clock would be
/// dead-lettered from then on.
fn history_start(days: u32, now: SystemTime) -> crate::time::Timestamp {
    const DAY_MS: i64 = 86_400_000;
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let today = now_ms - now_ms.rem_euclid(DAY_MS);
    crate::time::Timestamp(today - i64::from(days) * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_history_ends_at_the_start_of_today() {
        // 2026-12-06 13:45:00 UTC
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_478_300);
        let start = history_start(360, now);
        assert_eq!(start.0 % 86_400_000, 0, "a day boundary");
        let end = start.0 + 360 * 86_400_000;
        assert!(end <= 1_796_478_300_000 && 1_796_478_300_000 - end < 86_400_000);
    }
}
