//! The engine's state records: an engine rebuilt from them continues exactly as the
//! original (the ground the changelog and restore of scale-out stand on).

use churnsignal::config::{Config, EngineSettings};
use churnsignal::engine::codec::CodecError;
use churnsignal::engine::state::Customer;
use churnsignal::engine::Engine;
use churnsignal::event::Event;
use churnsignal::generate::{History, Spec};
use proptest::prelude::*;

fn events(seed: u64) -> Vec<Event<'static>> {
    let spec = Spec {
        customers: 600,
        days: 200,
        seed,
        holiday: Some((120, 0.3)),
        ..Spec::default()
    };
    History::new(spec).map(|g| g.to_event()).collect()
}

fn json(alerts: &[churnsignal::alert::Alert]) -> Vec<String> {
    alerts.iter().map(|a| a.to_json()).collect()
}

#[test]
fn an_engine_rebuilt_from_its_state_records_continues_with_exactly_the_same_alerts() {
    let cfg = Config::default();
    let all = events(13);
    for cut in [all.len() / 5, all.len() / 2, all.len() * 4 / 5] {
        let mut original = Engine::new(EngineSettings::new(&cfg).unwrap());
        let mut before = Vec::new();
        original.apply_batch(&all[..cut], &mut before);
        let mut engine_record = Vec::new();
        original.encode_engine(&mut engine_record);
        let customers: Vec<Vec<u8>> = original.encode_customers().collect();
        let mean = customers.iter().map(Vec::len).sum::<usize>() / customers.len();
        // Version 3 writes only what is in use: about half of version 2's 420 bytes.
        assert!(mean <= 256, "{mean} bytes per customer record");
        let mut rebuilt = Engine::restore(
            EngineSettings::new(&cfg).unwrap(),
            &engine_record,
            &customers,
        )
        .unwrap();
        assert_eq!(rebuilt.customers(), original.customers());
        assert_eq!(rebuilt.stream_time(), original.stream_time());

        let (mut a, mut b) = (Vec::new(), Vec::new());
        original.apply_batch(&all[cut..], &mut a);
        rebuilt.apply_batch(&all[cut..], &mut b);
        a.extend(original.finish());
        b.extend(rebuilt.finish());
        assert!(
            a.len() > 20,
            "the rest of the history has alerts to compare"
        );
        assert_eq!(json(&a), json(&b), "cut at event {cut}");
        let snap =
            |e: &mut Engine| -> Vec<String> { e.snapshot().iter().map(|r| r.to_json()).collect() };
        assert_eq!(snap(&mut original), snap(&mut rebuilt));
        assert_eq!(original.stats(), rebuilt.stats());
    }
}

/// `tests/fixtures/state-v2.bin`: the engine record and then every customer record,
/// each behind its length (u32, little-endian), written by the build before version 3
/// from the first half of [`fixture_events`].
fn fixture_events() -> Vec<Event<'static>> {
    let spec = Spec {
        customers: 40,
        days: 90,
        seed: 31,
        ..Spec::default()
    };
    History::new(spec).map(|g| g.to_event()).collect()
}

