//! How well the default configuration does on a labelled, generated history: true
//! patterns caught versus steady customers alerted, and how the health score ranks.
//!
//! The generator's customers drift in one of the seven ways the signals detect (or not at
//! all); a holiday week makes everyone quieter for a while.

use std::collections::{BTreeMap, BTreeSet};

use churnsignal::config::EngineSettings;
use churnsignal::engine::lifecycle::Status;
use churnsignal::engine::Engine;
use churnsignal::generate::{customer_id, History, Profile, Spec};

struct Outcome {
    /// (profile, customers, caught with the expected signal, customers with any alert)
    by_profile: BTreeMap<Profile, (u32, u32, u32)>,
    /// health score of every customer at the end
    scores: BTreeMap<String, u8>,
    profiles: BTreeMap<String, Profile>,
}

fn evaluate(spec: Spec) -> Outcome {
    let history = History::new(spec);
    let profiles: BTreeMap<String, Profile> = history
        .traits()
        .iter()
        .enumerate()
        .map(|(c, t)| (customer_id(c as u32), t.profile))
        .collect();
    let mut engine = Engine::new(EngineSettings::default());
    let mut alerts = Vec::new();
    for g in history {
        engine.apply_into(&g.to_event(), &mut alerts);
    }
    alerts.extend(engine.finish());
    let mut signals: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for a in alerts.iter().filter(|a| a.status != Status::Resolved) {
        let set = signals.entry(a.customer_id.clone()).or_default();
        set.extend(a.signals.iter().map(|s| s.signal.name()));
    }
    let mut by_profile: BTreeMap<Profile, (u32, u32, u32)> = BTreeMap::new();
    for (id, p) in &profiles {
        let e = by_profile.entry(*p).or_default();
        e.0 += 1;
        if let Some(set) = signals.get(id) {
            e.2 += 1;
            if p.expected_signal().is_some_and(|s| set.contains(s)) {
                e.1 += 1;
            }
        }
    }
    let scores = engine
        .snapshot()
        .into_iter()
        .map(|r| (r.customer_id, r.health_score))
        .collect();
    Outcome {
        by_profile,
        scores,
        profiles,
    }
}

/// Probability that a random customer of `low` scores below a random one of `high`.
fn auc(scores: &BTreeMap<String, u8>, low: &[&String], high: &[&String]) -> f64 {
    let mut wins = 0.0;
    for a in low {
        for b in high {
            let (x, y) = (scores[*a], scores[*b]);
            wins += if x < y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (low.len() * high.len()) as f64
}

#[test]
fn default_configuration_catches_patterns_and_leaves_steady_customers_alone() {
    let o = evaluate(Spec {
        customers: 1_500,
        days: 200,
        seed: 7,
        holiday: Some((100, 0.3)),
        ..Spec::default()
    });
    let mut drifting = (0, 0);
    let mut quiet = (0, 0);
    for (p, (n, caught, any)) in &o.by_profile {
        eprintln!("{p:?}: {n} customers, {caught} caught, {any} with any alert");
        if p.expected_signal().is_some() {
            drifting.0 += n;
            drifting.1 += caught;
            // Since issue 15 the defaults keep steady customers of every kind quiet
            // (tests/trust): this generator's drops (a third of the orders at half the
            // basket, for customers ordering every 3 to 21 days) and its one-time
            // buyers who keep logging in are alerted less often than before.
            let bar = match p {
                Profile::ConsumptionDrop | Profile::NoSecondPurchase => 0.1,
                _ => 0.5,
            };
            assert!(
                f64::from(*caught) >= bar * f64::from(*n),
                "{p:?}: only {caught} of {n} caught"
            );
        } else {
            quiet.0 += n;
            quiet.1 += any;
        }
    }
    let recall = f64::from(drifting.1) / f64::from(drifting.0);
    let false_alarms = f64::from(quiet.1) / f64::from(quiet.0);
    eprintln!(
        "caught {:.1}% of drifting customers; alerted {:.1}% of steady ones over 200 days",
        100.0 * recall,
        100.0 * false_alarms
    );
    assert!(recall >= 0.65, "recall {recall}");
    assert!(false_alarms <= 0.03, "false alarms {false_alarms}");
}

#[test]
fn the_health_score_ranks_drifting_customers_below_steady_ones() {
    let o = evaluate(Spec {
        customers: 1_000,
        days: 200,
        seed: 11,
        ..Spec::default()
    });
    let of = |wanted: &[Profile]| -> Vec<&String> {
        o.profiles
            .iter()
            .filter(|(_, p)| wanted.contains(p))
            .map(|(id, _)| id)
            .collect()
    };
    let steady = of(&[Profile::Steady, Profile::SparseRegular]);
    // orders-only patterns: stopped buying, buying much less, never came back
    let lost = of(&[
        Profile::Inactivity,
        Profile::ConsumptionDrop,
        Profile::NoSecondPurchase,
    ]);
    let a = auc(&o.scores, &lost, &steady);
    eprintln!("AUC (lost vs steady) = {a:.3}");
    assert!(a >= 0.9, "AUC {a}");
}
