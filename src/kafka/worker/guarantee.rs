//! The delivery guarantee as a partition keeps it: each guarantee's own state, so a
//! partition cannot hold the other one's.
//!
//! Both guarantees checkpoint through the partition's transaction (state records and
//! input offsets, see [`super::txn`]); they differ in where outputs go and in what a
//! checkpoint must know before it commits:
//! - **at-least-once** sends alerts and dead letters at once through the shared
//!   producer and counts those not acknowledged yet: a checkpoint waits until none is,
//!   so the offsets it commits never run ahead of an output (first putting itself off
//!   while the worker has messages to process, see [`GuaranteeState::put_off`]);
//! - **exactly-once** sends them in the transaction (held there while a commit runs)
//!   and journals the input since the last state records (see
//!   [`crate::kafka::journal`]), which a restore replays.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Guarantee;
use crate::kafka::journal::{Base, Journal};
use crate::kafka::offsets::PartitionProgress;

/// A partition's guarantee and its state.
pub(super) enum GuaranteeState {
    /// At-least-once.
    AtLeastOnce {
        /// Outputs sent and not acknowledged yet.
        pending: Arc<AtomicI64>,
        /// Restored from an exactly-once journal (the guarantee was changed): the first
        /// state records make it stale, and its tombstone keeps later restores from
        /// reading it.
        stale_journal: bool,
        /// Since when a due checkpoint has been put off for outputs in flight.
        put_off_since: Option<Instant>,
    },
    /// Exactly-once.
    ExactlyOnce {
        /// The input since the last state records.
        journal: Journal,
    },
}

impl GuaranteeState {
    /// The state of `kind` for a partition restored with `journal` (empty: none).
    pub(super) fn restored(kind: Guarantee, journal: Journal) -> GuaranteeState {
        match kind {
            Guarantee::ExactlyOnce => GuaranteeState::ExactlyOnce { journal },
            Guarantee::AtLeastOnce => GuaranteeState::AtLeastOnce {
                pending: Arc::new(AtomicI64::new(0)),
                stale_journal: !journal.base.is_empty(),
                put_off_since: None,
            },
        }
    }

    /// Exactly-once: the journal.
    pub(super) fn journal(&self) -> Option<&Journal> {
        match self {
            GuaranteeState::ExactlyOnce { journal } => Some(journal),
            GuaranteeState::AtLeastOnce { .. } => None,
        }
    }

    /// Exactly-once journals one applied input message: the `position`-th input's
    /// `offset`, decoded against wall-clock `now` (ms).
    pub(super) fn journal_message(
        &mut self,
        position: impl FnOnce() -> usize,
        offset: i64,
        now: i64,
    ) {
        if let GuaranteeState::ExactlyOnce { journal } = self {
            journal.message(position(), offset, 0, now);
        }
    }

    /// Exactly-once journals stream time advanced by the wall clock to `target` (ms).
    pub(super) fn journal_advance(&mut self, target: i64) {
        if let GuaranteeState::ExactlyOnce { journal } = self {
            journal.advance(target);
        }
    }

    /// Exactly-once journals a new customer cap (a replay must evict as it did).
    pub(super) fn journal_cap(&mut self, n: u64) {
        if let GuaranteeState::ExactlyOnce { journal } = self {
            journal.cap(n);
        }
    }

    /// At-least-once: one more output to be acknowledged; returns its counter, which
    /// the acknowledgement decrements.
    pub(super) fn output_sent(&self) -> Option<Arc<AtomicI64>> {
        match self {
            GuaranteeState::AtLeastOnce { pending, .. } => {
                pending.fetch_add(1, Ordering::AcqRel);
                Some(pending.clone())
            }
            GuaranteeState::ExactlyOnce { .. } => None,
        }
    }

    /// At-least-once: the input message at `offset` of the input tracked by `progress`
    /// was processed into `outputs` outputs; its offset becomes committable once they
    /// are acknowledged. Returns the tracker their deliveries report to. Exactly-once
    /// tracks nothing: its outputs commit with the offsets.
    pub(super) fn processed(
        &self,
        progress: &Arc<Mutex<PartitionProgress>>,
        offset: i64,
        outputs: u32,
    ) -> Option<Arc<Mutex<PartitionProgress>>> {
        match self {
            GuaranteeState::AtLeastOnce { .. } => {
                let tracked = progress
                    .lock()
                    .expect("progress lock")
                    .processed(offset, outputs);
                if let Err(e) = tracked {
                    tracing::error!(error = %e, "offset tracking");
                }
                Some(progress.clone())
            }
            GuaranteeState::ExactlyOnce { .. } => None,
        }
    }

