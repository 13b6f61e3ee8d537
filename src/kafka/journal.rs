//! The journal of an exactly-once partition: what its engine was given since its last
//! state records, in order, so that a restore can give it the same again.
//!
//! Exactly-once commits a transaction every 100 ms, but writing every changed
//! customer's record in every transaction writes an active customer ten times a second
//! (measured with `bench kafka`: about 1.13 times at-least-once's CPU per event, where
//! every customer changes within 100 ms). So customer records
//! are written every `kafka.commit_interval_ms`, as at-least-once writes them, and each
//! transaction in between writes this journal instead (one small record, keyed
//! [`JOURNAL_KEY`]): where the state's input positions were, and the sequence of calls
//! the engine got since: runs of messages per input (with the wall-clock `now` they
//! were validated against and which inputs held the watermark back), idle advances of
//! stream time, and changes of the customer cap. Everything else the engine does
//! follows from its input, so a restore that reads the state, then the input from the
//! state's positions to the transaction's, and replays the journal over it, rebuilds
//! the engine exactly as it was when the transaction committed. The outputs of that
//! replay were committed already, and are not produced again.
//!
//! The journal is a pure value here: recorded, encoded and decoded without Kafka.

use crate::engine::codec::{CodecError, Reader, Writer};

/// Key of a partition's journal record: not UTF-8, so no customer id can equal it.
pub const JOURNAL_KEY: &[u8] = b"\xffchurnsignal-journal";

/// At most this many inputs per partition (a mask is a `u64`).
pub const MAX_INPUTS: usize = 64;

/// Messages a journal may cover before the state records must be written (the restore
/// holds that much input in memory).
pub const MAX_MESSAGES: u64 = 100_000;

/// Operations a journal may hold before the state records must be written (it is
/// written whole in every transaction).
pub const MAX_OPS: usize = 20_000;

/// One input of the journal: where the state's position was, and its latest event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Topic name.
    pub name: String,
    /// The next offset the state records had not applied (`None`: no position yet; the
    /// first message the journal covers sets it).
    pub next: Option<i64>,
    /// The latest event time seen on this input before (`i64::MIN`: none).
    pub max_time: i64,
}

/// One call the engine got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Consecutive messages of one input.
    Run {
        /// The input's index in the journal's base.
        input: u8,
        /// The inputs (bit i: input i) that counted towards the watermark limit.
        live: u64,
        /// Wall-clock time the messages were validated against, ms.
        now: i64,
        /// How many.
        count: u32,
    },
    /// Stream time advanced on an idle partition.
    Advance {
        /// To this event time, ms.
        target: i64,
    },
    /// The engine's customer cap was set.
    Cap(u64),
}

/// The engine's input since its state records, as a sequence of calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// The inputs, in the partition's order: a run's `input` and `live` index them.
    pub base: Vec<Base>,
    /// The calls, in order.
    pub ops: Vec<Op>,
    /// Messages the runs cover.
    pub messages: u64,
}

impl Journal {
    /// A journal starting at state records that reflect `base`.
    pub fn new(base: Vec<Base>) -> Journal {
        Journal {
            base,
            ops: Vec::new(),
            messages: 0,
        }
    }

    /// One more message of input `input` at `offset`.
    pub fn message(&mut self, input: usize, offset: i64, live: u64, now: i64) {
        let Some(b) = self.base.get_mut(input) else {
            return;
        };
        if b.next.is_none() {
            b.next = Some(offset);
        }
        self.messages += 1;
        let input = input as u8;
        if let Some(Op::Run {
            input: i,
            live: l,
            now: n,
            count,
        }) = self.ops.last_mut()
        {
            if *i == input && *l == live && *n == now && *count < u32::MAX {
                *count += 1;
                return;
            }
        }
        self.ops.push(Op::Run {
            input,
            live,
            now,
            count: 1,
        });
    }

    /// Stream time advanced on an idle partition.
    pub fn advance(&mut self, target: i64) {
        self.ops.push(Op::Advance { target });
    }

    /// The customer cap was set.
    pub fn cap(&mut self, n: u64) {
        self.ops.push(Op::Cap(n));
    }

