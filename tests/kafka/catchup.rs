//! Live equals replay when the three input topics catch up unevenly: a backlog produced
//! one topic after the other, a stall during which the topics fill at different rates,
//! and a rebalance while the backlog is processed. Each partition engine must take its
//! inputs' messages in event-time order (stream-time synchronization), whatever order
//! the consumer fetches them in.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use churnsignal::config::Config;
use churnsignal::generate::Spec;
use churnsignal::kafka::{Service, StartOptions};
use churnsignal::time::{Timestamp, DAY_MS};

use super::support::*;

const LONG: Duration = Duration::from_secs(300);
const PARTITIONS: i32 = 3;

/// Three input topics of three partitions. The histories lie in the past (2026), so
/// the wall clock must not stand in for event time while a test runs: the idle timeout
/// is longer than any test.
fn three_topics(test: &str) -> Config {
    let mut cfg = config(shared_bootstrap(), test);
    cfg.kafka.idle_timeout_secs = 3600;
    create_all(&cfg, PARTITIONS);
    cfg
}

/// At least 100,000 events over at least 200 days.
fn big_history(cfg: &Config, seed: u64) -> Vec<Rec> {
    let spec = Spec {
        customers: 420,
        days: 210,
        seed,
        ..Spec::default()
    };
    let (recs, _) = history(cfg, spec);
    assert!(recs.len() >= 100_000, "{} events", recs.len());
    recs
}

/// Produces the records one topic after the other, in the given order of topics.
fn produce_topic_by_topic(cfg: &Config, recs: &[Rec], order: &[String]) {
    for t in order {
        let of_topic: Vec<Rec> = recs.iter().filter(|r| &r.topic == t).cloned().collect();
        produce(&cfg.kafka.brokers, &of_topic);
    }
}

/// A slow consumer: a fetch returns at most 16 KiB per partition (produce the backlog in
/// batches of that size: a fetch returns whole batches), and the broker holds each one
/// for 100 ms, waiting for more than that can be (fetch.min.bytes): about 100 events
/// per partition every 100 ms.
fn slow_consumer(cfg: &mut Config) {
    let t = |v: &str| toml::Value::String(v.into());
    let props = &mut cfg.kafka.consumer_properties.0;
    props.insert("max.partition.fetch.bytes".into(), t("16384"));
    props.insert("fetch.min.bytes".into(), t("10000000"));
    props.insert("fetch.wait.max.ms".into(), t("100"));
}

fn wait_processed(service: &Service, n: u64) {
    wait_for("every event processed", LONG, || {
        service.status().events.load(Relaxed) >= n
    });
}

fn backlog(test: &str, reverse: bool) {
    let cfg = three_topics(test);
    let recs = big_history(&cfg, 53);
    let mut order = input_names(&cfg).to_vec();
    if reverse {
        order.reverse();
    }
    produce_topic_by_topic(&cfg, &recs, &order);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_processed(&service, recs.len() as u64);
    let dups = assert_live_equals_replay(&cfg, PARTITIONS, recs.len());
    let report = service.stop().unwrap();
    assert_eq!(report.events, recs.len() as u64);
    assert_eq!(dups, 0, "one run, stopped cleanly: no alert twice");
}

#[test]
fn a_backlog_produced_topic_after_topic_alerts_exactly_as_replay_does() {
    backlog("backlog", false);
}

#[test]
fn a_backlog_produced_in_the_reverse_order_of_topics_alerts_exactly_as_replay_does() {
    backlog("backlog-rev", true);
}

