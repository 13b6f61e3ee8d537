//! `[signals.*]`: one section per health signal, each with its defaults and its own
//! validation.

use serde::Deserialize;

use super::{check_range, ConfigError};
use crate::vocab::SignalKind;

/// `[signals.*]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// `consumption_drop`
    pub consumption_drop: ConsumptionDropConfig,
    /// `discount_pressure`
    pub discount_pressure: DiscountPressureConfig,
    /// `inactivity`
    pub inactivity: InactivityConfig,
    /// `support_tension`
    pub support_tension: SupportTensionConfig,
    /// `engagement_decline`
    pub engagement_decline: EngagementDeclineConfig,
    /// `no_second_purchase`
    pub no_second_purchase: NoSecondPurchaseConfig,
    /// `nps_detractor`
    pub nps_detractor: NpsDetractorConfig,
}

impl SignalsConfig {
    /// Checks every signal's section; each signal checks its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.consumption_drop.validate()?;
        self.discount_pressure.validate()?;
        self.inactivity.validate()?;
        self.support_tension.validate()?;
        self.engagement_decline.validate()?;
        self.no_second_purchase.validate()?;
        self.nps_detractor.validate()
    }

    /// A signal's weight in the health score (0 when it is disabled).
    pub fn weight(&self, kind: SignalKind) -> f64 {
        let (enabled, w) = match kind {
            SignalKind::ConsumptionDrop => {
                (self.consumption_drop.enabled, self.consumption_drop.weight)
            }
            SignalKind::DiscountPressure => (
                self.discount_pressure.enabled,
                self.discount_pressure.weight,
            ),
            SignalKind::Inactivity => (self.inactivity.enabled, self.inactivity.weight),
            SignalKind::SupportTension => {
                (self.support_tension.enabled, self.support_tension.weight)
            }
            SignalKind::EngagementDecline => (
                self.engagement_decline.enabled,
                self.engagement_decline.weight,
            ),
            SignalKind::NoSecondPurchase => (
                self.no_second_purchase.enabled,
                self.no_second_purchase.weight,
            ),
            SignalKind::NpsDetractor => (self.nps_detractor.enabled, self.nps_detractor.weight),
        };
        if enabled {
            w
        } else {
            0.0
        }
    }
}

/// `[signals.consumption_drop]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumptionDropConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Fires when recent order value or count fell by at least this fraction.
    pub min_drop: f64,
    /// How many standard deviations (Poisson, of the order count the baseline predicts)
    /// the drop must also amount to: a sparse buyer's quiet month is not a drop.
    pub significance: f64,
    /// Baseline history needed, days.
    pub min_baseline_days: f64,
    /// Judge a customer's basket-to-basket spread against the store's, learnt from its
    /// customers, rather than against a fixed generous one.
    pub learn_basket_spread: bool,
}

impl Default for ConsumptionDropConfig {
    fn default() -> Self {
        ConsumptionDropConfig {
            enabled: true,
            weight: 0.4,
            min_drop: 0.4,
            significance: 3.5,
            min_baseline_days: 28.0,
            learn_basket_spread: true,
        }
    }
}

/// `[signals.discount_pressure]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscountPressureConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Fewest discount requests in the recent window that can fire.
    pub min_requests: f64,
    /// Fires at this multiple of the customer's own request rate.
    pub request_ratio: f64,
    /// Fires when the value-weighted discount taken rose by this many percentage points.
    pub depth_increase_pct: f64,
}

impl Default for DiscountPressureConfig {
    fn default() -> Self {
        DiscountPressureConfig {
            enabled: true,
            weight: 0.2,
            min_requests: 4.0,
            request_ratio: 2.0,
            depth_increase_pct: 10.0,
        }
    }
}

/// `[signals.inactivity]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InactivityConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Fires after this many of the customer's usual gaps without orders or engagement.
    pub cadence_multiplier: f64,
    /// Never fires before this much silence, days.
    pub min_silence_days: f64,
    /// Pseudo-orders of population cadence blended into a customer's own (shrinkage).
    pub prior_orders: f64,
    /// Cadence assumed until the population has one, days.
    pub default_cadence_days: f64,
    /// Silence beyond this multiple of the alert threshold counts as lost (play `regain`).
    pub lost_multiplier: f64,
}

