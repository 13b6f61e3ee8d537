//! Per-customer rolling windows: a fixed ring of time buckets in event time.
//!
//! Bucket `n` covers `[n * width, (n + 1) * width)`. The ring keeps the latest
//! [`RING`] buckets up to `head`; writing a newer bucket clears the ones it skips. Reading
//! at an instant never mutates: buckets newer than `head` are empty, buckets older than
//! the ring are gone. The recent window is the `recent` buckets ending with the one that
//! holds `now` (so it includes the current, partial bucket); the baseline is the
//! `baseline` buckets before it. Durations are clipped to the customer's first event so
//! a new customer's rates are not diluted by time before they existed.

use crate::time::{Timestamp, DAY_MS};

/// Buckets per customer ring (recent + baseline at most this).
pub const RING: usize = crate::config::MAX_RING_BUCKETS as usize;

/// One bucket of activity. 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct Bucket {
    /// Order value minus refunds and cancellations (may go negative within a bucket).
    pub value: f32,
    /// Sum of `amount * discount_pct / 100` over orders: discount granted, in value.
    pub discount_value: f32,
    /// Orders placed.
    pub orders: u16,
    /// Engagement events (NPS answers included).
    pub engagement: u16,
    /// Discount requests (tickets of category `discount_request`).
    pub requests: u8,
    /// Tickets opened.
    pub tickets: u8,
    /// Weighted support trouble points (see `signals::support_tension`).
    pub trouble: u8,
    /// Trouble by kind: four 2-bit saturating counters (see [`TroubleKind`]), so that
    /// explanations name what happened.
    pub kinds: u8,
}

/// What a trouble point was for, counted per bucket in [`Bucket::kinds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TroubleKind {
    /// A ticket escalated.
    Escalation = 0,
    /// A ticket reopened.
    Reopening = 1,
    /// A ticket resolved with CSAT 1 or 2.
    PoorCsat = 2,
    /// A ticket opened urgent, or as a complaint or a cancellation.
    SevereOpening = 3,
}

impl TroubleKind {
    /// All kinds, in counter order.
    pub const ALL: [TroubleKind; 4] = [
        TroubleKind::Escalation,
        TroubleKind::Reopening,
        TroubleKind::PoorCsat,
        TroubleKind::SevereOpening,
    ];

    /// The `kinds` increment of one event of this kind.
    pub fn one(self) -> u8 {
        1 << (2 * self as u8)
    }
}

/// Adds two `kinds` bytes counter by counter, each saturating at 3.
fn add_kinds(a: u8, b: u8) -> u8 {
    let mut out = 0;
    for k in 0..4 {
        let sum = ((a >> (2 * k)) & 3) + ((b >> (2 * k)) & 3);
        out |= sum.min(3) << (2 * k);
    }
    out
}

/// What one event adds to its bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delta {
    /// Value added (negative for refunds).
    pub value: f32,
    /// Discount value added.
    pub discount_value: f32,
    /// Orders added.
    pub orders: u16,
    /// Engagement events added.
    pub engagement: u16,
    /// Discount requests added.
    pub requests: u8,
    /// Tickets added.
    pub tickets: u8,
    /// Trouble points added.
    pub trouble: u8,
    /// Trouble kinds added ([`TroubleKind::one`]).
    pub kinds: u8,
}

impl Bucket {
    fn add(&mut self, d: &Delta) {
        self.value += d.value;
        self.discount_value += d.discount_value;
        self.orders = self.orders.saturating_add(d.orders);
        self.engagement = self.engagement.saturating_add(d.engagement);
        self.requests = self.requests.saturating_add(d.requests);
        self.tickets = self.tickets.saturating_add(d.tickets);
        self.trouble = self.trouble.saturating_add(d.trouble);
        self.kinds = add_kinds(self.kinds, d.kinds);
    }
}

