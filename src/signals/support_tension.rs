//! `support_tension`: trouble piled up in support. Volume alone is not trouble, so each
//! event is weighed by what it says (trouble points, counted into the window ring when
//! the event happens):
//!
//! | event | points |
//! |---|---|
//! | ticket opened | 1, +1 if high, +2 if urgent, +1 complaint, +3 cancellation |
//! | ticket escalated | 2, +1 if to urgent |
//! | ticket reopened | 2 |
//! | ticket resolved with CSAT 1-2 | 2 |
//! | ticket opened in the recent window, unresolved after `unresolved_days` | 2 each |
//!
//! It fires at `min_points` in the recent window, or at `ratio` times the customer's own
//! baseline rate if that is higher (a large account with a busy help desk is judged by
//! its own normal).

use super::{num, severity, Input, Reading};
use crate::config::SupportTensionConfig;
use crate::event::{Category, Priority};

/// Points of an opened ticket.
pub fn opened_points(priority: Priority, category: Category) -> u8 {
    1 + match priority {
        Priority::High => 1,
        Priority::Urgent => 2,
        _ => 0,
    } + match category {
        Category::Complaint => 1,
        Category::Cancellation => 3,
        _ => 0,
    }
}

/// Points of an escalation.
pub fn escalated_points(priority: Option<Priority>) -> u8 {
    2 + u8::from(priority == Some(Priority::Urgent))
}

/// Points of a reopening.
pub const REOPENED_POINTS: u8 = 2;

/// Points of a resolution with the given CSAT.
pub fn resolved_points(csat: Option<u8>) -> u8 {
    match csat {
        Some(1 | 2) => 2,
        _ => 0,
    }
}

/// Points per ticket left unresolved.
pub const UNRESOLVED_POINTS: f64 = 2.0;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &SupportTensionConfig) -> Reading {
    let w = input.window;
    let tickets = &input.customer.tickets;
    let cutoff = input.now.plus_days(-cfg.unresolved_days);
    // Tickets opened within the recent window and still open after `unresolved_days`:
    // older ones have had their say (and a lost `resolved` event must not keep a
    // customer in tension forever).
    let unresolved = tickets.opened_between(w.layout.recent_start, cutoff);
    let points = f64::from(w.recent.trouble) + UNRESOLVED_POINTS * f64::from(unresolved);
    let expected = if w.baseline_days >= 28.0 {
        f64::from(w.baseline.trouble) * w.recent_days / w.baseline_days
    } else {
        0.0
    };
    let threshold = cfg.min_points.max(cfg.ratio * expected);
    let due = tickets
        .next_opened_at_or_after(cutoff)
        .map(|t| t.plus_days(cfg.unresolved_days))
        .filter(|d| *d > input.now);
    Reading {
        severity: severity(points / threshold),
        observed: points,
        baseline: expected,
        threshold,
        window_days: w.recent_days,
        extra: f64::from(unresolved),
        detail: 0,
        due,
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    let unresolved = if r.extra >= 1.0 {
        format!(", {} tickets left unresolved", num(r.extra))
    } else {
        String::new()
    };
    format!(
        "Support trouble reached {} points in the last {} days (escalations, reopenings, urgent tickets, poor CSAT{unresolved}), against {} expected.",
        num(r.observed),
        num(r.window_days),
        num(r.baseline)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::fingerprint;
    use crate::engine::window::Delta;
    use crate::signals::testing::*;

    fn trouble(points: u8) -> Delta {
        Delta {
            trouble: points,
            tickets: 1,
            ..Default::default()
        }
    }

    #[test]
    fn escalations_weigh_more_than_volume() {
        // three routine tickets: quiet
        let mut c = customer();
        for d in [100.0, 101.0, 102.0] {
            add(
                &mut c,
                d,
                trouble(opened_points(Priority::Normal, Category::Technical)),
            );
        }
        let v = view(&c, 103.0);
        assert!(evaluate(&input(&c, &v, 103.0), &Default::default()).severity < 0.35);
        // the same three tickets, urgent, one escalated and one reopened: tension
        let mut c = customer();
        for d in [100.0, 101.0, 102.0] {
            add(
                &mut c,
                d,
                trouble(opened_points(Priority::Urgent, Category::Technical)),
            );
        }
        add(&mut c, 102.5, trouble(escalated_points(None)));
        add(&mut c, 102.6, trouble(REOPENED_POINTS));
        let v = view(&c, 103.0);
        let r = evaluate(&input(&c, &v, 103.0), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).contains("13 points"), "{}", explain(&r));
    }

    #[test]
    fn tickets_left_open_add_up_as_time_passes() {
        let mut c = customer();
        for (i, d) in [100.0, 100.5, 101.0].iter().enumerate() {
            add(&mut c, *d, trouble(1));
            c.tickets.open(fingerprint(&format!("t{i}")), day(*d));
        }
        let v = view(&c, 102.0);
        let early = evaluate(&input(&c, &v, 102.0), &Default::default());
        assert!(early.severity < 0.5);
        assert_eq!(early.due, Some(day(107.0)));
        let v = view(&c, 108.5);
        let late = evaluate(&input(&c, &v, 108.5), &Default::default());
        assert!(late.severity >= 0.5, "{late:?}");
        assert_eq!(late.extra, 3.0);
    }

    #[test]
    fn poor_csat_counts_and_good_csat_does_not() {
        assert_eq!(resolved_points(Some(1)), 2);
        assert_eq!(resolved_points(Some(5)), 0);
        assert_eq!(resolved_points(None), 0);
        assert_eq!(opened_points(Priority::Normal, Category::Cancellation), 4);
    }
}
