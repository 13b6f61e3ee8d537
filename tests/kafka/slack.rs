//! `churnsignal slack` on the real broker, posting to a local HTTP server that plays
//! Slack (429 with Retry-After, 5xx, then 200).

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use churnsignal::alert::Alert;
use churnsignal::config::EngineSettings;
use churnsignal::engine::lifecycle::Status;
use churnsignal::engine::Engine;
use churnsignal::generate::{History, Spec};
use churnsignal::kafka::records::{alert_record, AlertFormat};

use super::support::*;

/// One request the fake Slack received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) hook: String,
    at: Instant,
    pub(crate) status: u16,
    body: serde_json::Value,
}

#[derive(Default)]
pub(crate) struct Fake {
    /// Scripted answers per hook (status, Retry-After); 200 when none is left.
    pub(crate) script: BTreeMap<String, VecDeque<(u16, Option<u64>)>>,
    pub(crate) log: Vec<Request>,
}

pub(crate) type Shared = Arc<Mutex<Fake>>;

async fn webhook(
    State(fake): State<Shared>,
    Path((_t, _b, hook)): Path<(String, String, String)>,
    _headers: HeaderMap,
    body: String,
) -> (StatusCode, HeaderMap, &'static str) {
    let mut f = fake.lock().unwrap();
    let (status, retry_after) = f
        .script
        .get_mut(&hook)
        .and_then(|q| q.pop_front())
        .unwrap_or((200, None));
    f.log.push(Request {
        hook,
        at: Instant::now(),
        status,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    });
    let mut h = HeaderMap::new();
    if let Some(s) = retry_after {
        h.insert("retry-after", s.to_string().parse().unwrap());
    }
    let text = match status {
        200 => "ok",
        429 => "rate_limited",
        _ => "internal_error",
    };
    (StatusCode::from_u16(status).unwrap(), h, text)
}

/// Starts the fake on a free port; it runs until the test process ends.
pub(crate) fn fake_slack(fake: Shared) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new()
                .route("/services/{t}/{b}/{hook}", post(webhook))
                .with_state(fake);
            axum::serve(l, app).await.unwrap();
        });
    });
    port
}

/// Alerts of a generated history, as the service writes them.
fn alerts() -> Vec<Alert> {
    let mut engine = Engine::new(EngineSettings::default());
    let mut out = Vec::new();
    for g in History::new(Spec {
        customers: 400,
        days: 200,
        seed: 21,
        ..Default::default()
    }) {
        out.extend(engine.apply(&g.to_event()));
    }
    out
}

/// The test's routing rules, stated independently of the forwarder's code.
fn expected_hook(a: &Alert) -> Option<&'static str> {
    let risk = a.risk.as_str();
    if matches!(risk, "high" | "critical") && a.value_tier == "key" {
        Some("key-s3cr3t-token")
    } else if a.status == Status::Resolved || matches!(risk, "medium" | "high" | "critical") {
        Some("everyone-s3cr3t-token")
    } else {
        None
    }
}

fn record(topic: &str, a: &Alert, format: AlertFormat) -> Rec {
    let r = alert_record(a, format);
    Rec {
        topic: topic.to_owned(),
        key: r.key,
        value: r.payload,
        headers: r.headers,
    }
}

fn accepted(fake: &Shared) -> Vec<Request> {
    fake.lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.status == 200)
        .cloned()
        .collect()
}

/// (alert_id, sequence) of a posted Block Kit message, from its context line.
fn key_of(body: &serde_json::Value) -> (String, u64) {
    let ctx = body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "context")
        .expect("a context block")["elements"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    // "customer `c` · alert `id` #n · as of ..."
    let after = ctx.split("alert `").nth(1).unwrap();
    let id = after.split('`').next().unwrap().to_owned();
    let seq = after.split('#').nth(1).unwrap().split(' ').next().unwrap();
    (id, seq.parse().unwrap())
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `churnsignal_slack_alerts_total{result=...}` in a scrape.
fn alerts_counted(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("churnsignal_slack_alerts_total{{result=\"{result}\"}}"),
    )
}