#[test]
fn records_of_the_previous_layout_restore_the_engine_that_wrote_them() {
    let bytes = include_bytes!("fixtures/state-v2.bin");
    let mut records = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        records.push(&rest[4..4 + n]);
        rest = &rest[4 + n..];
    }
    let (engine_record, customers) = records.split_first().unwrap();
    assert_eq!(customers.len(), 40);
    assert!(
        records.iter().all(|r| r[0] == 2),
        "the fixture is version 2"
    );

    let cfg = Config::default();
    let all = fixture_events();
    let (first, second) = all.split_at(all.len() / 2);
    let mut original = Engine::new(EngineSettings::new(&cfg).unwrap());
    original.apply_batch(first, &mut Vec::new());
    let lateness = cfg.engine.lateness_ms();
    let mut rebuilt = Engine::restore(
        EngineSettings::new(&cfg).unwrap(),
        engine_record,
        customers.iter(),
    )
    .unwrap();
    // The older build's stream time followed the latest event time; this one follows the
    // latest that 3 of the last 5 events agree on, a few events behind. Both are let to
    // pass to the older one's stream time (the restored engine is there already).
    let latest = first.iter().map(|e| e.occurred_at).max().unwrap();
    let older_stream_time = churnsignal::time::Timestamp(latest.0 - lateness);
    assert_eq!(rebuilt.stream_time(), Some(older_stream_time));
    original.advance_to(older_stream_time);
    assert!(rebuilt.advance_to(older_stream_time).is_empty());
    // Version 3 counts support trouble differently (routine tickets no longer count, and
    // each bucket counts trouble by kind), so trouble points written by the older build
    // stay as they were; everything else is the same customer.
    let without_trouble = |e: &mut Engine| -> Vec<serde_json::Value> {
        e.snapshot()
            .iter()
            .map(|r| {
                let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
                let w = v["windows"].as_object_mut().unwrap();
                w.remove("recent_trouble_points");
                w["severities"]
                    .as_object_mut()
                    .unwrap()
                    .remove("support_tension");
                let o = v.as_object_mut().unwrap();
                for k in ["health_score", "risk", "signals", "recommended_play"] {
                    o.remove(k);
                }
                v
            })
            .collect()
    };
    assert_eq!(
        without_trouble(&mut rebuilt),
        without_trouble(&mut original),
        "every customer is the same but for trouble points"
    );
    // and the restored engine writes what it restored as version 3, stably
    let again: Vec<Vec<u8>> = rebuilt.encode_customers().collect();
    assert!(again
        .iter()
        .all(|r| r[0] == churnsignal::engine::codec::VERSION));
    let mut engine_again = Vec::new();
    rebuilt.encode_engine(&mut engine_again);
    let twice = Engine::restore(EngineSettings::default(), &engine_again, again.iter()).unwrap();
    assert_eq!(twice.encode_customers().collect::<Vec<_>>(), again);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    original.apply_batch(second, &mut a);
    rebuilt.apply_batch(second, &mut b);
    a.extend(original.finish());
    b.extend(rebuilt.finish());
    assert!(!a.is_empty(), "the second half has alerts to compare");
    // alerts agree for every customer whose alerts do not involve support tension
    let troubled: std::collections::BTreeSet<String> = a
        .iter()
        .chain(&b)
        .filter(|x| {
            x.signals
                .iter()
                .any(|s| s.signal.name() == "support_tension")
        })
        .map(|x| x.customer_id.clone())
        .collect();
    // (health scores weigh trouble too, and a silence deadline may be looked at on
    // another day, so what is compared is who was alerted for what, in which order)
    let calm = |v: &[churnsignal::alert::Alert]| -> Vec<(String, u32, String, Vec<&'static str>)> {
        let mut out: Vec<_> = v
            .iter()
            .filter(|x| !troubled.contains(&x.customer_id))
            .map(|x| {
                (
                    x.customer_id.clone(),
                    x.sequence,
                    format!("{:?}", x.status),
                    x.signals.iter().map(|s| s.signal.name()).collect(),
                )
            })
            .collect();
        out.sort();
        out
    };
    assert!(!calm(&a).is_empty(), "alerts without trouble to compare");
    assert_eq!(calm(&a), calm(&b));
}

