//! Worker threads: each owns the partition engines of the partitions that hash to it
//! (partition number modulo the worker count), so a customer's events, which share a
//! partition, always meet in one engine on one thread. A worker restores a partition's
//! state from the changelog when it is assigned, then decodes, validates, applies, and
//! hands alerts and dead letters to the producer, and checkpoints each partition every
//! interval: changed customer records, the partition record and the input offsets in
//! one transaction of the partition's own transactional producer.
//!
//! At-least-once: alerts and dead letters go out at once through the shared idempotent
//! producer; a checkpoint waits until every one of its partition's is acknowledged, so
//! the offsets it commits never run ahead of an unacknowledged output. Exactly-once:
//! they go in the partition's transaction, visible to `read_committed` readers when
//! the checkpoint commits.
//!
//! Transactional API errors are handled by class, as librdkafka documents: retriable
//! ones are retried, abortable ones abort the transaction and rewind the partition
//! (state restored from the changelog, the input since the last checkpoint, which the
//! worker keeps, processed again), fatal ones (fenced: another instance owns the
//! partition now) stop the service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

use super::changelog::{self, encode_partition_record, ENGINE_KEY};
use super::client::transactional_producer_config;
use super::offsets::PartitionProgress;
use super::records::{alert_record, dead_letter_record, OutRecord, Source};
use super::runtime::{Delivery, ProducerCtx, Status};
use crate::alert::{Alert, HealthRecord};
use crate::config::{Config, Guarantee, InputTopic};
use crate::decode::wire::decode_message;
use crate::decode::{DecodeError, Limits, Reason};
use crate::engine::{Engine, Outcome};
use crate::event::Event;
use crate::telemetry;
use crate::time::Timestamp;

/// One consumed input message, copied out of librdkafka in one allocation (key and
/// value together; headers only when the message has any).
pub(crate) struct InMsg {
    /// Index into the input topics.
    pub topic: usize,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, ms (-1 if none).
    pub timestamp_ms: i64,
    /// Rebalance epoch at which it was polled; stale ones are dropped.
    pub epoch: u64,
    /// Key length in `data`, `None` for a message without key.
    key_len: Option<u32>,
    /// Key, then value.
    data: Box<[u8]>,
    /// Headers, in order (a null value is kept as empty).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InMsg {
    /// Copies what a worker needs out of a consumed message.
    pub fn new(topic: usize, epoch: u64, m: &rdkafka::message::BorrowedMessage<'_>) -> InMsg {
        let key = m.key();
        let value = m.payload().unwrap_or(&[]);
        let mut data = Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.len());
        if let Some(k) = key {
            data.extend_from_slice(k);
        }
        data.extend_from_slice(value);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or(&[]).to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        InMsg {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
            epoch,
            key_len: key.map(|k| k.len() as u32),
            data: data.into_boxed_slice(),
            headers,
        }
    }

    /// The message key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.data[..n as usize])
    }

    /// The message value (empty for a null value).
    pub fn value(&self) -> &[u8] {
        &self.data[self.key_len.unwrap_or(0) as usize..]
    }

    fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A topic-partition handed to a worker.
pub(crate) struct Assigned {
    pub topic: usize,
    pub partition: i32,
    pub progress: Arc<Mutex<PartitionProgress>>,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
}

/// What a worker is asked to do, in order.
pub(crate) enum Work {
    /// Process these messages.
    Batch(Vec<InMsg>),
    /// These topic-partitions are now ours: restore, then process.
    Assign(Assignment),
    /// These topic-partitions are no longer ours: checkpoint, drop; reply when done.
    Revoke(Vec<(usize, i32)>, SyncSender<()>),
    /// A customer's health record.
    Query(String, SyncSender<Option<HealthRecord>>),
    /// Checkpoint everything (shutdown); reply.
    Drain(SyncSender<()>),
}

/// A worker's share of a new assignment.
pub(crate) struct Assignment {
    pub epoch: u64,
    pub list: Vec<Assigned>,
    /// The group's metadata for offsets sent to transactions (fences zombies).
    pub group: Option<Arc<ConsumerGroupMetadata>>,
    /// Customers each partition engine may hold (the instance cap shared; 0 = no cap).
    pub cap_share: u64,
}

/// A partition's transactional producer.
struct Txn {
    producer: ThreadedProducer<ProducerCtx>,
    open: bool,
}

/// A partition engine: one engine for partition `p` of every input topic.
struct PartitionEngine {
    engine: Engine,
    /// Per input topic of this partition: tracker, epoch, and the next offset to apply.
    inputs: BTreeMap<usize, Input>,
    last_event: Instant,
    txn: Txn,
    /// Input processed since the last checkpoint: processed again after an abort.
    replay: Vec<InMsg>,
    /// A checkpoint committing on a helper thread (processing goes on meanwhile).
    committing: Option<(Instant, std::thread::JoinHandle<Result<(), TxnFailure>>)>,
    /// The input that checkpoint covers, kept until it is committed.
    replay_committing: Vec<InMsg>,
    /// Exactly-once outputs made while a checkpoint commits: sent in the next
    /// transaction once it has.
    held: Vec<(OutRecord, bool, Delivery)>,
    /// A transactional call failed abortably outside a checkpoint: rewind.
    needs_rewind: bool,
    /// Something changed since the last checkpoint.
    dirty: bool,
    /// At-least-once outputs not acknowledged yet.
    pending: Arc<AtomicI64>,
    /// Eviction counters already reported.
    evicted: (u64, u64),
    /// The checkpoint interval has passed: checkpoint as soon as the previous commit is
    /// done (never wait for it: the interval is a minimum, and when commits take
    /// longer, processing goes on and the next transaction carries more).
    checkpoint_due: bool,
}

