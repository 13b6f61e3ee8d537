//! What the HTTP servers answer: the operations routes (`/metrics`, `/healthz`,
//! `/readyz`, open to all) and the customer API (`GET /customers/{id}`: a customer's
//! revenue, order dates and NPS answers, so behind bearer tokens and a per-client rate
//! limit). Both know the service only through [`Probe`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::CustomerApiConfig;

/// Why `/healthz` or `/readyz` answers 503 (the body is its text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOk {
    /// A loop has not reported within the liveness timeout.
    #[error("{name} has not reported for {ms} ms")]
    Stalled {
        /// Which loop.
        name: String,
        /// Since when.
        ms: u64,
    },
    /// Stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The service failed and is stopping (the failure's text).
    #[error("failed: {0}")]
    Failed(String),
    /// The consumer left its group (its poll loop stalled).
    #[error("left the consumer group (poll loop stalled)")]
    LeftGroup,
    /// Nothing to work on.
    #[error("no {0} assigned")]
    NothingAssigned(&'static str),
    /// Partitions are being restored from the changelog.
    #[error("restoring the state of {0} partition(s)")]
    Restoring(usize),
    /// The lag is not known yet.
    #[error("consumer lag not known yet")]
    LagUnknown,
    /// The lag is above `kafka.ready_max_lag`.
    #[error("catching up: lag {lag} > {max}")]
    CatchingUp {
        /// The largest partition lag.
        lag: i64,
        /// The most allowed.
        max: i64,
    },
}

/// What the servers ask the service.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` while every loop reports in time; else what stalled.
    fn live(&self) -> Result<(), NotOk>;
    /// `Ok` when the service should receive traffic; else why not.
    fn ready(&self) -> Result<(), NotOk>;
    /// The health record of one customer, as JSON. Blocking.
    fn customer(&self, id: &str) -> Lookup;
}

/// Answer of [`Probe::customer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The record, JSON.
    Found(String),
    /// No partition engine of this instance holds the customer.
    NotOwned,
    /// The service cannot answer now (shutting down, a worker busy for too long).
    Unavailable(String),
}

#[derive(Clone)]
struct Ops {
    probe: Arc<dyn Probe>,
    metrics: PrometheusHandle,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn ops(probe: Arc<dyn Probe>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Ops { probe, metrics })
}

async fn metrics_text(State(s): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::render(&s.metrics),
    )
        .into_response()
}

fn verdict(r: Result<(), NotOk>) -> Response {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(s): State<Ops>) -> Response {
    verdict(s.probe.live())
}

async fn readyz(State(s): State<Ops>) -> Response {
    verdict(s.probe.ready())
}

/// Who may call the customer API: bearer tokens, compared in constant time. Never
/// printed (its `Debug` shows only how many tokens there are).
#[derive(Clone)]
pub struct Access {
    tokens: Arc<Vec<Vec<u8>>>,
    open: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.tokens.len())
            .field("open", &self.open)
            .finish()
    }
}

impl Access {
    /// The tokens `[http.customer_api]` names: lines of `tokens_file`, comma-separated
    /// values of the environment variable `tokens_env`. An error names the file or the
    /// variable, never a token.
    pub fn load(
        cfg: &CustomerApiConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Access, String> {
        let mut tokens = Vec::new();
        if !cfg.tokens_file.is_empty() {
            let text = std::fs::read_to_string(&cfg.tokens_file).map_err(|e| {
                format!(
                    "http.customer_api.tokens_file {}: {}",
                    cfg.tokens_file,
                    e.kind()
                )
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec()),
            );
        }
        if !cfg.tokens_env.is_empty() {
            let v = env(&cfg.tokens_env).ok_or_else(|| {
                format!(
                    "http.customer_api.tokens_env: the environment variable {} is not set",
                    cfg.tokens_env
                )
            })?;
            tokens.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.as_bytes().to_vec()),
            );
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
            return Err(format!(
                "http.customer_api: a bearer token of {} characters; tokens must have at least 16",
                short.len()
            ));
        }
        for t in &tokens {
            crate::config::secret::register(&String::from_utf8_lossy(t));
        }
        if tokens.is_empty() && !cfg.allow_unauthenticated {
            return Err(
                "http.customer_api: no bearer token in tokens_file or tokens_env, and allow_unauthenticated is false"
                    .into(),
            );
        }
        Ok(Access {
            tokens: Arc::new(tokens),
            open: cfg.allow_unauthenticated,
        })
    }

    /// Anyone may call (`allow_unauthenticated`, e.g. the demo on loopback).
    pub fn unauthenticated() -> Access {
        Access {
            tokens: Arc::new(Vec::new()),
            open: true,
        }
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        if self.open {
            return true;
        }
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        // Every token is compared, each in time that depends on its length only.
        self.tokens
            .iter()
            .fold(false, |found, t| found | constant_time_eq(given, t))
    }
}

