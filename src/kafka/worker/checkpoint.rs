//! Checkpoints: the changed state records, the partition record, the journal and the
//! input offsets in one transaction; what settling its commit asks (see [`super::txn`]);
//! a rewind after an abortable failure.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::partition::decode_input;
use super::transactional::{KafkaTxn, Output};
use super::txn::{Settled, TxnFailure};
use super::Worker;
use crate::kafka::changelog::{self, encode_partition_record, ENGINE_KEY};
use crate::kafka::journal::{Journal, JOURNAL_KEY};
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::producer::{wall_now, Out};
use crate::kafka::status::Failure;
use crate::telemetry;
use crate::telemetry::events::{CheckpointAborted, Emit};

impl Worker {
    /// Takes the result of partition `p`'s running commit if it has one (or waits for
    /// it with `block`), and does what it asks (see [`Transactions::settle`]).
    pub(super) fn settle(&mut self, p: i32, block: bool) {
        let stopping = self.stopping();
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        if !pe.tx.unsettled() {
            // No commit runs and the transaction has not failed: nothing to settle (the
            // worker's loop asks for every partition after every batch).
            return;
        }
        let (status, id) = (self.status.clone(), self.id);
        // Shutdown past its deadline for sends gives up waiting (the commit's input is
        // processed again by the next owner).
        let mut keep_waiting = || {
            status.beat(1 + id);
            !status.abandon_sends()
        };
        let settled = if block {
            pe.tx
                .settle(Instant::now(), true, stopping, &mut keep_waiting)
        } else {
            pe.tx.step(Instant::now(), stopping, &mut keep_waiting)
        };
        self.on_settled(p, settled);
    }

    /// Stopping, or failed: a stuck commit is given up rather than fenced.
    fn stopping(&self) -> bool {
        self.status.failed.load(Ordering::SeqCst) || self.status.stopping.load(Ordering::SeqCst)
    }

    /// Does what settling a commit asks.
    fn on_settled(&mut self, p: i32, settled: Settled<Output>) {
        match settled {
            Settled::Nothing => {}
            Settled::Committed(held) => {
                telemetry::checkpoint(true);
                telemetry::commit(true);
                self.status.commits.fetch_add(1, Ordering::Relaxed);
                for (rec, dead, d) in held {
                    self.emit(p, rec, d, dead);
                }
            }
            Settled::Rewind {
                new_producer: true,
                why,
            } => {
                // librdkafka's send_offsets_to_transaction has been seen to wait forever
                // across a coordinator outage: the producer is replaced (the new one
                // fences it and aborts its transaction) and the partition rewound.
                self.rewind_with(p, true, &why);
            }
            Settled::Rewind { why, .. } => self.rewind(p, &why),
            Settled::GiveUp => {
                // Stopping (perhaps fenced): a new producer would fence the next owner.
                tracing::error!(partition = p, "a checkpoint did not finish; given up");
                if let Some(pe) = self.engines.remove(&p) {
                    telemetry::partition_gone(p);
                    drop(pe);
                }
            }
            Settled::Fatal(why) => self.fatal(p, why),
        }
    }

    /// Checkpoints partition `p` if anything changed; handles failures by class.
    pub(super) fn checkpoint(&mut self, p: i32, wait: bool) {
        match self.try_checkpoint(p) {
            Ok(()) => {
                if wait {
                    self.settle(p, true);
                }
            }
            Err(TxnFailure::Abandoned) => {}
            Err(TxnFailure::Abortable(why)) => self.rewind(p, &why),
            Err(TxnFailure::Fatal(why)) => self.fatal(p, why),
        }
    }

    pub(super) fn fatal(&mut self, p: i32, why: String) {
        self.full.clear_partition(p);
        if let Some(pe) = self.engines.remove(&p) {
            telemetry::partition_gone(p);
            drop(pe);
        }
        self.status.fail(Failure::Fenced { partition: p, why });
    }

    pub(super) fn try_checkpoint(&mut self, p: i32) -> Result<(), TxnFailure> {
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
        if !(pe.dirty || pe.tx.is_open() || eos && journal_old) {
            return Ok(());
        }
        if self.status.group().is_none() {
            return Ok(());
        }
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
        let pe = self.engines.get_mut(&p).expect("present");
        pe.tx.open()?;
        // Exactly-once writes the state records every commit interval, as at-least-once
        // does, and its journal in the transactions between (see `crate::kafka::journal`).
        let state = !eos
            || pe.state_due
            || pe.journal.full()
            || pe.last_state.elapsed() >= state_every
            || !pe.journal_matches(&self.inputs);
        let topic = self.cfg.kafka.topics.changelog.clone();
        let producer = pe.tx.producer();
        let (mut tombstones, mut customers) = (0u64, 0u64);
        let mut failed = None;
        if state {
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
                if let Err(e) = producer.send_out(out, d) {
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
            producer
                .send_out(
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
        let offsets: Vec<(String, i64)> = pe
            .inputs
            .iter()
            .filter(|(_, i)| !i.gone)
            .filter_map(|(t, i)| Some((self.inputs[*t].name.clone(), i.next?)))
            .collect();
        pe.dirty = false;
        pe.tx.commit(offsets, Instant::now())
    }

    /// An input of partition `p` went from the brokers' metadata: a commit under way
    /// most likely carries its offset, which the broker refuses as retriable until the
    /// call times out (30 s, the partition standing still). It is given up at once: a
    /// new producer fences the old one's transaction, and the partition rewinds to its
    /// last committed checkpoint without the gone input.
    pub(super) fn give_up_commit_of_gone_input(&mut self, p: i32) {
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        if pe.tx.commit_unfinished() {
            // The thread finishes on its own once its producer is fenced.
            pe.tx.abandon_commit();
            self.rewind_with(
                p,
                true,
                "a commit under way carries the offset of a gone input",
            );
        }
    }

    /// After an abortable error: the transaction is aborted, the state restored from
    /// the changelog (the last committed checkpoint) and the input since then
    /// processed again.
    pub(super) fn rewind(&mut self, p: i32, why: &str) {
        self.rewind_with(p, false, why);
    }

    /// [`Worker::rewind`], with a new producer when the old one is stuck.
    pub(super) fn rewind_with(&mut self, p: i32, mut new_producer: bool, why: &str) {
        let Some(mut pe) = self.engines.remove(&p) else {
            return;
        };
        // A commit still under way ends first (its outcome does not matter: the restore
        // below reads whatever it committed); one stuck gets its producer replaced.
        let (status, id) = (self.status.clone(), self.id);
        let mut beat = || {
            status.beat(1 + id);
            true
        };
        if pe.tx.end_commit(Instant::now(), &mut beat) {
            new_producer = true;
        }
        CheckpointAborted {
            partition: p,
            why,
            new_producer,
        }
        .emit();
        let producer = if new_producer {
            match KafkaTxn::create(&self.cfg, p, &self.status, self.id, &self.queue_full) {
                Ok(producer) => Some(producer),
                Err(TxnFailure::Abandoned) => return,
                Err(TxnFailure::Abortable(why)) | Err(TxnFailure::Fatal(why)) => {
                    return self.fatal(p, why)
                }
            }
        } else {
            None
        };
        // Whatever transaction is open or failed to commit is aborted (an error for
        // "none in progress" is fine); outputs held for the next one are dropped.
        let replay = match pe.tx.rewind(producer) {
            Ok(replay) => replay,
            Err(why) => return self.fatal(p, why),
        };
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
}