impl PartitionEngine {
    /// Stream time is the minimum over the partition's input topics of their latest
    /// event time, minus the allowed lateness: a topic behind the others (catching up
    /// after a restart: the consumer fetches topics by bytes, not by time) keeps its
    /// events on time and holds back silence-driven signals until it is in. Topics with
    /// no event yet, and topics idle for `idle`, do not hold it back.
    fn cap_watermark(
        &mut self,
        topic: usize,
        t: Timestamp,
        now: Instant,
        idle: Duration,
        lateness: i64,
    ) {
        if let Some(i) = self.inputs.get_mut(&topic) {
            i.max_time = i.max_time.max(t.0);
            i.last_event = now;
        }
        let limit = self
            .inputs
            .values()
            .filter(|i| {
                i.active
                    && i.max_time != i64::MIN
                    && now.saturating_duration_since(i.last_event) < idle
            })
            .map(|i| i.max_time)
            .min();
        self.engine
            .set_watermark_limit(limit.map(|m| Timestamp(m.saturating_sub(lateness))));
    }
}

struct Input {
    /// Latest event time seen on this input (`i64::MIN` before the first).
    max_time: i64,
    /// When its latest event arrived.
    last_event: Instant,
    progress: Arc<Mutex<PartitionProgress>>,
    epoch: u64,
    /// The next offset to apply: what the state already holds is skipped.
    next: Option<i64>,
    /// Assigned now.
    active: bool,
}

/// A transactional call that did not succeed.
#[derive(Debug)]
pub(crate) enum TxnFailure {
    /// The transaction must be aborted (and the partition rewound).
    Abortable(String),
    /// The producer is unusable (fenced: another instance owns the partition).
    Fatal(String),
    /// Shutdown gave up waiting.
    Abandoned,
}

