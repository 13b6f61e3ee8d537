//! Stream-time synchronization of a partition's inputs, as a pure state machine.
//!
//! A partition engine reads partition *p* of each input topic. Kafka delivers every
//! topic-partition in offset order, but not in step with the others: librdkafka fetches
//! by bytes, so on a backlog one topic can deliver months of event time before another
//! has delivered its first message. Taken in arrival order, stream time would run ahead
//! with the first topic, and the others' events would turn late and silence-driven
//! signals fire for customers whose orders simply had not been fetched yet.
//!
//! The rule is Kafka Streams' (KIP-353 timestamp synchronization, with KIP-695's
//! lag-aware idling and its `max.task.idle.ms`):
//!
//! - Consumed messages wait in a buffer per input. The next one processed is the head
//!   with the earliest event time (ties: the input configured first; messages that did
//!   not decode carry no time and go first), so a backlog is processed exactly as
//!   `replay` processes the same events merged in time order.
//! - A head is taken only when no input *holds stream time back*. An input whose buffer
//!   is empty holds it back while it is not known to be caught up: its end offset is not
//!   known yet, or the consumer's position is below it (unconsumed messages), whether or
//!   not it has delivered anything yet. A caught-up input with an empty buffer holds it
//!   back for `idle_ms` after it ran dry, then counts as idle until it delivers again or
//!   shows a backlog. An input that is not part of the partition (not assigned, or its
//!   topic deleted) never holds it back. The wall clock never decides for an input with
//!   a backlog.
//! - Memory stays bounded: an input whose buffer reaches `cap` messages is paused (the
//!   consumer stops fetching it) and resumed once it is down to half. The input that
//!   holds stream time back is never paused for this, since its buffer is empty.
//!
//! Positions come from the consumer (see [`Position`]); time is passed in as
//! milliseconds of a monotonic clock, never read here.

use std::collections::VecDeque;

/// What the consumer last knew of an input's end, reported after every message it had
/// passed on before it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The offset after the last message a `read_committed` consumer can read (the last
    /// stable offset).
    pub end: i64,
    /// The consumer had fetched up to `end` (transaction markers included) and passed on
    /// every message below it: nothing of this input is left unconsumed.
    pub caught_up: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Process the head of this input.
    Take(usize),
    /// Wait: `input` holds stream time back. Ask again when a message or a position
    /// arrives, or at `until` (an idle time running out).
    Hold {
        /// The input waited for (the first one, when several hold).
        input: usize,
        /// When an idle time runs out, if that is what is waited for.
        until: Option<u64>,
    },
    /// Nothing is buffered.
    Empty,
}

/// One input of a partition.
#[derive(Debug)]
struct Lane<T> {
    /// Part of the partition: assigned, and its topic exists.
    present: bool,
    /// Buffered messages with their ordering key (event time, ms).
    queue: VecDeque<(i64, T)>,
    /// The offset after the last message received.
    received: Option<i64>,
    /// The consumer's last report.
    position: Option<Position>,
    /// Since when it has been caught up with an empty buffer while others had messages.
    dry_since: Option<u64>,
    /// Paused because its buffer is full.
    paused: bool,
}

impl<T> Lane<T> {
    fn new() -> Lane<T> {
        Lane {
            present: false,
            queue: VecDeque::new(),
            received: None,
            position: None,
            dry_since: None,
            paused: false,
        }
    }

    /// Nothing of it is left to consume, as far as the consumer knows.
    fn caught_up(&self) -> bool {
        !self.present
            || self
                .position
                .is_some_and(|p| p.caught_up || self.received.is_some_and(|r| r >= p.end))
    }
}

/// The synchronization of one partition's inputs (indexed `0..inputs`), buffering
/// messages of type `T`.
#[derive(Debug)]
pub struct Synchronizer<T> {
    lanes: Vec<Lane<T>>,
    idle_ms: u64,
    cap: usize,
    /// The input holding stream time back now, and up to when that was counted.
    held: Option<(usize, u64)>,
    /// Milliseconds each input held stream time back, not yet taken.
    held_ms: Vec<u64>,
}

impl<T> Synchronizer<T> {
    /// For `inputs` inputs (none present yet), an idle time of `idle_ms` and buffers of
    /// `cap` messages per input (at least 2).
    pub fn new(inputs: usize, idle_ms: u64, cap: usize) -> Synchronizer<T> {
        Synchronizer {
            lanes: (0..inputs).map(|_| Lane::new()).collect(),
            idle_ms,
            cap: cap.max(2),
            held: None,
            held_ms: vec![0; inputs],
        }
    }

