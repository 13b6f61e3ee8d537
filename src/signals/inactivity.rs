//! `inactivity`: no orders and no engagement for much longer than this customer's usual
//! rhythm ("dead or just sleeping?").
//!
//! Orders: the usual gap is the customer's own mean gap, shrunk toward the population's
//! typical cadence by `prior_orders` pseudo-gaps, but never shorter than the customer's
//! own mean (a population of frequent buyers must not make a steady quarterly buyer look
//! lost). It fires after as many usual gaps as make a silence this long unlikely
//! (chance [`ORDER_SILENCE_P`]) for a customer who still orders at that rhythm, and
//! never fewer than `cadence_multiplier`: gaps are taken as Gamma-distributed with the
//! shape the customer's weekly order counts show (a regular buyer's counts scatter less
//! than chance: up to shape 4; 1, exponential gaps, without evidence), so 3.3 gaps for a
//! very regular buyer and 6.9 for one ordering at random. While few gaps have
//! been seen, the mean of `n` gaps is itself uncertain, so the threshold is widened by
//! `1 + 2 / n`.
//!
//! Engagement is bursty (Poisson at best), so three usual gaps of it say little: its
//! silence fires only when the chance of a silence this long is below
//! [`ENGAGEMENT_SILENCE_P`] for a customer who still engages at the rate the ring shows.
//! With `n` events over `span` days (a Gamma posterior of the rate), a silence of `T`
//! days has chance `(1 + T / span)^-n`, so the threshold is `span × (p^(-1/n) - 1)`:
//! about 7 usual gaps with plenty of history, more with little.
//!
//! The customer is silent only if both are silent, so the smaller of the two normalised
//! silences counts. Silence is measured in "population time": days in which the whole
//! population was quiet too (a feed gap) count less.

use super::{num, severity, Input, Reading};
use crate::config::InactivityConfig;
use crate::engine::state::NEVER;
use crate::engine::window::{bucket_of, WindowView};
use crate::time::Timestamp;

/// Engagement events in the ring needed to know a customer's engagement rhythm.
const MIN_ENGAGEMENT_EVENTS: u32 = 3;

/// `detail` when engagement (not orders) gave the usual gap.
pub const BY_ENGAGEMENT: u8 = 1;

/// How much wider the silence threshold is after one gap than after many.
const GAP_UNCERTAINTY: f64 = 2.0;

/// The chance of a gap between orders, for a customer who still orders at their
/// rhythm, below which it counts as silence.
pub const ORDER_SILENCE_P: f64 = 1e-3;

/// Gaps of silence with chance [`ORDER_SILENCE_P`] for Gamma(shape) gaps, shape
/// 1..=4: the root `m` of `Q(k, k m) = p` (the regularized upper incomplete gamma) at
/// the integer shapes, linear between.
fn silence_gaps(shape: f64) -> f64 {
    const AT: [f64; 4] = [6.907_755, 4.616_707, 3.742_957, 3.265_560];
    let s = shape.clamp(1.0, 4.0);
    if s >= 4.0 {
        return AT[3];
    }
    let i = s.floor() as usize; // 1..=3
    AT[i - 1] + (AT[i] - AT[i - 1]) * (s - i as f64)
}

/// The chance of an engagement silence, for a customer still engaging at their rate,
/// below which it counts as silence.
pub const ENGAGEMENT_SILENCE_P: f64 = 1e-3;

/// Days of silence after which engagement at `events` over `span` days is silent.
fn engagement_silence_days(events: u32, span: f64) -> f64 {
    span * (ENGAGEMENT_SILENCE_P.powf(-1.0 / f64::from(events.max(1))) - 1.0)
}

/// The shape of the customer's gaps between orders, from how their weekly order counts
/// scatter while they were buying (variance / mean is about 1 / shape for a renewal
/// process; the silence under test is left out, or it would erase the evidence): 1
/// (random) until the ring shows otherwise, at most 4.
fn gap_shape(w: &WindowView, last_order: Timestamp) -> f64 {
    let age = i64::from(w.layout.current) - i64::from(bucket_of(last_order, w.layout.width_ms));
    let from = age.clamp(0, w.lived as i64) as usize;
    w.moments(from..w.lived, super::MIN_DISPERSION_BUCKETS, |b| {
        f64::from(b.orders)
    })
    .map_or(1.0, |(m, v)| (m / v.max(1e-9)).clamp(1.0, 4.0))
}