pub(crate) struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub inputs: Arc<Vec<InputTopic>>,
    pub producer: ThreadedProducer<ProducerCtx>,
    pub status: Arc<Status>,
    /// The rebalance epoch (a restore of an older epoch is cancelled).
    epoch: Arc<AtomicU64>,
    group: Option<Arc<ConsumerGroupMetadata>>,
    cap_share: u64,
    engines: BTreeMap<i32, PartitionEngine>,
    consumed: BTreeMap<(usize, &'static str), Counter>,
    dead: BTreeMap<(usize, &'static str), Counter>,
    late: Counter,
    duplicate: Counter,
    queue_full: Counter,
    alerts: Vec<Alert>,
    out: Vec<OutRecord>,
    last_gauges: Instant,
    last_checkpoint: Instant,
    last_cap_warning: Option<Instant>,
    record: Vec<u8>,
    /// The delivery of every state record: shared, since nothing waits for one by one.
    untracked: Arc<Delivery>,
}

/// How long a worker blocks for work before it looks at idle partitions.
const TICK: Duration = Duration::from_millis(200);

/// A checkpoint's commit that has not finished after this long is given up (its calls
/// have 30 s timeouts; librdkafka's send_offsets_to_transaction was seen to ignore its
/// own across a coordinator outage): the partition gets a new producer and rewinds.
const COMMIT_STUCK: Duration = Duration::from_secs(45);

/// Waits up to `limit` for a thread to finish (calling `tick` meanwhile); true if it did.
fn wait_for_thread<T>(
    h: &std::thread::JoinHandle<T>,
    limit: Duration,
    mut tick: impl FnMut(),
) -> bool {
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        tick();
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Input messages a partition keeps for a rewind (those since its last committed
/// checkpoint) before it checkpoints early: at most two such runs are held (one
/// committing, one filling), tens of megabytes.
const REPLAY_LIMIT: usize = 100_000;

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        inputs: Arc<Vec<InputTopic>>,
        producer: ThreadedProducer<ProducerCtx>,
        status: Arc<Status>,
        epoch: Arc<AtomicU64>,
    ) -> Worker {
        Worker {
            id,
            cfg,
            inputs,
            producer,
            status,
            epoch,
            group: None,
            cap_share: 0,
            engines: BTreeMap::new(),
            consumed: BTreeMap::new(),
            dead: BTreeMap::new(),
            late: telemetry::late_events(),
            duplicate: telemetry::duplicate_events(),
            queue_full: telemetry::producer_queue_full(),
            alerts: Vec::new(),
            out: Vec::new(),
            last_gauges: Instant::now(),
            last_checkpoint: Instant::now(),
            last_cap_warning: None,
            record: Vec::with_capacity(512),
            untracked: Arc::new(Delivery::untracked()),
        }
    }

    fn exactly_once(&self) -> bool {
        self.cfg.kafka.processing.guarantee == Guarantee::ExactlyOnce
    }

    /// Runs until the channel closes or the service stops for good.
    pub fn run(mut self, rx: Receiver<Work>) {
        let mut last_tick = Instant::now();
        let every = Duration::from_millis(self.cfg.kafka.checkpoint_interval_ms());
        loop {
            match rx.recv_timeout(TICK.min(every)) {
                Ok(work) => self.handle(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.status.beat_at(1 + self.id, now);
            let parts: Vec<i32> = self.engines.keys().copied().collect();
            for p in parts {
                self.settle(p, false);
                if self.engines.get(&p).is_some_and(|pe| pe.needs_rewind) {
                    self.rewind(p);
                }
            }
            if now.saturating_duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if now.saturating_duration_since(self.last_checkpoint) >= every {
                self.last_checkpoint = now;
                for pe in self.engines.values_mut() {
                    pe.checkpoint_due = true;
                }
            }
            let due: Vec<i32> = self
                .engines
                .iter()
                .filter(|(_, pe)| pe.checkpoint_due && pe.committing.is_none())
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                if let Some(pe) = self.engines.get_mut(&p) {
                    pe.checkpoint_due = false;
                }
                self.checkpoint(p, false);
            }
        }
        let all: Vec<i32> = self.engines.keys().copied().collect();
        for p in all {
            self.settle(p, true);
        }
        for p in self.engines.keys() {
            telemetry::partition_state(*p, 0, 0, None, &[[0; 3]; 4]);
        }
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Batch(msgs) => {
                let n = msgs.len() as i64;
                let now = wall_now();
                let instant = Instant::now();
                let (mut events, mut alerts) = (0, 0);
                for m in msgs {
                    if let Some(a) = self.process(m, now, instant) {
                        events += 1;
                        alerts += a;
                    }
                }
                self.status.processed(events, alerts);
                self.status.dequeued(n);
            }
            Work::Assign(a) => self.assign(a),
            Work::Revoke(list, reply) => {
                let mut gone = Vec::new();
                for (topic, partition) in list {
                    let Some(pe) = self.engines.get_mut(&partition) else {
                        continue;
                    };
                    if let Some(i) = pe.inputs.get_mut(&topic) {
                        i.active = false;
                    }
                    if pe.inputs.values().all(|i| !i.active) && !gone.contains(&partition) {
                        gone.push(partition);
                    }
                }
                for p in gone {
                    // Its state goes to the changelog with its offsets; the next owner
                    // restores it from there.
                    self.checkpoint(p, true);
                    if let Some(pe) = self.engines.remove(&p) {
                        self.close(p, pe);
                    }
                }
                let _ = reply.send(());
            }
            Work::Query(id, reply) => {
                let found = self
                    .engines
                    .values_mut()
                    .find_map(|pe| pe.engine.health_record(&id));
                let _ = reply.send(found);
            }
            Work::Drain(reply) => {
                let all: Vec<i32> = self.engines.keys().copied().collect();
                for p in all {
                    self.checkpoint(p, true);
                }
                let _ = reply.send(());
            }
        }
    }

    /// A partition leaves: an open transaction (nothing worth keeping: a failed
    /// checkpoint) is aborted, gauges reset.
    fn close(&mut self, p: i32, mut pe: PartitionEngine) {
        if let Some((_, h)) = pe.committing.take() {
            if wait_for_thread(&h, COMMIT_STUCK, || {}) {
                let _ = h.join();
            }
        }
        if pe.txn.open {
            let _ = pe.txn.producer.abort_transaction(Duration::from_secs(5));
        }
        telemetry::partition_state(p, 0, 0, None, &[[0; 3]; 4]);
        drop(pe);
    }

    /// Takes the new assignment: each new partition gets its transactional producer
    /// (which fences the previous owner and aborts what it left open) and its state
    /// restored from the changelog before any of its input is processed.
    fn assign(&mut self, a: Assignment) {
        self.group = a.group.clone().or(self.group.take());
        self.cap_share = a.cap_share;
        let mut by_partition: BTreeMap<i32, Vec<Assigned>> = BTreeMap::new();
        for x in a.list {
            by_partition.entry(x.partition).or_default().push(x);
        }
        for (p, list) in by_partition {
            if !self.engines.contains_key(&p) {
                match self.open_partition(p, a.epoch) {
                    Ok(pe) => {
                        self.engines.insert(p, pe);
                    }
                    Err(TxnFailure::Abandoned) => continue,
                    Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                        self.status.fail(format!("partition {p}: {why}"));
                        continue;
                    }
                }
            }
            let pe = self.engines.get_mut(&p).expect("present");
            if self.cap_share > 0 {
                pe.engine.set_max_customers(self.cap_share);
            }
            for x in list {
                let next = pe.inputs.get(&x.topic).and_then(|i| i.next);
                if let (Some(c), Some(n)) = (x.committed, next) {
                    if c != n {
                        tracing::warn!(
                            partition = p,
                            topic = %self.inputs[x.topic].name,
                            committed = c,
                            state = n,
                            "the group's committed offset differs from the offset the state reflects; the state's wins"
                        );
                    }
                }
                let max_time = pe.inputs.get(&x.topic).map_or(i64::MIN, |i| i.max_time);
                pe.inputs.insert(
                    x.topic,
                    Input {
                        max_time,
                        last_event: Instant::now(),
                        progress: x.progress,
                        epoch: a.epoch,
                        next,
                        active: true,
                    },
                );
            }
        }
    }

    /// Creates partition `p`'s producer and restores its state.
    fn open_partition(&mut self, p: i32, epoch: u64) -> Result<PartitionEngine, TxnFailure> {
        let pcfg = transactional_producer_config(&self.cfg.kafka, p);
        let producer: ThreadedProducer<ProducerCtx> = pcfg
            .create_with_context(ProducerCtx::transactional(self.status.clone()))
            .map_err(|e| TxnFailure::Fatal(format!("transactional producer: {e}")))?;
        let timeout = Duration::from_secs(self.cfg.kafka.startup_timeout_secs);
        self.txn_call("init_transactions", || producer.init_transactions(timeout))?;
        telemetry::restoring(1.0);
        self.status.restoring.fetch_add(1, Ordering::SeqCst);
        let (status, id, epochs) = (self.status.clone(), self.id, self.epoch.clone());
        let restored = changelog::restore(&self.cfg, p, || {
            status.beat(1 + id);
            epochs.load(Ordering::SeqCst) == epoch && !status.abandon_sends()
        });
        self.status.restoring.fetch_sub(1, Ordering::SeqCst);
        telemetry::restoring(-1.0);
        let r = match restored {
            Ok(r) => r,
            Err(changelog::RestoreError::Cancelled) => {
                tracing::info!(partition = p, "restore cancelled: the partition moved on");
                return Err(TxnFailure::Abandoned);
            }
            Err(e) => return Err(TxnFailure::Fatal(e.to_string())),
        };
        let secs = r.elapsed.as_secs_f64();
        tracing::info!(
            partition = p,
            customers = r.engine.customers(),
            records = r.records,
            seconds = secs,
            customers_per_second = (r.engine.customers() as f64 / secs.max(1e-6)) as u64,
            "state restored"
        );
        let mut inputs = BTreeMap::new();
        for (name, next) in &r.positions {
            if let Some(t) = self.inputs.iter().position(|i| &i.name == name) {
                inputs.insert(
                    t,
                    Input {
                        max_time: i64::MIN,
                        last_event: Instant::now(),
                        progress: Arc::new(Mutex::new(PartitionProgress::default())),
                        epoch,
                        next: Some(*next),
                        active: false,
                    },
                );
            }
        }
        let evicted = (r.engine.stats().evicted_idle, r.engine.stats().evicted_cap);
        Ok(PartitionEngine {
            engine: r.engine,
            inputs,
            last_event: Instant::now(),
            txn: Txn {
                producer,
                open: false,
            },
            replay: Vec::new(),
            committing: None,
            replay_committing: Vec::new(),
            held: Vec::new(),
            needs_rewind: false,
            dirty: false,
            pending: Arc::new(AtomicI64::new(0)),
            evicted,
            checkpoint_due: false,
        })
    }

    /// Runs a transactional API call: retriable errors are retried (until shutdown gives
    /// up), abortable and fatal ones are returned by class.
    fn txn_call<T>(&self, what: &str, f: impl FnMut() -> KafkaResult<T>) -> Result<T, TxnFailure> {
        txn_call(&self.status, self.id, what, f)
    }
}

