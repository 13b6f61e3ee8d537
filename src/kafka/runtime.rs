//! The live service: one consumer group member reading the input topics, partition
//! engines on worker threads restoring from and checkpointing to the state changelog,
//! an idempotent producer for at-least-once alerts and dead letters.
//!
//! Threads:
//! - the poll thread owns the consumer: it polls, hands messages to the worker that owns
//!   their partition in batches, pauses the consumer while a worker's queue is full
//!   (back-pressure instead of unbounded buffers), and runs the rebalance callbacks
//!   (assignment: workers restore; revocation: workers checkpoint and drop);
//! - `workers` threads each run the engines of their partitions (`super::worker`),
//!   each partition with its transactional producer, whose checkpoint transactions
//!   carry the state records and the input offsets (and, exactly-once, the outputs);
//! - librdkafka's producer threads call `ProducerCtx::delivery`, which settles each
//!   delivered record (a checkpoint waits for its partition's);
//! - the HTTP thread serves metrics, health and the customer API.
//!
//! Records are retried until delivered (no message timeout); when the broker is
//! unreachable the producer queue fills, workers wait, their queues fill, and the
//! consumer pauses, so memory stays bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use super::assignment::{CoPartitions, Epochs};
use super::client::{consumer_config, describe, producer_config, STATS_INTERVAL_MS};
use super::offsets::PartitionProgress;
use super::sync::Position;
use super::worker::{Assigned, Assignment, InMsg, PositionReport, Work, Worker};
use crate::config::{Config, InputTopic, KafkaConfig, OffsetReset};
use crate::telemetry::http::NotOk;
use crate::telemetry::{self, http};

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A Kafka client could not be created (bad librdkafka property, ...).
    #[error("kafka client: {0}")]
    Client(String),
    /// Broker metadata could not be read in time.
    #[error("cannot read metadata of topic {topic} from {brokers}: {message}")]
    Metadata {
        /// Topic.
        topic: String,
        /// Brokers.
        brokers: String,
        /// Why.
        message: String,
    },
    /// A configured topic does not exist.
    #[error("topic {topic} ({role}) does not exist; create it first")]
    MissingTopic {
        /// Topic.
        topic: String,
        /// Its role (orders, alerts, ...).
        role: &'static str,
    },
    /// The input topics have different partition counts.
    #[error("input topics are not co-partitioned (a customer's events must meet in one partition number on every topic): {0}")]
    NotCoPartitioned(String),
    /// The HTTP server could not bind.
    #[error("http server on {listen}: {message}")]
    Http {
        /// Address.
        listen: String,
        /// Why.
        message: String,
    },
    /// A failure while running (a record refused for good, ...).
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// What stopped a running service. Each variant says what the operator can look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// At-least-once: the broker refused an output record for good; its input offset is
    /// not committed, so the next start processes that input again.
    #[error("the broker refused a record for {topic}: {error}; its input offset is not committed")]
    RecordRefused {
        /// The output topic.
        topic: String,
        /// The broker's or the client's error.
        error: String,
    },
    /// The consumer hit a fatal error and is unusable.
    #[error("the consumer hit a fatal error: {code}{hint}")]
    ConsumerFatal {
        /// librdkafka's error code.
        code: String,
        /// What to do about it, when known.
        hint: &'static str,
    },
    /// Exactly-once: a partition's transaction failed in a way that cannot be rewound.
    #[error("partition {partition}: {why}")]
    Transaction {
        /// The input partition.
        partition: i32,
        /// Why.
        why: String,
    },
    /// Exactly-once: another producer with the partition's transactional id fenced this
    /// one.
    #[error("partition {partition}: {why} (fenced: another instance owns the partition now, or its transactional id is shared)")]
    Fenced {
        /// The input partition.
        partition: i32,
        /// Why.
        why: String,
    },
    /// A thread of the service could not be started or joined.
    #[error("thread {thread}: {error}")]
    Thread {
        /// Which.
        thread: &'static str,
        /// Why.
        error: String,
    },
}

impl Failure {
    /// Stable code, for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::RecordRefused { .. } => "record_refused",
            Failure::ConsumerFatal { .. } => "consumer_fatal",
            Failure::Transaction { .. } => "transaction",
            Failure::Fenced { .. } => "fenced",
            Failure::Thread { .. } => "thread",
        }
    }
}

impl RunError {
    /// Stable code, for logs.
    pub fn code(&self) -> &'static str {
        match self {
            RunError::Client(_) => "kafka_client",
            RunError::Metadata { .. } => "metadata",
            RunError::MissingTopic { .. } => "missing_topic",
            RunError::NotCoPartitioned(_) => "not_co_partitioned",
            RunError::Http { .. } => "http",
            RunError::Failed(f) => f.code(),
        }
    }
}

/// What the service did, observable while it runs (the demo, benchmarks and tests
/// read it; the HTTP probes decide from it).
#[derive(Debug)]
pub struct Status {
    start: Instant,
    beats: Vec<AtomicU64>,
    /// Input topic-partitions assigned.
    pub assigned: AtomicUsize,
    /// Largest consumer lag over assigned partitions; -1 while unknown.
    pub max_lag: AtomicI64,
    /// Set when the consumer left the group (MAXPOLL) until the next assignment.
    pub left_group: AtomicBool,
    /// Set at shutdown: readiness goes false.
    pub stopping: AtomicBool,
    /// Input messages processed (valid and invalid).
    pub events: AtomicU64,
    /// Of which dead-lettered.
    pub dead_letters: AtomicU64,
    /// Alerts handed to the producer.
    pub alerts_sent: AtomicU64,
    /// Records (alerts and dead letters) acknowledged by the broker.
    pub acked: AtomicU64,
    /// Offset commits that succeeded.
    pub commits: AtomicU64,
    /// Events handed to workers and not yet processed.
    pub queued: AtomicI64,
    /// Highest `queued` seen.
    pub max_queued: AtomicI64,
    /// Highest producer in-flight count seen.
    pub max_producer_in_flight: AtomicI64,
    /// Partitions restoring their state now.
    pub restoring: AtomicUsize,
    /// The consumer's group metadata, as fresh as the poll loop keeps it: offsets sent
    /// to a transaction carry the member's epoch, which under KIP-848 changes whenever
    /// the member's assignment does (a stale one is refused with ILLEGAL_GENERATION).
    group: GroupCell,
    abandon_after: Mutex<Option<Instant>>,
    failure: Mutex<Option<Failure>>,
    failed: AtomicBool,
    /// Event-to-alert latencies in microseconds, when recording is on (benchmarks).
    pub latencies_us: Option<Mutex<Vec<u64>>>,
}

#[derive(Default)]
struct GroupCell(Mutex<Option<Arc<ConsumerGroupMetadata>>>);

impl std::fmt::Debug for GroupCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCell")
    }
}

impl Status {
    /// The consumer's group metadata for offsets sent to a transaction (fences zombies).
    pub(crate) fn group(&self) -> Option<Arc<ConsumerGroupMetadata>> {
        self.group.0.lock().expect("group lock").clone()
    }

    fn refresh_group(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        *self.group.0.lock().expect("group lock") = consumer.group_metadata().map(Arc::new);
    }

