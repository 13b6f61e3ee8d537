//! Model-based test of the transaction lifecycle: random sequences of what a worker
//! does and what the broker answers (messages with outputs, steps between messages,
//! due checkpoints, drains, time passing, commits that succeed, abort, fail fatally or
//! hang, refused records and begins, a shutdown) run a partition's [`Transactions`]
//! over a fake producer against a model of the broker. After every operation:
//!
//! 1. exactly once: the visible outputs are those of the committed input offsets, each
//!    once (so no offset is committed past an output that is not committed with it);
//! 2. no output of a replaced engine leaves (each output carries the engine generation
//!    that made it; a rewind starts a new one);
//! 3. a rewind restores the whole input since the last commit (the partition's position
//!    is where it was), and happens only between messages (outputs cannot ask for one);
//! 4. processing never waits for a commit: only a drain (revoke, shutdown) blocks;
//! 5. a commit running past the watchdog does not survive a step between messages;
//! 6. no new producer once stopping (it would fence the next owner);
//! 7. no call on a producer whose commit hangs (librdkafka would never answer it): it
//!    is replaced.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Commit, Phase, Settled, Transactions, TxnFailure, TxnProducer, COMMIT_STUCK};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Abortable,
    Fatal,
    Hangs,
}

#[derive(Debug, Clone)]
enum Op {
    /// One input message is processed (its outputs: offset % 3, the same every time).
    Message,
    /// The worker's loop between messages.
    Step,
    /// The checkpoint interval passed.
    Due,
    /// A revoke or shutdown: checkpoint and wait for the commit.
    Drain,
    /// Milliseconds pass.
    Elapse(u64),
    /// The next commit ends so, after so many ms.
    NextCommit(Outcome, u64),
    /// The next output sent is refused (its transaction fails).
    RefuseSend,
    /// The next begin fails abortably.
    RefuseBegin,
    /// Shutdown starts.
    Stop,
}

/// An output: the input offset that made it, its index, the engine generation.
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    offset: i64,
    idx: u32,
    generation: u32,
}

/// The broker, and what the test watches.
struct World {
    now: Cell<Instant>,
    /// Records of the open transaction.
    open: RefCell<Vec<Rec>>,
    /// Committed outputs, in order.
    visible: RefCell<Vec<Rec>>,
    /// The committed input offset (the next one to read).
    committed: Cell<i64>,
    /// The newest producer epoch; older ones are fenced.
    epoch: Cell<u32>,
    /// The partition engine's generation (a rewind starts a new one).
    generation: Cell<u32>,
    next_commit: Cell<(Outcome, u64)>,
    refuse_send: Cell<bool>,
    refuse_begin: Cell<bool>,
    /// The epoch of a producer whose commit hangs: librdkafka serves none of its
    /// calls any more.
    hung: Cell<Option<u32>>,
    /// A drain runs: waiting for a commit is allowed.
    may_block: Cell<bool>,
    stopping: Cell<bool>,
    violations: RefCell<Vec<String>>,
}

impl World {
    fn violation(&self, v: String) {
        self.violations.borrow_mut().push(v);
    }
}

struct Fake {
    world: Rc<World>,
    epoch: u32,
}

impl Fake {
    fn fenced(&self) -> bool {
        self.epoch < self.world.epoch.get()
    }

    /// A call on this producer.
    fn call(&self, what: &str) {
        if self.world.hung.get() == Some(self.epoch) {
            self.world.violation(format!(
                "{what} on a producer whose commit hangs (it never returns)"
            ));
        }
    }
}

struct FakeCommit {
    world: Rc<World>,
    epoch: u32,
    outcome: Outcome,
    done_at: Instant,
    records: Vec<Rec>,
    offset: i64,
}

impl FakeCommit {
    fn finished_by(&self, t: Instant) -> bool {
        self.outcome != Outcome::Hangs && t >= self.done_at
    }

    fn finish(self) -> Result<(), TxnFailure> {
        let w = &self.world;
        if self.epoch < w.epoch.get() {
            return Err(TxnFailure::Fatal("fenced".into()));
        }
        match self.outcome {
            Outcome::Ok => {
                w.visible.borrow_mut().extend(self.records);
                w.committed.set(self.offset);
                Ok(())
            }
            Outcome::Abortable => Err(TxnFailure::Abortable("commit refused".into())),
            Outcome::Fatal => Err(TxnFailure::Fatal("fenced".into())),
            Outcome::Hangs => unreachable!("a hanging commit never finishes"),
        }
    }
}

impl Commit for FakeCommit {
    fn is_finished(&self) -> bool {
        self.finished_by(self.world.now.get())
    }

    fn wait(
        self,
        limit: Duration,
        _keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Result<(), TxnFailure>, Self> {
        let w = self.world.clone();
        let now = w.now.get();
        if !self.is_finished() && !limit.is_zero() && !w.may_block.get() {
            w.violation(format!(
                "processing waited up to {limit:?} for a commit (only a drain may)"
            ));
        }
        if self.finished_by(now + limit) {
            w.now.set(self.done_at.max(now));
            Ok(self.finish())
        } else {
            w.now.set(now + limit);
            Err(self)
        }
    }
}

impl TxnProducer for Fake {
    type Record = Rec;
    type Commit = FakeCommit;

