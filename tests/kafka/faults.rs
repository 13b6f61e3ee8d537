//! Faults a real broker cannot easily produce, on librdkafka's in-process mock cluster:
//! refused and failing produce requests, a slow broker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use churnsignal::config::Config;
use churnsignal::kafka::{RunError, Service, StartOptions};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn mock_setup(
    test: &str,
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Config,
) {
    let mock = MockCluster::new(1).unwrap();
    let cfg = config(&mock.bootstrap_servers(), test);
    let t = &cfg.kafka.topics;
    for name in t.distinct().into_iter().chain([t.changelog.as_str()]) {
        mock.create_topic(name, partitions, 1).unwrap();
    }
    (mock, cfg)
}

fn valid(i: u32) -> Vec<u8> {
    format!(r#"{{"event_id":"e{i}","customer_id":"acme","type":"order.placed","occurred_at":"2026-03-01T10:00:00Z","order_id":"o{i}","amount":10}}"#).into_bytes()
}

#[test]
fn no_offset_is_committed_ahead_of_a_record_the_broker_refused() {
    // One poison among valid orders: its dead letter is the only record produced.
    let c = committed_after_refusal("refused-dead", |t| &t.orders, valid, b"{poison".to_vec());
    // Everything before the poison is committed; the poison, whose dead letter was
    // never acknowledged, and all after it are not.
    assert_eq!(c, Some(50));
}

#[test]
fn no_offset_is_committed_ahead_of_an_alert_the_broker_refused() {
    // One detractor answer among logins: its alert is the only record produced.
    let login = |i: u32| {
        format!(r#"{{"event_id":"l{i}","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-01T10:00:00Z"}}"#).into_bytes()
    };
    let nps = br#"{"event_id":"n","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-01T11:00:00Z","score":2}"#;
    let c = committed_after_refusal("refused-alert", |t| &t.engagement, login, nps.to_vec());
    // The answer whose alert was never acknowledged, and all after it, stay uncommitted.
    assert_eq!(c, Some(50));
}

/// 50 events of `valid`, then `refused` (the one input that produces a record), then 50
/// more, all on one partition of `topic`; every produce request is refused for good.
/// Returns the group's committed offset after the run failed.
fn committed_after_refusal(
    test: &str,
    topic: impl Fn(&churnsignal::config::TopicsConfig) -> &String,
    valid: impl Fn(u32) -> Vec<u8>,
    refused: Vec<u8>,
) -> Option<i64> {
    let (mock, cfg) = mock_setup(test, 1);
    let topic = topic(&cfg.kafka.topics).clone();
    let first: Vec<Rec> = (0..50)
        .map(|i| Rec::new(&topic, "acme", valid(i)))
        .collect();
    produce(&mock.bootstrap_servers(), &first);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the first 50 checkpointed", WAIT, || {
        checkpointed(&cfg, 0, &topic) == Some(50)
    });
    service.stop().unwrap();
    let mut recs = vec![Rec::new(&topic, "acme", refused)];
    recs.extend((51..101).map(|i| Rec::new(&topic, "acme", valid(i))));
    produce(&mock.bootstrap_servers(), &recs);
    // From now on every produce request is refused for good.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
    );
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the refusal is noticed", WAIT, || {
        service.status().failure().is_some()
    });
    let err = service.stop().expect_err("the run fails");
    assert!(matches!(err, RunError::Failed(_)), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    checkpointed(&cfg, 0, &topic)
}

#[test]
fn failing_produce_requests_are_retried_until_every_record_is_delivered() {
    let (mock, cfg) = mock_setup("retried", 1);
    let t = cfg.kafka.topics.clone();
    let recs: Vec<Rec> = (0..40)
        .map(|i| Rec::new(&t.orders, "acme", format!("{{bad {i}")))
        .collect();
    produce(&mock.bootstrap_servers(), &recs);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("every dead letter acknowledged", WAIT, || {
        service.status().acked.load(Ordering::Relaxed) == 40
    });
    wait_for("every offset committed", WAIT, || {
        checkpointed(&cfg, 0, &t.orders) == Some(40)
    });
    service.stop().unwrap();
    let dead = read(
        &mock.bootstrap_servers(),
        &t.dead_letters,
        41,
        Duration::from_secs(5),
    );
    assert_eq!(dead.len(), 40, "each exactly once (idempotent producer)");
}

