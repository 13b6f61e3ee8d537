//! `churnsignal slack`: the downstream forwarder from the alerts topic to Slack incoming
//! webhooks.
//!
//! ```text
//! alerts topic ──► own consumer group ──► read ──► seen? ──► route ──► webhook queue
//!                  (read_committed)        │        │ yes      │ none     │ one thread
//!                                     unreadable  skip      skip        ▼ per webhook
//!                   commit: first waiting offset + what is done after it ◄── POST
//! ```
//!
//! - **Never twice:** an alert is identified by (`alert_id`, `sequence`). The forwarder
//!   remembers the last [`dedup_lookback`](crate::config::SlackConfig::dedup_lookback)
//!   alerts of each partition; when it is assigned a partition it reads that many alerts
//!   before its starting offset back first, so repeats the service wrote around a crash
//!   (at-least-once) are recognised across forwarder restarts and moves too.
//! - **Never lost:** a failing webhook is retried (429 honouring `Retry-After`, 5xx and
//!   network errors with exponential back-off and jitter, a refusal at the longest
//!   back-off), never skipped ([`deliver`]).
//! - **No head-of-line blocking:** each webhook posts from its own queue, so a failing
//!   one holds back only its own alerts. The committed offset stays at the first alert
//!   still waiting; the alerts after it already handled are named in the commit's
//!   metadata ([`progress`]), so the next reader posts only the rest. A partition with
//!   [`max_waiting`](crate::config::SlackConfig::max_waiting) alerts waiting is paused
//!   until half have gone. The windows left for a repeat: a crash between Slack's answer
//!   and the commit right after it, and a post accepted after its partition moved.
//! - **Secrets:** webhook URLs come from files or environment variables, are held in a
//!   type whose `Debug` redacts them, and HTTP errors are logged without their URL.

pub mod deliver;
mod health;
pub mod message;
pub mod post;
pub mod progress;
pub mod seen;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::telemetry::events::{ClientError, Emit};
use crate::telemetry::{self, http};
use deliver::{Done, Job, Owned, Poster, Retry};
use health::{Probe, Status};
use message::AlertView;
use post::Webhook;
use progress::{Handover, Progress};
pub use seen::Seen;

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

/// Partitions taken away since the loop last looked (their remembered keys go).
#[derive(Default)]
struct Changes {
    revoked: Vec<i32>,
}

struct Ctx {
    topic: String,
    changes: Mutex<Changes>,
    /// Per partition, from its first message on.
    progress: Mutex<HashMap<i32, Progress>>,
    owned: Arc<Owned>,
    epochs: AtomicU64,
}

impl Ctx {
    fn progress(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A commit of `offsets` did not go through: they are sent again with the next one.
    fn commit_failed(&self, offsets: &TopicPartitionList) {
        let mut progress = self.progress();
        for el in offsets.elements() {
            if let Some(p) = progress.get_mut(&el.partition()) {
                p.commit_failed();
            }
        }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::client::log(level, fac, log_message);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // The partitions' last progress is committed while they are still ours; their
        // alerts waiting for a webhook are given up (`Owned`) to the next owner.
        let mut commit = TopicPartitionList::new();
        {
            let mut progress = self.progress();
            for e in tpl.elements() {
                self.owned.remove(e.partition());
                if let Some(mut p) = progress.remove(&e.partition()) {
                    if let Some((offset, meta)) = p.to_commit() {
                        add_commit(&mut commit, &self.topic, e.partition(), offset, &meta);
                    }
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "offset commit of revoked partitions failed");
            }
        }
        // A partition paused for its waiting alerts starts afresh with its next owner.
        let _ = consumer.resume(tpl);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
                    self.owned.insert(e.partition(), epoch);
                }
                let _ = consumer.resume(tpl);
            }
            Rebalance::Revoke(tpl) => self
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .revoked
                .extend(tpl.elements().iter().map(|e| e.partition())),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed");
            self.commit_failed(offsets);
        }
    }
}

