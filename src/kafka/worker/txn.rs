//! A partition's transaction lifecycle as an explicit state machine, apart from Kafka.
//!
//! Every partition checkpoints through its own transactional producer (state records
//! and input offsets; exactly-once also its alerts and dead letters). The decisions
//! around that producer used to be flags spread over the worker (`open`, `committing`,
//! `needs_rewind`, `checkpoint_due`, held records); at least five fixes touched them.
//! They are made here, in one place, against a small [`TxnProducer`] trait: the worker
//! runs it over librdkafka (`KafkaTxn`), the model-based test below over a
//! fake with a model of the broker.
//!
//! ```text
//!            output / checkpoint: begin          commit (offsets + records)
//!   Idle ─────────────────────────────────▶ Open ──────────────────────────▶ Committing
//!    ▲  ▲                                     │                                  │
//!    │  └──────────── committed ──────────────┼──────────────────────────────────┤
//!    │                                        │ begin/record refused (abortable) │ aborted / stuck
//!    │                                        ▼                                  ▼
//!    └──────────── rewound (aborted, restored, input processed again) ────── Broken
//! ```
//!
//! The rules, each one a past defect:
//! - An output made while a commit runs (or while the partition must rewind) is held
//!   for the next transaction; making an output never settles a commit, so a rewind
//!   never happens in the middle of a message (e7df568). [`Transactions::output`] has
//!   no way to ask for one.
//! - A due checkpoint never waits for the previous commit: the interval is a minimum
//!   (dfcd68a). [`Transactions::take_due`] says no while a commit runs.
//! - A commit running longer than [`COMMIT_STUCK`] is given up at the next step
//!   between messages, also when nothing blocks on it (566a0af): the producer is
//!   replaced (the new one fences the stuck one) and the partition rewinds (5c2f506);
//!   while stopping it is given up without a new producer, which would fence the next
//!   owner (89e91bb).

use std::time::{Duration, Instant};

/// A commit that has not finished after this long is given up (its calls have 30 s
/// timeouts; librdkafka's send_offsets_to_transaction was seen to ignore its own across
/// a coordinator outage): the partition gets a new producer and rewinds.
pub(super) const COMMIT_STUCK: Duration = Duration::from_secs(45);

/// Input messages a partition keeps for a rewind (those since its last committed
/// checkpoint) before it checkpoints early: at most two such runs are held (one
/// committing, one filling), tens of megabytes.
pub(super) const REPLAY_LIMIT: usize = 100_000;

/// A transactional call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnFailure {
    /// The transaction must be aborted (and the partition rewound).
    Abortable(String),
    /// The producer is unusable (fenced: another instance owns the partition).
    Fatal(String),
    /// Shutdown gave up waiting.
    Abandoned,
}

/// What the lifecycle needs of a partition's transactional producer.
pub(super) trait TxnProducer {
    /// An output (alert or dead letter) as sent in a transaction.
    type Record;
    /// A commit running on its own (offsets sent, records delivered, committed).
    type Commit: Commit;
    /// Opens a transaction.
    fn begin(&self) -> Result<(), TxnFailure>;
    /// Sends an output into the open transaction; an error fails the transaction.
    fn send(&self, record: Self::Record) -> Result<(), String>;
    /// Sends the input offsets (topic, next offset) and commits, without waiting.
    fn commit(&self, offsets: Vec<(String, i64)>) -> Result<Self::Commit, TxnFailure>;
    /// Aborts whatever transaction is open or failed (none open is fine). `patient`:
    /// retried by class as every transactional call; otherwise one short try whose
    /// outcome does not matter (a partition leaving).
    fn abort(&self, patient: bool) -> Result<(), TxnFailure>;
}

/// A commit running on its own.
pub(super) trait Commit: Sized {
    /// It has an outcome.
    fn is_finished(&self) -> bool;
    /// Waits at most `limit` for the outcome, calling `keep_waiting` meanwhile (false:
    /// stop waiting); returns the commit itself if it has not finished.
    fn wait(
        self,
        limit: Duration,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Result<(), TxnFailure>, Self>;
}

/// Where a partition's transaction stands.
pub(super) enum Phase<C> {
    /// No transaction open.
    Idle,
    /// A transaction is open and records go into it.
    Open,
    /// A checkpoint's commit runs (started at `since`); outputs wait for the next one.
    Committing { since: Instant, commit: C },
    /// A transaction failed outside a checkpoint: the partition rewinds between two
    /// messages; outputs made meanwhile are dropped then (they are made again).
    Broken,
}

/// What settling a commit asks of the partition.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled<R> {
    /// No commit, or it still runs.
    Nothing,
    /// Committed: the outputs held meanwhile go out, in the next transaction.
    Committed(Vec<R>),
    /// Abort and rewind: state restored from the last commit, its input processed
    /// again. `new_producer`: the old one is stuck and must be fenced.
    Rewind { new_producer: bool, why: String },
    /// Stopping with a commit stuck: the partition is dropped as it is (a new producer
    /// would fence the next owner); the next owner restores the last commit.
    GiveUp,
    /// The producer is unusable: the service stops.
    Fatal(String),
}

