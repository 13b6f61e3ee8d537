//! The deadline queue: customers due for re-evaluation as stream time passes, ordered by
//! due time, so that advancing time costs O(customers due), never O(all customers).
//! (A calendar of hourly slots rather than a heap: see [`Deadlines`].)
//!
//! Each customer keeps the instant of its live entry (`Customer::scheduled`). Moving a
//! deadline later pushes nothing (the earlier entry fires, finds nothing due, and
//! reschedules); moving it earlier pushes a new entry and the old one becomes stale,
//! recognised on pop because it no longer matches. So the heap holds about one entry
//! per customer with a deadline.

use std::collections::BTreeMap;

use crate::time::Timestamp;

/// Width of one slot of the calendar, ms.
const SLOT_MS: i64 = 3_600_000;

/// A calendar queue of `(due, customer index)`: entries are appended to the slot (hour)
/// they fall in, and a slot is sorted once, when it comes due. Deadlines cluster (a
/// bucket boundary makes every active customer due within a day), and appending and
/// reading slots sequentially is far cheaper than a binary heap of a million entries
/// whose every pop walks ~20 cache lines. Entries pop in `(due, index)` order, which
/// keeps the engine deterministic.
#[derive(Debug, Default)]
pub struct Deadlines {
    slots: BTreeMap<i64, Slot>,
    len: usize,
}

#[derive(Debug, Default)]
struct Slot {
    /// Sorted descending once the slot is being drained (pop from the end).
    entries: Vec<(i64, u32)>,
    sorted: bool,
}

impl Deadlines {
    /// Schedules `idx` at `due`, given its currently scheduled instant. Returns the
    /// instant it is now scheduled at.
    pub fn schedule(&mut self, idx: u32, due: Timestamp, scheduled: Timestamp) -> Timestamp {
        if due < scheduled {
            let slot = self.slots.entry(due.0.div_euclid(SLOT_MS)).or_default();
            slot.entries.push((due.0, idx));
            slot.sorted = false;
            self.len += 1;
            due
        } else {
            scheduled
        }
    }

    /// Pops the next entry due at or before `now`, as `(due, idx)`. The caller drops it
    /// if it no longer matches the customer's scheduled instant (stale).
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, u32)> {
        loop {
            let mut first = self.slots.first_entry()?;
            if *first.key() * SLOT_MS > now.0 {
                return None;
            }
            let slot = first.get_mut();
            if !slot.sorted {
                slot.entries.sort_unstable_by(|a, b| b.cmp(a));
                slot.sorted = true;
            }
            match slot.entries.last() {
                Some(&(due, idx)) if due <= now.0 => {
                    slot.entries.pop();
                    self.len -= 1;
                    if slot.entries.is_empty() {
                        first.remove();
                    }
                    return Some((Timestamp(due), idx));
                }
                Some(_) => return None,
                None => {
                    first.remove();
                }
            }
        }
    }

    /// Entries in the queue (live and stale).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved by the queue.
    pub fn bytes(&self) -> usize {
        self.slots
            .values()
            .map(|s| s.entries.capacity() * std::mem::size_of::<(i64, u32)>() + 64)
            .sum()
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

    #[test]
    fn entries_across_and_within_slots_pop_in_order() {
        let mut d = Deadlines::default();
        let never = Timestamp(i64::MAX);
        let hour = 3_600_000;
        // pushed out of order, some in the same hour, some far apart
        for (due, idx) in [
            (5 * hour + 10, 7),
            (hour + 5, 3),
            (5 * hour + 10, 2),
            (hour + 1, 9),
            (-hour, 1),
        ] {
            d.schedule(idx, Timestamp(due), never);
        }
        // an entry later in a slot that is partly due stays queued
        assert_eq!(d.pop_due(Timestamp(hour + 2)), Some((Timestamp(-hour), 1)));
        assert_eq!(
            d.pop_due(Timestamp(hour + 2)),
            Some((Timestamp(hour + 1), 9))
        );
        assert_eq!(d.pop_due(Timestamp(hour + 2)), None);
        // new entries into a slot being drained keep the order
        d.schedule(4, Timestamp(hour + 3), never);
        let rest: Vec<_> = std::iter::from_fn(|| d.pop_due(Timestamp(10 * hour))).collect();
        assert_eq!(
            rest,
            vec![
                (Timestamp(hour + 3), 4),
                (Timestamp(hour + 5), 3),
                (Timestamp(5 * hour + 10), 2),
                (Timestamp(5 * hour + 10), 7)
            ]
        );
        assert!(d.is_empty());
    }
}
