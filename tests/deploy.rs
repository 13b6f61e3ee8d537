//! Everything under `deploy/` is checked: parsed, cross-checked against the metrics the
//! service renders and the configuration it loads, and linted with the real tools where
//! the machine has them (`promtool`, `docker compose`, `kubectl kustomize`; CI installs
//! them and sets `CHURNSIGNAL_REQUIRE_TOOLS=1`, so that there they cannot be skipped).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use churnsignal::config::Config;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A YAML file as JSON values, with merge keys (`<<: *anchor`) applied as Compose does.
fn yaml(rel: &str) -> Value {
    let mut v: serde_norway::Value =
        serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    v.apply_merge().unwrap();
    serde_json::to_value(v).unwrap()
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Whether `tool` runs here; when it does not, the check is skipped, unless the tool
/// is listed in `CHURNSIGNAL_REQUIRE_TOOLS` (comma-separated; CI lists what it
/// installed, so that there the check cannot be skipped).
pub(crate) fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let required = std::env::var("CHURNSIGNAL_REQUIRE_TOOLS").unwrap_or_default();
        assert!(
            !required.split(',').any(|t| t.trim() == tool),
            "{tool} is required here (CHURNSIGNAL_REQUIRE_TOOLS) but `{tool} {}` fails",
            args.join(" ")
        );
        eprintln!("{tool} not available: its lint is skipped");
    }
    ok
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Every `churnsignal_*` and `process_*` name in a PromQL text.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["churnsignal_", "process_"] {
        let mut rest = expr;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let starts_a_name =
                i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if starts_a_name {
                out.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Every metric selector (`name` or `name{...}`) of a PromQL text, with its matchers.
pub(crate) fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in metric_names(expr) {
        let mut rest = expr;
        while let Some(i) = rest.find(&name) {
            let tail = &rest[i + name.len()..];
            let next = tail.chars().next();
            if next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                rest = tail;
                continue;
            }
            let matchers = if next == Some('{') {
                tail[1..tail.find('}').unwrap()].to_owned()
            } else {
                String::new()
            };
            out.push((name.clone(), matchers));
            rest = tail;
        }
    }
    out
}

/// Metric names in a Prometheus text exposition (series lines, not comments).
fn rendered_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

pub(crate) fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/churnsignal.json")).unwrap()
}

fn dashboard_exprs(d: &Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn rules() -> Vec<Value> {
    yaml("deploy/prometheus/rules.yml")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn every_metric_in_the_dashboard_and_the_rules_is_one_the_service_renders() {
    // What /metrics renders after the service ran: the demo is the real `run` path on
    // the mock cluster (events, dead letters, alerts, checkpoints), and the Slack
    // forwarder registers its own at start. `/metrics` is this handle's render.
    churnsignal::demo::run(
        &churnsignal::demo::Options {
            customers: 80,
            days: 120,
            // Slow enough for a few rounds of the gauges (every 2 s).
            speed: 25.0,
            seed: 4,
            listen: None,
        },
        &mut std::io::sink(),
    )
    .unwrap();
    churnsignal::telemetry::install_slack(["key-accounts"]);
    churnsignal::telemetry::slack_lag(0, 0);
    // The demo's partition engines stopped with it, and their gauges went with them
    // (a partition's gauges live as long as its engine runs here): one engine's, as a
    // running service renders them.
    churnsignal::telemetry::partition_state(0, 10, 1000, Some(1_700_000_000_000), &[[0; 3]; 4]);
    churnsignal::telemetry::sync_buffered(0, 0);
    churnsignal::telemetry::restore_progress(0, 0, 0);
    let rendered = rendered_names(&churnsignal::telemetry::render(
        &churnsignal::telemetry::install(),
    ));

    let mut used: BTreeSet<String> = BTreeSet::new();
    for e in dashboard_exprs(&dashboard()) {
        used.extend(metric_names(&e));
    }
    let from_dashboard = used.len();
    for r in rules() {
        used.extend(metric_names(r["expr"].as_str().unwrap()));
    }
    assert!(from_dashboard >= 20, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !rendered.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not rendered by /metrics: {missing:?}\nrendered: {rendered:?}"
    );
    // And every name the telemetry module declares is rendered (none is dead): those
    // labelled by a librdkafka error code too, at 0 for the common codes.
    use churnsignal::telemetry::names;
    for n in names::ALL.iter().chain(names::SLACK.iter()) {
        assert!(
            rendered
                .iter()
                .any(|r| r == n || r.starts_with(&format!("{n}_"))),
            "{n} declared but not rendered"
        );
    }
}

/// The rules of Grafana's dashboard-linter (template-job/instance, target-job-instance,
/// target-rate-interval, panel-title-description, panel-units, panel-datasource), and
/// no overlapping panels. The linter itself is not run: v0.1.1 is not served by the
/// module proxy, and v0.2.0 (and every later commit) needs Grafana and Loki modules
/// under the AGPL, which this project does not take.
#[test]
fn every_dashboard_panel_is_described_filtered_by_job_and_instance_and_placed_apart() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    for name in ["job", "instance"] {
        let v = vars
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a {name} variable"));
        // dashboard-linter's template-job-rule and template-instance-rule
        assert_eq!(v["type"], "query");
        assert_eq!(v["datasource"]["uid"], "${datasource}");
        assert_eq!(v["includeAll"], true, "{name}: All selectable");
        assert_eq!(v["multi"], true, "{name}: several selectable");
        assert_eq!(v["allValue"], ".+", "{name}: All is every non-empty value");
        let label = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        assert_eq!(v["label"], label.as_str());
    }
    let panels = d["panels"].as_array().unwrap();
    let mut cells: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap().to_owned();
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: no description"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        for (x2, y2, w2, h2, other) in &cells {
            let apart = x + w <= *x2 || x2 + w2 <= x || y + h <= *y2 || y2 + h2 <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        cells.push((x, y, w, h, title.clone()));
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for (name, m) in selectors(expr) {
                assert!(
                    m.contains(r#"job=~"$job""#) && m.contains(r#"instance=~"$instance""#),
                    "{title}: {name} without the job and instance matchers in {expr}"
                );
            }
            if expr.contains("rate(") {
                assert!(
                    expr.contains("[$__rate_interval]") || expr.contains("increase("),
                    "{title}: a rate over a fixed interval in {expr}"
                );
            }
        }
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
            "{}: no unit",
            p["title"]
        );
    }
}