impl InactivityConfig {
    /// `min_silence_days` in milliseconds.
    pub fn min_silence_ms(&self) -> i64 {
        (self.min_silence_days * crate::time::DAY_MS as f64) as i64
    }
}

impl Default for InactivityConfig {
    fn default() -> Self {
        InactivityConfig {
            enabled: true,
            weight: 0.6,
            cadence_multiplier: 3.0,
            min_silence_days: 14.0,
            prior_orders: 2.0,
            default_cadence_days: 30.0,
            lost_multiplier: 2.0,
        }
    }
}

/// `[signals.support_tension]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportTensionConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Fewest trouble points in the recent window that can fire.
    pub min_points: f64,
    /// Fires at this multiple of the customer's own trouble rate.
    pub ratio: f64,
    /// A ticket open longer than this counts as left unresolved, days.
    pub unresolved_days: f64,
    /// Trouble points per ticket expected before the customer's own history says more.
    pub prior_points_per_ticket: f64,
    /// How many tickets the prior is worth against the customer's own baseline tickets.
    pub prior_tickets: f64,
    /// Standard deviations above the expected points that fire.
    pub significance: f64,
}

impl Default for SupportTensionConfig {
    fn default() -> Self {
        SupportTensionConfig {
            enabled: true,
            weight: 0.35,
            min_points: 8.0,
            ratio: 2.0,
            unresolved_days: 7.0,
            prior_points_per_ticket: 0.6,
            prior_tickets: 20.0,
            significance: 3.2,
        }
    }
}

/// `[signals.engagement_decline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngagementDeclineConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Fires when recent engagement fell by at least this fraction.
    pub min_drop: f64,
    /// How many standard deviations (Poisson) the drop must also amount to.
    pub significance: f64,
    /// Baseline history needed, days.
    pub min_baseline_days: f64,
}

impl Default for EngagementDeclineConfig {
    fn default() -> Self {
        EngagementDeclineConfig {
            enabled: true,
            weight: 0.25,
            min_drop: 0.6,
            significance: 3.5,
            min_baseline_days: 28.0,
        }
    }
}

/// `[signals.no_second_purchase]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoSecondPurchaseConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Expected time to a second order until the population teaches otherwise, days.
    pub expected_days: f64,
    /// Learn the expected time from this engine's customers.
    pub learn_from_population: bool,
    /// Quantile of first-to-second-order gaps used when learning.
    pub quantile: f64,
    /// Second orders needed before the learned value is used.
    pub min_samples: u32,
    /// A customer whose first order came within this many days of the first event the
    /// engine saw may be an existing customer whose history predates it (every
    /// deployment and replay starts somewhere): they are not judged as new.
    pub warmup_days: f64,
}

impl Default for NoSecondPurchaseConfig {
    fn default() -> Self {
        NoSecondPurchaseConfig {
            enabled: true,
            weight: 0.5,
            expected_days: 45.0,
            learn_from_population: true,
            quantile: 0.995,
            min_samples: 30,
            warmup_days: 60.0,
        }
    }
}

/// `[signals.nps_detractor]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NpsDetractorConfig {
    /// Evaluate this signal.
    pub enabled: bool,
    /// Weight in the health score, 0..=1.
    pub weight: f64,
    /// Highest score that is a detractor.
    pub max_detractor_score: u8,
    /// An NPS answer counts for this long, days.
    pub valid_days: f64,
}

impl Default for NpsDetractorConfig {
    fn default() -> Self {
        NpsDetractorConfig {
            enabled: true,
            weight: 0.3,
            max_detractor_score: 6,
            valid_days: 90.0,
        }
    }
}

