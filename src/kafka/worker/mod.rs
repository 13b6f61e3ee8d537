//! Worker threads: each owns the partitions that hash to it (partition number modulo
//! the worker count), so a customer's events, which share a partition, always meet in
//! one engine on one thread. The worker only receives, routes and ticks: what happens
//! to a partition is a [`Partition`] method, run with what the worker's partitions
//! share ([`Shared`]); a partition that fails for good says so with a [`Leave`], and
//! [`Worker::on`] drops it.
//!
//! A partition restores its state from the changelog when it is assigned, then
//! decodes, validates, applies, hands alerts and dead letters to the producer, and
//! checkpoints every interval: changed customer records, the partition record and the
//! input offsets in one transaction of the partition's own transactional producer.
//!
//! How outputs leave depends on the guarantee, which each partition keeps as a
//! [`GuaranteeState`](guarantee::GuaranteeState) with its own state. At-least-once: alerts and dead letters go out at once through the shared idempotent
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

mod checkpoint;
mod guarantee;
mod partition;
mod process;
mod restore;
mod transactional;
mod txn;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::producer::ThreadedProducer;

use crate::alert::Alert;
use crate::config::{Config, EngineSettings, InputTopic};
use crate::kafka::assignment::Epochs;
use crate::kafka::producer::{wall_now, Delivery, ProducerCtx};
use crate::kafka::records::OutRecord;
use crate::kafka::status::{Failure, Status};
use crate::kafka::work::{Assignment, FullBuffers, Work};
use crate::kafka::worker::partition::{Leave, Partition};
use crate::telemetry::{self};
use txn::TxnFailure;

/// A worker thread: its partitions, and what they share.
pub(crate) struct Worker {
    parts: BTreeMap<i32, Partition>,
    shared: Shared,
    last_gauges: Instant,
    last_checkpoint: Instant,
}

