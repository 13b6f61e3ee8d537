//! `[kafka.properties]`, `[kafka.consumer_properties]`, `[kafka.producer_properties]`:
//! librdkafka properties passed through, each checked by churnsignal before librdkafka
//! sees it (owned ones, unsafe ones, names librdkafka does not know, values it refuses),
//! secret values never printed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{invalid, is_secret, ConfigError};

/// librdkafka properties that churnsignal sets itself, with the option to use instead.
pub const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    ("client.id", "kafka.client_id"),
    ("auto.offset.reset", "kafka.auto_offset_reset"),
    ("partitioner", "kafka.partitioner"),
    (
        "enable.auto.commit",
        "nothing: offsets are committed after the alerts they caused are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "nothing: offsets are committed after the alerts they caused are acknowledged",
    ),
    (
        "enable.idempotence",
        "nothing: the producer is always idempotent",
    ),
    ("acks", "nothing: alerts are always produced with acks=all"),
    (
        "request.required.acks",
        "nothing: alerts are always produced with acks=all",
    ),
    (
        "message.timeout.ms",
        "nothing: alerts are retried until delivered or shutdown",
    ),
    (
        "delivery.timeout.ms",
        "nothing: alerts are retried until delivered or shutdown",
    ),
    (
        "partition.assignment.strategy",
        "nothing: co-partitioned topics need the range assignor",
    ),
    ("group.protocol", "kafka.group_protocol"),
    (
        "group.remote.assignor",
        "nothing: co-partitioned topics need the range assignor",
    ),
    (
        "transactional.id",
        "kafka.processing.transactional_id_prefix",
    ),
    ("group.instance.id", "kafka.group_instance_id"),
    ("isolation.level", "nothing: read_committed is always used"),
    (
        "statistics.interval.ms",
        "nothing: churnsignal reads positions from statistics every 500 ms",
    ),
    ("enable.partition.eof", "nothing"),
];

/// A table of librdkafka properties. Values may be strings, numbers or booleans.
/// `Debug` prints secret values (passwords, keys) as `<redacted>`.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, toml::Value>);

impl Properties {
    /// (key, value as librdkafka reads it) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, String)> {
        self.0.iter().map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.as_str(), s)
        })
    }

    /// Each property is checked by churnsignal before librdkafka sees it: owned ones
    /// and unsafe ones are refused, then librdkafka is asked whether it knows the name
    /// and takes the value. An error names the key; it shows the value only when the
    /// name is known and not a secret.
    pub(super) fn validate(
        &self,
        section: &str,
        allow_unsafe: &[String],
    ) -> Result<(), ConfigError> {
        for ((k, v), (_, text)) in self.0.iter().zip(self.pairs()) {
            let key = format!("{section}.\"{k}\"");
            let shown = if is_secret(k) {
                super::secret::REDACTED.to_owned()
            } else {
                v.to_string()
            };
            if !matches!(
                v,
                toml::Value::String(_)
                    | toml::Value::Integer(_)
                    | toml::Value::Float(_)
                    | toml::Value::Boolean(_)
            ) {
                return Err(invalid(&key, shown, "a string, number or boolean"));
            }
            if let Some((_, instead)) = OWNED_PROPERTIES.iter().find(|(o, _)| o == k) {
                return Err(invalid(
                    &key,
                    "(set)",
                    format!("not this property: churnsignal owns it; use {instead}"),
                ));
            }
            if let Some(why) = unsafe_property(k, &text) {
                if !allow_unsafe.iter().any(|a| a == k) {
                    return Err(invalid(
                        &key,
                        shown,
                        format!("not this property unless kafka.allow_unsafe_properties lists \"{k}\": it {why}"),
                    ));
                }
            }
            librdkafka_takes(&key, k, &text, shown)?;
        }
        Ok(())
    }
}

