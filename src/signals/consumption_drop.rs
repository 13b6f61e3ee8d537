//! `consumption_drop`: order value or count over the recent window fell well below the
//! customer's own baseline rate (corrected for a decline the whole population shares).
//!
//! Expected = baseline rate × recent-window duration × population factor. The larger of
//! the value drop and the count drop counts, but only as far as the count evidence
//! carries it (see `drop_z` in the signals module): a buyer who orders twice a quarter cannot show a
//! significant monthly drop, and is left to `inactivity`.

use super::{
    dispersion, drop_z, num, severity, two_sample, Input, Reading, MIN_DISPERSION_BUCKETS,
};
use crate::config::ConsumptionDropConfig;
use crate::engine::window::{WindowView, RING};

/// `detail` when the drop in the window's order value was the larger.
pub const BY_VALUE: u8 = 1;
/// `detail` when the drop in the value per order was the larger.
pub const BY_BASKET: u8 = 2;

/// The prior spread of one order's value (the population's `basket_spread`) is worth
/// this many baseline buckets.
const PRIOR_BASKET_BUCKETS: f64 = 3.0;
/// Fewest recent orders for the value per order to be read: one or two orders (one of
/// them cancelled, say) are a sample too small for a mean; the count and the window's
/// value speak for them.
const MIN_BASKET_ORDERS: u32 = 3;
/// Never trust a spread below this.
const MIN_BASKET_CV: f64 = 0.15;

/// The customer's usual value per order, and how many standard errors the recent mean
/// order value lies below it (the difference of two means, each with the variance of
/// one order over its count).
fn basket_drop_z(w: &WindowView, prior_spread: f64) -> Option<(f64, f64)> {
    let (mean, var, buckets) = w.baseline_basket()?;
    let dof = buckets.saturating_sub(1) as f64;
    let prior = (prior_spread * mean).powi(2);
    let var = ((var * dof + prior * PRIOR_BASKET_BUCKETS) / (dof + PRIOR_BASKET_BUCKETS))
        .max((MIN_BASKET_CV * mean).powi(2));
    let recent = f64::from(w.recent.orders);
    let recent_mean = w.recent.value.max(0.0) / recent;
    let se = (var * (1.0 / recent + 1.0 / f64::from(w.baseline.orders))).sqrt();
    Some((mean, (mean - recent_mean) / se))
}

/// Evaluates the signal over several splits of the ring; the strongest reading counts.
///
/// - The configured recent window against the baseline.
/// - Shorter recent windows (from two buckets up) against a baseline as long: a change
///   some days ago shows in them undiluted by the weeks before it, so a frequent
///   buyer's halved baskets are told within days of the change rather than only once
///   the whole window lies after it. They need the same significance, so few orders
///   never make a drop look certain.
/// - A longer horizon (twice the recent window against as much baseline as the ring
///   still holds): sparse buyers get enough expected orders for a slowdown to become
///   significant.
pub fn evaluate(input: &Input<'_>, cfg: &ConsumptionDropConfig) -> Reading {
    let w = input.window;
    let l = &w.layout;
    let configured = l.current - l.recent_from + 1;
    let baseline = (l.recent_from - l.baseline_from) as u32;
    let mut best = over(w, input, cfg, 0.0);
    for recent in SHORTEST_RECENT_BUCKETS..configured {
        let view = w.resplit(recent as u32, baseline);
        if view.recent.orders < SHORT_WINDOW_MIN_ORDERS {
            continue;
        }
        let r = over(&view, input, cfg, best.severity);
        if r.severity > best.severity {
            best = r;
        }
    }
    let recent = (configured * 2).min(RING as i32 / 2);
    if recent <= configured {
        return best;
    }
    let long_view = w.resplit(recent as u32, RING as u32 - recent as u32);
    let long = over(&long_view, input, cfg, best.severity);
    if long.severity > best.severity {
        long
    } else {
        best
    }
}

/// A shorter window speaks only with this many orders in it: a mean of fewer baskets is
/// at the mercy of one unusually small one.
const SHORT_WINDOW_MIN_ORDERS: u32 = 4;

/// The shortest recent window looked at, in buckets (the current bucket, partly
/// elapsed, and the one before it).
const SHORTEST_RECENT_BUCKETS: i32 = 2;

