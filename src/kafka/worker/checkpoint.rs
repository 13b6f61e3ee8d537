//! Checkpoints: the changed state records, the partition record, the journal and the
//! input offsets in one transaction; what settling its commit asks (see [`super::txn`]);
//! a rewind after an abortable failure.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::guarantee::GuaranteeState;
use super::partition::{decode_input, journal_base, Leave, Partition};
use super::transactional::{KafkaTxn, Output};
use super::txn::{Settled, TxnFailure};
use super::Shared;
use crate::kafka::changelog::{self, encode_partition_record, ENGINE_KEY};
use crate::kafka::journal::JOURNAL_KEY;
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::producer::{wall_now, Delivery, Out};
use crate::telemetry;
use crate::telemetry::events::{CheckpointAborted, Emit};

impl Partition {
    /// Takes the result of the running commit if there is one (or waits for it with
    /// `block`), and does what it asks (see [`Transactions::settle`]).
    ///
    /// [`Transactions::settle`]: super::txn::Transactions::settle
    pub(super) fn settle(&mut self, sh: &mut Shared, block: bool) -> Result<(), Leave> {
        if !self.tx.unsettled() {
            // No commit runs and the transaction has not failed: nothing to settle (the
            // worker's loop asks for every partition after every batch).
            return Ok(());
        }
        let stopping = sh.stopping();
        let status = &sh.status;
        let id = sh.id;
        // Shutdown past its deadline for sends gives up waiting (the commit's input is
        // processed again by the next owner).
        let mut keep_waiting = || {
            status.beat(1 + id);
            !status.abandon_sends()
        };
        let settled = if block {
            self.tx
                .settle(Instant::now(), true, stopping, &mut keep_waiting)
        } else {
            self.tx.step(Instant::now(), stopping, &mut keep_waiting)
        };
        self.on_settled(sh, settled)
    }

    /// Does what settling a commit asks.
    fn on_settled(&mut self, sh: &mut Shared, settled: Settled<Output>) -> Result<(), Leave> {
        match settled {
            Settled::Nothing => Ok(()),
            Settled::Committed(held) => {
                telemetry::checkpoint(true);
                telemetry::commit(true);
                sh.status.commits.fetch_add(1, Ordering::Relaxed);
                for (rec, dead, d) in held {
                    self.emit(sh, rec, d, dead)?;
                }
                Ok(())
            }
            Settled::Rewind {
                new_producer: true,
                why,
            } => {
                // librdkafka's send_offsets_to_transaction has been seen to wait forever
                // across a coordinator outage: the producer is replaced (the new one
                // fences it and aborts its transaction) and the partition rewound.
                self.rewind(sh, true, &why)
            }
            Settled::Rewind { why, .. } => self.rewind(sh, false, &why),
            Settled::GiveUp => {
                // Stopping (perhaps fenced): a new producer would fence the next owner.
                tracing::error!(
                    partition = self.number,
                    "a checkpoint did not finish; given up"
                );
                Err(Leave::Dropped)
            }
            Settled::Fatal(why) => Err(Leave::Fatal(why)),
        }
    }

    /// Checkpoints if anything changed (with `wait`, until its commit settles); handles
    /// failures by class.
    pub(super) fn checkpoint(&mut self, sh: &mut Shared, wait: bool) -> Result<(), Leave> {
        // The previous commit settles first.
        self.settle(sh, true)?;
        match self.try_checkpoint(sh, wait) {
            Ok(()) if wait => self.settle(sh, true),
            Ok(()) | Err(TxnFailure::Abandoned) => Ok(()),
            Err(TxnFailure::Abortable(why)) => self.rewind(sh, false, &why),
            Err(TxnFailure::Fatal(why)) => Err(Leave::Fatal(why)),
        }
    }