/// `given == secret` in time that depends on `secret`'s length only.
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (i, s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!s);
        diff |= usize::from(std::hint::black_box(g ^ s));
    }
    diff == 0
}

/// A token bucket per client address: `rate_per_sec` requests a second, `burst` at once.
#[derive(Clone)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<IpAddr, (f64, Instant)>>>,
}

/// Clients remembered at most; past it, the full buckets are forgotten.
const MAX_CLIENTS: usize = 10_000;

impl RateLimit {
    /// `per_sec` requests a second per client, `burst` at once.
    pub fn new(per_sec: f64, burst: u32) -> RateLimit {
        RateLimit {
            per_sec,
            burst: f64::from(burst),
            buckets: Arc::default(),
        }
    }

    /// `Ok` when `client` may make a request now (and takes its token); else how many
    /// seconds until it may.
    fn take(&self, client: IpAddr, now: Instant) -> Result<(), f64> {
        let mut b = self.buckets.lock().expect("rate lock");
        if b.len() >= MAX_CLIENTS && !b.contains_key(&client) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = b.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_sec)
        }
    }
}

#[derive(Clone)]
struct Api {
    probe: Arc<dyn Probe>,
    access: Access,
    limit: RateLimit,
}

/// `GET /customers/{id}` behind `access` and `limit`.
pub fn api(probe: Arc<dyn Probe>, access: Access, limit: RateLimit) -> Router {
    let state = Api {
        probe,
        access,
        limit,
    };
    Router::new()
        .route("/customers/{id}", get(customer))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The rate limit first (so that tokens cannot be guessed fast), then the token.
async fn guard(State(s): State<Api>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if let Err(wait) = s.limit.take(client, Instant::now()) {
        let mut r = json(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"rate_limited","message":"too many requests from this address"}"#.into(),
        );
        if let Ok(v) = format!("{}", wait.ceil().max(1.0)).parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !s.access.admits(req.headers()) {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"unauthorized","message":"a valid bearer token is required"}"#.into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

async fn customer(State(s): State<Api>, Path(id): Path<String>) -> Response {
    let probe = s.probe.clone();
    let looked = tokio::task::spawn_blocking(move || probe.customer(&id)).await;
    match looked {
        Ok(Lookup::Found(record)) => json(StatusCode::OK, record),
        Ok(Lookup::NotOwned) => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_owned","message":"no partition of this instance holds this customer"}"#
                .into(),
        ),
        Ok(Lookup::Unavailable(why)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "unavailable", "message": why}).to_string(),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "internal", "message": e.to_string()}).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_match_exactly() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        for other in [
            &b"0123456789abcdeF"[..],
            b"0123456789abcde",
            b"0123456789abcdef0",
            b"",
        ] {
            assert!(!constant_time_eq(other, b"0123456789abcdef"));
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let l = RateLimit::new(2.0, 3);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(a, t0).is_ok());
        }
        let wait = l.take(a, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        assert!(l.take(b, t0).is_ok(), "another client has its own bucket");
        assert!(l.take(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.take(a, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn tokens_come_from_the_file_and_the_environment_and_are_never_shown() {
        let dir = std::env::temp_dir().join(format!("cs-tokens-{}", std::process::id()));
        std::fs::write(&dir, "# api clients\nfile-token-0123456789\n\n").unwrap();
        let cfg = CustomerApiConfig {
            listen: "127.0.0.1:0".into(),
            tokens_file: dir.display().to_string(),
            tokens_env: "API_TOKENS".into(),
            ..CustomerApiConfig::default()
        };
        let a = Access::load(&cfg, |k| {
            (k == "API_TOKENS").then(|| "env-token-0123456789, other-token-0123456789".into())
        })
        .unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(a.tokens.len(), 3);
        assert!(!format!("{a:?}").contains("token-0123"));
        let mut h = HeaderMap::new();
        assert!(!a.admits(&h), "no header");
        h.insert(
            header::AUTHORIZATION,
            "Bearer env-token-0123456789".parse().unwrap(),
        );
        assert!(a.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer env-token-012345678".parse().unwrap(),
        );
        assert!(!a.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "Basic file-token-0123456789".parse().unwrap(),
        );
        assert!(!a.admits(&h));
        let err = Access::load(&cfg, |_| None).unwrap_err();
        assert!(
            err.contains("API_TOKENS") || err.contains("tokens_file"),
            "{err}"
        );
        let short = Access::load(
            &CustomerApiConfig {
                tokens_env: "T".into(),
                ..CustomerApiConfig::default()
            },
            |_| Some("hunter2".into()),
        )
        .unwrap_err();
        assert!(
            !short.contains("hunter2") && short.contains("16"),
            "{short}"
        );
    }
}
