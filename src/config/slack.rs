//! `[slack]`: the Slack forwarder (`churnsignal slack`). It shares `[kafka]` (brokers,
//! properties, the alerts topic) with the service and adds its own consumer group,
//! the webhooks and the routes from alerts to webhooks. Webhook URLs are secrets: they
//! come from a file or an environment variable, never from this file, and are never
//! printed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{check_listen, check_range, invalid, ConfigError, OffsetReset};

/// `[slack]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// The forwarder's consumer group (its own: it reads every alert).
    pub group_id: String,
    /// Where a new group starts on the alerts topic.
    pub auto_offset_reset: OffsetReset,
    /// Listen address of its `/metrics`, `/healthz` and `/readyz`; "" disables.
    pub listen: String,
    /// One POST's timeout, seconds.
    pub timeout_secs: u64,
    /// First back-off after a failed post (5xx, network), ms; doubled per retry.
    pub retry_initial_ms: u64,
    /// Longest back-off, ms (also the pace of retries to a webhook that refuses).
    pub retry_max_ms: u64,
    /// Longest wait a `Retry-After` header is honoured with, seconds.
    pub retry_after_max_secs: u64,
    /// Alerts per partition remembered to drop repeats of (also read back on assignment).
    pub dedup_lookback: u64,
    /// Alerts of one partition that may wait for their webhook before the partition
    /// pauses (a failing webhook holds back its own alerts only, up to this many).
    pub max_waiting: u64,
    /// Post resolved alerts too.
    pub post_resolved: bool,
    /// Named webhooks.
    pub webhooks: BTreeMap<String, WebhookSource>,
    /// Routes, first match wins; an alert no route matches is not posted.
    pub routes: Vec<Route>,
    /// Accept `http://` webhook URLs (a proxy or a test server); else `https://` only.
    pub allow_http_webhooks: bool,
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            group_id: "churnsignal-slack".into(),
            auto_offset_reset: OffsetReset::Latest,
            listen: "0.0.0.0:8081".into(),
            timeout_secs: 10,
            retry_initial_ms: 1000,
            retry_max_ms: 60_000,
            retry_after_max_secs: 900,
            dedup_lookback: 10_000,
            max_waiting: 200,
            post_resolved: true,
            webhooks: BTreeMap::new(),
            routes: Vec::new(),
            allow_http_webhooks: false,
        }
    }
}

/// Where a webhook URL is read from: exactly one of the two.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSource {
    /// A file holding the URL (a mounted secret); surrounding whitespace is trimmed.
    pub url_file: String,
    /// An environment variable holding the URL.
    pub url_env: String,
}

impl fmt::Debug for WebhookSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names of where the secret lives, never the secret.
        f.debug_struct("WebhookSource")
            .field("url_file", &self.url_file)
            .field("url_env", &self.url_env)
            .finish()
    }
}

/// A route: alerts matching every given list go to `webhook`. An empty list matches
/// anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// Risk levels (`low`, `medium`, `high`, `critical`).
    pub risk: Vec<String>,
    /// Value tiers (`key`, `core`, `tail`).
    pub value_tier: Vec<String>,
    /// Statuses (`open`, `escalated`, `resolved`).
    pub status: Vec<String>,
    /// The webhook's name in `[slack.webhooks]`.
    pub webhook: String,
}

const RISKS: [&str; 4] = ["low", "medium", "high", "critical"];
const TIERS: [&str; 3] = ["key", "core", "tail"];
const STATUSES: [&str; 3] = ["open", "escalated", "resolved"];

