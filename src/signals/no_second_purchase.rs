//! `no_second_purchase`: a new customer has not placed a second order within the time in
//! which most customers do. That time is learned from the engine's own customers (a
//! quantile of first-to-second-order gaps) once enough have made a second order, else
//! the configured `expected_days`.

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
    let expected = input.population.second_order_days.max(1.0);
    let age = input.now.days_since(c.first_order).max(0.0);
    let due = c.first_order.plus_days(expected);
    Reading {
        severity: severity(age / expected),
        observed: age,
        baseline: expected,
        threshold: expected,
        window_days: age,
        extra: 0.0,
        detail: 0,
        due: (due > input.now).then_some(due),
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    format!(
        "First ordered {} days ago and has not ordered again; most customers order a second time within {} days.",
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