/// Totals over a span of buckets, widened so that sums do not saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Net order value.
    pub value: f64,
    /// Discount value.
    pub discount_value: f64,
    /// Orders.
    pub orders: u32,
    /// Engagement events.
    pub engagement: u32,
    /// Discount requests.
    pub requests: u32,
    /// Tickets opened.
    pub tickets: u32,
    /// Trouble points.
    pub trouble: u32,
    /// Trouble events by [`TroubleKind`] (each bucket counts up to 3 of a kind).
    pub kinds: [u32; 4],
    /// Kinds (bit per [`TroubleKind`]) of which some bucket counted 3, the most it
    /// holds: their totals are lower bounds.
    pub kinds_saturated: u8,
}

impl Totals {
    fn add(&mut self, b: &Bucket) {
        self.value += f64::from(b.value);
        self.discount_value += f64::from(b.discount_value);
        self.orders += u32::from(b.orders);
        self.engagement += u32::from(b.engagement);
        self.requests += u32::from(b.requests);
        self.tickets += u32::from(b.tickets);
        self.trouble += u32::from(b.trouble);
        for (k, n) in self.kinds.iter_mut().enumerate() {
            let c = (b.kinds >> (2 * k)) & 3;
            *n += u32::from(c);
            self.kinds_saturated |= u8::from(c == 3) << k;
        }
    }
}

/// The ring of buckets of one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring {
    buckets: [Bucket; RING],
    /// Newest bucket number written; `i32::MIN` when empty.
    head: i32,
}

impl Ring {
    /// Version 3: the head, a mask of the buckets in use, and of each one in use a mask
    /// of its non-zero fields followed by those fields (counts as varints).
    #[inline]
    pub(crate) fn encode(&self, w: &mut super::codec::Writer<'_>) {
        const _: () = assert!(RING <= 16, "the bucket mask is 16 bits");
        w.ivar(i64::from(self.head));
        let fields: [u8; RING] = std::array::from_fn(|i| self.buckets[i].fields());
        let used = fields
            .iter()
            .enumerate()
            .fold(0u16, |m, (i, f)| if *f != 0 { m | 1 << i } else { m });
        w.u16(used);
        for (b, f) in self.buckets.iter().zip(fields) {
            if f == 0 {
                continue;
            }
            w.u8(f);
            if f & F_VALUE != 0 {
                w.f32(b.value);
            }
            if f & F_DISCOUNT != 0 {
                w.f32(b.discount_value);
            }
            if f & F_ORDERS != 0 {
                w.var(b.orders.into());
            }
            if f & F_ENGAGEMENT != 0 {
                w.var(b.engagement.into());
            }
            if f & F_REQUESTS != 0 {
                w.u8(b.requests);
            }
            if f & F_TICKETS != 0 {
                w.u8(b.tickets);
            }
            if f & F_TROUBLE != 0 {
                w.u8(b.trouble);
            }
            if f & F_KINDS != 0 {
                w.u8(b.kinds);
            }
        }
    }

    pub(crate) fn decode(
        r: &mut super::codec::Reader<'_>,
    ) -> Result<Ring, super::codec::CodecError> {
        use super::codec::CodecError::Invalid;
        if r.version() == 2 {
            return Ring::decode_v2(r);
        }
        let head = i32::try_from(r.ivar()?).map_err(|_| Invalid("a ring head out of range"))?;
        let mut ring = Ring {
            head,
            ..Ring::default()
        };
        let used = r.u16()?;
        for (i, b) in ring.buckets.iter_mut().enumerate() {
            if used & 1 << i == 0 {
                continue;
            }
            let f = r.u8()?;
            // Every bit of the mask is a field (version 3 added `kinds` as bit 7).
            if f == 0 {
                return Err(Invalid("a bucket's field mask"));
            }
            if f & F_VALUE != 0 {
                b.value = r.f32()?;
            }
            if f & F_DISCOUNT != 0 {
                b.discount_value = r.f32()?;
            }
            if f & F_ORDERS != 0 {
                b.orders = r.var_as()?;
            }
            if f & F_ENGAGEMENT != 0 {
                b.engagement = r.var_as()?;
            }
            if f & F_REQUESTS != 0 {
                b.requests = r.u8()?;
            }
            if f & F_TICKETS != 0 {
                b.tickets = r.u8()?;
            }
            if f & F_TROUBLE != 0 {
                b.trouble = r.u8()?;
            }
            if f & F_KINDS != 0 {
                b.kinds = r.u8()?;
            }
        }
        Ok(ring)
    }

