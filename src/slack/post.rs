//! POSTing to a Slack incoming webhook: the URL as a secret, the answer classified, and
//! the back-off between retries.

use std::fmt;
use std::time::Duration;

use crate::config::WebhookSource;

/// A webhook: its name (for logs and metrics) and its URL (a secret: `Debug` and
/// `Display` never show it).
pub struct Webhook {
    name: String,
    url: reqwest::Url,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &"<redacted>")
            .finish()
    }
}

impl Webhook {
    /// Reads the URL from where `source` says. Errors name the webhook and the file or
    /// variable, never the URL.
    pub fn resolve(
        name: &str,
        source: &WebhookSource,
        allow_http: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Webhook, String> {
        let (raw, origin) = if !source.url_file.is_empty() {
            let text = std::fs::read_to_string(&source.url_file).map_err(|e| {
                format!(
                    "slack.webhooks.{name}: cannot read url_file {}: {e}",
                    source.url_file
                )
            })?;
            (text, format!("url_file {}", source.url_file))
        } else {
            let v = env(&source.url_env).ok_or_else(|| {
                format!(
                    "slack.webhooks.{name}: the environment variable {} (url_env) is not set",
                    source.url_env
                )
            })?;
            (v, format!("url_env {}", source.url_env))
        };
        let url = reqwest::Url::parse(raw.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
            .ok_or_else(|| {
                format!(
                    "slack.webhooks.{name}: what {origin} holds is not an http(s) URL (its value is not shown: it is a secret)"
                )
            })?;
        if url.scheme() == "http" && !allow_http {
            return Err(format!(
                "slack.webhooks.{name}: what {origin} holds is an http:// URL; webhooks must be https:// (the URL is a secret sent in clear otherwise), unless slack.allow_http_webhooks = true"
            ));
        }
        crate::config::secret::register(url.as_str());
        crate::config::secret::register(raw.trim());
        Ok(Webhook {
            name: name.to_owned(),
            url,
        })
    }

    /// The webhook's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// 429, with the `Retry-After` it asked for.
    RateLimited {
        /// How long Slack asked to wait.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    ServerError {
        /// HTTP status.
        status: u16,
    },
    /// No answer (connection refused, timeout, TLS): the error without the URL.
    Network {
        /// What went wrong.
        error: String,
    },
    /// Another 4xx: Slack refused this post or this webhook (`invalid_blocks`,
    /// `no_service`, `channel_is_archived`, ...).
    Rejected {
        /// HTTP status.
        status: u16,
        /// Slack's error code (the body, clipped).
        body: String,
    },
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::ServerError { .. } => "server_error",
            Outcome::Network { .. } => "network_error",
            Outcome::Rejected { .. } => "rejected",
        }
    }

    /// Classifies an HTTP answer.
    pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            429 => Outcome::RateLimited {
                retry_after: retry_after.and_then(parse_retry_after),
            },
            500..=599 => Outcome::ServerError { status },
            _ => Outcome::Rejected {
                status,
                body: crate::alert::clip(body.trim(), 200),
            },
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Accepted => write!(f, "accepted"),
            Outcome::RateLimited { retry_after } => match retry_after {
                Some(d) => write!(f, "rate limited (429), Retry-After {} s", d.as_secs()),
                None => write!(f, "rate limited (429)"),
            },
            Outcome::ServerError { status } => write!(f, "server error ({status})"),
            Outcome::Network { error } => write!(f, "no answer: {error}"),
            Outcome::Rejected { status, body } => write!(f, "refused ({status}): {body}"),
        }
    }
}

/// `Retry-After` in seconds (Slack sends seconds; an HTTP date is not used by Slack and
/// falls back to the back-off).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Slack's answers that say the message itself was refused (not the webhook): worth one
/// more try with the text alone.
pub fn is_payload_error(body: &str) -> bool {
    body.starts_with("invalid_blocks")
        || body.starts_with("invalid_payload")
        || body.starts_with("invalid_attachments")
        || body.starts_with("too_many_attachments")
        || body.starts_with("no_text")
}