/// Runs a transactional API call: retriable errors are retried (until shutdown gives
/// up), abortable and fatal ones are returned by class.
fn txn_call<T>(
    status: &Status,
    id: usize,
    what: &str,
    mut f: impl FnMut() -> KafkaResult<T>,
) -> Result<T, TxnFailure> {
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(KafkaError::Transaction(e)) => {
                    if e.is_fatal() {
                        telemetry::transaction_error("fatal");
                        return Err(TxnFailure::Fatal(format!("{what}: {e}")));
                    }
                    if e.txn_requires_abort() {
                        telemetry::transaction_error("abortable");
                        return Err(TxnFailure::Abortable(format!("{what}: {e}")));
                    }
                    if !e.is_retriable() {
                        telemetry::transaction_error("abortable");
                        return Err(TxnFailure::Abortable(format!("{what}: {e}")));
                    }
                    telemetry::transaction_error("retriable");
                    tracing::warn!(error = %e, "{what}: retrying");
                }
                Err(e) => {
                    telemetry::transaction_error("abortable");
                    return Err(TxnFailure::Abortable(format!("{what}: {e}")));
                }
            }
            if status.abandon_sends() {
                return Err(TxnFailure::Abandoned);
            }
            status.beat(1 + id);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// The end of a checkpoint, on a helper thread: the offsets go into the transaction,
