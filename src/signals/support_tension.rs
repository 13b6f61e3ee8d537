//! `support_tension`: trouble piled up in support. Volume alone is not trouble (a busy
//! account files routine tickets), so only what a ticket's course says counts, in trouble
//! points counted into the window ring when the event happens, with the kind of each
//! (for the explanation):
//!
//! | event | points |
//! |---|---|
//! | ticket opened urgent, as a complaint, or as a cancellation | 2 urgent, +1 complaint, +3 cancellation |
//! | ticket escalated | 2, +1 if to urgent |
//! | ticket reopened | 2 |
//! | ticket resolved with CSAT 1-2 | 2 |
//! | ticket opened in the recent window, unresolved after `unresolved_days` | 2 each |
//!
//! What is expected depends on how many tickets the customer files: expected points =
//! tickets in the recent window (or as many as the customer's own rate predicts, if
//! more) × trouble points per ticket, where the rate per ticket is the prior
//! (`prior_points_per_ticket`, worth `prior_tickets` tickets) blended with the
//! customer's own baseline, so a new customer is judged against the prior, never
//! against 0, and an old one by their own normal. It fires at the highest of
//! `min_points`, `ratio` × expected, and the points whose chance (trouble events counted
//! as Poisson, the per-ticket rate's estimation error included) is below that of
//! `significance` standard deviations of a normal.

use super::{num, severity, Input, Reading};
use crate::config::SupportTensionConfig;
use crate::engine::window::TroubleKind;
use crate::event::{Category, Priority};