    /// Version 2: the head and every bucket, fixed-width.
    fn decode_v2(r: &mut super::codec::Reader<'_>) -> Result<Ring, super::codec::CodecError> {
        let mut ring = Ring {
            head: r.i32()?,
            ..Ring::default()
        };
        for b in &mut ring.buckets {
            b.value = r.f32()?;
            b.discount_value = r.f32()?;
            b.orders = r.u16()?;
            b.engagement = r.u16()?;
            b.requests = r.u8()?;
            b.tickets = r.u8()?;
            b.trouble = r.u8()?;
        }
        Ok(ring)
    }

    /// A ring of the given buckets (tests of the record layout).
    #[cfg(test)]
    pub(crate) fn from_parts(buckets: [Bucket; RING], head: i32) -> Ring {
        Ring { buckets, head }
    }
}

const F_VALUE: u8 = 1;
const F_DISCOUNT: u8 = 1 << 1;
const F_ORDERS: u8 = 1 << 2;
const F_ENGAGEMENT: u8 = 1 << 3;
const F_REQUESTS: u8 = 1 << 4;
const F_TICKETS: u8 = 1 << 5;
const F_TROUBLE: u8 = 1 << 6;
const F_KINDS: u8 = 1 << 7;

impl Bucket {
    /// Which fields are non-zero (bit for bit: -0.0 counts, so it is kept).
    fn fields(&self) -> u8 {
        let mut f = 0;
        for (on, bit) in [
            (self.value.to_bits() != 0, F_VALUE),
            (self.discount_value.to_bits() != 0, F_DISCOUNT),
            (self.orders != 0, F_ORDERS),
            (self.engagement != 0, F_ENGAGEMENT),
            (self.requests != 0, F_REQUESTS),
            (self.tickets != 0, F_TICKETS),
            (self.trouble != 0, F_TROUBLE),
            (self.kinds != 0, F_KINDS),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// A bucket with these fields (tests of the record layout).
    #[cfg(test)]
    pub(crate) fn from_fields(
        value: f32,
        discount_value: f32,
        counts: (u16, u16, u8, u8, u8),
    ) -> Bucket {
        let (orders, engagement, requests, tickets, trouble) = counts;
        Bucket {
            value,
            discount_value,
            orders,
            engagement,
            requests,
            tickets,
            trouble,
            kinds: 0,
        }
    }
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buckets: [Bucket::default(); RING],
            head: i32::MIN,
        }
    }
}

/// Result of [`Ring::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Counted in its bucket.
    Yes,
    /// Older than the oldest bucket the ring keeps: not counted.
    TooOld,
}

/// Bucket number of an instant.
pub fn bucket_of(t: Timestamp, width_ms: i64) -> i32 {
    t.0.div_euclid(width_ms)
        .clamp(i64::from(i32::MIN + 1), i64::from(i32::MAX)) as i32
}

fn slot(n: i32) -> usize {
    n.rem_euclid(RING as i32) as usize
}

impl Ring {
    /// Adds `d` to the bucket holding `t`.
    pub fn add(&mut self, t: Timestamp, width_ms: i64, d: &Delta) -> Added {
        let n = bucket_of(t, width_ms);
        if self.head == i32::MIN {
            self.head = n;
        } else if n > self.head {
            let skip = (i64::from(n) - i64::from(self.head)).min(RING as i64) as i32;
            for k in 1..=skip {
                self.buckets[slot(n - skip + k)] = Bucket::default();
            }
            self.head = n;
        } else if i64::from(n) <= i64::from(self.head) - RING as i64 {
            return Added::TooOld;
        }
        self.buckets[slot(n)].add(d);
        Added::Yes
    }

    /// The bucket numbered `n` as seen by a reader (empty if not held).
    pub fn get(&self, n: i32) -> Bucket {
        if self.head == i32::MIN
            || n > self.head
            || i64::from(n) <= i64::from(self.head) - RING as i64
        {
            Bucket::default()
        } else {
            self.buckets[slot(n)]
        }
    }

