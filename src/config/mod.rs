//! Configuration: one TOML file (every option documented with its default in
//! `config/default.toml`), environment overrides, and validation into typed values
//! before anything starts. An invalid value is reported with its key, the value and
//! what is allowed.
//!
//! Environment overrides: `CHURNSIGNAL__<SECTION>__<KEY>=<value>`, sections nested with
//! double underscores, e.g. `CHURNSIGNAL__SIGNALS__INACTIVITY__CADENCE_MULTIPLIER=2.5`.
//! A key whose default is a string, and every librdkafka property, takes the text as it
//! is; other values are read as TOML values (`2.5`, `true`), a bare word as a string
//! (see `env.rs`).

use std::path::Path;

use serde::Deserialize;

use crate::time::{DAY_MS, SECOND_MS};

mod env;
mod http;
mod kafka;
mod properties;
pub mod secret;
mod settings;
mod signals;
mod slack;
pub use http::{CustomerApiConfig, HttpConfig};
pub use kafka::{
    EncodingConfig, GroupProtocol, Guarantee, InputTopic, KafkaConfig, LogConfig, LogFormat,
    OffsetReset, ProcessingConfig, TopicsConfig,
};
pub use properties::{Properties, OWNED_PROPERTIES};
pub use secret::is_secret;
pub use settings::EngineSettings;
pub use signals::{
    ConsumptionDropConfig, DiscountPressureConfig, EngagementDeclineConfig, InactivityConfig,
    NoSecondPurchaseConfig, NpsDetractorConfig, SignalsConfig, SupportTensionConfig,
};
pub use slack::{Route, SlackConfig, WebhookSource};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CHURNSIGNAL__";

/// The most buckets a customer's window ring holds (recent + baseline).
pub const MAX_RING_BUCKETS: u32 = 16;

/// Errors of loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("invalid config{}: {message}", origin.as_deref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Parse {
        /// The file or environment variable.
        origin: Option<String>,
        /// The parser's message (names the key and the line).
        message: String,
    },
    /// A value outside what is allowed.
    #[error("invalid config value: `{key}` = {value}; allowed: {allowed}")]
    Invalid {
        /// Dotted key, e.g. `engine.bucket_days`.
        key: String,
        /// The value as given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
}

impl ConfigError {
    /// Stable code, for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_read",
            ConfigError::Parse { .. } => "config_parse",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Input decoding limits.
    pub input: InputConfig,
    /// Windows, time and lateness.
    pub engine: EngineConfig,
    /// Population baseline.
    pub population: PopulationConfig,
    /// Health score and hysteresis.
    pub score: ScoreConfig,
    /// Risk levels.
    pub risk: RiskConfig,
    /// Value tiers.
    pub value_tiers: TierConfig,
    /// Alert emission.
    pub alerts: AlertsConfig,
    /// The seven signals.
    pub signals: SignalsConfig,
    /// The live service's Kafka clients and topics.
    pub kafka: KafkaConfig,
    /// The HTTP server (metrics, health, customer API).
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Slack forwarder (`churnsignal slack`).
    pub slack: SlackConfig,
}

/// `[input]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Largest accepted event, bytes.
    pub max_event_bytes: usize,
    /// How far in the future (wall clock) `occurred_at` may be, seconds.
    pub max_clock_skew_secs: u64,
    /// Events before this instant (RFC 3339) are refused as `too_old`: an epoch-zero or
    /// year-0 date is a producer's bug, not history. "" = no bound.
    pub min_event_time: String,
    /// Events older than stream time by more than this many days are refused as
    /// `too_old` (0 = no bound).
    pub max_event_age_days: u32,
    /// Largest accepted `amount` (larger ones are `out_of_range`).
    pub max_amount: f64,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_event_bytes: 65_536,
            max_clock_skew_secs: 300,
            min_event_time: "2000-01-01T00:00:00Z".into(),
            max_event_age_days: 400,
            max_amount: 1e12,
        }
    }
}

impl InputConfig {
    /// `min_event_time` as an instant (the earliest one when unset; validated).
    pub fn min_event_time(&self) -> crate::time::Timestamp {
        crate::time::Timestamp::parse_rfc3339(&self.min_event_time)
            .unwrap_or(crate::time::Timestamp(i64::MIN))
    }
}

/// What to do with events older than the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Apply them if their bucket is still in the window ring; count them.
    Apply,
    /// Count and drop them.
    Drop,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Width of one window bucket, days.
    pub bucket_days: u32,
    /// Buckets in the recent window (the current, partial bucket included).
    pub recent_buckets: u32,
    /// Buckets in the baseline, right before the recent window.
    pub baseline_buckets: u32,
    /// Watermark = max event time seen minus this, seconds.
    pub allowed_lateness_secs: u64,
    /// `apply` or `drop` events older than the watermark.
    pub late_events: LatePolicy,
    /// Skip re-evaluating a customer on events that can only improve their signals
    /// (engagement, orders without discount) while no alert is open for them.
    pub skip_benign_evaluations: bool,
    /// Customers with no event for this many days are forgotten (0 = never).
    pub evict_after_days: u32,
    /// Most customers held at once (0 = no cap); at the cap the least recently active
    /// customer is forgotten for each new one. The live service divides it among its
    /// partition engines.
    pub max_customers: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bucket_days: 7,
            recent_buckets: 4,
            baseline_buckets: 12,
            allowed_lateness_secs: 3_600,
            late_events: LatePolicy::Apply,
            skip_benign_evaluations: true,
            evict_after_days: 400,
            max_customers: 0,
        }
    }
}