    fn new(workers: usize, record_latencies: bool) -> Status {
        Status {
            start: Instant::now(),
            beats: (0..=workers).map(|_| AtomicU64::new(0)).collect(),
            assigned: AtomicUsize::new(0),
            max_lag: AtomicI64::new(-1),
            left_group: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            events: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            alerts_sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            max_queued: AtomicI64::new(0),
            max_producer_in_flight: AtomicI64::new(0),
            restoring: AtomicUsize::new(0),
            group: GroupCell::default(),
            abandon_after: Mutex::new(None),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            latencies_us: record_latencies.then(|| Mutex::new(Vec::new())),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// Loop `i` (0 = poll loop, 1.. = workers) is alive.
    pub(crate) fn beat(&self, i: usize) {
        self.beats[i].store(self.now_ms(), Ordering::Relaxed);
    }

    /// [`Status::beat`] with a clock reading the caller already has.
    pub(crate) fn beat_at(&self, i: usize, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64 + 1;
        self.beats[i].store(ms, Ordering::Relaxed);
    }

    pub(crate) fn enqueued(&self, n: i64) {
        let q = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        self.max_queued.fetch_max(q, Ordering::Relaxed);
    }

    pub(crate) fn dequeued(&self, n: i64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn processed(&self, events: u64, alerts: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.alerts_sent.fetch_add(alerts, Ordering::Relaxed);
    }

    pub(crate) fn timer_alerts(&self, alerts: usize) {
        self.alerts_sent.fetch_add(alerts as u64, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failure that stops the service.
    pub(crate) fn fail(&self, why: Failure) {
        tracing::error!(error = %why, code = why.code(), "stopping");
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_none() {
            *f = Some(why);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// The failure that stopped the service, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// True once shutdown is past the point where pending sends are given up.
    pub(crate) fn abandon_sends(&self) -> bool {
        self.failure().is_some()
            || self
                .abandon_after
                .lock()
                .expect("abandon lock")
                .is_some_and(|t| Instant::now() >= t)
    }

    /// Liveness: every loop reported within `timeout`.
    pub fn live(&self, timeout: Duration) -> Result<(), NotOk> {
        let now = self.now_ms();
        for (i, b) in self.beats.iter().enumerate() {
            let last = b.load(Ordering::Relaxed);
            if last == 0 {
                continue; // not started yet
            }
            if now.saturating_sub(last) > timeout.as_millis() as u64 {
                let name = if i == 0 {
                    "consumer loop".to_owned()
                } else {
                    format!("worker {}", i - 1)
                };
                return Err(NotOk::Stalled {
                    name,
                    ms: now.saturating_sub(last),
                });
            }
        }
        Ok(())
    }

    /// Readiness: running, partitions assigned, in the group, lag known and small.
    pub fn ready(&self, max_lag: i64) -> Result<(), NotOk> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(NotOk::ShuttingDown);
        }
        if let Some(f) = self.failure() {
            return Err(NotOk::Failed(f.to_string()));
        }
        if self.left_group.load(Ordering::Relaxed) {
            return Err(NotOk::LeftGroup);
        }
        if self.assigned.load(Ordering::Relaxed) == 0 {
            return Err(NotOk::NothingAssigned("partitions"));
        }
        let restoring = self.restoring.load(Ordering::Relaxed);
        if restoring > 0 {
            return Err(NotOk::Restoring(restoring));
        }
        let lag = self.max_lag.load(Ordering::Relaxed);
        if lag < 0 {
            return Err(NotOk::LagUnknown);
        }
        if lag > max_lag {
            return Err(NotOk::CatchingUp { lag, max: max_lag });
        }
        Ok(())
    }
}

/// Delivery bookkeeping of one produced record.
pub(crate) struct Delivery {
    pub progress: Option<Arc<Mutex<PartitionProgress>>>,
    /// At-least-once: the partition's count of unacknowledged outputs.
    pub pending: Option<Arc<AtomicI64>>,
    pub offset: i64,
    pub input_ts_ms: i64,
    pub alert: bool,
}

impl Delivery {
    /// A record whose delivery nothing waits for one by one (state records: their
    /// transaction's commit waits for all of them). One is shared by all.
    pub fn untracked() -> Delivery {
        Delivery {
            progress: None,
            pending: None,
            offset: -1,
            input_ts_ms: -1,
            alert: false,
        }
    }
}

/// The producer's context: acknowledges delivered records, routes logs.
pub(crate) struct ProducerCtx {
    status: Arc<Status>,
    /// A partition's transactional producer: a failed record fails its transaction,
    /// which the worker handles; it does not stop the service by itself.
    transactional: bool,
}

impl ProducerCtx {
    /// The context of a partition's transactional producer.
    pub fn transactional(status: Arc<Status>) -> ProducerCtx {
        ProducerCtx {
            status,
            transactional: true,
        }
    }
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Arc<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Arc<Delivery>) {
        self.settle(result);
        if let Some(p) = &d.pending {
            // Refused records count as settled too, after the failure is recorded: a
            // checkpoint never commits past a failure.
            p.fetch_sub(1, Ordering::AcqRel);
        }
        self.acknowledge(result, &d);
    }
}

impl ProducerCtx {
    fn settle(&self, result: &DeliveryResult<'_>) {
        if let Err((e, msg)) = result {
            let code = super::client::error_code(e);
            let purged = matches!(
                e,
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                )
            );
            if self.transactional && purged {
                // Purged by the abort of its transaction: that abort was logged, with
                // its cause, and not once per record.
                return;
            }
            telemetry::produce_error(code);
            if self.transactional {
                tracing::warn!(error = %e, topic = msg.topic(), "a record of a transaction failed; the transaction aborts");
            } else if !self.status.stopping.load(Ordering::Relaxed) {
                self.status.fail(Failure::RecordRefused {
                    topic: msg.topic().to_owned(),
                    error: e.to_string(),
                });
            }
        }
    }

    fn acknowledge(&self, result: &DeliveryResult<'_>, d: &Delivery) {
        if result.is_err() {
            return;
        }
        if let Some(p) = &d.progress {
            if let Err(e) = p.lock().expect("progress lock").acked(d.offset) {
                tracing::error!(error = %e, "offset tracking");
            }
        }
        if d.alert || d.offset >= 0 {
            self.status.acked.fetch_add(1, Ordering::Relaxed);
        }
        if d.alert && d.input_ts_ms > 0 {
            let now = super::worker::wall_now().0;
            let ms = (now - d.input_ts_ms).max(0);
            telemetry::event_to_alert_latency(ms as f64 / 1000.0);
            if let Some(l) = &self.status.latencies_us {
                l.lock().expect("latency lock").push(ms as u64 * 1000);
            }
        }
    }
}

/// Routes a librdkafka log line into tracing (target `librdkafka`).
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{msg}")
        }
        Warning => tracing::warn!(target: "librdkafka", facility = fac, "{msg}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility = fac, "{msg}"),
        Debug => tracing::debug!(target: "librdkafka", facility = fac, "{msg}"),
    }
}

fn client_error(error: KafkaError, reason: &str) {
    let code = super::client::error_code(&error);
    tracing::warn!(target: "librdkafka", code = %code, "{reason}");
    telemetry::kafka_error(code);
}

/// Input topic-partitions (topic index, partition) whose synchronization buffers are
/// full (see [`super::sync`]): their workers ask the poll loop to pause them until the
/// other inputs of their partitions catch up in event time.
#[derive(Debug, Default)]
pub(crate) struct FullBuffers {
    set: Mutex<BTreeSet<(usize, i32)>>,
    changed: AtomicBool,
}

impl FullBuffers {
    /// Topic-partition `tp`'s buffer is full, or no longer is.
    pub fn set(&self, tp: (usize, i32), full: bool) {
        let mut s = self.set.lock().expect("full buffers lock");
        let changed = if full { s.insert(tp) } else { s.remove(&tp) };
        if changed {
            self.changed.store(true, Ordering::Release);
        }
    }