/// The service catches up, stops; meanwhile producers go on writing the three topics,
/// each at its own pace; it starts again and catches up on what piled up.
#[test]
fn after_a_stall_in_which_the_topics_filled_at_different_rates_live_equals_replay() {
    let cfg = three_topics("stall");
    let recs = big_history(&cfg, 59);
    let split = Timestamp(Spec::default().start.0 + 90 * DAY_MS);
    let time_of = |r: &Rec| {
        churnsignal::decode::decode_json(&r.value, &Default::default())
            .unwrap()
            .occurred_at
    };
    let (before, after): (Vec<Rec>, Vec<Rec>) =
        recs.iter().cloned().partition(|r| time_of(r) < split);
    produce_topic_by_topic(&cfg, &before, &input_names(&cfg));
    let first = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_processed(&first, before.len() as u64);
    first.stop().unwrap();
    // Stopped: the topics fill, each at its own pace (orders at once, tickets in 20
    // slices, engagement in 200), from three producers at the same time.
    std::thread::scope(|s| {
        for (topic, (slices, pause_ms)) in
            input_names(&cfg)
                .into_iter()
                .zip([(1, 0), (20, 25), (200, 2)])
        {
            let of_topic: Vec<Rec> = after.iter().filter(|r| r.topic == topic).cloned().collect();
            let b = cfg.kafka.brokers.clone();
            s.spawn(move || {
                let per = of_topic.len().div_ceil(slices).max(1);
                for chunk in of_topic.chunks(per) {
                    produce(&b, chunk);
                    std::thread::sleep(Duration::from_millis(pause_ms));
                }
            });
        }
    });
    let second = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_processed(&second, after.len() as u64);
    let dups = assert_live_equals_replay(&cfg, PARTITIONS, recs.len());
    second.stop().unwrap();
    assert_eq!(dups, 0, "stopped cleanly: nothing processed twice");
}

/// At-least-once: a second instance joins while the first works through a backlog,
/// and leaves again; partitions move with their state (checkpointed on revocation,
/// restored by the next owner) and their inputs are read on from the committed
/// offsets. The alerts, repeats removed, are replay's.
#[test]
fn a_second_instance_joining_and_leaving_during_catch_up_changes_no_alert() {
    let mut cfg = three_topics("catchup-rebalance");
    cfg.kafka.commit_interval_ms = 200;
    // So that the group changes while the backlog is processed.
    slow_consumer(&mut cfg);
    let recs = big_history(&cfg, 61);
    for t in input_names(&cfg) {
        let of_topic: Vec<Rec> = recs.iter().filter(|r| r.topic == t).cloned().collect();
        produce_in_batches_of(&cfg.kafka.brokers, &of_topic, 16_384);
    }
    let n = recs.len() as u64;
    let a = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("a is working through the backlog", LONG, || {
        a.status().events.load(Relaxed) > n / 10
    });
    let b = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("both own partitions", LONG, || {
        a.status().assigned.load(Relaxed) > 0 && b.status().assigned.load(Relaxed) > 0
    });
    let during = a.status().events.load(Relaxed) + b.status().events.load(Relaxed);
    wait_for("b processed some of the backlog", LONG, || {
        b.status().events.load(Relaxed) > 5_000
    });
    let b_report = b.stop().unwrap();
    wait_for("a owns everything again", LONG, || {
        a.status().assigned.load(Relaxed) == 3 * PARTITIONS as usize
    });
    eprintln!(
        "catchup-rebalance: {n} events; {during} processed when b had joined, b processed {}",
        b_report.events
    );
    assert!(during < n, "b joined while the backlog was processed");
    wait_for("every event checkpointed", LONG, || {
        input_names(&cfg).iter().all(|t| {
            (0..PARTITIONS)
                .map(|p| checkpointed(&cfg, p, t).unwrap_or(0))
                .sum::<i64>() as usize
                == recs.iter().filter(|r| &r.topic == t).count()
        })
    });
    let dups = assert_live_equals_replay(&cfg, PARTITIONS, recs.len());
    a.stop().unwrap();
    eprintln!("catchup-rebalance: {dups} repeated alerts");
}

/// `churnsignal_consumer_lag_messages` of each input partition, as the instance serving
/// `addr` reports it.
fn lag_gauges(addr: std::net::SocketAddr) -> std::collections::BTreeMap<(String, i32), f64> {
    gauges(addr, "churnsignal_consumer_lag_messages")
}

/// A gauge labelled by topic and partition, from `/metrics`.
fn gauges(
    addr: std::net::SocketAddr,
    name: &str,
) -> std::collections::BTreeMap<(String, i32), f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let topic = l.split("topic=\"").nth(1)?.split('"').next()?.to_owned();
            let p = l
                .split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            Some(((topic, p), l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// A service of `name`'s three topics that owns every partition (the only member yet).
fn sole_owner(name: &str) -> (Config, Service) {
    let cfg = three_topics(name);
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("the service owns every partition", LONG, || {
        service.status().assigned.load(Relaxed) == 3 * PARTITIONS as usize
    });
    (cfg, service)
}

/// Another member of `cfg`'s group on its input topics, with the range assignor and
/// `extra` properties; subscribed, it joins at its first polls.
fn other_member(cfg: &Config, extra: &[(&str, &str)]) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let consumer: rdkafka::consumer::BaseConsumer = c.create().unwrap();
    let names = input_names(cfg);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&names).unwrap();
    consumer
}

