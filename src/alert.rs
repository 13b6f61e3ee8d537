//! Alerts and customer health records: the output types of the alert contract, with
//! their JSON (default) and protobuf encodings.

use prost::Message;
use serde::{Serialize, Serializer};

use crate::proto::v1 as pb;
use crate::time::Timestamp;
use crate::vocab::{Play, Risk, SignalKind, Status};

/// Contract version of alerts and records.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest summary, characters.
pub const SUMMARY_MAX_CHARS: usize = 150;

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl Serialize for SignalKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Rounds for output: 4 decimals, and never NaN or infinite (JSON has no such numbers).
pub fn round4(v: f64) -> f64 {
    if v.is_finite() {
        (v * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

/// One active signal as it appears in alerts and records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalView {
    /// Contract name.
    pub signal: SignalKind,
    /// 0..1.
    pub severity: f64,
    /// Observed quantity.
    pub observed: f64,
    /// Expected from the customer's own history.
    pub baseline: f64,
    /// Where the signal fires.
    pub threshold: f64,
    /// Days the numbers are about.
    pub window_days: f64,
    /// One sentence a person understands.
    pub explanation: String,
}

/// The inputs behind an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Start of the recent window.
    pub window_start: Timestamp,
    /// End of the recent window (the evaluation instant).
    pub window_end: Timestamp,
    /// Start of the baseline (it ends where the recent window starts).
    pub baseline_start: Timestamp,
    /// Orders in the recent window.
    pub recent_orders: u32,
    /// Net order value in the recent window.
    pub recent_order_value: f64,
    /// Orders in the baseline.
    pub baseline_orders: u32,
    /// Net order value in the baseline.
    pub baseline_order_value: f64,
    /// Engagement events in the recent window.
    pub recent_engagement: u32,
    /// Engagement events in the baseline.
    pub baseline_engagement: u32,
    /// Tickets opened in the recent window.
    pub recent_tickets: u32,
    /// Discount requests in the recent window.
    pub recent_discount_requests: u32,
    /// Tickets open now.
    pub open_tickets: u32,
    /// Orders ever.
    pub orders_total: u32,
    /// Latest order, if any.
    pub last_order_at: Option<Timestamp>,
    /// Latest engagement, if any.
    pub last_engagement_at: Option<Timestamp>,
    /// Ids of the events that tipped this change (empty when stream time did).
    pub event_ids: Vec<String>,
    /// `event` or `stream_time`.
    pub trigger: &'static str,
    /// The purchase model's P(alive): the probability that the customer is still a
    /// buyer (`None` before the first order).
    pub p_alive: Option<f64>,
    /// Orders the purchase model expects in the next 90 days (`None` before the first
    /// order).
    pub expected_orders_90d: Option<f64>,
}

/// One alert of the contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Deterministic episode id.
    pub alert_id: String,
    /// 1 for open, +1 per later alert of the episode.
    pub sequence: u32,
    /// The customer.
    pub customer_id: String,
    /// Lifecycle status.
    pub status: Status,
    /// Risk after this change.
    pub risk: Risk,
    /// 0..=100, 100 healthy.
    pub health_score: u8,
    /// Signals active now (empty when resolved).
    pub signals: Vec<SignalView>,
    /// `key`, `core` or `tail`.
    pub value_tier: &'static str,
    /// What to do about it.
    pub recommended_play: Play,
    /// One line, at most 150 characters.
    pub summary: String,
    /// Event time at which this was decided.
    pub as_of: Timestamp,
    /// When it was produced: wall clock live; equal to `as_of` in replay, so replays are
    /// reproducible byte for byte.
    pub emitted_at: Timestamp,
    /// The inputs behind it.
    pub evidence: Evidence,
    /// 1.
    pub schema_version: u32,
}