    /// Partition `p` stopped here: none of its buffers is full any more.
    pub fn clear_partition(&self, p: i32) {
        let mut s = self.set.lock().expect("full buffers lock");
        let before = s.len();
        s.retain(|(_, q)| *q != p);
        if s.len() != before {
            self.changed.store(true, Ordering::Release);
        }
    }

    fn snapshot(&self) -> BTreeSet<(usize, i32)> {
        self.set.lock().expect("full buffers lock").clone()
    }
}

/// The input topic-partitions to keep paused: all of them under back-pressure, else
/// those waiting for the rest of their partition and those whose buffers are full.
fn desired_pauses(
    assigned: &BTreeSet<(usize, i32)>,
    backpressure: bool,
    waiting: &BTreeSet<(usize, i32)>,
    full: &BTreeSet<(usize, i32)>,
) -> BTreeSet<(usize, i32)> {
    if backpressure {
        return assigned.clone();
    }
    assigned
        .iter()
        .filter(|tp| waiting.contains(tp) || full.contains(tp))
        .copied()
        .collect()
}

/// After a topic-partition is paused, resumed or moved, librdkafka's statistics go on
/// showing its fetch position from before (they are refreshed with each fetch
/// response): a position report says it is caught up only once this has passed since.
fn settle_time(cfg: &KafkaConfig) -> Duration {
    let fetch_wait = cfg
        .consumer_properties
        .pairs()
        .chain(cfg.properties.pairs())
        .find(|(k, _)| *k == "fetch.wait.max.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(500);
    Duration::from_millis(2 * u64::from(STATS_INTERVAL_MS) + fetch_wait)
}

/// State shared by the poll thread, the consumer callbacks and the HTTP probe.
struct Shared {
    cfg: Arc<Config>,
    inputs: Arc<Vec<InputTopic>>,
    status: Arc<Status>,
    workers: Mutex<Vec<SyncSender<Work>>>,
    /// Input topic-partitions assigned.
    tracked: Mutex<BTreeSet<(usize, i32)>>,
    /// Of those, by partition number: which engines run.
    co: Mutex<CoPartitions>,
    /// The running partitions' epochs.
    epochs: Arc<Epochs>,
    producer: ThreadedProducer<ProducerCtx>,
    /// The poll loop has paused the consumer (back-pressure). librdkafka keeps a
    /// partition's pause across a rebalance, but a resume only reaches the partitions
    /// assigned when it is called: each rebalance therefore resumes the partitions it
    /// takes away and gives the ones it brings this state.
    paused: AtomicBool,
    /// The consumed position of each input partition this instance consumes (for the
    /// lag monitor).
    own: super::lag::OwnPositions,
    /// Topic-partitions whose workers' buffers are full.
    full: Arc<FullBuffers>,
    /// The input topic-partitions paused now, and when each last changed (paused,
    /// resumed, sought or assigned).
    pauses: Mutex<Pauses>,
    /// Position reports from the last statistics, for the poll loop to hand on.
    reports: Mutex<Vec<PositionReport>>,
    reports_ready: AtomicBool,
    /// See [`settle_time`].
    settle: Duration,
}

/// What the poll loop has paused, and when each topic-partition's fetching last changed.
#[derive(Debug, Default)]
struct Pauses {
    paused: BTreeSet<(usize, i32)>,
    changed: BTreeMap<(usize, i32), Instant>,
}

impl Pauses {
    fn touch(&mut self, tp: (usize, i32), at: Instant) {
        self.changed.insert(tp, at);
    }

    /// Its fetch position in librdkafka's statistics is current.
    fn settled(&self, tp: (usize, i32), at: Instant, settle: Duration) -> bool {
        !self.paused.contains(&tp)
            && self
                .changed
                .get(&tp)
                .is_none_or(|t| at.saturating_duration_since(*t) >= settle)
    }
}

impl Shared {
    fn topic_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|t| t.name == name)
    }

    fn worker_of(&self, partition: i32, n: usize) -> usize {
        partition.unsigned_abs() as usize % n
    }

