//! Telemetry: the one place that names metrics, and the HTTP server that exposes them
//! with the health endpoints and the customer API.
//!
//! Names follow Prometheus conventions: `churnsignal_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters. Labels are bounded sets (topic,
//! partition, event type, reason code, status, signal, risk, value tier); never a
//! customer id. Call sites use the small functions below, not strings.

pub mod api;
pub mod events;
pub mod http;
pub mod partitions;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names (stable: the Grafana dashboard and the alert rules use them).
pub mod names {
    /// Input messages consumed, by topic and event type (`invalid` for dead letters).
    pub const EVENTS_CONSUMED: &str = "churnsignal_events_consumed_total";
    /// Invalid messages sent to the dead-letter topic, by topic and reason.
    pub const DEAD_LETTERS: &str = "churnsignal_dead_letters_total";
    /// Alerts produced, by status, top signal, risk and value tier.
    pub const ALERTS: &str = "churnsignal_alerts_total";
    /// From the input message's Kafka timestamp to the acknowledgement of the alert it caused.
    pub const EVENT_TO_ALERT_LATENCY: &str = "churnsignal_event_to_alert_latency_seconds";
    /// The event-to-alert latency by stage (`fetch`, `queue`, `sync`, `produce`).
    pub const ALERT_LATENCY_STAGE: &str = "churnsignal_alert_latency_stage_seconds";
    /// Consumer lag per input partition, messages.
    pub const CONSUMER_LAG: &str = "churnsignal_consumer_lag_messages";
    /// Consumer lag per input partition, seconds: the age of the oldest message not
    /// consumed yet.
    pub const CONSUMER_LAG_SECONDS: &str = "churnsignal_consumer_lag_seconds";
    /// Customers held in memory, per partition.
    pub const CUSTOMERS_TRACKED: &str = "churnsignal_customers_tracked";
    /// Engine state size, per partition, bytes.
    pub const STATE_BYTES: &str = "churnsignal_state_bytes";
    /// Stream time (watermark) per partition, seconds since the epoch.
    pub const WATERMARK: &str = "churnsignal_watermark_seconds";
    /// Events older than the watermark.
    pub const LATE_EVENTS: &str = "churnsignal_late_events_total";
    /// Re-sent events (same event id) ignored.
    pub const DUPLICATE_EVENTS: &str = "churnsignal_duplicate_events_total";
    /// Partition assignments and revocations, by kind.
    pub const REBALANCES: &str = "churnsignal_rebalances_total";
    /// Partition engines started (restored) and stopped on this instance, by change.
    pub const PARTITION_ENGINES: &str = "churnsignal_partition_engines_total";
    /// Input partitions assigned to this instance.
    pub const ASSIGNED_PARTITIONS: &str = "churnsignal_assigned_partitions";
    /// Offset commits, by result (`ok`, `failed`).
    pub const COMMITS: &str = "churnsignal_commits_total";
    /// Offset commits that failed.
    pub const COMMIT_FAILURES: &str = "churnsignal_commit_failures_total";
    /// Times the consumer left its group because the poll loop stalled (MAXPOLL).
    pub const MAX_POLL_EXCEEDED: &str = "churnsignal_consumer_max_poll_exceeded_total";
    /// Records (alerts, dead letters) the broker refused for good, by error code.
    pub const PRODUCE_ERRORS: &str = "churnsignal_produce_errors_total";
    /// Client errors reported by librdkafka, by error code.
    pub const KAFKA_ERRORS: &str = "churnsignal_kafka_errors_total";
    /// 1 while the consumer is paused because workers or the producer are behind.
    pub const BACKPRESSURE: &str = "churnsignal_backpressure_active";
    /// Times a worker waited for room in the producer queue.
    pub const PRODUCER_QUEUE_FULL: &str = "churnsignal_producer_queue_full_total";
    /// Times an idle partition's stream time was advanced by the wall clock.
    pub const IDLE_ADVANCES: &str = "churnsignal_idle_advances_total";
    /// 1 when `/readyz` answers ready.
    pub const READY: &str = "churnsignal_ready";
    /// Changelog records still to read while a partition restores (0 when done).
    pub const RESTORE_REMAINING: &str = "churnsignal_restore_remaining_records";
    /// Changelog records read by restores.
    pub const RESTORED_RECORDS: &str = "churnsignal_restored_records_total";
    /// Input messages restores replayed from exactly-once journals.
    pub const REPLAYED_MESSAGES: &str = "churnsignal_restore_replayed_messages_total";
    /// Partitions restoring their state now.
    pub const RESTORING: &str = "churnsignal_restoring_partitions";
    /// Checkpoint transactions (state, offsets; exactly-once: outputs too), by result
    /// (`committed`, `aborted`).
    pub const CHECKPOINTS: &str = "churnsignal_checkpoints_total";
    /// Transactional API errors, by class (`retriable`, `abortable`, `fatal`).
    pub const TRANSACTION_ERRORS: &str = "churnsignal_transaction_errors_total";
    /// State records written to the changelog, by kind (`customer`, `tombstone`, `partition`).
    pub const STATE_RECORDS: &str = "churnsignal_state_records_written_total";
    /// Customers forgotten, by reason (`idle`: silent past the horizon, `cap`).
    pub const CUSTOMERS_EVICTED: &str = "churnsignal_customers_evicted_total";
    /// Customers with an open alert, per partition, by announced risk and value tier.
    pub const CUSTOMERS_AT_RISK: &str = "churnsignal_customers_at_risk";
    /// Time a partition's processing waited for one of its input topics (a backlog not
    /// consumed yet, or its idle time), per partition and input topic.
    pub const STREAM_TIME_HELD: &str = "churnsignal_stream_time_held_seconds_total";
    /// Consumed messages waiting for their turn in event-time order, per partition.
    pub const SYNC_BUFFERED: &str = "churnsignal_sync_buffered_messages";