/// Properties that load code, run commands or turn off verification (with the value
/// that does it, when only some values are unsafe): why, or `None`.
fn unsafe_property(k: &str, v: &str) -> Option<&'static str> {
    let off = matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "none" | ""
    );
    let on = matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1");
    match k {
        "plugin.library.paths" | "ssl.engine.location" | "ssl.providers" => {
            Some("loads code into the process")
        }
        "sasl.kerberos.kinit.cmd" => Some("runs a shell command"),
        "enable.ssl.certificate.verification" if off => {
            Some("turns off verification of the brokers' certificates")
        }
        "ssl.endpoint.identification.algorithm" if off => {
            Some("turns off verification of the brokers' host names")
        }
        "enable.sasl.oauthbearer.unsecure.jwt" if on => Some("accepts unsigned tokens"),
        _ => None,
    }
}

/// librdkafka's own check of one property (on a configuration object that is never
/// used): an unknown name or a value it refuses is a configuration error here, before
/// a client is created, and its message never holds a secret value.
fn librdkafka_takes(key: &str, k: &str, v: &str, shown: String) -> Result<(), ConfigError> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;
    let mut c = rdkafka::ClientConfig::new();
    c.set(k, v);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            let hint = if k.contains('_') && !k.contains('.') {
                format!(" (did you mean \"{}\"?)", k.replace('_', "."))
            } else {
                String::new()
            };
            Err(invalid(
                key,
                "(not shown)",
                format!("a librdkafka property: there is no property \"{k}\"{hint}; see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"),
            ))
        }
        Err(KafkaError::ClientConfig(_, desc, ..)) => {
            // librdkafka's reason, without the value if it quotes a secret one
            let desc = if is_secret(k) && !v.is_empty() {
                desc.replace(v, super::secret::REDACTED)
            } else {
                desc
            };
            Err(invalid(
                key,
                shown,
                format!("a value librdkafka takes ({desc})"),
            ))
        }
        Err(_) => Ok(()),
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.pairs() {
            if is_secret(k) {
                m.entry(&k, &"<redacted>");
            } else {
                m.entry(&k, &v);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn owned_properties_are_refused_with_the_option_to_use() {
        let err = Config::from_toml("[kafka.properties]\n\"group.id\" = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kafka.properties.\"group.id\"") && msg.contains("kafka.group_id"),
            "{msg}"
        );
        let err = Config::from_toml("[kafka.producer_properties]\nacks = 1\n").unwrap_err();
        assert!(err.to_string().contains("acks=all"), "{err}");
    }

    #[test]
    fn librdkafka_checks_each_property_and_unknown_ones_never_show_their_value() {
        let err = Config::from_toml("[kafka.properties]\n\"sasl.pasword\" = \"hunter2-SECRET\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sasl.pasword") && err.contains("no property") && !err.contains("hunter2"),
            "{err}"
        );
        let err = Config::from_toml("[kafka.properties]\nsasl_password = \"hunter2-SECRET\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean \"sasl.password\"") && !err.contains("hunter2"),
            "{err}"
        );
        let err = Config::from_toml("[kafka.producer_properties]\n\"linger.ms\" = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("linger.ms") && err.contains("soon"), "{err}");
        assert!(Config::from_toml(
            "[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.password\" = \"x\"\n[kafka.consumer_properties]\n\"fetch.max.bytes\" = 1048576\n"
        )
        .is_ok());
    }

    #[test]
    fn code_loading_and_verification_off_properties_need_an_explicit_allowance() {
        for (k, v) in [
            ("plugin.library.paths", "\"/tmp/evil.so\""),
            ("sasl.kerberos.kinit.cmd", "\"touch /tmp/x\""),
            ("enable.ssl.certificate.verification", "false"),
            ("ssl.endpoint.identification.algorithm", "\"none\""),
            ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
        ] {
            let toml = format!("[kafka.properties]\n\"{k}\" = {v}\n");
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(
                err.contains(k) && err.contains("allow_unsafe_properties"),
                "{k}: {err}"
            );
            let allowed = format!("[kafka]\nallow_unsafe_properties = [\"{k}\"]\n{toml}");
            let r = Config::from_toml(&allowed);
            assert!(
                r.as_ref()
                    .err()
                    .is_none_or(|e| !e.to_string().contains("allow_unsafe_properties")),
                "{k} is allowed when listed: {r:?}"
            );
        }
        assert!(Config::from_toml(
            "[kafka.properties]\n\"enable.ssl.certificate.verification\" = true\n"
        )
        .is_ok());
    }
}