    /// Sends to a worker, waiting at most `timeout` for room.
    fn send_to(&self, w: usize, mut work: Work, timeout: Duration) -> bool {
        let Some(tx) = self.workers.lock().expect("workers lock").get(w).cloned() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match tx.try_send(work) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    work = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    fn worker_count(&self) -> usize {
        self.workers.lock().expect("workers lock").len()
    }

    /// Pauses and resumes input topic-partitions so that exactly those of
    /// [`desired_pauses`] are paused. Only changes are passed on: librdkafka drops what
    /// it has prefetched of a partition at every pause or resume, even a repeated one.
    fn apply_pauses(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        let assigned = self.tracked.lock().expect("tracked lock").clone();
        let waiting: BTreeSet<(usize, i32)> = self
            .co
            .lock()
            .expect("co-partitions lock")
            .waiting()
            .into_iter()
            .collect();
        let full = self.full.snapshot();
        let backpressure = self.paused.load(Ordering::SeqCst);
        let desired = desired_pauses(&assigned, backpressure, &waiting, &full);
        let mut pauses = self.pauses.lock().expect("pauses lock");
        pauses.paused.retain(|tp| assigned.contains(tp));
        let pause: Vec<(usize, i32)> = desired.difference(&pauses.paused).copied().collect();
        let resume: Vec<(usize, i32)> = pauses.paused.difference(&desired).copied().collect();
        if !pause.is_empty() {
            if let Err(e) = consumer.pause(&self.list(&pause)) {
                tracing::warn!(error = %e, "pausing input partitions");
            }
        }
        if !resume.is_empty() {
            if let Err(e) = consumer.resume(&self.list(&resume)) {
                tracing::warn!(error = %e, "resuming input partitions");
            }
        }
        let now = Instant::now();
        for tp in pause.iter().chain(&resume) {
            pauses.touch(*tp, now);
        }
        pauses.paused = desired;
    }

    /// New topic-partitions (all of them under the eager classic protocol, the added
    /// ones under KIP-848). Each partition now held whole starts: a new epoch, and its
    /// worker restores its engine. Topic-partitions whose partition is not whole yet
    /// wait, paused; ones that waited are read again from their committed offsets when
    /// it starts (what the poll loop fetched meanwhile was dropped).
    fn assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("assign");
        self.status.left_group.store(false, Ordering::Relaxed);
        let added = self.input_partitions(tpl);
        let mut tracked = self.tracked.lock().expect("tracked lock");
        tracked.extend(added.iter().copied());
        self.status.assigned.store(tracked.len(), Ordering::Relaxed);
        telemetry::assigned_partitions(tracked.len());
        let partitions: BTreeSet<i32> = tracked.iter().map(|(_, p)| *p).collect();
        drop(tracked);
        let mut co = self.co.lock().expect("co-partitions lock");
        let start = co.assign(added.iter().copied());
        let waiting = co.waiting();
        let starting: Vec<(usize, i32)> = start
            .iter()
            .flat_map(|p| co.held(*p).into_iter().map(move |t| (t, *p)))
            .collect();
        drop(co);
        if !waiting.is_empty() {
            tracing::info!(
                waiting = ?self.names(&waiting),
                "topic-partitions wait for the rest of their partition"
            );
        }
        {
            let now = Instant::now();
            let mut pauses = self.pauses.lock().expect("pauses lock");
            for tp in &added {
                pauses.touch(*tp, now);
            }
        }
        if starting.is_empty() {
            self.apply_pauses(consumer);
            return;
        }
        let committed = consumer
            .committed_offsets(self.list(&starting), Duration::from_secs(10))
            .map_err(|e| tracing::warn!(error = %e, "reading committed offsets"))
            .ok();
        let committed_of = |t: usize, p: i32| -> Option<i64> {
            let c = committed
                .as_ref()?
                .find_partition(&self.inputs[t].name, p)?;
            match c.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        };
        // Those that waited: back to their committed offsets, fetching again.
        let waited: Vec<(usize, i32)> = starting
            .iter()
            .copied()
            .filter(|k| !added.contains(k))
            .collect();
        if !waited.is_empty() {
            let reset = match self.cfg.kafka.auto_offset_reset {
                OffsetReset::Earliest => Offset::Beginning,
                OffsetReset::Latest => Offset::End,
            };
            for (t, p) in &waited {
                let to = committed_of(*t, *p).map_or(reset, Offset::Offset);
                if let Err(e) =
                    consumer.seek(&self.inputs[*t].name, *p, to, Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, topic = %self.inputs[*t].name, partition = p, "seeking a topic-partition that waited");
                }
            }
        }
        // The ones that waited resume (unless back-pressure holds everything).
        self.apply_pauses(consumer);
        let n = self.worker_count().max(1);
        let mut per_worker: Vec<Vec<Assigned>> = (0..n).map(|_| Vec::new()).collect();
        let epochs: BTreeMap<i32, u64> =
            start.iter().map(|p| (*p, self.epochs.start(*p))).collect();
        for (t, p) in &starting {
            per_worker[self.worker_of(*p, n)].push(Assigned {
                topic: *t,
                partition: *p,
                epoch: epochs[p],
                progress: Arc::new(Mutex::new(PartitionProgress::default())),
                committed: committed_of(*t, *p),
            });
        }
        let cap = self.cfg.engine.max_customers;
        let cap_share = if cap == 0 {
            0
        } else {
            (cap / partitions.len().max(1) as u64).max(1)
        };
        self.status.refresh_group(consumer);
        tracing::info!(partitions = ?start, "partitions start");
        for p in &start {
            telemetry::partition_engine("start", *p);
        }
        for (w, list) in per_worker.into_iter().enumerate() {
            let a = Assignment { list, cap_share };
            if !self.send_to(w, Work::Assign(a), Duration::from_secs(30)) {
                tracing::warn!(worker = w, "worker did not take its assignment");
            }
        }
    }

    /// Topic-partitions going away (all under the eager classic protocol, some under
    /// KIP-848). A running partition that loses any of its topics stops: its worker
    /// finishes what it holds of it and checkpoints it (state and offsets, once its
    /// outputs are acknowledged) before the group moves it. What remains of it waits,
    /// paused, to be revoked too.
    fn revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("revoke");
        let gone = self.input_partitions(tpl);
        let mut co = self.co.lock().expect("co-partitions lock");
        let stop = co.revoke(gone.iter().copied());
        drop(co);
        for p in &stop {
            self.epochs.stop(*p);
            telemetry::partition_engine("stop", *p);
        }
        let stopping = self.status.stopping.load(Ordering::SeqCst);
        if !stopping && !stop.is_empty() {
            let wait = Duration::from_secs(self.cfg.kafka.shutdown_timeout_secs.min(10));
            let n = self.worker_count();
            let all_topics = 0..self.inputs.len();
            let mut replies = Vec::new();
            for w in 0..n {
                let (tx, rx) = sync_channel(1);
                let mine: Vec<(usize, i32)> = stop
                    .iter()
                    .filter(|p| self.worker_of(**p, n) == w)
                    .flat_map(|p| all_topics.clone().map(move |t| (t, *p)))
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if self.send_to(w, Work::Revoke(mine, tx), wait) {
                    replies.push(rx);
                }
            }
            for rx in replies {
                let _ = rx.recv_timeout(wait);
            }
            if consumer.assignment_lost() {
                // The group already gave the partitions away: their checkpoints were
                // refused (fenced) or will be; the next owner restores the last
                // committed one.
                tracing::warn!("assignment lost; input since the last checkpoint is processed again by the next owner");
            }
        }
        self.status.refresh_group(consumer);
        let mut tracked = self.tracked.lock().expect("tracked lock");
        for k in &gone {
            tracked.remove(k);
        }
        self.status.assigned.store(tracked.len(), Ordering::Relaxed);
        telemetry::assigned_partitions(tracked.len());
        drop(tracked);
        {
            // Resumed as they left (see `pre_rebalance`).
            let mut pauses = self.pauses.lock().expect("pauses lock");
            for tp in &gone {
                pauses.paused.remove(tp);
                pauses.changed.remove(tp);
            }
        }
        // What is left of stopped partitions waits, paused.
        self.apply_pauses(consumer);
        tracing::info!(revoked = gone.len(), stopped = ?stop, "topic-partitions revoked");
    }

    /// The input topic-partitions of a list, as (topic index, partition).
    fn input_partitions(&self, tpl: &TopicPartitionList) -> Vec<(usize, i32)> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())))
            .collect()
    }

    /// A list of topic-partitions.
    fn list(&self, tps: &[(usize, i32)]) -> TopicPartitionList {
        let mut l = TopicPartitionList::new();
        for (t, p) in tps {
            l.add_partition(&self.inputs[*t].name, *p);
        }
        l
    }

    fn names(&self, tps: &[(usize, i32)]) -> Vec<String> {
        tps.iter()
            .map(|(t, p)| format!("{}[{p}]", self.inputs[*t].name))
            .collect()
    }

    fn lag(&self, stats: &Statistics) {
        let mut max: Option<i64> = None;
        let mut own = self.own.lock().expect("own positions lock");
        own.clear();
        for (ti, t) in self.inputs.iter().enumerate() {
            let Some(ts) = stats.topics.get(&t.name) else {
                continue;
            };
            for (p, ps) in &ts.partitions {
                if *p < 0 || !ps.desired {
                    continue;
                }
                if let Some(position) = consumed_position(ps) {
                    own.insert((ti, *p), position);
                }
                match partition_lag(ps) {
                    Some(l) => max = Some(max.map_or(l, |m: i64| m.max(l))),
                    None => max = Some(i64::MAX),
                }
            }
        }
        drop(own);
        let v = match max {
            Some(i64::MAX) | None => -1,
            Some(m) => m,
        };
        self.status.max_lag.store(v, Ordering::Relaxed);
        telemetry::ready(self.status.ready(self.cfg.kafka.ready_max_lag).is_ok());
    }

    /// What the statistics tell of the running partitions' inputs, for their workers'
    /// stream-time synchronization (handed on by the poll loop after every message it
    /// polled before them).
    fn positions(&self, stats: &Statistics) {
        let now = Instant::now();
        let epochs = self.epochs.snapshot();
        let pauses = self.pauses.lock().expect("pauses lock");
        let mut out = Vec::new();
        for (ti, t) in self.inputs.iter().enumerate() {
            let Some(ts) = stats.topics.get(&t.name) else {
                continue;
            };
            for (p, ps) in &ts.partitions {
                let Some(epoch) = epochs.get(p) else {
                    continue;
                };
                if !ps.desired {
                    continue;
                }
                let settled = pauses.settled((ti, *p), now, self.settle);
                let gone = ps.unknown;
                let position = if gone { None } else { position_of(ps, settled) };
                if gone || position.is_some() {
                    out.push(PositionReport {
                        topic: ti,
                        partition: *p,
                        epoch: *epoch,
                        position,
                    });
                }
            }
        }
        drop(pauses);
        if !out.is_empty() {
            *self.reports.lock().expect("reports lock") = out;
            self.reports_ready.store(true, Ordering::Release);
        }
    }
}