/// The forwarder's configuration: the `everyone` webhook (from the environment) takes
/// resolved alerts and medium risk or more; `first` (webhooks, then routes) comes before.
pub(crate) fn forwarder_config(
    listen: &str,
    bootstrap: &str,
    topic: &str,
    group: &str,
    (retry_initial_ms, retry_max_ms): (u64, u64),
    first: &str,
    level: &str,
) -> String {
    format!(
        r#"[kafka]
brokers = "{bootstrap}"
[kafka.topics]
alerts = "{topic}"
[slack]
group_id = "{group}"
auto_offset_reset = "earliest"
listen = "{listen}"
retry_initial_ms = {retry_initial_ms}
retry_max_ms = {retry_max_ms}
# the fake Slack is plain HTTP on loopback
allow_http_webhooks = true
[slack.webhooks]
everyone = {{ url_env = "TEST_SLACK_EVERYONE" }}
{first}[[slack.routes]]
status = ["resolved"]
webhook = "everyone"
[[slack.routes]]
risk = ["medium", "high", "critical"]
webhook = "everyone"
[log]
level = "{level}"
"#
    )
}

/// Writes the configuration of a forwarder with the `key` webhook (from a file holding
/// `key_url`) before the `everyone` routes: key accounts at high or critical risk go to
/// `key`. Returns the file and the forwarder's metrics address.
fn with_key_hook(
    dir: &std::path::Path,
    key_url: &str,
    bootstrap: &str,
    topic: &str,
    group: &str,
    retry_ms: (u64, u64),
    level: &str,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let key_file = dir.join("key-hook");
    std::fs::write(&key_file, format!("{key_url}\n")).unwrap();
    let http_port = free_port();
    let config = dir.join("slack.toml");
    std::fs::write(
        &config,
        forwarder_config(
            &format!("127.0.0.1:{http_port}"),
            bootstrap,
            topic,
            group,
            retry_ms,
            &format!(
                r#"key = {{ url_file = "{}" }}
[[slack.routes]]
risk = ["high", "critical"]
value_tier = ["key"]
webhook = "key"
"#,
                key_file.display()
            ),
            level,
        ),
    )
    .unwrap();
    let metrics_addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    (config, metrics_addr)
}

pub(crate) fn spawn_forwarder(
    config: &std::path::Path,
    everyone_url: &str,
    log: &std::path::Path,
) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnsignal"));
    c.args(["slack", "--config"])
        .arg(config)
        .env("TEST_SLACK_EVERYONE", format!("{everyone_url}\n"));
    let child = quick_group_exit(&mut c)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