    /// `force`: never put off (see [`GuaranteeState::put_off`]).
    fn try_checkpoint(&mut self, sh: &mut Shared, force: bool) -> Result<(), TxnFailure> {
        // Exactly-once: a journal is not left covering input for long, even when
        // nothing else changes (a restore needs that input, and retention may delete
        // it): the state records are written once it is older than the interval.
        let state_every = Duration::from_millis(sh.cfg.kafka.commit_interval_ms);
        let journal = self.guarantee.journal();
        let journal_old =
            journal.is_some_and(|j| j.messages > 0) && self.last_state.elapsed() >= state_every;
        if !(self.dirty || self.tx.is_open() || journal_old) {
            return Ok(());
        }
        if sh.status.group().is_none() {
            return Ok(());
        }
        // At-least-once: every output of the input this checkpoint covers must be
        // acknowledged before its offsets commit. While some are in flight, the worker
        // goes on with its messages and tries again after the next batch.
        if self.guarantee.put_off(Instant::now(), state_every, force) {
            self.tx.set_due();
            return Ok(());
        }
        let status = &sh.status;
        let acknowledged = self.guarantee.acknowledged(
            || {
                status.beat(1 + sh.id);
                !status.abandon_sends()
            },
            || status.failure().is_none(),
        );
        if !acknowledged {
            return Err(TxnFailure::Abandoned);
        }
        self.tx.open()?;
        // Exactly-once writes the state records every commit interval, as at-least-once
        // does, and its journal in the transactions between (see `crate::kafka::journal`).
        let state = self.guarantee.journal().is_none_or(|j| j.full())
            || self.state_due
            || self.last_state.elapsed() >= state_every
            || !self.journal_matches(&sh.inputs);
        let out = Changelog {
            producer: self.tx.producer(),
            topic: &sh.cfg.kafka.topics.changelog,
            partition: self.number,
            untracked: &sh.untracked,
        };
        if state {
            customer_records(&mut self.engine, &mut sh.record, usize::MAX, &out)?;
            sh.record.clear();
            let names = self.positions(&sh.inputs, true);
            encode_partition_record(&names, &self.engine, &mut sh.record);
            out.send(ENGINE_KEY, Some(&sh.record))?;
            telemetry::state_records("partition", 1);
            self.last_state = Instant::now();
            self.state_due = false;
            let (inputs, topics) = (&self.inputs, &sh.inputs);
            let base = || journal_base(inputs, topics);
            if self
                .guarantee
                .state_written(base, self.engine.max_customers())
            {
                // Restored from an exactly-once journal: these state records make it
                // stale, and its tombstone keeps later restores from reading it.
                out.send(JOURNAL_KEY, None)?;
            }
        }
        if let Some(journal) = self.guarantee.journal() {
            let ends: Vec<Option<i64>> = self.inputs.values().map(|i| i.next).collect();
            sh.record.clear();
            journal.encode(&ends, &mut sh.record);
            out.send(JOURNAL_KEY, Some(&sh.record))?;
            telemetry::state_records("journal", 1);
        }
        let offsets: Vec<(String, i64)> = self
            .positions(&sh.inputs, false)
            .into_iter()
            .map(|(name, next)| (name.to_owned(), next))
            .collect();
        self.dirty = false;
        self.tx.commit(offsets, Instant::now())
    }

    /// At-least-once spreads a checkpoint's customer records over the second half of
    /// its interval, in the worker's idle moments: up to [`STREAM_CHUNK`] of the
    /// customers changed so far go into the open transaction (opened here if need be),
    /// which the checkpoint commits with the rest and the offsets. Written all at the
    /// checkpoint, they held the worker for 8-56 ms every interval at 20,000 events/s
    /// (thousands of records), and every message behind them waited. Only when idle: a
    /// customer that changes again after its record went is written again, and a worker
    /// catching up on a backlog, never idle, would write most customers many times
    /// over (15-20% more CPU per event when it streamed after every batch). The latest
    /// record wins in the compacted changelog, and a failed transaction discards them
    /// all (the partition rewinds). Exactly-once does not stream: its transactions
    /// between state records carry the journal, which a restore replays over the state
    /// records of the last full write. Returns whether records went.
    pub(super) fn stream_state(&mut self, sh: &mut Shared) -> Result<bool, Leave> {
        let interval = Duration::from_millis(sh.cfg.kafka.commit_interval_ms);
        if !self.guarantee.streams_state()
            || self.engine.changed_count() == 0
            || self.last_state.elapsed() < interval / 2
            || self.tx.committing()
            || sh.status.group().is_none()
        {
            return Ok(false);
        }
        let written = self.tx.open().and_then(|()| {
            let out = Changelog {
                producer: self.tx.producer(),
                topic: &sh.cfg.kafka.topics.changelog,
                partition: self.number,
                untracked: &sh.untracked,
            };
            customer_records(&mut self.engine, &mut sh.record, STREAM_CHUNK, &out)
        });
        match written {
            Ok(()) => Ok(true),
            Err(TxnFailure::Abandoned) => Ok(false),
            Err(TxnFailure::Abortable(why)) => self.rewind(sh, false, &why).map(|()| false),
            Err(TxnFailure::Fatal(why)) => Err(Leave::Fatal(why)),
        }
    }

    /// An input went from the brokers' metadata: a commit under way most likely
    /// carries its offset, which the broker refuses as retriable until the call times
    /// out (30 s, the partition standing still). It is given up at once: a new
    /// producer fences the old one's transaction, and the partition rewinds to its
    /// last committed checkpoint without the gone input.
    pub(super) fn give_up_commit_of_gone_input(&mut self, sh: &mut Shared) -> Result<(), Leave> {
        if !self.tx.commit_unfinished() {
            return Ok(());
        }
        // The thread finishes on its own once its producer is fenced.
        self.tx.abandon_commit();
        self.rewind(
            sh,
            true,
            "a commit under way carries the offset of a gone input",
        )
    }