    /// True when no bucket holds anything at or after bucket `n` (used to stop
    /// re-evaluating customers whose windows can no longer change).
    pub fn empty_from(&self, n: i32) -> bool {
        self.head == i32::MIN || self.head < n
    }

    /// Totals over buckets `from..=to`.
    pub fn totals(&self, from: i32, to: i32) -> Totals {
        let mut t = Totals::default();
        let lo = from.max(self.head.saturating_sub(RING as i32 - 1));
        let hi = to.min(self.head);
        let mut n = lo;
        while n <= hi {
            t.add(&self.buckets[slot(n)]);
            n += 1;
        }
        t
    }
}

/// The window layout at an instant: bounds and durations, independent of any customer
/// except for the clip to their first event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// Bucket holding `now`.
    pub current: i32,
    /// First bucket of the recent window.
    pub recent_from: i32,
    /// First bucket of the baseline.
    pub baseline_from: i32,
    /// Start of the recent window.
    pub recent_start: Timestamp,
    /// Start of the baseline.
    pub baseline_start: Timestamp,
    /// The instant of evaluation.
    pub now: Timestamp,
    /// Bucket width, ms.
    pub width_ms: i64,
}

impl Layout {
    /// Layout at `now` for the given bucket width and window sizes.
    pub fn at(now: Timestamp, width_ms: i64, recent: u32, baseline: u32) -> Layout {
        let current = bucket_of(now, width_ms);
        let recent_from = current - recent as i32 + 1;
        let baseline_from = recent_from - baseline as i32;
        Layout {
            current,
            recent_from,
            baseline_from,
            recent_start: Timestamp(i64::from(recent_from) * width_ms),
            baseline_start: Timestamp(i64::from(baseline_from) * width_ms),
            now,
            width_ms,
        }
    }
}

/// Net order value over the recent window and baseline of `layout` (trailing revenue),
/// read straight from the ring.
pub fn trailing_revenue(ring: &Ring, layout: &Layout) -> f64 {
    ring.totals(layout.baseline_from, layout.current)
        .value
        .max(0.0)
}

/// A customer's windows at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowView {
    /// Bounds.
    pub layout: Layout,
    /// Totals over the recent window.
    pub recent: Totals,
    /// Totals over the baseline.
    pub baseline: Totals,
    /// Days the recent window covers (clipped to the customer's first event).
    pub recent_days: f64,
    /// Days the baseline covers (clipped to the customer's first event).
    pub baseline_days: f64,
    /// The ring read once, by age: `series[k]` is bucket `layout.current - k`.
    pub series: [Bucket; RING],
    /// Buckets (by age) the customer existed in: `series[..lived]`.
    pub lived: usize,
    first_seen: Timestamp,
}

impl WindowView {
    /// Reads `ring` at `layout`; `first_seen` clips the durations.
    pub fn read(ring: &Ring, layout: Layout, first_seen: Timestamp) -> WindowView {
        let mut series = [Bucket::default(); RING];
        for (k, b) in series.iter_mut().enumerate() {
            *b = ring.get(layout.current - k as i32);
        }
        let first = bucket_of(first_seen, layout.width_ms);
        let lived =
            (i64::from(layout.current) - i64::from(first) + 1).clamp(0, RING as i64) as usize;
        WindowView::from_series(series, lived, layout, first_seen)
    }

    fn from_series(
        series: [Bucket; RING],
        lived: usize,
        layout: Layout,
        first_seen: Timestamp,
    ) -> WindowView {
        let recent_n = (layout.current - layout.recent_from + 1) as usize;
        let baseline_n = (layout.recent_from - layout.baseline_from) as usize;
        let mut recent = Totals::default();
        let mut baseline = Totals::default();
        for b in &series[..recent_n.min(RING)] {
            recent.add(b);
        }
        for b in &series[recent_n.min(RING)..(recent_n + baseline_n).min(RING)] {
            baseline.add(b);
        }
        let span = |start: Timestamp, end: Timestamp| -> f64 {
            let s = start.0.max(first_seen.0);
            (end.0.saturating_sub(s).max(0)) as f64 / DAY_MS as f64
        };
        WindowView {
            layout,
            recent,
            baseline,
            recent_days: span(layout.recent_start, layout.now).max(1.0 / 24.0),
            baseline_days: span(layout.baseline_start, layout.recent_start),
            series,
            lived,
            first_seen,
        }
    }

