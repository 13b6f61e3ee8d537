//! The health score, the risk level and the recommended play.
//!
//! health = 100 × purchase^γ × Π (1 − weightᵢ × severityᵢ)
//!
//! `purchase` is the purchase model's probability that the customer orders within
//! `score.horizon_days` (see [`purchase_health`]; BG/NBD, fitted on the engine's own
//! customers), the one thing that best ranks who will not buy again. Each signal then
//! takes away a share of what is left, so the score stays in 0..100, what tickets,
//! engagement, discounts and NPS say counts on top, and severities (continuous, also
//! below thresholds) rank customers who have no alert yet.

use super::bgnbd::{Params, Summary};
use super::tiers::Tier;
use crate::config::EngineSettings;
use crate::signals::inactivity;
pub use crate::vocab::{Play, Risk};
use crate::vocab::{Reading, SignalKind};

/// What the purchase model says of a customer's health, 0..1: how likely they are to
/// order within `horizon_days` (1 − P(no order), from P(alive) and their own purchase
/// rate), raised to the power that puts a customer who has just placed a first order at
/// 0.8. A monotone transform: it ranks customers exactly as that probability does, which
/// is what ranks "no order in the next days" best, while a new customer reads healthy,
/// a one-time buyer fades as the months pass, and a frequent buyer who falls silent
/// drops fast.
pub fn purchase_health(model: &Params, s: Summary, horizon_days: f64) -> f64 {
    let p = (1.0 - model.p_none(s, horizon_days)).clamp(1e-12, 1.0);
    let new = Summary {
        x: 0,
        t_x: 0.0,
        t: 0.0,
    };
    let p_new = (1.0 - model.p_none(new, horizon_days)).clamp(1e-12, 1.0 - 1e-12);
    let gamma = (NEW_CUSTOMER_HEALTH.ln() / p_new.ln()).clamp(0.05, 1.0);
    p.powf(gamma)
}

/// Where [`purchase_health`] puts a customer who has just placed their first order.
pub const NEW_CUSTOMER_HEALTH: f64 = 0.8;

/// The health score 0..=100 (100 healthy): `base` (the purchase model's
/// [`purchase_health`], 1 for a customer without orders) times, for every signal, one
/// minus its weight times its severity. Inactivity and a missing second order are what
/// the purchase model measures already: they count only for customers it cannot speak
/// of (no order yet).
pub fn health(readings: &[Reading; 7], cfg: &EngineSettings, base: f64, modelled: bool) -> u8 {
    let mut h = base.clamp(0.0, 1.0);
    for k in SignalKind::ALL {
        if modelled && matches!(k, SignalKind::Inactivity | SignalKind::NoSecondPurchase) {
            continue;
        }
        h *= 1.0 - cfg.signals().weight(k) * readings[k as usize].severity.clamp(0.0, 1.0);
    }
    (100.0 * h).round().clamp(0.0, 100.0) as u8
}

/// Risk level from the health score, raised one level for key accounts if configured.
pub fn risk(health: u8, tier: Tier, cfg: &EngineSettings) -> Risk {
    let r = &cfg.risk();
    let h = u32::from(health);
    let base = if h < r.critical_below {
        Risk::Critical
    } else if h < r.high_below {
        Risk::High
    } else if h < r.medium_below {
        Risk::Medium
    } else {
        Risk::Low
    };
    if r.raise_for_key_accounts && tier == Tier::Key {
        Risk::from_u8((base as u8 + 1).min(3))
    } else {
        base
    }
}