#[test]
fn the_dashboard_loads_as_grafana_provisions_it() {
    let d = dashboard();
    assert!(d["id"].is_null(), "provisioned dashboards carry no id");
    assert_eq!(d["uid"], "churnsignal");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["name"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() <= 24
                && g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24
        );
        titles.push(p["title"].as_str().unwrap().to_owned());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{}: the data source comes from the variable, never a hard-coded uid",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            assert!(!t["expr"].as_str().unwrap().is_empty());
        }
    }
    // No uid anywhere but the variable's.
    let text = read("deploy/grafana/churnsignal.json");
    for (i, _) in text.match_indices("\"uid\"") {
        let value = text[i..].split('"').nth(3).unwrap();
        assert!(
            value == "${datasource}" || value == "churnsignal",
            "hard-coded uid {value}"
        );
    }
    // The four questions of the issue, each a row.
    for row in [
        "Is it keeping up?",
        "Is input healthy?",
        "What is it finding?",
        "How big is it?",
    ] {
        assert!(titles.iter().any(|t| t == row), "row {row}");
    }
    // The provisioning files point at where compose mounts the dashboard.
    let provider = yaml("deploy/grafana/provisioning/dashboards/churnsignal.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let compose = yaml("deploy/compose.yaml");
    let mounts = compose["services"]["grafana"]["volumes"]
        .as_array()
        .unwrap();
    assert!(mounts.iter().any(|m| m
        .as_str()
        .unwrap()
        .ends_with(&format!("{path}/churnsignal.json:ro"))));
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
}

#[test]
fn every_rule_has_a_severity_a_summary_and_a_runbook_in_the_operations_guide() {
    let readme = read("deploy/README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let rules = rules();
    assert!(rules.len() >= 6);
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "ChurnsignalConsumerLagGrowing",
        "ChurnsignalDeadLetterRate",
        "ChurnsignalNoInput",
        "ChurnsignalNotReady",
        "ChurnsignalCommitFailures",
        "ChurnsignalRestoreStuck",
    ] {
        assert!(names.contains(&wanted), "a rule {wanted}");
    }
    for r in &rules {
        let name = r["alert"].as_str().unwrap();
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}: severity"
        );
        assert!(
            r["annotations"]["summary"].as_str().is_some(),
            "{name}: summary"
        );
        let runbook = r["annotations"]["runbook"].as_str().unwrap();
        let anchor = runbook.strip_prefix("deploy/README.md#").unwrap();
        assert_eq!(anchor, format!("runbook-{}", name.to_lowercase()));
        assert!(
            anchors.contains(anchor),
            "{name}: deploy/README.md has no section #{anchor}"
        );
    }
}

