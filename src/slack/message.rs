//! From an alert on the alerts topic to a Slack message (Block Kit), pure.
//!
//! The alert is read as the contract defines it (JSON, or `churnsignal.v1.Alert`), with
//! only the fields a message needs, so that fields added to the contract later do not
//! break the forwarder. The message: a header (the alert's summary), a status line, up
//! to [`FIELDS_MAX`] fields of evidence (the active signals' explanations first), the
//! recommended play, a context line with the idempotency key, and a `text` fallback for
//! notifications and clients without blocks. Every text is clipped to Slack's limits.

use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::alert::clip;
use crate::proto::v1 as pb;
use crate::time::Timestamp;

/// Longest header text (`plain_text`), characters.
pub const HEADER_MAX: usize = 150;
/// Most fields in one section block.
pub const FIELDS_MAX: usize = 10;
/// Longest field text, characters.
pub const FIELD_MAX: usize = 2000;
/// Longest section or context text, characters.
pub const SECTION_MAX: usize = 3000;
/// Most blocks in one message.
pub const BLOCKS_MAX: usize = 50;
/// Longest `text` fallback we send (Slack truncates at 40,000; notifications show far
/// less).
pub const TEXT_MAX: usize = 3000;

/// Why an alert message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON of the contract's shape.
    #[error("not a contract alert (JSON): {0}")]
    Json(String),
    /// Not a `churnsignal.v1.Alert`.
    #[error("not a contract alert (protobuf): {0}")]
    Protobuf(String),
}

/// What a Slack message needs of an alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertView {
    /// Episode id.
    pub alert_id: String,
    /// Position in the episode.
    pub sequence: u64,
    /// The customer.
    pub customer_id: String,
    /// `open`, `escalated` or `resolved`.
    pub status: String,
    /// `low` .. `critical`.
    pub risk: String,
    /// 0..=100.
    pub health_score: u32,
    /// Active signals.
    #[serde(default)]
    pub signals: Vec<SignalLine>,
    /// `key`, `core`, `tail`.
    pub value_tier: String,
    /// The play.
    pub recommended_play: String,
    /// One line.
    pub summary: String,
    /// Decided at (event time).
    pub as_of: String,
    /// The inputs behind it.
    #[serde(default)]
    pub evidence: EvidenceView,
}

/// One active signal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SignalLine {
    /// Contract name.
    pub signal: String,
    /// 0..1.
    #[serde(default)]
    pub severity: f64,
    /// One sentence.
    #[serde(default)]
    pub explanation: String,
}

/// The evidence fields a message shows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct EvidenceView {
    /// Orders in the recent window.
    pub recent_orders: u64,
    /// Their value.
    pub recent_order_value: f64,
    /// Orders in the baseline.
    pub baseline_orders: u64,
    /// Their value.
    pub baseline_order_value: f64,
    /// Engagement events, recent window.
    pub recent_engagement: u64,
    /// Engagement events, baseline.
    pub baseline_engagement: u64,
    /// Tickets opened, recent window.
    pub recent_tickets: u64,
    /// Discount requests, recent window.
    pub recent_discount_requests: u64,
    /// Tickets open now.
    pub open_tickets: u64,
    /// Orders ever.
    pub orders_total: u64,
    /// Latest order.
    pub last_order_at: Option<String>,
    /// Start of the recent window.
    pub window_start: Option<String>,
}