#[test]
fn a_record_of_another_version_or_cut_short_is_refused_by_reason() {
    let mut e = Engine::new(EngineSettings::default());
    e.apply_batch(&events(5)[..2000], &mut Vec::new());
    let rec = e.encode_customers().next().unwrap();
    assert_eq!(rec[0], churnsignal::engine::codec::VERSION);
    let mut other = rec.clone();
    other[0] = 9;
    assert_eq!(
        Customer::decode(&other).unwrap_err(),
        CodecError::Version(9)
    );
    assert_eq!(
        Customer::decode(&rec[..rec.len() - 1]).unwrap_err(),
        CodecError::Truncated
    );
    let mut longer = rec.clone();
    longer.push(0);
    assert!(matches!(
        Customer::decode(&longer).unwrap_err(),
        CodecError::Invalid(_)
    ));
    let mut engine_record = Vec::new();
    e.encode_engine(&mut engine_record);
    let twice = [rec.clone(), rec];
    assert!(matches!(
        Engine::restore(EngineSettings::default(), &engine_record, &twice),
        Err(CodecError::Invalid(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Customer::decode(&bytes);
        let _ = Engine::restore(EngineSettings::default(), &bytes, std::iter::empty::<Vec<u8>>());
    }
}

#[test]
fn every_customer_whose_record_changes_is_reported_changed_once() {
    use std::collections::{BTreeMap, BTreeSet};
    let all = events(21);
    let mut e = Engine::new(EngineSettings::default());
    let records = |e: &Engine| -> BTreeMap<String, Vec<u8>> {
        e.encode_customers()
            .map(|r| (Customer::decode(&r).unwrap().id.to_string(), r))
            .collect()
    };
    let mut before = records(&e);
    let mut out = Vec::new();
    let mut reported_fewer_than_all = false;
    for chunk in all.chunks(all.len() / 40) {
        e.apply_batch(chunk, &mut out);
        let mut changed: Vec<String> = Vec::new();
        e.take_changed(|id, _| changed.push(id.to_owned()));
        let set: BTreeSet<&String> = changed.iter().collect();
        assert_eq!(set.len(), changed.len(), "each customer once");
        let after = records(&e);
        for (id, rec) in &after {
            if before.get(id) != Some(rec) {
                assert!(set.contains(id), "{id} changed but was not reported");
            }
        }
        reported_fewer_than_all |= set.len() < after.len();
        before = after;
    }
    assert!(reported_fewer_than_all, "quiet customers are not reported");
}

#[test]
fn restored_in_another_customer_order_the_engine_gives_the_same_alerts_and_records() {
    // A changelog hands customers back in key order, not in the order the engine met them.
    let cfg = Config::default();
    let all = events(17);
    let cut = all.len() / 2;
    let mut original = Engine::new(EngineSettings::new(&cfg).unwrap());
    original.apply_batch(&all[..cut], &mut Vec::new());
    let mut engine_record = Vec::new();
    original.encode_engine(&mut engine_record);
    let mut customers: Vec<Vec<u8>> = original.encode_customers().collect();
    customers.sort_by_key(|r| Customer::decode(r).unwrap().id.to_string());
    customers.reverse();
    let mut rebuilt = Engine::restore(
        EngineSettings::new(&cfg).unwrap(),
        &engine_record,
        &customers,
    )
    .unwrap();
    // the store's basket spread, learnt before the cut, comes back with the engine
    assert!(original.basket_spread().is_some());
    assert_eq!(original.basket_spread(), rebuilt.basket_spread());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    original.apply_batch(&all[cut..], &mut a);
    rebuilt.apply_batch(&all[cut..], &mut b);
    a.extend(original.finish());
    b.extend(rebuilt.finish());
    let key = |v: &[churnsignal::alert::Alert]| {
        let mut k: Vec<String> = v.iter().map(|a| a.to_json()).collect();
        k.sort();
        k
    };
    assert!(a.len() > 20);
    assert_eq!(key(&a), key(&b));
    let snap =
        |e: &mut Engine| -> Vec<String> { e.snapshot().iter().map(|r| r.to_json()).collect() };
    assert_eq!(snap(&mut original), snap(&mut rebuilt));
}

mod eviction {
    use super::*;
    use churnsignal::time::{Timestamp, DAY_MS};
    use std::borrow::Cow;

    const DAY0: i64 = 1_767_571_200_000;

    fn order(id: &str, customer: &str, day: i64) -> Event<'static> {
        Event {
            event_id: Cow::Owned(id.to_owned()),
            customer_id: Cow::Owned(customer.to_owned()),
            occurred_at: Timestamp(DAY0 + day * DAY_MS),
            kind: churnsignal::event::EventKind::OrderPlaced {
                order_id: Cow::Owned(id.to_owned()),
                amount: 10.0,
                discount_pct: 0.0,
            },
        }
    }

    fn cfg(days: u32, cap: u64) -> Config {
        let mut c = Config::default();
        c.engine.evict_after_days = days;
        c.engine.max_customers = cap;
        c
    }

    fn evicted(e: &mut Engine) -> Vec<String> {
        let mut v = Vec::new();
        e.take_evicted(|id| v.push(id.to_owned()));
        v
    }

    #[test]
    fn a_customer_silent_past_the_horizon_is_forgotten_and_comes_back_fresh() {
        let mut e = Engine::new(EngineSettings::new(&cfg(112, 0)).unwrap());
        let mut out = Vec::new();
        // "gone" orders twice, then stops; "steady" orders every week for 300 days
        e.apply_batch(&[order("g1", "gone", 0), order("g2", "gone", 7)], &mut out);
        for d in (0..300).step_by(7) {
            e.apply_batch(&[order(&format!("s{d}"), "steady", d)], &mut out);
        }
        assert_eq!(evicted(&mut e), vec!["gone".to_owned()]);
        assert_eq!(e.customers(), 1);
        assert_eq!(e.stats().evicted_idle, 1);
        assert!(e.health_record("gone").is_none());
        let created = e.stats().customers_created;
        e.apply_batch(&[order("g3", "gone", 301)], &mut out);
        assert_eq!(e.stats().customers_created, created + 1, "counted as new");
        let rec = e.health_record("gone").unwrap();
        assert_eq!(rec.windows.orders_total, 1, "starts afresh");
        // its changelog record comes after the tombstone
        let mut changed = Vec::new();
        e.take_changed(|id, _| changed.push(id.to_owned()));
        assert!(changed.contains(&"gone".to_owned()));
    }

    #[test]
    fn changed_customers_taken_a_few_at_a_time_are_each_reported_and_again_after_a_new_change() {
        let mut e = Engine::new(EngineSettings::default());
        let mut out = Vec::new();
        e.apply_batch(
            &[
                order("a1", "a", 0),
                order("b1", "b", 1),
                order("c1", "c", 2),
            ],
            &mut out,
        );
        assert_eq!(e.changed_count(), 3);
        let mut taken = Vec::new();
        e.take_changed_up_to(2, |id, _| taken.push(id.to_owned()));
        assert_eq!(taken, ["a", "b"], "the first to change first");
        assert_eq!(e.changed_count(), 1);
        // "a" changes after its record was taken: listed again, after "c"; "c" changes
        // again while it is still listed: listed once.
        e.apply_batch(&[order("a2", "a", 3), order("c2", "c", 4)], &mut out);
        let mut rest = Vec::new();
        e.take_changed(|id, _| rest.push(id.to_owned()));
        assert_eq!(rest, ["c", "a"]);
        assert_eq!(e.changed_count(), 0);
        let mut none = Vec::new();
        e.take_changed_up_to(5, |id, _| none.push(id.to_owned()));
        assert!(none.is_empty());
    }

    #[test]
    fn at_the_cap_the_least_recently_active_customer_goes_first() {
        let mut e = Engine::new(EngineSettings::new(&cfg(0, 3)).unwrap());
        let mut out = Vec::new();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            e.apply_batch(&[order(&format!("x{i}"), c, i as i64)], &mut out);
        }
        // "a" is active again: "b" is now the least recent
        e.apply_batch(&[order("x3", "a", 3)], &mut out);
        evicted(&mut e);
        e.apply_batch(&[order("x4", "d", 4)], &mut out);
        assert_eq!(evicted(&mut e), vec!["b".to_owned()]);
        assert_eq!(e.customers(), 3);
        assert_eq!(e.stats().evicted_cap, 1);
        for c in ["a", "c", "d"] {
            assert!(e.health_record(c).is_some(), "{c} kept");
        }
    }

    #[test]
    fn eviction_is_the_same_in_an_engine_restored_midway() {
        let c = cfg(112, 0);
        let all: Vec<Event<'static>> = (0..400)
            .map(|i| {
                order(
                    &format!("e{i}"),
                    &format!("c{}", i % 50 + (i / 100) * 50),
                    i as i64,
                )
            })
            .collect();
        let mut original = Engine::new(EngineSettings::new(&c).unwrap());
        original.apply_batch(&all[..200], &mut Vec::new());
        let mut rec = Vec::new();
        original.encode_engine(&mut rec);
        let customers: Vec<Vec<u8>> = original.encode_customers().collect();
        let mut rebuilt =
            Engine::restore(EngineSettings::new(&c).unwrap(), &rec, &customers).unwrap();
        evicted(&mut original);
        original.apply_batch(&all[200..], &mut Vec::new());
        rebuilt.apply_batch(&all[200..], &mut Vec::new());
        let (mut a, mut b) = (evicted(&mut original), evicted(&mut rebuilt));
        a.sort();
        b.sort();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_eq!(original.customers(), rebuilt.customers());
    }
}

#[test]
fn customers_at_risk_are_those_whose_episode_is_open_by_the_highest_risk_announced() {
    use churnsignal::engine::lifecycle::Status;
    use std::collections::HashMap;
    let mut engine = Engine::new(EngineSettings::default());
    let mut alerts = Vec::new();
    for e in events(5) {
        alerts.extend(engine.apply(&e));
    }
    let level = |r: &str| {
        ["low", "medium", "high", "critical"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let mut open: HashMap<&str, usize> = HashMap::new();
    // announced as a key account during the open episode
    let mut key: HashMap<&str, bool> = HashMap::new();
    for a in &alerts {
        let r = level(a.risk.as_str());
        match a.status {
            Status::Open => {
                open.insert(&a.customer_id, r);
                key.insert(&a.customer_id, a.value_tier == "key");
            }
            Status::Escalated => {
                let cur = open
                    .get_mut(a.customer_id.as_str())
                    .expect("escalated within an episode");
                *cur = (*cur).max(r);
                *key.get_mut(a.customer_id.as_str()).unwrap() |= a.value_tier == "key";
            }
            Status::Resolved => {
                open.remove(a.customer_id.as_str());
                key.remove(a.customer_id.as_str());
            }
        }
    }
    let mut want = [0u64; 4];
    for r in open.values() {
        want[*r] += 1;
    }
    let got = engine.at_risk();
    assert_eq!(got.map(|tiers| tiers.iter().sum::<u64>()), want);
    assert!(
        want.iter().sum::<u64>() > 10,
        "the history leaves customers at risk: {want:?}"
    );
    assert!(
        got.iter().any(|tiers| tiers[2] > 0),
        "key accounts among them: {got:?}"
    );
    // A customer alerted as a key account stays one while the episode is open, even if
    // its revenue has fallen out of the key tier since.
    let announced_key = key.values().filter(|k| **k).count() as u64;
    let counted_key: u64 = got.iter().map(|tiers| tiers[2]).sum();
    assert!(
        counted_key >= announced_key,
        "{counted_key} counted as key, {announced_key} alerted as key"
    );
}

/// The live service merges three topics into one partition engine in the consumer's
/// order, capping the watermark at the slowest topic: an engine rebuilt midway, given
/// the same calls, continues with the same alerts (what a journal's replay rests on).
#[test]
fn rebuilt_midway_through_three_interleaved_topics_the_engine_gives_the_same_alerts() {
    use churnsignal::time::Timestamp;
    let cfg = Config::default();
    let lateness = cfg.engine.lateness_ms();
    let all = events(37);
    // Per family, in time order; then taken in runs of 1..1500 from a pseudo-random
    // family, as a consumer hands over fetches.
    let mut queues: Vec<std::collections::VecDeque<Event<'static>>> = vec![Default::default(); 3];
    for e in all {
        queues[e.kind.family() as usize].push_back(e);
    }
    let mut order: Vec<(usize, Event<'static>)> = Vec::new();
    let mut x = 0x9e3779b97f4a7c15u64;
    while queues.iter().any(|q| !q.is_empty()) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = ((x >> 33) % 3) as usize;
        let n = 1 + ((x >> 40) % 1500) as usize;
        for _ in 0..n {
            let Some(e) = queues[t].pop_front() else {
                break;
            };
            order.push((t, e));
        }
    }
    let step = |e: &mut Engine,
                max: &mut [i64; 3],
                (t, ev): &(usize, Event<'static>),
                out: &mut Vec<churnsignal::alert::Alert>| {
        max[*t] = max[*t].max(ev.occurred_at.0);
        let limit = max.iter().filter(|m| **m != i64::MIN).min().copied();
        e.set_watermark_limit(limit.map(|m| Timestamp(m - lateness)));
        e.apply_into(ev, out);
    };
    for cut in [order.len() / 5, order.len() / 2, order.len() * 4 / 5] {
        let mut original = Engine::new(EngineSettings::new(&cfg).unwrap());
        let mut max = [i64::MIN; 3];
        let mut before = Vec::new();
        for m in &order[..cut] {
            step(&mut original, &mut max, m, &mut before);
        }
        let mut engine_record = Vec::new();
        original.encode_engine(&mut engine_record);
        let customers: Vec<Vec<u8>> = original.encode_customers().collect();
        let mut rebuilt = Engine::restore(
            EngineSettings::new(&cfg).unwrap(),
            &engine_record,
            &customers,
        )
        .unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut max_b = max;
        for m in &order[cut..] {
            step(&mut original, &mut max, m, &mut a);
            step(&mut rebuilt, &mut max_b, m, &mut b);
        }
        assert!(a.len() > 20);
        assert_eq!(json(&a), json(&b), "cut at {cut}");
    }
}
