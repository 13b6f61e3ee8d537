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

/// A January-to-May backfill replayed with one hostile line inserted in the middle:
/// the alerts and the late count with it, and the report.
fn backfill_with(extra: Option<&str>) -> (Vec<String>, churnsignal::replay::Report) {
    let spec = Spec {
        customers: 400,
        days: 150,
        seed: 17,
        ..Spec::default()
    };
    let mut lines: Vec<u8> = Vec::new();
    let events: Vec<_> = History::new(spec).collect();
    for (i, g) in events.iter().enumerate() {
        if i == events.len() / 2 {
            if let Some(x) = extra {
                // `{middle}`: the time of the event it is inserted before
                let at = g.to_event().occurred_at.to_string();
                lines.extend_from_slice(x.replace("{middle}", &at).as_bytes());
                lines.push(b'\n');
            }
        }
        g.write_json(&mut lines).unwrap();
    }
    let mut out = Vec::new();
    let report = churnsignal::replay::run(
        &lines[..],
        &churnsignal::config::Config::default(),
        &churnsignal::replay::Options::default(),
        &mut out,
        None,
    )
    .unwrap();
    let alerts = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (alerts, report)
}

#[test]
fn one_event_dated_far_ahead_or_long_ago_does_not_move_stream_time_for_everyone() {
    let (clean, _) = backfill_with(None);
    assert!(!clean.is_empty());
    // Dated "now" in the middle of a January-to-May backfill: before, it marked every
    // later event of the backfill late (40,954 of 81,909) and let every customer's
    // silence deadline pass (363 alerts instead of 124). Compared with the same event
    // dated among its neighbours (one more customer changes the value tiers).
    let login = |at: &str| {
        format!(
            r#"{{"event_id":"x-1","customer_id":"intruder","type":"engagement.login","occurred_at":"{at}"}}"#
        )
    };
    let (on_time, clean_report) = backfill_with(Some(&login("{middle}")));
    let (alerts, report) = backfill_with(Some(&login("2026-12-01T00:00:00Z")));
    // Each alert as who, which step, how risky and why (the on-time login also counts
    // in the population's engagement, which moves baselines in the fourth digit).
    let others = |a: &[String]| -> Vec<String> {
        a.iter()
            .filter(|l| !l.contains("\"intruder\""))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let signals: Vec<&str> = v["signals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["signal"].as_str().unwrap())
                    .collect();
                format!(
                    "{} {} {} {} {} {:?}",
                    v["customer_id"], v["sequence"], v["status"], v["risk"], v["as_of"], signals
                )
            })
            .collect()
    };
    assert_eq!(report.invalid, 0, "it is a valid event");
    assert_eq!(report.applied, clean_report.applied);
    assert_eq!(report.late, clean_report.late, "no event turned late");
    assert!(
        others(&alerts) == others(&on_time),
        "every other customer's alerts are as with the event on time"
    );
    // Dated 1970 (and year 0): refused as too old, nothing changes.
    for old in ["1970-01-01T00:00:00Z", "0000-01-01T00:00:00Z"] {
        let line = format!(
            r#"{{"event_id":"x-2","customer_id":"intruder","type":"order.placed","order_id":"o","amount":5.0,"occurred_at":"{old}"}}"#
        );
        let (alerts, report) = backfill_with(Some(&line));
        assert!(alerts == clean, "{old}");
        assert_eq!(report.invalid_by_reason.get("too_old"), Some(&1), "{old}");
    }
    // An order worth 1.7e308 is out of range (sums would reach infinity).
    let huge = r#"{"event_id":"x-3","customer_id":"intruder","type":"order.placed","order_id":"o","amount":1.7e308,"occurred_at":"2026-03-01T00:00:00Z"}"#;
    let (alerts, report) = backfill_with(Some(huge));
    assert!(alerts == clean);
    assert_eq!(report.invalid_by_reason.get("out_of_range"), Some(&1));
}

#[test]
fn an_event_older_than_stream_time_by_more_than_the_maximum_age_is_too_old() {
    let (clean, _) = backfill_with(None);
    // 2025-06-01 is within 400 days of March 2026 (the middle of the backfill): applied.
    // 2024-06-01 is not: a dead letter, `too_old`, with its line number.
    let within = r#"{"event_id":"x-4","customer_id":"intruder","type":"engagement.login","occurred_at":"2025-06-01T00:00:00Z"}"#;
    let (_, report) = backfill_with(Some(within));
    assert_eq!(report.invalid, 0);
    let beyond = within.replace("2025-06-01", "2024-06-01");
    let (alerts, report) = backfill_with(Some(&beyond));
    assert_eq!(report.invalid_by_reason.get("too_old"), Some(&1));
    let example = &report.examples[0];
    assert_eq!(example.reason, "too_old");
    assert!(
        example.message.contains("max_event_age_days"),
        "{}",
        example.message
    );
    assert!(alerts == clean);
}