impl SlackConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.is_empty() {
            return Err(invalid("slack.group_id", "\"\"", "a consumer group name"));
        }
        check_listen("slack.listen", &self.listen, 8081)?;
        check_range("slack.timeout_secs", self.timeout_secs as f64, 1.0, 300.0)?;
        check_range(
            "slack.retry_initial_ms",
            self.retry_initial_ms as f64,
            1.0,
            3_600_000.0,
        )?;
        check_range(
            "slack.retry_max_ms",
            self.retry_max_ms as f64,
            self.retry_initial_ms as f64,
            3_600_000.0,
        )?;
        check_range(
            "slack.retry_after_max_secs",
            self.retry_after_max_secs as f64,
            1.0,
            86_400.0,
        )?;
        check_range(
            "slack.dedup_lookback",
            self.dedup_lookback as f64,
            0.0,
            10_000_000.0,
        )?;
        check_range("slack.max_waiting", self.max_waiting as f64, 1.0, 1000.0)?;
        for (name, w) in &self.webhooks {
            let key = format!("slack.webhooks.{name}");
            match (w.url_file.is_empty(), w.url_env.is_empty()) {
                (false, true) | (true, false) => {}
                _ => {
                    return Err(invalid(
                        &key,
                        "(url_file and url_env both set or both empty)",
                        "exactly one of url_file (a file holding the URL) or url_env (an environment variable holding it)",
                    ))
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("slack.routes[{i}]");
            if !self.webhooks.contains_key(&r.webhook) {
                let known: Vec<&str> = self.webhooks.keys().map(String::as_str).collect();
                return Err(invalid(
                    &format!("{key}.webhook"),
                    format!("\"{}\"", r.webhook),
                    format!("a webhook named in [slack.webhooks]: {known:?}"),
                ));
            }
            for (field, values, allowed) in [
                ("risk", &r.risk, &RISKS[..]),
                ("value_tier", &r.value_tier, &TIERS[..]),
                ("status", &r.status, &STATUSES[..]),
            ] {
                if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
                    return Err(invalid(
                        &format!("{key}.{field}"),
                        format!("\"{bad}\""),
                        format!("any of {allowed:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The name of the webhook an alert goes to, if any route matches.
    pub fn route(&self, risk: &str, value_tier: &str, status: &str) -> Option<&str> {
        if status == "resolved" && !self.post_resolved {
            return None;
        }
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        self.routes
            .iter()
            .find(|r| {
                any(&r.risk, risk) && any(&r.value_tier, value_tier) && any(&r.status, status)
            })
            .map(|r| r.webhook.as_str())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const ROUTED: &str = r#"
[slack.webhooks]
key-accounts = { url_file = "/run/secrets/key" }
everyone = { url_env = "SLACK_URL" }

[[slack.routes]]
risk = ["high", "critical"]
value_tier = ["key"]
webhook = "key-accounts"

[[slack.routes]]
status = ["open", "escalated"]
webhook = "everyone"
"#;

    #[test]
    fn the_first_matching_route_wins_and_unmatched_alerts_go_nowhere() {
        let c = Config::from_toml(ROUTED).unwrap();
        let s = &c.slack;
        assert_eq!(s.route("high", "key", "open"), Some("key-accounts"));
        assert_eq!(s.route("critical", "key", "resolved"), Some("key-accounts"));
        assert_eq!(s.route("high", "core", "open"), Some("everyone"));
        assert_eq!(s.route("low", "tail", "escalated"), Some("everyone"));
        assert_eq!(s.route("low", "tail", "resolved"), None);
    }

    #[test]
    fn resolved_alerts_can_be_left_out() {
        let c = Config::from_toml(&format!("{ROUTED}\n")).unwrap();
        let mut s = c.slack.clone();
        s.post_resolved = false;
        assert_eq!(s.route("critical", "key", "resolved"), None);
        assert_eq!(s.route("critical", "key", "open"), Some("key-accounts"));
    }

    #[test]
    fn routes_name_known_webhooks_and_known_values() {
        let err = Config::from_toml("[[slack.routes]]\nwebhook = \"nope\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("slack.routes[0].webhook") && msg.contains("nope"),
            "{msg}"
        );
        let err = Config::from_toml(
            "[slack.webhooks]\na = { url_env = \"X\" }\n[[slack.routes]]\nrisk = [\"severe\"]\nwebhook = \"a\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("slack.routes[0].risk")
                && msg.contains("severe")
                && msg.contains("critical"),
            "{msg}"
        );
        let err =
            Config::from_toml("[slack.webhooks]\na = { url_env = \"X\", url_file = \"/f\" }\n")
                .unwrap_err();
        assert!(err.to_string().contains("slack.webhooks.a"), "{err}");
        let err = Config::from_toml("[slack]\nretry_max_ms = 10\n").unwrap_err();
        assert!(err.to_string().contains("slack.retry_max_ms"), "{err}");
    }

    #[test]
    fn a_webhook_url_in_the_file_is_refused() {
        let err = Config::from_toml(
            "[slack.webhooks]\na = { url = \"https://hooks.slack.com/services/T/B/secret\" }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
    }
}