#[test]
fn the_slack_forwarder_routes_retries_and_never_posts_an_alert_twice_across_a_crash() {
    let bootstrap = shared_bootstrap();
    let name = unique("slack");
    let topic = format!("{name}-alerts");
    let group = format!("{name}-forwarder");
    create_topics(bootstrap, &[(&topic, 1)]);

    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        // The key-accounts hook: rate limited (wait 2 s), then a server error.
        f.script.insert(
            "key-s3cr3t-token".into(),
            VecDeque::from([(429, Some(2)), (500, None)]),
        );
        // The other hook: three server errors in a row (exponential back-off).
        f.script.insert(
            "everyone-s3cr3t-token".into(),
            VecDeque::from([(503, None), (503, None), (503, None)]),
        );
    }
    let fake_port = fake_slack(fake.clone());
    let key_url = format!("http://127.0.0.1:{fake_port}/services/T0KEY/B0KEY/key-s3cr3t-token");
    let everyone_url =
        format!("http://127.0.0.1:{fake_port}/services/T0ALL/B0ALL/everyone-s3cr3t-token");

    // The alerts: 21 of a generated history (both routes, resolved ones, some that no
    // route takes), one in protobuf, one repeated at once, and a message that is not
    // an alert.
    let all = alerts();
    // Quotas per kind, taken in history order: the key-accounts route, the others,
    // resolved ones, and alerts no route takes.
    let kind = |a: &Alert| match (expected_hook(a), a.status) {
        (_, Status::Resolved) => 2,
        (Some("key-s3cr3t-token"), _) => 0,
        (Some(_), _) => 1,
        (None, _) => 3,
    };
    let mut quota = [8, 8, 3, 2];
    let mut first: Vec<&Alert> = Vec::new();
    let mut second: Vec<&Alert> = Vec::new();
    for a in &all {
        let k = kind(a);
        if quota[k] > 0 {
            quota[k] -= 1;
            first.push(a);
        } else if second.len() < 4 && k != 3 && quota.iter().take(3).all(|q| *q == 0) {
            second.push(a);
        }
    }
    assert_eq!(
        &quota[..3],
        &[0, 0, 0],
        "the history has alerts of each kind"
    );
    assert_eq!(second.len(), 4);
    assert!(first
        .iter()
        .any(|a| expected_hook(a) == Some("key-s3cr3t-token")));
    assert!(first
        .iter()
        .any(|a| expected_hook(a) == Some("everyone-s3cr3t-token")));
    assert!(first.iter().any(|a| a.status == Status::Resolved));
    let mut batch: Vec<Rec> = Vec::new();
    for (i, a) in first.iter().enumerate() {
        let format = if i == 5 {
            AlertFormat::Protobuf
        } else {
            AlertFormat::Json
        };
        batch.push(record(&topic, a, format));
        if i == 3 {
            batch.push(record(&topic, a, AlertFormat::Json));
        }
    }
    batch.push(Rec::new(&topic, "nobody", "this is not an alert"));
    produce(bootstrap, &batch);
    let end1 = batch.len() as i64;

    let dir = std::env::temp_dir().join(&name);
    let (config, metrics_addr) = with_key_hook(
        &dir,
        &key_url,
        bootstrap,
        &topic,
        &group,
        (200, 2000),
        "debug",
    );

    // Run 1.
    let log1 = dir.join("run1.log");
    let mut run1 = spawn_forwarder(&config, &everyone_url, &log1);
    wait_for("the first post", Duration::from_secs(60), || {
        !fake.lock().unwrap().log.is_empty()
    });
    // The first post failed and is being retried: the committed offset (if any yet)
    // is not past the first routed alert (each hook's first post fails).
    let first_routed = first
        .iter()
        .position(|a| expected_hook(a).is_some())
        .unwrap();
    let first_routed_offset = (first_routed + usize::from(first_routed > 3)) as i64;
    let c = committed(bootstrap, &group, &topic, 1)[0];
    assert!(
        c.is_none_or(|c| c <= first_routed_offset),
        "offset {c:?} committed past the first alert ({first_routed_offset}) before Slack accepted it"
    );
    let routed1: Vec<(String, u64)> = first
        .iter()
        .filter(|a| expected_hook(a).is_some())
        .map(|a| (a.alert_id.clone(), u64::from(a.sequence)))
        .collect();
    wait_for("batch 1 posted", Duration::from_secs(90), || {
        accepted(&fake).len() >= routed1.len()
    });
    wait_for("batch 1 committed", Duration::from_secs(30), || {
        committed(bootstrap, &group, &topic, 1) == vec![Some(end1)]
    });
    let (_, metrics1) = http_get(metrics_addr, "/metrics");
    assert_eq!(alerts_counted(&metrics1, "duplicate"), 1.0);
    assert_eq!(alerts_counted(&metrics1, "unreadable"), 1.0);
    assert_eq!(
        alerts_counted(&metrics1, "unrouted"),
        (first.len() - routed1.len()) as f64
    );
    assert_eq!(
        metric(
            &metrics1,
            "churnsignal_slack_post_attempts_total{webhook=\"key\",outcome=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics1,
            "churnsignal_slack_post_attempts_total{webhook=\"everyone\",outcome=\"server_error\"}"
        ),
        3.0
    );
    // A crash: no graceful anything.
    run1.kill().unwrap();
    run1.wait().unwrap();

    // The service repeats five alerts (at-least-once after its own crash) and writes
    // four new ones; the forwarder restarts.
    let mut batch2: Vec<Rec> = first[..5]
        .iter()
        .map(|a| record(&topic, a, AlertFormat::Json))
        .collect();
    batch2.extend(second.iter().map(|a| record(&topic, a, AlertFormat::Json)));
    produce(bootstrap, &batch2);
    let end2 = end1 + batch2.len() as i64;
    let routed2 = second.iter().filter(|a| expected_hook(a).is_some()).count();
    let log2 = dir.join("run2.log");
    let mut run2 = spawn_forwarder(&config, &everyone_url, &log2);
    wait_for("batch 2 committed", Duration::from_secs(90), || {
        committed(bootstrap, &group, &topic, 1) == vec![Some(end2)]
    });
    let (_, metrics2) = http_get(metrics_addr, "/metrics");
    assert_eq!(
        alerts_counted(&metrics2, "duplicate"),
        5.0,
        "the repeats of alerts posted before the crash"
    );
    assert_eq!(http_get(metrics_addr, "/readyz").0, 200);
    sigterm(run2.id());
    let status = run2.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the forwarder cleanly: {status}"
    );

    // Every routed alert exactly once, to its hook, as valid Block Kit.
    let posts = accepted(&fake);
    assert_eq!(
        posts.len(),
        routed1.len() + routed2,
        "no alert twice, none lost"
    );
    let mut keys: Vec<(String, u64)> = posts.iter().map(|r| key_of(&r.body)).collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "an (alert_id, sequence) posted twice");
    for r in &posts {
        let key = key_of(&r.body);
        let a = first
            .iter()
            .chain(second.iter())
            .find(|a| (a.alert_id.clone(), u64::from(a.sequence)) == key)
            .expect("a posted alert is one of ours");
        assert_eq!(
            Some(r.hook.as_str()),
            expected_hook(a),
            "routed by risk and tier"
        );
        let blocks = r.body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], a.summary.as_str());
        assert!(r.body["text"].as_str().unwrap().contains(&a.summary));
        let status_line = blocks[1]["text"]["text"].as_str().unwrap();
        match a.status {
            Status::Resolved => assert!(status_line.starts_with("*Resolved*")),
            Status::Open => assert!(status_line.starts_with("*New risk*")),
            Status::Escalated => assert!(status_line.starts_with("*Risk up*")),
        }
    }

    // Back-off: the 429's Retry-After (2 s) and doubling waits after 5xx.
    let log = fake.lock().unwrap().log.clone();
    let times = |hook: &str| -> Vec<(Instant, u16)> {
        log.iter()
            .filter(|r| r.hook == hook)
            .map(|r| (r.at, r.status))
            .collect()
    };
    let key = times("key-s3cr3t-token");
    assert_eq!((key[0].1, key[1].1, key[2].1), (429, 500, 200));
    assert!(
        key[1].0 - key[0].0 >= Duration::from_millis(1990),
        "Retry-After honoured: {:?}",
        key[1].0 - key[0].0
    );
    assert!(key[2].0 - key[1].0 >= Duration::from_millis(100));
    let all_hook = times("everyone-s3cr3t-token");
    for i in 0..3 {
        assert_eq!(all_hook[i].1, 503);
        let gap = all_hook[i + 1].0 - all_hook[i].0;
        let least = Duration::from_millis(100 << i);
        assert!(gap >= least, "wait {i} after a 503: {gap:?} < {least:?}");
    }

    // The URLs are secrets: in no log line.
    for log in [&log1, &log2] {
        let mut text = String::new();
        std::fs::File::open(log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("posted to slack"), "the log says what it did");
        for secret in ["s3cr3t", "T0KEY", "B0ALL", "/services/"] {
            assert!(!text.contains(secret), "{secret} in {}", log.display());
        }
    }
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_rebalance_while_a_post_is_retried_leaves_no_partition_paused() {
    let bootstrap = shared_bootstrap();
    let name = unique("slack-moved");
    let topic = format!("{name}-alerts");
    let group = format!("{name}-forwarder");
    create_topics(bootstrap, &[(&topic, 2)]);
    let fake: Shared = Arc::default();
    // Slack fails the first twenty posts: the first forwarder waits to retry, its
    // partitions paused, long enough for a second one to join the group.
    fake.lock().unwrap().script.insert(
        "everyone-s3cr3t-token".into(),
        VecDeque::from(vec![(503, None); 20]),
    );
    let fake_port = fake_slack(fake.clone());
    let url = format!("http://127.0.0.1:{fake_port}/services/T0ALL/B0ALL/everyone-s3cr3t-token");
    // Forty alerts that the one route takes, keyed by customer over both partitions.
    let all = alerts();
    let routed: Vec<&Alert> = all
        .iter()
        .filter(|a| expected_hook(a) == Some("everyone-s3cr3t-token"))
        .take(40)
        .collect();
    assert_eq!(routed.len(), 40);
    let recs: Vec<Rec> = routed
        .iter()
        .map(|a| record(&topic, a, AlertFormat::Json))
        .collect();
    produce(bootstrap, &recs);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("slack.toml");
    std::fs::write(
        &config,
        forwarder_config("", bootstrap, &topic, &group, (300, 600), "", "info"),
    )
    .unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let _a = spawn_forwarder(&config, &url, &log_a);
    wait_for("a post being retried", Duration::from_secs(60), || {
        !fake.lock().unwrap().log.is_empty()
    });
    let _b = spawn_forwarder(&config, &url, &log_b);
    let want: BTreeMap<(String, u64), usize> = routed
        .iter()
        .map(|a| ((a.alert_id.clone(), u64::from(a.sequence)), 1))
        .collect();
    let posted = || {
        let mut got: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for r in accepted(&fake) {
            *got.entry(key_of(&r.body)).or_default() += 1;
        }
        got
    };
    wait_for(
        "every alert posted, on both partitions",
        Duration::from_secs(120),
        || posted().len() == want.len(),
    );
    // The group moved while the first forwarder was waiting to retry: the scenario.
    let mut text = String::new();
    std::fs::File::open(&log_a)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("revoked while retrying"),
        "the rebalance came after the retries: {text}"
    );
    assert_eq!(posted(), want, "each alert posted once");
}

