//! What the consumer holds and what a rebalance changes, decided without Kafka.
//!
//! The rebalance callbacks (`super::ConsumerCtx`) ask [`Membership`] for a plan (which
//! topic-partitions to resume, which partition engines start or stop, which waited
//! and are sought back, what to pause and resume) and carry it out; the poll loop does
//! the same for back-pressure and full buffers with [`Membership::pauses`]. Plans are
//! pure, so the rules are tested here against a model of librdkafka's pauses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::kafka::assignment::CoPartitions;

/// An input topic-partition: (input topic index, partition).
pub(crate) type Tp = (usize, i32);

/// The input topic-partitions to keep paused: all of them under back-pressure, else
/// those waiting for the rest of their partition and those whose buffers are full.
pub(crate) fn desired_pauses(
    assigned: &BTreeSet<Tp>,
    backpressure: bool,
    waiting: &BTreeSet<Tp>,
    full: &BTreeSet<Tp>,
) -> BTreeSet<Tp> {
    if backpressure {
        return assigned.clone();
    }
    assigned
        .iter()
        .filter(|tp| waiting.contains(tp) || full.contains(tp))
        .copied()
        .collect()
}

/// Pauses to pass on to the consumer: only changes (librdkafka drops what it has
/// prefetched of a partition at every pause or resume, even a repeated one).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PauseChange {
    pub pause: Vec<Tp>,
    pub resume: Vec<Tp>,
}

/// What an assignment asks of the consumer and the workers, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AssignPlan {
    /// Resumed first: nothing is fetched of them yet, and a pause librdkafka kept from
    /// an earlier assignment must not linger.
    pub resume_first: Vec<Tp>,
    /// Partitions now held whole: their engines start (a new epoch, a restore).
    pub start: Vec<i32>,
    /// Their topic-partitions.
    pub starting: Vec<Tp>,
    /// Of those, the ones that waited for the rest of their partition: sought back to
    /// their committed offsets (what was fetched meanwhile was dropped).
    pub seek: Vec<Tp>,
    /// Topic-partitions still waiting for the rest of their partition.
    pub waiting: Vec<Tp>,
    /// Customers each partition engine may hold (0: no cap).
    pub cap_share: u64,
    /// Then these pauses.
    pub pauses: PauseChange,
    /// Input topic-partitions assigned after it.
    pub assigned: usize,
}

/// What a revocation asks, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RevokePlan {
    /// Resumed first: a topic-partition that leaves paused would come back paused in
    /// a later assignment, with nothing left to resume it.
    pub resume_first: Vec<Tp>,
    /// Running partitions that lost a topic: their engines checkpoint and stop.
    pub stop: Vec<i32>,
    /// Then these pauses (what is left of stopped partitions waits, paused).
    pub pauses: PauseChange,
    /// Input topic-partitions assigned after it.
    pub assigned: usize,
}

/// The consumer's assignment, which partitions run, and what is paused.
#[derive(Debug)]
pub(crate) struct Membership {
    /// Input topic-partitions assigned.
    assigned: BTreeSet<Tp>,
    /// Of those, by partition number: which engines run.
    co: CoPartitions,
    /// The topic-partitions paused now.
    paused: BTreeSet<Tp>,
    /// When each topic-partition's fetching last changed (paused, resumed, sought,
    /// assigned).
    changed: BTreeMap<Tp, Instant>,
}

impl Membership {
    /// Nothing assigned, over `topics` input topics.
    pub fn new(topics: usize) -> Membership {
        Membership {
            assigned: BTreeSet::new(),
            co: CoPartitions::new(topics),
            paused: BTreeSet::new(),
            changed: BTreeMap::new(),
        }
    }

    /// Input topic-partitions assigned.
    #[cfg(test)]
    pub fn assigned(&self) -> usize {
        self.assigned.len()
    }

    /// Input topic-partitions assigned, by partition number.
    pub fn partitions(&self) -> BTreeSet<i32> {
        self.assigned.iter().map(|(_, p)| *p).collect()
    }

    /// Its fetch position in librdkafka's statistics is current: not paused, nor
    /// paused, resumed or moved within `settle`.
    pub fn settled(&self, tp: Tp, at: Instant, settle: Duration) -> bool {
        !self.paused.contains(&tp)
            && self
                .changed
                .get(&tp)
                .is_none_or(|t| at.saturating_duration_since(*t) >= settle)
    }

