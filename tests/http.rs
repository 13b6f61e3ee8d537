//! The HTTP servers against slow, idle, many and unauthenticated clients: the real
//! server on 127.0.0.1, with bounded connection counts and time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use churnsignal::telemetry::http::{self, Access, Limits, Lookup, Probe, RateLimit};

const TOKEN: &str = "a-bearer-token-0123456789";

struct Fake;

impl Probe for Fake {
    fn live(&self) -> Result<(), churnsignal::telemetry::http::NotOk> {
        Ok(())
    }
    fn ready(&self) -> Result<(), churnsignal::telemetry::http::NotOk> {
        Ok(())
    }
    fn customer(&self, id: &str) -> Lookup {
        if id == "slow" {
            std::thread::sleep(Duration::from_secs(4));
        }
        Lookup::Found(format!(r#"{{"customer_id":"{id}","revenue":1234.5}}"#))
    }
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_connections: 16,
        shutdown_grace: Duration::from_millis(500),
    }
}

fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle()
}

fn ops_server(l: Limits) -> http::Server {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    http::serve(any, http::ops(Arc::new(Fake), metrics()), l, "http").unwrap()
}

fn api_server(access: Access, limit: RateLimit) -> http::Server {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let router = http::api(Arc::new(Fake), access, limit);
    http::serve(any, router, limits(), "customer-api").unwrap()
}

/// `GET path` with extra header lines: the status (0 when the connection failed).
fn get(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Seconds until the server closes `s` (reads see EOF or a reset), at most `limit`.
fn closed_within(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

#[test]
fn slow_and_idle_clients_are_closed_after_the_header_read_timeout() {
    let server = ops_server(limits());
    let addr = server.addr();
    // Ten that never send a byte, ten that send a request's start and then a header
    // byte every 300 ms (slowloris), one that keeps its connection alive after a request.
    let idle: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let dripping = {
        let slow: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            for _ in 0..15 {
                std::thread::sleep(Duration::from_millis(300));
                for mut s in &slow {
                    let _ = s.write_all(b"X");
                }
            }
        })
    };
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 15];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    for (kind, conns) in [("idle", idle), ("slow", slow), ("kept-alive", vec![kept])] {
        for s in conns {
            let t = closed_within(s, Duration::from_secs(4));
            assert!(
                t.is_some(),
                "a {kind} connection is closed within the 1 s header timeout (+3 s)"
            );
        }
    }
    dripping.join().unwrap();
    assert_eq!(get(addr, "/healthz", ""), 200);
}

#[test]
fn at_the_connection_cap_the_oldest_connections_make_room_for_a_probe() {
    let l = Limits {
        header_read_timeout: Duration::from_secs(60),
        ..limits()
    };
    let server = ops_server(l);
    let addr = server.addr();
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    assert_eq!(get(addr, "/healthz", ""), 200, "a probe gets through");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let closed = held
        .into_iter()
        .filter(|s| closed_within(s.try_clone().unwrap(), Duration::from_millis(300)).is_some())
        .count();
    assert!(
        closed >= 40 - 16,
        "at most 16 connections stay open; {closed} of 40 were closed"
    );
}

#[test]
fn stopping_closes_slow_connections_within_the_grace() {
    let l = Limits {
        header_read_timeout: Duration::from_secs(60),
        ..limits()
    };
    let server = ops_server(l);
    let addr = server.addr();
    let slow: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    server.stop();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "stopped in {took:?} with 12 slow clients (grace 0.5 s)"
    );
    for s in slow {
        assert!(closed_within(s, Duration::from_millis(500)).is_some());
    }
}

#[test]
fn the_customer_api_needs_a_token_limits_each_client_and_times_out() {
    let cfg = churnsignal::config::CustomerApiConfig {
        listen: "127.0.0.1:0".into(),
        tokens_env: "TOKENS".into(),
        ..Default::default()
    };
    let access = Access::load(&cfg, |_| Some(TOKEN.into())).unwrap();
    let server = api_server(access, RateLimit::new(0.5, 6));
    let addr = server.addr();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(get(addr, "/customers/c1", ""), 401, "no token");
    assert_eq!(
        get(
            addr,
            "/customers/c1",
            "Authorization: Bearer wrong-token-0123456789\r\n"
        ),
        401
    );
    assert_eq!(get(addr, "/customers/c1", &auth), 200);
    assert_eq!(
        get(addr, "/metrics", &auth),
        404,
        "the API serves customers only"
    );
    let t0 = Instant::now();
    assert_eq!(get(addr, "/customers/slow", &auth), 503, "request timeout");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Six requests were the burst (the last two here); then 429, the right token or not.
    assert_eq!(get(addr, "/customers/c2", &auth), 200);
    assert_eq!(get(addr, "/customers/c3", &auth), 200);
    assert_eq!(get(addr, "/customers/c4", &auth), 429);
    assert_eq!(get(addr, "/customers/c4", ""), 429);
    // The operations server has no customer route at all.
    let ops = ops_server(limits());
    assert_eq!(get(ops.addr(), "/customers/c1", &auth), 404);
    assert_eq!(get(ops.addr(), "/healthz", ""), 200);
}

/// `churnsignal demo` under `ulimit -n 1024`, with 1,000 connections held open:
/// `/healthz` still answers (the service raises its soft limit, and at its connection
/// cap closes the oldest connection for each new one).
#[test]
fn healthz_answers_under_a_thousand_open_connections_with_nofile_1024() {
    let _ = rlimit::increase_nofile_limit(4096);
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec {} demo --customers 100 --days 3000 --speed 10",
            env!("CARGO_BIN_EXE_churnsignal")
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the demo printed no address");
        if let Some(rest) = line.split("curl http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let mut held = Vec::new();
    for _ in 0..1000 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        let status = get(addr, "/healthz", "");
        worst = worst.max(t0.elapsed());
        assert_eq!(status, 200, "with {} connections open", held.len());
    }
    assert_eq!(held.len(), 1000, "every connection was accepted");
    assert!(worst < Duration::from_secs(3), "slowest /healthz {worst:?}");
    let _ = child.kill();
    let _ = child.wait();
}
