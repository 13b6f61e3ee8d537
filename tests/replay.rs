//! `churnsignal replay` and `check-config` as a user runs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use churnsignal::generate::{History, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_churnsignal");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("churnsignal-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_history(path: &Path, spec: Spec) -> usize {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut n = 0;
    for g in History::new(spec) {
        g.write_json(&mut f).unwrap();
        n += 1;
    }
    f.flush().unwrap();
    n
}

fn churnsignal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CHURNSIGNAL__ENGINE__BUCKET_DAYS")
        .output()
        .unwrap()
}

#[test]
fn replay_of_1000_customers_over_200_days_is_reproducible_byte_for_byte() {
    let dir = scratch("repro");
    let input = dir.join("history.jsonl");
    let events = write_history(
        &input,
        Spec {
            customers: 1_000,
            days: 200,
            holiday: Some((120, 0.3)),
            ..Spec::default()
        },
    );
    assert!(events > 100_000, "{events} events");
    let run = |k: u32| {
        let alerts = dir.join(format!("alerts-{k}.jsonl"));
        let snapshot = dir.join(format!("snapshot-{k}.jsonl"));
        let out = churnsignal(&[
            "replay",
            "--input",
            input.to_str().unwrap(),
            "--alerts",
            alerts.to_str().unwrap(),
            "--snapshot",
            snapshot.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read(alerts).unwrap(),
            std::fs::read(snapshot).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (a1, s1, report) = run(1);
    let (a2, s2, _) = run(2);
    assert!(a1 == a2, "alerts differ between runs");
    assert!(s1 == s2, "snapshots differ between runs");
    let alerts = a1.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    let records = s1.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert!(alerts > 100, "{alerts} alerts");
    assert_eq!(records, 1_000, "one health record per customer");
    assert!(
        report.contains(&format!("{events} events applied")),
        "{report}"
    );
    // every alert is valid JSON with the contract's fields
    for line in a1.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        for field in [
            "alert_id",
            "sequence",
            "customer_id",
            "status",
            "risk",
            "health_score",
            "signals",
            "value_tier",
            "recommended_play",
            "summary",
            "as_of",
            "emitted_at",
            "evidence",
            "schema_version",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        assert_eq!(
            v["as_of"], v["emitted_at"],
            "replay stamps emitted_at with as_of"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn invalid_lines_are_reported_with_line_numbers_and_skipped() {
    let dir = scratch("invalid");
    let input = dir.join("mixed.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"e-1","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":2}"#, "\n",
            "this is not json\n",
            "\n",
            r#"{"event_id":"e-2","customer_id":"acme","type":"order.shipped","occurred_at":"2026-03-03T12:00:00Z"}"#, "\n",
            r#"{"event_id":"e-3","customer_id":"acme","type":"engagement.nps","occurred_at":"2126-03-03T12:00:00Z","score":9}"#, "\n",
            r#"{"event_id":"e-4","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-04T12:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let out = churnsignal(&["replay", "--input", input.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 events applied, 3 invalid"), "{stderr}");
    assert!(stderr.contains("line 2: bad_json"), "{stderr}");
    assert!(stderr.contains("line 4: unknown_type"), "{stderr}");
    assert!(stderr.contains("line 5: future_timestamp"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "the detractor still alerts: {stdout}"
    );
    assert!(stdout.contains(r#""status":"open""#));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn lines_end_at_cr_too_an_oversized_line_is_never_held_and_a_file_without_events_fails() {
    let dir = scratch("line-ends");
    // CR-only line ends (old Mac files) are lines, not one long line; a 3 MB line is
    // rejected as oversized (read past, not held: the limit is 64 KiB).
    let input = dir.join("cr.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(
        br#"{"event_id":"e-1","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":2}"#,
    );
    bytes.push(b'\r');
    bytes.extend(std::iter::repeat_n(b'x', 3 << 20));
    bytes.push(b'\r');
    bytes.extend_from_slice(
        br#"{"event_id":"e-2","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-04T12:00:00Z"}"#,
    );
    bytes.push(b'\r');
    std::fs::write(&input, &bytes).unwrap();
    let out = churnsignal(&["replay", "--input", input.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 events applied, 1 invalid"), "{stderr}");
    assert!(stderr.contains("line 2: oversized"), "{stderr}");
    // Not one valid line: the exit code says so.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "not json\nnor this\n").unwrap();
    let out = churnsignal(&["replay", "--input", junk.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not one of the 2 lines"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn as_of_replays_up_to_an_instant_and_snapshots_there() {
    let dir = scratch("asof");
    let input = dir.join("h.jsonl");
    write_history(
        &input,
        Spec {
            customers: 50,
            days: 120,
            ..Spec::default()
        },
    );
    let snapshot = dir.join("s.jsonl");
    let out = churnsignal(&[
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--alerts",
        dir.join("a.jsonl").to_str().unwrap(),
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--as-of",
        "2026-03-15T00:00:00Z",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(" 0 after --as-of"),
        "later events were skipped: {stderr}"
    );
    let text = std::fs::read_to_string(snapshot).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["as_of"].as_str().unwrap() >= "2026-03-14",
            "{}",
            v["as_of"]
        );
        assert!(
            v["windows"]["last_order_at"]
                .as_str()
                .is_none_or(|t| t <= "2026-03-15"),
            "{v}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_config_accepts_the_default_file_and_names_the_bad_key() {
    let ok = churnsignal(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = scratch("config");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[signals.inactivity]\ncadence_multiplier = 0.5\n").unwrap();
    let out = churnsignal(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("signals.inactivity.cadence_multiplier")
            && stderr.contains("0.5")
            && stderr.contains("1..=100"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
        ])
        .env("CHURNSIGNAL__ENGINE__BUCKET_DAYS", "0")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "environment overrides are validated too"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("engine.bucket_days"));
    std::fs::remove_dir_all(dir).ok();
}
