//! Population baselines per engine: what "normal" looks like across all of its customers.
//!
//! - Daily activity (orders, engagement) in a ring of [`DAYS`] days, to tell a decline
//!   shared by everyone (a holiday week, a gap in an upstream feed) from a customer's own:
//!   [`Population::factor`] is the population's activity over a period relative to its
//!   activity before it, and signals measure a customer against that.
//! - Distributions of per-customer order cadence and of first-to-second-order gaps
//!   (log-scale histograms), which give priors for customers with little history.
//!
//! Only complete days are used, so the answers change once per day of stream time and
//! are cached per day.

use crate::time::{Timestamp, DAY_MS};

/// Days of population activity kept.
pub const DAYS: usize = 128;
/// Days of history a factor compares against.
const BASE_DAYS: i64 = 84;
/// Fewest days of comparison history for a factor other than 1.
const MIN_BASE_DAYS: i64 = 14;

/// Which activity a factor is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Orders placed.
    Orders,
    /// Engagement events.
    Engagement,
    /// Orders and engagement together.
    Any,
}

/// A histogram over log-scaled days, for quantiles of gaps.
#[derive(Debug, Clone)]
pub struct LogHistogram {
    counts: [u32; 64],
    total: u32,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            counts: [0; 64],
            total: 0,
        }
    }
}

const BINS_PER_OCTAVE: f64 = 6.0;

impl LogHistogram {
    /// The bin of a duration in days.
    pub fn bin_of(days: f64) -> u8 {
        ((days.max(0.0) + 1.0).log2() * BINS_PER_OCTAVE).min(63.0) as u8
    }
    fn days_of(bin: u8) -> f64 {
        // geometric middle of the bin
        2f64.powf((f64::from(bin) + 0.5) / BINS_PER_OCTAVE) - 1.0
    }
    /// Counts one sample in `bin`.
    pub fn add(&mut self, bin: u8) {
        self.counts[bin as usize] += 1;
        self.total += 1;
    }
    /// Removes one sample from `bin`.
    pub fn remove(&mut self, bin: u8) {
        if self.counts[bin as usize] > 0 {
            self.counts[bin as usize] -= 1;
            self.total -= 1;
        }
    }
    /// Samples counted.
    pub fn total(&self) -> u32 {
        self.total
    }
    /// The `q`-quantile in days, if any sample.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let target = (q * f64::from(self.total)).ceil().max(1.0) as u32;
        let mut acc = 0;
        for (b, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target {
                return Some(Self::days_of(b as u8));
            }
        }
        None
    }
}

/// Population state of one engine.
#[derive(Debug, Clone)]
pub struct Population {
    orders: [f64; DAYS],
    engagement: [f64; DAYS],
    /// The day each slot counts (the latest day recorded in it): a slot belongs to one
    /// day, so an event dated far ahead claims its own slot only, and never clears the
    /// others' days (as a ring that follows the latest day did).
    slot_day: [i64; DAYS],
    head_day: i64,
    first_day: i64,
    /// Per-customer mean gap between orders (customers with 2+ orders).
    pub cadence: LogHistogram,
    /// First-to-second-order gaps.
    pub second_order_gap: LogHistogram,
    cache: Option<Cache>,
    priors: Option<(i64, (f64, f64))>,
}

#[derive(Debug, Clone)]
struct Cache {
    day: i64,
    prefix_orders: [f64; DAYS + 1],
    prefix_engagement: [f64; DAYS + 1],
}

impl Default for Population {
    fn default() -> Self {
        Population {
            orders: [0.0; DAYS],
            engagement: [0.0; DAYS],
            slot_day: [i64::MIN; DAYS],
            head_day: i64::MIN,
            first_day: i64::MAX,
            cadence: LogHistogram::default(),
            second_order_gap: LogHistogram::default(),
            cache: None,
            priors: None,
        }
    }
}

fn slot(day: i64) -> usize {
    day.rem_euclid(DAYS as i64) as usize
}

impl Population {
    /// Counts activity at `t`: in the slot of its day, which a later day of the same
    /// slot (`DAYS` days on) takes over. The counts are the same in whatever order the
    /// events come.
    pub fn record(&mut self, t: Timestamp, orders: f64, engagement: f64) {
        let d = t.0.div_euclid(DAY_MS);
        let s = slot(d);
        if d < self.slot_day[s] {
            return;
        }
        if d > self.slot_day[s] {
            self.slot_day[s] = d;
            self.orders[s] = 0.0;
            self.engagement[s] = 0.0;
        }
        self.head_day = self.head_day.max(d);
        self.first_day = self.first_day.min(d);
        self.orders[s] += orders;
        self.engagement[s] += engagement;
    }

    /// The day of every slot, for the engine's state record.
    pub(crate) fn slot_days(&self) -> &[i64; DAYS] {
        &self.slot_day
    }