/// A partition's end as the consumer reads it (`read_committed`): the last stable
/// offset, else the high watermark; `None` while unknown.
fn end_of(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if ps.ls_offset >= 0 {
        ps.ls_offset
    } else {
        ps.hi_offset
    };
    (end >= 0).then_some(end)
}

/// An input topic-partition's end as librdkafka's statistics show it (the last stable
/// offset: the consumer reads `read_committed`), and whether it is caught up: its fetch
/// position has reached the end (past transaction markers too, which a consumed
/// message's offset never shows) in the active fetch state, and everything below was
/// passed on. The fetch position is trusted only when `settled`: not paused, nor paused,
/// resumed or moved lately (see [`settle_time`]). A log that ends in an aborted
/// transaction is not caught up by this (what the consumer passed on stops short of
/// the aborted messages): its partition waits for its next message. `None` while the
/// end is unknown.
fn position_of(ps: &rdkafka::statistics::Partition, settled: bool) -> Option<Position> {
    let end = end_of(ps)?;
    // The fetch position is refreshed only with each fetch response: after a pause
    // (which drops what was prefetched) it goes on showing what had been fetched, and the
    // dropped messages come again later. It is trusted only when the consumer has also
    // passed on everything below the end but, at most, one transaction marker (or nothing
    // yet at all, as at the start of an empty partition).
    let passed_on = ps.app_offset < 0 || ps.app_offset >= end - 1;
    let caught_up = settled
        && passed_on
        && ps.fetch_state == "active"
        && ps.next_offset >= 0
        && ps.next_offset >= end;
    Some(Position { end, caught_up })
}

/// A partition's lag from librdkafka's statistics: its end (the last stable offset, as
/// the consumer reads `read_committed`) minus the position the application has
/// consumed to. Not librdkafka's own `consumer_lag`: that counts from the consumer's
/// committed offset, which transactional checkpoints (offsets sent by a producer) never
/// update, so it would stay where it was at assignment. Before the first message
/// since assignment, the committed offset fetched at assignment is the position.
/// `None` while the end or the position is unknown.
fn partition_lag(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = end_of(ps)?;
    Some((end - consumed_position(ps)?).max(0))
}

/// The position a partition is consumed to: the offset after the last message passed
/// on, before the first one since assignment the committed offset fetched then, before
/// that the log start. `None` while unknown.
fn consumed_position(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let position = ps.app_offset.max(ps.committed_offset);
    if position >= 0 {
        Some(position)
    } else if ps.lo_offset >= 0 {
        Some(ps.lo_offset)
    } else {
        None
    }
}

/// The consumer's context: rebalances, commits, statistics, logs.
pub(crate) struct ConsumerCtx {
    shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.shared.lag(&statistics);
        self.shared.positions(&statistics);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // A partition that leaves paused would come back paused in a later
                // assignment, with nothing left to resume it.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming revoked partitions");
                }
                self.shared.revoke(consumer, tpl)
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                telemetry::rebalance("error");
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Nothing is fetched of them yet: they start unpaused, and the assignment
            // pauses what must wait (back-pressure, the rest of their partition).
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming assigned partitions");
            }
            self.shared.assign(consumer, tpl);
        }
    }
}

/// A running service. Stop it with [`Service::stop`].
pub struct Service {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    poll: Option<JoinHandle<()>>,
    lag: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    http: Option<http::Server>,
    api: Option<http::Server>,
}

/// The operations server on `http.listen` and the customer API on
/// `http.customer_api.listen`, each when its address is set.
fn start_http(
    c: &crate::config::HttpConfig,
    probe: Arc<dyn http::Probe>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(Option<http::Server>, Option<http::Server>), RunError> {
    let limits = http::Limits::from_config(c);
    let bind = |listen: &str, router, name| -> Result<Option<http::Server>, RunError> {
        if listen.is_empty() {
            return Ok(None);
        }
        let failed = |message: String| RunError::Http {
            listen: listen.to_owned(),
            message,
        };
        let addr: SocketAddr = listen.parse().map_err(|e| failed(format!("{e}")))?;
        http::serve(addr, router, limits, name)
            .map(Some)
            .map_err(|e| failed(e.to_string()))
    };
    let ops = bind(&c.listen, http::ops(probe.clone(), metrics), "http")?;
    let a = &c.customer_api;
    let api = if a.listen.is_empty() {
        None
    } else {
        let access =
            http::Access::load(a, |k| std::env::var(k).ok()).map_err(|message| RunError::Http {
                listen: a.listen.clone(),
                message,
            })?;
        let limit = http::RateLimit::new(a.rate_per_sec, a.rate_burst);
        bind(&a.listen, http::api(probe, access, limit), "customer-api")?
    };
    Ok((ops, api))
}

/// Totals at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Input messages processed.
    pub events: u64,
    /// Of which dead-lettered.
    pub dead_letters: u64,
    /// Alerts produced.
    pub alerts: u64,
    /// Records acknowledged by the broker.
    pub acked: u64,
}

/// Options for [`Service::start`] that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Keep every event-to-alert latency in [`Status::latencies_us`] (benchmarks).
    pub record_latencies: bool,
}

const BATCH: usize = 512;

/// How long the poll loop waits for room in a worker queue before it pauses the consumer.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

fn set_paused(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, pause: bool) {
    shared.paused.store(pause, Ordering::SeqCst);
    shared.apply_pauses(consumer);
    telemetry::backpressure(pause);
}