impl Alert {
    /// JSON, one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("alerts always serialise")
    }

    /// Protobuf (`churnsignal.v1.Alert`).
    pub fn to_protobuf(&self) -> Vec<u8> {
        fn ts(t: Timestamp) -> Option<prost_types::Timestamp> {
            Some(prost_types::Timestamp {
                seconds: t.0.div_euclid(1000),
                nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
            })
        }
        let e = &self.evidence;
        pb::Alert {
            alert_id: self.alert_id.clone(),
            sequence: self.sequence,
            customer_id: self.customer_id.clone(),
            status: match self.status {
                Status::Open => pb::AlertStatus::Open,
                Status::Escalated => pb::AlertStatus::Escalated,
                Status::Resolved => pb::AlertStatus::Resolved,
            } as i32,
            risk: match self.risk {
                Risk::Low => pb::Risk::Low,
                Risk::Medium => pb::Risk::Medium,
                Risk::High => pb::Risk::High,
                Risk::Critical => pb::Risk::Critical,
            } as i32,
            health_score: u32::from(self.health_score),
            signals: self
                .signals
                .iter()
                .map(|s| pb::SignalReading {
                    signal: s.signal.name().to_owned(),
                    severity: s.severity,
                    observed: s.observed,
                    baseline: s.baseline,
                    threshold: s.threshold,
                    window_days: s.window_days.round() as u32,
                    explanation: s.explanation.clone(),
                })
                .collect(),
            value_tier: self.value_tier.to_owned(),
            recommended_play: self.recommended_play.as_str().to_owned(),
            summary: self.summary.clone(),
            as_of: ts(self.as_of),
            emitted_at: ts(self.emitted_at),
            evidence: Some(pb::Evidence {
                window_start: ts(e.window_start),
                window_end: ts(e.window_end),
                baseline_start: ts(e.baseline_start),
                recent_orders: e.recent_orders,
                recent_order_value: e.recent_order_value,
                baseline_orders: e.baseline_orders,
                baseline_order_value: e.baseline_order_value,
                recent_engagement: e.recent_engagement,
                baseline_engagement: e.baseline_engagement,
                recent_tickets: e.recent_tickets,
                recent_discount_requests: e.recent_discount_requests,
                open_tickets: e.open_tickets,
                orders_total: u64::from(e.orders_total),
                last_order_at: e.last_order_at.and_then(ts),
                last_engagement_at: e.last_engagement_at.and_then(ts),
                event_ids: e.event_ids.clone(),
                trigger: e.trigger.to_owned(),
                p_alive: e.p_alive,
                expected_orders_90d: e.expected_orders_90d,
            }),
            schema_version: self.schema_version,
        }
        .encode_to_vec()
    }
}

/// Window aggregates behind a health record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregates {
    /// Start of the recent window.
    pub recent_start: Timestamp,
    /// Start of the baseline.
    pub baseline_start: Timestamp,
    /// Days the recent window covers for this customer.
    pub recent_days: f64,
    /// Days the baseline covers for this customer.
    pub baseline_days: f64,
    /// Orders in the recent window / baseline.
    pub recent_orders: u32,
    /// Orders in the baseline.
    pub baseline_orders: u32,
    /// Net order value in the recent window.
    pub recent_order_value: f64,
    /// Net order value in the baseline.
    pub baseline_order_value: f64,
    /// Engagement events in the recent window.
    pub recent_engagement: u32,
    /// Engagement events in the baseline.
    pub baseline_engagement: u32,
    /// Tickets opened in the recent window.
    pub recent_tickets: u32,
    /// Trouble points in the recent window.
    pub recent_trouble_points: u32,
    /// Discount requests in the recent window.
    pub recent_discount_requests: u32,
    /// Tickets open now.
    pub open_tickets: u32,
    /// Orders ever.
    pub orders_total: u32,
    /// Trailing revenue (ring) that decides the value tier.
    pub trailing_revenue: f64,
    /// First order, if any.
    pub first_order_at: Option<Timestamp>,
    /// Latest order, if any.
    pub last_order_at: Option<Timestamp>,
    /// Latest engagement, if any.
    pub last_engagement_at: Option<Timestamp>,
    /// Latest NPS answer, if any.
    pub last_nps: Option<u8>,
    /// The purchase model's P(alive) ("dead or just sleeping?"); `None` before the first
    /// order.
    pub p_alive: Option<f64>,
    /// Orders the purchase model expects in the next 90 days; `None` before the first
    /// order.
    pub expected_orders_90d: Option<f64>,
    /// Severity of every signal, active or not (what the score is made of).
    pub severities: std::collections::BTreeMap<&'static str, f64>,
}

/// "Why is this customer at risk?": the same shape from the HTTP API and replay snapshots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthRecord {
    /// The customer.
    pub customer_id: String,
    /// 0..=100.
    pub health_score: u8,
    /// Risk level.
    pub risk: Risk,
    /// Signals active now.
    pub signals: Vec<SignalView>,
    /// `key`, `core` or `tail`.
    pub value_tier: &'static str,
    /// What to do about it.
    pub recommended_play: Play,
    /// Event time of the evaluation.
    pub as_of: Timestamp,
    /// Id of the open episode, if any.
    pub open_alert_id: Option<String>,
    /// The aggregates behind the signals.
    pub windows: Aggregates,
}

impl HealthRecord {
    /// JSON, one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("records always serialise")
    }
}

/// Shortens `s` to at most `max` characters, ending in an ellipsis if cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_the_limit_in_characters() {
        assert_eq!(clip("short", 150), "short");
        let long = "é".repeat(200);
        let c = clip(&long, 150);
        assert_eq!(c.chars().count(), 150);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn numbers_are_always_valid_json() {
        assert_eq!(round4(f64::NAN), 0.0);
        assert_eq!(round4(1.234_56), 1.2346);
    }
}
