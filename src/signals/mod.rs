//! The seven health signals of the alert contract, one module each.
//!
//! Every signal is a pure function of one customer's state, its windows at an instant,
//! and the population view: `evaluate(&Input, &Config) -> Reading`. A reading carries a
//! continuous severity in 0..1 (0.5 exactly at the signal's threshold, so the health
//! score also ranks customers below every threshold), the numbers behind it, and the
//! next instant at which it could change without any new event (for the deadline
//! queue). Explanations are built only when an alert or record is rendered.

pub mod consumption_drop;
pub mod discount_pressure;
pub mod engagement_decline;
pub mod inactivity;
pub mod no_second_purchase;
pub mod nps_detractor;
pub mod support_tension;

use crate::config::SignalsConfig;
use crate::engine::state::Customer;
use crate::engine::window::{WindowView, RING};
use crate::time::Timestamp;
pub use crate::vocab::{Reading, SignalKind};

/// The population context a customer is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PopulationView {
    /// Population order activity over the recent window relative to before (0..1].
    pub orders_factor: f64,
    /// Population engagement over the recent window relative to before (0..1].
    pub engagement_factor: f64,
    /// Population order activity since this customer's last order, relative (0..1].
    pub order_silence_factor: f64,
    /// Population engagement since this customer's last engagement, relative (0..1].
    pub engagement_silence_factor: f64,
    /// A generous typical gap between a customer's orders (the prior for customers with
    /// few orders), days.
    pub cadence_days: f64,
    /// Time within which a second order usually comes, days.
    pub second_order_days: f64,
    /// The first event this engine saw (start of its knowledge).
    pub observed_since: Timestamp,
    /// The spread of one order's value around a customer's mean (coefficient of
    /// variation) assumed before their own orders say otherwise: the store's, once
    /// learnt (see `engine::basket`).
    pub basket_spread: f64,
}

/// The basket spread assumed before the store's is learnt: generous, since real baskets
/// vary a lot.
pub const DEFAULT_BASKET_SPREAD: f64 = 0.4;

impl Default for PopulationView {
    fn default() -> Self {
        PopulationView {
            orders_factor: 1.0,
            engagement_factor: 1.0,
            order_silence_factor: 1.0,
            engagement_silence_factor: 1.0,
            cadence_days: 30.0,
            second_order_days: 45.0,
            observed_since: Timestamp(i64::MIN / 2),
            basket_spread: DEFAULT_BASKET_SPREAD,
        }
    }
}

/// Everything a signal may look at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The customer.
    pub customer: &'a Customer,
    /// The customer's windows at `now`.
    pub window: &'a WindowView,
    /// The instant of evaluation (event time).
    pub now: Timestamp,
    /// Population context.
    pub population: PopulationView,
}

/// Maps a normalised excess `z` (1 at the threshold) to a severity: z²/(1+z²), so 0.5
/// at the threshold, 0.2 at half of it, 0.8 at twice.
pub fn severity(z: f64) -> f64 {
    if z.is_nan() || z <= 0.0 {
        return 0.0;
    }
    if z.is_infinite() {
        return 1.0;
    }
    let z2 = z * z;
    z2 / (1.0 + z2)
}

/// Significance-limited drop: `drop / min_drop`, but no more than the drop measured in
/// standard deviations of a count with mean `expected` and the customer's own
/// `dispersion` (variance / mean; 1 is Poisson), over `significance`. Callers fold the
/// baseline's own uncertainty into `dispersion` (see [`two_sample`]).
pub(crate) fn drop_z(
    drop: f64,
    expected: f64,
    dispersion: f64,
    min_drop: f64,
    significance: f64,
) -> f64 {
    let by_size = drop / min_drop;
    let by_evidence = (expected / dispersion).sqrt() * drop / significance;
    by_size.min(by_evidence).max(0.0)
}

/// The expected count is itself estimated from a baseline `baseline_days` long, so the
/// difference between recent and expected has the variance of both: the dispersion of
/// one sample times (1 + recent/baseline).
pub(crate) fn two_sample(dispersion: f64, recent_days: f64, baseline_days: f64) -> f64 {
    dispersion * (1.0 + recent_days / baseline_days.max(1e-9))
}

/// Fewest baseline buckets from which a customer's own dispersion is trusted.
pub(crate) const MIN_DISPERSION_BUCKETS: usize = 6;

/// The customer's own dispersion (variance / mean) of a per-bucket count over their
/// baseline: regular customers (low dispersion) show a drop sooner, erratic ones later.
/// Estimated from a dozen buckets it is itself noisy, so it is shrunk toward 1 (Poisson)
/// as if [`DISPERSION_PRIOR_BUCKETS`] more buckets had been Poisson, and clamped to
/// 0.25..=4: 1 until there is enough history, about 0.3 for a metronome.
pub(crate) fn dispersion(
    w: &WindowView,
    count: impl Fn(&crate::engine::window::Bucket) -> u16,
) -> f64 {
    let buckets = w.baseline_buckets().min(RING) as f64;
    w.baseline_moments(MIN_DISPERSION_BUCKETS, |b| f64::from(count(b)))
        .map_or(1.0, |(m, v)| {
            let dof = (buckets - 1.0).max(1.0);
            ((v / m) * dof + DISPERSION_PRIOR_BUCKETS) / (dof + DISPERSION_PRIOR_BUCKETS)
        })
        .clamp(0.25, 4.0)
}

