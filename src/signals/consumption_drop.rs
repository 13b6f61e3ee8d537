//! `consumption_drop`: order value or count over the recent window fell well below the
//! customer's own baseline rate (corrected for a decline the whole population shares).
//!
//! Expected = baseline rate × recent-window duration × population factor. The larger of
//! the value drop and the count drop counts, but only as far as the count evidence
//! carries it (see [`super::drop_z`]): a buyer who orders twice a quarter cannot show a
//! significant monthly drop, and is left to `inactivity`.

use super::{drop_z, num, severity, Input, Reading};
use crate::config::ConsumptionDropConfig;

/// `detail` when the value drop was the larger.
pub const BY_VALUE: u8 = 1;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &ConsumptionDropConfig) -> Reading {
    let w = input.window;
    if w.baseline_days < cfg.min_baseline_days || w.baseline.orders == 0 {
        return Reading::NONE;
    }
    let scale = w.recent_days / w.baseline_days * input.population.orders_factor;
    let expected_orders = f64::from(w.baseline.orders) * scale;
    let expected_value = w.baseline.value.max(0.0) * scale;
    let count_drop = (1.0 - f64::from(w.recent.orders) / expected_orders).clamp(0.0, 1.0);
    let value_drop = if expected_value > 0.0 {
        (1.0 - w.recent.value.max(0.0) / expected_value).clamp(0.0, 1.0)
    } else {
        count_drop
    };
    let by_value = value_drop > count_drop;
    let drop = count_drop.max(value_drop);
    let z = drop_z(drop, expected_orders, cfg.min_drop, cfg.significance);
    let (observed, baseline) = if by_value {
        (w.recent.value, expected_value)
    } else {
        (f64::from(w.recent.orders), expected_orders)
    };
    Reading {
        severity: severity(z),
        observed,
        baseline,
        threshold: baseline * (1.0 - cfg.min_drop),
        window_days: w.recent_days,
        extra: drop,
        detail: u8::from(by_value),
        due: None,
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    let what = if r.detail == BY_VALUE {
        format!("Ordered {} worth", num(r.observed))
    } else {
        format!("Placed {} orders", num(r.observed))
    };
    format!(
        "{what} in the last {} days, against {} expected from this customer's own habit (a {:.0}% drop).",
        num(r.window_days),
        num(r.baseline),
        r.extra * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::Delta;
    use crate::signals::testing::*;

    fn order(v: f32) -> Delta {
        Delta {
            value: v,
            orders: 1,
            ..Default::default()
        }
    }

    fn buyer(
        orders_per_week: u32,
        weeks: u32,
        then: u32,
        weeks_after: u32,
    ) -> crate::engine::state::Customer {
        let mut c = customer();
        for w in 0..weeks {
            for k in 0..orders_per_week {
                add(
                    &mut c,
                    f64::from(w) * 7.0 + f64::from(k) * 7.0 / f64::from(orders_per_week) + 0.1,
                    order(100.0),
                );
            }
        }
        for w in weeks..weeks + weeks_after {
            for k in 0..then {
                add(
                    &mut c,
                    f64::from(w) * 7.0 + f64::from(k) * 7.0 / f64::from(then) + 0.1,
                    order(100.0),
                );
            }
        }
        c
    }

    #[test]
    fn frequent_buyer_halving_orders_fires() {
        let c = buyer(4, 12, 1, 4);
        let v = view(&c, 16.0 * 7.0);
        let r = evaluate(&input(&c, &v, 16.0 * 7.0), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).contains("drop"));
    }

    #[test]
    fn steady_buyer_stays_quiet() {
        let c = buyer(2, 16, 0, 0);
        let v = view(&c, 16.0 * 7.0 - 0.5);
        let r = evaluate(&input(&c, &v, 16.0 * 7.0 - 0.5), &Default::default());
        assert!(r.severity < 0.2, "{r:?}");
    }

    #[test]
    fn smaller_baskets_at_the_same_rhythm_show_as_a_value_drop() {
        let mut c = buyer(3, 12, 0, 0);
        for w in 12..16 {
            for k in 0..3 {
                add(
                    &mut c,
                    f64::from(w) * 7.0 + f64::from(k) * 2.0 + 0.1,
                    order(20.0),
                );
            }
        }
        let v = view(&c, 16.0 * 7.0 - 0.1);
        let r = evaluate(&input(&c, &v, 16.0 * 7.0 - 0.1), &Default::default());
        assert_eq!(r.detail, BY_VALUE);
        assert!(r.severity >= 0.5, "{r:?}");
    }

    #[test]
    fn a_shared_population_decline_is_discounted() {
        let c = buyer(4, 12, 1, 4);
        let v = view(&c, 16.0 * 7.0);
        let mut i = input(&c, &v, 16.0 * 7.0);
        let alone = evaluate(&i, &Default::default());
        // everyone ordered at 30% of their usual rate: this customer's 25% is normal-ish
        i.population.orders_factor = 0.3;
        let shared = evaluate(&i, &Default::default());
        assert!(
            alone.severity >= 0.5 && shared.severity < 0.2,
            "{alone:?} {shared:?}"
        );
    }

    #[test]
    fn no_baseline_no_reading() {
        let c = buyer(4, 2, 0, 0);
        let v = view(&c, 14.0);
        assert_eq!(
            evaluate(&input(&c, &v, 14.0), &Default::default()),
            Reading::NONE
        );
    }
}
