//! `churnsignal run` against a real Apache Kafka broker (started by
//! `deploy/kafka/kafka.sh`), each test on fresh topics.

use std::time::Duration;

use churnsignal::generate::Spec;
use churnsignal::kafka::{RunError, Service, StartOptions};
use rdkafka::Message;

use super::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn nps(id: &str, customer: &str, day: u32, score: u8) -> String {
    format!(
        r#"{{"event_id":"{id}","customer_id":"{customer}","type":"engagement.nps","occurred_at":"2026-03-{day:02}T12:00:00Z","score":{score}}}"#
    )
}

fn order(id: &str, customer: &str, day: u32, amount: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","customer_id":"{customer}","type":"order.placed","occurred_at":"2026-03-{day:02}T10:00:00Z","order_id":"o-{id}","amount":{amount}}}"#
    )
}

#[test]
fn golden_run_events_in_exactly_the_expected_alerts_out() {
    let b = shared_bootstrap();
    let mut cfg = config(b, "golden");
    cfg.engine.allowed_lateness_secs = 0;
    create_all(&cfg, 1);
    let t = &cfg.kafka.topics;
    // acme and globex buy; then acme answers NPS 3 (a detractor: open) and later 9 (a
    // promoter: resolved). Events of different topics are consumed in no fixed order,
    // so the orders are processed before the answers are produced: one order, as replay's.
    let orders = vec![
        Rec::new(&t.orders, "acme", order("e1", "acme", 1, 120.0)),
        Rec::new(&t.orders, "globex", order("e2", "globex", 1, 80.0)),
        Rec::new(&t.orders, "acme", order("e3", "acme", 8, 110.0)),
    ];
    let answers = vec![
        Rec::new(&t.engagement, "acme", nps("e4", "acme", 10, 3)),
        Rec::new(&t.engagement, "acme", nps("e5", "acme", 20, 9)),
    ];
    produce(b, &orders);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let events = || {
        service
            .status()
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for("the orders processed", WAIT, || events() == 3);
    produce(b, &answers);
    wait_for("the answers processed", WAIT, || events() == 5);
    let recs: Vec<Rec> = orders.into_iter().chain(answers).collect();
    let alerts = read(b, &t.alerts, 2, WAIT);
    assert_eq!(alerts.len(), 2, "an open and a resolved alert");
    let json: Vec<serde_json::Value> = alerts
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(json[0]["status"], "open");
    assert_eq!(json[0]["signals"][0]["signal"], "nps_detractor");
    assert_eq!(json[1]["status"], "resolved");
    assert_eq!(json[0]["alert_id"], json[1]["alert_id"]);
    for (m, j) in alerts.iter().zip(&json) {
        assert_eq!(m.key(), Some(&b"acme"[..]));
        assert_eq!(
            header(m, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(header(m, "alert-status").as_deref(), j["status"].as_str());
        assert_eq!(
            header(m, "ce_id").unwrap(),
            format!("{}:{}", j["alert_id"].as_str().unwrap(), j["sequence"])
        );
        assert_eq!(header(m, "ce_source").as_deref(), Some("churnsignal"));
        assert_eq!(header(m, "ce_specversion").as_deref(), Some("1.0"));
        // emitted_at is the wall clock, not the event time.
        assert!(j["emitted_at"].as_str().unwrap() > "2026-11-01");
    }
    // Exactly what replay of the same events says, up to the wall-clock field.
    let lines: Vec<u8> = recs
        .iter()
        .flat_map(|r| r.value.iter().copied().chain(std::iter::once(b'\n')))
        .collect();
    let expected = replay_alerts(&cfg, &lines);
    let live: Vec<serde_json::Value> = alerts
        .iter()
        .map(|m| without_emitted_at(m.payload().unwrap()))
        .collect();
    assert_eq!(live, expected);

    // The customer API answers for owned customers, 404 for others; ready once caught up.
    let addr = service.http_addr().unwrap();
    wait_for("ready", WAIT, || http_get(addr, "/readyz").0 == 200);
    let api = service.api_addr().unwrap();
    let (status, body) = customer_get(api, "acme");
    assert_eq!(status, 200, "{body}");
    let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rec["customer_id"], "acme");
    assert_eq!(customer_get(api, "nobody").0, 404);
    // Without the token, or on the operations port, no customer data.
    assert_eq!(http_get(api, "/customers/acme").0, 401);
    assert_eq!(http_get(addr, "/customers/acme").0, 404);
    assert_eq!(http_get(addr, "/healthz").0, 200);
    wait_for("offsets committed", WAIT, || {
        committed(b, &cfg.kafka.group_id, &t.orders, 1) == vec![Some(3)]
            && committed(b, &cfg.kafka.group_id, &t.engagement, 1) == vec![Some(2)]
    });
    let report = service.stop().unwrap();
    assert_eq!((report.events, report.alerts, report.acked), (5, 2, 2));
}

#[test]
fn input_topics_with_different_partition_counts_are_refused_by_name() {
    let b = shared_bootstrap();
    let cfg = config(b, "copart");
    let t = &cfg.kafka.topics;
    create_topics(
        b,
        &[
            (&t.orders, 3),
            (&t.support_tickets, 3),
            (&t.engagement, 2),
            (&t.alerts, 3),
            (&t.dead_letters, 1),
        ],
    );
    let err = Service::start(cfg.clone(), StartOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, RunError::NotCoPartitioned(_)), "{err}");
    let msg = err.to_string();
    for name in [&t.orders, &t.support_tickets, &t.engagement] {
        assert!(msg.contains(name.as_str()), "{msg}");
    }
    assert!(msg.contains("has 3") && msg.contains("has 2"), "{msg}");
}

#[test]
fn a_missing_topic_is_named() {
    let b = shared_bootstrap();
    let cfg = config(b, "missing");
    let err = Service::start(cfg.clone(), StartOptions::default())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, RunError::MissingTopic { topic, .. } if *topic == cfg.kafka.topics.orders),
        "{err}"
    );
}

