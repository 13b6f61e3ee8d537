//! The HTTP servers: the operations server (`/metrics`, `/healthz`, `/readyz`) and the
//! customer API (`GET /customers/{id}`, see [`super::api`]). Each runs on its own thread
//! with a small Tokio runtime, so that it answers while the processing threads are busy.
//!
//! Slow and hostile clients cannot hold a server: a connection must send a request's
//! headers within `header_read_timeout` (of connecting or of its previous answer), a
//! request is answered within `request_timeout` (else 503), headers are capped at
//! 16 KiB, and at `max_connections` the oldest connection is closed for each new one,
//! so that a health probe always gets through. Stopping closes idle connections at once
//! and gives requests in flight `shutdown_grace`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch, Notify};
use tower::ServiceExt;

pub use super::api::{api, ops, Access, Lookup, NotOk, Probe, RateLimit};

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's headers, from connecting or from the previous answer.
    pub header_read_timeout: Duration,
    /// Time to answer a request (503 after).
    pub request_timeout: Duration,
    /// Open connections; at the cap the oldest is closed for each new one.
    pub max_connections: usize,
    /// On stop, how long requests in flight may finish.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The limits `[http]` configures.
    pub fn from_config(c: &crate::config::HttpConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            request_timeout: Duration::from_secs(c.request_timeout_secs),
            max_connections: c.max_connections,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&crate::config::HttpConfig::default())
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle connections, gives requests in flight the shutdown
    /// grace, closes the rest, joins the thread.
    pub fn stop(mut self) {
        self.shutdown(Duration::MAX);
    }

    /// [`Server::stop`], giving requests in flight at most `budget` (what is left of
    /// the service's shutdown time).
    pub fn stop_within(mut self, budget: Duration) {
        self.shutdown(budget);
    }

    fn shutdown(&mut self, budget: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(budget);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown(Duration::MAX);
    }
}

/// Binds `listen` and serves `router` until [`Server::stop`]. `name` names the thread
/// and the log lines (`http`, `customer-api`).
pub fn serve(
    listen: SocketAddr,
    router: Router,
    limits: Limits,
    name: &'static str,
) -> std::io::Result<Server> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<Duration>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("churnsignal-{name}"))
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => accept_loop(listener, router, limits, rx, name).await,
                    Err(e) => tracing::error!(server = name, error = %e, "http listener"),
                }
            })
        })?;
    Ok(Server {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// The open connections, oldest first, each with the signal that closes it at once.
type Open = Arc<Mutex<BTreeMap<u64, Arc<Notify>>>>;

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    mut stop: oneshot::Receiver<Duration>,
    name: &'static str,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(16 * 1024);
    let open: Open = Arc::default();
    let (closing_tx, closing) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    let mut accept_errors = 0u64;
    let mut last_error_log: Option<tokio::time::Instant> = None;
    let budget = loop {
        let accepted = tokio::select! {
            budget = &mut stop => break budget.unwrap_or(Duration::ZERO),
            a = listener.accept() => a,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (EMFILE) or a connection reset before accept:
                // say so at most every 10 s, and let connections close before retrying.
                accept_errors += 1;
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(server = name, error = %e, errors = accept_errors, "cannot accept HTTP connections");
                    last_error_log = Some(tokio::time::Instant::now());
                }
                evict_oldest(&open);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.lock().expect("open lock").len() >= limits.max_connections {
            evict_oldest(&open);
        }
        let id = next_id;
        next_id += 1;
        let evicted = Arc::new(Notify::new());
        open.lock().expect("open lock").insert(id, evicted.clone());
        let conn = http1.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(handler(router.clone(), peer, limits.request_timeout)),
        );
        let (open, mut closing, grace) = (open.clone(), closing.clone(), limits.shutdown_grace);
        tasks.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = evicted.notified() => {}
                _ = async { closing.wait_for(|c| *c).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
            open.lock().expect("open lock").remove(&id);
        });
    };
    drop(listener);
    let _ = closing_tx.send(true);
    let all_closed = async { while tasks.join_next().await.is_some() {} };
    let grace = limits.shutdown_grace.min(budget);
    if tokio::time::timeout(grace, all_closed).await.is_err() {
        tasks.abort_all();
    }
}

/// Closes the oldest open connection (it is the likeliest to be idle or slow).
fn evict_oldest(open: &Open) {
    let oldest = open.lock().expect("open lock").pop_first();
    if let Some((_, close)) = oldest {
        close.notify_one();
    }
}

/// The answer to one request, as hyper's `service_fn` wants it.
type Answer = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
            + Send,
    >,
>;

/// One request: the client's address as [`ConnectInfo`], the router, the time limit.
fn handler(
    router: Router,
    peer: SocketAddr,
    timeout: Duration,
) -> impl Fn(Request<Incoming>) -> Answer + Clone {
    move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        Box::pin(async move {
            let req = req.map(Body::new);
            match tokio::time::timeout(timeout, router.oneshot(req)).await {
                Ok(answer) => answer,
                Err(_) => {
                    Ok((StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response())
                }
            }
        })
    }
}

/// Why `churnsignal probe` got no HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not an `http://` URL.
    #[error("{0}: only http:// URLs can be probed")]
    NotHttp(String),
    /// The host did not resolve.
    #[error("{authority}: {reason}")]
    Address {
        /// host:port
        authority: String,
        /// Why.
        reason: String,
    },
    /// Connecting, sending or reading failed.
    #[error("{authority}: {error}")]
    Io {
        /// host:port
        authority: String,
        /// Why.
        error: std::io::Error,
    },
    /// The answer had no HTTP status line.
    #[error("{0}: not an HTTP answer")]
    NotHttpAnswer(String),
}

/// `GET url` with a plain TCP connection (http only): the HTTP status. For container
/// health checks (`churnsignal probe`), so that the image needs no curl.
pub fn probe(url: &str, timeout: std::time::Duration) -> Result<u16, ProbeError> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::NotHttp(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = |error| ProbeError::Io {
        authority: authority.to_owned(),
        error,
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| ProbeError::Address {
            authority: authority.to_owned(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ProbeError::Address {
            authority: authority.to_owned(),
            reason: "no address".to_owned(),
        })?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(io)?;
    // The status line, however the answer is cut into segments.
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 128];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::NotHttpAnswer(url.to_owned()))
}