    /// Sets the day of every slot (from the engine's state record); `None` for a
    /// record written before slots had days: each slot then holds the day of the
    /// `DAYS` up to the latest one that maps to it, as the ring that followed the
    /// latest day held them.
    pub(crate) fn set_slot_days(&mut self, days: Option<[i64; DAYS]>) {
        self.slot_day = days.unwrap_or_else(|| {
            let head = self.head_day;
            std::array::from_fn(|s| {
                if head == i64::MIN {
                    i64::MIN
                } else {
                    head - (head - s as i64).rem_euclid(DAYS as i64)
                }
            })
        });
    }

    fn day_value(&self, which: Activity, d: i64) -> f64 {
        if self.slot_day[slot(d)] != d {
            return 0.0;
        }
        let s = slot(d);
        match which {
            Activity::Orders => self.orders[s],
            Activity::Engagement => self.engagement[s],
            Activity::Any => self.orders[s] + self.engagement[s],
        }
    }

    fn cache_for(&mut self, today: i64) -> &Cache {
        if self.cache.as_ref().map(|c| c.day) != Some(today) {
            let mut c = Cache {
                day: today,
                prefix_orders: [0.0; DAYS + 1],
                prefix_engagement: [0.0; DAYS + 1],
            };
            for i in 0..DAYS {
                let d = today - DAYS as i64 + i as i64;
                c.prefix_orders[i + 1] = c.prefix_orders[i] + self.day_value(Activity::Orders, d);
                c.prefix_engagement[i + 1] =
                    c.prefix_engagement[i] + self.day_value(Activity::Engagement, d);
            }
            self.cache = Some(c);
        }
        self.cache.as_ref().expect("just filled")
    }

    /// Days between the first activity this engine saw and `now` (0 before any).
    pub fn observed_days(&self, now: Timestamp) -> f64 {
        if self.first_day == i64::MAX {
            0.0
        } else {
            (now.0 - self.first_day * DAY_MS).max(0) as f64 / DAY_MS as f64
        }
    }

    /// The first instant this engine saw activity at (day resolution).
    pub fn observed_since(&self) -> Timestamp {
        if self.first_day == i64::MAX {
            Timestamp(i64::MAX / 2)
        } else {
            Timestamp(self.first_day * DAY_MS)
        }
    }

    /// A learned duration (days) is trusted only once the engine has watched for at
    /// least three times as long: before that, only short gaps can have been seen
    /// (right-censoring) and the learned value is biased low.
    pub fn trusted(
        &self,
        learned: Option<f64>,
        samples: u32,
        min_samples: u32,
        now: Timestamp,
    ) -> Option<f64> {
        learned.filter(|d| samples >= min_samples && self.observed_days(now) >= 3.0 * d)
    }

    /// Drops cached answers (after late data, or before a final snapshot).
    pub fn invalidate(&mut self) {
        self.cache = None;
        self.priors = None;
    }

    /// The population priors (typical cadence, second-order time), computed by `f` at
    /// most once per day of stream time.
    pub fn priors(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&Population) -> (f64, f64),
    ) -> (f64, f64) {
        let today = now.0.div_euclid(DAY_MS);
        match self.priors {
            Some((d, p)) if d == today => p,
            _ => {
                let p = f(self);
                self.priors = Some((today, p));
                p
            }
        }
    }

    /// The population's activity from `from` to `now` relative to its rate over the
    /// weeks before, clamped to `min_factor..=1`. 1 when there is too little history to
    /// tell. Complete days only.
    pub fn factor(
        &mut self,
        which: Activity,
        from: Timestamp,
        now: Timestamp,
        min_factor: f64,
    ) -> f64 {
        let today = now.0.div_euclid(DAY_MS);
        let from_d = from.0.div_euclid(DAY_MS);
        let period = today - from_d;
        let base_start = (today - BASE_DAYS).max(self.first_day);
        let base = from_d - base_start;
        if period <= 0 || base < MIN_BASE_DAYS || today - base_start > DAYS as i64 {
            return 1.0;
        }
        let c = self.cache_for(today);
        let idx = |d: i64| (d - (today - DAYS as i64)) as usize;
        let sum = |a: i64, b: i64| -> f64 {
            let (lo, hi) = (idx(a), idx(b));
            match which {
                Activity::Orders => c.prefix_orders[hi] - c.prefix_orders[lo],
                Activity::Engagement => c.prefix_engagement[hi] - c.prefix_engagement[lo],
                Activity::Any => {
                    c.prefix_orders[hi] - c.prefix_orders[lo] + c.prefix_engagement[hi]
                        - c.prefix_engagement[lo]
                }
            }
        };
        let base_rate = sum(base_start, from_d) / base as f64;
        if base_rate <= 0.0 {
            return 1.0;
        }
        let rate = sum(from_d, today) / period as f64;
        (rate / base_rate).clamp(min_factor, 1.0)
    }
}