#[test]
fn run_on_one_partition_alerts_exactly_as_replay_does() {
    let b = shared_bootstrap();
    let cfg = one_topic_config(b, "equal");
    create_all(&cfg, 1);
    let spec = Spec {
        customers: 300,
        days: 150,
        seed: 11,
        ..Spec::default()
    };
    let (recs, lines) = history(&cfg, spec);
    let expected = replay_alerts(&cfg, &lines);
    assert!(expected.len() > 20, "the history has alerts to compare");
    produce(b, &recs);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let n = recs.len() as u64;
    wait_for("every event processed", WAIT, || {
        service
            .status()
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
            == n
    });
    let got = read(b, &cfg.kafka.topics.alerts, expected.len(), WAIT);
    let live: Vec<serde_json::Value> = got
        .iter()
        .map(|m| without_emitted_at(m.payload().unwrap()))
        .collect();
    service.stop().unwrap();
    assert_eq!(live.len(), expected.len());
    for (i, (l, e)) in live.iter().zip(&expected).enumerate() {
        assert_eq!(l, e, "alert {i} differs");
    }
}

#[test]
fn every_kind_of_poison_is_dead_lettered_with_its_reason_and_the_consumer_goes_on() {
    use churnsignal::decode::wire::Encoding;
    let b = shared_bootstrap();
    let mut cfg = config(b, "poison");
    cfg.kafka.encoding.support_tickets = Encoding::Protobuf;
    cfg.kafka.encoding.engagement = Encoding::ConfluentProtobuf;
    create_all(&cfg, 1);
    let t = cfg.kafka.topics.clone();
    let ok = |id: &str| order(id, "acme", 1, 10.0);
    let pb = |json: &str| {
        let e = churnsignal::decode::decode_json(json.as_bytes(), &Default::default()).unwrap();
        churnsignal::decode::encode_protobuf(&e)
    };
    let framed = |json: &str| {
        let mut v = vec![0, 0, 0, 0, 7, 0];
        v.extend(pb(json));
        v
    };
    let ticket = r#"{"event_id":"t1","customer_id":"acme","type":"ticket.opened","occurred_at":"2026-03-02T08:00:00Z","ticket_id":"t-9"}"#;
    // (topic, key, value, expected reason)
    let mut poison: Vec<(String, Option<&str>, Vec<u8>, &str)> = vec![
        (t.orders.clone(), Some("acme"), b"{not json".to_vec(), "bad_json"),
        (t.orders.clone(), Some("acme"), br#"{"event_id":"x","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":1}"#.to_vec(), "missing_field"),
        (t.orders.clone(), Some("acme"), ok("p3").replace("\"amount\":10", "\"amount\":\"ten\"").into_bytes(), "wrong_type"),
        (t.orders.clone(), Some("acme"), ok("p4").replace("\"amount\":10", "\"amount\":-5").into_bytes(), "out_of_range"),
        (t.orders.clone(), Some("acme"), ok("p5").replace("order.placed", "order.exploded").into_bytes(), "unknown_type"),
        (t.orders.clone(), Some("acme"), ok("p6").replace("2026-03-01T10:00:00Z", "yesterday").into_bytes(), "bad_timestamp"),
        (t.orders.clone(), Some("acme"), ok("p7").replace("2026-03-01", "2031-03-01").into_bytes(), "future_timestamp"),
        (t.orders.clone(), Some("acme"), ok("p8").replace("\"amount\"", &format!("\"pad\":\"{}\",\"amount\"", "x".repeat(70_000))).into_bytes(), "oversized"),
        (t.orders.clone(), Some("acme"), ok("p9").replace("\"amount\"", "\"schema_version\":2,\"amount\"").into_bytes(), "unsupported_version"),
        (t.orders.clone(), Some("acme"), nps("p10", "acme", 2, 9).into_bytes(), "wrong_topic"),
        (t.orders.clone(), Some("globex"), ok("p11").into_bytes(), "key_mismatch"),
        (t.orders.clone(), None, ok("p12").into_bytes(), "key_mismatch"),
        (t.support_tickets.clone(), Some("acme"), vec![0xff, 0xff, 0xff], "bad_protobuf"),
        (t.engagement.clone(), Some("acme"), pb(&nps("p14", "acme", 2, 9)), "bad_framing"),
    ];
    let mut recs: Vec<Rec> = Vec::new();
    for (i, (topic, key, value, _)) in poison.iter().enumerate() {
        recs.push(Rec {
            topic: topic.clone(),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.clone(),
            headers: vec![("trace-id".into(), format!("trace-{i}").into_bytes())],
        });
    }
    // Valid events after the poison, in each encoding: the consumer goes on.
    recs.push(Rec::new(&t.orders, "acme", ok("v1")));
    recs.push(Rec::new(&t.support_tickets, "acme", pb(ticket)));
    recs.push(Rec::new(
        &t.engagement,
        "acme",
        framed(&nps("v3", "acme", 3, 2)),
    ));
    produce(b, &recs);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let dead = read(b, &t.dead_letters, poison.len(), WAIT);
    assert_eq!(dead.len(), poison.len());
    let alerts = read(b, &t.alerts, 1, WAIT);
    assert_eq!(
        alerts.len(),
        1,
        "the valid detractor answer after the poison alerts"
    );
    for m in &dead {
        let topic = header(m, "churnsignal-source-topic").unwrap();
        let reason = header(m, "churnsignal-reason").unwrap();
        let trace = header(m, "trace-id").expect("original headers kept");
        let i: usize = trace.trim_start_matches("trace-").parse().unwrap();
        let (ptopic, key, value, want) = &poison[i];
        assert_eq!(&reason, want, "poison {i}");
        assert_eq!(&topic, ptopic);
        assert_eq!(m.key(), key.map(str::as_bytes), "original key, poison {i}");
        assert_eq!(
            m.payload().unwrap_or(&[]),
            &value[..],
            "original bytes, poison {i}"
        );
        assert!(header(m, "churnsignal-source-offset").is_some());
        assert_eq!(
            header(m, "churnsignal-source-partition").as_deref(),
            Some("0")
        );
        let msg = header(m, "churnsignal-message").unwrap();
        assert!(!msg.is_empty() && msg.len() <= 300, "{msg}");
    }
    poison.clear();
    wait_for("every offset committed", WAIT, || {
        committed(b, &cfg.kafka.group_id, &t.orders, 1) == vec![Some(13)]
            && committed(b, &cfg.kafka.group_id, &t.support_tickets, 1) == vec![Some(2)]
            && committed(b, &cfg.kafka.group_id, &t.engagement, 1) == vec![Some(2)]
    });
    let report = service.stop().unwrap();
    assert_eq!(report.dead_letters, 14);
    assert_eq!(report.events, 17);
}

#[test]
fn a_restart_resumes_from_committed_offsets_and_reprocesses_nothing_committed() {
    let b = shared_bootstrap();
    let cfg = config(b, "restart");
    create_all(&cfg, 2);
    let t = &cfg.kafka.topics;
    let batch = |from: u32, n: u32| -> Vec<Rec> {
        (from..from + n)
            .map(|i| {
                let c = format!("c{}", i % 17);
                Rec::new(&t.orders, &c, order(&format!("e{i}"), &c, 1 + i % 27, 10.0))
            })
            .collect()
    };
    produce(b, &batch(0, 400));
    let first = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the first 400", WAIT, || {
        first
            .status()
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
            == 400
    });
    assert_eq!(first.stop().unwrap().events, 400);
    let after_first: i64 = committed(b, &cfg.kafka.group_id, &t.orders, 2)
        .iter()
        .map(|o| o.unwrap())
        .sum();
    assert_eq!(
        after_first, 400,
        "the final commit covers everything processed"
    );
    produce(b, &batch(400, 250));
    let second = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let events = || {
        second
            .status()
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for("the next 250", WAIT, || events() >= 250);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events(), 250, "nothing committed was processed again");
    second.stop().unwrap();
    let total: i64 = committed(b, &cfg.kafka.group_id, &t.orders, 2)
        .iter()
        .map(|o| o.unwrap())
        .sum();
    assert_eq!(total, 650);
}

