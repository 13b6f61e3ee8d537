//! `engagement_decline`: engagement activity over the recent window fell well below the
//! customer's own baseline rate (corrected for a decline the whole population shares,
//! such as a gap in the engagement feed). Same shape as `consumption_drop`, on counts.

use super::{dispersion, drop_z, num, severity, two_sample, Input, Reading};
use crate::config::EngagementDeclineConfig;

/// Evaluates the signal.
pub fn evaluate(input: &Input<'_>, cfg: &EngagementDeclineConfig) -> Reading {
    let w = input.window;
    if w.baseline_days < cfg.min_baseline_days || w.baseline.engagement == 0 {
        return Reading::NONE;
    }
    let expected = f64::from(w.baseline.engagement) * w.recent_days / w.baseline_days
        * input.population.engagement_factor;
    let drop = (1.0 - f64::from(w.recent.engagement) / expected).clamp(0.0, 1.0);
    if drop == 0.0 {
        return Reading {
            severity: 0.0,
            observed: f64::from(w.recent.engagement),
            baseline: expected,
            threshold: expected * (1.0 - cfg.min_drop),
            window_days: w.recent_days,
            extra: 0.0,
            detail: 0,
            due: None,
        };
    }
    let d = two_sample(
        // Engagement is never more regular than chance (a week's logins are at least
        // Poisson-scattered): a quiet baseline that looks regular must not make an
        // ordinary quiet month look significant.
        dispersion(w, |b| b.engagement).max(1.0),
        w.recent_days,
        w.baseline_days,
    );
    let z = drop_z(drop, expected, d, cfg.min_drop, cfg.significance);
    Reading {
        severity: severity(z),
        observed: f64::from(w.recent.engagement),
        baseline: expected,
        threshold: expected * (1.0 - cfg.min_drop),
        window_days: w.recent_days,
        extra: drop,
        detail: 0,
        due: None,
    }
}

/// One sentence.
pub fn explain(r: &Reading) -> String {
    format!(
        "Engagement fell to {} events in the last {} days, against {} expected from this customer's own habit (a {:.0}% drop).",
        num(r.observed),
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

    fn logins(n: u16) -> Delta {
        Delta {
            engagement: n,
            ..Default::default()
        }
    }

    #[test]
    fn fading_engagement_fires_and_steady_does_not() {
        let mut c = customer();
        for d in 0..84 {
            add(&mut c, f64::from(d) + 0.5, logins(3));
        }
        let mut steady = c.clone();
        for d in 84..112 {
            add(&mut steady, f64::from(d) + 0.5, logins(3));
            add(&mut c, f64::from(d) + 0.5, logins(u16::from(d % 4 == 0)));
        }
        let now = 111.9;
        let v = view(&c, now);
        let r = evaluate(&input(&c, &v, now), &Default::default());
        assert!(r.severity >= 0.5, "{r:?}");
        assert!(explain(&r).starts_with("Engagement fell to 7 events"));
        let v = view(&steady, now);
        assert!(evaluate(&input(&steady, &v, now), &Default::default()).severity < 0.1);
    }

    #[test]
    fn a_feed_gap_for_everyone_is_not_a_decline() {
        let mut c = customer();
        for d in 0..84 {
            add(&mut c, f64::from(d) + 0.5, logins(3));
        }
        let v = view(&c, 100.0);
        let mut i = input(&c, &v, 100.0);
        assert!(evaluate(&i, &Default::default()).severity >= 0.5);
        i.population.engagement_factor = 0.1;
        assert!(evaluate(&i, &Default::default()).severity < 0.35);
    }
}
