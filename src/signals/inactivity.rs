//! `inactivity`: no orders and no engagement for much longer than this customer's usual
//! cadence ("dead or just sleeping?").
//!
//! The usual gap between orders is the customer's own mean gap, shrunk toward the
//! population's typical cadence by `prior_orders` pseudo-gaps, so a customer with two
//! orders is judged mostly by what is normal, one with twenty by their own rhythm. The
//! engagement rhythm is read from the window ring. The customer is silent only if both
//! are silent, so the smaller of the two normalised silences counts. Silence is measured
//! in "population time": days in which the whole population was quiet too (a feed gap)
//! count less.

use super::{num, severity, Input, Reading};
use crate::config::InactivityConfig;
use crate::engine::state::NEVER;
use crate::time::Timestamp;

/// Engagement events in the ring needed to know a customer's engagement rhythm.
const MIN_ENGAGEMENT_EVENTS: u32 = 3;

/// `detail` when engagement (not orders) gave the usual gap.
pub const BY_ENGAGEMENT: u8 = 1;

/// The customer's usual gap between orders, days, if they have ordered twice.
pub fn order_cadence(input: &Input<'_>, cfg: &InactivityConfig) -> Option<f64> {
    let c = input.customer;
    if c.orders_total < 2 {
        return None;
    }
    let span = c.last_order.days_since(c.first_order).max(0.0);
    let repeats = f64::from(c.orders_total - 1);
    Some((span + cfg.prior_orders * input.population.cadence_days) / (repeats + cfg.prior_orders))
}

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &InactivityConfig) -> Reading {
    let c = input.customer;
    let now = input.now;
    // (z, silence days, usual gap, threshold days, due, by engagement)
    let mut best: Option<(f64, f64, f64, f64, Timestamp, bool)> = None;
    let mut latest_due: Option<Timestamp> = None;
    let mut consider = |last: Timestamp, gap: f64, factor: f64, engagement: bool| {
        let threshold = cfg.min_silence_days.max(cfg.cadence_multiplier * gap);
        let silence = now.days_since(last).max(0.0);
        let z = silence * factor / threshold;
        let due = last.plus_days(threshold);
        latest_due = Some(latest_due.map_or(due, |d| d.max(due)));
        if best.is_none_or(|b| z < b.0) {
            best = Some((z, silence, gap, threshold, due, engagement));
        }
    };
    if let Some(gap) = order_cadence(input, cfg) {
        consider(
            c.last_order,
            gap,
            input.population.order_silence_factor,
            false,
        );
    }
    let w = input.window;
    let engagement = w.recent.engagement + w.baseline.engagement;
    if engagement >= MIN_ENGAGEMENT_EVENTS && c.last_engagement != NEVER {
        let gap = (w.recent_days + w.baseline_days) / f64::from(engagement);
        consider(
            c.last_engagement,
            gap,
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
    fn quiet_for_three_usual_gaps_fires() {
        // orders every 10 days for 100 days, then nothing
        let days: Vec<f64> = (0..=10).map(|k| f64::from(k) * 10.0).collect();
        let c = with_orders(&days);
        let at = |now: f64| {
            let v = view(&c, now);
            evaluate(&input(&c, &v, now), &Default::default())
        };
        assert!(
            at(115.0).severity < 0.35,
            "15 days quiet is not yet inactive"
        );
        let r = at(140.0);
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).contains("40 days"), "{}", explain(&r));
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