impl EngineConfig {
    /// Bucket width in milliseconds.
    pub fn bucket_ms(&self) -> i64 {
        i64::from(self.bucket_days) * DAY_MS
    }
    /// Allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.allowed_lateness_secs as i64 * SECOND_MS
    }
    /// Days covered by the recent window when its last bucket is complete.
    pub fn recent_days(&self) -> u32 {
        self.bucket_days * self.recent_buckets
    }
}

/// `[population]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopulationConfig {
    /// Discount declines shared by the whole population.
    pub enabled: bool,
    /// Customers an engine must track before the population baseline is used.
    pub min_customers: u32,
    /// The strongest correction: a population at 10% of its usual activity counts as
    /// this fraction.
    pub min_factor: f64,
}

impl Default for PopulationConfig {
    fn default() -> Self {
        PopulationConfig {
            enabled: true,
            min_customers: 50,
            min_factor: 0.1,
        }
    }
}

/// `[score]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Severity at which a signal becomes active.
    pub entry_severity: f64,
    /// Severity below which an active signal clears (stricter than entry).
    pub exit_severity: f64,
    /// No longer used (the purchase model took its place); accepted so that older files
    /// still load.
    pub relationship_weight: f64,
    /// The score's horizon: how likely the customer is to order within this many days
    /// (the purchase model's answer) is what it starts from.
    pub horizon_days: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            entry_severity: 0.5,
            exit_severity: 0.35,
            relationship_weight: 0.2,
            horizon_days: 90.0,
        }
    }
}

/// `[risk]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Health below this is `critical`.
    pub critical_below: u32,
    /// Health below this is `high`.
    pub high_below: u32,
    /// Health below this is `medium`; otherwise `low`.
    pub medium_below: u32,
    /// Raise risk one level for `key` accounts.
    pub raise_for_key_accounts: bool,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            critical_below: 30,
            high_below: 50,
            medium_below: 70,
            raise_for_key_accounts: true,
        }
    }
}

/// `[value_tiers]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Top fraction of customers by trailing revenue that is `key`.
    pub key_top_fraction: f64,
    /// Top fraction that is `key` or `core`; the rest is `tail`.
    pub core_top_fraction: f64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            key_top_fraction: 0.2,
            core_top_fraction: 0.5,
        }
    }
}

/// `[alerts]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Reminder after this many seconds without change (status `open`, same id); 0 = never.
    pub repeat_after_secs: u64,
}

impl Config {
    /// Loads `path` (or the built-in defaults when `None`), applies environment
    /// overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
                Some(p.display().to_string()),
            ),
            None => (String::new(), None),
        };
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: secret::toml_error(&text, &e),
        })?;
        env::apply_env(&mut value, env)?;
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin,
                message: typed_error(&e),
            })?;
        cfg.validate()?;
        cfg.register_secrets();
        Ok(cfg)
    }

    /// Parses a TOML string (no environment), validates.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: None,
            message: secret::toml_error(text, &e),
        })?;
        cfg.validate()?;
        cfg.register_secrets();
        Ok(cfg)
    }

    /// Remembers the secret values of the configuration, so that no output prints
    /// them (see [`secret::redact`]).
    pub fn register_secrets(&self) {
        let k = &self.kafka;
        for props in [
            &k.properties,
            &k.consumer_properties,
            &k.producer_properties,
        ] {
            for (key, value) in props.pairs() {
                if is_secret(key) {
                    secret::register(&value);
                }
            }
        }
    }

    /// Checks every value against what is allowed: the engine's sections (see
    /// [`EngineSettings`]), then Kafka, HTTP, logging and Slack.
    pub fn validate(&self) -> Result<(), ConfigError> {
        settings::validate(self)?;
        self.kafka.validate()?;
        self.http.validate()?;
        check_log_level("log.level", &self.log.level)?;
        self.slack.validate()?;
        Ok(())
    }
}

/// A type error of the parsed table, with quoted values removed when it is about a
/// secret key.
fn typed_error(e: &toml::de::Error) -> String {
    let m = e.to_string().trim().to_owned();
    if is_secret(&m) {
        // the value is quoted in the message; the key comes after "in"
        match m.split_once("\nin `") {
            Some((what, key)) => format!("{}\nin `{key}", secret::without_quoted(what)),
            None => secret::without_quoted(&m),
        }
    } else {
        m
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// A log filter: comma-separated directives, each a level or `target=level`. (A bare
/// word such as `inf` would be read by tracing as a target, enabling that target alone
/// and silencing the service.)
fn check_log_level(key: &str, v: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let ok = v.split(',').all(|d| {
        let level = d.rsplit_once('=').map_or(
            d,
            |(target, level)| {
                if target.trim().is_empty() {
                    ""
                } else {
                    level
                }
            },
        );
        LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            v,
            "comma-separated levels (trace, debug, info, warn, error, off) or target=level, e.g. `info,librdkafka=warn`",
        ))
    }
}

fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(invalid(key, v, format!("{lo}..={hi}")))
    }
}

