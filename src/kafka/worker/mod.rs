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

mod checkpoint;
mod partition;
mod process;
mod restore;
mod transactional;
mod txn;

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::producer::ThreadedProducer;

use crate::alert::Alert;
use crate::config::{Config, Guarantee, InputTopic};
use crate::kafka::assignment::Epochs;
use crate::kafka::producer::{wall_now, Delivery, ProducerCtx};
use crate::kafka::records::{alert_record, OutRecord};
use crate::kafka::status::{Failure, Status};
use crate::kafka::work::{Assigned, Assignment, FullBuffers, Work};
use crate::kafka::worker::partition::{Input, PartitionEngine};
use crate::telemetry::{self};
use crate::time::Timestamp;
use txn::TxnFailure;

pub(crate) struct Worker {
    id: usize,
    cfg: Arc<Config>,
    inputs: Arc<Vec<InputTopic>>,
    producer: ThreadedProducer<ProducerCtx>,
    status: Arc<Status>,
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
                // Between two messages: a finished commit settles, a failed
                // transaction rewinds.
                self.settle(p, false);
            }
            if now.saturating_duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if now.saturating_duration_since(self.last_checkpoint) >= every {
                self.last_checkpoint = now;
                for pe in self.engines.values_mut() {
                    pe.tx.set_due();
                }
            }
            let due: Vec<i32> = self
                .engines
                .iter_mut()
                .filter_map(|(p, pe)| pe.tx.take_due().then_some(*p))
                .collect();
            for p in due {
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
    fn close(&mut self, p: i32, pe: PartitionEngine) {
        self.full.clear_partition(p);
        pe.tx.close(&mut || true);
        telemetry::partition_gone(p);
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
}

impl Worker {
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
            self.emit(p, rec, d, false);
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

fn count_alert(a: &Alert) {
    let signal = a.signals.first().map_or("none", |s| s.signal.name());
    telemetry::alert(a.status.as_str(), signal, a.risk.as_str(), a.value_tier);
}