impl AlertView {
    /// Reads an alert: by its `content-type` header when there is one, else by its first
    /// byte (JSON objects start with `{`).
    pub fn read(payload: &[u8], content_type: Option<&str>) -> Result<AlertView, ReadError> {
        let protobuf = match content_type {
            Some(ct) if ct.contains("protobuf") => true,
            Some(ct) if ct.contains("json") => false,
            _ => payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{'),
        };
        if protobuf {
            Self::from_protobuf(payload)
        } else {
            serde_json::from_slice(payload).map_err(|e| ReadError::Json(e.to_string()))
        }
    }

    fn from_protobuf(payload: &[u8]) -> Result<AlertView, ReadError> {
        let a = pb::Alert::decode(payload).map_err(|e| ReadError::Protobuf(e.to_string()))?;
        let ts = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| Timestamp(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).to_rfc3339())
        };
        let status = match pb::AlertStatus::try_from(a.status) {
            Ok(pb::AlertStatus::Open) => "open",
            Ok(pb::AlertStatus::Escalated) => "escalated",
            Ok(pb::AlertStatus::Resolved) => "resolved",
            _ => return Err(ReadError::Protobuf(format!("status {}", a.status))),
        };
        let risk = match pb::Risk::try_from(a.risk) {
            Ok(pb::Risk::Low) => "low",
            Ok(pb::Risk::Medium) => "medium",
            Ok(pb::Risk::High) => "high",
            Ok(pb::Risk::Critical) => "critical",
            _ => return Err(ReadError::Protobuf(format!("risk {}", a.risk))),
        };
        if a.alert_id.is_empty() {
            return Err(ReadError::Protobuf("no alert_id".into()));
        }
        let e = a.evidence.unwrap_or_default();
        Ok(AlertView {
            alert_id: a.alert_id,
            sequence: u64::from(a.sequence),
            customer_id: a.customer_id,
            status: status.into(),
            risk: risk.into(),
            health_score: a.health_score,
            signals: a
                .signals
                .into_iter()
                .map(|s| SignalLine {
                    signal: s.signal,
                    severity: s.severity,
                    explanation: s.explanation,
                })
                .collect(),
            value_tier: a.value_tier,
            recommended_play: a.recommended_play,
            summary: a.summary,
            as_of: ts(&a.as_of).unwrap_or_default(),
            evidence: EvidenceView {
                recent_orders: u64::from(e.recent_orders),
                recent_order_value: e.recent_order_value,
                baseline_orders: u64::from(e.baseline_orders),
                baseline_order_value: e.baseline_order_value,
                recent_engagement: u64::from(e.recent_engagement),
                baseline_engagement: u64::from(e.baseline_engagement),
                recent_tickets: u64::from(e.recent_tickets),
                recent_discount_requests: u64::from(e.recent_discount_requests),
                open_tickets: u64::from(e.open_tickets),
                orders_total: e.orders_total,
                last_order_at: ts(&e.last_order_at),
                window_start: ts(&e.window_start),
            },
        })
    }

    /// The idempotency key downstream: (`alert_id`, `sequence`).
    pub fn key(&self) -> (String, u64) {
        (self.alert_id.clone(), self.sequence)
    }
}

/// What a play asks people to do, one sentence.
pub fn play_text(play: &str) -> &'static str {
    match play {
        "retain" => "A valuable customer at risk: act to keep them (a call from their account manager, a check-in at the top).",
        "ramp_up" => "A new customer without a second sale: help them get going (onboarding, a reason to order again).",
        "restore" => "The relationship costs more than it brings (tickets, discounts): fix what is wrong before it ends.",
        "regain" => "A customer who looks lost: win them back.",
        "reactivate" => "A quiet customer: wake them up before the silence becomes a habit.",
        _ => "See the evidence.",
    }
}

/// Escapes the three characters Slack's `mrkdwn` gives meaning to, and makes inline
/// text stay inline: a backtick (which would end the code span a customer id is shown
/// in, or open one) becomes `ˋ` (U+02CB, which looks alike), and a line break or other
/// control character (which would add lines) becomes a space.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\u{02CB}'),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Plain text (a header) on one line: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Clips text that is already escaped, never inside an entity (`&am…` would show
/// garbage).
fn clip_escaped(escaped: &str, max: usize) -> String {
    if escaped.chars().count() <= max {
        return escaped.to_owned();
    }
    let mut out = clip(escaped, max);
    if let Some(amp) = out.rfind('&') {
        if !out[amp..].contains(';') {
            out.truncate(amp);
            out.push('…');
        }
    }
    out
}