    fn begin(&self) -> Result<(), TxnFailure> {
        self.call("begin");
        if self.fenced() {
            return Err(TxnFailure::Fatal("fenced".into()));
        }
        if self.world.refuse_begin.take() {
            return Err(TxnFailure::Abortable("begin refused".into()));
        }
        self.world.open.borrow_mut().clear();
        Ok(())
    }

    fn send(&self, record: Rec) -> Result<(), String> {
        let w = &self.world;
        self.call("send");
        if record.generation != w.generation.get() {
            w.violation(format!("an output of a replaced engine left: {record:?}"));
        }
        if self.fenced() || w.refuse_send.take() {
            return Err("refused".into());
        }
        w.open.borrow_mut().push(record);
        Ok(())
    }

    fn commit(&self, offsets: Vec<(String, i64)>) -> Result<FakeCommit, TxnFailure> {
        let w = &self.world;
        self.call("commit");
        let (outcome, ms) = w.next_commit.replace((Outcome::Ok, 0));
        if outcome == Outcome::Hangs {
            w.hung.set(Some(self.epoch));
        }
        Ok(FakeCommit {
            world: w.clone(),
            epoch: self.epoch,
            outcome,
            done_at: w.now.get() + Duration::from_millis(ms),
            records: std::mem::take(&mut *w.open.borrow_mut()),
            offset: offsets[0].1,
        })
    }

    fn abort(&self, _patient: bool) -> Result<(), TxnFailure> {
        self.call("abort");
        if self.fenced() {
            return Err(TxnFailure::Fatal("fenced".into()));
        }
        self.world.open.borrow_mut().clear();
        Ok(())
    }
}

/// The worker's use of a partition's transactions, as `Worker` does it.
struct Partition {
    world: Rc<World>,
    tx: Transactions<Fake, i64>,
    /// The next input offset.
    next: i64,
    /// Dropped (fatal, given up).
    gone: bool,
}

fn outputs(offset: i64) -> u32 {
    (offset % 3) as u32
}

impl Partition {
    fn process(&mut self, offset: i64) {
        self.next = offset + 1;
        let generation = self.world.generation.get();
        for idx in 0..outputs(offset) {
            let rec = Rec {
                offset,
                idx,
                generation,
            };
            if self.tx.output(rec).is_err() {
                self.gone = true;
                return;
            }
        }
        if self.tx.keep(offset) {
            self.checkpoint(false);
        }
    }

    fn settle(&mut self, block: bool) {
        let now = self.world.now.get();
        let stopping = self.world.stopping.get();
        let s = if block {
            self.tx.settle(now, true, stopping, &mut || true)
        } else {
            self.tx.step(now, stopping, &mut || true)
        };
        match s {
            Settled::Nothing => {}
            Settled::Committed(held) => {
                for rec in held {
                    if self.tx.output(rec).is_err() {
                        self.gone = true;
                        return;
                    }
                }
            }
            Settled::Rewind { new_producer, .. } => self.rewind(new_producer),
            Settled::GiveUp | Settled::Fatal(_) => self.gone = true,
        }
    }

    fn checkpoint(&mut self, wait: bool) {
        self.settle(true);
        if self.gone {
            return;
        }
        match self.tx.open() {
            Ok(()) => {}
            Err(TxnFailure::Fatal(_)) => return self.gone = true,
            Err(_) => return self.rewind(false),
        }
        let now = self.world.now.get();
        match self.tx.commit(vec![("in".into(), self.next)], now) {
            Ok(()) => {}
            Err(TxnFailure::Fatal(_)) => return self.gone = true,
            Err(_) => return self.rewind(false),
        }
        if wait {
            self.settle(true);
        }
    }

    fn rewind(&mut self, mut new_producer: bool) {
        let w = self.world.clone();
        let before = self.next;
        if self.tx.end_commit(w.now.get(), &mut || true) {
            new_producer = true;
        }
        let producer = new_producer.then(|| {
            if w.stopping.get() {
                w.violation("a new producer while stopping".into());
            }
            w.epoch.set(w.epoch.get() + 1);
            Fake {
                world: w.clone(),
                epoch: w.epoch.get(),
            }
        });
        let replay = match self.tx.rewind(producer) {
            Ok(replay) => replay,
            Err(_) => return self.gone = true,
        };
        // The restored engine: the last commit's state and position.
        w.generation.set(w.generation.get() + 1);
        self.next = w.committed.get();
        for offset in replay {
            if offset >= self.next && !self.gone {
                self.process(offset);
            }
        }
        if !self.gone && self.next != before {
            w.violation(format!(
                "a rewind restored the input to {} of {before}",
                self.next
            ));
        }
    }

