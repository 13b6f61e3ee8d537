//! `churnsignal evaluate` on a small labelled history whose figures are worked out by
//! hand: five customers over 100 days, every one ordering every Monday.
//!
//! - `angry` (label `support_tension`, onset day 50): an urgent ticket at day 50.5 (2
//!   points), escalated at 51 (2), reopened at 51.5 (2), resolved with CSAT 1 at 52 (2):
//!   8 points, the threshold of a customer with one ticket, reached at day 52, so the
//!   delay is 2.0 days.
//! - `critic` (label `nps_detractor`, onset day 60): answers NPS 2 at day 60: alerted at
//!   once, delay 0.
//! - `calm`, `steady` (label `steady`): nothing else.
//! - `grumpy` (label `steady`): answers NPS 3 at day 70, an alert a steady customer
//!   should not have had.
//!
//! So: recall 1 in every window for both drifting labels; `nps_detractor` fired for two
//! labelled customers, one rightly (precision 0.5), `support_tension` for one, rightly
//! (1.0); steady customers: 3, one of them alerted, one episode over their 3 × 99.5 /
//! 365.25 customer-years (from the first order, day 0.5, to the last event of the
//! history, day 100).

use std::collections::BTreeMap;

use churnsignal::config::Config;
use churnsignal::evaluate::{self, read_labels};
use churnsignal::time::{Timestamp, DAY_MS};

const DAY0: i64 = 1_767_571_200_000; // 2026-01-05, a Monday

fn at(day: f64) -> String {
    Timestamp(DAY0 + (day * DAY_MS as f64) as i64).to_string()
}

fn history() -> Vec<u8> {
    let mut lines: Vec<(f64, String)> = Vec::new();
    let mut n = 0;
    let mut ev = |day: f64, body: String, lines: &mut Vec<(f64, String)>| {
        n += 1;
        lines.push((
            day,
            format!(
                r#"{{"event_id":"e{n}",{body},"occurred_at":"{}"}}"#,
                at(day)
            ),
        ));
    };
    for c in ["angry", "critic", "calm", "steady", "grumpy"] {
        for w in 0..15 {
            let d = f64::from(w) * 7.0 + 0.5;
            ev(
                d,
                format!(
                    r#""customer_id":"{c}","type":"order.placed","order_id":"{c}-{w}","amount":100.0"#
                ),
                &mut lines,
            );
        }
    }
    let t = r#""customer_id":"angry","ticket_id":"t1""#;
    ev(
        50.5,
        format!(r#"{t},"type":"ticket.opened","priority":"urgent","category":"technical""#),
        &mut lines,
    );
    ev(
        51.0,
        format!(r#"{t},"type":"ticket.escalated""#),
        &mut lines,
    );
    ev(51.5, format!(r#"{t},"type":"ticket.reopened""#), &mut lines);
    ev(
        52.0,
        format!(r#"{t},"type":"ticket.resolved","csat":1"#),
        &mut lines,
    );
    ev(
        60.0,
        r#""customer_id":"critic","type":"engagement.nps","score":2"#.to_owned(),
        &mut lines,
    );
    ev(
        70.0,
        r#""customer_id":"grumpy","type":"engagement.nps","score":3"#.to_owned(),
        &mut lines,
    );
    ev(
        100.0,
        r#""customer_id":"calm","type":"engagement.login""#.to_owned(),
        &mut lines,
    );
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines
        .into_iter()
        .flat_map(|(_, l)| (l + "\n").into_bytes())
        .collect()
}

fn labels() -> BTreeMap<String, evaluate::Label> {
    let text = format!(
        "{{\"customer_id\":\"angry\",\"label\":\"support_tension\",\"onset\":\"{}\"}}\n\
         {{\"customer_id\":\"critic\",\"label\":\"nps_detractor\",\"onset\":\"{}\"}}\n\
         {{\"customer_id\":\"calm\",\"label\":\"steady\",\"onset\":null}}\n\
         {{\"customer_id\":\"steady\",\"label\":\"steady\"}}\n\
         {{\"customer_id\":\"grumpy\",\"label\":\"steady\",\"onset\":null}}\n",
        at(50.0),
        at(60.0)
    );
    read_labels(&text).unwrap()
}

#[test]
fn evaluate_reports_the_hand_checked_figures() {
    let r = evaluate::run(
        &history(),
        &labels(),
        &Config::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.labelled, 5);
    let det: BTreeMap<&str, &evaluate::Detection> =
        r.detection.iter().map(|d| (d.label.as_str(), d)).collect();
    let angry = det["support_tension"];
    assert_eq!(angry.customers, 1);
    assert!(
        angry.recall.iter().all(|(_, share)| *share == 1.0),
        "{angry:?}"
    );
    assert!(
        (angry.delay_median_days.unwrap() - 2.0).abs() < 1e-6,
        "{angry:?}"
    );
    assert_eq!(angry.alerted_before_onset, 0);
    let critic = det["nps_detractor"];
    assert_eq!(critic.delay_median_days, Some(0.0));
    assert_eq!(critic.delay_p90_days, Some(0.0));
    let prec: BTreeMap<&str, &evaluate::Precision> =
        r.precision.iter().map(|p| (p.signal.as_str(), p)).collect();
    assert_eq!(
        (prec["nps_detractor"].fired, prec["nps_detractor"].correct),
        (2, 1)
    );
    assert_eq!(prec["nps_detractor"].precision, Some(0.5));
    assert_eq!(prec["support_tension"].precision, Some(1.0));
    let steady = r.steady.as_ref().unwrap();
    assert_eq!(
        (steady.customers, steady.alerted, steady.episodes),
        (3, 1, 1)
    );
    let years = 3.0 * 99.5 / 365.25;
    assert!((steady.customer_years - years).abs() < 1e-3, "{steady:?}");
    assert!(
        (steady.episodes_per_customer_year - 1.0 / years).abs() < 1e-2,
        "{steady:?}"
    );
    // the text table names every figure
    let text = r.render();
    for needle in ["support_tension", "nps_detractor", "steady"] {
        assert!(text.contains(needle), "{text}");
    }
}