    /// The same windows split differently: `recent` buckets of recent window and
    /// `baseline` before it (without reading the ring again).
    pub fn resplit(&self, recent: u32, baseline: u32) -> WindowView {
        let layout = Layout::at(self.layout.now, self.layout.width_ms, recent, baseline);
        WindowView::from_series(self.series, self.lived, layout, self.first_seen)
    }

    /// Ages (indexes into `series`) of the baseline buckets the customer lived in.
    fn baseline_ages(&self) -> std::ops::Range<usize> {
        let from = (self.layout.current - self.layout.recent_from + 1) as usize;
        let to = ((self.layout.current - self.layout.baseline_from + 1) as usize).min(self.lived);
        from..to.max(from)
    }

    /// Buckets of the baseline the customer lived in (what [`Self::baseline_moments`]
    /// averages over).
    pub fn baseline_buckets(&self) -> usize {
        self.baseline_ages().len()
    }

    /// Mean and variance of `of` over the baseline buckets the customer existed in;
    /// `None` with fewer than `min_buckets` of them or a zero mean.
    pub fn baseline_moments(
        &self,
        min_buckets: usize,
        of: impl Fn(&Bucket) -> f64,
    ) -> Option<(f64, f64)> {
        self.moments(self.baseline_ages(), min_buckets, of)
    }