    fn apply(&mut self, op: &Op) {
        let w = self.world.clone();
        match *op {
            Op::Message => self.process(self.next),
            Op::Step => {
                self.settle(false);
                if let Phase::Committing { since, .. } = self.tx.phase() {
                    if w.now.get().saturating_duration_since(*since) >= COMMIT_STUCK {
                        w.violation("a commit past the watchdog survived a step".into());
                    }
                }
            }
            Op::Due => {
                self.tx.set_due();
                if self.tx.take_due() {
                    self.checkpoint(false);
                }
            }
            Op::Drain => {
                w.may_block.set(true);
                self.checkpoint(true);
                w.may_block.set(false);
            }
            Op::Elapse(ms) => w.now.set(w.now.get() + Duration::from_millis(ms)),
            Op::NextCommit(outcome, ms) => w.next_commit.set((outcome, ms)),
            Op::RefuseSend => w.refuse_send.set(true),
            Op::RefuseBegin => w.refuse_begin.set(true),
            Op::Stop => w.stopping.set(true),
        }
    }
}

/// What the broker shows: each output of each committed offset once, none beyond.
fn exactly_once(w: &World) -> Result<(), String> {
    let committed = w.committed.get();
    let mut seen: Vec<(i64, u32)> = w
        .visible
        .borrow()
        .iter()
        .map(|r| (r.offset, r.idx))
        .collect();
    seen.sort_unstable();
    let expected: Vec<(i64, u32)> = (0..committed)
        .flat_map(|o| (0..outputs(o)).map(move |i| (o, i)))
        .collect();
    if seen != expected {
        return Err(format!(
            "committed to offset {committed}, visible outputs {seen:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Ok),
        2 => Just(Outcome::Abortable),
        1 => Just(Outcome::Fatal),
        2 => Just(Outcome::Hangs),
    ];
    prop_oneof![
        8 => Just(Op::Message),
        6 => Just(Op::Step),
        3 => Just(Op::Due),
        1 => Just(Op::Drain),
        3 => (0u64..60_000).prop_map(Op::Elapse),
        3 => (outcome, 0u64..50_000).prop_map(|(o, ms)| Op::NextCommit(o, ms)),
        1 => Just(Op::RefuseSend),
        1 => Just(Op::RefuseBegin),
        1 => Just(Op::Stop),
    ]
}

/// Runs the operations; the world at the end, or the first invariant broken.
fn run(ops: &[Op]) -> Result<Rc<World>, String> {
    let world = Rc::new(World {
        now: Cell::new(Instant::now()),
        open: RefCell::new(Vec::new()),
        visible: RefCell::new(Vec::new()),
        committed: Cell::new(0),
        epoch: Cell::new(0),
        generation: Cell::new(0),
        next_commit: Cell::new((Outcome::Ok, 0)),
        refuse_send: Cell::new(false),
        refuse_begin: Cell::new(false),
        hung: Cell::new(None),
        may_block: Cell::new(false),
        stopping: Cell::new(false),
        violations: RefCell::new(Vec::new()),
    });
    let producer = Fake {
        world: world.clone(),
        epoch: 0,
    };
    let mut p = Partition {
        world: world.clone(),
        tx: Transactions::new(producer),
        next: 0,
        gone: false,
    };
    for (i, op) in ops.iter().enumerate() {
        if p.gone {
            break;
        }
        p.apply(op);
        exactly_once(&world).map_err(|e| format!("after op {i} ({op:?}): {e}"))?;
        if let Some(v) = world.violations.borrow().first() {
            return Err(format!("after op {i} ({op:?}): {v}"));
        }
    }
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_transaction_lifecycle_keeps_its_invariants(ops in prop::collection::vec(op(), 1..80)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn a_commit_that_hangs_is_given_up_with_a_new_producer_and_the_input_processed_again() {
    let ops = [
        Op::Message,
        Op::Message,
        Op::Message,
        Op::NextCommit(Outcome::Hangs, 0),
        Op::Due,
        Op::Message,
        Op::Elapse(46_000),
        Op::Step,
        Op::Drain,
    ];
    let w = run(&ops).unwrap();
    assert_eq!(w.epoch.get(), 1, "the stuck producer was replaced (fenced)");
    assert_eq!(w.generation.get(), 1, "the partition rewound once");
    assert_eq!(
        w.committed.get(),
        4,
        "all four messages committed after the rewind"
    );
    assert_eq!(
        w.visible.borrow().len(),
        3,
        "outputs of offsets 1 (one) and 2 (two)"
    );
}

#[test]
fn a_commit_that_hangs_while_stopping_is_given_up_without_fencing() {
    let ops = [
        Op::Message,
        Op::Message,
        Op::Message,
        Op::NextCommit(Outcome::Hangs, 0),
        Op::Due,
        Op::Stop,
        Op::Elapse(46_000),
        Op::Step,
    ];
    let w = run(&ops).unwrap();
    assert_eq!(
        w.epoch.get(),
        0,
        "no new producer: it would fence the next owner"
    );
    assert_eq!(
        w.committed.get(),
        0,
        "nothing committed; the next owner reads it all"
    );
    assert!(w.visible.borrow().is_empty());
}