    /// Too long to keep journaling: the state records are due.
    pub fn full(&self) -> bool {
        self.messages >= MAX_MESSAGES || self.ops.len() >= MAX_OPS
    }

    /// Messages of each input the runs cover.
    pub fn counts(&self) -> Vec<u64> {
        let mut n = vec![0u64; self.base.len()];
        for op in &self.ops {
            if let Op::Run { input, count, .. } = op {
                n[*input as usize] += u64::from(*count);
            }
        }
        n
    }

    /// The record: version byte, the inputs (name, position, latest event time, and
    /// `ends`: the next offset of each after the journal), then the calls.
    pub fn encode(&self, ends: &[Option<i64>], out: &mut Vec<u8>) {
        let mut w = Writer::start(out);
        w.var(self.base.len() as u64);
        for (b, end) in self.base.iter().zip(ends) {
            w.str(&b.name);
            opt(&mut w, b.next);
            w.ivar(b.max_time);
            opt(&mut w, *end);
        }
        w.var(self.ops.len() as u64);
        let mut last_now = 0i64;
        for op in &self.ops {
            match *op {
                Op::Run {
                    input,
                    live,
                    now,
                    count,
                } => {
                    w.u8(0);
                    w.u8(input);
                    w.var(live);
                    w.ivar(now.wrapping_sub(last_now));
                    w.var(u64::from(count));
                    last_now = now;
                }
                Op::Advance { target } => {
                    w.u8(1);
                    w.ivar(target);
                }
                Op::Cap(n) => {
                    w.u8(2);
                    w.var(n);
                }
            }
        }
    }

    /// A record back: the journal and each input's next offset after it.
    pub fn decode(bytes: &[u8]) -> Result<(Journal, Vec<Option<i64>>), CodecError> {
        let mut r = Reader::start(bytes)?;
        let n = r.var()?;
        if n > MAX_INPUTS as u64 {
            return Err(CodecError::Invalid("a journal of more than 64 inputs"));
        }
        let mut base = Vec::with_capacity(n as usize);
        let mut ends = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = r.str()?.to_owned();
            let next = read_opt(&mut r)?;
            let max_time = r.ivar()?;
            base.push(Base {
                name,
                next,
                max_time,
            });
            ends.push(read_opt(&mut r)?);
        }
        let n_ops = r.var()?;
        if n_ops > 4 * MAX_OPS as u64 {
            return Err(CodecError::Invalid("a journal of too many operations"));
        }
        let mut j = Journal::new(base);
        let mut last_now = 0i64;
        for _ in 0..n_ops {
            let op = match r.u8()? {
                0 => {
                    let input = r.u8()?;
                    if usize::from(input) >= j.base.len() {
                        return Err(CodecError::Invalid("a journal run of an unknown input"));
                    }
                    let live = r.var()?;
                    let now = last_now.wrapping_add(r.ivar()?);
                    last_now = now;
                    let count = u32::try_from(r.var()?)
                        .map_err(|_| CodecError::Invalid("a journal run too long"))?;
                    j.messages += u64::from(count);
                    Op::Run {
                        input,
                        live,
                        now,
                        count,
                    }
                }
                1 => Op::Advance { target: r.ivar()? },
                2 => Op::Cap(r.var()?),
                _ => return Err(CodecError::Invalid("an unknown journal operation")),
            };
            j.ops.push(op);
        }
        r.end()?;
        Ok((j, ends))
    }
}

