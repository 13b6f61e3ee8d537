//! The engine's state records: an engine rebuilt from them continues exactly as the
//! original (the ground the changelog and restore of scale-out stand on).

use churnsignal::config::Config;
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
        let mut original = Engine::new(cfg.clone());
        let mut before = Vec::new();
        original.apply_batch(&all[..cut], &mut before);
        let mut engine_record = Vec::new();
        original.encode_engine(&mut engine_record);
        let customers: Vec<Vec<u8>> = original.encode_customers().collect();
        let mean = customers.iter().map(Vec::len).sum::<usize>() / customers.len();
        assert!(mean <= 512, "{mean} bytes per customer record");
        let mut rebuilt = Engine::restore(cfg.clone(), &engine_record, &customers).unwrap();
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

#[test]
fn a_record_of_another_version_or_cut_short_is_refused_by_reason() {
    let mut e = Engine::new(Config::default());
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
        Engine::restore(Config::default(), &engine_record, &twice),
        Err(CodecError::Invalid(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Customer::decode(&bytes);
        let _ = Engine::restore(Config::default(), &bytes, std::iter::empty::<Vec<u8>>());
    }
}

#[test]
fn every_customer_whose_record_changes_is_reported_changed_once() {
    use std::collections::{BTreeMap, BTreeSet};
    let all = events(21);
    let mut e = Engine::new(Config::default());
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