/// What a worker's partitions share: the configuration, the producer, health, counters
/// and scratch buffers.
pub(super) struct Shared {
    id: usize,
    cfg: Arc<Config>,
    /// What the partitions' engines are made with.
    settings: Arc<EngineSettings>,
    inputs: Arc<Vec<InputTopic>>,
    producer: ThreadedProducer<ProducerCtx>,
    status: Arc<Status>,
    /// The running partitions' epochs (a restore of an older epoch is cancelled).
    epochs: Arc<Epochs>,
    cap_share: u64,
    consumed: BTreeMap<(usize, &'static str), Counter>,
    /// Events consumed since the counters were last brought up to date, per (input,
    /// event type): counted per event here, added to `consumed` once a batch.
    consumed_pending: Vec<((usize, &'static str), u64)>,
    dead: BTreeMap<(usize, &'static str), Counter>,
    late: Counter,
    duplicate: Counter,
    queue_full: Counter,
    alerts: Vec<Alert>,
    out: Vec<OutRecord>,
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

impl Shared {
    /// `instant` on the worker's synchronization clock, ms.
    fn ms(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.clock).as_millis() as u64
    }

    /// Counts an event of `ty` consumed from input `topic`; the metric catches up at
    /// [`Shared::flush_consumed`]. A batch holds a few kinds, found by a short scan.
    fn count_consumed(&mut self, topic: usize, ty: &'static str) {
        match self
            .consumed_pending
            .iter_mut()
            .find(|(k, _)| *k == (topic, ty))
        {
            Some((_, n)) => *n += 1,
            None => self.consumed_pending.push(((topic, ty), 1)),
        }
    }

    /// Adds the events counted since the last call to `churnsignal_events_consumed_total`:
    /// once a batch rather than once an event.
    fn flush_consumed(&mut self) {
        let inputs = &self.inputs;
        for ((topic, ty), n) in self.consumed_pending.drain(..) {
            self.consumed
                .entry((topic, ty))
                .or_insert_with(|| telemetry::events_consumed(&inputs[topic].name, ty))
                .increment(n);
        }
    }

    /// Tells the supervisor this worker is alive.
    fn beat(&self) {
        self.status.beat(1 + self.id);
    }
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        settings: Arc<EngineSettings>,
        producer: ThreadedProducer<ProducerCtx>,
        status: Arc<Status>,
        epochs: Arc<Epochs>,
        full: Arc<FullBuffers>,
    ) -> Worker {
        Worker {
            parts: BTreeMap::new(),
            shared: Shared {
                id,
                inputs: Arc::new(cfg.kafka.input_topics()),
                cfg,
                settings,
                producer,
                status,
                epochs,
                cap_share: 0,
                consumed: BTreeMap::new(),
                consumed_pending: Vec::new(),
                dead: BTreeMap::new(),
                late: telemetry::late_events(),
                duplicate: telemetry::duplicate_events(),
                queue_full: telemetry::producer_queue_full(),
                alerts: Vec::new(),
                out: Vec::new(),
                last_cap_warning: None,
                record: Vec::with_capacity(512),
                untracked: Arc::new(Delivery::untracked()),
                full,
                clock: Instant::now(),
                held: BTreeMap::new(),
            },
            last_gauges: Instant::now(),
            last_checkpoint: Instant::now(),
        }
    }

    /// Runs `f` on partition `p` if this worker has it; a partition that must leave is
    /// dropped (see [`Leave`]).
    fn on<T>(
        &mut self,
        p: i32,
        f: impl FnOnce(&mut Partition, &mut Shared) -> Result<T, Leave>,
    ) -> Option<T> {
        let part = self.parts.get_mut(&p)?;
        match f(part, &mut self.shared) {
            Ok(t) => Some(t),
            Err(leave) => {
                self.shared.full.clear_partition(p);
                if self.parts.remove(&p).is_some() {
                    telemetry::partition_gone(p);
                }
                if let Leave::Fatal(why) = leave {
                    self.shared
                        .status
                        .fail(Failure::Fenced { partition: p, why });
                }
                None
            }
        }
    }

    /// The partitions' numbers, to run something on each (see [`Worker::on`]).
    fn numbers(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    /// Runs until the channel closes or the service stops for good.
    pub fn run(mut self, rx: Receiver<Work>) {
        let mut last_tick = Instant::now();
        let every = Duration::from_millis(self.shared.cfg.kafka.checkpoint_interval_ms());
        loop {
            // Woken early when an input's idle time runs out.
            let mut wait = TICK.min(every);
            let at = self.shared.ms(Instant::now());
            if let Some(w) = self.parts.values().filter_map(|pt| pt.wake).min() {
                wait = wait.min(Duration::from_millis(w.saturating_sub(at)));
            }
            // With nothing to do, customer records go out ahead of the checkpoint (see
            // `Partition::stream_state`), a chunk at a time while no work arrives.
            let mut next = rx.try_recv();
            while matches!(next, Err(TryRecvError::Empty)) && self.stream_state() {
                next = rx.try_recv();
            }
            let next = match next {
                Ok(work) => Ok(work),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => rx.recv_timeout(wait),
            };
            match next {
                Ok(work) => self.handle(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.shared.status.beat_at(1 + self.shared.id, now);
            let at = self.shared.ms(now);
            for p in self.numbers() {
                self.on(p, |pt, sh| {
                    if pt.wake.is_some_and(|w| w <= at) {
                        pt.drain(sh, now)?;
                    }
                    // Between two messages: a finished commit settles, a failed
                    // transaction rewinds.
                    pt.settle(sh, false)
                });
            }
            if now.saturating_duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if now.saturating_duration_since(self.last_checkpoint) >= every {
                self.last_checkpoint = now;
                for pt in self.parts.values_mut() {
                    pt.tx.set_due();
                }
            }
            let due: Vec<i32> = self
                .parts
                .iter_mut()
                .filter_map(|(p, pt)| pt.tx.take_due().then_some(*p))
                .collect();
            for p in due {
                self.on(p, |pt, sh| pt.checkpoint(sh, false));
            }
        }
        for p in self.numbers() {
            self.on(p, |pt, sh| pt.settle(sh, true));
        }
        for p in self.parts.keys() {
            telemetry::partition_gone(*p);
        }
    }

    /// Streams a chunk of customer records of each partition that has some due (see
    /// [`Partition::stream_state`]); whether any went.
    fn stream_state(&mut self) -> bool {
        let mut any = false;
        for p in self.numbers() {
            any |= self.on(p, |pt, sh| pt.stream_state(sh)).unwrap_or(false);
        }
        any
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Batch(msgs) => {
                let n = msgs.len() as i64;
                let now = wall_now();
                let instant = Instant::now();
                let mut touched: Vec<i32> = Vec::new();
                for m in msgs {
                    let p = m.partition;
                    let taken = self
                        .parts
                        .get_mut(&p)
                        .is_some_and(|pt| pt.receive(&self.shared, m, now));
                    if taken && touched.last() != Some(&p) {
                        touched.push(p);
                    }
                }
                self.shared.status.dequeued(n);
                touched.sort_unstable();
                touched.dedup();
                for p in touched {
                    self.on(p, |pt, sh| pt.drain(sh, instant));
                }
            }
            Work::Positions(list) => {
                let mut touched: Vec<i32> = Vec::new();
                let mut went: Vec<i32> = Vec::new();
                for r in list {
                    let Some(pt) = self.parts.get_mut(&r.partition) else {
                        continue;
                    };
                    let Some(gone) = pt.report(&self.shared.inputs, r.topic, r.epoch, r.position)
                    else {
                        continue;
                    };
                    if gone {
                        went.push(r.partition);
                    }
                    touched.push(r.partition);
                }
                went.dedup();
                for p in went {
                    self.on(p, |pt, sh| pt.give_up_commit_of_gone_input(sh));
                }
                touched.sort_unstable();
                touched.dedup();
                let instant = Instant::now();
                for p in touched {
                    self.on(p, |pt, sh| pt.drain(sh, instant));
                }
            }
            Work::Assign(a) => self.assign(a),
            Work::Revoke(list, reply) => {
                let mut gone = Vec::new();
                for (topic, partition) in list {
                    let Some(pt) = self.parts.get_mut(&partition) else {
                        continue;
                    };
                    if pt.revoke(topic) && !gone.contains(&partition) {
                        gone.push(partition);
                    }
                }
                for p in gone {
                    // Its state goes to the changelog with its offsets; the next owner
                    // restores it from there (without a journal to replay).
                    self.on(p, |pt, sh| {
                        pt.state_due = true;
                        pt.checkpoint(sh, true)
                    });
                    if let Some(pt) = self.parts.remove(&p) {
                        pt.close(&self.shared);
                    }
                }
                let _ = reply.send(());
            }
            Work::Query(id, reply) => {
                let found = self
                    .parts
                    .values_mut()
                    .find_map(|pt| pt.engine.health_record(&id));
                let _ = reply.send(found);
            }
            Work::Drain(reply) => {
                let instant = Instant::now();
                for p in self.numbers() {
                    // What may go before the checkpoint goes; the rest is read again.
                    self.on(p, |pt, sh| pt.drain(sh, instant));
                }
                for p in self.numbers() {
                    self.on(p, |pt, sh| {
                        pt.state_due = true;
                        pt.checkpoint(sh, true)
                    });
                }
                let _ = reply.send(());
            }
        }
    }

    /// Takes the new assignment: each new partition gets its transactional producer
    /// (which fences the previous owner and aborts what it left open) and its state
    /// restored from the changelog before any of its input is processed.
    fn assign(&mut self, a: Assignment) {
        let sh = &mut self.shared;
        sh.cap_share = a.cap_share;
        let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for x in a.list {
            by_partition.entry(x.partition).or_default().push(x);
        }
        for (p, list) in by_partition {
            let epoch = list[0].epoch;
            let pt = match self.parts.entry(p) {
                Entry::Occupied(running) => running.into_mut(),
                Entry::Vacant(new) => match Partition::open(sh, p, epoch) {
                    Ok(pt) => {
                        for (k, t) in sh.inputs.iter().enumerate() {
                            sh.held
                                .entry((p, k))
                                .or_insert_with(|| (telemetry::stream_time_held(p, &t.name), 0));
                        }
                        telemetry::sync_buffered(p, 0);
                        new.insert(pt)
                    }
                    Err(TxnFailure::Abandoned) => continue,
                    Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                        sh.status.fail(Failure::Transaction { partition: p, why });
                        continue;
                    }
                },
            };
            if sh.cap_share > 0 {
                pt.set_cap(sh.cap_share);
            }
            pt.assign(&sh.inputs, epoch, list);
        }
    }

    /// Idle partitions advance on the wall clock (see [`Partition::idle_advance`]);
    /// evictions are reported and the size gauges refreshed.
    fn tick(&mut self, instant: Instant) {
        let now = wall_now();
        for p in self.numbers() {
            self.on(p, |pt, sh| {
                pt.idle_advance(sh, instant, now)?;
                pt.note_evictions(sh);
                Ok(())
            });
        }
        if instant.saturating_duration_since(self.last_gauges) >= Duration::from_secs(2) {
            self.last_gauges = instant;
            for (p, pt) in &self.parts {
                telemetry::partition_state(
                    *p,
                    pt.engine.customers(),
                    pt.engine.state_bytes(),
                    pt.engine.stream_time().map(|t| t.0),
                    &pt.engine.at_risk(),
                );
                telemetry::sync_buffered(*p, pt.sync.buffered());
            }
        }
    }
}

fn count_alert(a: &Alert) {
    let signal = a.signals.first().map_or("none", |s| s.signal.name());
    telemetry::alert(a.status.as_str(), signal, a.risk.as_str(), a.value_tier);
}