fn opt(w: &mut Writer<'_>, v: Option<i64>) {
    match v {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.ivar(v);
        }
    }
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<i64>, CodecError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.ivar()?)),
        _ => Err(CodecError::Invalid(
            "an optional offset flag that is neither 0 nor 1",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base(names: &[&str]) -> Vec<Base> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Base {
                name: (*n).to_owned(),
                next: (i > 0).then_some(100 * i as i64),
                max_time: if i == 0 { i64::MIN } else { 1_700_000_000_000 },
            })
            .collect()
    }

    #[test]
    fn consecutive_messages_alike_make_one_run_and_any_difference_starts_another() {
        let mut j = Journal::new(base(&["orders", "tickets"]));
        j.message(0, 7, 0b01, 1000);
        j.message(0, 8, 0b01, 1000);
        j.message(0, 9, 0b11, 1000); // another input counts now
        j.message(1, 200, 0b11, 1000); // another input
        j.message(1, 201, 0b11, 1001); // another batch's clock
        j.advance(5);
        j.message(1, 202, 0b11, 1001);
        j.cap(10);
        assert_eq!(
            j.ops,
            vec![
                Op::Run {
                    input: 0,
                    live: 1,
                    now: 1000,
                    count: 2
                },
                Op::Run {
                    input: 0,
                    live: 3,
                    now: 1000,
                    count: 1
                },
                Op::Run {
                    input: 1,
                    live: 3,
                    now: 1000,
                    count: 1
                },
                Op::Run {
                    input: 1,
                    live: 3,
                    now: 1001,
                    count: 1
                },
                Op::Advance { target: 5 },
                Op::Run {
                    input: 1,
                    live: 3,
                    now: 1001,
                    count: 1
                },
                Op::Cap(10),
            ]
        );
        assert_eq!(j.messages, 6);
        assert_eq!(j.counts(), vec![3, 3]);
        // The first input had no position: its first message gives it one.
        assert_eq!(j.base[0].next, Some(7));
        assert_eq!(j.base[1].next, Some(100));
    }

    #[test]
    fn a_journal_is_full_at_its_message_or_operation_bound() {
        let mut j = Journal::new(base(&["orders"]));
        for o in 0..MAX_MESSAGES as i64 - 1 {
            j.message(0, o, 1, 0);
        }
        assert!(!j.full());
        j.message(0, MAX_MESSAGES as i64, 1, 0);
        assert!(j.full());
        let mut j = Journal::new(base(&["orders"]));
        for t in 0..MAX_OPS as i64 {
            assert!(!j.full());
            j.advance(t);
        }
        assert!(j.full());
    }

    #[test]
    fn damaged_records_are_refused() {
        let mut j = Journal::new(base(&["orders", "tickets"]));
        j.message(1, 100, 3, 1_700_000_000_000);
        let mut out = Vec::new();
        j.encode(&[Some(1), Some(101)], &mut out);
        assert!(Journal::decode(&out).is_ok());
        for cut in 0..out.len() {
            assert!(Journal::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(Journal::decode(&longer).is_err(), "trailing bytes");
        // The run's input index is the byte after the operation tag.
        let run = out.len() - 1 - 6 - 1 - 1 - 1;
        assert_eq!(&out[run..run + 2], &[0, 1]);
        let mut unknown = out.clone();
        unknown[run + 1] = 2;
        assert!(Journal::decode(&unknown).is_err(), "input out of range");
        let mut op = out;
        op[run] = 9;
        assert!(Journal::decode(&op).is_err(), "unknown operation");
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, any::<u64>(), any::<i64>(), 1u32..).prop_map(|(input, live, now, count)| {
                Op::Run {
                    input,
                    live,
                    now,
                    count,
                }
            }),
            any::<i64>().prop_map(|target| Op::Advance { target }),
            any::<u64>().prop_map(Op::Cap),
        ]
    }

    proptest! {
        #[test]
        fn a_record_gives_back_its_journal_and_ends(
            ops in proptest::collection::vec(op(), 0..50),
            nexts in proptest::collection::vec(proptest::option::of(any::<i64>()), 3),
            ends in proptest::collection::vec(proptest::option::of(any::<i64>()), 3),
            times in proptest::collection::vec(any::<i64>(), 3),
        ) {
            let base: Vec<Base> = ["orders", "support-tickets", "engagement"]
                .iter()
                .zip(nexts.iter().zip(&times))
                .map(|(n, (next, t))| Base { name: (*n).to_owned(), next: *next, max_time: *t })
                .collect();
            let mut j = Journal::new(base);
            for o in &ops {
                if let Op::Run { count, .. } = o {
                    j.messages += u64::from(*count);
                }
            }
            j.ops = ops;
            let mut out = Vec::new();
            j.encode(&ends, &mut out);
            let (back, back_ends) = Journal::decode(&out).unwrap();
            prop_assert_eq!(back, j);
            prop_assert_eq!(back_ends, ends);
        }
    }
}
