//! `nps_detractor`: the latest NPS answer is a detractor (0..=6 by default), for as long
//! as the answer is recent (`valid_days`). Severity 0.5 at the highest detractor score,
//! 1.0 at 0; passives (7-8) weigh a little in the score without firing.

use super::{num, Input, Reading};
use crate::config::NpsDetractorConfig;
use crate::engine::state::NEVER;

/// Severity of a passive answer (never fires; nudges the score).
const PASSIVE_SEVERITY: f64 = 0.1;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &NpsDetractorConfig) -> Reading {
    let c = input.customer;
    if c.nps > 10 || c.nps_at == NEVER {
        return Reading::NONE;
    }
    let age = input.now.days_since(c.nps_at).max(0.0);
    if age > cfg.valid_days {
        return Reading::NONE;
    }
    let max = f64::from(cfg.max_detractor_score);
    let score = f64::from(c.nps);
    let severity = if score <= max {
        if max == 0.0 {
            1.0
        } else {
            0.5 + 0.5 * (max - score) / max
        }
    } else if score <= 8.0 {
        PASSIVE_SEVERITY
    } else {
        0.0
    };
    Reading {
        severity,
        observed: score,
        baseline: max + 1.0,
        threshold: max,
        window_days: age,
        extra: age,
        detail: 0,
        due: Some(c.nps_at.plus_days(cfg.valid_days)).filter(|d| *d > input.now),
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    format!(
        "Answered the NPS survey with {} out of 10 (a detractor) {} days ago.",
        num(r.observed),
        num(r.extra)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;

    #[test]
    fn detractors_fire_passives_nudge_promoters_do_not() {
        let mut c = customer();
        let v = view(&c, 10.0);
        let sev = |c: &crate::engine::state::Customer| {
            evaluate(&input(c, &v, 10.0), &Default::default()).severity
        };
        c.record_nps(day(5.0), 6);
        assert_eq!(sev(&c), 0.5);
        c.record_nps(day(6.0), 0);
        assert_eq!(sev(&c), 1.0);
        c.record_nps(day(7.0), 8);
        assert_eq!(sev(&c), PASSIVE_SEVERITY);
        c.record_nps(day(8.0), 10);
        assert_eq!(sev(&c), 0.0);
        // an older answer arriving late does not override the latest
        c.record_nps(day(1.0), 0);
        assert_eq!(sev(&c), 0.0);
    }

    #[test]
    fn an_answer_expires() {
        let mut c = customer();
        c.record_nps(day(0.0), 2);
        let v = view(&c, 50.0);
        let r = evaluate(&input(&c, &v, 50.0), &Default::default());
        assert!(r.severity > 0.5);
        assert_eq!(r.due, Some(day(90.0)));
        assert!(explain(&r).contains("2 out of 10"));
        let v = view(&c, 91.0);
        assert_eq!(
            evaluate(&input(&c, &v, 91.0), &Default::default()),
            Reading::NONE
        );
    }
}