    /// After an abortable error: the transaction is aborted, the state restored from
    /// the changelog (the last committed checkpoint) and the input since then
    /// processed again. `new_producer`: the old one is stuck and must be fenced.
    pub(super) fn rewind(
        &mut self,
        sh: &mut Shared,
        mut new_producer: bool,
        why: &str,
    ) -> Result<(), Leave> {
        let p = self.number;
        // A commit still under way ends first (its outcome does not matter: the restore
        // below reads whatever it committed); one stuck gets its producer replaced.
        let mut beat = || {
            sh.beat();
            true
        };
        if self.tx.end_commit(Instant::now(), &mut beat) {
            new_producer = true;
        }
        CheckpointAborted {
            partition: p,
            why,
            new_producer,
        }
        .emit();
        let producer = if new_producer {
            match KafkaTxn::create(&sh.cfg, p, &sh.status, sh.id, &sh.queue_full) {
                Ok(producer) => Some(producer),
                Err(TxnFailure::Abandoned) => return Err(Leave::Dropped),
                Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                    return Err(Leave::Fatal(why))
                }
            }
        } else {
            None
        };
        // Whatever transaction is open or failed to commit is aborted (an error for
        // "none in progress" is fine); outputs held for the next one are dropped.
        let replay = self.tx.rewind(producer).map_err(Leave::Fatal)?;
        let epoch = self.inputs.values().map(|i| i.epoch).max().unwrap_or(0);
        let r = match sh.restore_partition(p, epoch) {
            Ok(r) => r,
            Err(changelog::RestoreError::Cancelled) => return Err(Leave::Dropped),
            Err(e) => return Err(Leave::Fatal(e.to_string())),
        };
        self.engine = r.engine;
        self.guarantee = GuaranteeState::restored(sh.cfg.kafka.processing.guarantee, r.journal);
        self.state_due = r.state_due;
        if sh.cap_share > 0 {
            self.set_cap(sh.cap_share);
        }
        for (t, i) in self.inputs.iter_mut() {
            let restored = r.inputs.get(t);
            i.next = restored.and_then(|x| x.next);
            i.max_time = restored.map_or(i64::MIN, |x| x.max_time);
            i.progress = Arc::new(Mutex::new(PartitionProgress::default()));
        }
        self.dirty = r.state_due;
        self.evicted = (
            self.engine.stats().evicted_idle,
            self.engine.stats().evicted_cap,
        );
        let now = wall_now();
        let replayed = replay.into_iter().try_for_each(|m| {
            let decoded = decode_input(&sh.cfg, &sh.inputs[m.topic], &m, now);
            self.process(sh, m, decoded, now, Instant::now()).map(drop)
        });
        sh.flush_consumed();
        replayed
    }
}

impl Shared {
    /// Stopping, or failed: a stuck commit is given up rather than fenced.
    fn stopping(&self) -> bool {
        self.status.failed.load(Ordering::SeqCst) || self.status.stopping.load(Ordering::SeqCst)
    }
}

/// Customer records a partition streams into its open transaction at a time (see
/// [`Partition::stream_state`]): about a millisecond of the worker's time.
const STREAM_CHUNK: usize = 256;

/// Where a partition's changelog records go: its open transaction.
struct Changelog<'a> {
    producer: &'a KafkaTxn,
    topic: &'a str,
    partition: i32,
    /// The delivery every state record shares.
    untracked: &'a Arc<Delivery>,
}

impl Changelog<'_> {
    /// Sends one record (`None`: a tombstone).
    fn send(&self, key: &[u8], payload: Option<&[u8]>) -> Result<(), TxnFailure> {
        let out = Out {
            topic: self.topic,
            partition: Some(self.partition),
            key: Some(key),
            payload,
            headers: &[],
        };
        self.producer
            .send_out(out, self.untracked.clone())
            .map_err(|e| TxnFailure::Abortable(e.to_string()))
    }
}

/// Sends the tombstones of the customers the engine forgot, then the records of up to
/// `limit` of those whose state changed (the first to change first). Tombstones go
/// first: a customer forgotten and back since has a record after. The first refused
/// record fails the whole; the engine's lists are taken regardless (the partition
/// rewinds).
fn customer_records(
    engine: &mut crate::engine::Engine,
    record: &mut Vec<u8>,
    limit: usize,
    out: &Changelog<'_>,
) -> Result<(), TxnFailure> {
    let (mut tombstones, mut customers) = (0u64, 0u64);
    let mut failed = None;
    let mut evicted: Vec<String> = Vec::new();
    engine.take_evicted(|c| evicted.push(c.to_owned()));
    for c in &evicted {
        tombstones += 1;
        if let Err(e) = out.send(c.as_bytes(), None) {
            failed.get_or_insert(e);
        }
    }
    engine.take_changed_up_to(limit, |c, state| {
        customers += 1;
        record.clear();
        state.encode(record);
        if let Err(e) = out.send(c.as_bytes(), Some(record)) {
            failed.get_or_insert(e);
        }
    });
    record.clear();
    telemetry::state_records("customer", customers);
    telemetry::state_records("tombstone", tombstones);
    failed.map_or(Ok(()), Err)
}