/// The customer's usual gap between orders, days, if they have ordered twice.
pub fn order_cadence(input: &Input<'_>, cfg: &InactivityConfig) -> Option<f64> {
    let c = input.customer;
    if c.orders_total < 2 {
        return None;
    }
    let span = c.last_order.days_since(c.first_order).max(0.0);
    let repeats = f64::from(c.orders_total - 1);
    let own = span / repeats;
    let shrunk =
        (span + cfg.prior_orders * input.population.cadence_days) / (repeats + cfg.prior_orders);
    Some(own.max(shrunk))
}

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &InactivityConfig) -> Reading {
    let c = input.customer;
    let now = input.now;
    // (z, silence days, usual gap, threshold days, due, by engagement)
    let mut best: Option<(f64, f64, f64, f64, Timestamp, bool)> = None;
    let mut latest_due: Option<Timestamp> = None;
    let mut consider = |last: Timestamp, gap: f64, after: f64, factor: f64, engagement: bool| {
        let threshold = cfg.min_silence_days.max(after);
        let silence = now.days_since(last).max(0.0);
        let z = silence * factor / threshold;
        // When the silence reaches the threshold if the population's pace holds (a
        // silence the whole population shares counts less, and must be looked at
        // again later, not forgotten).
        let due = if factor >= 1.0 || silence * factor >= threshold {
            last.plus_days(threshold)
        } else {
            now.plus_days((threshold - silence * factor) / factor.max(0.05))
        };
        latest_due = Some(latest_due.map_or(due, |d| d.max(due)));
        if best.is_none_or(|b| z < b.0) {
            best = Some((z, silence, gap, threshold, due, engagement));
        }
    };
    if let Some(gap) = order_cadence(input, cfg) {
        consider(
            c.last_order,
            gap,
            cfg.cadence_multiplier
                .max(silence_gaps(gap_shape(input.window, c.last_order)))
                * gap
                * (1.0 + GAP_UNCERTAINTY / f64::from(c.orders_total - 1)),
            input.population.order_silence_factor,
            false,
        );
    }
    let w = input.window;
    let engagement = w.recent.engagement + w.baseline.engagement;
    if engagement >= MIN_ENGAGEMENT_EVENTS && c.last_engagement != NEVER {
        let span = w.recent_days + w.baseline_days;
        let gap = span / f64::from(engagement);
        consider(
            c.last_engagement,
            gap,
            engagement_silence_days(engagement, span),
            input.population.engagement_silence_factor,
            true,
        );
    }
    let Some((z, silence, gap, threshold, _, by_engagement)) = best else {
        return Reading::NONE;
    };
    Reading {
        severity: severity(z),
        observed: silence,
        baseline: gap,
        threshold,
        window_days: silence,
        extra: z,
        detail: u8::from(by_engagement),
        due: latest_due.filter(|d| *d > now),
    }
}

/// How far past the threshold the silence is (1 = at the threshold).
pub fn lost_ratio(r: &Reading) -> f64 {
    r.extra
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    let usual = if r.detail == BY_ENGAGEMENT {
        format!("is usually active every {} days", num(r.baseline))
    } else {
        format!("usually orders every {} days", num(r.baseline))
    };
    format!(
        "No orders or engagement for {} days, while this customer {usual} (alert after {}).",
        num(r.observed),
        num(r.threshold)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::Delta;
    use crate::signals::testing::*;

    fn with_orders(days: &[f64]) -> crate::engine::state::Customer {
        let mut c = customer();
        for d in days {
            add(
                &mut c,
                *d,
                Delta {
                    value: 10.0,
                    orders: 1,
                    ..Default::default()
                },
            );
            c.record_order(day(*d));
        }
        c
    }

    #[test]
    fn quiet_for_an_unlikely_number_of_usual_gaps_fires() {
        // orders every 10 days for 100 days, then nothing
        let days: Vec<f64> = (0..=10).map(|k| f64::from(k) * 10.0).collect();
        let c = with_orders(&days);
        let at = |now: f64| {
            let v = view(&c, now);
            evaluate(&input(&c, &v, now), &Default::default())
        };
        assert!(
            at(130.0).severity < 0.35,
            "30 days quiet is not yet inactive"
        );
        let r = at(160.0);
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).contains("60 days"), "{}", explain(&r));
    }

    #[test]
    fn a_buyer_at_random_waits_longer_than_a_regular_one() {
        assert_eq!(silence_gaps(1.0), 6.907_755);
        assert!(silence_gaps(2.0) < silence_gaps(1.5));
        assert!(silence_gaps(1.5) < silence_gaps(1.0));
        assert_eq!(silence_gaps(9.0), 3.265_560);
        // a customer who engaged on 17 days over 16 weeks is not silent after 14 days,
        // but is after 90
        assert!(engagement_silence_days(17, 112.0) > 14.0 * 3.0);
        assert!(engagement_silence_days(17, 112.0) < 90.0);
    }

    #[test]
    fn a_sparse_but_regular_buyer_is_judged_by_their_own_rhythm() {
        // every 45 days: 20 days of silence is nothing
        let days: Vec<f64> = (0..8).map(|k| f64::from(k) * 45.0).collect();
        let c = with_orders(&days);
        let v = view(&c, 315.0 + 20.0);
        let r = evaluate(&input(&c, &v, 335.0), &Default::default());
        assert!(r.severity < 0.1, "{r:?}");
        assert!(r.due.unwrap() > day(315.0 + 100.0), "due after ~3 gaps");
    }

    #[test]
    fn engagement_keeps_a_customer_from_counting_as_silent() {
        let days: Vec<f64> = (0..=10).map(|k| f64::from(k) * 10.0).collect();
        let mut c = with_orders(&days);
        for d in 0..140 {
            add(
                &mut c,
                f64::from(d),
                Delta {
                    engagement: 1,
                    ..Default::default()
                },
            );
            c.last_engagement = day(f64::from(d));
        }
        let v = view(&c, 140.0);
        let r = evaluate(&input(&c, &v, 140.0), &Default::default());
        assert!(r.severity < 0.1, "{r:?}");
    }

    #[test]
    fn silence_during_a_population_wide_gap_counts_less() {
        let days: Vec<f64> = (0..=10).map(|k| f64::from(k) * 10.0).collect();
        let c = with_orders(&days);
        let v = view(&c, 140.0);
        let mut i = input(&c, &v, 140.0);
        i.population.order_silence_factor = 0.3;
        assert!(evaluate(&i, &Default::default()).severity < 0.35);
    }

    #[test]
    fn one_order_is_not_a_rhythm() {
        let c = with_orders(&[0.0]);
        let v = view(&c, 300.0);
        assert_eq!(
            evaluate(&input(&c, &v, 300.0), &Default::default()),
            Reading::NONE
        );
    }
}
