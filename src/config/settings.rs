//! Typed settings per component, ripgrep's split between arguments as parsed and
//! arguments as used: a [`Config`] is the configuration as read (every section, any
//! value its types allow); an [`EngineSettings`] is what the engine reads of it, made
//! only by validation, so an engine cannot be given a value that is not allowed, nor
//! the Kafka, HTTP and Slack sections it never reads.

use super::{
    check_range, invalid, AlertsConfig, Config, ConfigError, EngineConfig, InputConfig,
    PopulationConfig, RiskConfig, ScoreConfig, SignalsConfig, TierConfig, MAX_RING_BUCKETS,
};

/// The engine's sections of the configuration, validated. [`EngineSettings::new`] is
/// the only way to make one from a configuration; the sections are read through its
/// methods and cannot be changed after.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    input: InputConfig,
    engine: EngineConfig,
    population: PopulationConfig,
    score: ScoreConfig,
    risk: RiskConfig,
    value_tiers: TierConfig,
    alerts: AlertsConfig,
    signals: SignalsConfig,
}

impl EngineSettings {
    /// The engine's sections of `cfg`, once every value in them is allowed (an error
    /// names the first that is not: its key, the value and what is allowed).
    pub fn new(cfg: &Config) -> Result<EngineSettings, ConfigError> {
        validate(cfg)?;
        Ok(EngineSettings {
            input: cfg.input.clone(),
            engine: cfg.engine.clone(),
            population: cfg.population.clone(),
            score: cfg.score.clone(),
            risk: cfg.risk.clone(),
            value_tiers: cfg.value_tiers.clone(),
            alerts: cfg.alerts.clone(),
            signals: cfg.signals.clone(),
        })
    }

    /// `[input]`: decoding limits (the engine refuses events too old by them).
    pub fn input(&self) -> &InputConfig {
        &self.input
    }
    /// `[engine]`: windows, time and lateness, eviction.
    pub fn engine(&self) -> &EngineConfig {
        &self.engine
    }
    /// `[population]`: the population baseline.
    pub fn population(&self) -> &PopulationConfig {
        &self.population
    }
    /// `[score]`: the health score and its hysteresis.
    pub fn score(&self) -> &ScoreConfig {
        &self.score
    }
    /// `[risk]`: risk levels.
    pub fn risk(&self) -> &RiskConfig {
        &self.risk
    }
    /// `[value_tiers]`: value tiers.
    pub fn value_tiers(&self) -> &TierConfig {
        &self.value_tiers
    }
    /// `[alerts]`: alert emission.
    pub fn alerts(&self) -> &AlertsConfig {
        &self.alerts
    }
    /// `[signals]`: the seven signals, each with its own settings.
    pub fn signals(&self) -> &SignalsConfig {
        &self.signals
    }
}

impl Default for EngineSettings {
    /// The built-in defaults (valid: see the test below).
    fn default() -> Self {
        EngineSettings {
            input: InputConfig::default(),
            engine: EngineConfig::default(),
            population: PopulationConfig::default(),
            score: ScoreConfig::default(),
            risk: RiskConfig::default(),
            value_tiers: TierConfig::default(),
            alerts: AlertsConfig::default(),
            signals: SignalsConfig::default(),
        }
    }
}