#[test]
fn a_failing_webhook_holds_back_only_its_own_alerts_and_a_restart_posts_none_twice() {
    let bootstrap = shared_bootstrap();
    let name = unique("slack-hol");
    let topic = format!("{name}-alerts");
    let group = format!("{name}-forwarder");
    create_topics(bootstrap, &[(&topic, 1)]);
    let fake: Shared = Arc::default();
    // The key-accounts webhook answers 500 until the test lets it recover.
    fake.lock().unwrap().script.insert(
        "key-s3cr3t-token".into(),
        VecDeque::from(vec![(500, None); 100_000]),
    );
    let fake_port = fake_slack(fake.clone());
    let key_url = format!("http://127.0.0.1:{fake_port}/services/T0KEY/B0KEY/key-s3cr3t-token");
    let everyone_url =
        format!("http://127.0.0.1:{fake_port}/services/T0ALL/B0ALL/everyone-s3cr3t-token");
    // Routed alerts in history order, the first ones to the key-accounts hook among
    // them: 4 for the key hook and 24 for the other one.
    let all = alerts();
    let mut quota = [4, 24];
    let mut routed: Vec<&Alert> = Vec::new();
    for a in &all {
        let k = match expected_hook(a) {
            Some("key-s3cr3t-token") => 0,
            Some(_) => 1,
            None => continue,
        };
        if quota[k] > 0 {
            quota[k] -= 1;
            routed.push(a);
        }
    }
    assert_eq!(quota, [0, 0], "the history has alerts for both hooks");
    let is_key = |a: &Alert| expected_hook(a) == Some("key-s3cr3t-token");
    let first_key = routed.iter().position(|a| is_key(a)).unwrap() as i64;
    let key_count = routed.iter().filter(|a| is_key(a)).count();
    let after_first_key = routed[first_key as usize..]
        .iter()
        .filter(|a| !is_key(a))
        .count();
    assert!(
        after_first_key >= 5,
        "alerts to the other hook follow the first key alert: {after_first_key}"
    );
    let recs: Vec<Rec> = routed
        .iter()
        .map(|a| record(&topic, a, AlertFormat::Json))
        .collect();
    produce(bootstrap, &recs);
    let end = recs.len() as i64;

    let dir = std::env::temp_dir().join(&name);
    let (config, metrics_addr) = with_key_hook(
        &dir,
        &key_url,
        bootstrap,
        &topic,
        &group,
        (100, 500),
        "info",
    );
    let posted_to = |hook: &str| {
        accepted(&fake)
            .iter()
            .filter(|r| r.hook == hook)
            .map(|r| key_of(&r.body))
            .collect::<Vec<_>>()
    };

    // Run 1: the key hook fails throughout; every alert of the other hook is posted,
    // also those after the first key alert, and the committed offset waits at it.
    let mut run1 = spawn_forwarder(&config, &everyone_url, &dir.join("run1.log"));
    wait_for(
        "the other hook's alerts posted while the key hook fails",
        Duration::from_secs(60),
        || posted_to("everyone-s3cr3t-token").len() == routed.len() - key_count,
    );
    // Committed: the first key alert's offset, with the metadata that names the
    // key alerts after it as still waiting and everything else up to the end as done.
    let key_offsets: Vec<i64> = (0..end).filter(|o| is_key(routed[*o as usize])).collect();
    let deltas: Vec<String> = key_offsets
        .iter()
        .scan(first_key, |at, o| {
            let d = o - *at;
            *at = *o;
            Some(d.to_string())
        })
        .collect();
    let want_commit = (
        first_key,
        format!("v1;end={end};pending={}", deltas.join(",")),
    );
    wait_for(
        "the offset committed up to the first key alert, the rest handed over",
        Duration::from_secs(30),
        || committed_with_metadata(bootstrap, &group, &topic, 1) == vec![Some(want_commit.clone())],
    );
    assert!(posted_to("key-s3cr3t-token").is_empty());
    let failed = fake
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.hook == "key-s3cr3t-token")
        .count();
    assert!(failed >= 2, "the key hook was retried: {failed} attempts");
    let (_, metrics) = http_get(metrics_addr, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "churnsignal_slack_waiting_alerts{webhook=\"key\"}"
        ),
        key_count as f64,
        "the key hook's alerts wait: {metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "churnsignal_slack_waiting_alerts{webhook=\"everyone\"}"
        ),
        0.0
    );
    // A crash, then the key hook recovers and the forwarder restarts from the
    // committed offset: it posts the key alerts and none of the other hook's again.
    run1.kill().unwrap();
    run1.wait().unwrap();
    fake.lock().unwrap().script.clear();
    let mut run2 = spawn_forwarder(&config, &everyone_url, &dir.join("run2.log"));
    wait_for("everything committed", Duration::from_secs(90), || {
        committed(bootstrap, &group, &topic, 1) == vec![Some(end)]
    });
    let (_, metrics) = http_get(metrics_addr, "/metrics");
    assert_eq!(
        alerts_counted(&metrics, "duplicate"),
        after_first_key as f64,
        "the other hook's alerts after the committed offset were handed over, not posted again"
    );
    assert_eq!(alerts_counted(&metrics, "posted"), key_count as f64);
    sigterm(run2.id());
    assert!(run2.wait().unwrap().success());
    let mut want: Vec<(String, u64)> = routed
        .iter()
        .map(|a| (a.alert_id.clone(), u64::from(a.sequence)))
        .collect();
    want.sort();
    let mut got: Vec<(String, u64)> = accepted(&fake).iter().map(|r| key_of(&r.body)).collect();
    got.sort();
    assert_eq!(got, want, "every alert posted once, none twice");
    // The key hook's alerts in topic order.
    let key_order: Vec<(String, u64)> = routed
        .iter()
        .filter(|a| is_key(a))
        .map(|a| (a.alert_id.clone(), u64::from(a.sequence)))
        .collect();
    assert_eq!(posted_to("key-s3cr3t-token"), key_order);
}