    /// 1, labelled with the version and the commit the binary was built from.
    pub const BUILD_INFO: &str = "churnsignal_build_info";

    /// Slack forwarder: alerts read from the alerts topic, by result (`posted`,
    /// `duplicate`, `unrouted`, `unreadable`).
    pub const SLACK_ALERTS: &str = "churnsignal_slack_alerts_total";
    /// Slack forwarder: POSTs to webhooks, by webhook name and outcome (`accepted`,
    /// `rate_limited`, `server_error`, `network_error`, `rejected`).
    pub const SLACK_POSTS: &str = "churnsignal_slack_post_attempts_total";
    /// Slack forwarder: alerts on its partitions not yet handled, per partition.
    pub const SLACK_LAG: &str = "churnsignal_slack_lag_messages";
    /// Slack forwarder: 1 while a webhook waits to retry a post, per webhook.
    pub const SLACK_RETRYING: &str = "churnsignal_slack_retrying";
    /// Slack forwarder: alerts read and waiting for their webhook, per webhook.
    pub const SLACK_WAITING: &str = "churnsignal_slack_waiting_alerts";

    /// The names the Slack forwarder exports.
    pub const SLACK: [&str; 5] = [
        SLACK_ALERTS,
        SLACK_POSTS,
        SLACK_LAG,
        SLACK_RETRYING,
        SLACK_WAITING,
    ];

    /// Every name of the service, for documentation and the dashboard consistency test.
    pub const ALL: [&str; 35] = [
        EVENTS_CONSUMED,
        DEAD_LETTERS,
        ALERTS,
        EVENT_TO_ALERT_LATENCY,
        ALERT_LATENCY_STAGE,
        CONSUMER_LAG,
        CONSUMER_LAG_SECONDS,
        CUSTOMERS_TRACKED,
        STATE_BYTES,
        WATERMARK,
        LATE_EVENTS,
        DUPLICATE_EVENTS,
        REBALANCES,
        PARTITION_ENGINES,
        ASSIGNED_PARTITIONS,
        COMMITS,
        COMMIT_FAILURES,
        MAX_POLL_EXCEEDED,
        PRODUCE_ERRORS,
        KAFKA_ERRORS,
        BACKPRESSURE,
        PRODUCER_QUEUE_FULL,
        IDLE_ADVANCES,
        READY,
        RESTORE_REMAINING,
        RESTORED_RECORDS,
        RESTORING,
        CHECKPOINTS,
        TRANSACTION_ERRORS,
        STATE_RECORDS,
        CUSTOMERS_EVICTED,
        CUSTOMERS_AT_RISK,
        STREAM_TIME_HELD,
        SYNC_BUFFERED,
        BUILD_INFO,
    ];
}