/// its records are delivered, it commits.
fn finish_checkpoint(
    status: Arc<Status>,
    id: usize,
    producer: ThreadedProducer<ProducerCtx>,
    offsets: TopicPartitionList,
    group: Arc<ConsumerGroupMetadata>,
) -> Result<(), TxnFailure> {
    let timeout = Duration::from_secs(30);
    if offsets.count() > 0 {
        txn_call(&status, id, "send_offsets_to_transaction", || {
            producer.send_offsets_to_transaction(&offsets, &group, timeout)
        })?;
    }
    // Delivered before the commit: rdkafka's commit_transaction flushes first, and its
    // flush polls in 100 ms steps (a fixed 100 ms per transaction); the producer's own
    // thread serves delivery reports as they come.
    while producer.in_flight_count() > 0 {
        if status.abandon_sends() {
            return Err(TxnFailure::Abandoned);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    txn_call(&status, id, "commit_transaction", || {
        producer.commit_transaction(timeout)
    })
}

impl Worker {
    /// Takes the result of partition `p`'s committing checkpoint if it is done (or
    /// waits for it with `block`); on success sends the outputs held meanwhile.
    fn settle(&mut self, p: i32, block: bool) {
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        let Some((since, h)) = pe.committing.take() else {
            return;
        };
        // Not waited for, unless it has been stuck for too long: then it is given up
        // below, also when no one blocks on it (a due checkpoint never does).
        if !block && !h.is_finished() && since.elapsed() < COMMIT_STUCK {
            pe.committing = Some((since, h));
            return;
        }
        let left = COMMIT_STUCK.saturating_sub(since.elapsed());
        let (status, id) = (self.status.clone(), self.id);
        let result = if wait_for_thread(&h, left, || status.beat(1 + id)) {
            h.join()
                .unwrap_or_else(|_| Err(TxnFailure::Fatal("checkpoint thread panicked".into())))
        } else {
            // librdkafka's send_offsets_to_transaction has been seen to wait forever
            // across a coordinator outage: the producer is replaced (the new one fences
            // it and aborts its transaction) and the partition rewound.
            if self.status.failure().is_some() || self.status.stopping.load(Ordering::SeqCst) {
                // Stopping (perhaps fenced): a new producer would fence the next owner.
                tracing::error!(partition = p, "a checkpoint did not finish; given up");
                if let Some(pe) = self.engines.remove(&p) {
                    telemetry::partition_state(p, 0, 0, None, &[[0; 3]; 4]);
                    drop(pe);
                }
                return;
            }
            tracing::error!(
                partition = p,
                "a checkpoint did not finish in {} s; replacing the partition's producer",
                COMMIT_STUCK.as_secs()
            );
            self.rewind_with(p, true);
            return;
        };
        match result {
            Ok(()) => {
                pe.replay_committing.clear();
                telemetry::checkpoint(true);
                telemetry::commit(true);
                self.status.commits.fetch_add(1, Ordering::Relaxed);
                for (rec, dead, d) in std::mem::take(&mut pe.held) {
                    self.emit(p, &rec, d, dead);
                }
            }
            Err(TxnFailure::Abandoned) => {}
            Err(TxnFailure::Abortable(why)) => {
                tracing::warn!(partition = p, error = %why, "checkpoint aborted; rewinding the partition");
                self.rewind(p);
            }
            Err(TxnFailure::Fatal(why)) => self.fatal(p, why),
        }
    }

    /// Opens partition `p`'s transaction if it is not open.
    fn begin(&mut self, p: i32) -> Result<(), TxnFailure> {
        self.settle(p, true);
        let Some(pe) = self.engines.get(&p) else {
            return Ok(());
        };
        if pe.txn.open {
            return Ok(());
        }
        let producer = pe.txn.producer.clone();
        self.txn_call("begin_transaction", || producer.begin_transaction())?;
        if let Some(pe) = self.engines.get_mut(&p) {
            pe.txn.open = true;
        }
        Ok(())
    }

    /// Checkpoints partition `p` if anything changed; handles failures by class.
    fn checkpoint(&mut self, p: i32, wait: bool) {
        match self.try_checkpoint(p) {
            Ok(()) => {
                if wait {
                    self.settle(p, true);
                }
            }
            Err(TxnFailure::Abandoned) => {}
            Err(TxnFailure::Abortable(why)) => {
                tracing::warn!(partition = p, error = %why, "checkpoint aborted; rewinding the partition");
                self.rewind(p);
            }
            Err(TxnFailure::Fatal(why)) => self.fatal(p, why),
        }
    }

    fn fatal(&mut self, p: i32, why: String) {
        if let Some(pe) = self.engines.remove(&p) {
            telemetry::partition_state(p, 0, 0, None, &[[0; 3]; 4]);
            drop(pe);
        }
        self.status.fail(format!(
            "partition {p}: {why} (fenced: another instance owns the partition now, or its transactional id is shared)"
        ));
    }

    fn try_checkpoint(&mut self, p: i32) -> Result<(), TxnFailure> {
        let eos = self.exactly_once();
        self.settle(p, true);
        let Some(pe) = self.engines.get(&p) else {
            return Ok(());
        };
        if !pe.dirty && !pe.txn.open {
            return Ok(());
        }
        let Some(group) = self.group.clone() else {
            return Ok(());
        };
        if !eos {
            // Every output of the input this checkpoint covers must be acknowledged
            // before its offsets commit.
            let pending = pe.pending.clone();
            while pending.load(Ordering::Acquire) > 0 {
                if self.status.abandon_sends() {
                    return Err(TxnFailure::Abandoned);
                }
                self.status.beat(1 + self.id);
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.status.failure().is_some() {
                return Err(TxnFailure::Abandoned);
            }
        }
        self.begin(p)?;
        let pe = self.engines.get_mut(&p).expect("present");
        let topic = self.cfg.kafka.topics.changelog.clone();
        let producer = pe.txn.producer.clone();
        let (mut tombstones, mut customers) = (0u64, 0u64);
        let mut failed = None;
        {
            let status = &self.status;
            let queue_full = &self.queue_full;
            let id = self.id;
            let untracked = &self.untracked;
            let mut send_state = |key: &[u8], payload: Option<&[u8]>| {
                let out = Out {
                    topic: &topic,
                    partition: Some(p),
                    key: Some(key),
                    payload,
                    headers: &[],
                };
                let d = untracked.clone();
                if let Err(e) = send(&producer, status, queue_full, id, out, d) {
                    failed = Some(e);
                }
            };
            // Tombstones first: a customer forgotten and back since has a record after.
            let mut evicted: Vec<String> = Vec::new();
            pe.engine.take_evicted(|c| evicted.push(c.to_owned()));
            for c in &evicted {
                tombstones += 1;
                send_state(c.as_bytes(), None);
            }
            let record = &mut self.record;
            pe.engine.take_changed(|c, state| {
                customers += 1;
                record.clear();
                state.encode(record);
                send_state(c.as_bytes(), Some(record));
            });
        }
        if let Some(e) = failed {
            return Err(TxnFailure::Abortable(e));
        }
        let names: Vec<(&str, i64)> = pe
            .inputs
            .iter()
            .filter_map(|(t, i)| Some((self.inputs[*t].name.as_str(), i.next?)))
            .collect();
        self.record.clear();
        encode_partition_record(&names, &pe.engine, &mut self.record);
        send(
            &producer,
            &self.status,
            &self.queue_full,
            self.id,
            Out {
                topic: &topic,
                partition: Some(p),
                key: Some(ENGINE_KEY),
                payload: Some(&self.record),
                headers: &[],
            },
            self.untracked.clone(),
        )
        .map_err(TxnFailure::Abortable)?;
        let mut offsets = TopicPartitionList::new();
        for (name, next) in &names {
            let _ = offsets.add_partition_offset(name, p, Offset::Offset(*next));
        }
        let pe = self.engines.get_mut(&p).expect("present");
        pe.txn.open = false;
        pe.dirty = false;
        pe.replay_committing = std::mem::take(&mut pe.replay);
        telemetry::state_records("customer", customers);
        telemetry::state_records("tombstone", tombstones);
        telemetry::state_records("partition", 1);
        let (status, id) = (self.status.clone(), self.id);
        let producer = producer.clone();
        let handle = std::thread::Builder::new()
            .name(format!("churnsignal-commit-{p}"))
            .spawn(move || finish_checkpoint(status, id, producer, offsets, group))
            .map_err(|e| TxnFailure::Fatal(format!("checkpoint thread: {e}")))?;
        pe.committing = Some((Instant::now(), handle));
        Ok(())
    }

    /// After an abortable error: the transaction is aborted, the state restored from
    /// the changelog (the last committed checkpoint) and the input since then
    /// processed again.
    fn rewind(&mut self, p: i32) {
        self.rewind_with(p, false);
    }

    /// [`Worker::rewind`], with a new producer when the old one is stuck.
    fn rewind_with(&mut self, p: i32, new_producer: bool) {
        let Some(mut pe) = self.engines.remove(&p) else {
            return;
        };
        telemetry::checkpoint(false);
        if new_producer {
            let pcfg = transactional_producer_config(&self.cfg.kafka, p);
            let created: Result<ThreadedProducer<ProducerCtx>, _> =
                pcfg.create_with_context(ProducerCtx::transactional(self.status.clone()));
            let producer = match created {
                Ok(producer) => producer,
                Err(e) => return self.fatal(p, format!("transactional producer: {e}")),
            };
            let timeout = Duration::from_secs(self.cfg.kafka.startup_timeout_secs);
            match self.txn_call("init_transactions", || producer.init_transactions(timeout)) {
                Ok(()) => {}
                Err(TxnFailure::Abandoned) => return,
                Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                    return self.fatal(p, why)
                }
            }
            pe.txn = Txn {
                producer,
                open: false,
            };
        }
        let producer = pe.txn.producer.clone();
        // Whatever transaction is open or failed to commit is aborted (an error for
        // "none in progress" is fine).
        if let Err(TxnFailure::Fatal(why)) = self.txn_call("abort_transaction", || {
            producer.abort_transaction(Duration::from_secs(30))
        }) {
            return self.fatal(p, why);
        }
        pe.txn.open = false;
        if let Some((_, h)) = pe.committing.take() {
            if h.is_finished() {
                let _ = h.join();
            }
        }
        let mut replay = std::mem::take(&mut pe.replay_committing);
        replay.append(&mut pe.replay);
        pe.held.clear();
        pe.needs_rewind = false;
        let epoch = pe.inputs.values().map(|i| i.epoch).max().unwrap_or(0);
        let (status, id, epochs) = (self.status.clone(), self.id, self.epoch.clone());
        let restored = changelog::restore(&self.cfg, p, || {
            status.beat(1 + id);
            epochs.load(Ordering::SeqCst) == epoch && !status.abandon_sends()
        });
        let r = match restored {
            Ok(r) => r,
            Err(changelog::RestoreError::Cancelled) => return,
            Err(e) => return self.fatal(p, e.to_string()),
        };
        pe.engine = r.engine;
        if self.cap_share > 0 {
            pe.engine.set_max_customers(self.cap_share);
        }
        for (t, i) in pe.inputs.iter_mut() {
            i.next = r
                .positions
                .iter()
                .find(|(n, _)| *n == self.inputs[*t].name)
                .map(|(_, o)| *o);
            i.max_time = i64::MIN;
            i.progress = Arc::new(Mutex::new(PartitionProgress::default()));
        }
        pe.pending = Arc::new(AtomicI64::new(0));
        pe.dirty = false;
        self.engines.insert(p, pe);
        let now = wall_now();
        for m in replay {
            self.process(m, now, Instant::now());
        }
    }

    /// Processes one message; returns the alerts it caused, `None` if it was skipped.
    fn process(&mut self, m: InMsg, now: Timestamp, instant: Instant) -> Option<u64> {
        let partition = m.partition;
        let offset = m.offset;
        let eos = self.exactly_once();
        // Revoked meanwhile (the new owner reads it again), polled before a rebalance,
        // or already in the state: skipped.
        let pe = self.engines.get_mut(&partition)?;
        let input = pe.inputs.get_mut(&m.topic)?;
        if !input.active || input.epoch != m.epoch || input.next.is_some_and(|n| offset < n) {
            return None;
        }
        input.next = Some(offset + 1);
        let progress = input.progress.clone();
        pe.last_event = instant;
        pe.dirty = true;
        let topic = &self.inputs[m.topic];
        let limits = Limits {
            max_event_bytes: self.cfg.input.max_event_bytes,
            max_clock_skew_ms: self.cfg.input.max_clock_skew_secs as i64 * 1000,
            now: Some(now),
        };
        let payload = m.value();
        let decoded = decode_message(payload, topic.encoding, m.content_type(), &limits)
            .and_then(|e| check_placement(e, topic, m.key()));
        self.out.clear();
        match decoded {
            Ok(event) => {
                let ty = event_label(&event);
                self.consumed
                    .entry((m.topic, ty))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, ty))
                    .increment(1);
                self.alerts.clear();
                let idle = Duration::from_secs(self.cfg.kafka.idle_timeout_secs);
                let lateness = self.cfg.engine.lateness_ms();
                pe.cap_watermark(m.topic, event.occurred_at, instant, idle, lateness);
                match pe.engine.apply_into(&event, &mut self.alerts) {
                    Outcome::Duplicate => self.duplicate.increment(1),
                    Outcome::AppliedLate | Outcome::DroppedLate => self.late.increment(1),
                    _ => {}
                }
                for a in &mut self.alerts {
                    a.emitted_at = now;
                    count_alert(a);
                    self.out.push(alert_record(a, self.cfg.kafka.alerts_format));
                }
            }
            Err(e) => {
                let reason = e.reason.code();
                self.consumed
                    .entry((m.topic, "invalid"))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, "invalid"))
                    .increment(1);
                self.dead
                    .entry((m.topic, reason))
                    .or_insert_with(|| telemetry::dead_letters(&topic.name, reason))
                    .increment(1);
                self.out.push(dead_letter_record(
                    Source {
                        topic: &topic.name,
                        partition,
                        offset,
                    },
                    m.key(),
                    payload,
                    &m.headers,
                    &e,
                ));
                self.status.dead_lettered();
            }
        }
        let n_alerts = if self.out.first().is_some_and(is_dead_letter) {
            0
        } else {
            self.out.len()
        };
        if !eos {
            if let Err(e) = progress
                .lock()
                .expect("progress lock")
                .processed(offset, self.out.len() as u32)
            {
                tracing::error!(error = %e, "offset tracking");
            }
        }
        let ts = m.timestamp_ms;
        let outs = std::mem::take(&mut self.out);
        for rec in &outs {
            let dead = is_dead_letter(rec);
            let delivery = Delivery {
                progress: (!eos).then(|| progress.clone()),
                pending: None,
                offset,
                input_ts_ms: ts,
                alert: !dead,
            };
            self.emit(partition, rec, delivery, dead);
        }
        self.out = outs;
        self.out.clear();
        self.note_evictions(partition);
        let full = self.engines.get_mut(&partition).is_some_and(|pe| {
            pe.replay.push(m);
            pe.replay.len() >= REPLAY_LIMIT
        });
        if full {
            // The input kept for a rewind stays bounded: checkpoint early.
            self.checkpoint(partition, false);
        }
        Some(n_alerts as u64)
    }

    /// Sends an alert or dead letter of partition `p`: in its transaction (exactly-once)
    /// or through the shared producer, counted as pending until acknowledged.
    fn emit(&mut self, p: i32, rec: &OutRecord, mut delivery: Delivery, dead: bool) {
        let cfg = self.cfg.clone();
        let topic = if dead {
            &cfg.kafka.topics.dead_letters
        } else {
            &cfg.kafka.topics.alerts
        };
        let out = Out {
            topic,
            partition: None,
            key: rec.key.as_deref(),
            payload: Some(&rec.payload),
            headers: &rec.headers,
        };
        if self.exactly_once() {
            self.settle(p, false);
            if let Some(pe) = self.engines.get_mut(&p) {
                if pe.committing.is_some() || pe.needs_rewind {
                    // The previous transaction is still committing: this goes in the
                    // next one.
                    pe.held.push((rec.clone(), dead, delivery));
                    return;
                }
            }
            if let Err(f) = self.begin(p) {
                match f {
                    TxnFailure::Fatal(why) => self.fatal(p, why),
                    TxnFailure::Abortable(why) => {
                        tracing::warn!(partition = p, error = %why, "cannot begin a transaction; rewinding");
                        if let Some(pe) = self.engines.get_mut(&p) {
                            pe.needs_rewind = true;
                        }
                    }
                    TxnFailure::Abandoned => {}
                }
                return;
            }
        }
        let Some(pe) = self.engines.get(&p) else {
            return;
        };
        let producer = if self.exactly_once() {
            pe.txn.producer.clone()
        } else {
            pe.pending.fetch_add(1, Ordering::AcqRel);
            delivery.pending = Some(pe.pending.clone());
            self.producer.clone()
        };
        let d = Arc::new(delivery);
        if let Err(e) = send(&producer, &self.status, &self.queue_full, self.id, out, d) {
            self.status.fail(e);
        }
    }

    /// Reports customers the engine of `p` forgot since the last look.
    fn note_evictions(&mut self, p: i32) {
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        let s = pe.engine.stats();
        let (idle, cap) = (s.evicted_idle, s.evicted_cap);
        if idle > pe.evicted.0 {
            telemetry::customers_evicted("idle", idle - pe.evicted.0);
        }
        if cap > pe.evicted.1 {
            telemetry::customers_evicted("cap", cap - pe.evicted.1);
            let now = Instant::now();
            if self
                .last_cap_warning
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                self.last_cap_warning = Some(now);
                tracing::warn!(
                    partition = p,
                    cap = self.cap_share,
                    evicted = cap,
                    "customer cap reached (engine.max_customers shared among this instance's partitions): the least recently active customers are forgotten early"
                );
            }
        }
        pe.evicted = (idle, cap);
    }

    /// Idle partitions: after `idle_timeout_secs` without events, the wall clock stands
    /// in for event time (stream time = now minus the allowed lateness, as a watermark
    /// would be if events were flowing), so silence-driven signals fire even when a
    /// partition's input stops. Events arriving later with older times are late and
    /// handled as `engine.late_events` says. Also refreshes the size gauges.
    fn tick(&mut self, instant: Instant) {
        let idle = Duration::from_secs(self.cfg.kafka.idle_timeout_secs);
        let lateness = self.cfg.engine.allowed_lateness_secs as i64 * 1000;
        let now = wall_now();
        let fmt = self.cfg.kafka.alerts_format;
        let mut out: Vec<(i32, OutRecord)> = Vec::new();
        for (p, pe) in self.engines.iter_mut() {
            if instant.saturating_duration_since(pe.last_event) < idle
                || pe.engine.max_event_time().is_none()
            {
                continue;
            }
            let target = Timestamp(now.0 - lateness);
            if pe.engine.stream_time().is_some_and(|s| target <= s) {
                continue;
            }
            telemetry::idle_advance();
            pe.dirty = true;
            self.alerts.clear();
            pe.engine.advance_to_into(target, &mut self.alerts);
            for a in &mut self.alerts {
                a.emitted_at = now;
                count_alert(a);
                out.push((*p, alert_record(a, fmt)));
            }
        }
        // Alerts of the passing of time follow no input offset.
        self.status.timer_alerts(out.len());
        for (p, rec) in out {
            let d = Delivery {
                progress: None,
                pending: None,
                offset: -1,
                input_ts_ms: -1,
                alert: true,
            };
            self.emit(p, &rec, d, false);
        }
        let parts: Vec<i32> = self.engines.keys().copied().collect();
        for p in parts {
            self.note_evictions(p);
        }
        if instant.saturating_duration_since(self.last_gauges) >= Duration::from_secs(2) {
            self.last_gauges = instant;
            for (p, pe) in &self.engines {
                telemetry::partition_state(
                    *p,
                    pe.engine.customers(),
                    pe.engine.state_bytes(),
                    pe.engine.stream_time().map(|t| t.0),
                    &pe.engine.at_risk(),
                );
            }
        }
    }
}