impl Service {
    /// Checks the topics, joins the group and starts processing.
    pub fn start(cfg: Config, opts: StartOptions) -> Result<Service, RunError> {
        let cfg = Arc::new(cfg);
        let k = &cfg.kafka;
        let workers = if k.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            k.workers
        };
        let inputs = Arc::new(k.input_topics());
        let status = Arc::new(Status::new(workers, opts.record_latencies));
        let metrics = telemetry::install();
        telemetry::register_error_codes(
            &super::client::common_client_errors(),
            &super::client::common_produce_errors(),
        );
        for t in inputs.iter() {
            // Zero for every reason from the start: rates and ratios in the alert rules
            // see a topic's dead letters before the first one.
            for reason in crate::decode::Reason::ALL {
                telemetry::dead_letters(&t.name, reason.code()).increment(0);
            }
        }
        let pcfg = producer_config(k);
        tracing::debug!(config = %describe(&pcfg), "producer");
        let producer: ThreadedProducer<ProducerCtx> = pcfg
            .create_with_context(ProducerCtx {
                status: status.clone(),
                transactional: false,
            })
            .map_err(|e| RunError::Client(e.to_string()))?;
        let per_worker = (k.worker_queue_events / BATCH).max(1);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = sync_channel::<Work>(per_worker);
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            inputs: inputs.clone(),
            status: status.clone(),
            workers: Mutex::new(senders),
            tracked: Mutex::new(BTreeSet::new()),
            co: Mutex::new(CoPartitions::new(inputs.len())),
            epochs: Arc::new(Epochs::default()),
            producer: producer.clone(),
            paused: AtomicBool::new(false),
            own: Arc::new(Mutex::new(BTreeMap::new())),
            full: Arc::new(FullBuffers::default()),
            pauses: Mutex::new(Pauses::default()),
            reports: Mutex::new(Vec::new()),
            reports_ready: AtomicBool::new(false),
            settle: settle_time(k),
        });
        let ccfg = consumer_config(k);
        tracing::debug!(config = %describe(&ccfg), "consumer");
        let consumer: BaseConsumer<ConsumerCtx> = ccfg
            .create_with_context(ConsumerCtx {
                shared: shared.clone(),
            })
            .map_err(|e| RunError::Client(e.to_string()))?;
        let partitions = check_topics(&consumer, &cfg)?;
        check_changelog(&consumer, &cfg, partitions)?;
        let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| RunError::Client(e.to_string()))?;

        let probe: Arc<dyn http::Probe> = Arc::new(Probe {
            shared: shared.clone(),
        });
        let (http, api) = start_http(&cfg.http, probe, metrics)?;

        let mut worker_threads = Vec::new();
        for (id, rx) in receivers.into_iter().enumerate() {
            let w = Worker::new(
                id,
                cfg.clone(),
                inputs.clone(),
                producer.clone(),
                status.clone(),
                shared.epochs.clone(),
                shared.full.clone(),
            );
            worker_threads.push(
                std::thread::Builder::new()
                    .name(format!("churnsignal-worker-{id}"))
                    .spawn(move || w.run(rx))
                    .map_err(|e| thread_failed("worker", e))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lag = {
            let (k, inputs, own, stop) =
                (k.clone(), inputs.to_vec(), shared.own.clone(), stop.clone());
            std::thread::Builder::new()
                .name("churnsignal-lag".into())
                .spawn(move || super::lag::run(k, inputs, own, stop))
                .map_err(|e| thread_failed("lag monitor", e))?
        };
        let poll = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("churnsignal-consumer".into())
                .spawn(move || poll_loop(consumer, shared, stop))
                .map_err(|e| thread_failed("consumer", e))?
        };
        tracing::info!(
            brokers = %k.brokers,
            group = %k.group_id,
            topics = ?names,
            workers,
            http = ?http.as_ref().map(|h| h.addr()),
            customer_api = ?api.as_ref().map(|h| h.addr()),
            "churnsignal running"
        );
        Ok(Service {
            shared,
            stop,
            poll: Some(poll),
            lag: Some(lag),
            workers: worker_threads,
            http,
            api,
        })
    }

    /// What the service has done so far.
    pub fn status(&self) -> &Arc<Status> {
        &self.shared.status
    }

    /// The HTTP server's address, if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr())
    }

    /// The customer API's address, if it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|h| h.addr())
    }

    /// Readiness as `/readyz` answers it.
    pub fn ready(&self) -> Result<(), NotOk> {
        self.shared
            .status
            .ready(self.shared.cfg.kafka.ready_max_lag)
    }

    /// Graceful shutdown: readiness goes false, queued work drains, the producer
    /// delivers, acknowledged progress is committed, the consumer leaves the group.
    /// Bounded by `kafka.shutdown_timeout_secs` also when the broker is unreachable.
    pub fn stop(mut self) -> Result<Report, RunError> {
        let s = &self.shared.status;
        s.stopping.store(true, Ordering::SeqCst);
        telemetry::ready(false);
        let total = Duration::from_secs(self.shared.cfg.kafka.shutdown_timeout_secs);
        let deadline = Instant::now() + total;
        // Sends still waiting for room in the producer queue give up at 60% of the
        // budget, leaving time to flush, commit and close.
        *s.abandon_after.lock().expect("abandon lock") = Some(Instant::now() + total * 6 / 10);
        self.stop.store(true, Ordering::SeqCst);
        let poll = self.poll.take().expect("poll thread");
        while !poll.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if poll.is_finished() {
            let _ = poll.join();
            // Workers end once their channels close; one still waiting for the broker
            // at the deadline is left behind.
            while self.workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            for w in self.workers.drain(..) {
                if w.is_finished() {
                    let _ = w.join();
                }
            }
        } else {
            tracing::warn!("shutdown deadline reached; leaving without the consumer's goodbye");
        }
        // What is left of the shutdown time (at most the servers' own grace) for
        // requests in flight; idle and slow connections close at once.
        for h in [self.http.take(), self.api.take()].into_iter().flatten() {
            h.stop_within(deadline.saturating_duration_since(Instant::now()));
        }
        // The lag monitor ends within its current request (left behind past 1 s).
        if let Some(lag) = self.lag.take() {
            let until = Instant::now() + Duration::from_secs(1);
            while !lag.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if lag.is_finished() {
                let _ = lag.join();
            }
        }
        let report = Report {
            events: s.events.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            alerts: s.alerts_sent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
        };
        match s.failure() {
            Some(f) => Err(RunError::Failed(f)),
            None => Ok(report),
        }
    }
}

/// Runs until `shutdown` resolves or the service fails; then stops gracefully.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Report, RunError> {
    let service = tokio::task::spawn_blocking(move || Service::start(cfg, StartOptions::default()))
        .await
        .map_err(|e| thread_failed("start", e))??;
    let status = service.status().clone();
    let failed = async move {
        loop {
            if status.failure().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        _ = failed => {}
    }
    tokio::task::spawn_blocking(move || service.stop())
        .await
        .map_err(|e| thread_failed("stop", e))?
}

fn thread_failed(thread: &'static str, error: impl std::fmt::Display) -> RunError {
    RunError::Failed(Failure::Thread {
        thread,
        error: error.to_string(),
    })
}

struct Probe {
    shared: Arc<Shared>,
}

impl http::Probe for Probe {
    fn live(&self) -> Result<(), NotOk> {
        self.shared.status.live(Duration::from_secs(
            self.shared.cfg.http.liveness_timeout_secs,
        ))
    }

    fn ready(&self) -> Result<(), NotOk> {
        let r = self
            .shared
            .status
            .ready(self.shared.cfg.kafka.ready_max_lag);
        telemetry::ready(r.is_ok());
        r
    }

    fn customer(&self, id: &str) -> http::Lookup {
        let n = self.shared.worker_count();
        if n == 0 || self.shared.status.stopping.load(Ordering::Relaxed) {
            return http::Lookup::Unavailable("shutting down".into());
        }
        let mut replies = Vec::new();
        for w in 0..n {
            let (tx, rx) = sync_channel(1);
            if self
                .shared
                .send_to(w, Work::Query(id.to_owned(), tx), Duration::from_secs(5))
            {
                replies.push(rx);
            }
        }
        if replies.len() < n {
            return http::Lookup::Unavailable("a worker is busy; try again".into());
        }
        for rx in replies {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Some(rec)) => return http::Lookup::Found(rec.to_json()),
                Ok(None) => {}
                Err(_) => return http::Lookup::Unavailable("a worker is busy; try again".into()),
            }
        }
        http::Lookup::NotOwned
    }
}

/// A topic's partition count and whether any partition has no leader yet (`None`: not
/// known to the broker), and how many brokers the cluster has.
fn describe_topic(
    consumer: &BaseConsumer<ConsumerCtx>,
    cfg: &Config,
    name: &str,
) -> Result<(Option<(usize, bool)>, usize), RunError> {
    let k = &cfg.kafka;
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(k.startup_timeout_secs))
        .map_err(|e| RunError::Metadata {
            topic: name.to_owned(),
            brokers: k.brokers.clone(),
            message: e.to_string(),
        })?;
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let leaderless = t.partitions().iter().any(|p| p.leader() < 0);
            (t.partitions().len(), leaderless)
        });
    Ok((found, md.brokers().len()))
}