#[test]
fn the_rules_pass_promtool_and_fire_on_what_they_describe() {
    if !have("promtool", &["--version"]) {
        return;
    }
    let dir = root().join("deploy/prometheus");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules", "rules.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Unit tests: each rule fires on its situation and not on its healthy twin.
    let out = run_ok(
        Command::new("promtool")
            .args(["test", "rules", "rules.test.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = yaml("deploy/prometheus/rules.test.yml");
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().iter())
        .filter(|a| !a["exp_alerts"].as_array().unwrap().is_empty())
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    for r in rules() {
        let name = r["alert"].as_str().unwrap().to_owned();
        assert!(
            tested.contains(name.as_str()),
            "{name} has no promtool test that fires it"
        );
    }
}

#[test]
fn the_compose_stack_is_valid_and_wired_to_the_files_in_deploy() {
    let c = yaml("deploy/compose.yaml");
    let services = c["services"].as_object().unwrap();
    for s in [
        "kafka",
        "create-topics",
        "churnsignal",
        "churnsignal-slack",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    let cs = &services["churnsignal"];
    assert_eq!(cs["build"]["dockerfile"], "deploy/Dockerfile");
    assert_eq!(
        root()
            .join("deploy")
            .join(cs["build"]["context"].as_str().unwrap())
            .join("deploy/Dockerfile")
            .canonicalize()
            .unwrap(),
        root().join("deploy/Dockerfile").canonicalize().unwrap()
    );
    assert_eq!(cs["ports"][0], "127.0.0.1:8080:8080");
    // Nothing is published on every interface: Kafka is plaintext, Grafana anonymous.
    // Images are pinned by digest.
    for (name, s) in services {
        for p in s["ports"].as_array().cloned().unwrap_or_default() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("127.0.0.1:") && p.split(':').count() == 3,
                "{name} publishes {p}: bind it to 127.0.0.1"
            );
        }
        if let Some(image) = s["image"].as_str().filter(|i| *i != "churnsignal:local") {
            assert!(
                image.contains(":")
                    && image
                        .split_once("@sha256:")
                        .is_some_and(|(_, d)| d.len() == 64),
                "{name}: {image} is not pinned by digest"
            );
        }
    }
    // Every bind mount names a file or directory of the repository.
    for (name, s) in services {
        for m in s["volumes"].as_array().cloned().unwrap_or_default() {
            let host = m.as_str().unwrap().split(':').next().unwrap();
            assert!(
                root().join("deploy").join(host).exists(),
                "{name}: {host} does not exist"
            );
        }
    }
    // The forwarder's example configuration loads (its routes name its webhooks).
    let slack = Config::load(Some(&root().join("config/slack.example.toml")), Vec::new()).unwrap();
    assert!(!slack.slack.routes.is_empty());
    // Prometheus scrapes both services on their ports.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            j["static_configs"][0]["targets"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(targets, ["churnsignal:8080", "churnsignal-slack:8081"]);
    assert_eq!(slack.slack.listen, "0.0.0.0:8081");
    if have("docker", &["compose", "version"]) {
        run_ok(
            Command::new("docker")
                .args([
                    "compose",
                    "-f",
                    "deploy/compose.yaml",
                    "--profile",
                    "slack",
                    "config",
                    "-q",
                ])
                .current_dir(root()),
        );
    }
}

#[test]
fn the_dockerfile_builds_small_runs_as_a_user_and_checks_health() {
    let text = read("deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    for f in &froms {
        let image = f.split_whitespace().nth(1).unwrap();
        assert!(
            image
                .split_once("@sha256:")
                .is_some_and(|(_, d)| d.len() == 64),
            "{f}: base images are pinned by digest"
        );
    }
    assert!(
        text.contains("imagetools inspect"),
        "how to update the digests"
    );
    assert!(
        froms.last().unwrap().contains("-slim"),
        "a small runtime base"
    );
    let last_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "non-root: {user}"
    );
    // The default config baked in where CMD reads it; the file exists and loads.
    let copy = last_stage
        .lines()
        .find(|l| l.starts_with("COPY config/"))
        .expect("the default config copied");
    let parts: Vec<&str> = copy.split_whitespace().collect();
    Config::load(Some(&root().join(parts[1])), Vec::new()).unwrap();
    let cmd = last_stage.lines().find(|l| l.starts_with("CMD ")).unwrap();
    assert!(cmd.contains(&format!("\"{}\"", parts[2])), "{cmd}");
    // Health: the built-in probe on the default listen port's /healthz.
    let port = Config::default()
        .http
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let hc = last_stage
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    assert!(
        hc.contains(&format!("127.0.0.1:{port}/healthz")) && hc.contains("\"probe\""),
        "{hc}"
    );
    assert!(last_stage.contains(&format!("EXPOSE {port}")));
    // Build context hygiene: target/ is not sent.
    assert!(read("deploy/Dockerfile.dockerignore")
        .lines()
        .any(|l| l == "target"));
    // Every COPY source of the build stage exists.
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}");
        }
    }
}