fn title(signal: &str) -> String {
    let s = signal.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

fn status_line(a: &AlertView) -> String {
    let tier = match a.value_tier.as_str() {
        "key" => "key account".to_owned(),
        other => format!("{other} account"),
    };
    let what = match a.status.as_str() {
        "open" => "*New risk*".to_owned(),
        "escalated" => "*Risk up*".to_owned(),
        "resolved" => {
            "*Resolved*: every signal has cleared, the customer is no longer at risk".to_owned()
        }
        other => format!("*{}*", escape(other)),
    };
    format!(
        "{what} · risk *{}* · health *{}*/100 · {}",
        escape(&a.risk),
        a.health_score,
        escape(&tier)
    )
}

/// The fields: the active signals first (strongest first, as the alert lists them),
/// then the evidence, at most [`FIELDS_MAX`].
pub fn fields(a: &AlertView) -> Vec<String> {
    let e = &a.evidence;
    let mut out: Vec<String> = a
        .signals
        .iter()
        .map(|s| {
            format!(
                "*{}* (severity {:.2})\n{}",
                escape(&title(&s.signal)),
                s.severity,
                escape(&s.explanation)
            )
        })
        .collect();
    let evidence = [
        format!(
            "*Orders, recent window*\n{} ({:.2}) vs {} ({:.2}) in the baseline",
            e.recent_orders, e.recent_order_value, e.baseline_orders, e.baseline_order_value
        ),
        format!(
            "*Engagement, recent window*\n{} vs {} in the baseline",
            e.recent_engagement, e.baseline_engagement
        ),
        format!(
            "*Support*\n{} tickets in the recent window, {} open",
            e.recent_tickets, e.open_tickets
        ),
        format!(
            "*Discount requests, recent window*\n{}",
            e.recent_discount_requests
        ),
        format!(
            "*Last order*\n{} ({} orders ever)",
            e.last_order_at
                .as_deref()
                .map(escape)
                .unwrap_or_else(|| "never".into()),
            e.orders_total
        ),
    ];
    out.extend(evidence);
    out.truncate(FIELDS_MAX);
    out.into_iter()
        .map(|f| clip_escaped(&f, FIELD_MAX))
        .collect()
}

/// The text fallback (notifications, clients without blocks).
pub fn fallback(a: &AlertView) -> String {
    let status = match a.status.as_str() {
        "resolved" => "Resolved".to_owned(),
        "escalated" => "Risk up".to_owned(),
        "open" => "New risk".to_owned(),
        other => other.to_owned(),
    };
    let mut text = format!("{status}: {}", a.summary);
    if a.status != "resolved" {
        text.push_str(&format!(" Play: {}.", a.recommended_play));
        for s in &a.signals {
            text.push(' ');
            text.push_str(&s.explanation);
        }
    }
    clip_escaped(&escape(&text), TEXT_MAX)
}

/// The Block Kit message of one alert.
pub fn block_kit(a: &AlertView) -> Value {
    let header = if a.summary.is_empty() {
        format!("{} {}", a.customer_id, a.status)
    } else {
        a.summary.clone()
    };
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": clip(&one_line(&header), HEADER_MAX), "emoji": true}
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip_escaped(&status_line(a), SECTION_MAX)}
        }),
    ];
    let fields: Vec<Value> = fields(a)
        .into_iter()
        .map(|f| json!({"type": "mrkdwn", "text": f}))
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    if a.status != "resolved" {
        let play = format!(
            "*Recommended play: {}*\n{}",
            escape(&a.recommended_play.replace('_', " ")),
            play_text(&a.recommended_play)
        );
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip_escaped(&play, SECTION_MAX)}
        }));
    }
    let context = format!(
        "customer `{}` · alert `{}` #{} · as of {} · churnsignal",
        escape(&a.customer_id),
        escape(&a.alert_id),
        a.sequence,
        escape(&a.as_of)
    );
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": clip_escaped(&context, SECTION_MAX)}]
    }));
    debug_assert!(blocks.len() <= BLOCKS_MAX);
    json!({ "text": fallback(a), "blocks": blocks })
}

