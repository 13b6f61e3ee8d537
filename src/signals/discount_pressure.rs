//! `discount_pressure`: discount requests rose above the customer's own baseline, or the
//! discount actually taken on orders (value-weighted) rose well above what it was.

use super::{num, severity, Input, Reading};
use crate::config::DiscountPressureConfig;

/// `detail` when the depth of discounts taken (not requests) drove the reading.
pub const BY_DEPTH: u8 = 1;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &DiscountPressureConfig) -> Reading {
    let w = input.window;
    let scale = if w.baseline_days > 0.0 {
        w.recent_days / w.baseline_days
    } else {
        0.0
    };
    let expected_requests = f64::from(w.baseline.requests) * scale;
    let request_threshold = cfg.min_requests.max(cfg.request_ratio * expected_requests);
    let z_requests = f64::from(w.recent.requests) / request_threshold;

    let depth = |value: f64, discount: f64| {
        if value > 0.0 {
            100.0 * discount / value
        } else {
            0.0
        }
    };
    let recent_depth = depth(w.recent.value, w.recent.discount_value);
    let baseline_depth = depth(w.baseline.value, w.baseline.discount_value);
    let z_depth = if w.recent.orders >= 2 && w.baseline.orders >= 2 {
        (recent_depth - baseline_depth) / cfg.depth_increase_pct
    } else {
        0.0
    };

    if z_depth > z_requests {
        Reading {
            severity: severity(z_depth),
            observed: recent_depth,
            baseline: baseline_depth,
            threshold: baseline_depth + cfg.depth_increase_pct,
            window_days: w.recent_days,
            extra: 0.0,
            detail: BY_DEPTH,
            due: None,
        }
    } else {
        Reading {
            severity: severity(z_requests),
            observed: f64::from(w.recent.requests),
            baseline: expected_requests,
            threshold: request_threshold,
            window_days: w.recent_days,
            extra: 0.0,
            detail: 0,
            due: None,
        }
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    if r.detail == BY_DEPTH {
        format!(
            "Took an average discount of {:.0}% on orders in the last {} days, up from {:.0}% before.",
            r.observed,
            num(r.window_days),
            r.baseline
        )
    } else {
        format!(
            "Asked for a discount {} times in the last {} days, against {} expected from this customer's own history.",
            num(r.observed),
            num(r.window_days),
            num(r.baseline)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::Delta;
    use crate::signals::testing::*;

    fn order(v: f32, pct: f32) -> Delta {
        Delta {
            value: v,
            discount_value: v * pct / 100.0,
            orders: 1,
            ..Default::default()
        }
    }

    #[test]
    fn repeated_requests_fire() {
        let mut c = customer();
        add(&mut c, 1.0, order(100.0, 0.0));
        for d in [96.0, 100.0, 104.0, 108.0] {
            add(
                &mut c,
                d,
                Delta {
                    requests: 1,
                    tickets: 1,
                    ..Default::default()
                },
            );
        }
        let v = view(&c, 110.0);
        let r = evaluate(&input(&c, &v, 110.0), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert_eq!(r.detail, 0);
        assert!(explain(&r).contains("4 times"));
    }

    #[test]
    fn a_customer_who_always_asks_is_judged_by_their_own_rate() {
        let mut c = customer();
        for w in 0..16 {
            add(
                &mut c,
                f64::from(w) * 7.0 + 1.0,
                Delta {
                    requests: 1,
                    ..Default::default()
                },
            );
        }
        let v = view(&c, 111.0);
        assert!(evaluate(&input(&c, &v, 111.0), &Default::default()).severity < 0.5);
    }

    #[test]
    fn deeper_discounts_fire_by_depth() {
        let mut c = customer();
        for w in 0..12 {
            add(&mut c, f64::from(w) * 7.0 + 1.0, order(100.0, 5.0));
        }
        for w in 12..16 {
            add(&mut c, f64::from(w) * 7.0 + 1.0, order(100.0, 25.0));
        }
        let v = view(&c, 111.0);
        let r = evaluate(&input(&c, &v, 111.0), &Default::default());
        assert_eq!(r.detail, BY_DEPTH);
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).contains("25%"));
    }
}