#[test]
fn churnsignal_probe_exits_zero_only_on_a_2xx_answer() {
    fn serve_once(status: &'static str) -> u16 {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            // Cut in two segments, as a slow server might.
            let _ = s.write_all(b"HTTP/1.1 ");
            let _ = s.flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let _ = write!(s, "{status}\r\nContent-Length: 0\r\n\r\n");
        });
        port
    }
    let probe = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_churnsignal"))
            .args(["probe", &format!("http://127.0.0.1:{port}/healthz")])
            .status()
            .unwrap()
            .success()
    };
    assert!(probe(serve_once("200 OK")));
    assert!(!probe(serve_once("503 Service Unavailable")));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(!probe(closed), "nothing listening");
}

fn by_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name}"))
}

fn k8s_docs() -> Vec<Value> {
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| yaml_docs(&format!("deploy/kubernetes/{}", r.as_str().unwrap())))
        .collect()
}

fn matches(selector: &Value, labels: &Value) -> bool {
    if let Some(m) = selector["matchLabels"].as_object() {
        if !m.iter().all(|(k, v)| labels[k] == *v) {
            return false;
        }
    }
    if let Some(exprs) = selector["matchExpressions"].as_array() {
        for e in exprs {
            let v = &labels[e["key"].as_str().unwrap()];
            if !(e["operator"] == "In" && e["values"].as_array().unwrap().contains(v)) {
                return false;
            }
        }
    }
    true
}

