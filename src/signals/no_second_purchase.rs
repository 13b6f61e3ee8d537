//! `no_second_purchase`: a new customer has not placed a second order within the time in
//! which most customers do, and has gone quiet. That time is learned from the engine's
//! own customers (a quantile of first-to-second-order gaps) once enough have made a
//! second order, else the configured `expected_days`; never shorter than the
//! population's typical gap between orders (a store of quarterly buyers does not expect
//! a second order within six weeks). A new customer who still engages is ramping up,
//! not lost: the silence is counted from the later of the first order and the last
//! engagement.

use super::{num, severity, Input, Reading};
use crate::config::NoSecondPurchaseConfig;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &NoSecondPurchaseConfig) -> Reading {
    let c = input.customer;
    if c.orders_total != 1
        || c.first_order < input.population.observed_since.plus_days(cfg.warmup_days)
    {
        return Reading::NONE;
    }
    let expected = input
        .population
        .second_order_days
        .max(input.population.cadence_days)
        .max(1.0);
    let quiet_since = c.first_order.max(c.last_engagement);
    let age = input.now.days_since(c.first_order).max(0.0);
    let quiet = input.now.days_since(quiet_since).max(0.0);
    let due = quiet_since.plus_days(expected);
    Reading {
        severity: severity(quiet / expected),
        observed: age,
        baseline: expected,
        threshold: expected,
        window_days: quiet,
        extra: 0.0,
        detail: 0,
        due: (due > input.now).then_some(due),
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    let quiet = if r.window_days + 0.05 < r.observed {
        format!(", and has not engaged for {} days", num(r.window_days))
    } else {
        String::new()
    };
    format!(
        "First ordered {} days ago and has not ordered again{quiet}; most customers order a second time within {} days.",
        num(r.observed),
        num(r.baseline)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;

    #[test]
    fn fires_once_the_usual_time_for_a_second_order_has_passed() {
        let mut c = customer();
        c.record_order(day(10.0));
        let v = view(&c, 30.0);
        let early = evaluate(&input(&c, &v, 30.0), &Default::default());
        assert!(early.severity < 0.2);
        assert_eq!(early.due, Some(day(55.0)));
        let v = view(&c, 60.0);
        let r = evaluate(&input(&c, &v, 60.0), &Default::default());
        assert!(r.severity >= 0.5);
        assert!(explain(&r).contains("50 days ago"));
    }

    #[test]
    fn customers_first_seen_while_the_engine_warms_up_are_not_judged_new() {
        let mut c = customer();
        c.record_order(day(10.0));
        let v = view(&c, 80.0);
        let mut i = input(&c, &v, 80.0);
        i.population.observed_since = day(0.0);
        assert_eq!(evaluate(&i, &Default::default()), Reading::NONE);
        i.population.observed_since = day(-60.0);
        assert!(evaluate(&i, &Default::default()).severity >= 0.5);
    }

    #[test]
    fn a_new_customer_who_still_engages_is_not_lost() {
        let mut c = customer();
        c.record_order(day(10.0));
        c.last_engagement = day(50.0);
        let v = view(&c, 60.0);
        let r = evaluate(&input(&c, &v, 60.0), &Default::default());
        assert!(r.severity < 0.1, "{r:?}");
        assert_eq!(r.due, Some(day(95.0)));
        let v = view(&c, 96.0);
        let r = evaluate(&input(&c, &v, 96.0), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(
            explain(&r)
                .contains("86 days ago and has not ordered again, and has not engaged for 46 days"),
            "{}",
            explain(&r)
        );
    }

    #[test]
    fn a_store_of_slow_buyers_waits_longer() {
        let mut c = customer();
        c.record_order(day(10.0));
        let v = view(&c, 60.0);
        let mut i = input(&c, &v, 60.0);
        i.population.cadence_days = 90.0;
        let r = evaluate(&i, &Default::default());
        assert_eq!(r.threshold, 90.0);
        assert!(r.severity < 0.3, "{r:?}");
    }

    #[test]
    fn a_second_order_ends_it() {
        let mut c = customer();
        c.record_order(day(10.0));
        c.record_order(day(70.0));
        let v = view(&c, 80.0);
        assert_eq!(
            evaluate(&input(&c, &v, 80.0), &Default::default()),
            Reading::NONE
        );
    }
}
