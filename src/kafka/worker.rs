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
//! the checkpoint commits. Its transactions commit ten times as often as state records
//! are worth writing: the customer records go out every `commit_interval_ms`, and the
//! transactions between carry the partition's journal instead (see
//! [`super::journal`]), which a restore replays over the input since the records.
//!
//! Transactional API errors are handled by class, as librdkafka documents: retriable
//! ones are retried, abortable ones abort the transaction and rewind the partition
//! (state restored from the changelog, the input since the last checkpoint, which the
//! worker keeps, processed again), fatal ones (fenced: another instance owns the
//! partition now) stop the service.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

use super::assignment::Epochs;
use super::changelog::{self, encode_partition_record, RestoreCtx, ENGINE_KEY};
use super::client::{restore_consumer_config, transactional_producer_config};
use super::journal::{Base, Journal, Op, JOURNAL_KEY};
use super::offsets::PartitionProgress;
use super::records::{alert_record, dead_letter_record, OutRecord, Source};
use super::runtime::{Delivery, Failure, FullBuffers, ProducerCtx, Status};
use super::sync::{Next, Position, Synchronizer};
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
    /// Its partition's epoch (see `Epochs`).
    pub epoch: u64,
    pub progress: Arc<Mutex<PartitionProgress>>,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
}

/// What a worker is asked to do, in order.
pub(crate) enum Work {
    /// Process these messages.
    Batch(Vec<InMsg>),
    /// What the consumer knew of these input topic-partitions' ends after it had passed
    /// on every message sent before this.
    Positions(Vec<PositionReport>),
    /// These topic-partitions are now ours: restore, then process.
    Assign(Assignment),
    /// These topic-partitions are no longer ours: checkpoint, drop; reply when done.
    Revoke(Vec<(usize, i32)>, SyncSender<()>),
    /// A customer's health record.
    Query(String, SyncSender<Option<HealthRecord>>),
    /// Checkpoint everything (shutdown); reply.
    Drain(SyncSender<()>),
}

/// The consumer's knowledge of one input topic-partition's end (see [`Position`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PositionReport {
    pub topic: usize,
    pub partition: i32,
    /// The partition's epoch when it was read.
    pub epoch: u64,
    /// `None`: the topic-partition is gone from the brokers' metadata (its topic was
    /// deleted): the partition goes on without it.
    pub position: Option<Position>,
}

/// A consumed message waiting for its turn (see [`super::sync`]), decoded against the
/// wall-clock `now` it arrived at.
struct Buffered {
    msg: InMsg,
    decoded: Result<Event<'static>, DecodeError>,
    now: Timestamp,
}

/// A worker's share of a new assignment.
pub(crate) struct Assignment {
    pub list: Vec<Assigned>,
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
    /// The inputs' consumed messages, taken in event-time order (indexed by input topic).
    sync: Synchronizer<Buffered>,
    /// When an input's idle time runs out (worker clock, ms): the partition may go on then.
    wake: Option<u64>,
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
    /// Exactly-once: the input since the last state records (see [`super::journal`]).
    journal: Journal,
    /// When the state records were last written.
    last_state: Instant,
    /// The next checkpoint writes the state records (revoked, draining, restored).
    state_due: bool,
}

impl PartitionEngine {
    /// Index of input `topic` among the partition's inputs (a journal's numbering).
    fn position(&self, topic: usize) -> usize {
        self.inputs
            .keys()
            .position(|t| *t == topic)
            .unwrap_or(usize::MAX)
    }

    /// The journal's inputs as the state records about to be written reflect them.
    fn journal_base(&self, topics: &[InputTopic]) -> Vec<Base> {
        self.inputs
            .iter()
            .map(|(t, i)| Base {
                name: topics[*t].name.clone(),
                next: i.next,
                max_time: i.max_time,
            })
            .collect()
    }

    /// Sets the engine's customer cap (journaled: a replay must evict as it did).
    fn set_cap(&mut self, n: u64, eos: bool) {
        if eos {
            self.journal.cap(n);
        }
        self.engine.set_max_customers(n);
    }

    /// The journal numbers the inputs as the partition does now.
    fn journal_matches(&self, topics: &[InputTopic]) -> bool {
        self.journal.base.len() == self.inputs.len()
            && self
                .journal
                .base
                .iter()
                .zip(self.inputs.keys())
                .all(|(b, t)| b.name == topics[*t].name)
    }
}

/// Bit `k` of an input mask.
fn bit(k: usize) -> u64 {
    1u64.checked_shl(k as u32).unwrap_or(0)
}