/// A partition's transactions: the producer, the phase, the outputs held for the next
/// transaction, and the input kept for a rewind (`M`: one consumed message).
pub(super) struct Transactions<P: TxnProducer, M> {
    producer: P,
    phase: Phase<P::Commit>,
    held: Vec<P::Record>,
    /// Input processed since the last commit started.
    replay: Vec<M>,
    /// The input the running commit covers, kept until it has committed.
    replay_committing: Vec<M>,
    /// The checkpoint interval passed: checkpoint once no commit runs.
    due: bool,
}

impl<P: TxnProducer, M> Transactions<P, M> {
    /// A partition's transactions, none open.
    pub fn new(producer: P) -> Self {
        Transactions {
            producer,
            phase: Phase::Idle,
            held: Vec::new(),
            replay: Vec::new(),
            replay_committing: Vec::new(),
            due: false,
        }
    }

    /// The phase.
    #[cfg(test)]
    pub fn phase(&self) -> &Phase<P::Commit> {
        &self.phase
    }

    /// A transaction is open (a checkpoint must finish it even when nothing changed).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// A commit runs, or the transaction failed: [`Self::settle`] and [`Self::step`]
    /// have something to do.
    pub fn unsettled(&self) -> bool {
        matches!(self.phase, Phase::Committing { .. } | Phase::Broken)
    }

    /// A commit runs.
    pub fn committing(&self) -> bool {
        matches!(self.phase, Phase::Committing { .. })
    }

    /// An exactly-once output: into the open transaction (one is begun when none is),
    /// or held while a commit runs or the partition must rewind. Never settles a
    /// commit: a rewind happens only between messages. `Err`: the producer is
    /// unusable (fatal).
    pub fn output(&mut self, record: P::Record) -> Result<(), String> {
        match self.phase {
            Phase::Committing { .. } | Phase::Broken => {
                self.held.push(record);
                return Ok(());
            }
            Phase::Idle => match self.producer.begin() {
                Ok(()) => self.phase = Phase::Open,
                Err(TxnFailure::Fatal(why)) => return Err(why),
                Err(TxnFailure::Abortable(why)) => {
                    tracing::warn!(error = %why, "cannot begin a transaction; rewinding");
                    self.phase = Phase::Broken;
                    return Ok(());
                }
                Err(TxnFailure::Abandoned) => return Ok(()),
            },
            Phase::Open => {}
        }
        if let Err(why) = self.producer.send(record) {
            tracing::warn!(error = %why, "a transaction refused a record; rewinding the partition");
            self.phase = Phase::Broken;
        }
        Ok(())
    }

    /// Opens a transaction for a checkpoint's records (after [`Self::settle`] with
    /// `block`: no commit runs then).
    pub fn open(&mut self) -> Result<(), TxnFailure> {
        match self.phase {
            Phase::Open => Ok(()),
            Phase::Idle => {
                self.producer.begin()?;
                self.phase = Phase::Open;
                Ok(())
            }
            Phase::Broken => Err(TxnFailure::Abortable(
                "the transaction failed earlier".into(),
            )),
            Phase::Committing { .. } => Err(TxnFailure::Abortable("a commit still runs".into())),
        }
    }

    /// The open transaction's producer, for the checkpoint's own records.
    pub fn producer(&self) -> &P {
        &self.producer
    }

    /// Commits the open transaction with these input offsets, without waiting; the
    /// input processed since the last commit is kept until it has committed.
    pub fn commit(&mut self, offsets: Vec<(String, i64)>, now: Instant) -> Result<(), TxnFailure> {
        if !self.is_open() {
            return Err(TxnFailure::Abortable("no transaction open".into()));
        }
        let commit = self.producer.commit(offsets)?;
        // The vectors swap, so that both keep their capacity (refilled from empty each
        // interval, they were a page-zeroing cost in profiles).
        self.replay_committing.clear();
        std::mem::swap(&mut self.replay_committing, &mut self.replay);
        self.phase = Phase::Committing { since: now, commit };
        Ok(())
    }

