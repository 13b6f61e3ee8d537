//! Durable state on the real broker: crashes (SIGKILL) at random points, exactly-once,
//! scale-out with state moving between instances, eviction under millions of customers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use std::time::{Duration, Instant};

use churnsignal::config::{Config, EngineSettings, GroupProtocol, Guarantee};
use churnsignal::engine::Engine;
use churnsignal::generate::Spec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

use super::support::*;

const LONG: Duration = Duration::from_secs(240);

/// `churnsignal run` as a child process configured like `cfg`, its own log on stderr.
fn spawn_run(cfg: &Config, port: u16) -> Proc {
    let child = quick_group_exit(run_command(cfg, port).env("RUST_LOG", "warn"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

/// The customer API's address of a `churnsignal run` started with `cfg` (whose
/// `http.customer_api.listen` has a fixed port: see [`with_api_port`]).
fn api_addr(cfg: &Config) -> std::net::SocketAddr {
    cfg.http.customer_api.listen.parse().unwrap()
}

/// `cfg` with the customer API on a free port, for child processes.
fn with_api_port(mut cfg: Config) -> Config {
    cfg.http.customer_api.listen = format!("127.0.0.1:{}", free_port());
    cfg
}

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(addr(port)).is_ok()
}

/// Input messages the instance on `port` consumed so far (from `/metrics`).
fn consumed(port: u16) -> f64 {
    if !answers(port) {
        return 0.0;
    }
    http_get(addr(port), "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with("churnsignal_events_consumed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A small deterministic generator for kill points.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// The health record replay's engine holds for every customer after these lines.
fn replay_records(cfg: &Config, spec: Spec) -> BTreeMap<String, serde_json::Value> {
    let events: Vec<_> = churnsignal::generate::History::new(spec)
        .map(|g| g.to_event())
        .collect();
    let mut e = Engine::new(EngineSettings::new(cfg).unwrap());
    let mut out = Vec::new();
    for chunk in events.chunks(512) {
        e.apply_batch(chunk, &mut out);
    }
    e.finish();
    let ids: BTreeSet<String> = events.iter().map(|e| e.customer_id.to_string()).collect();
    ids.into_iter()
        .map(|id| {
            let r = e.health_record(&id).unwrap().to_json();
            (id, serde_json::from_str(&r).unwrap())
        })
        .collect()
}

/// SIGKILL at random points, at least 5 times, over a history of more than 100,000
/// events on one partition; then the alerts (duplicates removed) and every customer's
/// health record equal replay's. Returns the duplicates seen.
fn kill_loop(test: &str, guarantee: Guarantee) -> usize {
    let b = shared_bootstrap();
    let mut cfg = with_api_port(one_topic_config(b, test));
    cfg.kafka.processing.guarantee = guarantee;
    // At-least-once checkpoints often. Exactly-once commits every 100 ms and writes
    // its state records every 3 s, journaling the transactions between: most kills
    // land with a journal to replay over the input.
    cfg.kafka.commit_interval_ms = match guarantee {
        Guarantee::AtLeastOnce => 200,
        Guarantee::ExactlyOnce => 3000,
    };
    // static membership: a restarted instance takes its partition back at once
    cfg.kafka.group_instance_id = "the-one".into();
    create_all(&cfg, 1);
    let spec = Spec {
        customers: 420,
        days: 200,
        seed: 29,
        ..Spec::default()
    };
    let (recs, lines) = history(&cfg, spec.clone());
    assert!(recs.len() >= 100_000, "{} events", recs.len());
    let expected = replay_alerts(&cfg, &lines);
    let topic = cfg.kafka.topics.orders.clone();
    let mut rng = Lcg(std::process::id() as u64 ^ 0x5eed);
    let slices = 6;
    let per = recs.len().div_ceil(slices);
    let (mut kills, mut mid_stream) = (0, 0);
    let mut replayed = 0.0;
    let replayed_by = |port| metric(port, "churnsignal_restore_replayed_messages_total");
    for (i, slice) in recs.chunks(per).enumerate() {
        produce(b, slice);
        let port = free_port();
        let mut child = spawn_run(&cfg, port);
        if i + 1 == slices {
            // the last run finishes the stream
            wait_for("every event checkpointed", LONG, || {
                checkpointed(&cfg, 0, &topic) == Some(recs.len() as i64)
            });
            let mut records = BTreeMap::new();
            for id in replay_records(&cfg, spec.clone()).keys() {
                let (s, body) = customer_get(api_addr(&cfg), id);
                assert_eq!(s, 200, "{id}");
                records.insert(
                    id.clone(),
                    serde_json::from_str::<serde_json::Value>(&body).unwrap(),
                );
            }
            replayed += replayed_by(port);
            assert_eq!(
                records,
                replay_records(&cfg, spec.clone()),
                "health records"
            );
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        // Killed at a random point: a third of the time while starting (joining the
        // group, restoring), otherwise while processing, at a random moment.
        wait_for("the process started", LONG, || answers(port));
        let early = rng.next(3) == 0;
        if !early {
            wait_for("processing", LONG, || consumed(port) > 0.0);
            mid_stream += 1;
        }
        let wait = Duration::from_millis(rng.next(if early { 300 } else { 2000 }));
        std::thread::sleep(wait);
        replayed += replayed_by(port);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        eprintln!(
            "{test}: killed {} after {wait:?}; checkpointed {:?} of {}",
            if early {
                "while starting"
            } else {
                "while processing"
            },
            checkpointed(&cfg, 0, &topic),
            per * (i + 1)
        );
    }
    assert!(kills >= 5);
    assert!(mid_stream >= 1, "some kills land while processing");
    match guarantee {
        // Restores replayed journals over their input (the outputs of that input
        // committed before the kill, and checked below not to appear twice).
        Guarantee::ExactlyOnce => assert!(replayed > 0.0, "no restore replayed a journal"),
        Guarantee::AtLeastOnce => assert_eq!(replayed, 0.0, "at-least-once journals nothing"),
    }
    let got = read_all(b, &cfg.kafka.topics.alerts, true);
    let (live, dups) = by_key(&got);
    let (want, _) = by_key(&expected);
    assert!(want.len() > 100, "the history has alerts to compare");
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "(alert_id, sequence) set"
    );
    assert_eq!(live, want, "the alerts themselves");
    eprintln!(
        "{test}: {} events, {kills} kills, {} alerts, {dups} duplicates, {replayed} messages replayed from journals",
        recs.len(),
        want.len()
    );
    dups
}

#[test]
fn killed_at_random_points_at_least_once_loses_nothing_and_state_equals_replay() {
    let dups = kill_loop("kill-alos", Guarantee::AtLeastOnce);
    eprintln!("at-least-once duplicates: {dups}");
}

#[test]
fn killed_at_random_points_exactly_once_has_no_duplicate_at_all() {
    let dups = kill_loop("kill-eos", Guarantee::ExactlyOnce);
    assert_eq!(dups, 0, "read_committed sees every alert exactly once");
}

/// Reads `topic`'s partitions from the start: per partition, the values in order.
/// `cfg` made an exactly-once service writing its state records every
/// `commit_interval_ms` (journals in between), with static membership (a restarted
/// instance takes its partition back at once), over one partition; and the history of
/// `spec`, generated for its topics.
fn exactly_once(mut cfg: Config, commit_interval_ms: u64, spec: &Spec) -> (Config, Vec<Rec>) {
    cfg.kafka.processing.guarantee = Guarantee::ExactlyOnce;
    cfg.kafka.commit_interval_ms = commit_interval_ms;
    cfg.kafka.group_instance_id = "the-one".into();
    create_all(&cfg, 1);
    let (recs, _) = history(&cfg, spec.clone());
    (cfg, recs)
}

/// Exactly-once over three input topics, each run starting on a backlog: a partition
/// engine takes its inputs' messages in event-time order (stream-time synchronization),
/// and a restore replays its journal in the order it recorded, so the committed alerts
/// are replay's of the events merged in time order, each once. A replay that rebuilt
/// another state than the one that committed would also announce an episode's change
/// again, or another one under a (alert_id, sequence) already taken: every episode must
/// read open, then +1 at a time, each sequence once.
#[test]
fn killed_at_random_points_exactly_once_over_three_topics_keeps_every_episode_whole() {
    let b = shared_bootstrap();
    let spec = Spec {
        customers: 300,
        days: 200,
        seed: 37,
        ..Spec::default()
    };
    let (cfg, recs) = exactly_once(config(b, "kill-eos3"), 3000, &spec);
    let topics = [
        cfg.kafka.topics.orders.clone(),
        cfg.kafka.topics.support_tickets.clone(),
        cfg.kafka.topics.engagement.clone(),
    ];
    let done = |cfg: &Config| -> i64 {
        topics
            .iter()
            .map(|t| checkpointed(cfg, 0, t).unwrap_or(0))
            .sum()
    };
    let mut rng = Lcg(std::process::id() as u64 ^ 0x3e05);
    let slices = 6;
    let per = recs.len().div_ceil(slices);
    let mut replayed = 0.0;
    for (i, slice) in recs.chunks(per).enumerate() {
        produce(b, slice);
        let port = free_port();
        let mut child = spawn_run(&cfg, port);
        if i + 1 == slices {
            wait_for("every event checkpointed", LONG, || {
                done(&cfg) == recs.len() as i64
            });
            replayed += metric(port, "churnsignal_restore_replayed_messages_total");
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        wait_for("processing", LONG, || consumed(port) > 0.0);
        std::thread::sleep(Duration::from_millis(rng.next(1500)));
        replayed += metric(port, "churnsignal_restore_replayed_messages_total");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(replayed > 0.0, "no restore replayed a journal");
    let (alerts, episodes) = assert_episodes_whole(&cfg);
    assert_eq!(
        assert_live_equals_replay(&cfg, 1, recs.len()),
        0,
        "read_committed sees every alert once"
    );
    eprintln!(
        "kill-eos3: {} events, {alerts} alerts in {episodes} episodes, {replayed} messages replayed from journals",
        recs.len(),
    );
}

/// The committed alerts of `cfg`'s alerts topic: none twice, and every episode reads
/// open, then +1 at a time, each sequence once. Returns (alerts, episodes).
fn assert_episodes_whole(cfg: &Config) -> (usize, usize) {
    let got = read_all(&cfg.kafka.brokers, &cfg.kafka.topics.alerts, true);
    let (alerts, dups) = by_key(&got);
    assert!(
        alerts.len() > 50,
        "the history has alerts: {}",
        alerts.len()
    );
    assert_eq!(dups, 0, "exactly-once: no alert twice");
    let mut episodes: BTreeMap<&str, Vec<(u64, &serde_json::Value)>> = BTreeMap::new();
    for ((id, seq), v) in &alerts {
        episodes.entry(id.as_str()).or_default().push((*seq, v));
    }
    for (id, list) in &episodes {
        let seqs: Vec<u64> = list.iter().map(|(s, _)| *s).collect();
        let want: Vec<u64> = (1..=list.len() as u64).collect();
        assert_eq!(seqs, want, "episode {id}: sequences 1, 2, ... each once");
        assert_eq!(list[0].1["status"], "open", "episode {id} opens first");
    }
    (alerts.len(), episodes.len())
}

/// KIP-848 over three co-partitioned input topics, exactly-once: three instances, one
/// killed and one added while events flow. The broker hands a partition's topics over
/// one heartbeat at a time; an engine must start only once it holds partition *p* of
/// all three (two instances running one partition would fence each other and split
/// its customers' history). Every event ends checkpointed and every episode whole.
#[test]
fn under_kip_848_three_topics_move_together_and_every_episode_stays_whole() {
    let b = shared_bootstrap();
    let mut cfg = config(b, "scale848x3");
    cfg.kafka.group_protocol = GroupProtocol::Consumer;
    cfg.kafka.processing.guarantee = Guarantee::ExactlyOnce;
    cfg.kafka.commit_interval_ms = 1000;
    create_all(&cfg, 6);
    let spec = Spec {
        customers: 300,
        days: 200,
        seed: 43,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    let topics = [
        cfg.kafka.topics.orders.clone(),
        cfg.kafka.topics.support_tickets.clone(),
        cfg.kafka.topics.engagement.clone(),
    ];
    let done = |cfg: &Config| -> i64 {
        (0..6)
            .flat_map(|p| topics.iter().map(move |t| (p, t)))
            .map(|(p, t)| checkpointed(cfg, p, t).unwrap_or(0))
            .sum()
    };
    let slices: Vec<&[Rec]> = recs.chunks(recs.len().div_ceil(10)).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let a = spawn_run(&cfg, ports[0]);
    let mut killed = spawn_run(&cfg, ports[1]);
    let c = spawn_run(&cfg, ports[2]);
    for s in &slices[..4] {
        produce(b, s);
    }
    wait_for("the second instance processing", LONG, || {
        consumed(ports[1]) > 0.0
    });
    killed.kill().unwrap(); // SIGKILL while events flow
    killed.wait().unwrap();
    for s in &slices[4..7] {
        produce(b, s);
    }
    let d = spawn_run(&cfg, ports[3]);
    for s in &slices[7..] {
        produce(b, s);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for("every event checkpointed", LONG, || {
        done(&cfg) == recs.len() as i64
    });
    for mut child in [a, c, d] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (alerts, episodes) = assert_episodes_whole(&cfg);
    eprintln!(
        "scale848x3: {} events, {alerts} alerts in {episodes} episodes",
        recs.len()
    );
}

/// Sets `max.message.bytes` of `topic` (the only setting the tests give it).
fn set_max_message_bytes(bootstrap: &str, topic: &str, bytes: u32) {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let admin = Admin::new(bootstrap);
    let value = bytes.to_string();
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &value);
    let altered = admin
        .run(admin.client.alter_configs(&[change], &AdminOptions::new()))
        .unwrap();
    for r in altered {
        r.expect("topic config altered");
    }
}

/// Exactly-once, while the alerts topic refuses every record (its `max.message.bytes`
/// lowered below an alert's size, as an operator's mistake would): each transaction
/// with an alert fails, is aborted, and its partition rewound (state restored from the
/// changelog, the input since the last commit processed again), over and over, until
/// the topic takes records again. The service neither stops nor loses or repeats
/// anything: the committed alerts equal replay's, none twice. A rewind that let a
/// record of the engine it replaced through, or skipped a message, would show here.
#[test]
fn exactly_once_rewinds_while_the_alerts_topic_refuses_records_and_ends_as_replay() {
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "refused");
    cfg.kafka.processing.guarantee = Guarantee::ExactlyOnce;
    cfg.kafka.commit_interval_ms = 1000;
    create_all(&cfg, 2);
    let spec = Spec {
        customers: 300,
        days: 200,
        seed: 47,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    let third = recs.len().div_ceil(3);
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    produce(b, &recs[..third]);
    wait_for("processing", LONG, || consumed(port) > 0.0);
    let aborted = || metric(port, "churnsignal_checkpoints_total{result=\"aborted\"}");
    let before = aborted();
    set_max_message_bytes(b, &cfg.kafka.topics.alerts, 300);
    for s in recs[third..2 * third].chunks(2000) {
        produce(b, s);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("transactions refused and rewound", LONG, || {
        aborted() >= before + 5.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let refused = aborted() - before;
    assert!(child.0.try_wait().unwrap().is_none(), "the service stopped");
    set_max_message_bytes(b, &cfg.kafka.topics.alerts, 1_048_588);
    produce(b, &recs[2 * third..]);
    wait_checkpointed_at_end(&cfg, 2, recs.len());
    assert!(child.0.try_wait().unwrap().is_none(), "the service stopped");
    child.kill().unwrap();
    child.wait().unwrap();
    let dups = assert_alerts_equal_replay(&cfg, 2, recs.len(), true);
    assert_eq!(dups, 0, "exactly-once: no alert twice");
    eprintln!(
        "refused: {} events, {refused} transactions refused and rewound",
        recs.len()
    );
}

/// The last value of `key` in partition `p` of the changelog (`Some(None)`: a tombstone).
fn last_changelog_value(cfg: &Config, p: i32, key: &[u8]) -> Option<Option<Vec<u8>>> {
    use churnsignal::kafka::changelog::RestoreCtx;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let topic = &cfg.kafka.topics.changelog;
    let c: BaseConsumer<RestoreCtx> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", unique("changelog-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(RestoreCtx)
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut last = None;
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.key() == Some(key) => last = Some(m.payload().map(<[u8]>::to_vec)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return last,
            _ => {}
        }
    }
    panic!("the changelog was not read to its end");
}

/// Exactly-once switched off while a journal is pending: the at-least-once restart
/// replays it (its state is exact), and its first state records leave a tombstone for
/// it, so later restores do not find a journal that no longer starts at the records.
#[test]
fn switched_to_at_least_once_the_service_replays_the_pending_journal_then_drops_it() {
    use churnsignal::kafka::journal::JOURNAL_KEY;
    let b = shared_bootstrap();
    let spec = Spec {
        customers: 60,
        days: 120,
        seed: 43,
        ..Spec::default()
    };
    let (mut cfg, recs) = exactly_once(
        with_api_port(one_topic_config(b, "journal-switch")),
        600_000,
        &spec,
    );
    let topic = cfg.kafka.topics.orders.clone();
    let group = cfg.kafka.group_id.clone();
    let (head, rest) = recs.split_at(recs.len() / 10);
    produce(b, head);
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    wait_for("the state records", LONG, || {
        checkpointed(&cfg, 0, &topic).is_some()
    });
    produce(b, rest);
    let total = recs.len() as i64;
    wait_for("everything committed", LONG, || {
        committed(b, &group, &topic, 1)[0] == Some(total)
    });
    assert!(
        checkpointed(&cfg, 0, &topic) < Some(total),
        "a journal pending"
    );
    assert!(matches!(
        last_changelog_value(&cfg, 0, JOURNAL_KEY),
        Some(Some(_))
    ));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    cfg.kafka.processing.guarantee = Guarantee::AtLeastOnce;
    cfg.kafka.commit_interval_ms = 200;
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    wait_for("the state records at the end", LONG, || {
        checkpointed(&cfg, 0, &topic) == Some(total)
    });
    assert!(
        metric(port, "churnsignal_restore_replayed_messages_total") > 0.0,
        "the journal was replayed"
    );
    assert_eq!(
        last_changelog_value(&cfg, 0, JOURNAL_KEY),
        Some(None),
        "a tombstone for the journal"
    );
    for (id, want) in replay_records(&cfg, spec) {
        let (status, body) = customer_get(api_addr(&cfg), &id);
        assert_eq!(status, 200, "{id}");
        let got: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got, want, "{id}'s health record");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Deletes partition `p` of `topic` before `offset` (as retention would).
fn delete_records(bootstrap: &str, topic: &str, p: i32, offset: i64) {
    use rdkafka::admin::AdminOptions;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let admin = Admin::new(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(offset))
        .unwrap();
    let done = admin
        .run(admin.client.delete_records(&tpl, &AdminOptions::new()))
        .unwrap();
    let low = done.find_partition(topic, p).unwrap();
    assert_eq!(low.error(), Ok(()), "records deleted");
    assert_eq!(
        low.offset(),
        Offset::Offset(offset),
        "the new start of the log"
    );
}

/// Exactly-once: the input a journal covers is deleted while the service is down (its
/// retention ran out). The restore cannot replay it, says so, and goes on from the
/// state records at the committed offsets, as a consumer whose position is gone goes on
/// from what there is, instead of stopping for good.
#[test]
fn a_journal_whose_input_is_gone_leaves_the_state_at_its_records_and_goes_on() {
    let b = shared_bootstrap();
    let spec = Spec {
        customers: 60,
        days: 120,
        seed: 41,
        ..Spec::default()
    };
    // The state records are written at the first checkpoint, then not for 10 minutes.
    let (cfg, recs) = exactly_once(one_topic_config(b, "journal-gone"), 600_000, &spec);
    let topic = cfg.kafka.topics.orders.clone();
    let (head, rest) = recs.split_at(recs.len() / 10);
    let (first, second) = rest.split_at(rest.len() / 2);
    produce(b, head);
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    wait_for("the state records", LONG, || {
        checkpointed(&cfg, 0, &topic).is_some()
    });
    let state_at = checkpointed(&cfg, 0, &topic).unwrap();
    produce(b, first);
    let end = (head.len() + first.len()) as i64;
    let group = cfg.kafka.group_id.clone();
    wait_for("the first part committed", LONG, || {
        committed(b, &group, &topic, 1)[0] == Some(end)
    });
    assert_eq!(
        checkpointed(&cfg, 0, &topic),
        Some(state_at),
        "transactions carried the journal, not the state records"
    );
    assert!(state_at < end);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    delete_records(b, &topic, 0, end);
    produce(b, second);
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    let total = recs.len() as i64;
    wait_for("the rest committed", LONG, || {
        committed(b, &group, &topic, 1)[0] == Some(total)
    });
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the service is still running"
    );
    wait_for("ready", LONG, || http_get(addr(port), "/readyz").0 == 200);
    assert_eq!(
        metric(port, "churnsignal_restore_replayed_messages_total"),
        0.0,
        "nothing to replay"
    );
    // Its state records were written again at its first checkpoint, from the
    // committed offsets on (the input before them is gone).
    wait_for("the state records rewritten", LONG, || {
        checkpointed(&cfg, 0, &topic).is_some_and(|o| o >= end)
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn three_instances_one_killed_one_added_while_events_flow_lose_nothing() {
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "scale");
    cfg.kafka.commit_interval_ms = 200;
    let kept = scale_out(&cfg);
    // Eager: every rebalance stops every engine of every member, kept ones too.
    assert!(
        kept.iter().all(|(_, restarted)| *restarted),
        "the classic protocol stops and restores every partition: {kept:?}"
    );
}

/// Under KIP-848 a rebalance moves only what changes owner: a partition that stays
/// on a survivor through a group change (the kill, the addition) keeps its engine
/// running.
#[test]
fn under_kip_848_partitions_that_stay_keep_working_through_rebalances() {
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "scale848");
    cfg.kafka.commit_interval_ms = 200;
    cfg.kafka.group_protocol = GroupProtocol::Consumer;
    let kept = scale_out(&cfg);
    assert!(
        !kept.is_empty(),
        "the broker's range assignor is sticky: some partition stays on a survivor"
    );
    assert!(
        kept.iter().all(|(_, restarted)| !restarted),
        "no partition that stayed was stopped: {kept:?}"
    );
}

/// Partition engines started and stopped on the instance on `port`, by (change,
/// partition).
fn engine_changes(port: u16) -> BTreeMap<(String, i32), f64> {
    let mut m = BTreeMap::new();
    for l in http_get(addr(port), "/metrics").1.lines() {
        let Some(rest) = l.strip_prefix("churnsignal_partition_engines_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |k: &str| -> String {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .unwrap()
                .trim_end_matches('"')
                .to_owned()
        };
        m.insert(
            (label("change"), label("partition").parse().unwrap()),
            value.parse().unwrap(),
        );
    }
    m
}

/// The partitions whose engine runs on an instance, from its start and stop counts.
fn running(changes: &BTreeMap<(String, i32), f64>) -> BTreeSet<i32> {
    let count = |c: &str, p: i32| changes.get(&(c.to_owned(), p)).copied().unwrap_or(0.0);
    (0..6)
        .filter(|p| count("start", *p) > count("stop", *p))
        .collect()
}

/// Three instances in one group over 6 partitions, one killed and one added while
/// events flow; afterwards the alerts equal replay's. Returns, for each of the two
/// group changes (the kill, the addition), the partitions that ran on a survivor
/// before and after it, each with whether its engine was stopped (and started again)
/// in between.
fn scale_out(cfg: &Config) -> Vec<((u16, i32), bool)> {
    let b = cfg.kafka.brokers.as_str();
    let cfg = cfg.clone();
    create_all(&cfg, 6);
    let spec = Spec {
        customers: 300,
        days: 200,
        seed: 41,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    let slices: Vec<&[Rec]> = recs.chunks(recs.len().div_ceil(10)).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let a = spawn_run(&cfg, ports[0]);
    let mut b2 = spawn_run(&cfg, ports[1]);
    let c = spawn_run(&cfg, ports[2]);
    for p in &ports[..3] {
        wait_for("instance up", LONG, || answers(*p));
    }
    let owns = |port: u16| -> f64 {
        http_get(addr(port), "/metrics")
            .1
            .lines()
            .find(|l| l.starts_with("churnsignal_assigned_partitions "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    wait_for("the three share the 6 partitions", LONG, || {
        ports[..3].iter().all(|p| owns(*p) == 2.0)
    });
    for s in &slices[..4] {
        produce(b, s);
    }
    wait_for("the second instance processing", LONG, || {
        consumed(ports[1]) > 0.0
    });
    let survivors = [ports[0], ports[2]];
    let before: Vec<_> = survivors.iter().map(|p| engine_changes(*p)).collect();
    b2.kill().unwrap(); // SIGKILL while events flow
    b2.wait().unwrap();
    for s in &slices[4..7] {
        produce(b, s);
    }
    wait_for(
        "the survivors take over the killed one's partitions",
        LONG,
        || owns(ports[0]) + owns(ports[2]) == 6.0,
    );
    let between: Vec<_> = survivors.iter().map(|p| engine_changes(*p)).collect();
    let d = spawn_run(&cfg, ports[3]);
    for s in &slices[7..] {
        produce(b, s);
        std::thread::sleep(Duration::from_millis(300));
    }
    // lag back to zero: every partition's checkpoint at its end
    wait_checkpointed_at_end(&cfg, 6, recs.len());
    let owned: Vec<f64> = [ports[0], ports[2], ports[3]]
        .iter()
        .map(|p| owns(*p))
        .collect();
    let after: Vec<_> = survivors.iter().map(|p| engine_changes(*p)).collect();
    let mut kept = Vec::new();
    let stops = |m: &BTreeMap<(String, i32), f64>, p: i32| {
        m.get(&("stop".to_owned(), p)).copied().unwrap_or(0.0)
    };
    for (from, to) in [(&before, &between), (&between, &after)] {
        for (i, port) in survivors.iter().enumerate() {
            for p in running(&from[i]).intersection(&running(&to[i])) {
                kept.push(((*port, *p), stops(&to[i], *p) > stops(&from[i], *p)));
            }
        }
    }
    for mut child in [a, c, d] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(
        owned.iter().sum::<f64>(),
        6.0,
        "the survivors and the new one own all: {owned:?}"
    );
    // Expected: replay of each partition's events (one engine per partition, as live).
    let dups = assert_alerts_equal_replay(&cfg, 6, recs.len(), true);
    eprintln!(
        "scale-out ({:?}): {} events, {dups} duplicates; (survivor, partition) kept: {kept:?}",
        cfg.kafka.group_protocol,
        recs.len()
    );
    kept
}

/// Peak resident memory of a process, bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kb * 1024
}

fn metric(port: u16, prefix: &str) -> f64 {
    http_get(addr(port), "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn two_million_distinct_customers_stay_within_the_cap_and_returning_ones_start_fresh() {
    const N: u64 = 2_000_000;
    const CAP: u64 = 200_000;
    let b = shared_bootstrap();
    let mut cfg = with_api_port(one_topic_config(b, "evict"));
    cfg.engine.evict_after_days = 1;
    cfg.engine.max_customers = CAP;
    cfg.kafka.commit_interval_ms = 2000;
    create_all(&cfg, 2);
    let topic = cfg.kafka.topics.orders.clone();
    // One order per customer, 8 s apart (185 days of event time), of which a one-day
    // horizon holds about 10,800; the cap is the safety net.
    let day0 = 1_767_571_200i64; // 2026-01-05
    const GAP: i64 = 8;
    let order = |i: u64, n: u32, t: i64| -> Rec {
        let c = format!("c{i}");
        let json = format!(
            r#"{{"event_id":"o{i}-{n}","customer_id":"{c}","type":"order.placed","occurred_at":"{}","order_id":"o{i}-{n}","amount":12.5}}"#,
            churnsignal::time::Timestamp(t * 1000).to_rfc3339()
        );
        Rec::new(&topic, &c, json)
    };
    let port = free_port();
    let mut child = spawn_run(&cfg, port);
    let p = producer(b);
    for i in 0..N {
        let r = order(i, 0, day0 + i as i64 * GAP);
        loop {
            let rec = rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&r.topic)
                .key(r.key.as_deref().unwrap())
                .payload(&r.value[..]);
            match p.send(rec) {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(120)).unwrap();
    wait_for("two million consumed", Duration::from_secs(600), || {
        consumed(port) >= N as f64
    });
    let tracked = metric(port, "churnsignal_customers_tracked{");
    let by_cap = metric(port, "churnsignal_customers_evicted_total{reason=\"cap\"}");
    let by_idle = metric(port, "churnsignal_customers_evicted_total{reason=\"idle\"}");
    let rss = peak_rss(child.id());
    // The first customers come back, 185 days later.
    for i in 0..10 {
        produce(b, &[order(i, 1, day0 + N as i64 * GAP + i as i64)]);
    }
    wait_for("the returning customers processed", LONG, || {
        consumed(port) >= (N + 10) as f64
    });
    let orders_of = |c: &str| -> u64 {
        let (s, body) = customer_get(api_addr(&cfg), c);
        assert_eq!(s, 200, "{c}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["windows"]["orders_total"].as_u64().unwrap()
    };
    for i in 0..10 {
        assert_eq!(orders_of(&format!("c{i}")), 1, "c{i} starts afresh");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "evict: peak RSS {} MiB, tracked {tracked}, evicted {by_cap} by the cap and {by_idle} idle",
        rss >> 20
    );
    assert!(tracked <= CAP as f64, "tracked {tracked} > cap {CAP}");
    assert!(
        by_idle >= (N - CAP) as f64,
        "the horizon forgets most: {by_idle}"
    );
    // At most the cap's customers, about 200,000 x 460 B = 92 MB, are held (the two
    // million would take 920 MB); librdkafka's buffers and the queues add a little.
    assert!(rss < 400 << 20, "peak RSS {} MiB", rss >> 20);
}

/// `/readyz` of the instance on `port` says it is restoring.
fn restoring(port: u16) -> bool {
    answers(port) && http_get(addr(port), "/readyz").1.contains("restoring")
}

/// Alerts on the topic (duplicates removed) equal per-partition replay of the input.
fn assert_alerts_equal_replay(
    cfg: &Config,
    partitions: i32,
    total: usize,
    committed: bool,
) -> usize {
    let b = &cfg.kafka.brokers;
    let mut want = Vec::new();
    for lines in partitions_of(b, &cfg.kafka.topics.orders, partitions, total) {
        want.extend(replay_alerts(cfg, &lines));
    }
    let (want, _) = by_key(&want);
    let (live, dups) = by_key(&read_all(b, &cfg.kafka.topics.alerts, committed));
    assert!(want.len() > 50);
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "(alert_id, sequence) set"
    );
    assert_eq!(live, want);
    dups
}

fn wait_checkpointed_at_end(cfg: &Config, partitions: i32, total: usize) {
    let topic = &cfg.kafka.topics.orders;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .unwrap();
    // Retried: just after a broker restart, a partition can still be without a leader
    // (NotLeaderForPartition) for a moment.
    let mut ends = Vec::new();
    wait_for("the input's end offsets", LONG, || {
        let fetched: Result<Vec<i64>, _> = (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map(|(_, high)| high)
            })
            .collect();
        match fetched {
            Ok(e) => {
                ends = e;
                true
            }
            Err(e) => {
                eprintln!("end offsets not yet known: {e}");
                false
            }
        }
    });
    assert_eq!(ends.iter().sum::<i64>() as usize, total);
    // Long: a debug build under a full test run on two cores.
    wait_for("every partition checkpointed at its end", LONG * 3, || {
        (0..partitions).all(|p| checkpointed(cfg, p, topic) == Some(ends[p as usize]))
    });
}

/// Tombstones padding each changelog partition in the restore test.
const PAD: usize = 2_500_000;

#[test]
fn a_restart_and_a_rebalance_during_restore_end_in_the_same_alerts() {
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "restore");
    // A checkpoint every 100 ms: nearly every event's customer is written anew each
    // time, a changelog of over a hundred thousand records, so that restoring takes
    // long enough to be interrupted.
    cfg.kafka.commit_interval_ms = 100;
    // One batch per worker queue: full at once when a restore holds the worker up, so
    // that the consumer pauses within the restore (a second later).
    cfg.kafka.worker_queue_events = 100;
    create_all(&cfg, 2);
    let spec = Spec {
        customers: 1000,
        days: 150,
        seed: 43,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    let (first, rest) = recs.split_at(recs.len() * 2 / 3);
    produce(b, first);
    let port = free_port();
    let mut a = spawn_run(&cfg, port);
    wait_checkpointed_at_end(&cfg, 2, first.len());
    a.kill().unwrap();
    a.wait().unwrap();
    produce(b, rest);
    // Restoring then takes seconds: long enough for the input piling up meanwhile to
    // fill the workers' queues and pause the consumer.
    for p in 0..2 {
        pad_changelog(&cfg, p, PAD);
    }
    // Restart during restore: killed as soon as it says it is restoring.
    let port = free_port();
    let mut a = spawn_run(&cfg, port);
    wait_for("restoring", LONG, || restoring(port));
    a.kill().unwrap();
    a.wait().unwrap();
    // Rebalance during restore: a second instance joins while the first restores.
    let (p1, p2) = (free_port(), free_port());
    let mut a = spawn_run(&cfg, p1);
    wait_for("restoring again", LONG, || restoring(p1));
    // Paused by back-pressure when the group moves: a partition must not come back
    // from the rebalance still paused (librdkafka keeps the pause; nothing would lift it).
    wait_for("the consumer paused while restoring", LONG, || {
        metric(p1, "churnsignal_backpressure_active ") == 1.0
    });
    assert!(restoring(p1), "the restore outlasted the pause");
    let mut c = spawn_run(&cfg, p2);
    wait_checkpointed_at_end(&cfg, 2, recs.len());
    // Caught up, and both say so: each assignment began over 10,000 (ready_max_lag)
    // behind; the lag counts from what was consumed since, not from the offset the
    // group had committed when the partitions came, and a partition that moved away is
    // no longer reported by its old owner.
    wait_for("lag back to zero and both ready", LONG, || {
        [p1, p2].iter().all(|&p| {
            metric(p, "churnsignal_consumer_lag_messages{") == 0.0
                && http_get(addr(p), "/readyz").0 == 200
        })
    });
    for child in [&mut a, &mut c] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let dups = assert_alerts_equal_replay(&cfg, 2, recs.len(), true);
    eprintln!(
        "restore interrupted twice: {} events, {dups} duplicates",
        recs.len()
    );
}

#[test]
fn a_broker_restart_during_transactions_ends_in_the_same_alerts_exactly_once() {
    use churnsignal::kafka::{Service, StartOptions};
    let broker = Broker::dedicated("txn-restart");
    let mut cfg = one_topic_config(&broker.bootstrap, "txn-restart");
    cfg.kafka.processing.guarantee = Guarantee::ExactlyOnce;
    create_all(&cfg, 2);
    let spec = Spec {
        customers: 300,
        days: 200,
        seed: 47,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    produce(&broker.bootstrap, &recs);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("processing", LONG, || {
        service
            .status()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 3
    });
    broker.halt();
    std::thread::sleep(Duration::from_secs(8));
    broker.resume();
    wait_checkpointed_at_end(&cfg, 2, recs.len());
    service.stop().unwrap();
    let dups = assert_alerts_equal_replay(&cfg, 2, recs.len(), true);
    assert_eq!(dups, 0);
}

#[test]
fn a_zombie_is_fenced_by_the_next_owner_of_its_partition_and_writes_nothing_more() {
    use churnsignal::kafka::{Service, StartOptions};
    use rdkafka::producer::{BaseProducer, Producer};
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "zombie");
    cfg.kafka.processing.guarantee = Guarantee::ExactlyOnce;
    create_all(&cfg, 1);
    let t = cfg.kafka.topics.clone();
    let nps = |i: u32| {
        Rec::new(
            &t.orders,
            &format!("z{i}"),
            format!(
                r#"{{"event_id":"n{i}","customer_id":"z{i}","type":"engagement.nps","occurred_at":"2026-03-01T10:00:00Z","score":1}}"#
            ),
        )
    };
    produce(b, &[nps(0)]);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the first alert committed", LONG, || {
        checkpointed(&cfg, 0, &t.orders) == Some(1)
    });
    // The partition's next owner: the same transactional id, initialised.
    let next_owner: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("transactional.id", cfg.kafka.transactional_id(0))
        .create()
        .unwrap();
    next_owner
        .init_transactions(Duration::from_secs(30))
        .unwrap();
    produce(b, &[nps(1), nps(2)]);
    wait_for("the zombie notices", LONG, || {
        service.status().failure().is_some()
    });
    let err = service.stop().unwrap_err().to_string();
    assert!(err.contains("fenced") || err.contains("Fenced"), "{err}");
    let alerts = read_all(b, &t.alerts, true);
    let customers: Vec<&str> = alerts
        .iter()
        .map(|a| a["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        customers,
        vec!["z0"],
        "nothing of the zombie's after the fence is visible"
    );
    assert_eq!(checkpointed(&cfg, 0, &t.orders), Some(1));
}

/// Under KIP-848 the broker refuses a new member that takes the `group.instance.id`
/// of one that was killed (classic fenced the old one instead) until the killed
/// member's session expires. A restarted instance stops at once with an error (rather
/// than stay up without partitions) so that its orchestrator starts it again; once the
/// session is over it takes the partitions back.
#[test]
fn under_kip_848_a_static_member_restarted_after_a_kill_stops_until_its_id_is_released() {
    let b = shared_bootstrap();
    let mut cfg = one_topic_config(b, "static848");
    cfg.kafka.group_protocol = GroupProtocol::Consumer;
    cfg.kafka.group_instance_id = "the-one".into();
    create_all(&cfg, 2);
    let owns_both =
        |port: u16| answers(port) && metric(port, "churnsignal_assigned_partitions ") == 2.0;
    let port = free_port();
    let mut first = spawn_run(&cfg, port);
    wait_for("the first instance owns both partitions", LONG, || {
        owns_both(port)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let mut refused = 0;
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "never took the partitions back");
        let port = free_port();
        let mut next = spawn_run(&cfg, port);
        wait_for("the restart runs or stops", LONG, || {
            next.0.try_wait().unwrap().is_some() || owns_both(port)
        });
        match next.0.try_wait().unwrap() {
            Some(exit) => {
                assert!(!exit.success(), "a refused restart exits with an error");
                refused += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            None => break,
        }
    }
    assert!(
        refused > 0,
        "a restart within the killed member's session (6 s on the test broker) is refused"
    );
}

/// A restore reads the changelog to the end it had when the restore began, transactions
/// included that are still undecided then. Under `read_committed` librdkafka reports
/// the end of a partition at its last stable offset, before such a transaction; a
/// restore that stopped there would miss the state its own producer had just committed
/// (whose markers the broker writes after the commit returns) and go on from an older
/// one, announcing again what that transaction announced.
#[test]
fn a_restore_waits_for_a_transaction_still_undecided_in_the_changelog() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let b = shared_bootstrap();
    let cfg = config(b, "undecided");
    create_topics(b, &[(&cfg.kafka.topics.changelog, 1)]);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("transactional.id", unique("undecided-txn"))
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    producer.init_transactions(t).unwrap();
    let write = |keys: std::ops::Range<u32>| {
        for k in keys {
            let key = format!("cust-{k}");
            producer
                .send(
                    BaseRecord::to(&cfg.kafka.topics.changelog)
                        .key(&key)
                        .payload(b"not decoded: no partition record"),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(t).unwrap();
    };
    producer.begin_transaction().unwrap();
    write(0..3);
    producer.commit_transaction(t).unwrap();
    producer.begin_transaction().unwrap();
    write(3..8);
    // The second transaction is open: the restore has to wait for it.
    let restore_cfg = cfg.clone();
    let restore = std::thread::spawn(move || {
        churnsignal::kafka::changelog::restore(
            &restore_cfg.kafka,
            &churnsignal::config::EngineSettings::new(&restore_cfg).unwrap(),
            0,
            || true,
        )
        .expect("restored")
        .records
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !restore.is_finished(),
        "the restore ended before the transaction in its range was decided"
    );
    producer.commit_transaction(t).unwrap();
    let records = restore.join().unwrap();
    assert_eq!(records, 8, "both transactions' records are read");
}