/// The changelog is created when missing; it must have the inputs' partition count.
fn check_changelog(
    consumer: &BaseConsumer<ConsumerCtx>,
    cfg: &Config,
    partitions: usize,
) -> Result<(), RunError> {
    let k = &cfg.kafka;
    let name = &k.topics.changelog;
    let timeout = Duration::from_secs(k.startup_timeout_secs);
    let started = Instant::now();
    let mut created = false;
    loop {
        let (found, brokers) = describe_topic(consumer, cfg, name)?;
        match found {
            Some((n, _)) if n != partitions => {
                return Err(RunError::NotCoPartitioned(format!(
                    "the state changelog {name} has {n} partitions, the inputs {partitions}; it must have the inputs' count"
                )))
            }
            Some((_, false)) => return Ok(()),
            Some((_, true)) if started.elapsed() >= timeout => return Ok(()),
            Some(_) => {}
            None if !created => {
                let made = super::topics::ensure_changelog(k, partitions as i32, brokers)
                    .map_err(|e| RunError::Client(e.to_string()))?;
                if made {
                    tracing::info!(topic = %name, partitions, "state changelog created (compacted)");
                }
                created = true;
            }
            None if started.elapsed() >= timeout => {
                return Err(RunError::MissingTopic {
                    topic: name.clone(),
                    role: "changelog",
                })
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every configured topic must exist, and the inputs must have one partition count
/// (returned).
fn check_topics(consumer: &BaseConsumer<ConsumerCtx>, cfg: &Config) -> Result<usize, RunError> {
    let k = &cfg.kafka;
    let timeout = Duration::from_secs(k.startup_timeout_secs);
    let mut counts: Vec<(&'static str, &str, usize)> = Vec::new();
    for (role, name) in k.topics.with_roles() {
        // A topic created moments ago may not be known to every broker yet, or have no
        // leader yet: such answers are asked again for a few seconds (leaderless
        // partitions until the startup timeout) before the topic counts as missing.
        let asked = Instant::now();
        let partitions = loop {
            let (found, _) = describe_topic(consumer, cfg, name)?;
            let waited = asked.elapsed();
            match found {
                Some((n, false)) => break n,
                Some((n, true)) if waited >= timeout => break n,
                Some((_, true)) => {}
                None if waited >= Duration::from_secs(3).min(timeout) => {
                    return Err(RunError::MissingTopic {
                        topic: name.to_owned(),
                        role,
                    })
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        counts.push((role, name, partitions));
    }
    let inputs = &counts[..3];
    if inputs.iter().any(|(_, _, n)| *n != inputs[0].2) {
        let list = inputs
            .iter()
            .map(|(role, name, n)| format!("{name} ({role}) has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RunError::NotCoPartitioned(format!(
            "{list} partitions; give them the same partition count"
        )));
    }
    Ok(inputs[0].2)
}

/// How often the poll loop refreshes the group metadata workers send offsets with.
const GROUP_REFRESH: Duration = Duration::from_millis(20);

/// The poll thread's loop.
fn poll_loop(consumer: BaseConsumer<ConsumerCtx>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let status = shared.status.clone();
    let n = shared.worker_count();
    let mut batches: Vec<Vec<InMsg>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
    let senders: Vec<SyncSender<Work>> = shared.workers.lock().expect("workers lock").clone();
    let mut paused = false;
    let mut blocked_since: Option<Instant> = None;
    let mut last_flush = Instant::now();
    let mut polls = 0u32;
    let mut now = Instant::now();
    let (mut epochs, mut epochs_seen) = (BTreeMap::new(), u64::MAX);
    let mut group_refreshed = now;
    // Position reports waiting for their worker's batch to go first.
    let mut reports: Vec<Vec<PositionReport>> = (0..n).map(|_| Vec::new()).collect();
    while !stop.load(Ordering::Relaxed) && !status.failed.load(Ordering::Relaxed) {
        if shared.full.changed.swap(false, Ordering::AcqRel) {
            shared.apply_pauses(&consumer);
        }
        // One clock reading per 64 polls while messages flow (every one when idle).
        polls = polls.wrapping_add(1);
        if polls % 64 == 0 {
            now = Instant::now();
            status.beat_at(0, now);
        }
        if now.saturating_duration_since(group_refreshed) >= GROUP_REFRESH {
            // Under KIP-848 the member epoch changes without a rebalance callback here
            // (when only other members' partitions move).
            status.refresh_group(&consumer);
            group_refreshed = now;
        }
        // A full worker queue first makes the loop wait without polling: the workers
        // usually catch up within moments. Only when it stays full for PAUSE_AFTER (a
        // slow or unreachable broker) is the consumer paused, so that it goes on
        // serving the group (heartbeats, rebalances) through a long stall. Pausing
        // drops librdkafka's prefetched messages, so it is kept for long stalls.
        let waiting = blocked_since.is_some() && !paused;
        let mut idle = true;
        if waiting {
            std::thread::sleep(Duration::from_micros(500));
        } else {
            let holding = batches.iter().any(|b| !b.is_empty());
            let wait = if paused {
                Duration::from_millis(20)
            } else if holding {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let polled = consumer.poll(wait);
            if !matches!(polled, Some(Ok(_))) {
                now = Instant::now();
                status.beat_at(0, now);
            }
            match polled {
                Some(Ok(m)) => {
                    idle = false;
                    let v = shared.epochs.version();
                    if v != epochs_seen {
                        epochs = shared.epochs.snapshot();
                        epochs_seen = v;
                    }
                    // A message of a partition that does not run (waiting for the rest
                    // of it) is dropped: it is read again when the partition starts.
                    if let (Some(t), Some(e)) =
                        (shared.topic_index(m.topic()), epochs.get(&m.partition()))
                    {
                        let w = shared.worker_of(m.partition(), n);
                        batches[w].push(InMsg::new(t, *e, &m));
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded))) => {
                    telemetry::max_poll_exceeded();
                    status.left_group.store(true, Ordering::Relaxed);
                    tracing::warn!("the consumer left its group: the poll loop stalled past max.poll.interval.ms");
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    // The consumer is unusable: stop, so that the orchestrator starts
                    // the instance again (with a fresh consumer).
                    let hint = if code == RDKafkaErrorCode::UnreleasedInstanceId {
                        "; another member still holds kafka.group_instance_id (under KIP-848 a killed member's id is released when its session expires: the broker's group.consumer.session.timeout.ms)"
                    } else {
                        ""
                    };
                    status.fail(Failure::ConsumerFatal {
                        code: code.to_string(),
                        hint,
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                }
                None => {}
            }
        }
        // Position reports (from statistics served by that poll) follow every message
        // polled before them.
        let mut reported = false;
        if shared.reports_ready.swap(false, Ordering::AcqRel) {
            // Each report covers every running partition: the newest replaces any not
            // handed on yet.
            reports.iter_mut().for_each(Vec::clear);
            for r in std::mem::take(&mut *shared.reports.lock().expect("reports lock")) {
                reports[shared.worker_of(r.partition, n)].push(r);
            }
            reported = true;
        }
        // Hand over full batches at once, the rest when polling goes quiet, every 5 ms,
        // or when reports are to follow them.
        let flush_all = idle
            || reported
            || now.saturating_duration_since(last_flush) >= Duration::from_millis(5);
        let mut blocked = false;
        for (w, b) in batches.iter_mut().enumerate() {
            if !b.is_empty() && (b.len() >= BATCH || flush_all) {
                let len = b.len() as i64;
                let batch = std::mem::replace(b, Vec::with_capacity(BATCH));
                match senders[w].try_send(Work::Batch(batch)) {
                    Ok(()) => status.enqueued(len),
                    Err(TrySendError::Full(Work::Batch(back)))
                    | Err(TrySendError::Disconnected(Work::Batch(back))) => {
                        *b = back;
                        blocked = true;
                    }
                    Err(_) => unreachable!("a batch was sent"),
                }
            }
            if b.is_empty() && !reports[w].is_empty() {
                let list = std::mem::take(&mut reports[w]);
                match senders[w].try_send(Work::Positions(list)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(Work::Positions(back)))
                    | Err(TrySendError::Disconnected(Work::Positions(back))) => {
                        reports[w] = back;
                    }
                    Err(_) => unreachable!("positions were sent"),
                }
            }
        }
        if flush_all {
            last_flush = now;
        }
        if blocked {
            now = Instant::now();
            let since = *blocked_since.get_or_insert(now);
            if !paused && now.saturating_duration_since(since) >= PAUSE_AFTER {
                set_paused(&consumer, &shared, true);
                paused = true;
            }
        } else {
            blocked_since = None;
            if paused {
                set_paused(&consumer, &shared, false);
                paused = false;
            }
        }
        if flush_all {
            let inflight = shared.producer.in_flight_count() as i64;
            status
                .max_producer_in_flight
                .fetch_max(inflight, Ordering::Relaxed);
        }
    }
    shutdown(consumer, &shared, batches);
}

/// Drains what was consumed, checkpoints (state, offsets) once outputs are
/// acknowledged, leaves the group.
fn shutdown(consumer: BaseConsumer<ConsumerCtx>, shared: &Shared, batches: Vec<Vec<InMsg>>) {
    let cfg = &shared.cfg.kafka;
    let start = Instant::now();
    let budget = Duration::from_secs(cfg.shutdown_timeout_secs);
    let left = || budget.saturating_sub(start.elapsed());
    if let Ok(a) = consumer.assignment() {
        let _ = consumer.pause(&a);
    }
    let failed = shared.status.failure().is_some();
    if !failed {
        // In-flight work drains: what was polled is processed, then the workers reply.
        for (w, b) in batches.into_iter().enumerate() {
            if !b.is_empty() {
                let len = b.len() as i64;
                if shared.send_to(w, Work::Batch(b), left() / 2) {
                    shared.status.enqueued(len);
                }
            }
        }
        let mut replies = Vec::new();
        for w in 0..shared.worker_count() {
            let (tx, rx) = sync_channel(1);
            if shared.send_to(w, Work::Drain(tx), left() / 2) {
                replies.push(rx);
            }
        }
        for rx in replies {
            let _ = rx.recv_timeout(left() / 2);
        }
        let drained = start.elapsed();
        if let Err(e) = shared.producer.flush(left() / 2) {
            tracing::warn!(error = %e, in_flight = shared.producer.in_flight_count(), "records not delivered at shutdown; their input offsets stay uncommitted");
        }
        tracing::info!(
            drained_ms = drained.as_millis() as u64,
            delivered_ms = (start.elapsed() - drained).as_millis() as u64,
            "work drained and delivered"
        );
    }
    // Workers end when their channels close.
    shared.workers.lock().expect("workers lock").clear();
    shared.tracked.lock().expect("tracked lock").clear();
    shared.status.assigned.store(0, Ordering::Relaxed);
    telemetry::assigned_partitions(0);
    tracing::info!(
        events = shared.status.events.load(Ordering::Relaxed),
        alerts = shared.status.alerts_sent.load(Ordering::Relaxed),
        "consumer closing"
    );
    drop(consumer);
}

#[cfg(test)]
mod tests {
    use super::{desired_pauses, partition_lag, position_of};
    use crate::kafka::sync::Position;
    use rdkafka::statistics::Partition;
    use std::collections::BTreeSet;

    /// Statistics of a fetching partition: its end, fetch position and what was passed on.
    fn fetching(end: i64, next: i64, app: i64) -> Partition {
        Partition {
            ls_offset: end,
            hi_offset: end,
            next_offset: next,
            app_offset: app,
            fetch_state: "active".into(),
            ..Partition::default()
        }
    }

    #[test]
    fn caught_up_when_fetched_to_the_end_and_passed_on_but_a_transaction_marker() {
        let caught = |p: Partition, settled| position_of(&p, settled).map(|p| p.caught_up);
        assert_eq!(
            position_of(&fetching(500, 500, 500), true),
            Some(Position {
                end: 500,
                caught_up: true
            })
        );
        // The last offset is a commit marker: no message shows it.
        assert_eq!(caught(fetching(500, 500, 499), true), Some(true));
        // Fetched to the end, not yet passed on: the messages in between come first,
        // but nothing says so beyond doubt (a pause may have dropped them).
        assert_eq!(caught(fetching(50_000, 50_000, 30_000), true), Some(false));
        // Paused lately: nothing is trusted.
        assert_eq!(caught(fetching(500, 500, 500), false), Some(false));
        // Still fetching.
        assert_eq!(caught(fetching(500, 300, 300), true), Some(false));
        // An empty partition, nothing passed on since assignment.
        assert_eq!(caught(fetching(0, 0, -1001), true), Some(true));
        // End not known yet.
        assert_eq!(caught(fetching(-1, 0, -1001), true), None);
    }

    #[test]
    fn back_pressure_pauses_everything_else_waiting_and_full_inputs() {
        let set = |v: &[(usize, i32)]| v.iter().copied().collect::<BTreeSet<_>>();
        let assigned = set(&[(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
        let waiting = set(&[(0, 1), (9, 9)]);
        let full = set(&[(2, 0)]);
        assert_eq!(desired_pauses(&assigned, true, &waiting, &full), assigned);
        assert_eq!(
            desired_pauses(&assigned, false, &waiting, &full),
            set(&[(0, 1), (2, 0)])
        );
    }

    fn stats(ls: i64, hi: i64, app: i64, committed: i64, lo: i64) -> Partition {
        Partition {
            ls_offset: ls,
            hi_offset: hi,
            app_offset: app,
            committed_offset: committed,
            lo_offset: lo,
            // What librdkafka reports after transactional checkpoints: counted from the
            // committed offset it fetched at assignment, never updated.
            consumer_lag: ls - committed,
            ..Partition::default()
        }
    }

    #[test]
    fn lag_counts_from_what_was_consumed_not_from_the_committed_offset_at_assignment() {
        // Assigned at 1,000 with the end at 20,000, now consumed to the end: caught up,
        // though librdkafka's consumer_lag still says 19,000.
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, 20_000, 1_000, 0)),
            Some(0)
        );
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, 15_000, 1_000, 0)),
            Some(5_000)
        );
    }

    #[test]
    fn before_the_first_message_the_committed_offset_is_the_position() {
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, -1, 1_000, 0)),
            Some(19_000)
        );
        // Nothing committed either: counted from the log's start.
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, -1, -1001, 300)),
            Some(19_700)
        );
    }

    #[test]
    fn the_end_is_the_last_stable_offset_when_known() {
        // An open transaction on the input: read_committed stops at the LSO.
        assert_eq!(partition_lag(&stats(900, 1_000, 900, 0, 0)), Some(0));
        assert_eq!(partition_lag(&stats(-1, 1_000, 900, 0, 0)), Some(100));
    }

    #[test]
    fn unknown_end_or_position_is_no_figure() {
        assert_eq!(partition_lag(&stats(-1, -1, 10, 10, 0)), None);
        assert_eq!(partition_lag(&stats(100, 100, -1, -1001, -1)), None);
    }
}
