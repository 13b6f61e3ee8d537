//! The dashboard and the rules against a real Prometheus (Debian's package; CI installs
//! it and lists it in `CHURNSIGNAL_REQUIRE_TOOLS`), scraping `churnsignal demo` (the
//! real `run` path on the in-process mock cluster) every second.
//!
//! At the demo's last scrape, every dashboard query (variables set to All) and every
//! series selector of every rule returns at least one series, and the alerts-per-hour
//! panel's total equals the alerts the demo read from its alerts topic, within what one
//! scrape interval adds. The panels' values are printed (`--nocapture`).
//!
//! The Slack forwarder (`churnsignal slack`) runs beside it on the demo's mock cluster,
//! posting to a local fake Slack that fails its first posts, and is scraped too: its
//! panels and its rules' series are checked the same way.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::deploy::{dashboard, have, rules, selectors};
use super::kafka::slack::{fake_slack, forwarder_config, spawn_forwarder, Shared};
use super::kafka::support::free_port;

/// Kills the child when dropped (a failed assertion must not leave Prometheus running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .map_err(|e| e.to_string())?;
        let text = r.text().map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if v["status"] != "success" {
            return Err(format!("{path} {params:?}: {v}"));
        }
        Ok(v["data"].clone())
    }

    /// The series of an instant query at `at` (unix seconds).
    fn query(&self, expr: &str, at: f64) -> Vec<Value> {
        let data = self
            .get(
                "/api/v1/query",
                &[("query", expr.to_owned()), ("time", at.to_string())],
            )
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        match &data["result"] {
            Value::Array(a) => a.clone(),
            // a scalar (`vector(0)`-free expressions never give one; be explicit)
            other => vec![other.clone()],
        }
    }

    /// The summed value of an instant query.
    fn total(&self, expr: &str, at: f64) -> f64 {
        self.query(expr, at)
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            .sum()
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A dashboard query as Grafana sends it with every variable at All (the rate interval
/// is four scrape intervals, Grafana's minimum), without the `> 0` that only hides
/// series at zero from the legend.
fn as_grafana_sends_it(expr: &str) -> String {
    expr.replace("$job", ".+")
        .replace("$instance", ".+")
        .replace("$__rate_interval", "4s")
        .trim_end_matches(" > 0")
        .to_owned()
}

#[test]
fn a_real_prometheus_scraping_the_demo_sees_every_panel_and_rule_series_and_counts_every_alert() {
    if !have("prometheus", &["--version"]) {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("churnsignal-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (service, web, forwarder) = (free_port(), free_port(), free_port());
    let rules_file = root.join("deploy/prometheus/rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: churnsignal\n    static_configs:\n      - targets: [\"127.0.0.1:{service}\"]\n\
             \x20 - job_name: churnsignal-slack\n    static_configs:\n      - targets: [\"127.0.0.1:{forwarder}\"]\n",
            rules_file.display()
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let api = Api {
        base: format!("http://127.0.0.1:{web}"),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    wait_for("prometheus ready", Duration::from_secs(60), || {
        api.get("/api/v1/status/buildinfo", &[]).is_ok()
    });
    let started = now();
    // About 40 seconds of demo: 120 days at 3 simulated days a second.
    let mut demo = Running(
        Command::new(env!("CARGO_BIN_EXE_churnsignal"))
            .args([
                "demo",
                "--customers",
                "150",
                "--days",
                "120",
                "--speed",
                "3",
            ])
            .args(["--seed", "5", "--listen", &format!("127.0.0.1:{service}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = demo.0.stdout.take().unwrap();
    let mut alerts_read = None;
    let mut lines = BufReader::new(out).lines().map_while(Result::ok);
    // "churnsignal demo: ... on an in-process Kafka (mock cluster 127.0.0.1:PORT)."
    let first = lines.next().expect("the demo's first line");
    let bootstrap = first
        .split("(mock cluster ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no bootstrap in {first:?}"))
        .to_owned();
    // The forwarder, on the same cluster, posting the alerts of medium risk or more and
    // the resolutions to a fake Slack whose first three answers are 503.
    let fake: Shared = Default::default();
    fake.lock().unwrap().script.insert(
        "demo-s3cr3t".into(),
        std::collections::VecDeque::from(vec![(503, None); 3]),
    );
    let slack_port = fake_slack(fake.clone());
    std::fs::write(
        dir.join("slack.toml"),
        forwarder_config(
            &format!("127.0.0.1:{forwarder}"),
            &bootstrap,
            &churnsignal::config::Config::default().kafka.topics.alerts,
            "demo-slack",
            (200, 1000),
            "",
            "info",
        ),
    )
    .unwrap();
    let _forwarder = spawn_forwarder(
        &dir.join("slack.toml"),
        &format!("http://127.0.0.1:{slack_port}/services/T0/B0/demo-s3cr3t"),
        &dir.join("slack.log"),
    );
    for line in lines {
        // "Summary (40.2 s): 31000 events (1 dead-lettered), 57 alerts (40 open, 9 escalated, 8 resolved)"
        if let Some(rest) = line.strip_prefix("Summary (") {
            let statuses = rest
                .split_once(" alerts (")
                .unwrap()
                .1
                .trim_end_matches(')');
            let mut n = 0u64;
            for part in statuses.split(", ").filter(|p| !p.is_empty()) {
                let (count, status) = part.split_once(' ').unwrap();
                if status != "resolved" {
                    n += count.parse::<u64>().unwrap();
                }
            }
            alerts_read = Some(n);
        }
    }
    assert!(demo.0.wait().unwrap().success(), "the demo failed");
    let alerts_read = alerts_read.expect("the demo's summary");
    assert!(
        alerts_read >= 5,
        "the demo alerted only {alerts_read} times"
    );

    // The last scrape of the demo: the latest sample of its readiness gauge.
    let range = api
        .get(
            "/api/v1/query_range",
            &[
                ("query", "churnsignal_ready".to_owned()),
                ("start", started.to_string()),
                ("end", now().to_string()),
                ("step", "1".to_owned()),
            ],
        )
        .unwrap();
    let values = range["result"][0]["values"]
        .as_array()
        .expect("scraped")
        .clone();
    assert!(values.len() >= 20, "{} scrapes", values.len());
    let last = values.last().unwrap()[0].as_f64().unwrap();

    let mut empty = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = as_grafana_sends_it(t["expr"].as_str().unwrap());
            let series = api.query(&expr, last);
            let shown: Vec<String> = series
                .iter()
                .take(6)
                .map(|s| format!("{} {}", s["metric"], s["value"][1]))
                .collect();
            eprintln!(
                "panel {title}: {expr}\n    {} series: {shown:?}",
                series.len()
            );
            if series.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
        }
    }
    for rule in rules() {
        let name = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        let mut selected: Vec<String> = selectors(expr)
            .into_iter()
            .map(|(n, m)| format!("{n}{{{m}}}"))
            .collect();
        if expr.contains("up == 0") {
            selected.push("up{job=\"churnsignal\"}".to_owned());
        }
        for s in selected {
            let found = api.query(&s, last).len();
            eprintln!("rule {name}: {s}: {found} series");
            if found == 0 {
                empty.push(format!("rule {name}: {s}"));
            }
        }
        let firing = api.query(expr, last).len();
        eprintln!("rule {name}: {firing} series above its threshold at the end");
    }
    assert!(empty.is_empty(), "queries without a series: {empty:#?}");

    // Alerts per hour, summed over signals, against the demo's own count and the raw
    // counter; within the most alerts one scrape interval added.
    let panel = api.total(
        r#"sum by (signal) (increase(churnsignal_alerts_total{job=~".+",instance=~".+",status!="resolved"}[1h]))"#,
        last,
    );
    let steps = api
        .get(
            "/api/v1/query_range",
            &[
                (
                    "query",
                    r#"sum(churnsignal_alerts_total{status!="resolved"})"#.to_owned(),
                ),
                ("start", started.to_string()),
                ("end", last.to_string()),
                ("step", "1".to_owned()),
            ],
        )
        .unwrap()["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap().parse::<f64>().unwrap())
        .collect::<Vec<f64>>();
    let raw = *steps.last().unwrap();
    let one_scrape = steps.windows(2).map(|w| w[1] - w[0]).fold(1.0, f64::max);
    eprintln!(
        "alerts: panel {panel:.1}, counter {raw}, demo read {alerts_read}, at most {one_scrape} per scrape; first scrape at {}",
        steps[0]
    );
    assert_eq!(steps[0], 0.0, "the first scrape saw no alert yet");
    assert!(
        (panel - raw).abs() <= one_scrape,
        "alerts-per-hour panel {panel} against the counter's {raw}"
    );
    assert!(
        (raw - alerts_read as f64).abs() <= one_scrape,
        "counter {raw} against {alerts_read} alerts read from the topic"
    );

    // Every acknowledged alert's latency is also split into its four stages: each stage
    // histogram counts the alerts the end-to-end one counts. The producer's delivery
    // callbacks run on one thread, so a scrape can fall between one alert's records,
    // never more.
    let alerts_timed = api.total(
        "sum(churnsignal_event_to_alert_latency_seconds_count)",
        last,
    );
    assert!(alerts_timed >= 5.0, "{alerts_timed} alerts timed");
    for stage in ["fetch", "queue", "sync", "produce"] {
        let counted = api.total(
            &format!(r#"sum(churnsignal_alert_latency_stage_seconds_count{{stage="{stage}"}})"#),
            last,
        );
        eprintln!("latency stage {stage}: {counted} alerts, end to end {alerts_timed}");
        assert!(
            (counted - alerts_timed).abs() <= 1.0,
            "stage {stage} counted {counted} alerts, the end-to-end histogram {alerts_timed}"
        );
    }

    // The forwarder: what it posted, as Prometheus has it, against what the fake Slack
    // accepted (once no more come), and the three 503s it was answered.
    let accepted = || {
        fake.lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.status == 200)
            .count()
    };
    let mut last_count = (accepted(), Instant::now());
    wait_for(
        "the forwarder done posting",
        Duration::from_secs(60),
        || {
            let n = accepted();
            if n != last_count.0 {
                last_count = (n, Instant::now());
            }
            last_count.1.elapsed() > Duration::from_secs(3)
        },
    );
    let posted = last_count.0 as f64;
    eprintln!("slack: the fake accepted {posted} posts");
    assert!(posted >= 5.0, "the forwarder posted {posted} alerts");
    wait_for(
        "Prometheus scraped the forwarder's last post",
        Duration::from_secs(30),
        || {
            api.total(
                r#"sum(churnsignal_slack_alerts_total{result="posted"})"#,
                now(),
            ) == posted
        },
    );
    assert_eq!(
        api.total(
            r#"sum(churnsignal_slack_post_attempts_total{outcome="server_error"})"#,
            now()
        ),
        3.0
    );
    assert_eq!(
        api.total("sum(churnsignal_slack_waiting_alerts)", now()),
        0.0,
        "nothing waits once every post is accepted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
