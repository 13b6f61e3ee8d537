//! Properties of the engine over random inputs.

use std::borrow::Cow;

use proptest::prelude::*;

use churnsignal::config::{Config, EngineSettings};
use churnsignal::engine::window::{bucket_of, Delta, Layout, Ring, WindowView, RING};
use churnsignal::engine::Engine;
use churnsignal::event::{Category, Event, EventKind, Priority};
use churnsignal::time::{Timestamp, DAY_MS};

const T0: i64 = 1_767_571_200_000;

/// Cases per property: `PROPTEST_CASES` when set (for long runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const WEEK: i64 = 7 * DAY_MS;

// ---------------------------------------------------------------- windows

#[derive(Debug, Clone)]
struct Activity {
    minute: i64,
    value: u16,
    orders: u16,
    engagement: u16,
}

fn activity() -> impl Strategy<Value = Activity> {
    (0i64..200 * 1440, 0u16..2000, 0u16..3, 0u16..5).prop_map(
        |(minute, value, orders, engagement)| Activity {
            minute,
            value,
            orders,
            engagement,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    /// Whatever the order events arrive in, the recent window and the baseline hold
    /// exactly the sums of the events whose bucket they cover and the ring still holds.
    #[test]
    fn window_totals_equal_a_naive_recomputation(
        events in prop::collection::vec(activity(), 1..120),
        now_minute in 0i64..260 * 1440,
        recent in 1u32..8,
    ) {
        let baseline = RING as u32 - recent;
        let mut ring = Ring::default();
        let t = |m: i64| Timestamp(T0 + m * 60_000);
        for e in &events {
            ring.add(t(e.minute), WEEK, &Delta {
                value: f32::from(e.value),
                orders: e.orders,
                engagement: e.engagement,
                ..Default::default()
            });
        }
        let first_seen = events.iter().map(|e| t(e.minute)).min().unwrap();
        let layout = Layout::at(t(now_minute), WEEK, recent, baseline);
        let view = WindowView::read(&ring, layout, first_seen);

        let newest = events.iter().map(|e| bucket_of(t(e.minute), WEEK)).max().unwrap();
        let kept = |b: i32| b > newest - RING as i32;
        let naive = |from: i32, to: i32| {
            let mut sums = (0f64, 0u32, 0u32);
            for e in &events {
                let b = bucket_of(t(e.minute), WEEK);
                if b >= from && b <= to && kept(b) {
                    sums.0 += f64::from(e.value);
                    sums.1 += u32::from(e.orders);
                    sums.2 += u32::from(e.engagement);
                }
            }
            sums
        };
        let r = naive(layout.recent_from, layout.current);
        let b = naive(layout.baseline_from, layout.recent_from - 1);
        prop_assert_eq!((view.recent.value, view.recent.orders, view.recent.engagement), r);
        prop_assert_eq!((view.baseline.value, view.baseline.orders, view.baseline.engagement), b);
    }
}

// ---------------------------------------------------------------- whole engine

#[derive(Debug, Clone)]
struct Spec {
    customer: u8,
    minute: i64,
    kind: u8,
    amount: u16,
    ticket: u8,
    score: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        0i64..150 * 1440,
        0u8..10,
        1u16..1000,
        0u8..3,
        0u8..11,
    )
        .prop_map(|(customer, minute, kind, amount, ticket, score)| Spec {
            customer,
            minute,
            kind,
            amount,
            ticket,
            score,
        })
}

fn event(i: usize, s: &Spec) -> Event<'static> {
    let ticket_id = Cow::Owned(format!("t{}-{}", s.customer, s.ticket));
    let kind = match s.kind {
        // orders are the most common event; integer amounts keep f32 sums exact
        0..=3 => EventKind::OrderPlaced {
            order_id: Cow::Owned(format!("o{i}")),
            amount: f64::from(s.amount),
            discount_pct: 0.0,
        },
        4 | 5 => EventKind::Engagement {
            kind: Cow::Borrowed("login"),
        },
        6 => EventKind::TicketOpened {
            ticket_id,
            priority: if s.amount % 2 == 0 {
                Priority::Urgent
            } else {
                Priority::Normal
            },
            category: if s.amount % 3 == 0 {
                Category::DiscountRequest
            } else {
                Category::Technical
            },
        },
        7 => EventKind::TicketEscalated {
            ticket_id,
            priority: None,
        },
        8 => EventKind::TicketResolved {
            ticket_id,
            csat: Some(1 + s.score % 5),
        },
        _ => EventKind::Nps { score: s.score },
    };
    Event {
        event_id: Cow::Owned(format!("e{i}")),
        customer_id: Cow::Owned(format!("c{}", s.customer)),
        occurred_at: Timestamp(T0 + s.minute * 60_000),
        kind,
    }
}

/// Events in time order (ties by generation order), ids unique.
fn history(specs: &[Spec]) -> Vec<Event<'static>> {
    let mut v: Vec<Event<'static>> = specs.iter().enumerate().map(|(i, s)| event(i, s)).collect();
    v.sort_by_key(|e| e.occurred_at);
    v
}