impl ConsumptionDropConfig {
    /// Checks every value of `[signals.consumption_drop]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.consumption_drop.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.consumption_drop.min_drop",
            self.min_drop,
            0.05,
            1.0,
        )?;
        check_range(
            "signals.consumption_drop.significance",
            self.significance,
            0.1,
            10.0,
        )?;
        check_range(
            "signals.consumption_drop.min_baseline_days",
            self.min_baseline_days,
            1.0,
            3650.0,
        )?;
        Ok(())
    }
}

impl DiscountPressureConfig {
    /// Checks every value of `[signals.discount_pressure]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.discount_pressure.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.discount_pressure.min_requests",
            self.min_requests,
            1.0,
            1e6,
        )?;
        check_range(
            "signals.discount_pressure.request_ratio",
            self.request_ratio,
            1.0,
            1e3,
        )?;
        check_range(
            "signals.discount_pressure.depth_increase_pct",
            self.depth_increase_pct,
            0.5,
            100.0,
        )?;
        Ok(())
    }
}

impl InactivityConfig {
    /// Checks every value of `[signals.inactivity]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.inactivity.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.inactivity.cadence_multiplier",
            self.cadence_multiplier,
            1.0,
            100.0,
        )?;
        check_range(
            "signals.inactivity.min_silence_days",
            self.min_silence_days,
            0.0,
            3650.0,
        )?;
        check_range(
            "signals.inactivity.prior_orders",
            self.prior_orders,
            0.0,
            1e3,
        )?;
        check_range(
            "signals.inactivity.default_cadence_days",
            self.default_cadence_days,
            0.1,
            3650.0,
        )?;
        check_range(
            "signals.inactivity.lost_multiplier",
            self.lost_multiplier,
            1.0,
            100.0,
        )?;
        Ok(())
    }
}

impl SupportTensionConfig {
    /// Checks every value of `[signals.support_tension]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.support_tension.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.support_tension.min_points",
            self.min_points,
            1.0,
            1e6,
        )?;
        check_range("signals.support_tension.ratio", self.ratio, 1.0, 1e3)?;
        check_range(
            "signals.support_tension.unresolved_days",
            self.unresolved_days,
            0.01,
            3650.0,
        )?;
        check_range(
            "signals.support_tension.prior_points_per_ticket",
            self.prior_points_per_ticket,
            0.0,
            100.0,
        )?;
        check_range(
            "signals.support_tension.prior_tickets",
            self.prior_tickets,
            0.0,
            1e6,
        )?;
        check_range(
            "signals.support_tension.significance",
            self.significance,
            0.0,
            10.0,
        )?;
        Ok(())
    }
}

impl EngagementDeclineConfig {
    /// Checks every value of `[signals.engagement_decline]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.engagement_decline.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.engagement_decline.min_drop",
            self.min_drop,
            0.05,
            1.0,
        )?;
        check_range(
            "signals.engagement_decline.significance",
            self.significance,
            0.1,
            10.0,
        )?;
        check_range(
            "signals.engagement_decline.min_baseline_days",
            self.min_baseline_days,
            1.0,
            3650.0,
        )?;
        Ok(())
    }
}

impl NoSecondPurchaseConfig {
    /// Checks every value of `[signals.no_second_purchase]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.no_second_purchase.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.no_second_purchase.expected_days",
            self.expected_days,
            1.0,
            3650.0,
        )?;
        check_range(
            "signals.no_second_purchase.quantile",
            self.quantile,
            0.05,
            0.999,
        )?;
        check_range(
            "signals.no_second_purchase.warmup_days",
            self.warmup_days,
            0.0,
            3650.0,
        )?;
        Ok(())
    }
}

impl NpsDetractorConfig {
    /// Checks every value of `[signals.nps_detractor]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("signals.nps_detractor.weight", self.weight, 0.0, 1.0)?;
        check_range(
            "signals.nps_detractor.max_detractor_score",
            f64::from(self.max_detractor_score),
            0.0,
            9.0,
        )?;
        check_range(
            "signals.nps_detractor.valid_days",
            self.valid_days,
            1.0,
            3650.0,
        )?;
        Ok(())
    }
}