/// Buckets of the event-to-alert latency histogram, seconds: from single milliseconds
/// (a caught-up service) to seconds (a backlog), dense enough everywhere in between that
/// `histogram_quantile` interpolates within a step of at most 1.5 times, not across
/// the 0.25/0.5/1 s bounds.
pub const LATENCY_BUCKETS: [f64; 24] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// The commit the binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = match option_env!("CHURNSIGNAL_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The process metrics (CPU, memory, open files, threads, start time), read at each
/// scrape.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// The `/metrics` page: the recorder's metrics (process metrics read now) and the
/// gauges of the partition engines this instance holds.
pub fn render(handle: &PrometheusHandle) -> String {
    process().collect();
    handle.run_upkeep();
    let mut out = handle.render();
    partitions::render(&mut out);
    out
}

/// Counters of client and produce errors at zero for these codes (spelled as
/// `kafka_error` and `produce_error` spell them), so that a rule's `increase()` sees
/// the first error of each.
pub fn register_error_codes(kafka: &[String], produce: &[String]) {
    for code in kafka {
        counter!(names::KAFKA_ERRORS, "code" => code.clone()).absolute(0);
    }
    for code in produce {
        counter!(names::PRODUCE_ERRORS, "code" => code.clone()).absolute(0);
    }
}

/// Installs the process-wide Prometheus recorder once and returns its handle, with the
/// service's label-less metrics at zero.
pub fn install() -> PrometheusHandle {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    let handle = recorder();
    REGISTERED.get_or_init(register);
    handle
}

/// Installs the recorder for the Slack forwarder: its own metrics at zero, for each
/// webhook, and none of the service's (its `/metrics` must not show a service that is
/// not running).
pub fn install_slack<'a>(webhooks: impl IntoIterator<Item = &'a str>) -> PrometheusHandle {
    let handle = recorder();
    for result in ["posted", "duplicate", "unrouted", "unreadable"] {
        counter!(names::SLACK_ALERTS, "result" => result).absolute(0);
    }
    for w in webhooks {
        for outcome in SLACK_OUTCOMES {
            counter!(names::SLACK_POSTS, "webhook" => w.to_owned(), "outcome" => outcome)
                .absolute(0);
        }
        slack_retrying(w, false);
        slack_waiting(w, 0);
    }
    build_info();
    process().collect();
    handle
}

fn build_info() {
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => COMMIT).set(1.0);
}

/// Outcomes of a POST to Slack.
pub const SLACK_OUTCOMES: [&str; 5] = [
    "accepted",
    "rate_limited",
    "server_error",
    "network_error",
    "rejected",
];

fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::EVENT_TO_ALERT_LATENCY.into()),
                    &LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::ALERT_LATENCY_STAGE.into()),
                        &LATENCY_BUCKETS,
                    )
                })
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness, an embedding
            // application); the handle then renders nothing, which is all we can do.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Label-less counters and gauges start at zero, so that `rate()` and `absent()` in