#[test]
fn a_slow_broker_pauses_the_consumer_and_memory_stays_bounded() {
    let (mock, mut cfg) = mock_setup("slow", 2);
    cfg.kafka.worker_queue_events = 1000;
    cfg.kafka.producer_properties.0.insert(
        "queue.buffering.max.messages".into(),
        toml::Value::Integer(200),
    );
    let t = cfg.kafka.topics.clone();
    let n = 6000;
    let recs: Vec<Rec> = (0..n)
        .map(|i| Rec::new(&t.orders, &format!("c{}", i % 50), format!("{{bad {i}")))
        .collect();
    produce(&mock.bootstrap_servers(), &recs);
    mock.broker_round_trip_time(1, Duration::from_millis(200))
        .unwrap();
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    let s = service.status().clone();
    wait_for(
        "every dead letter acknowledged",
        Duration::from_secs(120),
        || s.acked.load(Ordering::Relaxed) == n as u64,
    );
    service.stop().unwrap();
    let workers = cfg.kafka.workers as i64;
    let queued = s.max_queued.load(Ordering::Relaxed);
    let in_flight = s.max_producer_in_flight.load(Ordering::Relaxed);
    eprintln!("slow broker: at most {queued} events queued to workers, {in_flight} records in the producer");
    assert!(
        queued <= workers * (1000 + 512),
        "{queued} events queued: more than the workers' queues hold"
    );
    // librdkafka's count also holds delivery reports not yet served, hence the slack.
    assert!(
        in_flight <= 2 * 200,
        "{in_flight} records in flight: more than the producer queue holds"
    );
    assert!(
        queued < n as i64 / 2,
        "the consumer was held back, not buffered ahead"
    );
}

#[test]
fn shutdown_with_the_broker_unreachable_ends_within_the_deadline() {
    let (mock, mut cfg) = mock_setup("unreachable", 2);
    cfg.kafka.shutdown_timeout_secs = 10;
    let t = cfg.kafka.topics.clone();
    // Dead letters to produce while the broker is down: records stuck in the producer.
    let recs: Vec<Rec> = (0..2000)
        .map(|i| Rec::new(&t.orders, &format!("c{}", i % 40), format!("{{bad {i}")))
        .collect();
    produce(&mock.bootstrap_servers(), &recs[..1000]);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the first half acknowledged", WAIT, || {
        service.status().acked.load(Ordering::Relaxed) == 1000
    });
    // Every answer of the broker takes 1 s from now: the second half reaches the service,
    // whose dead letters then wait for their acknowledgements when the broker goes.
    mock.broker_round_trip_time(1, Duration::from_secs(1))
        .unwrap();
    produce(&mock.bootstrap_servers(), &recs[1000..]);
    wait_for("the second half consumed", WAIT, || {
        service.status().events.load(Ordering::Relaxed) == 2000
    });
    mock.broker_down(1).unwrap();
    assert!(
        service.status().acked.load(Ordering::Relaxed) < 2000,
        "dead letters are waiting for the broker"
    );
    std::thread::sleep(Duration::from_secs(2));
    let asked = std::time::Instant::now();
    let result = service.stop();
    let took = asked.elapsed();
    eprintln!("shutdown with the broker down took {took:?}: {result:?}");
    assert!(
        took < Duration::from_secs(15),
        "took {took:?}, more than the 10 s budget plus the consumer's goodbye"
    );
    mock.broker_up(1).unwrap();
    // Only acknowledged progress was committed: at most the first half.
    let done: i64 = (0..2)
        .map(|p| checkpointed(&cfg, p, &t.orders).unwrap_or(0))
        .sum();
    assert!(done <= 1000, "committed {done}");
    drop(result);
}
