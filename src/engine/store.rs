//! The engine's customer store: lookup and insertion through the index, touching,
//! eviction (idle past the horizon, or the least recently active at the cap), and the
//! changed and forgotten customers a checkpoint writes.

use super::state::{Customer, NEVER};
use super::{cadence_bin, index, prefetch, Engine};
use crate::signals::SignalKind;
use std::cmp::Reverse;

impl Engine {
    pub(super) fn find(&self, hash: u64, id: &str) -> Option<usize> {
        let customers = &self.customers;
        self.index
            .find(hash, |i| customers[i as usize].id == id)
            .map(|i| i as usize)
    }

    pub(super) fn find_or_insert(&mut self, hash: u64, id: &str) -> usize {
        if let Some(i) = self.find(hash, id) {
            return i;
        }
        if self.max_customers > 0 && self.customers() as u64 >= self.max_customers {
            self.evict_oldest(1 + self.customers() - self.max_customers as usize);
        }
        let idx = match self.free.pop() {
            Some(i) => {
                self.customers[i as usize] = Customer::new(id);
                i as usize
            }
            None => {
                self.customers.push(Customer::new(id));
                self.customers.len() - 1
            }
        };
        let customers = &self.customers;
        self.index
            .insert(hash, idx as u32, |i| index::hash(&customers[i as usize].id));
        self.tiers.insert();
        self.touch(idx);
        self.stats.customers_created += 1;
        self.idle.push(Reverse((i64::MIN, idx as u32)));
        idx
    }

    pub(super) fn horizon_ms(&self) -> i64 {
        i64::from(self.cfg.engine().evict_after_days) * crate::time::DAY_MS
    }

    /// Forgets the customers due for eviction at the current stream time: no event for
    /// `evict_after_days`, and no open alert unless its silence is part of it.
    pub(super) fn evict_due(&mut self) {
        let horizon = self.horizon_ms();
        if horizon == 0 || self.stream_time == NEVER {
            return;
        }
        let now = self.stream_time.0;
        let bucket = self.cfg.engine().bucket_ms();
        while let Some(&Reverse((due, idx))) = self.idle.peek() {
            if due > now {
                return;
            }
            self.idle.pop();
            let c = &self.customers[idx as usize];
            let eligible = c.last_seen.0.saturating_add(horizon);
            if eligible > due {
                // active since: its entry moves to its new instant
                self.idle.push(Reverse((eligible, idx)));
                continue;
            }
            let silent_alert = c.episode.active & SignalKind::Inactivity.bit() != 0;
            if c.episode.open && !silent_alert {
                self.idle.push(Reverse((now.max(due) + bucket, idx)));
                continue;
            }
            self.remove(idx as usize);
            self.stats.evicted_idle += 1;
        }
    }

    /// Forgets the `n` least recently active customers (at the cap).
    pub(super) fn evict_oldest(&mut self, mut n: usize) {
        while n > 0 {
            let Some(Reverse((key, idx))) = self.idle.pop() else {
                return;
            };
            let last = self.customers[idx as usize].last_seen.0;
            if last > key {
                self.idle.push(Reverse((last, idx)));
                continue;
            }
            self.remove(idx as usize);
            self.stats.evicted_cap += 1;
            n -= 1;
        }
    }

    /// Takes customer `idx` out: index, distributions, tiers; its position is reused.
    pub(super) fn remove(&mut self, idx: usize) {
        let c = std::mem::replace(&mut self.customers[idx], Customer::new(""));
        self.tiers.remove(c.value_bin);
        if let Some(b) = cadence_bin(&c) {
            self.population.cadence.remove(b);
        }
        if c.gap_bin != 255 {
            self.population.second_order_gap.remove(c.gap_bin);
        }
        let customers = &self.customers;
        let removed = self.index.remove(index::hash(&c.id), idx as u32, |i| {
            index::hash(&customers[i as usize].id)
        });
        debug_assert!(removed, "an indexed customer");
        self.free.push(idx as u32);
        self.evicted.push(c.id);
    }

    /// Asks the CPU to bring a customer's record into cache.
    pub(super) fn prefetch_customer(&self, idx: usize) {
        const LINES: usize = std::mem::size_of::<Customer>().div_ceil(64);
        let base = (&self.customers[idx] as *const Customer).cast::<u8>();
        for line in 0..LINES {
            prefetch(base.wrapping_add(line * 64));
        }
    }

    /// Updates state for one event (everything but evaluation).
    /// Notes that customer `idx`'s state changed.
    pub(super) fn touch(&mut self, idx: usize) {
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        if word >= self.changed_bits.len() {
            self.changed_bits.resize(word + 1, 0);
        }
        if self.changed_bits[word] & bit == 0 {
            self.changed_bits[word] |= bit;
            self.changed.push(idx as u32);
        }
    }

    /// The ids of the customers forgotten since the last call (before
    /// [`Engine::take_changed`], whose records may bring some back): what a changelog
    /// writes tombstones for.
    pub fn take_evicted(&mut self, mut f: impl FnMut(&str)) {
        for id in self.evicted.drain(..) {
            f(&id);
        }
    }

    /// The ids of the customers whose state changed since the last call (each once, in
    /// the order they first changed): what a changelog must write. A new customer
    /// counts as changed.
    pub fn take_changed(&mut self, f: impl FnMut(&str, &Customer)) {
        self.take_changed_up_to(usize::MAX, f);
    }

    /// [`Engine::take_changed`], for the first `limit` of them only: the others stay
    /// changed, for a later call.
    pub fn take_changed_up_to(&mut self, limit: usize, mut f: impl FnMut(&str, &Customer)) {
        if limit >= self.changed.len() {
            for idx in self.changed.drain(..) {
                let c = &self.customers[idx as usize];
                if !c.id.is_empty() {
                    f(&c.id, c);
                }
            }
            self.changed_bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        for idx in self.changed.drain(..limit) {
            let i = idx as usize;
            self.changed_bits[i / 64] &= !(1u64 << (i % 64));
            let c = &self.customers[i];
            if !c.id.is_empty() {
                f(&c.id, c);
            }
        }
    }

    /// How many customers changed since [`Engine::take_changed`].
    pub fn changed_count(&self) -> usize {
        self.changed.len()
    }
}