    /// The pauses to pass on so that exactly [`desired_pauses`] are paused, with
    /// back-pressure as given and these buffers full.
    pub fn pauses(&mut self, backpressure: bool, full: &BTreeSet<Tp>, now: Instant) -> PauseChange {
        let waiting: BTreeSet<Tp> = self.co.waiting().into_iter().collect();
        let desired = desired_pauses(&self.assigned, backpressure, &waiting, full);
        self.paused.retain(|tp| self.assigned.contains(tp));
        let change = PauseChange {
            pause: desired.difference(&self.paused).copied().collect(),
            resume: self.paused.difference(&desired).copied().collect(),
        };
        for tp in change.pause.iter().chain(&change.resume) {
            self.changed.insert(*tp, now);
        }
        self.paused = desired;
        change
    }

    /// New topic-partitions (all of them under the eager classic protocol, the added
    /// ones under KIP-848). Each partition now held whole starts; topic-partitions whose
    /// partition is not whole yet wait, paused; ones that waited are sought back when
    /// it starts. `cap`: the instance's customer cap, shared among its partitions.
    pub fn assign(
        &mut self,
        added: Vec<Tp>,
        cap: u64,
        backpressure: bool,
        full: &BTreeSet<Tp>,
        now: Instant,
    ) -> AssignPlan {
        self.assigned.extend(added.iter().copied());
        let start = self.co.assign(added.iter().copied());
        let starting: Vec<Tp> = start
            .iter()
            .flat_map(|p| self.co.held(*p).into_iter().map(move |t| (t, *p)))
            .collect();
        let seek = starting
            .iter()
            .copied()
            .filter(|k| !added.contains(k))
            .collect();
        for tp in &added {
            // Resumed first (below), so not paused now.
            self.paused.remove(tp);
            self.changed.insert(*tp, now);
        }
        let cap_share = if cap == 0 {
            0
        } else {
            (cap / self.partitions().len().max(1) as u64).max(1)
        };
        let pauses = self.pauses(backpressure, full, now);
        AssignPlan {
            resume_first: added,
            start,
            starting,
            seek,
            waiting: self.co.waiting(),
            cap_share,
            pauses,
            assigned: self.assigned.len(),
        }
    }

    /// Topic-partitions going away (all under the eager classic protocol, some under
    /// KIP-848). A running partition that loses any of its topics stops; what remains
    /// of it waits, paused, to be revoked too.
    pub fn revoke(
        &mut self,
        gone: Vec<Tp>,
        backpressure: bool,
        full: &BTreeSet<Tp>,
        now: Instant,
    ) -> RevokePlan {
        let stop = self.co.revoke(gone.iter().copied());
        for tp in &gone {
            self.assigned.remove(tp);
            self.paused.remove(tp);
            self.changed.remove(tp);
        }
        let pauses = self.pauses(backpressure, full, now);
        RevokePlan {
            resume_first: gone,
            stop,
            pauses,
            assigned: self.assigned.len(),
        }
    }