impl LogHistogram {
    pub(crate) fn encode(&self, w: &mut super::codec::Writer<'_>) {
        for c in self.counts {
            w.u32(c);
        }
        w.u32(self.total);
    }

    pub(crate) fn decode(
        r: &mut super::codec::Reader<'_>,
    ) -> Result<LogHistogram, super::codec::CodecError> {
        let mut h = LogHistogram::default();
        for c in &mut h.counts {
            *c = r.u32()?;
        }
        h.total = r.u32()?;
        Ok(h)
    }
}

impl Population {
    /// Its state; the prefix-sum cache is left out (a pure function of the rest),
    /// the day's priors are kept (they are computed once a day, not on every change).
    pub(crate) fn encode(&self, w: &mut super::codec::Writer<'_>) {
        for v in self.orders.iter().chain(self.engagement.iter()) {
            w.f64(*v);
        }
        w.i64(self.head_day);
        w.i64(self.first_day);
        self.cadence.encode(w);
        self.second_order_gap.encode(w);
        match self.priors {
            Some((d, (a, b))) => {
                w.u8(1);
                w.i64(d);
                w.f64(a);
                w.f64(b);
            }
            None => w.u8(0),
        }
    }

    pub(crate) fn decode(
        r: &mut super::codec::Reader<'_>,
    ) -> Result<Population, super::codec::CodecError> {
        let mut p = Population::default();
        for v in p.orders.iter_mut() {
            *v = r.f64()?;
        }
        for v in p.engagement.iter_mut() {
            *v = r.f64()?;
        }
        p.head_day = r.i64()?;
        p.first_day = r.i64()?;
        p.cadence = LogHistogram::decode(r)?;
        p.second_order_gap = LogHistogram::decode(r)?;
        p.priors = if r.bool()? {
            Some((r.i64()?, (r.f64()?, r.f64()?)))
        } else {
            None
        };
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: i64) -> Timestamp {
        Timestamp(d * DAY_MS + 3_600_000)
    }

    #[test]
    fn a_day_far_ahead_takes_its_own_slot_only_and_order_does_not_matter() {
        let days: Vec<i64> = (1000..1100).collect();
        let mut in_order = Population::default();
        for d in &days {
            in_order.record(day(*d), 1.0, 2.0);
        }
        // The same days with one dated 300 days ahead in the middle, and reversed.
        let mut with_outlier = Population::default();
        for (i, d) in days.iter().enumerate() {
            if i == 50 {
                with_outlier.record(day(1400), 1.0, 0.0);
            }
            with_outlier.record(day(*d), 1.0, 2.0);
        }
        let mut reversed = Population::default();
        for d in days.iter().rev() {
            reversed.record(day(*d), 1.0, 2.0);
        }
        for d in 1000..1100 {
            let want = in_order.day_value(Activity::Orders, d);
            assert_eq!(want, 1.0);
            assert_eq!(reversed.day_value(Activity::Orders, d), want, "day {d}");
            // only the day sharing the outlier's slot (1400 - 3 * 128 = 1016) is lost
            let lost = if d == 1016 { 0.0 } else { want };
            assert_eq!(with_outlier.day_value(Activity::Orders, d), lost, "day {d}");
        }
    }

    #[test]
    fn steady_population_has_factor_one() {
        let mut p = Population::default();
        for d in 0..100 {
            p.record(day(d), 10.0, 50.0);
        }
        assert_eq!(p.factor(Activity::Orders, day(80), day(100), 0.1), 1.0);
    }

    #[test]
    fn a_shared_dip_shows_in_the_factor() {
        let mut p = Population::default();
        for d in 0..100 {
            let orders = if (90..100).contains(&d) { 3.0 } else { 10.0 };
            p.record(day(d), orders, 0.0);
        }
        let f = p.factor(Activity::Orders, day(90), day(100), 0.1);
        assert!((f - 0.3).abs() < 1e-9, "{f}");
        // an upstream gap: nothing at all for a week
        let mut p = Population::default();
        for d in 0..93 {
            p.record(day(d), 10.0, 0.0);
        }
        assert_eq!(p.factor(Activity::Orders, day(93), day(100), 0.1), 0.1);
    }

    #[test]
    fn too_little_history_means_no_correction() {
        let mut p = Population::default();
        for d in 0..10 {
            p.record(day(d), if d > 5 { 0.0 } else { 10.0 }, 0.0);
        }
        assert_eq!(p.factor(Activity::Orders, day(5), day(10), 0.1), 1.0);
    }

    #[test]
    fn log_histogram_quantiles_are_close_to_the_data() {
        let mut h = LogHistogram::default();
        for d in 1..=100 {
            h.add(LogHistogram::bin_of(f64::from(d)));
        }
        let median = h.quantile(0.5).unwrap();
        assert!((40.0..=60.0).contains(&median), "{median}");
        let p80 = h.quantile(0.8).unwrap();
        assert!((70.0..=92.0).contains(&p80), "{p80}");
    }
}
