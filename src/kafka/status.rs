//! The service's health: what it did, whether each loop beats, readiness, and the
//! typed failure that stops it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};

use crate::telemetry::http::NotOk;

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
    /// A configuration value that is not allowed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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
            RunError::Config(e) => e.code(),
        }
    }
}

/// One alert's latency, ms: from its input message's Kafka timestamp to its
/// acknowledgement, and that time by stage: fetch, queue, sync, produce (see
/// `kafka::trace`).
pub type Latency = (i64, [i64; 4]);

/// What the service did, observable while it runs (the demo, benchmarks and tests
/// read it; the HTTP probes decide from it).
#[derive(Debug)]
pub struct Status {
    pub(crate) start: Instant,
    pub(crate) beats: Vec<AtomicU64>,
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
    pub(crate) group: GroupCell,
    pub(crate) abandon_after: Mutex<Option<Instant>>,
    pub(crate) failure: Mutex<Option<Failure>>,
    pub(crate) failed: AtomicBool,
    /// Every alert's latency, when recording is on (benchmarks).
    pub latencies: Option<Mutex<Vec<Latency>>>,
}

#[derive(Default)]
pub(crate) struct GroupCell(Mutex<Option<Arc<ConsumerGroupMetadata>>>);

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

    pub(crate) fn refresh_group<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        *self.group.0.lock().expect("group lock") = consumer.group_metadata().map(Arc::new);
    }

    pub(crate) fn new(workers: usize, record_latencies: bool) -> Status {
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
            latencies: record_latencies.then(|| Mutex::new(Vec::new())),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
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
