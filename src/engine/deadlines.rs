//! The deadline queue: customers due for re-evaluation as stream time passes, ordered by
//! due time, so that advancing time costs O(customers due), never O(all customers).
//!
//! Each customer keeps the instant of its live entry (`Customer::scheduled`). Moving a
//! deadline later pushes nothing (the earlier entry fires, finds nothing due, and
//! reschedules); moving it earlier pushes a new entry and the old one becomes stale,
//! recognised on pop because it no longer matches. So the heap holds about one entry
//! per customer with a deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::Timestamp;

/// Min-heap of `(due, customer index)`; ties pop in customer index order, which keeps
/// the engine deterministic.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(i64, u32)>>,
}

impl Deadlines {
    /// Schedules `idx` at `due`, given its currently scheduled instant. Returns the
    /// instant it is now scheduled at.
    pub fn schedule(&mut self, idx: u32, due: Timestamp, scheduled: Timestamp) -> Timestamp {
        if due < scheduled {
            self.heap.push(Reverse((due.0, idx)));
            due
        } else {
            scheduled
        }
    }

    /// Pops the next entry due at or before `now`, as `(due, idx)`. The caller drops it
    /// if it no longer matches the customer's scheduled instant (stale).
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, u32)> {
        match self.heap.peek() {
            Some(Reverse((due, _))) if *due <= now.0 => {
                let Reverse((due, idx)) = self.heap.pop()?;
                Some((Timestamp(due), idx))
            }
            _ => None,
        }
    }

    /// Entries in the queue (live and stale).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Bytes reserved by the queue.
    pub fn bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<(i64, u32)>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_due_order_and_only_what_is_due() {
        let mut d = Deadlines::default();
        let never = Timestamp(i64::MAX);
        d.schedule(2, Timestamp(30), never);
        d.schedule(1, Timestamp(10), never);
        d.schedule(3, Timestamp(10), never);
        assert_eq!(d.pop_due(Timestamp(5)), None);
        assert_eq!(d.pop_due(Timestamp(20)), Some((Timestamp(10), 1)));
        assert_eq!(d.pop_due(Timestamp(20)), Some((Timestamp(10), 3)));
        assert_eq!(d.pop_due(Timestamp(20)), None);
        assert_eq!(d.pop_due(Timestamp(30)), Some((Timestamp(30), 2)));
    }

    #[test]
    fn moving_a_deadline_later_pushes_nothing() {
        let mut d = Deadlines::default();
        let s = d.schedule(1, Timestamp(10), Timestamp(i64::MAX));
        let s2 = d.schedule(1, Timestamp(50), s);
        assert_eq!(s2, Timestamp(10));
        assert_eq!(d.len(), 1);
        let s3 = d.schedule(1, Timestamp(5), s2);
        assert_eq!(s3, Timestamp(5));
        assert_eq!(d.len(), 2, "the old entry stays, stale");
    }
}