fn add_commit(tpl: &mut TopicPartitionList, topic: &str, p: i32, offset: i64, meta: &str) {
    let mut e = tpl.add_partition(topic, p);
    if e.set_offset(Offset::Offset(offset)).is_ok() {
        e.set_metadata(meta);
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

/// A webhook as the consumer loop sees it: where its jobs go and how many wait.
struct Queue {
    name: String,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    waiting: u64,
}

/// The forwarder: one consumer loop that reads, drops repeats, routes and commits, and
/// one [`Poster`] thread per webhook.
pub struct Forwarder {
    cfg: Config,
    consumer: BaseConsumer<Ctx>,
    webhooks: Vec<Webhook>,
    queues: Vec<Queue>,
    done: Option<(Sender<Done>, Receiver<Done>)>,
    client: post::Client,
    seen: HashMap<i32, Seen>,
    /// Partitions paused because `max_waiting` of their alerts wait for a webhook.
    paused: HashSet<i32>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    report: Report,
    last_commit: Instant,
    last_lag: Instant,
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
        let mut webhooks = Vec::new();
        for (name, source) in &s.webhooks {
            let hook = Webhook::resolve(name, source, s.allow_http_webhooks, |v| {
                std::env::var(v).ok()
            })
            .map_err(SlackError::Webhook)?;
            webhooks.push(hook);
        }
        let client = post::Client::new(Duration::from_secs(s.timeout_secs))
            .map_err(|e| SlackError::Start(format!("HTTP client: {e}")))?;
        let consumer: BaseConsumer<Ctx> = crate::kafka::client::slack_consumer_config(&cfg)
            .create_with_context(Ctx {
                topic: cfg.kafka.topics.alerts.clone(),
                changes: Mutex::new(Changes::default()),
                progress: Mutex::new(HashMap::new()),
                owned: Arc::new(Owned::default()),
                epochs: AtomicU64::new(1),
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
        let mut forwarder = Forwarder {
            cfg,
            consumer,
            webhooks,
            queues: Vec::new(),
            done: Some(mpsc::channel()),
            client,
            seen: HashMap::new(),
            paused: HashSet::new(),
            status,
            stop,
            report: Report::default(),
            last_commit: Instant::now(),
            last_lag: Instant::now(),
        };
        forwarder.start_posters()?;
        Ok(forwarder)
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` when `slack.listen` is set.
    pub fn serve(&self) -> Result<Option<http::Server>, SlackError> {
        let listen = &self.cfg.slack.listen;
        let metrics = telemetry::install_slack(self.webhooks.iter().map(Webhook::name));
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

    /// Starts one poster thread per webhook.
    fn start_posters(&mut self) -> Result<(), SlackError> {
        let s = &self.cfg.slack;
        let retry = Retry {
            initial: Duration::from_millis(s.retry_initial_ms),
            max: Duration::from_millis(s.retry_max_ms),
            retry_after_max: Duration::from_secs(s.retry_after_max_secs),
        };
        let Some((done, _)) = &self.done else {
            return Ok(());
        };
        for (index, hook) in std::mem::take(&mut self.webhooks).into_iter().enumerate() {
            let name = hook.name().to_owned();
            let (jobs, rx) = mpsc::channel();
            let poster = Poster {
                index,
                hook,
                client: self.client.clone(),
                retry,
                owned: self.consumer.context().owned.clone(),
                stop: self.stop.clone(),
            };
            let thread = poster
                .spawn(rx, done.clone())
                .map_err(|e| SlackError::Start(format!("poster thread: {e}")))?;
            telemetry::slack_waiting(&name, 0);
            self.queues.push(Queue {
                name,
                jobs: Some(jobs),
                thread: Some(thread),
                waiting: 0,
            });
        }
        Ok(())
    }

    /// Runs until the stop flag is set; commits what was handled and leaves the group.
    pub fn run(mut self) -> Report {
        tracing::info!(
            topic = %self.cfg.kafka.topics.alerts,
            group = %self.cfg.slack.group_id,
            webhooks = ?self.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            "slack forwarder started"
        );
        while !self.stop.load(Ordering::Relaxed) {
            self.beat();
            // Posted alerts are committed before anything else happens: the window in
            // which a crash would post one again is this commit's round trip.
            if self.collect() {
                self.commit(CommitMode::Sync);
            }
            let polled = self
                .consumer
                .poll(Duration::from_millis(100))
                .map(|r| r.map(|m| m.detach()));
            self.apply_changes();
            match polled {
                None => {}
                Some(Err(e)) => ClientError {
                    code: crate::kafka::client::error_code(&e),
                    reason: &format!("consumer error: {e}"),
                }
                .emit(),
                Some(Ok(m)) => self.handle(&m),
            }
            if self.last_commit.elapsed() >= Duration::from_secs(1) {
                self.commit(CommitMode::Async);
            }
            if self.last_lag.elapsed() >= Duration::from_secs(5) {
                self.lag();
            }
        }
        self.status.stopping.store(true, Ordering::Relaxed);
        // The posters give up what waits (stop is set) and end with their queues; a
        // post in flight finishes first.
        for q in &mut self.queues {
            q.jobs = None;
        }
        for q in &mut self.queues {
            if let Some(t) = q.thread.take() {
                let _ = t.join();
            }
        }
        self.collect();
        self.commit(CommitMode::Sync);
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
            self.paused.remove(&p);
        }
        let n = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.status.assigned.store(n, Ordering::Relaxed);
    }

    /// Takes in what the posters finished; true when something was posted.
    fn collect(&mut self) -> bool {
        let Some((_, done)) = &self.done else {
            return false;
        };
        let finished: Vec<Done> = done.try_iter().collect();
        let mut posted = false;
        let ctx = self.consumer.context();
        for d in finished {
            if let Some(q) = self.queues.get_mut(d.webhook) {
                q.waiting = q.waiting.saturating_sub(1);
                telemetry::slack_waiting(&q.name, q.waiting);
            }
            if !d.posted {
                // Given up: stopping, or the partition moved. Not committed.
                continue;
            }
            posted = true;
            telemetry::slack_alert("posted");
            self.report.posted += 1;
            // Posted after its partition was revoked: its next owner reads it again
            // from the offset committed at the revocation (the one window for a
            // repeat besides a crash between Slack's answer and the commit).
            if ctx.owned.current(d.partition, d.epoch) {
                if let Some(p) = ctx.progress().get_mut(&d.partition) {
                    p.done(d.offset);
                }
            }
        }
        self.resume_drained();
        posted
    }

    /// Resumes the partitions paused for their waiting alerts once half have gone.
    fn resume_drained(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let limit = self.cfg.slack.max_waiting as usize;
        let drained: Vec<i32> = {
            let progress = self.consumer.context().progress();
            self.paused
                .iter()
                .copied()
                .filter(|p| progress.get(p).is_none_or(|x| x.waiting() <= limit / 2))
                .collect()
        };
        for p in drained {
            self.paused.remove(&p);
            self.pause(p, false);
        }
    }

    fn pause(&self, p: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.cfg.kafka.topics.alerts, p);
        let r = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(partition = p, error = %e, pause, "pause/resume failed");
        } else {
            tracing::info!(
                partition = p,
                paused = pause,
                max_waiting = self.cfg.slack.max_waiting,
                "alerts waiting for a webhook: partition {}",
                if pause { "paused" } else { "resumed" }
            );
        }
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

    /// The committed offset of `p` and what its writer handed over past it.
    fn handover(&self, topic: &str, p: i32) -> Option<(i64, Handover)> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| tracing::warn!(partition = p, error = %e, "reading the committed offset"))
            .ok()?;
        let e = committed.find_partition(topic, p)?;
        let Offset::Offset(offset) = e.offset() else {
            return None;
        };
        // rdkafka panics on metadata that is not UTF-8 (another tool's): nothing handed
        // over then.
        let meta =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_owned()))
                .unwrap_or_default();
        Some((offset, Handover::parse(offset, &meta)))
    }

    /// Handles one message: read, dropped as a repeat, routed, queued for its webhook.
    fn handle(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        let offset = m.offset();
        let Some(epoch) = self.consumer.context().owned.epoch(p) else {
            return;
        };
        if !self.seen.contains_key(&p) {
            let seen = seen::read_back(&self.cfg, &self.stop, || self.beat(), m.topic(), p, offset);
            self.seen.insert(p, seen);
            let (start, handover) = self
                .handover(m.topic(), p)
                .unwrap_or((offset, Handover::default()));
            if !handover.pending.is_empty() || handover.end > start {
                tracing::info!(
                    partition = p,
                    committed = start,
                    handed_over_until = handover.end,
                    waiting = handover.pending.len(),
                    "resuming after alerts posted past the committed offset"
                );
            }
            self.consumer
                .context()
                .progress()
                .insert(p, Progress::new(start.min(offset), handover));
        }
        let queued = self.route(m, p);
        let mut progress = self.consumer.context().progress();
        let Some(pr) = progress.get_mut(&p) else {
            return;
        };
        match queued {
            Some((queue, alert)) if !pr.handed_over(offset) => {
                pr.wait(offset);
                let full = pr.waiting() >= self.cfg.slack.max_waiting as usize;
                drop(progress);
                let q = &mut self.queues[queue];
                let job = Job {
                    partition: p,
                    epoch,
                    offset,
                    alert,
                };
                if q.jobs.as_ref().is_some_and(|j| j.send(job).is_ok()) {
                    q.waiting += 1;
                    telemetry::slack_waiting(&q.name, q.waiting);
                }
                if full && self.paused.insert(p) {
                    self.pause(p, true);
                }
            }
            Some((_, alert)) => {
                // Posted by the reader before us, past its committed offset.
                pr.done(offset);
                tracing::debug!(alert_id = %alert.alert_id, sequence = alert.sequence, offset,
                    "posted before this reader started; not posted again");
                telemetry::slack_alert("duplicate");
                self.report.duplicates += 1;
            }
            None => pr.done(offset),
        }
    }

    /// The webhook queue an alert goes to, or `None` when it is not posted (counted).
    fn route(&mut self, m: &OwnedMessage, p: i32) -> Option<(usize, AlertView)> {
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
                return None;
            }
        };
        let key = alert.key();
        if self.seen.get(&p).is_some_and(|s| s.contains(&key)) {
            tracing::debug!(alert_id = %key.0, sequence = key.1, "repeat; not posted again");
            telemetry::slack_alert("duplicate");
            self.report.duplicates += 1;
            return None;
        }
        // Remembered when queued: a repeat read while the first waits is not posted.
        if let Some(s) = self.seen.get_mut(&p) {
            s.insert(key);
        }
        let Some(name) = self
            .cfg
            .slack
            .route(&alert.risk, &alert.value_tier, &alert.status)
        else {
            telemetry::slack_alert("unrouted");
            self.report.unrouted += 1;
            return None;
        };
        let queue = self.queues.iter().position(|q| q.name == name)?;
        Some((queue, alert))
    }

    fn commit(&mut self, mode: CommitMode) {
        self.last_commit = Instant::now();
        let ctx = self.consumer.context();
        let mut tpl = TopicPartitionList::new();
        // Revoked partitions have no progress any more (the revocation committed it).
        for (p, pr) in ctx.progress().iter_mut() {
            if let Some((offset, meta)) = pr.to_commit() {
                add_commit(&mut tpl, &ctx.topic, *p, offset, &meta);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed");
            ctx.commit_failed(&tpl);
        }
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