/// Exponential back-off with "equal jitter": the n-th wait is between half and all of
/// `initial × 2ⁿ`, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A back-off starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff {
            initial,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt += 1;
        // xorshift for the jitter: no need for a random-number crate here.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        full / 2 + full.mul_f64(0.5 * unit)
    }

    /// The longest wait.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// A blocking HTTP client for webhooks (clones share its connections).
#[derive(Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
}

impl Client {
    /// With a timeout per POST.
    pub fn new(timeout: Duration) -> reqwest::Result<Client> {
        Ok(Client {
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("churnsignal/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }

    /// POSTs a JSON body.
    pub fn post(&self, hook: &Webhook, body: &serde_json::Value) -> Outcome {
        let sent = self
            .http
            .post(hook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let text = resp.text().unwrap_or_default();
                Outcome::classify(status, retry_after.as_deref(), &text)
            }
            // `without_url`: reqwest's errors name the URL, which is the secret.
            Err(e) => Outcome::Network {
                error: e.without_url().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_slack_documents_them() {
        assert_eq!(Outcome::classify(200, None, "ok"), Outcome::Accepted);
        assert_eq!(
            Outcome::classify(429, Some("30"), "rate_limited"),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            Outcome::classify(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), ""),
            Outcome::RateLimited { retry_after: None }
        );
        assert_eq!(
            Outcome::classify(503, None, ""),
            Outcome::ServerError { status: 503 }
        );
        let r = Outcome::classify(404, None, "no_service\n");
        assert_eq!(
            r,
            Outcome::Rejected {
                status: 404,
                body: "no_service".into()
            }
        );
        assert!(!is_payload_error("no_service"));
        assert!(is_payload_error("invalid_blocks"));
    }

    #[test]
    fn back_off_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        for (n, w) in waits.iter().enumerate() {
            let full = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
            assert!(
                *w >= full / 2 && *w <= full,
                "wait {n}: {w:?} (full {full:?})"
            );
        }
        assert!(waits[7] >= Duration::from_millis(500));
    }

    #[test]
    fn webhook_urls_never_show_and_errors_name_the_source_only() {
        let src = WebhookSource {
            url_env: "HOOK".into(),
            ..Default::default()
        };
        let secret = "https://hooks.slack.com/services/T0/B0/s3cr3t";
        let hook = Webhook::resolve("key", &src, false, |_| Some(format!("  {secret}\n"))).unwrap();
        assert!(!format!("{hook:?}").contains("s3cr3t"));
        assert_eq!(hook.name(), "key");
        let err =
            Webhook::resolve("key", &src, false, |_| Some("s3cr3t-not-a-url".into())).unwrap_err();
        assert!(
            err.contains("slack.webhooks.key") && err.contains("HOOK"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = Webhook::resolve("key", &src, false, |_| None).unwrap_err();
        assert!(err.contains("HOOK") && err.contains("not set"), "{err}");
        let file = WebhookSource {
            url_file: "/nonexistent/hook".into(),
            ..Default::default()
        };
        let err = Webhook::resolve("key", &file, false, |_| None).unwrap_err();
        assert!(err.contains("/nonexistent/hook"), "{err}");
    }

    #[test]
    fn plain_http_webhooks_are_refused_unless_allowed() {
        let src = WebhookSource {
            url_env: "HOOK".into(),
            ..Default::default()
        };
        let plain = || Some("http://hooks.example/services/T0/B0/plain-s3cr3t".to_owned());
        let err = Webhook::resolve("key", &src, false, |_| plain()).unwrap_err();
        assert!(
            err.contains("https://")
                && err.contains("allow_http_webhooks")
                && !err.contains("s3cr3t"),
            "{err}"
        );
        assert!(Webhook::resolve("key", &src, true, |_| plain()).is_ok());
    }
}
