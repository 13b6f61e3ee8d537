//! `churnsignal slack`: the downstream forwarder from the alerts topic to Slack incoming
//! webhooks.
//!
//! ```text
//! alerts topic ──► own consumer group ──► read ──► seen? ──► route ──► POST (Block Kit)
//!                  (read_committed)        │        │ yes      │ none     │ 2xx: commit
//!                                     unreadable  skip      skip     429: Retry-After
//!                                                                    5xx/net: back-off
//! ```
//!
//! - **Never twice:** an alert is identified by (`alert_id`, `sequence`). The forwarder
//!   remembers the last [`dedup_lookback`](crate::config::SlackConfig::dedup_lookback)
//!   alerts of each partition; when it is assigned a partition it reads that many alerts
//!   before its starting offset back first, so repeats the service wrote around a crash
//!   (at-least-once) are recognised across forwarder restarts and moves too.
//! - **Never lost:** the offset of an alert is committed only after Slack accepted the
//!   post (synchronously, right after it). A failing webhook is retried (429 honouring
//!   `Retry-After`, 5xx and network errors with exponential back-off and jitter, a
//!   refusal at the longest back-off), never skipped; the partitions are paused while it
//!   waits, so the consumer stays in its group. The one window left is a crash between
//!   Slack's answer and the commit: that single alert is posted again.
//! - **Secrets:** webhook URLs come from files or environment variables, are held in a
//!   type whose `Debug` redacts them, and HTTP errors are logged without their URL.

pub mod message;
pub mod post;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::telemetry::{self, http};
use message::AlertView;
use post::{Outcome, Webhook};

/// Errors that stop the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// A webhook could not be set up (names the webhook and where its URL was to come
    /// from, never the URL).
    #[error("{0}")]
    Webhook(String),
    /// Nothing to do: no webhook or no route.
    #[error("{0}")]
    Config(String),
    /// Kafka client setup or the HTTP server.
    #[error("{0}")]
    Start(String),
}

/// Alerts already posted (or skipped as repeats), per partition, the last `cap` of them.
#[derive(Debug, Default)]
pub struct Seen {
    cap: usize,
    order: VecDeque<(String, u64)>,
    set: HashSet<(String, u64)>,
}

impl Seen {
    /// Remembers at most `cap` keys.
    pub fn new(cap: usize) -> Seen {
        Seen {
            cap,
            ..Seen::default()
        }
    }

    /// Whether the key was seen.
    pub fn contains(&self, key: &(String, u64)) -> bool {
        self.set.contains(key)
    }