    /// Input `k` is part of the partition (assigned) or no longer is (revoked, or its
    /// topic deleted): an absent input never holds stream time back.
    pub fn set_present(&mut self, k: usize, present: bool) {
        if let Some(l) = self.lanes.get_mut(k) {
            l.present = present;
            l.dry_since = None;
        }
    }

    /// Is a message of input `k` at `offset` new (not delivered before)?
    pub fn fresh(&self, k: usize, offset: i64) -> bool {
        self.lanes
            .get(k)
            .is_some_and(|l| l.received.is_none_or(|r| offset >= r))
    }

    /// A message of input `k` at `offset` arrived and is not to be processed (the state
    /// holds it already): it still counts as consumed.
    pub fn seen(&mut self, k: usize, offset: i64) {
        if let Some(l) = self.lanes.get_mut(k) {
            l.received = Some(l.received.map_or(offset + 1, |r| r.max(offset + 1)));
        }
    }

    /// A message of input `k` at `offset`, ordered by `time` (event time in ms;
    /// `i64::MIN` for one without).
    pub fn push(&mut self, k: usize, offset: i64, time: i64, item: T) {
        self.seen(k, offset);
        if let Some(l) = self.lanes.get_mut(k) {
            l.queue.push_back((time, item));
            l.dry_since = None;
        }
    }

    /// The consumer's report on input `k`.
    pub fn report(&mut self, k: usize, p: Position) {
        if let Some(l) = self.lanes.get_mut(k) {
            l.position = Some(p);
        }
    }