/// alert rules see them from the first scrape, before anything happened.
fn register() {
    use names::*;
    for c in [
        LATE_EVENTS,
        DUPLICATE_EVENTS,
        COMMIT_FAILURES,
        MAX_POLL_EXCEEDED,
        PRODUCER_QUEUE_FULL,
        IDLE_ADVANCES,
        RESTORED_RECORDS,
    ] {
        counter!(c).absolute(0);
    }
    for class in ["retriable", "abortable", "fatal"] {
        counter!(TRANSACTION_ERRORS, "class" => class).absolute(0);
    }
    for result in ["committed", "aborted"] {
        counter!(CHECKPOINTS, "result" => result).absolute(0);
    }
    for reason in ["idle", "cap"] {
        counter!(CUSTOMERS_EVICTED, "reason" => reason).absolute(0);
    }
    for g in [ASSIGNED_PARTITIONS, BACKPRESSURE, READY, RESTORING] {
        gauge!(g).set(0.0);
    }
    counter!(REPLAYED_MESSAGES).absolute(0);
    for kind in ["assign", "revoke", "error"] {
        counter!(REBALANCES, "kind" => kind).absolute(0);
    }
    for result in ["ok", "failed"] {
        counter!(COMMITS, "result" => result).absolute(0);
    }
    for kind in ["customer", "tombstone", "partition", "journal"] {
        counter!(STATE_RECORDS, "kind" => kind).absolute(0);
    }
    // Every alert label set: `increase()` cannot see a series' first increment, so an
    // alert counted into a new series would be missing from the alerts-per-hour panels
    // (3 x 8 x 4 x 3 = 288 series).
    for status in crate::engine::lifecycle::Status::ALL {
        let signals = crate::signals::SignalKind::ALL.map(|k| k.name());
        for signal in signals.into_iter().chain(["none"]) {
            for risk in crate::engine::score::Risk::ALL {
                for tier in crate::engine::tiers::Tier::ALL {
                    counter!(ALERTS, "status" => status.as_str(), "signal" => signal,
                        "risk" => risk.as_str(), "value_tier" => tier.as_str())
                    .absolute(0);
                }
            }
        }
    }
    build_info();
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(
        EVENTS_CONSUMED,
        "Input messages consumed, by topic and event type"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Invalid messages dead-lettered, by topic and reason"
    );
    describe_counter!(
        ALERTS,
        "Alerts produced, by status, top signal, risk and value tier"
    );
    describe_histogram!(
        EVENT_TO_ALERT_LATENCY,
        Unit::Seconds,
        "Input message timestamp to alert acknowledgement"
    );
    describe_histogram!(
        ALERT_LATENCY_STAGE,
        Unit::Seconds,
        "Event-to-alert latency by stage: fetch (timestamp to poll), queue (poll to worker), sync (worker to alert made), produce (made to acknowledged)"
    );
    describe_gauge!(CONSUMER_LAG, "Consumer lag per input partition, messages");
    describe_gauge!(
        CONSUMER_LAG_SECONDS,
        Unit::Seconds,
        "Consumer lag per input partition: age of the oldest message not consumed yet"
    );
    describe_counter!(LATE_EVENTS, "Events older than the watermark");
    describe_counter!(DUPLICATE_EVENTS, "Re-sent events ignored");
    describe_counter!(REBALANCES, "Partition assignments and revocations");
    describe_counter!(
        PARTITION_ENGINES,
        "Partition engines started (restored) and stopped on this instance"
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Input partitions assigned to this instance"
    );
    describe_counter!(COMMITS, "Offset commits, by result");
    describe_counter!(COMMIT_FAILURES, "Offset commits that failed");
    describe_counter!(
        MAX_POLL_EXCEEDED,
        "Consumer left its group: poll loop stalled"
    );
    describe_counter!(PRODUCE_ERRORS, "Records refused for good, by error code");
    describe_counter!(KAFKA_ERRORS, "librdkafka client errors, by code");
    describe_gauge!(
        BACKPRESSURE,
        "1 while the consumer is paused by back-pressure"
    );
    describe_counter!(PRODUCER_QUEUE_FULL, "Waits for room in the producer queue");
    describe_counter!(IDLE_ADVANCES, "Idle partitions advanced by the wall clock");
    describe_gauge!(READY, "1 when ready");
    describe_counter!(RESTORED_RECORDS, "Changelog records read by restores");
    describe_counter!(
        REPLAYED_MESSAGES,
        "Input messages restores replayed from exactly-once journals (the input since the last state records)"
    );
    describe_gauge!(RESTORING, "Partitions restoring their state");
    describe_counter!(CHECKPOINTS, "Checkpoint transactions, by result");
    describe_counter!(TRANSACTION_ERRORS, "Transactional API errors, by class");
    describe_counter!(STATE_RECORDS, "State records written to the changelog");
    describe_counter!(CUSTOMERS_EVICTED, "Customers forgotten, by reason");
    describe_counter!(SLACK_ALERTS, "Slack forwarder: alerts read, by result");
    describe_counter!(
        SLACK_POSTS,
        "Slack forwarder: POSTs to webhooks, by webhook and outcome"
    );
    describe_gauge!(
        SLACK_LAG,
        "Slack forwarder: alerts not yet handled, per partition"
    );
    describe_gauge!(
        SLACK_RETRYING,
        "Slack forwarder: 1 while a webhook waits to retry a post"
    );
    describe_gauge!(
        SLACK_WAITING,
        "Slack forwarder: alerts read and waiting for their webhook"
    );
    describe_gauge!(BUILD_INFO, "1, by the version and commit of the binary");
}