/// The recommended play for the signals in `active` (a bit mask). With nothing active,
/// the play for the strongest signal.
pub fn play(active: u8, readings: &[Reading; 7], tier: Tier, cfg: &EngineSettings) -> Play {
    let mut mask = active;
    if mask == 0 {
        let strongest = SignalKind::ALL
            .into_iter()
            .max_by(|a, b| {
                readings[*a as usize]
                    .severity
                    .total_cmp(&readings[*b as usize].severity)
                    .then(b.cmp(a))
            })
            .filter(|k| readings[*k as usize].severity > 0.0);
        mask = strongest.map_or(0, SignalKind::bit);
    }
    let has = |k: SignalKind| mask & k.bit() != 0;
    if has(SignalKind::NoSecondPurchase) {
        Play::RampUp
    } else if has(SignalKind::Inactivity) {
        let lost = inactivity::lost_ratio(&readings[SignalKind::Inactivity as usize]);
        if lost >= cfg.signals().inactivity.lost_multiplier {
            Play::Regain
        } else {
            Play::Reactivate
        }
    } else if tier == Tier::Tail
        && (has(SignalKind::SupportTension) || has(SignalKind::DiscountPressure))
        && !has(SignalKind::ConsumptionDrop)
        && !has(SignalKind::EngagementDecline)
    {
        Play::Restore
    } else if mask == SignalKind::EngagementDecline.bit() {
        Play::Reactivate
    } else {
        Play::Retain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(pairs: &[(SignalKind, f64)]) -> [Reading; 7] {
        let mut r = [Reading::NONE; 7];
        for (k, s) in pairs {
            r[*k as usize].severity = *s;
        }
        r
    }

    #[test]
    fn health_falls_with_severity_and_stays_in_range() {
        let cfg = EngineSettings::default();
        // A customer without orders: every signal counts.
        let calm = health(&readings(&[]), &cfg, 1.0, false);
        let worried = health(
            &readings(&[(SignalKind::Inactivity, 0.5)]),
            &cfg,
            1.0,
            false,
        );
        let worse = health(
            &readings(&[
                (SignalKind::Inactivity, 0.9),
                (SignalKind::ConsumptionDrop, 0.9),
            ]),
            &cfg,
            1.0,
            false,
        );
        assert_eq!(calm, 100);
        assert!(
            calm > worried && worried > worse,
            "{calm} {worried} {worse}"
        );
        let all = readings(&SignalKind::ALL.map(|k| (k, 1.0)));
        assert!(health(&all, &cfg, 1.0, false) < 10);
        assert_eq!(health(&readings(&[]), &cfg, 0.0, true), 0);
    }

    #[test]
    fn for_a_buyer_the_purchase_model_stands_for_silence_and_a_missing_second_order() {
        let cfg = EngineSettings::default();
        let silent = readings(&[
            (SignalKind::Inactivity, 0.9),
            (SignalKind::NoSecondPurchase, 0.9),
        ]);
        assert_eq!(health(&silent, &cfg, 0.7, true), 70);
        assert!(health(&silent, &cfg, 0.7, false) < 70);
        // What tickets say counts on top.
        let tense = readings(&[(SignalKind::SupportTension, 0.8)]);
        assert!(health(&tense, &cfg, 0.7, true) < 70);
    }

    #[test]
    fn purchase_health_ranks_by_the_chance_of_an_order_and_puts_a_new_buyer_at_80() {
        let m = Params::PRIOR;
        let s = |x, t_x, t| Summary { x, t_x, t };
        let new = purchase_health(&m, s(0, 0.0, 0.0), 90.0);
        assert!((new - NEW_CUSTOMER_HEALTH).abs() < 1e-9, "{new}");
        // A one-time buyer fades as the months pass.
        assert!(purchase_health(&m, s(0, 0.0, 200.0), 90.0) < new);
        // A weekly buyer is healthy while buying, and drops fast when silent.
        let weekly = purchase_health(&m, s(20, 140.0, 141.0), 90.0);
        let gone = purchase_health(&m, s(20, 140.0, 240.0), 90.0);
        assert!(weekly > 0.95 && gone < 0.6, "{weekly} {gone}");
        // Monotone in the probability of an order within the horizon.
        let p = |x, t_x, t| 1.0 - m.p_none(s(x, t_x, t), 90.0);
        let (a, b) = ((3, 60.0, 100.0), (1, 10.0, 100.0));
        assert_eq!(
            p(a.0, a.1, a.2) > p(b.0, b.1, b.2),
            purchase_health(&m, s(a.0, a.1, a.2), 90.0)
                > purchase_health(&m, s(b.0, b.1, b.2), 90.0)
        );
    }

    #[test]
    fn key_accounts_carry_more_risk() {
        let cfg = EngineSettings::default();
        assert_eq!(risk(60, Tier::Tail, &cfg), Risk::Medium);
        assert_eq!(risk(60, Tier::Key, &cfg), Risk::High);
        assert_eq!(risk(10, Tier::Key, &cfg), Risk::Critical);
        assert_eq!(risk(95, Tier::Core, &cfg), Risk::Low);
    }

    #[test]
    fn plays_follow_the_pattern() {
        let cfg = EngineSettings::default();
        let r = readings(&[]);
        let m = |ks: &[SignalKind]| ks.iter().fold(0, |m, k| m | k.bit());
        assert_eq!(
            play(m(&[SignalKind::NoSecondPurchase]), &r, Tier::Tail, &cfg),
            Play::RampUp
        );
        assert_eq!(
            play(m(&[SignalKind::Inactivity]), &r, Tier::Key, &cfg),
            Play::Reactivate
        );
        let mut lost = r;
        lost[SignalKind::Inactivity as usize].extra = 3.0;
        assert_eq!(
            play(m(&[SignalKind::Inactivity]), &lost, Tier::Key, &cfg),
            Play::Regain
        );
        assert_eq!(
            play(m(&[SignalKind::SupportTension]), &r, Tier::Tail, &cfg),
            Play::Restore
        );
        assert_eq!(
            play(m(&[SignalKind::SupportTension]), &r, Tier::Key, &cfg),
            Play::Retain
        );
        assert_eq!(
            play(m(&[SignalKind::EngagementDecline]), &r, Tier::Core, &cfg),
            Play::Reactivate
        );
        assert_eq!(
            play(m(&[SignalKind::ConsumptionDrop]), &r, Tier::Core, &cfg),
            Play::Retain
        );
    }
}