/// One record to send.
struct Out<'a> {
    topic: &'a str,
    /// An explicit partition (the changelog's is the input's); `None`: by key.
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    payload: Option<&'a [u8]>,
    headers: &'a [(String, Vec<u8>)],
}

/// Sends one record, waiting while the producer queue is full (back-pressure). At
/// shutdown past the deadline the record is abandoned (its input offset is then never
/// committed, so it is produced again after restart). A send refused for another
/// reason is returned.
fn send<C: ClientContext + rdkafka::producer::ProducerContext<DeliveryOpaque = Arc<Delivery>>>(
    producer: &ThreadedProducer<C>,
    status: &Status,
    queue_full: &Counter,
    id: usize,
    out: Out<'_>,
    delivery: Arc<Delivery>,
) -> Result<(), String> {
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Delivery>> =
        BaseRecord::with_opaque_to(out.topic, delivery);
    // State records have none: no header list to allocate and free for each.
    if !out.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (k, v) in out.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        record = record.headers(headers);
    }
    if let Some(p) = out.payload {
        record = record.payload(p);
    }
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) => {
                if !matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) {
                    if let Some(p) = &back.delivery_opaque.pending {
                        p.fetch_sub(1, Ordering::AcqRel);
                    }
                    return Err(format!("cannot produce to {}: {e}", out.topic));
                }
                if status.abandon_sends() {
                    return Ok(());
                }
                queue_full.increment(1);
                status.beat(1 + id);
                std::thread::sleep(Duration::from_millis(5));
                record = back;
            }
        }
    }
}

