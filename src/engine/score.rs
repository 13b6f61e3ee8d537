//! The health score, the risk level and the recommended play.
//!
//! health = 100 × (1 − relationship_weight × shallow) × Π (1 − weightᵢ × severityᵢ)
//!
//! Each signal takes away a share of what the others left, so the score stays in 0..100,
//! every signal matters, and severities (continuous, also below thresholds) rank
//! customers who have no alert yet. `shallow` (0..1) is relationship depth turned
//! around: few repeat orders and a low revenue rank count as more at risk, all else equal.

use serde::Serialize;

use super::tiers::Tier;
use crate::config::Config;
use crate::signals::{inactivity, Reading, SignalKind};

/// Risk level of the alert contract, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// `low`
    Low = 0,
    /// `medium`
    Medium = 1,
    /// `high`
    High = 2,
    /// `critical`
    Critical = 3,
}

impl Risk {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
    pub(crate) fn from_u8(v: u8) -> Risk {
        match v {
            0 => Risk::Low,
            1 => Risk::Medium,
            2 => Risk::High,
            _ => Risk::Critical,
        }
    }
}

/// What to do about it (alert contract `recommended_play`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Play {
    /// A valuable customer at risk: act to keep them.
    Retain,
    /// A new customer without a second sale: help them get going.
    RampUp,
    /// A customer whose cost (support, discounts) outweighs their value: fix the relationship.
    Restore,
    /// A lost customer: win them back.
    Regain,
    /// A quiet customer: wake them up.
    Reactivate,
}

impl Play {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Play::Retain => "retain",
            Play::RampUp => "ramp_up",
            Play::Restore => "restore",
            Play::Regain => "regain",
            Play::Reactivate => "reactivate",
        }
    }
}

/// Relationship depth turned around: 0 for a deep relationship, 1 for none.
pub fn shallowness(orders_total: u32, value_percentile: f64) -> f64 {
    let repeats = f64::from(orders_total.saturating_sub(1));
    0.5 / (1.0 + repeats / 3.0) + 0.5 * (1.0 - value_percentile.clamp(0.0, 1.0))
}

/// The health score 0..=100 (100 healthy).
pub fn health(readings: &[Reading; 7], cfg: &Config, shallow: f64) -> u8 {
    let mut h = 1.0 - cfg.score.relationship_weight * shallow.clamp(0.0, 1.0);
    for k in SignalKind::ALL {
        h *= 1.0 - k.weight(&cfg.signals) * readings[k as usize].severity.clamp(0.0, 1.0);
    }
    (100.0 * h).round().clamp(0.0, 100.0) as u8
}

/// Risk level from the health score, raised one level for key accounts if configured.
pub fn risk(health: u8, tier: Tier, cfg: &Config) -> Risk {
    let r = &cfg.risk;
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
pub fn play(active: u8, readings: &[Reading; 7], tier: Tier, cfg: &Config) -> Play {
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
        if lost >= cfg.signals.inactivity.lost_multiplier {
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
        let cfg = Config::default();
        let calm = health(&readings(&[]), &cfg, 0.0);
        let worried = health(&readings(&[(SignalKind::Inactivity, 0.5)]), &cfg, 0.0);
        let worse = health(
            &readings(&[
                (SignalKind::Inactivity, 0.9),
                (SignalKind::ConsumptionDrop, 0.9),
            ]),
            &cfg,
            0.0,
        );
        assert_eq!(calm, 100);
        assert!(
            calm > worried && worried > worse,
            "{calm} {worried} {worse}"
        );
        let all = readings(&SignalKind::ALL.map(|k| (k, 1.0)));
        assert!(health(&all, &cfg, 1.0) < 10);
    }

    #[test]
    fn deeper_relationships_score_higher_all_else_equal() {
        assert!(shallowness(20, 0.9) < shallowness(2, 0.9));
        assert!(shallowness(5, 0.9) < shallowness(5, 0.1));
    }

    #[test]
    fn key_accounts_carry_more_risk() {
        let cfg = Config::default();
        assert_eq!(risk(60, Tier::Tail, &cfg), Risk::Medium);
        assert_eq!(risk(60, Tier::Key, &cfg), Risk::High);
        assert_eq!(risk(10, Tier::Key, &cfg), Risk::Critical);
        assert_eq!(risk(95, Tier::Core, &cfg), Risk::Low);
    }

    #[test]
    fn plays_follow_the_pattern() {
        let cfg = Config::default();
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