#[test]
fn a_broker_down_for_20_s_loses_no_alert_and_needs_no_restart() {
    let broker = Broker::dedicated("outage");
    let b = broker.bootstrap.as_str();
    let cfg = one_topic_config(b, "outage");
    create_all(&cfg, 1);
    let spec = Spec {
        customers: 200,
        days: 150,
        seed: 5,
        ..Spec::default()
    };
    let (recs, lines) = history(&cfg, spec);
    let expected = replay_alerts(&cfg, &lines);
    let mut expected_keys: Vec<String> = expected.iter().map(|a| a.to_string()).collect();
    expected_keys.sort();
    let (before, after) = recs.split_at(recs.len() * 2 / 3);
    produce(b, before);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let events = || {
        service
            .status()
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for("processing under way", WAIT, || events() > 1000);
    broker.halt();
    std::thread::sleep(Duration::from_secs(20));
    broker.resume();
    produce(b, after);
    let n = recs.len() as u64;
    wait_for("every event processed", Duration::from_secs(120), || {
        events() >= n
    });
    let got = read_until_quiet(
        b,
        &cfg.kafka.topics.alerts,
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
    let report = service
        .stop()
        .expect("no failure: the outage was ridden out");
    let mut live: Vec<String> = got
        .iter()
        .map(|m| without_emitted_at(m.payload().unwrap()).to_string())
        .collect();
    live.sort();
    let produced = live.len();
    live.dedup();
    eprintln!(
        "outage: {} alerts expected, {produced} on the topic ({} duplicates), {} events processed",
        expected_keys.len(),
        produced - live.len(),
        report.events
    );
    assert_eq!(live, expected_keys, "every alert of replay, and no other");
}

#[test]
fn sigterm_under_load_exits_cleanly_in_time_and_secrets_stay_out_of_logs_and_metrics() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let b = shared_bootstrap();
    let cfg = config(b, "sigterm");
    create_all(&cfg, 2);
    let spec = Spec {
        customers: 2000,
        days: 200,
        seed: 3,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    produce(b, &recs);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // One sentinel secret as a SASL password, a key password, a keystore password
    // and a customer-API token.
    const SECRET: &str = "s3cr3t-hunter2-Zq9";
    let api_port = free_port();
    let tokens = std::env::temp_dir().join(format!("cs-sentinel-tokens-{}", std::process::id()));
    std::fs::write(&tokens, format!("{SECRET}-api-token\n")).unwrap();
    let mut child = run_command(&cfg, port)
        .env("RUST_LOG", "debug")
        .env("CHURNSIGNAL__KAFKA__PROPERTIES__SASL.USERNAME", "svc")
        .env("CHURNSIGNAL__KAFKA__PROPERTIES__SASL_PASSWORD", SECRET)
        .env("CHURNSIGNAL__KAFKA__PROPERTIES__SSL.KEY.PASSWORD", SECRET)
        .env(
            "CHURNSIGNAL__KAFKA__PROPERTIES__SSL.KEYSTORE.PASSWORD",
            SECRET,
        )
        .env("CHURNSIGNAL__KAFKA__PROPERTIES__DEBUG", "conf,security")
        .env(
            "CHURNSIGNAL__HTTP__CUSTOMER_API__LISTEN",
            format!("127.0.0.1:{api_port}"),
        )
        .env("CHURNSIGNAL__HTTP__CUSTOMER_API__TOKENS_FILE", &tokens)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let consumed = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("churnsignal_events_consumed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut metrics = String::new();
    wait_for("events and alerts flowing", WAIT, || {
        if std::net::TcpStream::connect(addr).is_err() {
            return false;
        }
        metrics = http_get(addr, "/metrics").1;
        // The latency histogram renders from the first acknowledged alert on.
        consumed(&metrics) > 10_000.0
            && metrics.contains("churnsignal_event_to_alert_latency_seconds_bucket")
    });
    assert!(
        (consumed(&metrics) as usize) < recs.len(),
        "still under load when the signal comes"
    );
    // Every HTTP answer, the customer API's with the secret token, a wrong one and none.
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let auth = format!("Authorization: Bearer {SECRET}-api-token\r\n");
    let mut answers = vec![
        http_get(addr, "/healthz"),
        http_get(addr, "/readyz"),
        http_get(addr, "/customers/cust-0000001"),
        http_get_with(api, "/customers/cust-0000001", &auth),
        http_get_with(api, "/customers/nobody", &auth),
        http_get(api, "/customers/cust-0000001"),
        http_get_with(
            api,
            "/customers/cust-0000001",
            "Authorization: Bearer s3cr3t-hunter2\r\n",
        ),
    ];
    assert!(
        matches!(answers[3].0, 200 | 404),
        "the token admits: {}",
        answers[3].0
    );
    assert_eq!(answers[4].0, 404);
    assert_eq!(answers[5].0, 401);
    answers.push((0, http_get(addr, "/metrics").1));
    for (status, body) in &answers {
        assert!(!body.contains(SECRET), "{status}: {body}");
    }
    let _ = std::fs::remove_file(&tokens);
    let sent = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = sent.elapsed();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "exit status {status}; log tail: {}",
        tail(&log)
    );
    assert!(log.contains("shutdown requested"), "{}", tail(&log));
    eprintln!("SIGTERM under load: exited in {took:?}");
    assert!(!log.contains(SECRET), "a secret reached the log");
    assert!(!metrics.contains(SECRET), "a secret reached /metrics");
    assert!(!metrics.contains("customer_id") && !metrics.contains("cust-0"));
    // Counters of rare conditions exist from the start, at zero.
    for zero in [
        "churnsignal_commit_failures_total 0",
        "churnsignal_consumer_max_poll_exceeded_total 0",
    ] {
        assert!(metrics.contains(zero), "{zero} missing");
    }
    // What was committed was processed: a second run takes over exactly from there.
    let done: i64 = committed(b, &cfg.kafka.group_id, &cfg.kafka.topics.orders, 2)
        .iter()
        .map(|o| o.unwrap_or(0))
        .sum();
    assert!(done > 0, "the final commit landed");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn an_idle_partition_lets_the_wall_clock_stand_in_so_silence_alerts() {
    let b = shared_bootstrap();
    let mut cfg = config(b, "idle");
    cfg.kafka.idle_timeout_secs = 1;
    create_all(&cfg, 1);
    let t = &cfg.kafka.topics;
    // Weekly orders from January to March 2026, then nothing: months of silence by
    // the wall clock, but no later event would ever move event time on.
    let recs: Vec<Rec> = (0..10)
        .map(|w| {
            let day = 5 + 7 * w;
            let json = format!(
                r#"{{"event_id":"w{w}","customer_id":"quiet","type":"order.placed","occurred_at":"{}","order_id":"o{w}","amount":100}}"#,
                churnsignal::time::Timestamp(1_767_225_600_000 + day * 86_400_000)
            );
            Rec::new(&t.orders, "quiet", json)
        })
        .collect();
    produce(b, &recs);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let alerts = read(b, &t.alerts, 1, WAIT);
    service.stop().unwrap();
    assert_eq!(alerts.len(), 1, "the silence is noticed");
    let a: serde_json::Value = serde_json::from_slice(alerts[0].payload().unwrap()).unwrap();
    assert_eq!(a["customer_id"], "quiet");
    let signals: Vec<&str> = a["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert!(signals.contains(&"inactivity"), "{signals:?}");
}

#[test]
fn state_moves_with_its_partition_through_rebalances() {
    use std::sync::atomic::Ordering::Relaxed;
    let b = shared_bootstrap();
    let cfg = config(b, "rebalance");
    create_all(&cfg, 2);
    let t = &cfg.kafka.topics;
    let customers: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let round = |r: u32| -> Vec<Rec> {
        customers
            .iter()
            .map(|c| Rec::new(&t.orders, c, order(&format!("{c}-{r}"), c, 1 + r, 50.0)))
            .collect()
    };
    let a = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    for r in 0..5 {
        produce(b, &round(r));
    }
    wait_for("a has the first five rounds", WAIT, || {
        a.status().events.load(Relaxed) == 100
    });
    // b joins: the partitions are shared out.
    let b2 = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("both own partitions", WAIT, || {
        a.status().assigned.load(Relaxed) == 3 && b2.status().assigned.load(Relaxed) == 3
    });
    produce(b, &round(5));
    wait_for("round 5 processed", WAIT, || {
        a.status().events.load(Relaxed) + b2.status().events.load(Relaxed) == 120
    });
    let b_addr = b2.api_addr().unwrap();
    let orders_at = |addr, c: &str| -> Option<u64> {
        let (s, body) = customer_get(addr, c);
        (s == 200).then(|| {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["windows"]["orders_total"].as_u64().unwrap()
        })
    };
    let owned_by_b: Vec<bool> = customers
        .iter()
        .map(|c| orders_at(b_addr, c).is_some())
        .collect();
    assert!(owned_by_b.iter().any(|x| *x) && !owned_by_b.iter().all(|x| *x));
    // The partitions b took came with their history (restored from the changelog).
    for (c, by_b) in customers.iter().zip(&owned_by_b) {
        if *by_b {
            assert_eq!(orders_at(b_addr, c), Some(6), "{c} on b");
        }
    }
    // b leaves: a gets everything back.
    b2.stop().unwrap();
    wait_for("a owns all again", WAIT, || {
        a.status().assigned.load(Relaxed) == 6
    });
    produce(b, &round(6));
    let a_addr = a.api_addr().unwrap();
    // Every customer has all seven orders, whichever instance had it meanwhile.
    wait_for("round 6 processed", WAIT, || {
        customers.iter().all(|c| orders_at(a_addr, c) == Some(7))
    });
    a.stop().unwrap();
}

#[test]
fn alerts_can_be_protobuf_with_their_content_type() {
    use churnsignal::proto::v1 as pb;
    use prost::Message as _;
    let b = shared_bootstrap();
    let mut cfg = config(b, "pbalerts");
    cfg.kafka.alerts_format = churnsignal::kafka::records::AlertFormat::Protobuf;
    create_all(&cfg, 1);
    let t = &cfg.kafka.topics;
    produce(
        b,
        &[Rec::new(&t.engagement, "acme", nps("e1", "acme", 2, 1))],
    );
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let got = read(b, &t.alerts, 1, WAIT);
    service.stop().unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(
        header(m, "content-type").as_deref(),
        Some("application/x-protobuf")
    );
    let a = pb::Alert::decode(m.payload().unwrap()).expect("a churnsignal.v1.Alert");
    assert_eq!(a.customer_id, "acme");
    assert_eq!(a.status(), pb::AlertStatus::Open);
    assert_eq!(a.sequence, 1);
    assert_eq!(a.signals[0].signal, "nps_detractor");
}

#[test]
fn produce_loads_events_to_their_familys_topic_keyed_and_co_partitioned_by_customer() {
    use std::collections::BTreeMap;
    let b = shared_bootstrap();
    let cfg = config(b, "produce");
    create_all(&cfg, 3);
    let lines = churnsignal::generate::History::new(Spec {
        customers: 40,
        days: 40,
        seed: 5,
        ..Spec::default()
    })
    .fold(Vec::new(), |mut out, g| {
        g.write_json(&mut out).unwrap();
        out
    });
    let text = String::from_utf8(lines).unwrap();
    // A line that is not UTF-8 in the middle (it once stopped `produce` and lost every
    // line queued before it), one that is not an event at the end, CRLF ends between.
    let valid: Vec<&str> = text.lines().collect();
    let bad_at = valid.len().min(1000);
    let mut input = Vec::new();
    for (i, l) in valid.iter().enumerate() {
        if i == bad_at {
            input.extend_from_slice(b"{\"event_id\":\"\xff\xfe\"}\n");
        }
        input.extend_from_slice(l.as_bytes());
        input.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
    }
    input.extend_from_slice(b"this is not an event\n");
    let t = &cfg.kafka.topics;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_churnsignal"))
        .args(["produce", "--input", "-"])
        .env("CHURNSIGNAL__KAFKA__BROKERS", b)
        .env("CHURNSIGNAL__KAFKA__TOPICS__ORDERS", &t.orders)
        .env(
            "CHURNSIGNAL__KAFKA__TOPICS__SUPPORT_TICKETS",
            &t.support_tickets,
        )
        .env("CHURNSIGNAL__KAFKA__TOPICS__ENGAGEMENT", &t.engagement)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&input)?;
            c.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "skipped lines make the exit code say so: {stderr}"
    );
    assert!(
        stderr.contains(&format!("line {}: ", bad_at + 1))
            && stderr.contains(&format!("line {}: ", valid.len() + 2))
            && stderr.contains("skipped 2 invalid"),
        "{stderr}"
    );
    // Expected: each event by its type's family.
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let ty = v["type"].as_str().unwrap();
        let topic = if ty.starts_with("order.") {
            t.orders.as_str()
        } else if ty.starts_with("ticket.") {
            t.support_tickets.as_str()
        } else {
            t.engagement.as_str()
        };
        *want.entry(topic).or_default() += 1;
    }
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (topic, n) in &want {
        let msgs = read(b, topic, *n, Duration::from_secs(60));
        assert_eq!(msgs.len(), *n, "{topic}");
        for m in &msgs {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let customer = v["customer_id"].as_str().unwrap();
            assert_eq!(m.key(), Some(customer.as_bytes()), "keyed by customer");
            assert_eq!(
                header(m, "content-type").as_deref(),
                Some("application/json")
            );
            let p = *partition_of
                .entry(customer.to_owned())
                .or_insert(m.partition());
            assert_eq!(
                p,
                m.partition(),
                "{customer}: one partition number in every topic"
            );
        }
    }
    assert!(want.len() == 3 && partition_of.len() == 40);
}