/// Another member of the group owns partitions and consumes nothing (it keeps them
/// paused): their backlog shows in this instance's lag gauge, counted from the group's
/// committed offsets, next to its own partitions, which it consumes to 0; and their lag
/// in seconds grows with the wall clock while ours stays 0.
#[test]
fn the_lag_gauge_shows_the_backlog_of_partitions_a_stalled_member_holds() {
    use rdkafka::consumer::Consumer;
    let (cfg, service) = sole_owner("lag-unowned");
    let b = cfg.kafka.brokers.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stalled = {
        let stop = stop.clone();
        let c = other_member(&cfg, &[]);
        std::thread::spawn(move || {
            // Takes part in the group's rebalances, consumes nothing.
            while !stop.load(Relaxed) {
                let _ = c.poll(Duration::from_millis(50));
                if let Ok(a) = c.assignment() {
                    let _ = c.pause(&a);
                }
            }
        })
    };
    wait_for("the stalled member holds partitions", LONG, || {
        let n = service.status().assigned.load(Relaxed);
        n > 0 && n < 3 * PARTITIONS as usize
    });
    let spec = Spec {
        customers: 60,
        days: 30,
        seed: 67,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    produce(&b, &recs);
    let addr = service.http_addr().unwrap();
    let per_partition = |topic: &str, p: i32| count_in(&b, topic, p) as f64;
    wait_for("lag shown for every partition, ours at 0", LONG, || {
        let gauges = lag_gauges(addr);
        let mut ours = 0;
        let mut theirs = 0;
        let all = input_names(&cfg).iter().all(|t| {
            (0..PARTITIONS).all(|p| {
                let Some(lag) = gauges.get(&(t.clone(), p)) else {
                    return false;
                };
                if *lag == 0.0 {
                    ours += 1;
                    true
                } else {
                    theirs += 1;
                    *lag == per_partition(t, p)
                }
            })
        });
        all && ours > 0 && theirs > 0
    });
    // Read together: a partition with messages waiting has an age that grows with the
    // wall clock, one without has none (whichever member holds it by then). Only this
    // test's topics: the recorder is the process's, shared with the other tests' services.
    let ours = input_names(&cfg);
    wait_for("the stalled partitions' lag in seconds grows", LONG, || {
        let mine = |m: std::collections::BTreeMap<(String, i32), f64>| {
            m.into_iter()
                .filter(|((t, _), _)| ours.contains(t))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let messages = mine(lag_gauges(addr));
        let seconds = mine(gauges(addr, "churnsignal_consumer_lag_seconds"));
        let waiting = messages.values().filter(|m| **m > 0.0).count();
        messages.len() == 3 * PARTITIONS as usize
            && seconds.len() == messages.len()
            && waiting > 0
            && messages.iter().all(|(k, m)| {
                let s = seconds[k];
                if *m > 0.0 {
                    s >= 3.0
                } else {
                    s == 0.0
                }
            })
    });
    stop.store(true, Relaxed);
    stalled.join().unwrap();
    service.stop().unwrap();
}

/// A static member of the group (`group.instance.id`) takes its share of the
/// partitions and goes away without leaving the group, as a crashed pod with a stable
/// name does: until its session times out, nobody holds its partitions. Their backlog
/// shows in this instance's lag gauge (from the group's committed offsets, here none:
/// the log start) while this instance holds the others and consumes them to 0.
#[test]
fn the_lag_gauge_shows_the_backlog_of_partitions_no_member_holds() {
    use rdkafka::consumer::Consumer;
    let (cfg, service) = sole_owner("lag-nobody");
    let b = cfg.kafka.brokers.clone();
    {
        let c = other_member(
            &cfg,
            &[
                ("group.instance.id", "lag-nobody-static-member"),
                // Long enough for the test to finish before the group takes the
                // partitions back.
                ("session.timeout.ms", "120000"),
            ],
        );
        wait_for("the static member holds partitions", LONG, || {
            let _ = c.poll(Duration::from_millis(50));
            let _ = c.assignment().map(|a| {
                let _ = c.pause(&a);
            });
            let n = service.status().assigned.load(Relaxed);
            n > 0 && n < 3 * PARTITIONS as usize
        });
        // Dropped: a static member closes without a LeaveGroup.
    }
    let held = service.status().assigned.load(Relaxed);
    let spec = Spec {
        customers: 60,
        days: 30,
        seed: 68,
        ..Spec::default()
    };
    let (recs, _) = history(&cfg, spec);
    produce(&b, &recs);
    let addr = service.http_addr().unwrap();
    let ours = input_names(&cfg);
    wait_for(
        "the lag of the partitions nobody holds, ours at 0",
        LONG,
        || {
            let gauges = lag_gauges(addr);
            let mut at_zero = 0;
            let mut waiting = 0;
            let all = ours.iter().all(|t| {
                (0..PARTITIONS).all(|p| {
                    let Some(lag) = gauges.get(&(t.clone(), p)) else {
                        return false;
                    };
                    let n = count_in(&b, t, p) as f64;
                    if *lag == 0.0 {
                        at_zero += 1;
                    } else {
                        waiting += 1;
                    }
                    *lag == 0.0 || *lag == n
                })
            });
            all && at_zero == held && waiting == 3 * PARTITIONS as usize - held
        },
    );
    assert_eq!(
        service.status().assigned.load(Relaxed),
        held,
        "the partitions were still nobody's when their lag was read"
    );
    service.stop().unwrap();
}

/// Messages in one partition of a topic.
fn count_in(bootstrap: &str, topic: &str, p: i32) -> i64 {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let (lo, hi) = c
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .unwrap();
    hi - lo
}

/// An input topic is deleted while the service works through a backlog of it: the
/// other topics' events, held back while it had unconsumed messages, go on.
#[test]
fn an_input_topic_deleted_during_catch_up_does_not_stop_the_others() {
    let mut cfg = three_topics("deleted-input");
    slow_consumer(&mut cfg);
    let b = cfg.kafka.brokers.clone();
    let t = input_names(&cfg);
    let recs = big_history(&cfg, 71);
    for topic in &t {
        let of_topic: Vec<Rec> = recs.iter().filter(|r| &r.topic == topic).cloned().collect();
        produce_in_batches_of(&b, &of_topic, 16_384);
    }
    let orders = recs.iter().filter(|r| r.topic == t[0]).count() as i64;
    let service = Service::start(cfg.clone(), StartOptions::default()).unwrap();
    wait_for("catching up", LONG, || {
        service.status().events.load(Relaxed) > 5_000
    });
    let admin = Admin::new(&b);
    admin
        .run(
            admin
                .client
                .delete_topics(&[&t[2]], &rdkafka::admin::AdminOptions::new()),
        )
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    let deleted = std::time::Instant::now();
    let consumed_before = service.status().events.load(Relaxed);
    // How long the orders' checkpointed offsets stood still after the deletion: the
    // deleted topic's backlog held the others back until the service learnt it was gone.
    let (mut last, mut seen, mut held) = (deleted, -1, Duration::ZERO);
    wait_for("every order processed and checkpointed", LONG, || {
        let now = std::time::Instant::now();
        let done: i64 = (0..PARTITIONS)
            .map(|p| checkpointed(&cfg, p, &t[0]).unwrap_or(0))
            .sum();
        if done != seen {
            (seen, last) = (done, now);
        }
        held = held.max(now - last);
        done == orders
    });
    eprintln!(
        "deleted-input: {} events consumed when the topic went; every order checkpointed {:?} later; checkpointed orders stood still for at most {:?}",
        consumed_before,
        deleted.elapsed(),
        held
    );
    // librdkafka's 30 s grace for topics it cannot see (topic.metadata.propagation.max.ms)
    // once held everything that long, and a commit carrying the deleted topic's offset
    // was retried as long: the service now learns of the deletion within about a second
    // (plus a rewind of the partitions whose commit was given up).
    assert!(
        held < Duration::from_secs(12),
        "the deleted topic held the others back for {held:?}"
    );
    service.stop().unwrap();
}
