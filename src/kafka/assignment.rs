//! Which partition engines run. An engine owns partition *p* of every input topic, so
//! it starts only when the group has given this instance all of them and stops as soon
//! as one of them goes. Under the classic protocol's eager range assignor they always
//! come and go together; under KIP-848 the broker's range assignor moves them together
//! too, but hands them over one heartbeat at a time, so for a moment an instance can
//! hold part of a partition. Those topic-partitions wait, paused, and are read from
//! their committed offsets once the rest arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The partitions whose engines run, each with the epoch it started at. Messages are
/// tagged with their partition's epoch when polled; a worker drops those of an older
/// epoch (polled before the partition stopped and started again), and a restore
/// gives up once its partition's epoch is no longer current.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    /// Bumped at every start and stop, so that the poll loop refreshes its copy.
    version: AtomicU64,
    last: AtomicU64,
    running: Mutex<BTreeMap<i32, u64>>,
}

impl Epochs {
    /// Partition `p` starts: its new epoch.
    pub fn start(&self, p: i32) -> u64 {
        let e = self.last.fetch_add(1, Ordering::SeqCst) + 1;
        self.running.lock().expect("epochs lock").insert(p, e);
        self.version.fetch_add(1, Ordering::SeqCst);
        e
    }

    /// Partition `p` stops.
    pub fn stop(&self, p: i32) {
        self.running.lock().expect("epochs lock").remove(&p);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Partition `p`'s epoch while it runs.
    pub fn current(&self, p: i32) -> Option<u64> {
        self.running.lock().expect("epochs lock").get(&p).copied()
    }

    /// Changes with every start and stop.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// The running partitions and their epochs.
    pub fn snapshot(&self) -> BTreeMap<i32, u64> {
        self.running.lock().expect("epochs lock").clone()
    }
}

/// The input topic-partitions this instance holds, by partition number (pure: the
/// rebalance callbacks feed it and act on its answers).
#[derive(Debug)]
pub(crate) struct CoPartitions {
    topics: usize,
    held: BTreeMap<i32, BTreeSet<usize>>,
    running: BTreeSet<i32>,
}

impl CoPartitions {
    /// For `topics` input topics.
    pub fn new(topics: usize) -> CoPartitions {
        CoPartitions {
            topics,
            held: BTreeMap::new(),
            running: BTreeSet::new(),
        }
    }

    /// Topic-partitions (topic index, partition) assigned: the partitions now held
    /// whole that were not running, which start.
    pub fn assign(&mut self, tps: impl IntoIterator<Item = (usize, i32)>) -> Vec<i32> {
        let mut touched = BTreeSet::new();
        for (t, p) in tps {
            if t < self.topics {
                self.held.entry(p).or_default().insert(t);
                touched.insert(p);
            }
        }
        let start: Vec<i32> = touched
            .into_iter()
            .filter(|p| !self.running.contains(p) && self.whole(*p))
            .collect();
        self.running.extend(start.iter().copied());
        start
    }

    /// Topic-partitions revoked: the running partitions that lost one of their topics,
    /// which stop.
    pub fn revoke(&mut self, tps: impl IntoIterator<Item = (usize, i32)>) -> Vec<i32> {
        let mut stop = BTreeSet::new();
        for (t, p) in tps {
            let Some(ts) = self.held.get_mut(&p) else {
                continue;
            };
            if ts.remove(&t) && self.running.remove(&p) {
                stop.insert(p);
            }
            if ts.is_empty() {
                self.held.remove(&p);
            }
        }
        stop.into_iter().collect()
    }

    /// Is partition `p`'s engine running?
    #[cfg(test)]
    pub fn running(&self, p: i32) -> bool {
        self.running.contains(&p)
    }

    /// The topics of partition `p` held.
    pub fn held(&self, p: i32) -> Vec<usize> {
        self.held
            .get(&p)
            .map(|ts| ts.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Topic-partitions held that wait for the rest of their partition.
    pub fn waiting(&self) -> Vec<(usize, i32)> {
        self.held
            .iter()
            .filter(|(p, _)| !self.running.contains(p))
            .flat_map(|(p, ts)| ts.iter().map(move |t| (*t, *p)))
            .collect()
    }

    fn whole(&self, p: i32) -> bool {
        self.held.get(&p).is_some_and(|ts| ts.len() == self.topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eager_assignment_starts_every_partition_held_whole() {
        let mut c = CoPartitions::new(3);
        let all: Vec<(usize, i32)> = (0..3).flat_map(|t| [(t, 0), (t, 4)]).collect();
        assert_eq!(c.assign(all.clone()), vec![0, 4]);
        assert!(c.waiting().is_empty());
        assert_eq!(c.revoke(all), vec![0, 4]);
        assert!(!c.running(0) && !c.running(4));
        assert!(c.held(0).is_empty());
    }

    #[test]
    fn a_partition_handed_over_topic_by_topic_starts_when_the_last_topic_arrives() {
        let mut c = CoPartitions::new(3);
        assert!(c.assign([(0, 2)]).is_empty());
        assert!(c.assign([(2, 2)]).is_empty());
        assert_eq!(c.waiting(), vec![(0, 2), (2, 2)]);
        assert!(!c.running(2));
        assert_eq!(c.assign([(1, 2)]), vec![2]);
        assert!(c.running(2));
        assert!(c.waiting().is_empty());
        // assigned again (a duplicate callback): nothing starts twice
        assert!(c.assign([(1, 2)]).is_empty());
    }

    #[test]
    fn losing_one_topic_stops_the_partition_and_the_rest_waits() {
        let mut c = CoPartitions::new(2);
        c.assign([(0, 1), (1, 1), (0, 3), (1, 3)]);
        assert_eq!(c.revoke([(1, 1)]), vec![1]);
        assert!(!c.running(1) && c.running(3));
        assert_eq!(c.waiting(), vec![(0, 1)]);
        assert_eq!(c.held(1), vec![0]);
        // the rest going later stops nothing more
        assert!(c.revoke([(0, 1)]).is_empty());
        assert!(c.waiting().is_empty());
        // and it can come back whole
        assert_eq!(c.assign([(1, 1), (0, 1)]), vec![1]);
    }

    #[test]
    fn revoking_what_is_not_held_changes_nothing() {
        let mut c = CoPartitions::new(1);
        c.assign([(0, 0)]);
        assert!(c.revoke([(0, 5)]).is_empty());
        assert!(c.running(0));
    }

    #[test]
    fn unknown_topics_are_ignored() {
        let mut c = CoPartitions::new(1);
        assert!(c.assign([(7, 0)]).is_empty());
        assert!(c.waiting().is_empty());
    }

    #[test]
    fn every_start_gets_a_new_epoch_and_a_stopped_partition_has_none() {
        let e = Epochs::default();
        let v0 = e.version();
        let a = e.start(3);
        assert_eq!(e.current(3), Some(a));
        assert_ne!(e.version(), v0);
        e.stop(3);
        assert_eq!(e.current(3), None);
        let b = e.start(3);
        assert!(b > a);
        assert_eq!(e.snapshot(), BTreeMap::from([(3, b)]));
    }
}