/// Checks the engine's sections of `cfg` against what is allowed.
pub(super) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let e = &cfg.engine;
    check_range(
        "input.max_event_bytes",
        cfg.input.max_event_bytes as f64,
        64.0,
        16.0 * 1024.0 * 1024.0,
    )?;
    if !cfg.input.min_event_time.is_empty()
        && crate::time::Timestamp::parse_rfc3339(&cfg.input.min_event_time).is_none()
    {
        return Err(invalid(
            "input.min_event_time",
            format!("\"{}\"", cfg.input.min_event_time),
            "an RFC 3339 instant such as \"2000-01-01T00:00:00Z\", or \"\" for no bound",
        ));
    }
    check_range(
        "input.max_event_age_days",
        f64::from(cfg.input.max_event_age_days),
        0.0,
        36_500.0,
    )?;
    check_range("input.max_amount", cfg.input.max_amount, 1.0, 1e15)?;
    check_range("engine.bucket_days", f64::from(e.bucket_days), 1.0, 28.0)?;
    check_range(
        "engine.evict_after_days",
        f64::from(e.evict_after_days),
        0.0,
        36_500.0,
    )?;
    check_range("engine.max_customers", e.max_customers as f64, 0.0, 4e9)?;
    check_range(
        "engine.recent_buckets",
        f64::from(e.recent_buckets),
        1.0,
        f64::from(MAX_RING_BUCKETS - 1),
    )?;
    if e.recent_buckets + e.baseline_buckets > MAX_RING_BUCKETS || e.baseline_buckets == 0 {
        return Err(invalid(
            "engine.baseline_buckets",
            e.baseline_buckets,
            format!(
                "1..={} (recent_buckets + baseline_buckets at most {MAX_RING_BUCKETS}, the fixed ring that keeps a customer within its memory budget)",
                MAX_RING_BUCKETS - e.recent_buckets
            ),
        ));
    }
    check_range(
        "engine.allowed_lateness_secs",
        e.allowed_lateness_secs as f64,
        0.0,
        30.0 * 86_400.0,
    )?;
    check_range(
        "population.min_factor",
        cfg.population.min_factor,
        0.01,
        1.0,
    )?;
    let s = &cfg.score;
    check_range("score.entry_severity", s.entry_severity, 0.05, 0.95)?;
    if !(s.exit_severity > 0.0 && s.exit_severity < s.entry_severity) {
        return Err(invalid(
            "score.exit_severity",
            s.exit_severity,
            format!(
                "greater than 0 and less than score.entry_severity ({})",
                s.entry_severity
            ),
        ));
    }
    check_range("score.relationship_weight", s.relationship_weight, 0.0, 1.0)?;
    check_range("score.horizon_days", s.horizon_days, 7.0, 730.0)?;
    let r = &cfg.risk;
    if !(r.critical_below < r.high_below && r.high_below < r.medium_below && r.medium_below <= 100)
    {
        return Err(invalid(
            "risk.medium_below",
            format!(
                "{} (high_below {}, critical_below {})",
                r.medium_below, r.high_below, r.critical_below
            ),
            "critical_below < high_below < medium_below <= 100",
        ));
    }
    let t = &cfg.value_tiers;
    check_range("value_tiers.key_top_fraction", t.key_top_fraction, 0.0, 1.0)?;
    if !(t.core_top_fraction >= t.key_top_fraction && t.core_top_fraction <= 1.0) {
        return Err(invalid(
            "value_tiers.core_top_fraction",
            t.core_top_fraction,
            format!("key_top_fraction ({})..=1", t.key_top_fraction),
        ));
    }
    cfg.signals.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_settings() {
        let made = EngineSettings::new(&Config::default()).expect("the defaults are valid");
        assert_eq!(
            format!("{made:?}"),
            format!("{:?}", EngineSettings::default())
        );
    }

    #[test]
    fn settings_are_made_only_of_allowed_values() {
        let mut cfg = Config::default();
        cfg.score.exit_severity = 0.9;
        let e = EngineSettings::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("score.exit_severity"), "{e}");
        let mut cfg = Config::default();
        cfg.signals.inactivity.cadence_multiplier = -1.0;
        let e = EngineSettings::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("signals.inactivity.cadence_multiplier"), "{e}");
        // The Kafka sections are not the engine's: an invalid one does not stop it.
        let mut cfg = Config::default();
        cfg.kafka.workers = 100_000;
        assert!(EngineSettings::new(&cfg).is_ok());
        assert!(cfg.validate().is_err());
    }
}