    /// Decides what to do at `now` (ms).
    pub fn next(&mut self, now: u64) -> Next {
        let idle = self.idle_ms;
        let mut best: Option<(i64, usize)> = None;
        for (k, l) in self.lanes.iter().enumerate() {
            if let Some((t, _)) = l.queue.front() {
                if best.is_none_or(|(b, _)| *t < b) {
                    best = Some((*t, k));
                }
            }
        }
        let next = match best {
            None => Next::Empty,
            Some((_, take)) => {
                let mut hold: Option<(usize, Option<u64>)> = None;
                for (k, l) in self.lanes.iter_mut().enumerate() {
                    if !l.queue.is_empty() || !l.present {
                        continue;
                    }
                    let until = if l.caught_up() {
                        let since = *l.dry_since.get_or_insert(now);
                        let until = since.saturating_add(idle);
                        if now >= until {
                            continue; // idle
                        }
                        Some(until)
                    } else {
                        // A backlog, or an end not known yet: wait for it, however long.
                        l.dry_since = None;
                        None
                    };
                    hold = Some(match hold {
                        None => (k, until),
                        Some((first, u)) => (
                            first,
                            match (u, until) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            },
                        ),
                    });
                }
                match hold {
                    Some((input, until)) => Next::Hold { input, until },
                    None => Next::Take(take),
                }
            }
        };
        if let Some((k, since)) = self.held.take() {
            self.held_ms[k] += now.saturating_sub(since);
        }
        if let Next::Hold { input, .. } = next {
            self.held = Some((input, now));
        }
        next
    }

    /// Takes the head of input `k`.
    pub fn pop(&mut self, k: usize) -> Option<T> {
        self.lanes.get_mut(k)?.queue.pop_front().map(|(_, v)| v)
    }

    /// Does any input have a backlog, or a buffered message (the wall clock must not
    /// stand in for event time then)?
    pub fn behind(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| l.present && (!l.queue.is_empty() || !l.caught_up()))
    }

    /// Messages buffered.
    pub fn buffered(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }

    /// Inputs to pause (`true`: the buffer is full) or resume (`false`: down to half).
    pub fn flow(&mut self, mut change: impl FnMut(usize, bool)) {
        let cap = self.cap;
        for (k, l) in self.lanes.iter_mut().enumerate() {
            let n = l.queue.len();
            if !l.paused && n >= cap {
                l.paused = true;
                change(k, true);
            } else if l.paused && n <= cap / 2 {
                l.paused = false;
                change(k, false);
            }
        }
    }

    /// Inputs paused because their buffers are full.
    #[cfg(test)]
    pub fn paused(&self) -> impl Iterator<Item = usize> + '_ {
        self.lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| l.paused)
            .map(|(k, _)| k)
    }

    /// Milliseconds each input held stream time back since the last call.
    pub fn take_held(&mut self, mut f: impl FnMut(usize, u64)) {
        for (k, ms) in self.held_ms.iter_mut().enumerate() {
            if *ms > 0 {
                f(k, std::mem::take(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAUGHT_UP: Position = Position {
        end: 0,
        caught_up: true,
    };

    fn sync(inputs: usize, idle_ms: u64) -> Synchronizer<(usize, i64)> {
        let mut s = Synchronizer::new(inputs, idle_ms, 1000);
        for k in 0..inputs {
            s.set_present(k, true);
        }
        s
    }

    /// Takes everything processable at `now`, as (input, offset).
    fn drain(s: &mut Synchronizer<(usize, i64)>, now: u64) -> (Vec<(usize, i64)>, Next) {
        let mut out = Vec::new();
        loop {
            match s.next(now) {
                Next::Take(k) => out.push(s.pop(k).unwrap()),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn an_input_that_has_delivered_nothing_yet_but_has_a_backlog_holds_the_others_back() {
        let mut s = sync(2, 0);
        s.report(
            1,
            Position {
                end: 500,
                caught_up: false,
            },
        );
        s.push(0, 0, 1_000, (0, 0));
        s.push(0, 1, 9_000, (0, 1));
        assert_eq!(
            drain(&mut s, 0).1,
            Next::Hold {
                input: 1,
                until: None
            }
        );
        // Still held a minute later: the wall clock never decides for a backlog.
        assert!(drain(&mut s, 60_000).0.is_empty());
        s.push(1, 0, 5_000, (1, 0));
        let (taken, next) = drain(&mut s, 60_001);
        // Input 1 ran dry again, with 499 messages still to come.
        assert_eq!(taken, vec![(0, 0), (1, 0)]);
        assert_eq!(
            next,
            Next::Hold {
                input: 1,
                until: None
            }
        );
    }

    #[test]
    fn an_end_not_known_yet_holds_like_a_backlog() {
        let mut s = sync(2, 0);
        s.push(0, 0, 1_000, (0, 0));
        assert_eq!(
            s.next(0),
            Next::Hold {
                input: 1,
                until: None
            }
        );
        s.report(
            1,
            Position {
                end: 0,
                caught_up: false,
            },
        );
        // Empty (end 0, nothing received yet): not caught up by position alone, until the
        // consumer says so.
        assert_eq!(
            s.next(1),
            Next::Hold {
                input: 1,
                until: None
            }
        );
        s.report(1, CAUGHT_UP);
        assert_eq!(s.next(2), Next::Take(0));
    }

    #[test]
    fn an_empty_caught_up_input_holds_for_the_idle_time_then_counts_as_idle() {
        let mut s = sync(2, 100);
        s.report(1, CAUGHT_UP);
        s.push(0, 0, 1_000, (0, 0));
        assert_eq!(
            s.next(10),
            Next::Hold {
                input: 1,
                until: Some(110)
            }
        );
        assert_eq!(
            s.next(109),
            Next::Hold {
                input: 1,
                until: Some(110)
            }
        );
        assert_eq!(s.next(110), Next::Take(0));
        s.pop(0);
        // Still dry: it stays idle, so a new message elsewhere goes at once.
        s.push(0, 1, 2_000, (0, 1));
        assert_eq!(s.next(500), Next::Take(0));
        s.pop(0);
        // It delivers (and runs dry again): a new idle time starts when it is next needed.
        s.push(1, 0, 1_500, (1, 0));
        s.push(0, 2, 3_000, (0, 2));
        assert_eq!(drain(&mut s, 600).0, vec![(1, 0)]);
        assert_eq!(
            s.next(600),
            Next::Hold {
                input: 1,
                until: Some(700)
            }
        );
    }

    #[test]
    fn with_no_idle_time_a_caught_up_input_never_holds() {
        let mut s = sync(3, 0);
        for k in 1..3 {
            s.report(k, CAUGHT_UP);
        }
        s.push(0, 0, 1_000, (0, 0));
        assert_eq!(s.next(0), Next::Take(0));
    }

    #[test]
    fn received_up_to_the_end_is_caught_up_without_the_consumers_word() {
        let mut s = sync(2, 0);
        s.report(
            1,
            Position {
                end: 3,
                caught_up: false,
            },
        );
        for o in 0..3 {
            s.push(1, o, 10 + o, (1, o));
        }
        s.push(0, 0, 100, (0, 0));
        let (taken, next) = drain(&mut s, 0);
        assert_eq!(taken, vec![(1, 0), (1, 1), (1, 2), (0, 0)]);
        assert_eq!(next, Next::Empty);
        // A later report shows new messages: it holds again.
        s.report(
            1,
            Position {
                end: 9,
                caught_up: false,
            },
        );
        s.push(0, 1, 200, (0, 1));
        assert_eq!(
            s.next(1),
            Next::Hold {
                input: 1,
                until: None
            }
        );
    }

    #[test]
    fn an_input_that_is_not_part_of_the_partition_or_whose_topic_is_deleted_never_holds() {
        let mut s = sync(3, 1_000);
        // Input 1 was never assigned; input 2 had a backlog when its topic was deleted.
        s.set_present(1, false);
        s.report(0, CAUGHT_UP);
        s.report(
            2,
            Position {
                end: 900,
                caught_up: false,
            },
        );
        s.push(0, 0, 1_000, (0, 0));
        assert_eq!(
            s.next(0),
            Next::Hold {
                input: 2,
                until: None
            }
        );
        s.set_present(2, false);
        assert_eq!(s.next(1), Next::Take(0));
        s.pop(0);
        assert!(
            !s.behind(),
            "nothing buffered, nothing present left to consume"
        );
    }

    #[test]
    fn messages_without_event_time_go_first_and_ties_go_to_the_input_configured_first() {
        let mut s = sync(3, 0);
        for k in 0..3 {
            s.report(k, CAUGHT_UP);
        }
        s.push(2, 0, 5, (2, 0));
        s.push(1, 0, 5, (1, 0));
        s.push(0, 0, i64::MIN, (0, 0));
        s.push(0, 1, 5, (0, 1));
        let (taken, _) = drain(&mut s, 0);
        assert_eq!(&taken[..3], &[(0, 0), (0, 1), (1, 0)]);
    }

    #[test]
    fn a_full_buffer_is_paused_and_resumed_at_half() {
        let mut s: Synchronizer<i64> = Synchronizer::new(2, 0, 4);
        s.set_present(0, true);
        s.set_present(1, true);
        s.report(
            1,
            Position {
                end: 100,
                caught_up: false,
            },
        );
        let mut changes = Vec::new();
        for o in 0..4 {
            s.push(0, o, o, o);
        }
        s.flow(|k, p| changes.push((k, p)));
        assert_eq!(changes, vec![(0, true)]);
        assert_eq!(s.paused().collect::<Vec<_>>(), vec![0]);
        // The input that holds stream time back arrives: the full one drains.
        s.push(1, 0, 10, 100);
        assert_eq!(s.next(0), Next::Take(0));
        s.pop(0);
        s.flow(|k, p| changes.push((k, p)));
        assert_eq!(changes.len(), 1, "3 left: still paused");
        s.pop(0);
        s.flow(|k, p| changes.push((k, p)));
        assert_eq!(changes, vec![(0, true), (0, false)]);
    }

    #[test]
    fn time_held_back_is_counted_for_the_input_waited_for() {
        let mut s = sync(2, 0);
        s.report(
            1,
            Position {
                end: 10,
                caught_up: false,
            },
        );
        s.push(0, 0, 1, (0, 0));
        s.next(1_000);
        s.next(1_400);
        s.push(1, 0, 0, (1, 0));
        s.next(1_750); // takes input 1's message: no longer held
        let mut held = Vec::new();
        s.take_held(|k, ms| held.push((k, ms)));
        assert_eq!(held, vec![(1, 750)]);
        s.take_held(|_, _| panic!("taken already"));
    }

    /// A model of one partition's inputs and the consumer that delivers them: each input
    /// holds a sequence of event times in offset order (some with transaction markers
    /// after them); the consumer delivers them in chunks, in any interleaving of the
    /// inputs, with reports of positions in between (which may be stale, as the
    /// consumer's statistics are). Whatever the interleaving, the messages come out as
    /// the k-way merge by event time that replay of the same events gives.
    #[derive(Debug, Clone)]
    enum Step {
        Deliver { input: usize, n: usize },
        Report { input: usize },
        Tick { ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..3usize, 1..40usize).prop_map(|(input, n)| Step::Deliver { input, n }),
            2 => (0..3usize).prop_map(|input| Step::Report { input }),
            1 => (0..500u64).prop_map(|ms| Step::Tick { ms }),
        ]
    }

    /// Per input: event times (mostly increasing, some out of order) and whether the
    /// log ends with a transaction marker (the end is one past the last message).
    fn inputs() -> impl Strategy<Value = Vec<(Vec<i64>, bool)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec((0..50i64, 0..10u8), 0..120).prop_map(|steps| {
                    let mut t = 0;
                    steps
                        .into_iter()
                        .map(|(d, late)| {
                            t += d;
                            if late == 0 {
                                t - 30
                            } else {
                                t
                            }
                        })
                        .collect()
                }),
                any::<bool>(),
            ),
            3,
        )
    }

    /// The order replay takes: repeatedly the head with the earliest time, ties to the
    /// lowest input.
    fn k_way_merge(inputs: &[(Vec<i64>, bool)]) -> Vec<(usize, i64)> {
        let mut at = vec![0usize; inputs.len()];
        let mut out = Vec::new();
        loop {
            let next = (0..inputs.len())
                .filter(|k| at[*k] < inputs[*k].0.len())
                .min_by_key(|k| (inputs[*k].0[at[*k]], *k));
            let Some(k) = next else { return out };
            out.push((k, at[k] as i64));
            at[k] += 1;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_delivery_interleaving_gives_replays_order(
            inputs in inputs(),
            steps in proptest::collection::vec(step(), 0..200),
            idle in prop_oneof![Just(0u64), 1..300u64],
            cap in 2..64usize,
        ) {
            let mut s: Synchronizer<(usize, i64)> = Synchronizer::new(3, idle, cap);
            for k in 0..3 {
                s.set_present(k, true);
            }
            let mut delivered = [0usize; 3];
            let mut paused = [false; 3];
            let mut now = 0u64;
            let mut out = Vec::new();
            let end_of = |k: usize| inputs[k].0.len() as i64 + i64::from(inputs[k].1);
            // The consumer reports only what it knows: the end, and whether every message
            // below it was passed on.
            let report = |s: &mut Synchronizer<_>, k: usize, delivered: usize| {
                s.report(k, Position { end: end_of(k), caught_up: delivered == inputs[k].0.len() });
            };
            let pump = |s: &mut Synchronizer<(usize, i64)>, now: u64, out: &mut Vec<(usize, i64)>, paused: &mut [bool; 3]| {
                while let Next::Take(k) = s.next(now) {
                    out.push(s.pop(k).unwrap());
                }
                s.flow(|k, p| paused[k] = p);
                // Bounded: a paused input gets nothing more, so no buffer passes the cap
                // by more than one delivery.
                prop_assert!(s.buffered() <= 3 * (cap + 40));
                Ok(())
            };
            for st in &steps {
                match *st {
                    Step::Deliver { input, n } => {
                        if paused[input] {
                            continue;
                        }
                        let from = delivered[input];
                        let to = (from + n).min(inputs[input].0.len());
                        for o in from..to {
                            s.push(input, o as i64, inputs[input].0[o], (input, o as i64));
                        }
                        delivered[input] = to;
                    }
                    Step::Report { input } => report(&mut s, input, delivered[input]),
                    Step::Tick { ms } => now += ms,
                }
                pump(&mut s, now, &mut out, &mut paused)?;
            }
            // Then everything arrives, with reports, and time passes.
            let mut rounds = 0;
            loop {
                rounds += 1;
                prop_assert!(rounds < 10_000, "stuck");
                for k in 0..3 {
                    if !paused[k] {
                        let to = (delivered[k] + 16).min(inputs[k].0.len());
                        for o in delivered[k]..to {
                            s.push(k, o as i64, inputs[k].0[o], (k, o as i64));
                        }
                        delivered[k] = to;
                    }
                    report(&mut s, k, delivered[k]);
                }
                now += 1_000;
                pump(&mut s, now, &mut out, &mut paused)?;
                if delivered.iter().zip(&inputs).all(|(d, i)| *d == i.0.len()) && s.buffered() == 0 {
                    break;
                }
            }
            prop_assert!(!s.behind());
            prop_assert_eq!(out, k_way_merge(&inputs));
        }
    }
}