/// How many Poisson buckets the dispersion estimate is shrunk with.
pub(crate) const DISPERSION_PRIOR_BUCKETS: f64 = 3.0;

/// Evaluates every signal; disabled ones read [`Reading::NONE`].
pub fn evaluate_all(input: &Input<'_>, cfg: &SignalsConfig) -> [Reading; 7] {
    let mut out = [Reading::NONE; 7];
    if cfg.consumption_drop.enabled {
        out[0] = consumption_drop::evaluate(input, &cfg.consumption_drop);
    }
    if cfg.discount_pressure.enabled {
        out[1] = discount_pressure::evaluate(input, &cfg.discount_pressure);
    }
    if cfg.inactivity.enabled {
        out[2] = inactivity::evaluate(input, &cfg.inactivity);
    }
    if cfg.support_tension.enabled {
        out[3] = support_tension::evaluate(input, &cfg.support_tension);
    }
    if cfg.engagement_decline.enabled {
        out[4] = engagement_decline::evaluate(input, &cfg.engagement_decline);
    }
    if cfg.no_second_purchase.enabled {
        out[5] = no_second_purchase::evaluate(input, &cfg.no_second_purchase);
    }
    if cfg.nps_detractor.enabled {
        out[6] = nps_detractor::evaluate(input, &cfg.nps_detractor);
    }
    out
}

/// One sentence a person understands.
pub fn explain(kind: SignalKind, r: &Reading) -> String {
    match kind {
        SignalKind::ConsumptionDrop => consumption_drop::explain(r),
        SignalKind::DiscountPressure => discount_pressure::explain(r),
        SignalKind::Inactivity => inactivity::explain(r),
        SignalKind::SupportTension => support_tension::explain(r),
        SignalKind::EngagementDecline => engagement_decline::explain(r),
        SignalKind::NoSecondPurchase => no_second_purchase::explain(r),
        SignalKind::NpsDetractor => nps_detractor::explain(r),
    }
}

/// Formats a quantity for explanations: integers without decimals, others with one.
pub(crate) fn num(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{:.0}", v.round())
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for signal unit tests.
    use super::*;
    use crate::engine::state::Customer;
    use crate::engine::window::{Delta, Layout, WindowView};
    use crate::time::DAY_MS;

    pub const WIDTH: i64 = 7 * DAY_MS;

    pub fn day(d: f64) -> Timestamp {
        Timestamp((d * DAY_MS as f64) as i64)
    }

    pub fn customer() -> Customer {
        Customer::new("c-1")
    }

    /// Adds `d` at day `t` to the ring and first/last seen.
    pub fn add(c: &mut Customer, t: f64, d: Delta) {
        let ts = day(t);
        c.ring.add(ts, WIDTH, &d);
        c.first_seen = c.first_seen.min(ts);
        c.last_seen = c.last_seen.max(ts);
    }

    pub fn view(c: &Customer, now: f64) -> WindowView {
        WindowView::read(&c.ring, Layout::at(day(now), WIDTH, 4, 12), c.first_seen)
    }

    pub fn input<'a>(c: &'a Customer, w: &'a WindowView, now: f64) -> Input<'a> {
        Input {
            customer: c,
            window: w,
            now: day(now),
            population: PopulationView::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_half_at_the_threshold_and_monotonic() {
        assert_eq!(severity(0.0), 0.0);
        assert_eq!(severity(1.0), 0.5);
        assert!(severity(0.5) < severity(0.9));
        assert!(severity(2.0) > 0.79 && severity(100.0) < 1.0);
        assert_eq!(severity(f64::NAN), 0.0);
        assert_eq!(severity(f64::INFINITY), 1.0);
    }

    #[test]
    fn a_drop_needs_size_and_evidence() {
        // Poisson: 4 expected, none seen: big and (just) significant
        assert!(drop_z(1.0, 4.0, 1.0, 0.5, 2.0) >= 1.0);
        // Poisson: 4 expected, 1 seen: big but not significant
        assert!(drop_z(0.75, 4.0, 1.0, 0.5, 2.0) < 1.0);
        // a very regular customer: 4 expected, 1 seen is significant
        assert!(drop_z(0.75, 4.0, 0.5, 0.5, 2.0) >= 1.0);
        // 40 expected, 18 seen: significant and big enough
        assert!(drop_z(0.55, 40.0, 1.0, 0.5, 2.0) >= 1.0);
        // 400 expected, 300 seen: significant but small
        assert!(drop_z(0.25, 400.0, 1.0, 0.5, 2.0) < 1.0);
    }

    #[test]
    fn dispersion_tells_regular_from_erratic() {
        use crate::engine::window::Delta;
        use testing::*;
        let mut regular = customer();
        let mut erratic = customer();
        for w in 0..16 {
            add(
                &mut regular,
                f64::from(w) * 7.0 + 1.0,
                Delta {
                    orders: 2,
                    ..Default::default()
                },
            );
            add(
                &mut erratic,
                f64::from(w) * 7.0 + 1.0,
                Delta {
                    orders: if w % 3 == 0 { 6 } else { 0 },
                    ..Default::default()
                },
            );
        }
        let v = view(&regular, 112.0);
        // no scatter at all, over 12 buckets, shrunk with 3 Poisson ones: 3 / 14
        // (clamped to 0.25)
        assert_eq!(dispersion(&v, |b| b.orders), 0.25);
        let v = view(&erratic, 112.0);
        assert!(dispersion(&v, |b| b.orders) > 2.0);
    }
}