/// How journals written by builds before stream-time synchronization (see
/// [`super::sync`]) held stream time back: at the minimum over the partition's inputs in
/// `live` of their latest event time, minus the allowed lateness. A journal's replay
/// must give the engine exactly what it was given, so runs recorded with a mask replay
/// with it; this build records none (0: no limit), since taking the inputs' messages in
/// event-time order is what holds stream time back now.
fn cap_watermark(
    inputs: &mut BTreeMap<usize, Input>,
    engine: &mut Engine,
    topic: usize,
    t: Timestamp,
    live: u64,
    lateness: i64,
) {
    if let Some(i) = inputs.get_mut(&topic) {
        i.max_time = i.max_time.max(t.0);
    }
    let limit = inputs
        .values()
        .enumerate()
        .filter(|(k, i)| live & bit(*k) != 0 && i.max_time != i64::MIN)
        .map(|(_, i)| i.max_time)
        .min();
    engine.set_watermark_limit(limit.map(|m| Timestamp(m.saturating_sub(lateness))));
}

/// Decodes and checks one input message as the partition's engine takes it, against
/// wall-clock `now` (events too far ahead of it are refused). Shared by live
/// processing and a journal's replay.
fn decode_input(
    cfg: &Config,
    topic: &InputTopic,
    m: &InMsg,
    now: Timestamp,
) -> Result<Event<'static>, DecodeError> {
    let limits = Limits::from_input(&cfg.input, Some(now));
    decode_message(m.value(), topic.encoding, m.content_type(), &limits)
        .and_then(|e| check_placement(e, topic, m.key()))
}

struct Input {
    /// Latest event time seen on this input (`i64::MIN` before the first).
    max_time: i64,
    progress: Arc<Mutex<PartitionProgress>>,
    epoch: u64,
    /// The next offset to apply: what the state already holds is skipped.
    next: Option<i64>,
    /// Assigned now.
    active: bool,
    /// Gone from the brokers' metadata (its topic deleted): not waited for, and no
    /// offset of it is committed (the broker would refuse the whole commit).
    gone: bool,
}

impl Input {
    /// An input of a restored partition, not assigned yet.
    fn restored(epoch: u64, next: Option<i64>) -> Input {
        Input {
            max_time: i64::MIN,
            progress: Arc::new(Mutex::new(PartitionProgress::default())),
            epoch,
            next,
            active: false,
            gone: false,
        }
    }
}

/// A partition's state read back.
struct Restoration {
    engine: Engine,
    /// Its inputs, with the positions (and, after a journal, latest event times) the
    /// engine reflects; none assigned yet.
    inputs: BTreeMap<usize, Input>,
    /// Exactly-once: the journal the engine reflects, to go on with (empty: none).
    journal: Journal,
    /// Input messages the journal's replay applied.
    replayed: u64,
    /// The state records are behind the engine: write them at the first checkpoint.
    state_due: bool,
    /// Changelog records read.
    records: u64,
    elapsed: Duration,
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
    /// The running partitions' epochs (a restore of an older epoch is cancelled).
    epochs: Arc<Epochs>,
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
    /// Where this worker asks the poll loop to pause inputs whose buffers are full.
    full: Arc<FullBuffers>,
    /// The worker's clock for stream-time synchronization (ms since this instant).
    clock: Instant,
    /// Time inputs held stream time back, per (partition, input): the counter and the
    /// milliseconds not yet counted (it counts whole seconds).
    held: BTreeMap<(i32, usize), (Counter, u64)>,
}

/// How long a worker blocks for work before it looks at idle partitions.
const TICK: Duration = Duration::from_millis(200);

/// A checkpoint's commit that has not finished after this long is given up (its calls
/// have 30 s timeouts; librdkafka's send_offsets_to_transaction was seen to ignore its
/// own across a coordinator outage): the partition gets a new producer and rewinds.
const COMMIT_STUCK: Duration = Duration::from_secs(45);