/// An HTTP listen address: empty (disabled) or `ip:port`.
fn check_listen(key: &str, v: &str, example_port: u16) -> Result<(), ConfigError> {
    if v.is_empty() || v.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    Err(invalid(
        key,
        format!("\"{v}\""),
        format!("an address like \"0.0.0.0:{example_port}\" (port 0: any free port), or \"\" to disable"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_default_file_equals_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let from_file = Config::load(Some(&path), Vec::new()).unwrap();
        let built_in = Config::load(None, Vec::new()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{built_in:?}"));
    }

    #[test]
    fn environment_overrides_win_and_are_typed() {
        let c = Config::load(
            None,
            env(&[
                (
                    "CHURNSIGNAL__SIGNALS__INACTIVITY__CADENCE_MULTIPLIER",
                    "2.5",
                ),
                ("CHURNSIGNAL__ENGINE__LATE_EVENTS", "drop"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.signals.inactivity.cadence_multiplier, 2.5);
        assert_eq!(c.engine.late_events, LatePolicy::Drop);
    }

    #[test]
    fn environment_overrides_of_strings_and_properties_stay_text() {
        let c = Config::load(
            None,
            env(&[
                ("CHURNSIGNAL__KAFKA__GROUP_ID", "0x1F"),
                ("CHURNSIGNAL__KAFKA__CLIENT_ID", "true"),
                ("CHURNSIGNAL__KAFKA__PROPERTIES__SASL_USERNAME", "0x1F"),
                ("CHURNSIGNAL__KAFKA__PROPERTIES__SASL.PASSWORD", "1e3"),
                (
                    "CHURNSIGNAL__KAFKA__CONSUMER_PROPERTIES__FETCH_MAX_BYTES",
                    "1048576",
                ),
                ("CHURNSIGNAL__ENGINE__BUCKET_DAYS", "14"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "0x1F");
        assert_eq!(c.kafka.client_id, "true");
        let props: Vec<(&str, String)> = c.kafka.properties.pairs().collect();
        assert_eq!(
            props,
            vec![
                ("sasl.password", "1e3".to_owned()),
                ("sasl.username", "0x1F".to_owned())
            ]
        );
        let consumer: Vec<(&str, String)> = c.kafka.consumer_properties.pairs().collect();
        assert_eq!(consumer, vec![("fetch.max.bytes", "1048576".to_owned())]);
        assert_eq!(c.engine.bucket_days, 14);
    }

    #[test]
    fn a_bad_value_names_key_value_and_what_is_allowed() {
        let err = Config::from_toml("[engine]\nbucket_days = 0\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("engine.bucket_days") && msg.contains("= 0") && msg.contains("1..=28"),
            "{msg}"
        );
        let err = Config::from_toml("[score]\nexit_severity = 0.9\n").unwrap_err();
        assert!(err.to_string().contains("score.exit_severity"), "{err}");
        let err =
            Config::from_toml("[engine]\nrecent_buckets = 8\nbaseline_buckets = 12\n").unwrap_err();
        assert!(err.to_string().contains("engine.baseline_buckets"), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let err = Config::from_toml("[engine]\nbucket_dayz = 7\n").unwrap_err();
        assert!(err.to_string().contains("bucket_dayz"), "{err}");
        let err = Config::from_toml("[engine]\nlate_events = \"keep\"\n").unwrap_err();
        assert!(
            err.to_string().contains("late_events") || err.to_string().contains("keep"),
            "{err}"
        );
        let err =
            Config::load(None, env(&[("CHURNSIGNAL__ENGINE__BUCKET_DAYS", "seven")])).unwrap_err();
        assert!(err.to_string().contains("bucket_days"), "{err}");
    }

    #[test]
    fn a_type_error_on_a_secret_key_does_not_show_the_value() {
        // (a file is parsed into a table first; its type errors have no line to show)
        let path = std::env::temp_dir().join(format!("cs-typed-{}.toml", std::process::id()));
        std::fs::write(&path, "[http.customer_api]\ntokens_env = 987654321\n").unwrap();
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains("tokens_env") && !err.contains("987654321"),
            "{err}"
        );
    }

    #[test]
    fn a_log_level_is_levels_or_target_level_pairs() {
        for good in [
            "info",
            "WARN",
            "info,librdkafka=warn",
            "churnsignal::kafka=debug, error",
        ] {
            let mut cfg = Config::default();
            cfg.log.level = good.into();
            assert!(cfg.validate().is_ok(), "{good}");
        }
        for bad in [
            "inf",
            "",
            "info,",
            "churnsignal",
            "=debug",
            "librdkafka=loud",
        ] {
            let mut cfg = Config::default();
            cfg.log.level = bad.into();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.contains("log.level") && e.contains("target=level"),
                "{bad}: {e}"
            );
        }
    }
}