/// Counts one alert the Slack forwarder read.
pub fn slack_alert(result: &'static str) {
    counter!(names::SLACK_ALERTS, "result" => result).increment(1);
}

/// Counts one POST to a webhook.
pub fn slack_post(webhook: &str, outcome: &'static str) {
    counter!(names::SLACK_POSTS, "webhook" => webhook.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Sets the forwarder's lag on one partition.
pub fn slack_lag(partition: i32, lag: i64) {
    gauge!(names::SLACK_LAG, "partition" => partition.to_string()).set(lag.max(0) as f64);
}

/// Sets a webhook's retrying flag.
pub fn slack_retrying(webhook: &str, waiting: bool) {
    gauge!(names::SLACK_RETRYING, "webhook" => webhook.to_owned()).set(if waiting {
        1.0
    } else {
        0.0
    });
}

/// Sets the number of alerts waiting for a webhook.
pub fn slack_waiting(webhook: &str, n: u64) {
    gauge!(names::SLACK_WAITING, "webhook" => webhook.to_owned()).set(n as f64);
}

/// A partition's restore progress.
pub fn restore_progress(partition: i32, remaining: u64, read: u64) {
    partitions::set(names::RESTORE_REMAINING, partition, &[], remaining as f64);
    counter!(names::RESTORED_RECORDS).increment(read);
}

/// Counts input messages a restore replayed from a journal.
pub fn replayed_messages(n: u64) {
    counter!(names::REPLAYED_MESSAGES).increment(n);
}

/// Partitions restoring now (+1 at start, -1 at the end).
pub fn restoring(delta: f64) {
    gauge!(names::RESTORING).increment(delta);
}

/// Counts a checkpoint transaction's end.
pub fn checkpoint(committed: bool) {
    let result = if committed { "committed" } else { "aborted" };
    counter!(names::CHECKPOINTS, "result" => result).increment(1);
}

/// Counts state records written.
pub fn state_records(kind: &'static str, n: u64) {
    counter!(names::STATE_RECORDS, "kind" => kind).increment(n);
}

/// Counts customers forgotten.
pub fn customers_evicted(reason: &'static str, n: u64) {
    counter!(names::CUSTOMERS_EVICTED, "reason" => reason).increment(n);
}

/// Counter of consumed events of one topic and type.
pub fn events_consumed(topic: &str, event_type: &'static str) -> Counter {
    counter!(names::EVENTS_CONSUMED, "topic" => topic.to_owned(), "type" => event_type)
}

/// Counter of dead letters of one topic and reason.
pub fn dead_letters(topic: &str, reason: &'static str) -> Counter {
    counter!(names::DEAD_LETTERS, "topic" => topic.to_owned(), "reason" => reason)
}

/// Counts one produced alert.
pub fn alert(status: &'static str, signal: &'static str, risk: &'static str, tier: &str) {
    counter!(names::ALERTS, "status" => status, "signal" => signal, "risk" => risk,
        "value_tier" => tier.to_owned())
    .increment(1);
}

/// Records one event-to-alert latency.
pub fn event_to_alert_latency(seconds: f64) {
    histogram!(names::EVENT_TO_ALERT_LATENCY).record(seconds);
}

/// Records one alert's latency stages, ms, in the order of [`crate::kafka::trace::STAGES`].
pub(crate) fn alert_latency_stages(stages: &[i64; 4]) {
    for (stage, ms) in crate::kafka::trace::STAGES.iter().zip(stages) {
        histogram!(names::ALERT_LATENCY_STAGE, "stage" => *stage).record(*ms as f64 / 1000.0);
    }
}

/// Sets one partition's consumer lag, in messages and in seconds.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64, seconds: f64) {
    gauge!(names::CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
    gauge!(names::CONSUMER_LAG_SECONDS, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(seconds);
}

/// Sets one partition engine's size and its customers at risk (`[risk][tier]`, see
/// [`Engine::at_risk`](crate::engine::Engine::at_risk)).
pub fn partition_state(
    partition: i32,
    customers: usize,
    bytes: usize,
    watermark_ms: Option<i64>,
    at_risk: &[[u64; 3]; 4],
) {
    use crate::engine::{score::Risk, tiers::Tier};
    for (r, risk) in Risk::ALL.into_iter().enumerate() {
        for (t, tier) in Tier::ALL.into_iter().enumerate() {
            partitions::set(
                names::CUSTOMERS_AT_RISK,
                partition,
                &[("risk", risk.as_str()), ("value_tier", tier.as_str())],
                at_risk[r][t] as f64,
            );
        }
    }
    partitions::set(names::CUSTOMERS_TRACKED, partition, &[], customers as f64);
    partitions::set(names::STATE_BYTES, partition, &[], bytes as f64);
    if let Some(ms) = watermark_ms {
        partitions::set(names::WATERMARK, partition, &[], ms as f64 / 1000.0);
    }
}

/// Partition `partition`'s engine left this instance: its gauges go with it.
pub fn partition_gone(partition: i32) {
    partitions::remove(partition);
}

/// The counter of time partition `partition` waited for input `topic`, seconds.
pub fn stream_time_held(partition: i32, topic: &str) -> Counter {
    counter!(names::STREAM_TIME_HELD, "partition" => partition.to_string(), "topic" => topic.to_owned())
}

/// Messages partition `partition` holds for their turn.
pub fn sync_buffered(partition: i32, n: usize) {
    partitions::set(names::SYNC_BUFFERED, partition, &[], n as f64);
}

/// Late and duplicate event counters.
pub fn late_events() -> Counter {
    counter!(names::LATE_EVENTS)
}

/// Duplicate event counter.
pub fn duplicate_events() -> Counter {
    counter!(names::DUPLICATE_EVENTS)
}

/// Counts a rebalance event (`assign`, `revoke`, `error`).
pub fn rebalance(kind: &'static str) {
    counter!(names::REBALANCES, "kind" => kind).increment(1);
}

/// Counts partition `p`'s engine started (`start`) or stopped (`stop`) here.
pub fn partition_engine(change: &'static str, p: i32) {
    counter!(names::PARTITION_ENGINES, "change" => change, "partition" => p.to_string())
        .increment(1);
}

/// Sets the number of assigned input partitions.
pub fn assigned_partitions(n: usize) {
    gauge!(names::ASSIGNED_PARTITIONS).set(n as f64);
}

/// Counts a commit result.
pub fn commit(ok: bool) {
    counter!(names::COMMITS, "result" => if ok { "ok" } else { "failed" }).increment(1);
    if !ok {
        counter!(names::COMMIT_FAILURES).increment(1);
    }
}

/// Sets the back-pressure flag.
pub fn backpressure(active: bool) {
    gauge!(names::BACKPRESSURE).set(if active { 1.0 } else { 0.0 });
}

/// Counts a wait for room in the producer queue.
pub fn producer_queue_full() -> Counter {
    counter!(names::PRODUCER_QUEUE_FULL)
}

/// Counts an idle advance.
pub fn idle_advance() {
    counter!(names::IDLE_ADVANCES).increment(1);
}

/// Sets the readiness gauge.
pub fn ready(ready: bool) {
    gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_page_has_every_alert_label_set_the_build_and_the_process_from_the_start() {
        let page = render(&install());
        let alerts: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("churnsignal_alerts_total{"))
            .collect();
        assert_eq!(alerts.len(), 3 * 8 * 4 * 3, "{alerts:#?}");
        assert!(alerts.contains(
            &r#"churnsignal_alerts_total{status="open",signal="inactivity",risk="critical",value_tier="key"} 0"#
        ));
        let build = format!(
            r#"churnsignal_build_info{{version="{}",commit="{COMMIT}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(page.contains(&build), "{build} not in the page");
        let rss = page
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(rss.is_some_and(|b| b > 1e6), "resident memory: {rss:?}");
        assert!(page.contains("process_cpu_seconds_total"));
        assert!(page.contains("process_open_fds"));
    }

    #[test]
    fn latency_resolves_single_milliseconds() {
        let handle = install();
        event_to_alert_latency(0.004);
        let page = render(&handle);
        let bucket = |le: &str| {
            page.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "churnsignal_event_to_alert_latency_seconds_bucket{{le=\"{le}\"}} "
                    ))
                })
                .and_then(|v| v.parse::<u64>().ok())
        };
        // 4 ms lies between the 3 and 5 ms bounds
        let (below, above) = (bucket("0.003"), bucket("0.005"));
        assert!(
            matches!((below, above), (Some(b), Some(a)) if a > b),
            "{below:?} {above:?}"
        );
    }
}