    /// Mean and variance of `of` over the buckets of the given ages (clipped to those the
    /// customer lived in); `None` with fewer than `min_buckets` of them or a zero mean.
    pub fn moments(
        &self,
        ages: std::ops::Range<usize>,
        min_buckets: usize,
        of: impl Fn(&Bucket) -> f64,
    ) -> Option<(f64, f64)> {
        let buckets = &self.series[ages.start.min(self.lived)..ages.end.min(self.lived)];
        if buckets.len() < min_buckets.max(2) {
            return None;
        }
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for b in buckets {
            let v = of(b);
            sum += v;
            sum_sq += v * v;
        }
        let n = buckets.len() as f64;
        let mean = sum / n;
        (mean > 0.0).then(|| (mean, ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0)))
    }

    /// The baseline's value per order: (mean, variance of one order's value, buckets
    /// with orders). Each bucket's mean order value varies around the overall mean with
    /// the variance of one order over its order count, so the order-weighted squared
    /// deviations of the bucket means estimate the variance of one order. `None`
    /// without orders in the baseline.
    pub fn baseline_basket(&self) -> Option<(f64, f64, usize)> {
        let ages = self.baseline_ages();
        let (orders, value) = (f64::from(self.baseline.orders), self.baseline.value);
        if orders == 0.0 || value <= 0.0 || ages.is_empty() {
            return None;
        }
        let mean = value / orders;
        let (mut dev, mut buckets) = (0.0, 0usize);
        for b in self.series[ages].iter().filter(|b| b.orders > 0) {
            let k = f64::from(b.orders);
            let m = f64::from(b.value) / k;
            dev += k * (m - mean) * (m - mean);
            buckets += 1;
        }
        let var = if buckets > 1 {
            dev / (buckets - 1) as f64
        } else {
            0.0
        };
        Some((mean, var, buckets))
    }

    /// Net order value over recent window and baseline together (trailing revenue); the
    /// same as [`trailing_revenue`] of the ring at this layout.
    pub fn trailing_revenue(&self) -> f64 {
        (self.recent.value + self.baseline.value).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 7 * DAY_MS;

    fn day(d: i64) -> Timestamp {
        Timestamp(d * DAY_MS)
    }

    fn order(v: f32) -> Delta {
        Delta {
            value: v,
            orders: 1,
            ..Default::default()
        }
    }

    #[test]
    fn bucket_is_16_bytes_so_a_ring_is_256() {
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
        assert_eq!(std::mem::size_of::<Ring>(), 16 * RING + 4);
    }

    #[test]
    fn trouble_kinds_are_counted_per_bucket_up_to_three_each() {
        let mut r = Ring::default();
        let esc = Delta {
            trouble: 2,
            kinds: TroubleKind::Escalation.one(),
            ..Default::default()
        };
        let csat = Delta {
            trouble: 2,
            kinds: TroubleKind::PoorCsat.one(),
            ..Default::default()
        };
        for _ in 0..5 {
            r.add(day(1), W, &esc);
        }
        r.add(day(2), W, &csat);
        r.add(day(9), W, &esc);
        let t = r.totals(0, 2);
        // five escalations in the first week count as three (saturated), one in the next
        assert_eq!(t.kinds, [4, 0, 1, 0]);
        assert_eq!(t.kinds_saturated, 1);
        assert_eq!(t.trouble, 14);
        let t = r.totals(1, 2);
        assert_eq!((t.kinds, t.kinds_saturated), ([1, 0, 0, 0], 0));
        // and they survive the record
        let mut buf = Vec::new();
        let mut w = crate::engine::codec::Writer::start(&mut buf);
        r.encode(&mut w);
        let mut rd = crate::engine::codec::Reader::start(&buf).unwrap();
        assert_eq!(Ring::decode(&mut rd).unwrap(), r);
    }

    #[test]
    fn events_land_in_their_bucket_and_old_ones_roll_out() {
        let mut r = Ring::default();
        assert_eq!(r.add(day(0), W, &order(10.0)), Added::Yes);
        assert_eq!(r.add(day(8), W, &order(5.0)), Added::Yes);
        assert_eq!(r.get(0).orders, 1);
        assert_eq!(r.get(1).value, 5.0);
        // 20 weeks later bucket 0 has rolled out, and a write there is too old.
        r.add(day(140), W, &order(1.0));
        assert_eq!(r.get(0), Bucket::default());
        assert_eq!(r.add(day(0), W, &order(1.0)), Added::TooOld);
        // A late event within the ring is counted.
        assert_eq!(r.add(day(120), W, &order(2.0)), Added::Yes);
        assert_eq!(r.totals(0, 20).orders, 2);
    }

    #[test]
    fn recent_and_baseline_split_at_the_layout() {
        let mut r = Ring::default();
        for w in 0..16 {
            r.add(day(w * 7 + 1), W, &order(1.0));
        }
        // now = day 113 (bucket 16): recent = buckets 13..=16, baseline = 1..=12
        let l = Layout::at(day(113), W, 4, 12);
        let v = WindowView::read(&r, l, day(1));
        assert_eq!(v.recent.orders, 3); // 13, 14, 15 (16 is empty)
        assert_eq!(v.baseline.orders, 12);
        assert!((v.recent_days - 22.0).abs() < 1e-9);
        assert!((v.baseline_days - 84.0).abs() < 1e-9);
    }

    #[test]
    fn trailing_revenue_is_the_same_read_either_way() {
        let mut r = Ring::default();
        for w in 0..20 {
            r.add(day(w * 7 + 1), W, &order(10.0 + w as f32));
        }
        // a configuration narrower than the ring: recent 2 + baseline 6 buckets, so at
        // day 140 (bucket 20) buckets 13..=20, whose orders are weeks 13..=19
        let l = Layout::at(day(140), W, 2, 6);
        let v = WindowView::read(&r, l, day(1));
        assert_eq!(v.trailing_revenue(), trailing_revenue(&r, &l));
        assert_eq!(
            v.trailing_revenue(),
            (13..20).map(|w| 10.0 + w as f64).sum::<f64>()
        );
    }

    #[test]
    fn durations_are_clipped_to_the_first_event() {
        let r = Ring::default();
        let l = Layout::at(day(113), W, 4, 12);
        let v = WindowView::read(&r, l, day(100));
        assert!((v.recent_days - 13.0).abs() < 1e-9);
        assert_eq!(v.baseline_days, 0.0);
    }
}