#[test]
fn the_kubernetes_manifests_fit_together_and_match_the_service() {
    let docs = k8s_docs();
    for d in &docs {
        assert!(
            d["apiVersion"].is_string()
                && d["kind"].is_string()
                && d["metadata"]["name"].is_string()
        );
    }
    let sts = by_kind(&docs, "StatefulSet", "churnsignal");
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(matches(&sts["spec"]["selector"], labels));
    let svc = by_kind(&docs, "Service", "churnsignal");
    assert_eq!(sts["spec"]["serviceName"], "churnsignal");
    assert!(svc["spec"]["selector"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k] == *v));
    let pdb = by_kind(&docs, "PodDisruptionBudget", "churnsignal");
    assert!(matches(&pdb["spec"]["selector"], labels));
    let pm = by_kind(&docs, "PodMonitor", "churnsignal");
    assert!(matches(&pm["spec"]["selector"], labels));

    // The configuration the pods load is valid, and the pod honours it.
    let cm = by_kind(&docs, "ConfigMap", "churnsignal");
    let toml = cm["data"]["churnsignal.toml"].as_str().unwrap();
    let cfg = Config::from_toml(toml).unwrap();
    let c = &pod["spec"]["containers"][0];
    let port_name = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port_name)
        .expect("the PodMonitor's port is the container's");
    assert_eq!(
        port["containerPort"].as_u64().unwrap().to_string(),
        cfg.http.listen.rsplit(':').next().unwrap()
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > cfg.kafka.shutdown_timeout_secs,
        "the grace period ({grace} s) outlasts the shutdown drain ({} s)",
        cfg.kafka.shutdown_timeout_secs
    );
    let env = c["env"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "CHURNSIGNAL__KAFKA__GROUP_INSTANCE_ID"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    assert!(c["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "/etc/churnsignal/churnsignal.toml"));
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    // No Kubernetes API token in pods that never call it; CPU requested and bounded.
    let fdep = by_kind(&docs, "Deployment", "churnsignal-slack");
    for (name, p) in [
        ("churnsignal", pod),
        ("churnsignal-slack", &fdep["spec"]["template"]),
    ] {
        assert_eq!(p["spec"]["automountServiceAccountToken"], false, "{name}");
        let r = &p["spec"]["containers"][0]["resources"];
        assert!(
            r["requests"]["cpu"].is_string() && r["limits"]["cpu"].is_string(),
            "{name}: CPU request and limit"
        );
    }
    // The NetworkPolicies: each pod admits Prometheus to its metrics port only, and
    // churnsignal admits labelled clients to the customer API's port only.
    let np = by_kind(&docs, "NetworkPolicy", "churnsignal");
    assert!(matches(&np["spec"]["podSelector"], labels));
    assert_eq!(np["spec"]["policyTypes"][0], "Ingress");
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let rule_for = |port: &str| {
        rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["port"] == port)
            })
            .unwrap_or_else(|| panic!("a rule for port {port}"))
    };
    let prom = rule_for("http");
    assert_eq!(
        prom["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    let api = rule_for("api");
    assert_eq!(
        api["from"][0]["podSelector"]["matchLabels"]["churnsignal.example.com/api-client"],
        "true"
    );
    assert_eq!(rules.len(), 2, "no other way in");
    let api_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "api")
        .expect("the container names the API port");
    assert_eq!(api_port["containerPort"], 8082);
    assert!(
        toml.contains("# listen = \"0.0.0.0:8082\""),
        "the configmap shows how to turn the API on at that port"
    );
    let fnp = by_kind(&docs, "NetworkPolicy", "churnsignal-slack");
    assert!(matches(
        &fnp["spec"]["podSelector"],
        &fdep["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(fnp["spec"]["ingress"].as_array().unwrap().len(), 1);
    // Memory: the limit holds max_customers at about 1 KB each (state and a restore's
    // records) plus 512 MiB for the rest.
    let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
    let gib: u64 = limit.trim_end_matches("Gi").parse().unwrap();
    let need = cfg.engine.max_customers * 1024 + (512 << 20);
    assert!(cfg.engine.max_customers > 0, "a cap sized with the limit");
    assert!(
        gib << 30 >= need,
        "limit {limit} for {} customers",
        cfg.engine.max_customers
    );

    // The forwarder: its config loads, its webhooks come from the mounted secret.
    let fcm = by_kind(&docs, "ConfigMap", "churnsignal-slack");
    let fcfg = Config::from_toml(fcm["data"]["slack.toml"].as_str().unwrap()).unwrap();
    let dep = by_kind(&docs, "Deployment", "churnsignal-slack");
    let fpod = &dep["spec"]["template"];
    assert!(matches(
        &pm["spec"]["selector"],
        &fpod["metadata"]["labels"]
    ));
    let mounts = fpod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    let secret_dir = mounts.iter().find(|m| m["name"] == "webhooks").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    for (name, w) in &fcfg.slack.webhooks {
        assert!(w.url_file.starts_with(secret_dir), "{name} from the secret");
    }
    assert_eq!(
        fpod["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .unwrap()
            .to_string(),
        fcfg.slack.listen.rsplit(':').next().unwrap()
    );

    if have("kubectl", &["version", "--client"]) {
        let out = run_ok(
            Command::new("kubectl")
                .args(["kustomize", "deploy/kubernetes"])
                .current_dir(root()),
        );
        for kind in [
            "StatefulSet",
            "Deployment",
            "ConfigMap",
            "Service",
            "PodDisruptionBudget",
            "PodMonitor",
            "NetworkPolicy",
        ] {
            assert!(
                out.contains(&format!("kind: {kind}")),
                "{kind} in the kustomize output"
            );
        }
    }
}

#[test]
fn every_file_under_deploy_is_checked_by_a_test_here() {
    let me = read("tests/deploy.rs");
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    walk(&root().join("deploy"), &mut files);
    for f in files {
        let rel = f
            .strip_prefix(root().join("deploy"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The broker script and pom are exercised by every real-broker test.
        if rel.starts_with("kafka/") {
            continue;
        }
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(k8s) = rel.strip_prefix("kubernetes/") {
            // Loaded through the kustomization by the Kubernetes test.
            let listed = yaml("deploy/kubernetes/kustomization.yaml")["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == k8s);
            assert!(
                listed || k8s == "kustomization.yaml",
                "deploy/{rel} is not in the kustomization"
            );
            continue;
        }
        assert!(
            me.contains(&format!("deploy/{rel}")) || me.contains(&format!("\"{name}\"")),
            "deploy/{rel} is not checked by tests/deploy.rs"
        );
    }
}