/// Points of an opened ticket, and whether it counts as a severe opening.
pub fn opened_points(priority: Priority, category: Category) -> u8 {
    (match priority {
        Priority::Urgent => 2,
        _ => 0,
    }) + match category {
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

/// Points of one trouble event (most are 2).
const POINTS_PER_EVENT: f64 = 2.0;

/// The fewest points that are significant against `expected`: trouble events (of
/// [`POINTS_PER_EVENT`]) are Poisson, with their mean inflated by `estimation` (the
/// window's volume over the tickets the rate per ticket was learned from: the rate's
/// own error, as in a two-sample test); the threshold is the smallest count whose upper
/// tail is below the normal tail of `significance` standard deviations, exactly, since
/// a few expected events are far from normal. Half an event is given back (trouble of
/// 3 or 1 points exists).
fn significant_points(expected: f64, estimation: f64, significance: f64) -> f64 {
    let lambda = (expected / POINTS_PER_EVENT) * (1.0 + estimation);
    let p = 0.5 * libm::erfc(significance / std::f64::consts::SQRT_2);
    // P(N >= k) = 1 - P(N <= k - 1)
    let (mut term, mut below) = ((-lambda).exp(), 0.0);
    let mut k = 0u32;
    while k < 1000 {
        below += term;
        k += 1;
        if 1.0 - below <= p {
            break;
        }
        term *= lambda / f64::from(k);
    }
    POINTS_PER_EVENT * f64::from(k) - 1.0
}

/// Packs what the explanation needs into a reading's `extra`: 8 bits per trouble kind
/// (in [`TroubleKind`] order), then tickets left unresolved, then which kinds' counts
/// are lower bounds (a bit each).
fn pack(kinds: [u32; 4], unresolved: u32, saturated: u8) -> f64 {
    let mut v: u64 = 0;
    for (i, k) in kinds.iter().enumerate() {
        v |= u64::from((*k).min(255)) << (8 * i);
    }
    v |= u64::from(unresolved.min(255)) << 32;
    v |= u64::from(saturated & 15) << 40;
    v as f64
}

fn unpack(extra: f64) -> ([u32; 4], u32, u8) {
    let v = extra as u64;
    let kinds = std::array::from_fn(|i| ((v >> (8 * i)) & 255) as u32);
    (kinds, ((v >> 32) & 255) as u32, ((v >> 40) & 15) as u8)
}

/// Tickets left unresolved in a reading.
pub fn unresolved(r: &Reading) -> u32 {
    unpack(r.extra).1
}

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
    let own_days = w.baseline_days.max(0.0);
    let per_ticket = (f64::from(w.baseline.trouble)
        + cfg.prior_points_per_ticket * cfg.prior_tickets)
        / (f64::from(w.baseline.tickets) + cfg.prior_tickets).max(1e-9);
    let by_own_rate = if own_days >= 1.0 {
        f64::from(w.baseline.tickets) * w.recent_days / own_days
    } else {
        0.0
    };
    let volume = f64::from(w.recent.tickets).max(by_own_rate);
    let expected = per_ticket * volume;
    let threshold = cfg
        .min_points
        .max(cfg.ratio * expected)
        .max(significant_points(
            expected,
            volume / (f64::from(w.baseline.tickets) + cfg.prior_tickets).max(1e-9),
            cfg.significance,
        ));
    let due = tickets
        .next_opened_at_or_after(cutoff)
        .map(|t| t.plus_days(cfg.unresolved_days))
        .filter(|d| *d > input.now);
    let oldest = tickets
        .oldest_opened_between(w.layout.recent_start, cutoff)
        .map_or(0.0, |t| input.now.days_since(t).clamp(0.0, 255.0));
    Reading {
        severity: severity(points / threshold),
        observed: points,
        baseline: expected,
        threshold,
        window_days: w.recent_days,
        extra: pack(w.recent.kinds, unresolved, w.recent.kinds_saturated),
        detail: oldest as u8,
        due,
    }
}

fn counted(n: u32, at_least: bool, one: &str, many: &str) -> Option<String> {
    match (n, at_least) {
        (0, _) => None,
        (1, false) => Some(format!("1 {one}")),
        (n, false) => Some(format!("{n} {many}")),
        (n, true) => Some(format!("{n} or more {many}")),
    }
}

/// One sentence naming what happened, with counts by kind.
pub fn explain(r: &Reading) -> String {
    let ([esc, reopen, csat, severe], unresolved, saturated) = unpack(r.extra);
    let lower = |k: TroubleKind| saturated & (1 << k as u8) != 0;
    let mut parts: Vec<String> = [
        counted(
            esc,
            lower(TroubleKind::Escalation),
            "escalation",
            "escalations",
        ),
        counted(
            reopen,
            lower(TroubleKind::Reopening),
            "reopening",
            "reopenings",
        ),
        counted(
            csat,
            lower(TroubleKind::PoorCsat),
            "CSAT of 1 or 2",
            "CSATs of 1 or 2",
        ),
        counted(
            severe,
            lower(TroubleKind::SevereOpening),
            "ticket opened urgent, as a complaint or a cancellation",
            "tickets opened urgent, as complaints or cancellations",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    match unresolved {
        0 => {}
        1 => parts.push(format!("1 ticket open for {} days", r.detail)),
        n => parts.push(format!("{n} tickets open for up to {} days", r.detail)),
    }
    let what = if parts.is_empty() {
        "no trouble".to_owned()
    } else {
        parts.join(", ")
    };
    format!(
        "Support trouble in the last {} days: {what} ({} points, against {} expected from this customer's ticket volume; alert at {}).",
        num(r.window_days),
        num(r.observed),
        num(r.baseline),
        num(r.threshold)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::fingerprint;
    use crate::engine::window::Delta;
    use crate::signals::testing::*;

    fn ticket() -> Delta {
        Delta {
            tickets: 1,
            ..Default::default()
        }
    }

    fn trouble(points: u8, kind: TroubleKind) -> Delta {
        Delta {
            trouble: points,
            kinds: kind.one(),
            ..Default::default()
        }
    }

    #[test]
    fn routine_volume_is_not_trouble_and_escalations_are() {
        // a dozen routine tickets in three weeks: quiet
        let mut c = customer();
        for i in 0..12 {
            add(&mut c, 84.0 + f64::from(i) * 1.5, ticket());
        }
        let v = view(&c, 103.0);
        let r = evaluate(&input(&c, &v, 103.0), &Default::default());
        assert_eq!(r.observed, 0.0);
        assert!(r.severity < 0.01, "{r:?}");
        // three tickets, urgent, two escalated, one reopened, a CSAT of 1: tension,
        // and the explanation counts exactly that
        let mut c = customer();
        for d in [100.0, 101.0, 102.0] {
            add(&mut c, d, ticket());
            add(
                &mut c,
                d,
                trouble(
                    opened_points(Priority::Urgent, Category::Technical),
                    TroubleKind::SevereOpening,
                ),
            );
        }
        add(
            &mut c,
            102.5,
            trouble(escalated_points(None), TroubleKind::Escalation),
        );
        add(
            &mut c,
            102.5,
            trouble(escalated_points(None), TroubleKind::Escalation),
        );
        add(
            &mut c,
            102.6,
            trouble(REOPENED_POINTS, TroubleKind::Reopening),
        );
        add(
            &mut c,
            102.7,
            trouble(resolved_points(Some(1)), TroubleKind::PoorCsat),
        );
        let v = view(&c, 103.0);
        let r = evaluate(&input(&c, &v, 103.0), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert_eq!(r.observed, 14.0);
        let text = explain(&r);
        assert!(
            text.contains(": 2 escalations, 1 reopening, 1 CSAT of 1 or 2, 3 or more tickets opened urgent, as complaints or cancellations (14 points, against 1.8 expected"),
            "{text}"
        );
        assert!(
            !text.contains("unresolved") && !text.contains("open for"),
            "{text}"
        );
    }

    #[test]
    fn a_new_customer_is_judged_against_the_prior_not_against_zero() {
        let cfg = SupportTensionConfig::default();
        let mut c = customer();
        add(&mut c, 100.0, ticket());
        add(&mut c, 100.5, ticket());
        let v = view(&c, 101.0);
        let r = evaluate(&input(&c, &v, 101.0), &cfg);
        // two tickets at the prior's rate, and a threshold of that plus `significance`
        // standard deviations (the prior's uncertainty included)
        assert_eq!(r.baseline, 2.0 * cfg.prior_points_per_ticket);
        assert_eq!(
            r.threshold,
            cfg.min_points.max(significant_points(
                r.baseline,
                2.0 / cfg.prior_tickets,
                cfg.significance
            ))
        );
        // without tickets, only trouble beyond `min_points` fires
        let c = customer();
        let v = view(&c, 101.0);
        let r = evaluate(&input(&c, &v, 101.0), &cfg);
        assert_eq!((r.baseline, r.threshold), (0.0, cfg.min_points));
    }

    #[test]
    fn a_busy_help_desk_is_judged_by_its_own_normal() {
        // 3 tickets and 2 points a week for 12 weeks, then the same: quiet, although
        // the recent window holds more than min_points
        let mut c = customer();
        for wk in 0..16 {
            let d = f64::from(wk) * 7.0 + 1.0;
            for _ in 0..3 {
                add(&mut c, d, ticket());
            }
            add(&mut c, d, trouble(2, TroubleKind::Escalation));
            add(&mut c, d + 1.0, trouble(2, TroubleKind::PoorCsat));
        }
        let v = view(&c, 112.0);
        let r = evaluate(&input(&c, &v, 112.0), &Default::default());
        assert!(r.observed >= 8.0, "{r:?}");
        assert!(r.severity < 0.4, "{r:?}");
        assert!(r.threshold > r.observed, "{r:?}");
    }

    #[test]
    fn tickets_left_open_add_up_as_time_passes() {
        let mut c = customer();
        for (i, d) in [100.0, 100.5, 101.0].iter().enumerate() {
            add(&mut c, *d, ticket());
            add(&mut c, *d, trouble(2, TroubleKind::SevereOpening));
            c.tickets.open(fingerprint(&format!("t{i}")), day(*d));
        }
        add(&mut c, 101.5, trouble(2, TroubleKind::Escalation));
        let v = view(&c, 102.0);
        let early = evaluate(&input(&c, &v, 102.0), &Default::default());
        assert!(early.severity < 0.5);
        assert_eq!(early.due, Some(day(107.0)));
        let v = view(&c, 109.0);
        let late = evaluate(&input(&c, &v, 109.0), &Default::default());
        assert!(late.severity >= 0.5, "{late:?}");
        assert_eq!(unresolved(&late), 3);
        assert!(
            explain(&late).contains("1 escalation, 3 or more tickets opened urgent, as complaints or cancellations, 3 tickets open for up to 9 days"),
            "{}",
            explain(&late)
        );
    }

    #[test]
    fn poor_csat_counts_and_good_csat_does_not() {
        assert_eq!(resolved_points(Some(1)), 2);
        assert_eq!(resolved_points(Some(5)), 0);
        assert_eq!(resolved_points(None), 0);
        assert_eq!(opened_points(Priority::Normal, Category::Cancellation), 3);
        assert_eq!(opened_points(Priority::High, Category::Technical), 0);
    }

    #[test]
    fn significance_is_an_exact_poisson_tail() {
        // 0.6 events expected: P(N >= 5) = 4.0e-4 is below the tail of 3.3 sigma
        // (4.8e-4), P(N >= 4) = 3.4e-3 is not: 5 events, 9 points with the half back
        assert_eq!(significant_points(1.2, 0.0, 3.3), 9.0);
        // 1.8 events expected: P(N >= 9) = 1.1e-4, P(N >= 8) = 5.6e-4: 17 points
        assert_eq!(significant_points(3.6, 0.0, 3.3), 17.0);
        // less sure of the rate, more needed
        assert!(significant_points(3.6, 0.5, 3.3) > 17.0);
        // nothing expected: one event is already a surprise
        assert_eq!(significant_points(0.0, 0.0, 3.3), 1.0);
    }

    #[test]
    fn counts_survive_packing() {
        let ([a, b, c, d], u, s) = unpack(pack([1, 2, 300, 0], 4, 0b1000));
        assert_eq!(([a, b, c, d], u, s), ([1, 2, 255, 0], 4, 0b1000));
    }
}