/// The reading over one split of the windows; [`Reading::NONE`] when it cannot beat
/// `to_beat` (a severity), which saves the variance computations.
fn over(w: &WindowView, input: &Input<'_>, cfg: &ConsumptionDropConfig, to_beat: f64) -> Reading {
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
        0.0
    };
    // Value per order: a smaller basket at the same rhythm. It counts only while the
    // window's value fell too (by at least half of `min_drop`): more orders of smaller
    // baskets are not a customer spending less.
    let basket_drop = if w.recent.orders >= MIN_BASKET_ORDERS && value_drop >= cfg.min_drop / 2.0 {
        let usual = w.baseline.value.max(0.0) / f64::from(w.baseline.orders);
        let recent = w.recent.value.max(0.0) / f64::from(w.recent.orders);
        if usual > 0.0 {
            (1.0 - recent / usual).clamp(0.0, 1.0)
        } else {
            0.0
        }
    } else {
        0.0
    };
    // z never exceeds drop / min_drop: if that cannot beat what we have, stop here.
    let largest = count_drop.max(value_drop).max(basket_drop);
    if largest == 0.0 || severity(largest / cfg.min_drop) <= to_beat {
        return Reading::NONE;
    }
    let z_count = if count_drop > 0.0 {
        drop_z(
            count_drop,
            expected_orders,
            two_sample(dispersion(w, |b| b.orders), w.recent_days, w.baseline_days),
            cfg.min_drop,
            cfg.significance,
        )
    } else {
        0.0
    };
    // The basket drop shows after a few orders, against the customer's own
    // basket-to-basket spread (shrunk toward the store's, so few orders never make a
    // drop look certain); fewer orders show in the count. Without recent orders the
    // count says it all.
    let mut basket = None;
    let z_basket = if basket_drop > 0.0 {
        basket = basket_drop_z(w, input.population.basket_spread);
        basket
            .map_or(0.0, |(_, z)| {
                (basket_drop / cfg.min_drop).min(z / cfg.significance)
            })
            .max(0.0)
    } else {
        0.0
    };
    // The value of the whole window (fewer orders and smaller ones together), against
    // the customer's own weekly value scatter, never below that of a regular buyer with
    // a typical basket.
    let z_total = if value_drop > 0.0 {
        let order_value = w.baseline.value.max(0.0) / f64::from(w.baseline.orders);
        let d = w
            .baseline_moments(MIN_DISPERSION_BUCKETS, |b| f64::from(b.value))
            .map_or(1.5 * order_value, |(m, v)| v / m)
            .clamp(0.5 * order_value, 4.0 * order_value)
            .max(f64::MIN_POSITIVE);
        let d = two_sample(d, w.recent_days, w.baseline_days);
        drop_z(
            value_drop,
            expected_value,
            d,
            cfg.min_drop,
            cfg.significance,
        )
    } else {
        0.0
    };
    let (z, drop, observed, baseline, detail) = if z_basket > z_total.max(z_count) {
        let (usual, _) = basket.unwrap_or_default();
        let orders = f64::from(w.recent.orders);
        (
            z_basket,
            basket_drop,
            w.recent.value.max(0.0) / orders,
            usual,
            BY_BASKET,
        )
    } else if z_total > z_count {
        (
            z_total,
            value_drop,
            w.recent.value,
            expected_value,
            BY_VALUE,
        )
    } else {
        let orders = f64::from(w.recent.orders);
        (z_count, count_drop, orders, expected_orders, 0)
    };
    Reading {
        severity: severity(z),
        observed,
        baseline,
        threshold: baseline * (1.0 - cfg.min_drop),
        window_days: w.recent_days,
        extra: drop,
        detail,
        due: None,
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    if r.detail == BY_BASKET {
        return format!(
            "Orders were worth {} each on average in the last {} days, against {} per order from this customer's own habit (a {:.0}% smaller basket).",
            num(r.observed),
            num(r.window_days),
            num(r.baseline),
            r.extra * 100.0
        );
    }
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

    /// Weeks 12 to 15 of a three-a-week buyer of 100: `per_week` orders of `value`,
    /// `gap` days apart.
    fn then_weeks_12_to_16(per_week: u32, gap: f64, value: f32) -> crate::engine::state::Customer {
        let mut c = buyer(3, 12, 0, 0);
        for w in 12..16 {
            for k in 0..per_week {
                add(
                    &mut c,
                    f64::from(w) * 7.0 + f64::from(k) * gap + 0.1,
                    order(value),
                );
            }
        }
        c
    }

    #[test]
    fn smaller_baskets_at_the_same_rhythm_show_as_a_basket_drop() {
        let c = then_weeks_12_to_16(3, 2.0, 20.0);
        let v = view(&c, 16.0 * 7.0 - 0.1);
        let r = evaluate(&input(&c, &v, 16.0 * 7.0 - 0.1), &Default::default());
        assert_eq!(r.detail, BY_BASKET, "{r:?}");
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(
            explain(&r).contains("80% smaller basket"),
            "{}",
            explain(&r)
        );
    }

    #[test]
    fn one_cancelled_order_of_a_buyer_every_ten_days_is_no_drop() {
        // orders of 100 every ten days for four months, the last one cancelled the same
        // day: the recent window holds two orders worth 50 on average
        let mut c = customer();
        for k in 0..12 {
            add(&mut c, f64::from(k) * 10.0 + 0.1, order(100.0));
        }
        add(
            &mut c,
            110.2,
            Delta {
                value: -100.0,
                ..Default::default()
            },
        );
        let now = 112.0;
        let v = view(&c, now);
        let mut i = input(&c, &v, now);
        // a store whose baskets vary little
        i.population.basket_spread = 0.2;
        let r = evaluate(&i, &Default::default());
        assert!(r.severity < 0.5, "{r:?}");
    }

    #[test]
    fn twice_the_orders_at_half_the_basket_is_no_drop() {
        // three orders a week at 100, then six a week at 50: the same spending
        let c = then_weeks_12_to_16(6, 1.0, 50.0);
        let v = view(&c, 16.0 * 7.0 - 0.1);
        let r = evaluate(&input(&c, &v, 16.0 * 7.0 - 0.1), &Default::default());
        assert!(r.severity < 0.5, "{r:?}");
    }

    #[test]
    fn halved_baskets_of_a_frequent_buyer_show_in_a_short_window_within_two_weeks() {
        // three orders a week at 100 for twelve weeks (baskets spread 80..120), then at
        // 50 for ten days: the four-week window still holds mostly full baskets (a
        // drop below min_drop), the two-bucket window only halved ones
        let mut c = customer();
        let spread = [80.0, 100.0, 120.0, 90.0, 110.0];
        let mut t = 0.1;
        let mut k = 0;
        while t < 84.0 {
            add(&mut c, t, order(spread[k % 5]));
            k += 1;
            t += 7.0 / 3.0;
        }
        let now = t + 10.0;
        while t < now {
            add(&mut c, t, order(spread[k % 5] / 2.0));
            k += 1;
            t += 7.0 / 3.0;
        }
        let v = view(&c, now);
        let r = evaluate(&input(&c, &v, now), &Default::default());
        assert_eq!(r.detail, BY_BASKET, "{r:?}");
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(r.window_days < 14.0, "a short window fired: {r:?}");
        assert!(
            over(&v, &input(&c, &v, now), &Default::default(), 0.0).severity < 0.5,
            "the configured four-week window alone is not enough yet"
        );
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
    fn an_erratic_buyer_slowing_down_shows_over_the_longer_horizon() {
        // 20, 0, 28, 12, ... orders a week (erratic) for 8 weeks, then one order in 8 weeks
        let pattern = [20u32, 0, 28, 12, 20, 0, 28, 12];
        let mut c = customer();
        for (w, n) in pattern.iter().enumerate() {
            for k in 0..*n {
                add(
                    &mut c,
                    w as f64 * 7.0 + f64::from(k) * 0.25 + 0.1,
                    order(100.0),
                );
            }
        }
        add(&mut c, 9.0 * 7.0 + 0.1, order(100.0));
        let now = 16.0 * 7.0 - 0.5;
        let v = view(&c, now);
        let r = evaluate(&input(&c, &v, now), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(r.window_days > 40.0, "the longer horizon fired: {r:?}");
        // the same slowdown at an eighth of the volume is not evidence enough
        let mut c = customer();
        for (w, n) in pattern.iter().enumerate() {
            for k in 0..*n / 8 {
                add(&mut c, w as f64 * 7.0 + f64::from(k) + 0.1, order(100.0));
            }
        }
        add(&mut c, 9.0 * 7.0 + 0.1, order(100.0));
        let v = view(&c, now);
        assert!(evaluate(&input(&c, &v, now), &Default::default()).severity < 0.5);
    }

    #[test]
    fn a_regular_weekly_buyer_who_stops_is_alerted_within_six_weeks() {
        // four empty weeks against four expected orders are not a significant drop in
        // count alone (3.5 standard deviations); the silence, for a buyer who never
        // missed a week, is: inactivity fires within six weeks
        let mut c = customer();
        for w in 0..12 {
            let d = f64::from(w) * 7.0 + 0.1;
            add(&mut c, d, order(100.0));
            c.record_order(day(d));
        }
        let now = 77.1 + 42.0;
        let v = view(&c, now);
        let drop = evaluate(&input(&c, &v, now), &Default::default());
        assert!(drop.severity < 0.5, "{drop:?}");
        let silence =
            crate::signals::inactivity::evaluate(&input(&c, &v, now), &Default::default());
        assert!(silence.severity >= 0.5, "{silence:?}");
        // a buyer at random with the same number of orders is not silent yet
        let mut random = customer();
        for (w, n) in [2u32, 0, 1, 1, 0, 2, 1, 0, 1, 2, 1, 1].iter().enumerate() {
            for k in 0..*n {
                let d = w as f64 * 7.0 + f64::from(k) + 0.1;
                add(&mut random, d, order(100.0));
                random.record_order(day(d));
            }
        }
        let v = view(&random, now);
        let r = crate::signals::inactivity::evaluate(&input(&random, &v, now), &Default::default());
        assert!(r.severity < 0.5, "{r:?}");
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
