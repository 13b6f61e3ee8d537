//! The HTTP server: `/metrics` (Prometheus text), `/healthz` (liveness), `/readyz`
//! (readiness) and `GET /customers/{id}` (the customer's health record). It runs on its
//! own thread with a small Tokio runtime, so that it answers while the processing
//! threads are busy, and it knows the service only through [`Probe`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;

/// What the server asks the service.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` while every loop reports in time; else what stalled.
    fn live(&self) -> Result<(), String>;
    /// `Ok` when the service should receive traffic; else why not.
    fn ready(&self) -> Result<(), String>;
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

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes open requests, joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone)]
struct AppState {
    probe: Arc<dyn Probe>,
    metrics: PrometheusHandle,
}

/// Binds `listen` and serves until [`Server::stop`].
pub fn serve(
    listen: SocketAddr,
    probe: Arc<dyn Probe>,
    metrics: PrometheusHandle,
) -> std::io::Result<Server> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let state = AppState { probe, metrics };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("churnsignal-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "http listener");
                        return;
                    }
                };
                let app = router(state);
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "http server stopped");
                }
            })
        })?;
    Ok(Server {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/customers/{id}", get(customer))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn verdict(r: Result<(), String>) -> Response {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(s): State<AppState>) -> Response {
    verdict(s.probe.live())
}

async fn readyz(State(s): State<AppState>) -> Response {
    verdict(s.probe.ready())
}

async fn customer(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let probe = s.probe.clone();
    let looked = tokio::task::spawn_blocking(move || probe.customer(&id)).await;
    let json = |status: StatusCode, body: String| {
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
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

/// `GET url` with a plain TCP connection (http only): the HTTP status. For container
/// health checks (`churnsignal probe`), so that the image needs no curl.
pub fn probe(url: &str, timeout: std::time::Duration) -> Result<u16, String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{authority}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    // The status line, however the answer is cut into segments.
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 128];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))
}