/// Waits up to `limit` for a thread to finish (calling `tick` meanwhile, which says
/// whether to go on waiting); true if it did.
fn wait_for_thread<T>(
    h: &std::thread::JoinHandle<T>,
    limit: Duration,
    mut tick: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        if Instant::now() >= deadline || !tick() {
            return false;
        }
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
        epochs: Arc<Epochs>,
        full: Arc<FullBuffers>,
    ) -> Worker {
        Worker {
            id,
            cfg,
            inputs,
            producer,
            status,
            epochs,
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
            full,
            clock: Instant::now(),
            held: BTreeMap::new(),
        }
    }

    /// `instant` on the worker's synchronization clock, ms.
    fn ms(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.clock).as_millis() as u64
    }

    fn exactly_once(&self) -> bool {
        self.cfg.kafka.processing.guarantee == Guarantee::ExactlyOnce
    }

    /// Runs until the channel closes or the service stops for good.
    pub fn run(mut self, rx: Receiver<Work>) {
        let mut last_tick = Instant::now();
        let every = Duration::from_millis(self.cfg.kafka.checkpoint_interval_ms());
        loop {
            // Woken early when an input's idle time runs out.
            let mut wait = TICK.min(every);
            let at = self.ms(Instant::now());
            if let Some(w) = self.engines.values().filter_map(|pe| pe.wake).min() {
                wait = wait.min(Duration::from_millis(w.saturating_sub(at)));
            }
            match rx.recv_timeout(wait) {
                Ok(work) => self.handle(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.status.beat_at(1 + self.id, now);
            let at = self.ms(now);
            let parts: Vec<i32> = self.engines.keys().copied().collect();
            for p in parts {
                if self
                    .engines
                    .get(&p)
                    .and_then(|pe| pe.wake)
                    .is_some_and(|w| w <= at)
                {
                    self.drain(p, now);
                }
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
            telemetry::partition_gone(*p);
        }
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Batch(msgs) => {
                let n = msgs.len() as i64;
                let now = wall_now();
                let instant = Instant::now();
                let mut touched: Vec<i32> = Vec::new();
                for m in msgs {
                    if let Some(p) = self.receive(m, now) {
                        if touched.last() != Some(&p) {
                            touched.push(p);
                        }
                    }
                }
                self.status.dequeued(n);
                touched.sort_unstable();
                touched.dedup();
                for p in touched {
                    self.drain(p, instant);
                }
            }
            Work::Positions(list) => {
                let mut touched: Vec<i32> = Vec::new();
                let mut went: Vec<i32> = Vec::new();
                for r in list {
                    let Some(pe) = self.engines.get_mut(&r.partition) else {
                        continue;
                    };
                    let Some(i) = pe.inputs.get_mut(&r.topic) else {
                        continue;
                    };
                    if !i.active || i.epoch != r.epoch {
                        continue;
                    }
                    match r.position {
                        Some(position) => {
                            if i.gone {
                                tracing::info!(partition = r.partition, topic = %self.inputs[r.topic].name, "input topic-partition back");
                            }
                            i.gone = false;
                            pe.sync.set_present(r.topic, true);
                            pe.sync.report(r.topic, position);
                        }
                        None if !i.gone => {
                            tracing::warn!(
                                partition = r.partition,
                                topic = %self.inputs[r.topic].name,
                                "input topic-partition gone from the brokers' metadata (topic deleted?): the partition goes on without it"
                            );
                            i.gone = true;
                            pe.sync.set_present(r.topic, false);
                            went.push(r.partition);
                        }
                        None => {}
                    }
                    touched.push(r.partition);
                }
                went.dedup();
                for p in went {
                    self.give_up_commit_of_gone_input(p);
                }
                touched.sort_unstable();
                touched.dedup();
                let instant = Instant::now();
                for p in touched {
                    self.drain(p, instant);
                }
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
                    pe.sync.set_present(topic, false);
                    if pe.inputs.values().all(|i| !i.active) && !gone.contains(&partition) {
                        gone.push(partition);
                    }
                }
                for p in gone {
                    // Its state goes to the changelog with its offsets; the next owner
                    // restores it from there (without a journal to replay).
                    if let Some(pe) = self.engines.get_mut(&p) {
                        pe.state_due = true;
                    }
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
                let instant = Instant::now();
                for p in &all {
                    // What may go before the checkpoint goes; the rest is read again.
                    self.drain(*p, instant);
                }
                for pe in self.engines.values_mut() {
                    pe.state_due = true;
                }
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
        self.full.clear_partition(p);
        if let Some((_, h)) = pe.committing.take() {
            if wait_for_thread(&h, COMMIT_STUCK, || true) {
                let _ = h.join();
            }
        }
        if pe.txn.open {
            let _ = pe.txn.producer.abort_transaction(Duration::from_secs(5));
        }
        telemetry::partition_gone(p);
        drop(pe);
    }

    /// Takes the new assignment: each new partition gets its transactional producer
    /// (which fences the previous owner and aborts what it left open) and its state
    /// restored from the changelog before any of its input is processed.
    fn assign(&mut self, a: Assignment) {
        self.cap_share = a.cap_share;
        let mut by_partition: BTreeMap<i32, Vec<Assigned>> = BTreeMap::new();
        for x in a.list {
            by_partition.entry(x.partition).or_default().push(x);
        }
        for (p, list) in by_partition {
            let epoch = list[0].epoch;
            if !self.engines.contains_key(&p) {
                match self.open_partition(p, epoch) {
                    Ok(pe) => {
                        self.engines.insert(p, pe);
                        for (k, t) in self.inputs.iter().enumerate() {
                            self.held
                                .entry((p, k))
                                .or_insert_with(|| (telemetry::stream_time_held(p, &t.name), 0));
                        }
                        telemetry::sync_buffered(p, 0);
                    }
                    Err(TxnFailure::Abandoned) => continue,
                    Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                        self.status.fail(Failure::Transaction { partition: p, why });
                        continue;
                    }
                }
            }
            let eos = self.exactly_once();
            let pe = self.engines.get_mut(&p).expect("present");
            if self.cap_share > 0 {
                pe.set_cap(self.cap_share, eos);
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
                pe.sync.set_present(x.topic, true);
                pe.inputs.insert(
                    x.topic,
                    Input {
                        max_time,
                        progress: x.progress,
                        epoch,
                        next,
                        active: true,
                        gone: false,
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
        let restored = self.restore_partition(p, epoch);
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
            replayed = r.replayed,
            seconds = secs,
            customers_per_second = (r.engine.customers() as f64 / secs.max(1e-6)) as u64,
            "state restored"
        );
        let evicted = (r.engine.stats().evicted_idle, r.engine.stats().evicted_cap);
        let k = &self.cfg.kafka;
        Ok(PartitionEngine {
            engine: r.engine,
            inputs: r.inputs,
            sync: Synchronizer::new(self.inputs.len(), k.max_task_idle_ms, k.sync_buffer()),
            wake: None,
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
            dirty: r.state_due,
            pending: Arc::new(AtomicI64::new(0)),
            evicted,
            checkpoint_due: false,
            journal: r.journal,
            last_state: Instant::now(),
            state_due: r.state_due,
        })
    }

    /// Reads partition `p`'s state back: the changelog's records, then (exactly-once)
    /// the journal of the transactions committed since them, replayed over the input
    /// it covers. Cancelled when the partition moves on (a newer rebalance epoch).
    fn restore_partition(
        &self,
        p: i32,
        epoch: u64,
    ) -> Result<Restoration, changelog::RestoreError> {
        let started = Instant::now();
        let (status, id, epochs) = (self.status.clone(), self.id, self.epochs.clone());
        let mut keep_going = move || {
            status.beat(1 + id);
            epochs.current(p) == Some(epoch) && !status.abandon_sends()
        };
        let r = changelog::restore(&self.cfg, p, &mut keep_going)?;
        let mut inputs = BTreeMap::new();
        for (name, next) in &r.positions {
            if let Some(t) = self.inputs.iter().position(|i| &i.name == name) {
                inputs.insert(t, Input::restored(epoch, Some(*next)));
            }
        }
        let mut engine = r.engine;
        let (mut journal, mut replayed, mut stale) = (Journal::default(), 0, false);
        if let Some((j, ends)) = r.journal {
            // The journal written with the state records names their positions; one
            // that does not (never seen: both are written in one transaction) is stale.
            let ours = r.positions.iter().all(|(name, next)| {
                j.base
                    .iter()
                    .any(|b| &b.name == name && b.next == Some(*next))
            });
            if ours {
                let replay_started = Instant::now();
                let replay = replay_journal(
                    &self.cfg,
                    &self.inputs,
                    p,
                    epoch,
                    &mut engine,
                    &mut inputs,
                    (&j, &ends),
                    &mut keep_going,
                );
                match replay {
                    Ok(n) => {
                        replayed = n;
                        telemetry::replayed_messages(n);
                        if n > 0 {
                            tracing::info!(
                                partition = p,
                                messages = n,
                                operations = j.ops.len(),
                                seconds = replay_started.elapsed().as_secs_f64(),
                                "journal replayed over the input since the state records"
                            );
                        }
                        journal = j;
                    }
                    Err(changelog::RestoreError::Journal(why)) => {
                        // The input is gone (retention, a recreated topic): as a consumer
                        // whose offset is out of range goes on from what there is, the
                        // state goes on from its records, at the committed offsets.
                        tracing::error!(
                            partition = p,
                            error = %why,
                            "the journal cannot be replayed: the state goes on from its records without the input between them and the committed offsets"
                        );
                        for (b, end) in j.base.iter().zip(&ends) {
                            if let Some(t) = self.inputs.iter().position(|i| i.name == b.name) {
                                let i = inputs
                                    .entry(t)
                                    .or_insert_with(|| Input::restored(epoch, None));
                                i.next = *end;
                            }
                        }
                        // Its state records are written at the first checkpoint.
                        stale = true;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                tracing::warn!(
                    partition = p,
                    "the changelog's journal does not start at its state records; ignored"
                );
            }
        }
        // Journals of earlier builds may have left a watermark limit (see
        // `cap_watermark`); from here the order of the inputs' messages holds stream
        // time back.
        engine.set_watermark_limit(None);
        Ok(Restoration {
            engine,
            inputs,
            journal,
            replayed,
            state_due: replayed > 0 || stale,
            records: r.records,
            elapsed: started.elapsed(),
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

/// Replays a journal over the input it covers: the engine and the inputs' positions
/// and event times become what they were when its transaction committed. Its outputs
/// were committed then and are not made again. Returns the messages applied.
#[allow(clippy::too_many_arguments)]
fn replay_journal(
    cfg: &Config,
    topics: &[InputTopic],
    p: i32,
    epoch: u64,
    engine: &mut Engine,
    inputs: &mut BTreeMap<usize, Input>,
    (j, ends): (&Journal, &[Option<i64>]),
    keep_going: &mut impl FnMut() -> bool,
) -> Result<u64, changelog::RestoreError> {
    use changelog::RestoreError;
    let counts = j.counts();
    // Journal input → input topic index.
    let mut index = Vec::with_capacity(j.base.len());
    for (k, b) in j.base.iter().enumerate() {
        match topics.iter().position(|t| t.name == b.name) {
            Some(t) => index.push(Some(t)),
            None if counts[k] == 0 => index.push(None),
            None => {
                return Err(RestoreError::Journal(format!(
                    "it covers {} messages of input topic {}, which is no longer configured",
                    counts[k], b.name
                )))
            }
        }
    }
    for (b, t) in j.base.iter().zip(&index) {
        let Some(t) = t else { continue };
        let i = inputs
            .entry(*t)
            .or_insert_with(|| Input::restored(epoch, None));
        i.max_time = b.max_time;
        i.next = b.next;
    }
    // The journal's input masks in the partition's numbering.
    let bits: Vec<u64> = index
        .iter()
        .map(|t| {
            t.and_then(|t| inputs.keys().position(|x| *x == t))
                .map_or(0, bit)
        })
        .collect();
    let remap = |live: u64| {
        bits.iter()
            .enumerate()
            .filter(|(k, _)| live & bit(*k) != 0)
            .fold(0, |m, (_, b)| m | b)
    };
    let mut queues: Vec<VecDeque<InMsg>> = j.base.iter().map(|_| VecDeque::new()).collect();
    if j.messages > 0 {
        read_journal_input(cfg, p, (j, ends), &index, &counts, &mut queues, keep_going)?;
    }
    let lateness = cfg.engine.lateness_ms();
    let mut scratch = Vec::new();
    for op in &j.ops {
        match *op {
            Op::Run {
                input,
                live,
                now,
                count,
            } => {
                let k = usize::from(input);
                let Some(t) = index[k] else { continue };
                let live = remap(live);
                for _ in 0..count {
                    let Some(m) = queues[k].pop_front() else {
                        return Err(RestoreError::Journal(
                            "it covers more input than was read".into(),
                        ));
                    };
                    if let Some(i) = inputs.get_mut(&t) {
                        i.next = Some(m.offset + 1);
                    }
                    // Refused (a dead letter then): nothing reaches the engine.
                    let decoded = decode_input(cfg, &topics[t], &m, Timestamp(now))
                        .and_then(|e| engine.check_age(&e).map(|()| e));
                    if let Ok(event) = decoded {
                        let time = event.occurred_at;
                        cap_watermark(inputs, engine, t, time, live, lateness);
                        engine.apply_into(&event, &mut scratch);
                        scratch.clear();
                    }
                }
            }
            Op::Advance { target } => {
                engine.advance_to_into(Timestamp(target), &mut scratch);
                scratch.clear();
            }
            Op::Cap(n) => engine.set_max_customers(n),
        }
    }
    for (t, end) in index.iter().zip(ends) {
        if let (Some(t), Some(end)) = (t, end) {
            if let Some(i) = inputs.get_mut(t) {
                i.next = Some(*end);
            }
        }
    }
    Ok(j.messages)
}

/// Reads the input a journal covers, from its start positions, `counts[k]` messages of
/// input `k` (before its end), with `read_committed` as the service's consumer reads.
fn read_journal_input(
    cfg: &Config,
    p: i32,
    (j, ends): (&Journal, &[Option<i64>]),
    index: &[Option<usize>],
    counts: &[u64],
    queues: &mut [VecDeque<InMsg>],
    keep_going: &mut impl FnMut() -> bool,
) -> Result<(), changelog::RestoreError> {
    use changelog::RestoreError;
    let consumer: BaseConsumer<RestoreCtx> =
        restore_consumer_config(&cfg.kafka).create_with_context(RestoreCtx)?;
    let timeout = Duration::from_secs(cfg.kafka.startup_timeout_secs);
    let mut tpl = TopicPartitionList::new();
    for (k, b) in j.base.iter().enumerate() {
        if counts[k] == 0 {
            continue;
        }
        let Some(from) = b.next else {
            return Err(RestoreError::Journal(format!(
                "no start position for input topic {}",
                b.name
            )));
        };
        let (low, _) = consumer.fetch_watermarks(&b.name, p, timeout)?;
        if low > from {
            return Err(RestoreError::Journal(format!(
                "{}[{p}] starts at offset {low} now: retention removed the input from offset {from} the journal covers",
                b.name
            )));
        }
        tpl.add_partition_offset(&b.name, p, Offset::Offset(from))?;
    }
    consumer.assign(&tpl)?;
    let mut got = vec![0u64; counts.len()];
    let mut progress = Instant::now();
    while got != counts {
        if !keep_going() {
            return Err(RestoreError::Cancelled);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(k) = j.base.iter().position(|b| b.name == m.topic()) else {
                    continue;
                };
                if got[k] >= counts[k] {
                    continue;
                }
                if ends[k].is_some_and(|end| m.offset() >= end) {
                    return Err(RestoreError::Journal(format!(
                        "{}[{p}] holds {} of the {} messages the journal covers before offset {}",
                        j.base[k].name,
                        got[k],
                        counts[k],
                        ends[k].unwrap_or_default()
                    )));
                }
                let t = index[k].expect("an input with messages is configured");
                queues[k].push_back(InMsg::new(t, 0, &m));
                got[k] += 1;
                progress = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "reading the input a journal covers; retrying");
            }
        }
        if progress.elapsed() > timeout {
            return Err(RestoreError::Journal(format!(
                "the input it covers did not arrive within {} s",
                timeout.as_secs()
            )));
        }
    }
    Ok(())
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
        // Shutdown past its deadline for sends gives up waiting (the commit's input is
        // processed again by the next owner).
        let result = if wait_for_thread(&h, left, || {
            status.beat(1 + id);
            !status.abandon_sends()
        }) {
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
                    telemetry::partition_gone(p);
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
        self.full.clear_partition(p);
        if let Some(pe) = self.engines.remove(&p) {
            telemetry::partition_gone(p);
            drop(pe);
        }
        self.status.fail(Failure::Fenced { partition: p, why });
    }

    fn try_checkpoint(&mut self, p: i32) -> Result<(), TxnFailure> {
        let eos = self.exactly_once();
        self.settle(p, true);
        let Some(pe) = self.engines.get(&p) else {
            return Ok(());
        };
        // Exactly-once: a journal is not left covering input for long, even when
        // nothing else changes (a restore needs that input, and retention may delete
        // it): the state records are written once it is older than the interval.
        let state_every = Duration::from_millis(self.cfg.kafka.commit_interval_ms);
        let journal_old = pe.journal.messages > 0 && pe.last_state.elapsed() >= state_every;
        if !(pe.dirty || pe.txn.open || eos && journal_old) {
            return Ok(());
        }
        let Some(group) = self.status.group() else {
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
        // Exactly-once writes the state records every commit interval, as at-least-once
        // does, and its journal in the transactions between (see `super::journal`).
        let state = !eos
            || pe.state_due
            || pe.journal.full()
            || pe.last_state.elapsed() >= state_every
            || !pe.journal_matches(&self.inputs);
        let topic = self.cfg.kafka.topics.changelog.clone();
        let producer = pe.txn.producer.clone();
        let (mut tombstones, mut customers) = (0u64, 0u64);
        let mut failed = None;
        if state {
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
            return Err(TxnFailure::Abortable(e.to_string()));
        }
        let names: Vec<(&str, i64)> = pe
            .inputs
            .iter()
            .filter_map(|(t, i)| Some((self.inputs[*t].name.as_str(), i.next?)))
            .collect();
        // The partition's own records (`None`: a tombstone).
        let own = |key: &[u8], record: Option<&[u8]>| {
            send(
                &producer,
                &self.status,
                &self.queue_full,
                self.id,
                Out {
                    topic: &topic,
                    partition: Some(p),
                    key: Some(key),
                    payload: record,
                    headers: &[],
                },
                self.untracked.clone(),
            )
            .map_err(|e| TxnFailure::Abortable(e.to_string()))
        };
        if state {
            self.record.clear();
            encode_partition_record(&names, &pe.engine, &mut self.record);
            own(ENGINE_KEY, Some(&self.record))?;
            telemetry::state_records("customer", customers);
            telemetry::state_records("tombstone", tombstones);
            telemetry::state_records("partition", 1);
            pe.last_state = Instant::now();
            pe.state_due = false;
            if eos {
                pe.journal = Journal::new(pe.journal_base(&self.inputs));
                pe.journal.cap(pe.engine.max_customers());
            } else if !pe.journal.base.is_empty() {
                // Restored from an exactly-once journal: these state records make it
                // stale, and its tombstone keeps later restores from reading it.
                own(JOURNAL_KEY, None)?;
                pe.journal = Journal::default();
            }
        }
        if eos {
            let ends: Vec<Option<i64>> = pe.inputs.values().map(|i| i.next).collect();
            self.record.clear();
            pe.journal.encode(&ends, &mut self.record);
            own(JOURNAL_KEY, Some(&self.record))?;
            telemetry::state_records("journal", 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (t, i) in &pe.inputs {
            if let (Some(next), false) = (i.next, i.gone) {
                let _ =
                    offsets.add_partition_offset(&self.inputs[*t].name, p, Offset::Offset(next));
            }
        }
        let pe = self.engines.get_mut(&p).expect("present");
        pe.txn.open = false;
        pe.dirty = false;
        pe.replay_committing = std::mem::take(&mut pe.replay);
        let (status, id) = (self.status.clone(), self.id);
        let producer = producer.clone();
        let handle = std::thread::Builder::new()
            .name(format!("churnsignal-commit-{p}"))
            .spawn(move || finish_checkpoint(status, id, producer, offsets, group))
            .map_err(|e| TxnFailure::Fatal(format!("checkpoint thread: {e}")))?;
        pe.committing = Some((Instant::now(), handle));
        Ok(())
    }

    /// An input of partition `p` went from the brokers' metadata: a commit under way
    /// most likely carries its offset, which the broker refuses as retriable until the
    /// call times out (30 s, the partition standing still). It is given up at once: a
    /// new producer fences the old one's transaction, and the partition rewinds to its
    /// last committed checkpoint without the gone input.
    fn give_up_commit_of_gone_input(&mut self, p: i32) {
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        match &pe.committing {
            Some((_, h)) if !h.is_finished() => {
                // The thread finishes on its own once its producer is fenced.
                drop(pe.committing.take());
                tracing::warn!(
                    partition = p,
                    "a commit under way carries the offset of a gone input: given up, the partition rewinds"
                );
                self.rewind_with(p, true);
            }
            _ => {}
        }
    }

    /// After an abortable error: the transaction is aborted, the state restored from
    /// the changelog (the last committed checkpoint) and the input since then
    /// processed again.
    fn rewind(&mut self, p: i32) {
        self.rewind_with(p, false);
    }

    /// [`Worker::rewind`], with a new producer when the old one is stuck.
    fn rewind_with(&mut self, p: i32, mut new_producer: bool) {
        let Some(mut pe) = self.engines.remove(&p) else {
            return;
        };
        telemetry::checkpoint(false);
        // A commit still under way ends first (its outcome does not matter: the restore
        // below reads whatever it committed); one stuck gets its producer replaced.
        if let Some((since, h)) = pe.committing.take() {
            let (status, id) = (self.status.clone(), self.id);
            let left = COMMIT_STUCK.saturating_sub(since.elapsed());
            if wait_for_thread(&h, left, || {
                status.beat(1 + id);
                true
            }) {
                let _ = h.join();
            } else {
                new_producer = true;
            }
        }
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
        let mut replay = std::mem::take(&mut pe.replay_committing);
        replay.append(&mut pe.replay);
        pe.held.clear();
        pe.needs_rewind = false;
        let epoch = pe.inputs.values().map(|i| i.epoch).max().unwrap_or(0);
        let r = match self.restore_partition(p, epoch) {
            Ok(r) => r,
            Err(changelog::RestoreError::Cancelled) => return,
            Err(e) => return self.fatal(p, e.to_string()),
        };
        pe.engine = r.engine;
        pe.journal = r.journal;
        pe.state_due = r.state_due;
        if self.cap_share > 0 {
            pe.set_cap(self.cap_share, self.exactly_once());
        }
        for (t, i) in pe.inputs.iter_mut() {
            let restored = r.inputs.get(t);
            i.next = restored.and_then(|x| x.next);
            i.max_time = restored.map_or(i64::MIN, |x| x.max_time);
            i.progress = Arc::new(Mutex::new(PartitionProgress::default()));
        }
        pe.pending = Arc::new(AtomicI64::new(0));
        pe.dirty = r.state_due;
        pe.evicted = (
            pe.engine.stats().evicted_idle,
            pe.engine.stats().evicted_cap,
        );
        self.engines.insert(p, pe);
        let now = wall_now();
        for m in replay {
            let decoded = decode_input(&self.cfg, &self.inputs[m.topic], &m, now);
            self.process(m, decoded, now, Instant::now());
        }
    }

    /// Takes one consumed message into its partition's synchronization buffer (decoded
    /// against `now`); returns its partition, `None` if it was dropped: revoked
    /// meanwhile (the new owner reads it again), polled before a rebalance, or delivered
    /// twice.
    fn receive(&mut self, m: InMsg, now: Timestamp) -> Option<i32> {
        let p = m.partition;
        let pe = self.engines.get_mut(&p)?;
        let input = pe.inputs.get(&m.topic)?;
        if !input.active || input.epoch != m.epoch || !pe.sync.fresh(m.topic, m.offset) {
            return None;
        }
        if input.next.is_some_and(|n| m.offset < n) {
            // Already in the state: consumed, not processed again.
            pe.sync.seen(m.topic, m.offset);
            return Some(p);
        }
        let decoded = decode_input(&self.cfg, &self.inputs[m.topic], &m, now);
        let time = decoded.as_ref().map_or(i64::MIN, |e| e.occurred_at.0);
        let (topic, offset) = (m.topic, m.offset);
        pe.sync.push(
            topic,
            offset,
            time,
            Buffered {
                msg: m,
                decoded,
                now,
            },
        );
        Some(p)
    }

    /// Processes partition `p`'s buffered messages as far as stream-time synchronization
    /// lets it (see [`super::sync`]), then pauses or resumes inputs by how full their
    /// buffers are.
    fn drain(&mut self, p: i32, instant: Instant) {
        let at = self.ms(instant);
        let (mut events, mut alerts) = (0, 0);
        while let Some(pe) = self.engines.get_mut(&p) {
            match pe.sync.next(at) {
                Next::Take(k) => {
                    let b = pe.sync.pop(k).expect("the head just looked at");
                    if let Some(a) = self.process(b.msg, b.decoded, b.now, instant) {
                        events += 1;
                        alerts += a;
                    }
                }
                Next::Hold { until, .. } => {
                    pe.wake = until;
                    break;
                }
                Next::Empty => {
                    pe.wake = None;
                    break;
                }
            }
        }
        self.status.processed(events, alerts);
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        let full = &self.full;
        pe.sync.flow(|k, pause| full.set((k, p), pause));
        let (held, inputs) = (&mut self.held, &self.inputs);
        pe.sync.take_held(|k, ms| {
            let (counter, carried) = held
                .entry((p, k))
                .or_insert_with(|| (telemetry::stream_time_held(p, &inputs[k].name), 0));
            *carried += ms;
            counter.increment(*carried / 1000);
            *carried %= 1000;
        });
    }

    /// Processes one message (decoded against `now`); returns the alerts it caused,
    /// `None` if it was skipped.
    fn process(
        &mut self,
        m: InMsg,
        decoded: Result<Event<'static>, DecodeError>,
        now: Timestamp,
        instant: Instant,
    ) -> Option<u64> {
        let partition = m.partition;
        let offset = m.offset;
        let eos = self.exactly_once();
        // Revoked meanwhile, polled before a rebalance, or (replayed after a rewind)
        // already in the state: skipped.
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
        // Too old for this partition's stream time: a dead letter like a decode error.
        let decoded = decoded.and_then(|e| pe.engine.check_age(&e).map(|()| e));
        // Exactly-once journals the message under the input's position.
        let position = eos.then(|| pe.position(m.topic));
        self.out.clear();
        match decoded {
            Ok(event) => {
                let ty = event_label(&event);
                self.consumed
                    .entry((m.topic, ty))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, ty))
                    .increment(1);
                self.alerts.clear();
                if let Some(position) = position {
                    pe.journal.message(position, offset, 0, now.0);
                }
                if let Some(i) = pe.inputs.get_mut(&m.topic) {
                    i.max_time = i.max_time.max(event.occurred_at.0);
                }
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
                if let Some(position) = position {
                    pe.journal.message(position, offset, 0, now.0);
                }
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
                    m.value(),
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
            // Never settled here: a failed commit rewinds the partition, replacing the
            // engine that made this record in the middle of its message (the record
            // would then reach the next transaction, and the message the new engine).
            // The worker's loop settles between messages.
            if let Some(pe) = self.engines.get_mut(&p) {
                if pe.committing.is_some() || pe.needs_rewind {
                    // The previous transaction is still committing (or must be rewound):
                    // this goes in the next one (or is made again by the rewind).
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
            if self.exactly_once() {
                // The transaction failed (a record of it was refused): the rewind's
                // abort tells an abortable failure from a fatal one.
                if let Some(pe) = self.engines.get_mut(&p) {
                    if !pe.needs_rewind {
                        tracing::warn!(partition = p, error = %e, "a transaction refused a record; rewinding the partition");
                    }
                    pe.needs_rewind = true;
                }
            } else {
                self.status.fail(e);
            }
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

    /// Idle partitions: after `idle_timeout_secs` without events, and with no input
    /// behind (nothing buffered, nothing left to consume as far as the consumer knows),
    /// the wall clock stands in for event time (stream time = now minus the allowed
    /// lateness, as a watermark would be if events were flowing), so silence-driven
    /// signals fire even when a partition's input stops. Events arriving later with
    /// older times are late and handled as `engine.late_events` says. Also refreshes the
    /// size gauges.
    fn tick(&mut self, instant: Instant) {
        let eos = self.exactly_once();
        let idle = Duration::from_secs(self.cfg.kafka.idle_timeout_secs);
        let lateness = self.cfg.engine.allowed_lateness_secs as i64 * 1000;
        let now = wall_now();
        let fmt = self.cfg.kafka.alerts_format;
        let mut out: Vec<(i32, OutRecord)> = Vec::new();
        for (p, pe) in self.engines.iter_mut() {
            if instant.saturating_duration_since(pe.last_event) < idle
                || pe.engine.max_event_time().is_none()
                || pe.sync.behind()
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
            if eos {
                pe.journal.advance(target.0);
            }
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
                telemetry::sync_buffered(*p, pe.sync.buffered());
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
) -> Result<(), Failure> {
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
                    return Err(Failure::RecordRefused {
                        topic: out.topic.to_owned(),
                        error: e.to_string(),
                    });
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