    /// Before a checkpoint commits offsets. At-least-once waits until every output sent
    /// is acknowledged, so the offsets never run ahead of one, calling `keep_waiting`
    /// meanwhile (false: give up), then asks `delivered` whether they all were (an
    /// output refused for good stops the service). Exactly-once has nothing to wait
    /// for: its outputs commit with the offsets. False: the checkpoint must not commit.
    pub(super) fn acknowledged(
        &self,
        mut keep_waiting: impl FnMut() -> bool,
        delivered: impl FnOnce() -> bool,
    ) -> bool {
        let GuaranteeState::AtLeastOnce { pending, .. } = self else {
            return true;
        };
        while pending.load(Ordering::Acquire) > 0 {
            if !keep_waiting() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        delivered()
    }

    /// At-least-once: whether a checkpoint due at `now` is put off (tried again after the
    /// worker's next batch) because outputs are in flight, instead of sleeping until
    /// they are acknowledged while messages queue behind it: for at most `patience`
    /// in a row, and never when `force`d (a revocation, the drain at shutdown). A broker
    /// slow to acknowledge held workers for 0.2-0.3 s this way in `bench kafka`.
    /// Exactly-once has nothing to wait for.
    pub(super) fn put_off(&mut self, now: Instant, patience: Duration, force: bool) -> bool {
        let GuaranteeState::AtLeastOnce {
            pending,
            put_off_since,
            ..
        } = self
        else {
            return false;
        };
        if force || pending.load(Ordering::Acquire) <= 0 {
            *put_off_since = None;
            return false;
        }
        let since = *put_off_since.get_or_insert(now);
        if now.saturating_duration_since(since) < patience {
            return true;
        }
        *put_off_since = None;
        false
    }

    /// Whether a checkpoint's customer records may go out ahead of it, in its
    /// transaction (see `Partition::stream_state`): at-least-once only, as exactly-once's
    /// transactions between state records carry the journal a restore replays over the
    /// last full state.
    pub(super) fn streams_state(&self) -> bool {
        matches!(self, GuaranteeState::AtLeastOnce { .. })
    }

    /// State records were written, reflecting the inputs at `base`: exactly-once starts
    /// a new journal from them (journaling the engine's customer `cap`); returns true
    /// when at-least-once must tombstone the stale journal it was restored with.
    pub(super) fn state_written(&mut self, base: impl FnOnce() -> Vec<Base>, cap: u64) -> bool {
        match self {
            GuaranteeState::ExactlyOnce { journal } => {
                *journal = Journal::new(base());
                journal.cap(cap);
                false
            }
            GuaranteeState::AtLeastOnce { stale_journal, .. } => std::mem::take(stale_journal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_guarantee_keeps_only_its_own_state() {
        let base = || {
            vec![Base {
                name: "orders".into(),
                next: Some(3),
                max_time: 0,
            }]
        };
        let mut eos = GuaranteeState::restored(Guarantee::ExactlyOnce, Journal::new(base()));
        eos.journal_message(|| 0, 3, 1_000);
        assert_eq!(eos.journal().map(|j| j.messages), Some(1));
        assert!(
            eos.output_sent().is_none(),
            "exactly-once outputs commit with the offsets"
        );
        assert!(!eos.state_written(base, 10));
        assert_eq!(
            eos.journal().map(|j| j.messages),
            Some(0),
            "a new journal starts at the state records"
        );

        let mut alo = GuaranteeState::restored(Guarantee::AtLeastOnce, Journal::new(base()));
        alo.journal_message(|| 0, 3, 1_000);
        assert!(alo.journal().is_none(), "at-least-once journals nothing");
        let pending = alo.output_sent().expect("at-least-once counts its outputs");
        let mut waited = 0;
        let gave_up = !alo.acknowledged(
            || {
                waited += 1;
                waited < 3
            },
            || true,
        );
        assert!(
            gave_up,
            "a checkpoint does not commit past an unacknowledged output"
        );
        assert_eq!(waited, 3);
        pending.fetch_sub(1, Ordering::AcqRel);
        assert!(alo.acknowledged(|| false, || true));
        assert!(
            !alo.acknowledged(|| true, || false),
            "an output refused for good"
        );
        assert!(eos.acknowledged(|| unreachable!(), || unreachable!()));
        assert!(
            alo.state_written(base, 10),
            "the exactly-once journal it was restored with is stale"
        );
        assert!(!alo.state_written(base, 10), "and tombstoned once");

        let mut fresh = GuaranteeState::restored(Guarantee::AtLeastOnce, Journal::default());
        assert!(matches!(
            fresh,
            GuaranteeState::AtLeastOnce {
                stale_journal: false,
                ..
            }
        ));

        // A checkpoint is put off while outputs are in flight, for at most the
        // patience in a row; never when forced, nor without outputs in flight.
        let (t0, patience) = (Instant::now(), Duration::from_millis(1000));
        let later = |ms| t0 + Duration::from_millis(ms);
        assert!(!fresh.put_off(t0, patience, false), "nothing in flight");
        let GuaranteeState::AtLeastOnce { pending, .. } = &fresh else {
            unreachable!()
        };
        let pending = pending.clone();
        pending.store(2, Ordering::Release);
        assert!(fresh.put_off(t0, patience, false));
        assert!(fresh.put_off(later(999), patience, false));
        assert!(
            !fresh.put_off(later(1000), patience, false),
            "patience ran out"
        );
        assert!(
            fresh.put_off(later(1001), patience, false),
            "counted afresh"
        );
        assert!(!fresh.put_off(later(1002), patience, true), "forced");
        pending.store(0, Ordering::Release);
        assert!(!fresh.put_off(later(1003), patience, false));
        let mut eos = GuaranteeState::restored(Guarantee::ExactlyOnce, Journal::default());
        assert!(
            !eos.put_off(t0, patience, false),
            "exactly-once waits for nothing"
        );
    }
}