    /// Takes the running commit's outcome if it has one, or waits for it with `block`
    /// (until it has run for [`COMMIT_STUCK`]). Not waited for without `block`, unless
    /// it has been stuck that long: then it is given up also when nothing blocks on it.
    pub fn settle(
        &mut self,
        now: Instant,
        block: bool,
        stopping: bool,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Settled<P::Record> {
        let (since, commit) = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Committing { since, commit } => (since, commit),
            other => {
                self.phase = other;
                return Settled::Nothing;
            }
        };
        let age = now.saturating_duration_since(since);
        if !block && !commit.is_finished() && age < COMMIT_STUCK {
            self.phase = Phase::Committing { since, commit };
            return Settled::Nothing;
        }
        match commit.wait(COMMIT_STUCK.saturating_sub(age), keep_waiting) {
            Ok(Ok(())) => {
                self.replay_committing.clear();
                Settled::Committed(std::mem::take(&mut self.held))
            }
            Ok(Err(TxnFailure::Abandoned)) => Settled::Nothing,
            Ok(Err(TxnFailure::Abortable(why))) => {
                self.phase = Phase::Broken;
                Settled::Rewind {
                    new_producer: false,
                    why,
                }
            }
            Ok(Err(TxnFailure::Fatal(why))) => Settled::Fatal(why),
            Err(_stuck) if stopping => Settled::GiveUp,
            Err(_stuck) => {
                self.phase = Phase::Broken;
                Settled::Rewind {
                    new_producer: true,
                    why: format!(
                        "a checkpoint did not finish in {} s",
                        COMMIT_STUCK.as_secs()
                    ),
                }
            }
        }
    }

    /// Between two messages: a finished (or stuck) commit is settled, and a partition
    /// whose transaction failed rewinds.
    pub fn step(
        &mut self,
        now: Instant,
        stopping: bool,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Settled<P::Record> {
        match self.settle(now, false, stopping, keep_waiting) {
            Settled::Nothing if matches!(self.phase, Phase::Broken) => Settled::Rewind {
                new_producer: false,
                why: "the transaction failed".into(),
            },
            s => s,
        }
    }

    /// The checkpoint interval has passed.
    pub fn set_due(&mut self) {
        self.due = true;
    }

    /// A checkpoint is due and may start now: no commit runs (a due checkpoint never
    /// waits for the previous one; when commits take longer than the interval,
    /// processing goes on and the next transaction carries more).
    pub fn take_due(&mut self) -> bool {
        if self.due && !self.committing() {
            self.due = false;
            return true;
        }
        false
    }

    /// Keeps one processed input message for a rewind; true when the partition keeps
    /// [`REPLAY_LIMIT`] and should checkpoint early.
    pub fn keep(&mut self, m: M) -> bool {
        self.replay.push(m);
        self.replay.len() >= REPLAY_LIMIT
    }

    /// A commit runs that has not finished.
    pub fn commit_unfinished(&self) -> bool {
        matches!(&self.phase, Phase::Committing { commit, .. } if !commit.is_finished())
    }

    /// A commit under way is abandoned as it is (its producer is about to be fenced).
    pub fn abandon_commit(&mut self) {
        if self.committing() {
            self.phase = Phase::Broken;
        }
    }

    /// Before a rewind: a commit still running ends first (its outcome does not matter:
    /// the restore reads whatever it committed); true if it did not end within what is
    /// left of [`COMMIT_STUCK`] and the producer must be replaced.
    pub fn end_commit(&mut self, now: Instant, keep_waiting: &mut dyn FnMut() -> bool) -> bool {
        let (since, commit) = match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Committing { since, commit } => (since, commit),
            other => {
                self.phase = other;
                return false;
            }
        };
        let left = COMMIT_STUCK.saturating_sub(now.saturating_duration_since(since));
        commit.wait(left, keep_waiting).is_err()
    }

    /// Rewinds: the producer replaced when given, whatever transaction is open or failed
    /// aborted, the held outputs dropped (the restored engine makes them again); returns
    /// the input since the last commit, to be processed again. `Err`: fatal.
    pub fn rewind(&mut self, producer: Option<P>) -> Result<Vec<M>, String> {
        if let Some(p) = producer {
            self.producer = p;
        }
        match self.producer.abort(true) {
            Err(TxnFailure::Fatal(why)) => return Err(why),
            Ok(()) | Err(TxnFailure::Abortable(_)) | Err(TxnFailure::Abandoned) => {}
        }
        self.phase = Phase::Idle;
        self.held.clear();
        let mut replay = std::mem::take(&mut self.replay_committing);
        replay.append(&mut self.replay);
        Ok(replay)
    }

    /// The partition leaves: a running commit gets until [`COMMIT_STUCK`], an open
    /// transaction (nothing worth keeping: a failed checkpoint) is aborted.
    pub fn close(mut self, keep_waiting: &mut dyn FnMut() -> bool) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Committing { commit, .. } => {
                let _ = commit.wait(COMMIT_STUCK, keep_waiting);
            }
            Phase::Open | Phase::Broken => {
                let _ = self.producer.abort(false);
            }
            Phase::Idle => {}
        }
    }
}

#[cfg(test)]
mod model;