    /// Shutdown: nothing is held any more.
    pub fn clear(&mut self) {
        self.assigned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn back_pressure_pauses_everything_else_waiting_and_full_inputs() {
        let set = |v: &[Tp]| v.iter().copied().collect::<BTreeSet<_>>();
        let assigned = set(&[(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
        let waiting = set(&[(0, 1), (9, 9)]);
        let full = set(&[(2, 0)]);
        assert_eq!(desired_pauses(&assigned, true, &waiting, &full), assigned);
        assert_eq!(
            desired_pauses(&assigned, false, &waiting, &full),
            set(&[(0, 1), (2, 0)])
        );
    }

    #[test]
    fn a_partition_handed_over_topic_by_topic_waits_paused_then_starts_sought_back() {
        let now = Instant::now();
        let none = BTreeSet::new();
        let mut m = Membership::new(3);
        let first = m.assign(vec![(0, 4), (1, 4)], 0, false, &none, now);
        assert!(first.start.is_empty());
        assert_eq!(first.waiting, vec![(0, 4), (1, 4)]);
        assert_eq!(first.pauses.pause, vec![(0, 4), (1, 4)]);
        let last = m.assign(vec![(2, 4)], 1_000, false, &none, now);
        assert_eq!(last.start, vec![4]);
        assert_eq!(last.seek, vec![(0, 4), (1, 4)], "the ones that waited");
        assert_eq!(last.pauses.resume, vec![(0, 4), (1, 4)]);
        assert_eq!(last.cap_share, 1_000);
        let revoked = m.revoke(vec![(1, 4)], false, &none, now);
        assert_eq!(revoked.stop, vec![4]);
        assert_eq!(revoked.pauses.pause, vec![(0, 4), (2, 4)], "the rest waits");
    }

    /// librdkafka's pauses as the consumer sees them: a pause or resume reaches only
    /// assigned topic-partitions, and a topic-partition's pause outlives its
    /// revocation (it comes back paused when assigned again).
    #[derive(Default)]
    struct Librdkafka {
        assigned: BTreeSet<Tp>,
        paused: BTreeSet<Tp>,
    }

    impl Librdkafka {
        fn pause(&mut self, tps: &[Tp]) {
            for tp in tps.iter().filter(|tp| self.assigned.contains(tp)) {
                self.paused.insert(*tp);
            }
        }
        fn resume(&mut self, tps: &[Tp]) {
            for tp in tps.iter().filter(|tp| self.assigned.contains(tp)) {
                self.paused.remove(tp);
            }
        }
        fn apply(&mut self, c: &PauseChange) {
            self.pause(&c.pause);
            self.resume(&c.resume);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// These partitions of these topics (bit masks) are assigned.
        Assign(u8, u8),
        Revoke(u8, u8),
        Backpressure(bool),
        Full(usize, i32, bool),
    }

    fn tps(topics: u8, parts: u8, pick: impl Fn(&Tp) -> bool) -> Vec<Tp> {
        (0..3usize)
            .filter(|t| topics & (1 << t) != 0)
            .flat_map(|t| {
                (0..3i32)
                    .filter(move |p| parts & (1 << p) != 0)
                    .map(move |p| (t, p))
            })
            .filter(|tp| pick(tp))
            .collect()
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u8..8, 1u8..8).prop_map(|(t, p)| Op::Assign(t, p)),
            3 => (1u8..8, 1u8..8).prop_map(|(t, p)| Op::Revoke(t, p)),
            2 => any::<bool>().prop_map(Op::Backpressure),
            2 => (0usize..3, 0i32..3, any::<bool>()).prop_map(|(t, p, f)| Op::Full(t, p, f)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// After every rebalance, back-pressure change and buffer change, exactly the
        /// topic-partitions [`desired_pauses`] names are paused in librdkafka: in
        /// particular one paused by back-pressure is resumed after any rebalance once
        /// back-pressure ends, and one that came back is not left paused.
        #[test]
        fn librdkafka_pauses_exactly_what_the_plans_want(ops in prop::collection::vec(op(), 1..60)) {
            let now = Instant::now();
            let mut m = Membership::new(3);
            let mut lib = Librdkafka::default();
            let mut full = BTreeSet::new();
            let mut backpressure = false;
            for op in &ops {
                match *op {
                    Op::Assign(t, p) => {
                        let added = tps(t, p, |tp| !lib.assigned.contains(tp));
                        lib.assigned.extend(added.iter().copied());
                        let plan = m.assign(added, 0, backpressure, &full, now);
                        lib.resume(&plan.resume_first);
                        lib.apply(&plan.pauses);
                    }
                    Op::Revoke(t, p) => {
                        let gone = tps(t, p, |tp| lib.assigned.contains(tp));
                        let plan = m.revoke(gone.clone(), backpressure, &full, now);
                        lib.resume(&plan.resume_first);
                        for tp in &gone {
                            lib.assigned.remove(tp);
                        }
                        lib.apply(&plan.pauses);
                    }
                    Op::Backpressure(on) => {
                        backpressure = on;
                        let c = m.pauses(on, &full, now);
                        lib.apply(&c);
                    }
                    Op::Full(t, p, on) => {
                        if on { full.insert((t, p)); } else { full.remove(&(t, p)); }
                        let c = m.pauses(backpressure, &full, now);
                        lib.apply(&c);
                    }
                }
                let waiting: BTreeSet<Tp> = m.co.waiting().into_iter().collect();
                let want = desired_pauses(&lib.assigned, backpressure, &waiting, &full);
                let paused: BTreeSet<Tp> = lib.paused.intersection(&lib.assigned).copied().collect();
                prop_assert_eq!(&paused, &want, "after {:?}", op);
                prop_assert_eq!(m.assigned(), lib.assigned.len());
            }
        }
    }
}