    /// Remembers a key, forgetting the oldest beyond the cap.
    pub fn insert(&mut self, key: (String, u64)) {
        if self.cap == 0 || !self.set.insert(key.clone()) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[derive(Default)]
struct Changes {
    assigned: Vec<i32>,
    revoked: Vec<i32>,
}

struct Ctx {
    changes: Mutex<Changes>,
    /// Partitions are paused while a post is retried. librdkafka keeps a partition's
    /// pause across a rebalance, but a resume reaches only the partitions assigned when
    /// it is called: a rebalance resumes what it takes away and gives what it brings
    /// this state.
    paused: AtomicBool,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::runtime::log(level, fac, log_message);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let _ = consumer.resume(tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let _ = if self.paused.load(Ordering::SeqCst) {
                consumer.pause(tpl)
            } else {
                consumer.resume(tpl)
            };
        }
        let mut c = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        match rebalance {
            Rebalance::Assign(tpl) => c
                .assigned
                .extend(tpl.elements().iter().map(|e| e.partition())),
            Rebalance::Revoke(tpl) => c
                .revoked
                .extend(tpl.elements().iter().map(|e| e.partition())),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

/// Shared with the HTTP probe.
struct Status {
    beat: Mutex<Instant>,
    assigned: std::sync::atomic::AtomicUsize,
    stopping: AtomicBool,
    liveness: Duration,
}

struct Probe(Arc<Status>);

impl http::Probe for Probe {
    fn live(&self) -> Result<(), String> {
        let age = self.0.beat.lock().map(|b| b.elapsed()).unwrap_or_default();
        if age > self.0.liveness {
            return Err(format!(
                "the forwarder loop has not reported for {} s",
                age.as_secs()
            ));
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if self.0.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.0.assigned.load(Ordering::Relaxed) == 0 {
            return Err("no partition of the alerts topic assigned".into());
        }
        Ok(())
    }

    fn customer(&self, _id: &str) -> http::Lookup {
        http::Lookup::NotOwned
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Alerts posted.
    pub posted: u64,
    /// Repeats skipped.
    pub duplicates: u64,
    /// Alerts no route matched.
    pub unrouted: u64,
    /// Messages that were not alerts.
    pub unreadable: u64,
}

/// The forwarder.
pub struct Forwarder {
    cfg: Config,
    consumer: BaseConsumer<Ctx>,
    webhooks: BTreeMap<String, Webhook>,
    client: post::Client,
    seen: HashMap<i32, Seen>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    report: Report,
    dirty: bool,
    last_commit: Instant,
    last_lag: Instant,
}

/// What became of one message of the alerts topic.
enum Handled {
    /// Not posted (unreadable, a repeat, unrouted): its offset may be committed with
    /// the next commit.
    Skipped,
    /// Posted: its offset is committed at once.
    Posted,
    /// Not done (stopping, or the partition revoked): read again, by us or the next
    /// owner.
    Abandoned,
}

enum Delivery {
    Accepted,
    /// Stopping, or the partition was revoked meanwhile: not posted, not committed.
    Abandoned,
}

impl Forwarder {
    /// Reads the webhook URLs, creates the consumer and subscribes.
    pub fn new(cfg: Config, stop: Arc<AtomicBool>) -> Result<Forwarder, SlackError> {
        let s = &cfg.slack;
        if s.routes.is_empty() {
            return Err(SlackError::Config(
                "slack.routes: no route, so no alert would be posted; add [[slack.routes]] with a webhook from [slack.webhooks]".into(),
            ));
        }
        let mut webhooks = BTreeMap::new();
        for (name, source) in &s.webhooks {
            let hook = Webhook::resolve(name, source, s.allow_http_webhooks, |v| {
                std::env::var(v).ok()
            })
            .map_err(SlackError::Webhook)?;
            webhooks.insert(name.clone(), hook);
        }
        let client = post::Client::new(Duration::from_secs(s.timeout_secs))
            .map_err(|e| SlackError::Start(format!("HTTP client: {e}")))?;
        let consumer: BaseConsumer<Ctx> = crate::kafka::client::slack_consumer_config(&cfg)
            .create_with_context(Ctx {
                changes: Mutex::new(Changes::default()),
                paused: AtomicBool::new(false),
            })
            .map_err(|e| SlackError::Start(format!("Kafka consumer: {e}")))?;
        consumer
            .subscribe(&[cfg.kafka.topics.alerts.as_str()])
            .map_err(|e| SlackError::Start(format!("subscribe: {e}")))?;
        let status = Arc::new(Status {
            beat: Mutex::new(Instant::now()),
            assigned: Default::default(),
            stopping: AtomicBool::new(false),
            liveness: Duration::from_secs(cfg.http.liveness_timeout_secs.max(s.timeout_secs * 2)),
        });
        Ok(Forwarder {
            cfg,
            consumer,
            webhooks,
            client,
            seen: HashMap::new(),
            status,
            stop,
            report: Report::default(),
            dirty: false,
            last_commit: Instant::now(),
            last_lag: Instant::now(),
        })
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` when `slack.listen` is set.
    pub fn serve(&self) -> Result<Option<http::Server>, SlackError> {
        let listen = &self.cfg.slack.listen;
        let metrics = telemetry::install_slack(self.webhooks.keys().map(String::as_str));
        telemetry::register_error_codes(&crate::kafka::client::common_client_errors(), &[]);
        if listen.is_empty() {
            return Ok(None);
        }
        let addr = listen
            .parse()
            .map_err(|e| SlackError::Start(format!("slack.listen: {e}")))?;
        let limits = http::Limits::from_config(&self.cfg.http);
        let routes = http::ops(Arc::new(Probe(self.status.clone())), metrics);
        http::serve(addr, routes, limits, "http")
            .map(Some)
            .map_err(|e| SlackError::Start(format!("HTTP server on {listen}: {e}")))
    }

    /// Runs until the stop flag is set; commits what was handled and leaves the group.
    pub fn run(mut self) -> Report {
        tracing::info!(
            topic = %self.cfg.kafka.topics.alerts,
            group = %self.cfg.slack.group_id,
            webhooks = ?self.webhooks.keys().collect::<Vec<_>>(),
            "slack forwarder started"
        );
        while !self.stop.load(Ordering::Relaxed) {
            self.beat();
            let polled = self
                .consumer
                .poll(Duration::from_millis(200))
                .map(|r| r.map(|m| m.detach()));
            self.apply_changes();
            match polled {
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    telemetry::kafka_error(crate::kafka::client::error_code(&e));
                }
                Some(Ok(m)) => match self.handle(&m) {
                    Handled::Skipped => self.mark_done(m.topic(), m.partition(), m.offset()),
                    Handled::Posted => {
                        // Committed before anything else happens: the window in which
                        // a crash would post it again is this commit's round trip.
                        self.mark_done(m.topic(), m.partition(), m.offset());
                        self.commit(CommitMode::Sync);
                    }
                    // Do not move past it. When the partition is still ours (we are
                    // stopping), the next owner starts here.
                    Handled::Abandoned => continue,
                },
            }
            if self.dirty && self.last_commit.elapsed() >= Duration::from_secs(1) {
                self.commit(CommitMode::Async);
            }
            if self.last_lag.elapsed() >= Duration::from_secs(5) {
                self.lag();
            }
        }
        self.status.stopping.store(true, Ordering::Relaxed);
        if self.dirty {
            self.commit(CommitMode::Sync);
        }
        self.consumer.unsubscribe();
        tracing::info!(
            posted = self.report.posted,
            duplicates = self.report.duplicates,
            unrouted = self.report.unrouted,
            unreadable = self.report.unreadable,
            "slack forwarder stopped"
        );
        self.report
    }

    fn beat(&self) {
        if let Ok(mut b) = self.status.beat.lock() {
            *b = Instant::now();
        }
    }

    fn apply_changes(&mut self) {
        let changes = {
            let mut c = self
                .consumer
                .context()
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *c)
        };
        for p in changes.revoked {
            self.seen.remove(&p);
        }
        for p in changes.assigned {
            // Read back on the first message of the partition (its starting offset is
            // known then).
            self.seen.remove(&p);
        }
        let n = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.status.assigned.store(n, Ordering::Relaxed);
    }

    /// Exports the lag of every assigned partition (a metadata round trip each).
    fn lag(&mut self) {
        self.last_lag = Instant::now();
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
            else {
                continue;
            };
            let lag = match e.offset() {
                Offset::Offset(o) => high - o,
                _ => continue,
            };
            telemetry::slack_lag(e.partition(), lag);
        }
    }

    /// Handles one message: read, dropped as a repeat, routed, posted.
    fn handle(&mut self, m: &OwnedMessage) -> Handled {
        let p = m.partition();
        if !self.seen.contains_key(&p) {
            let seen = self.read_back(m.topic(), p, m.offset());
            self.seen.insert(p, seen);
        }
        let content_type = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "content-type")
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        let alert = match AlertView::read(m.payload().unwrap_or_default(), content_type) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(partition = p, offset = m.offset(), error = %e, "not an alert; skipped");
                telemetry::slack_alert("unreadable");
                self.report.unreadable += 1;
                return Handled::Skipped;
            }
        };
        let key = alert.key();
        if self.seen.get(&p).is_some_and(|s| s.contains(&key)) {
            tracing::debug!(alert_id = %key.0, sequence = key.1, "repeat; not posted again");
            telemetry::slack_alert("duplicate");
            self.report.duplicates += 1;
            return Handled::Skipped;
        }
        let Some(name) = self
            .cfg
            .slack
            .route(&alert.risk, &alert.value_tier, &alert.status)
            .map(str::to_owned)
        else {
            telemetry::slack_alert("unrouted");
            self.report.unrouted += 1;
            self.remember(p, key);
            return Handled::Skipped;
        };
        match self.deliver(&name, &alert, p) {
            Delivery::Accepted => {
                telemetry::slack_alert("posted");
                self.report.posted += 1;
                self.remember(p, key);
                tracing::info!(
                    alert_id = %alert.alert_id,
                    sequence = alert.sequence,
                    status = %alert.status,
                    webhook = %name,
                    "posted to slack"
                );
                Handled::Posted
            }
            Delivery::Abandoned => Handled::Abandoned,
        }
    }

    fn remember(&mut self, p: i32, key: (String, u64)) {
        if let Some(s) = self.seen.get_mut(&p) {
            s.insert(key);
        }
    }

    /// Posts until accepted; abandons when stopping or when the partition is revoked.
    fn deliver(&mut self, name: &str, alert: &AlertView, p: i32) -> Delivery {
        let s = &self.cfg.slack;
        let mut backoff = post::Backoff::new(
            Duration::from_millis(s.retry_initial_ms),
            Duration::from_millis(s.retry_max_ms),
        );
        let retry_after_max = Duration::from_secs(s.retry_after_max_secs);
        let mut body = message::block_kit(alert);
        let mut text_only = false;
        loop {
            let outcome = self.client.post(&self.webhooks[name], &body);
            telemetry::slack_post(name, outcome.label());
            let wait = match &outcome {
                Outcome::Accepted => return Delivery::Accepted,
                Outcome::RateLimited { retry_after } => retry_after
                    .map(|d| d.min(retry_after_max))
                    .unwrap_or_else(|| backoff.next_wait()),
                Outcome::ServerError { .. } | Outcome::Network { .. } => backoff.next_wait(),
                Outcome::Rejected { body: reason, .. } => {
                    if !text_only && post::is_payload_error(reason) {
                        tracing::warn!(webhook = %name, reason = %reason, alert_id = %alert.alert_id,
                            "slack refused the blocks; posting the text alone");
                        body = message::text_only(alert);
                        text_only = true;
                        continue;
                    }
                    backoff.max()
                }
            };
            if matches!(outcome, Outcome::Rejected { .. }) {
                tracing::error!(webhook = %name, outcome = %outcome, retry_in_ms = wait.as_millis() as u64,
                    "slack refused the post; the alert is kept and retried (check the webhook)");
            } else {
                tracing::warn!(webhook = %name, outcome = %outcome, retry_in_ms = wait.as_millis() as u64,
                    "slack post failed; retrying");
            }
            if !self.wait(wait, p) {
                return Delivery::Abandoned;
            }
        }
    }

    /// Waits with every partition paused, polling so that the consumer stays in its
    /// group. False when stopping or when partition `p` was revoked meanwhile.
    fn wait(&mut self, d: Duration, p: i32) -> bool {
        telemetry::slack_retrying(true);
        self.consumer.context().paused.store(true, Ordering::SeqCst);
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.pause(&a);
        }
        let until = Instant::now() + d;
        let mut keep = true;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                keep = false;
                break;
            }
            self.beat();
            // The lag keeps counting while a post waits (a webhook outage is when
            // alerts pile up and `ChurnsignalSlackForwarderBehind` must see them).
            if self.last_lag.elapsed() >= Duration::from_secs(5) {
                self.lag();
            }
            let left = until.saturating_duration_since(Instant::now());
            if let Some(Ok(m)) = self.consumer.poll(left.min(Duration::from_millis(200))) {
                // Fetched before the pause took effect: read it again later.
                let _ = self.consumer.seek(
                    m.topic(),
                    m.partition(),
                    Offset::Offset(m.offset()),
                    Duration::from_secs(5),
                );
            }
            let revoked = {
                let c = self
                    .consumer
                    .context()
                    .changes
                    .lock()
                    .unwrap_or_else(|x| x.into_inner());
                c.revoked.contains(&p)
            };
            if revoked {
                tracing::info!(
                    partition = p,
                    "partition revoked while retrying; its next owner posts the alert"
                );
                keep = false;
                break;
            }
        }
        self.consumer
            .context()
            .paused
            .store(false, Ordering::SeqCst);
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.resume(&a);
        }
        telemetry::slack_retrying(false);
        keep
    }

    fn mark_done(&mut self, topic: &str, p: i32, offset: i64) {
        if self.consumer.store_offset(topic, p, offset).is_ok() {
            self.dirty = true;
        }
    }

    fn commit(&mut self, mode: CommitMode) {
        match self.consumer.commit_consumer_state(mode) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
        self.dirty = false;
        self.last_commit = Instant::now();
    }

    /// The keys of the `dedup_lookback` alerts before `start` on partition `p`: alerts
    /// handled before this assignment (committed), whose repeats must not be posted.
    fn read_back(&self, topic: &str, p: i32, start: i64) -> Seen {
        let cap = self.cfg.slack.dedup_lookback as usize;
        let mut seen = Seen::new(cap);
        if cap == 0 || start <= 0 {
            return seen;
        }
        let began = Instant::now();
        let result = (|| -> Result<(), String> {
            let reader: BaseConsumer = crate::kafka::client::slack_reader_config(&self.cfg)
                .create()
                .map_err(|e| e.to_string())?;
            let (low, _) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let from = (start - cap as i64).max(low);
            if from >= start {
                return Ok(());
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            reader.assign(&tpl).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
                self.beat();
                match reader.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => {
                        if m.offset() >= start {
                            return Ok(());
                        }
                        if let Ok(a) = AlertView::read(m.payload().unwrap_or_default(), None) {
                            seen.insert(a.key());
                        }
                        if m.offset() + 1 >= start {
                            return Ok(());
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
                    Some(Err(e)) => tracing::warn!(error = %e, "reading back"),
                    None => {}
                }
            }
            Err("timed out after 60 s".into())
        })();
        match result {
            Ok(()) => tracing::info!(
                partition = p,
                remembered = seen.len(),
                ms = began.elapsed().as_millis() as u64,
                "read back the alerts before the committed offset"
            ),
            Err(e) => tracing::warn!(partition = p, error = %e, remembered = seen.len(),
                "could not read back all alerts before the committed offset; repeats of older ones may be posted"),
        }
        seen
    }
}

/// Runs the forwarder until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Report, SlackError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Off the async runtime: the blocking HTTP client owns a runtime of its own, which
    // must be neither created nor dropped inside another.
    let (forwarder, server) = tokio::task::spawn_blocking(move || {
        let forwarder = Forwarder::new(cfg, flag)?;
        let server = forwarder.serve()?;
        Ok::<_, SlackError>((forwarder, server))
    })
    .await
    .map_err(|e| SlackError::Start(format!("forwarder thread: {e}")))??;
    if let Some(s) = &server {
        tracing::info!(addr = %s.addr(), "http listening");
    }
    let worker = tokio::task::spawn_blocking(move || forwarder.run());
    shutdown.await;
    tracing::info!("shutdown requested");
    stop.store(true, Ordering::Relaxed);
    let report = worker
        .await
        .map_err(|e| SlackError::Start(format!("forwarder thread: {e}")))?;
    drop(server);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keys_are_bounded_and_forget_the_oldest_first() {
        let mut s = Seen::new(3);
        for i in 1..=4u64 {
            s.insert(("a".into(), i));
        }
        s.insert(("a".into(), 4));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&("a".into(), 1)), "the oldest is forgotten");
        assert!(s.contains(&("a".into(), 2)) && s.contains(&("a".into(), 4)));
        assert!(!s.contains(&("b".into(), 2)), "the key is the pair");
        let mut none = Seen::new(0);
        none.insert(("a".into(), 1));
        assert!(none.is_empty());
    }
}
