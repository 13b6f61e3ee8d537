//! Value tiers by trailing revenue, maintained incrementally.
//!
//! Customers are counted in a log-scale histogram of trailing revenue (512 bins, a
//! sixteenth of an octave each); a customer's tier is decided by how many customers sit in
//! higher bins. The histogram changes by one decrement and one increment per update;
//! the cumulative counts are rebuilt once 1/64 of the customers moved (at most every
//! `REBUILD_EVERY` updates, and on demand), so a lookup is O(1). A customer's revenue is re-registered whenever it is evaluated.

/// Tier names of the alert contract's `value_tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// The rest, including customers without revenue.
    Tail,
    /// Up to the core fraction.
    Core,
    /// The top accounts.
    Key,
}

impl Tier {
    /// Every tier, smallest accounts first.
    pub const ALL: [Tier; 3] = [Tier::Tail, Tier::Core, Tier::Key];

    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Key => "key",
            Tier::Core => "core",
            Tier::Tail => "tail",
        }
    }
}

const BINS: usize = 512;
const REBUILD_EVERY: u32 = 4096;

/// Revenue histogram of an engine's customers.
#[derive(Debug, Clone)]
pub struct Tiers {
    counts: Box<[u32; BINS]>,
    above: Box<[u32; BINS]>,
    total: u32,
    dirty: u32,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            counts: Box::new([0; BINS]),
            above: Box::new([0; BINS]),
            total: 0,
            dirty: 0,
        }
    }
}

impl Tiers {
    /// The bin of a revenue.
    pub fn bin_of(revenue: f64) -> u16 {
        if revenue <= 0.0 || revenue.is_nan() {
            return 0;
        }
        // log2(1 + revenue) in sixteenths of an octave, read off the float's bits
        // (exponent, then the top 4 bits of the mantissa) instead of calling log2: this
        // runs on every evaluation.
        let bits = (1.0 + revenue).to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let sixteenth = ((bits >> 48) & 0xf) as i64;
        (1 + exponent * 16 + sixteenth).clamp(1, BINS as i64 - 1) as u16
    }

    /// Counts a new customer (revenue 0).
    pub fn insert(&mut self) {
        self.counts[0] += 1;
        self.total += 1;
        self.changed();
    }

    /// Small populations rebuild on every change, large ones once a fraction of their
    /// customers moved (at most every [`REBUILD_EVERY`] changes).
    fn changed(&mut self) {
        self.dirty += 1;
        if self.dirty >= (self.total / 64).clamp(1, REBUILD_EVERY) {
            self.rebuild();
        }
    }

    /// Moves a customer from bin `old` to the bin of `revenue`; returns the new bin.
    pub fn update(&mut self, old: u16, revenue: f64) -> u16 {
        let new = Self::bin_of(revenue);
        if new != old {
            self.counts[old as usize] -= 1;
            self.counts[new as usize] += 1;
            self.changed();
        }
        new
    }

    /// Forgets a customer counted in `bin`.
    pub fn remove(&mut self, bin: u16) {
        self.counts[bin as usize] -= 1;
        self.total -= 1;
        self.changed();
    }

    /// Recomputes the cumulative counts now.
    pub fn rebuild(&mut self) {
        let mut acc = 0;
        for b in (0..BINS).rev() {
            self.above[b] = acc;
            acc += self.counts[b];
        }
        self.dirty = 0;
    }

    /// Rebuilds if anything changed since the last rebuild.
    pub fn refresh(&mut self) {
        if self.dirty > 0 {
            self.rebuild();
        }
    }

    /// The tier of a customer in `bin`: key if fewer than `key_fraction` of all customers
    /// have more revenue, and so on. Customers without revenue are tail.
    pub fn tier(&self, bin: u16, key_fraction: f64, core_fraction: f64) -> Tier {
        if bin == 0 || self.total == 0 {
            return Tier::Tail;
        }
        let above = f64::from(self.above[bin as usize]);
        let total = f64::from(self.total);
        if above < key_fraction * total {
            Tier::Key
        } else if above < core_fraction * total {
            Tier::Core
        } else {
            Tier::Tail
        }
    }

    /// Fraction of customers with less revenue (ties count half), 0..1.
    pub fn percentile(&self, bin: u16) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let above = f64::from(self.above[bin as usize]);
        let same = f64::from(self.counts[bin as usize]);
        (1.0 - (above + 0.5 * same) / f64::from(self.total)).clamp(0.0, 1.0)
    }

    /// Customers counted.
    pub fn total(&self) -> u32 {
        self.total
    }
}

impl Tiers {
    pub(crate) fn encode(&self, w: &mut super::codec::Writer<'_>) {
        for v in self.counts.iter().chain(self.above.iter()) {
            w.u32(*v);
        }
        w.u32(self.total);
        w.u32(self.dirty);
    }

    pub(crate) fn decode(
        r: &mut super::codec::Reader<'_>,
    ) -> Result<Tiers, super::codec::CodecError> {
        let mut t = Tiers::default();
        for v in t.counts.iter_mut() {
            *v = r.u32()?;
        }
        for v in t.above.iter_mut() {
            *v = r.u32()?;
        }
        t.total = r.u32()?;
        t.dirty = r.u32()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_fifth_by_revenue_is_key() {
        let mut t = Tiers::default();
        let mut bins = Vec::new();
        for i in 1..=100 {
            t.insert();
            bins.push(t.update(0, f64::from(i) * 100.0));
        }
        t.rebuild();
        let key = bins
            .iter()
            .filter(|b| t.tier(**b, 0.2, 0.5) == Tier::Key)
            .count();
        let core = bins
            .iter()
            .filter(|b| t.tier(**b, 0.2, 0.5) == Tier::Core)
            .count();
        // bins are a sixteenth of an octave: the split is close to, not exactly, 20 / 30
        assert!((19..=22).contains(&key), "{key}");
        assert!((27..=33).contains(&core), "{core}");
        assert_eq!(t.tier(bins[0], 0.2, 0.5), Tier::Tail);
        assert!(t.percentile(bins[99]) > 0.95);
    }

    #[test]
    fn no_revenue_is_never_key() {
        let mut t = Tiers::default();
        t.insert();
        t.rebuild();
        assert_eq!(t.tier(0, 0.2, 0.5), Tier::Tail);
    }
}