fn run(events: &[Event<'_>]) -> (Vec<String>, Vec<String>) {
    let mut engine = Engine::new(EngineSettings::default());
    let mut alerts = Vec::new();
    for e in events {
        engine.apply_into(e, &mut alerts);
    }
    alerts.extend(engine.finish());
    let snapshot = engine.snapshot().iter().map(|r| r.to_json()).collect();
    (alerts.iter().map(|a| a.to_json()).collect(), snapshot)
}

/// The parts of a health record that depend only on the customer's state, not on the
/// path that led there (an episode that opened earlier has another id, and hysteresis
/// holds signals according to history).
fn state_of(events: &[Event<'_>]) -> Vec<String> {
    let mut engine = Engine::new(EngineSettings::default());
    let mut alerts = Vec::new();
    for e in events {
        engine.apply_into(e, &mut alerts);
    }
    engine.finish();
    engine
        .snapshot()
        .into_iter()
        .map(|r| {
            format!(
                "{} {} {:?} {} {} {}",
                r.customer_id,
                r.health_score,
                r.risk,
                r.value_tier,
                r.as_of,
                serde_json::to_string(&r.windows).unwrap()
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn the_same_input_always_gives_the_same_alerts(specs in prop::collection::vec(spec(), 1..300)) {
        let events = history(&specs);
        prop_assert_eq!(run(&events), run(&events));
    }

    /// Re-sent events (same id) right after the original, or a few events later for the
    /// same customer, change neither alerts nor records.
    #[test]
    fn duplicates_change_nothing(
        specs in prop::collection::vec(spec(), 1..300),
        dups in prop::collection::vec((any::<prop::sample::Index>(), 0usize..4), 1..40),
    ) {
        let events = history(&specs);
        let mut with_dups: Vec<Event<'static>> = events.clone();
        for (at, later) in dups {
            let i = at.index(events.len());
            let pos = with_dups.iter().position(|e| e.event_id == events[i].event_id).unwrap();
            // the copy arrives after up to `later` further events (of any customer, so
            // possibly later in time: the copy may even count as late)
            let p = (pos + 1 + later).min(with_dups.len());
            with_dups.insert(p, events[i].clone());
        }
        prop_assert_eq!(run(&events), run(&with_dups));
    }

    /// Delivering events out of order, each delayed by less than the allowed lateness,
    /// leaves the same final health records.
    #[test]
    fn permutations_within_the_allowed_lateness_leave_the_same_final_records(
        specs in prop::collection::vec(spec(), 1..300),
        delays in prop::collection::vec(0i64..3_600_000, 300),
    ) {
        let events = history(&specs);
        let lateness = Config::default().engine.allowed_lateness_secs as i64 * 1000;
        prop_assert!(delays.iter().all(|d| *d < lateness));
        let mut shuffled: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.occurred_at.0 + delays[i], i))
            .collect();
        shuffled.sort();
        let permuted: Vec<Event<'static>> = shuffled.iter().map(|(_, i)| events[*i].clone()).collect();
        prop_assert_eq!(state_of(&events), state_of(&permuted));
    }
}

// ---------------------------------------------------------------- hostile input

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    /// No byte string makes decoding panic: it is an event or a reason, and the
    /// reason's message stays short (it goes into a dead-letter header, never the
    /// payload again).
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let limits = churnsignal::decode::Limits::default();
        for result in [
            churnsignal::decode::decode_json(&bytes, &limits).map(|e| e.into_owned()),
            churnsignal::decode::decode_protobuf(&bytes, &limits),
        ] {
            if let Err(e) = result {
                prop_assert!(e.message.len() <= 400, "{} bytes: {}", e.message.len(), e.message);
            }
        }
    }

    /// JSON objects with contract field names and values of any type and size decode
    /// to an event or to a reason, never a panic, and valid ones are applied safely.
    #[test]
    fn decoding_arbitrary_contract_shaped_json_never_panics(
        fields in prop::collection::vec((
            prop::sample::select(vec![
                "event_id", "customer_id", "type", "occurred_at", "schema_version", "order_id",
                "amount", "currency", "discount_pct", "items", "ticket_id", "priority",
                "category", "requested_discount_pct", "csat", "score", "user_id",
            ]),
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| if v.is_finite() { v.to_string() } else { "1e999".into() }),
                "[a-z._]{0,20}".prop_map(|s| format!("{s:?}")),
                prop::sample::select(vec![
                    "\"order.placed\"", "\"engagement.nps\"", "\"ticket.opened\"",
                    "\"2026-03-01T10:15:00Z\"", "\"9999-99-99T99:99:99Z\"", "null", "[]", "{}", "true",
                ]).prop_map(String::from),
            ],
        ), 0..12),
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let json = format!("{{{}}}", body.join(","));
        if let Ok(e) = churnsignal::decode::decode_json(json.as_bytes(), &churnsignal::decode::Limits::default()) {
            let mut engine = Engine::new(EngineSettings::default());
            engine.apply(&e);
            engine.finish();
            let _ = engine.snapshot();
        }
    }
}

/// Valid but extreme instants (year 1 and year 9999, in either order) are handled
/// without overflow: bucket numbers saturate, the watermark only moves forward.
#[test]
fn extreme_instants_do_not_overflow() {
    let limits = churnsignal::decode::Limits::default();
    let lines = [
        r#"{"event_id":"a","customer_id":"c","type":"order.placed","occurred_at":"9999-12-31T23:59:59Z","order_id":"o","amount":1e300}"#,
        r#"{"event_id":"b","customer_id":"c","type":"order.placed","occurred_at":"0001-01-01T00:00:00Z","order_id":"p","amount":5}"#,
        r#"{"event_id":"c","customer_id":"c","type":"engagement.nps","occurred_at":"0001-01-01T00:00:00+23:59","score":0}"#,
        r#"{"event_id":"d","customer_id":"d","type":"ticket.opened","occurred_at":"9999-12-31T23:59:59.999Z","ticket_id":"t"}"#,
    ];
    for order in [[0, 1, 2, 3], [1, 2, 0, 3], [3, 2, 1, 0]] {
        let mut engine = Engine::new(EngineSettings::default());
        for i in order {
            let e = churnsignal::decode::decode_json(lines[i].as_bytes(), &limits).unwrap();
            engine.apply(&e);
        }
        engine.finish();
        let records = engine.snapshot();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.health_score <= 100));
    }
}