/// The fallback-only message, for a webhook that refused the blocks (`invalid_blocks`).
pub fn text_only(a: &AlertView) -> Value {
    json!({ "text": fallback(a) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alert(status: &str) -> AlertView {
        let line = r#"{"alert_id":"48ade52eb9cfaa1c","sequence":1,"customer_id":"cust-0000942","status":"open","risk":"high","health_score":56,"signals":[{"signal":"inactivity","severity":0.5,"observed":14.0013,"baseline":4.5951,"threshold":14.0,"window_days":14.0013,"explanation":"No orders or engagement for 14 days, while this customer usually orders every 4.6 days (alert after 14)."}],"value_tier":"key","recommended_play":"reactivate","summary":"cust-0000942 (key account) at risk: inactivity; health 56, risk high, play reactivate","as_of":"2026-04-27T03:20:29.209Z","emitted_at":"2026-04-27T03:20:29.209Z","evidence":{"window_start":"2026-04-02T00:00:00Z","window_end":"2026-04-27T03:20:29.209Z","baseline_start":"2026-01-08T00:00:00Z","recent_orders":3,"recent_order_value":2010.59,"baseline_orders":22,"baseline_order_value":11725.6801,"recent_engagement":1,"baseline_engagement":0,"recent_tickets":0,"recent_discount_requests":0,"open_tickets":0,"orders_total":28,"last_order_at":"2026-04-13T03:18:38.431Z","last_engagement_at":"2026-04-04T09:23:56.664Z","event_ids":[],"trigger":"stream_time"},"schema_version":1}"#;
        let mut a = AlertView::read(line.as_bytes(), Some("application/json")).unwrap();
        a.status = status.into();
        if status == "resolved" {
            a.signals.clear();
            a.summary =
                "cust-0000942 (key account) recovered, alert resolved; health 88, risk low, play retain".into();
        }
        a
    }

    fn blocks(m: &Value) -> &Vec<Value> {
        m["blocks"].as_array().unwrap()
    }

    #[test]
    fn an_open_alert_has_header_status_evidence_play_and_fallback() {
        let m = block_kit(&alert("open"));
        let b = blocks(&m);
        assert_eq!(b[0]["type"], "header");
        assert_eq!(b[0]["text"]["type"], "plain_text");
        assert!(b[0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("cust-0000942 (key account) at risk"));
        let status = b[1]["text"]["text"].as_str().unwrap();
        assert!(
            status.contains("New risk") && status.contains("*high*") && status.contains("56"),
            "{status}"
        );
        let fields = b[2]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 6, "one signal and five evidence fields");
        assert!(fields[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("*Inactivity* (severity 0.50)\nNo orders"));
        assert!(fields[1]["text"]
            .as_str()
            .unwrap()
            .contains("3 (2010.59) vs 22 (11725.68)"));
        let play = b[3]["text"]["text"].as_str().unwrap();
        assert!(play.starts_with("*Recommended play: reactivate*"), "{play}");
        assert_eq!(b[4]["type"], "context");
        assert!(b[4]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("`48ade52eb9cfaa1c` #1"));
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with("New risk: cust-0000942") && text.contains("Play: reactivate"),
            "{text}"
        );
    }

    #[test]
    fn an_escalated_alert_says_risk_up() {
        let m = block_kit(&alert("escalated"));
        assert!(blocks(&m)[1]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("*Risk up*"));
        assert!(m["text"].as_str().unwrap().starts_with("Risk up: "));
    }

    #[test]
    fn a_resolved_alert_says_so_and_recommends_nothing() {
        let m = block_kit(&alert("resolved"));
        let b = blocks(&m);
        let status = b[1]["text"]["text"].as_str().unwrap();
        assert!(
            status.starts_with("*Resolved*") && status.contains("no longer at risk"),
            "{status}"
        );
        assert!(b
            .iter()
            .all(|x| !x.to_string().contains("Recommended play")));
        assert_eq!(b[2]["fields"].as_array().unwrap().len(), 5, "evidence only");
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with("Resolved: ") && !text.contains("Play:"),
            "{text}"
        );
    }

    #[test]
    fn protobuf_alerts_read_like_json_ones() {
        use crate::engine::lifecycle::Status;
        // An alert from the engine, in both encodings.
        let mut engine = crate::engine::Engine::new(crate::config::EngineSettings::default());
        let mut alerts = Vec::new();
        let history = crate::generate::History::new(crate::generate::Spec {
            customers: 60,
            days: 150,
            seed: 3,
            ..Default::default()
        });
        for g in history {
            alerts.extend(engine.apply(&g.to_event()));
        }
        let a = alerts
            .iter()
            .find(|a| a.status == Status::Open)
            .expect("a generated history has open alerts");
        let from_json = AlertView::read(a.to_json().as_bytes(), None).unwrap();
        let from_pb = AlertView::read(&a.to_protobuf(), None).unwrap();
        assert_eq!(from_json.key(), from_pb.key());
        assert_eq!(from_json.status, from_pb.status);
        assert_eq!(from_json.risk, from_pb.risk);
        assert_eq!(from_json.summary, from_pb.summary);
        assert_eq!(from_json.as_of, from_pb.as_of);
        assert_eq!(fields(&from_json), fields(&from_pb));
        assert!(AlertView::read(b"\x08\x01garbage", Some("application/x-protobuf")).is_err());
        assert!(AlertView::read(b"{\"alert_id\": 3}", None).is_err());
    }

    #[test]
    fn mrkdwn_control_characters_are_escaped() {
        let mut a = alert("open");
        a.customer_id = "<!channel> & co".into();
        a.signals[0].explanation = "a <b> & c".into();
        let m = block_kit(&a).to_string();
        assert!(
            !m.contains("<!channel>") && m.contains("&lt;!channel&gt; &amp; co"),
            "{m}"
        );
        assert!(m.contains("a &lt;b&gt; &amp; c"));
    }

    #[test]
    fn a_backtick_or_line_break_in_an_id_cannot_break_the_code_span_or_add_lines() {
        let mut a = alert("open");
        a.customer_id = "evil`*bold*\n> quote\r\tx".into();
        a.summary = format!("{} (key account) at risk", a.customer_id);
        let m = block_kit(&a);
        let context = m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "context")
            .unwrap()["elements"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            context.starts_with("customer `evil\u{02CB}*bold* &gt; quote  x` · alert `"),
            "{context}"
        );
        let header = m["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(!header.contains('\n') && !header.contains('\r'), "{header}");
        // (the header is plain text, where a backtick is only a backtick)
        let mrkdwn = serde_json::to_string(&m["blocks"].as_array().unwrap()[1..]).unwrap();
        assert_eq!(
            mrkdwn.matches('`').count(),
            4,
            "only the two code spans' own backticks: {mrkdwn}"
        );
    }

    fn within_limits(m: &Value) {
        let b = blocks(m);
        assert!(b.len() <= BLOCKS_MAX);
        assert!(m["text"].as_str().unwrap().chars().count() <= TEXT_MAX);
        for block in b {
            match block["type"].as_str().unwrap() {
                "header" => {
                    assert!(block["text"]["text"].as_str().unwrap().chars().count() <= HEADER_MAX)
                }
                "section" => {
                    if let Some(f) = block["fields"].as_array() {
                        assert!(f.len() <= FIELDS_MAX);
                        for x in f {
                            assert!(x["text"].as_str().unwrap().chars().count() <= FIELD_MAX);
                        }
                    } else {
                        assert!(
                            block["text"]["text"].as_str().unwrap().chars().count() <= SECTION_MAX
                        );
                    }
                }
                "context" => {
                    for x in block["elements"].as_array().unwrap() {
                        assert!(x["text"].as_str().unwrap().chars().count() <= SECTION_MAX);
                    }
                }
                other => panic!("unexpected block {other}"),
            }
        }
    }

    proptest! {
        #[test]
        fn every_message_stays_within_slacks_limits(
            summary in ".{0,400}",
            id in "[<>&a-z]{0,3000}",
            explanations in proptest::collection::vec("[<>&a-zé ]{0,5000}", 0..9),
            status in prop::sample::select(vec!["open", "escalated", "resolved"]),
        ) {
            let mut a = alert(status);
            a.summary = summary;
            a.customer_id = id.clone();
            a.alert_id = id;
            a.signals = explanations
                .into_iter()
                .map(|e| SignalLine { signal: "support_tension".into(), severity: 0.7, explanation: e })
                .collect();
            let m = block_kit(&a);
            within_limits(&m);
            prop_assert!(blocks(&m)[2]["fields"].as_array().unwrap().len() <= FIELDS_MAX);
            within_limits(&text_only(&a).as_object().map(|o| {
                let mut o = o.clone();
                o.insert("blocks".into(), json!([]));
                Value::Object(o)
            }).unwrap());
        }
    }
}