fn is_dead_letter(r: &OutRecord) -> bool {
    r.headers
        .iter()
        .any(|(k, _)| k == super::records::dead_letter_headers::REASON)
}

fn count_alert(a: &Alert) {
    let signal = a.signals.first().map_or("none", |s| s.signal.name());
    telemetry::alert(a.status.as_str(), signal, a.risk.as_str(), a.value_tier);
}

/// The event's metric label: its contract type, with every engagement kind but NPS
/// folded into `engagement.activity` (kinds are open-ended; labels must stay bounded).
fn event_label(e: &Event<'_>) -> &'static str {
    match e.kind.type_name() {
        "engagement" => "engagement.activity",
        t => t,
    }
}

/// An event must sit on a topic of its family, keyed by its customer.
fn check_placement<'a>(
    e: Event<'a>,
    topic: &InputTopic,
    key: Option<&[u8]>,
) -> Result<Event<'a>, DecodeError> {
    let family = e.kind.family();
    if !topic.families.contains(&family) {
        return Err(DecodeError::new(
            Reason::WrongTopic,
            format!(
                "a {} event on topic {}, which carries {:?} events",
                e.kind.type_name(),
                topic.name,
                topic.families
            ),
        ));
    }
    match key {
        Some(k) if k == e.customer_id.as_bytes() => Ok(e),
        Some(_) => Err(DecodeError::new(
            Reason::KeyMismatch,
            "the message key differs from customer_id; events are keyed by customer_id",
        )),
        None => Err(DecodeError::new(
            Reason::KeyMismatch,
            "the message has no key; events are keyed by customer_id",
        )),
    }
}

pub(crate) fn wall_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_json;
    use crate::event::Family;

    fn topic(families: Vec<Family>) -> InputTopic {
        InputTopic {
            name: "t".into(),
            families,
            encoding: crate::decode::wire::Encoding::Json,
        }
    }

    #[test]
    fn events_must_sit_on_their_familys_topic_keyed_by_customer() {
        let json = br#"{"event_id":"e","customer_id":"acme","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":5}"#;
        let e = || decode_json(json, &Limits::default()).unwrap();
        assert!(check_placement(e(), &topic(vec![Family::Orders]), Some(b"acme")).is_ok());
        let wrong = check_placement(e(), &topic(vec![Family::Engagement]), Some(b"acme"));
        assert_eq!(wrong.unwrap_err().reason, Reason::WrongTopic);
        let shared = topic(vec![Family::Engagement, Family::Orders]);
        assert!(check_placement(e(), &shared, Some(b"acme")).is_ok());
        let other = check_placement(e(), &shared, Some(b"globex"));
        assert_eq!(other.unwrap_err().reason, Reason::KeyMismatch);
        let none = check_placement(e(), &shared, None);
        assert_eq!(none.unwrap_err().reason, Reason::KeyMismatch);
    }
}
