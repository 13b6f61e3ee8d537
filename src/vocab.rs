//! The shared vocabulary: the contract's names for statuses, risks, plays, signals and
//! formats, and a signal's reading. It imports nothing of the crate but [`crate::time`],
//! so every layer above (decoding, configuration, signals, the engine, alerts, the
//! Kafka shell) can use it without depending on another.

use serde::Serialize;

use crate::time::Timestamp;

/// Alert status of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Episode started (or a reminder).
    Open,
    /// Risk rose or a new signal joined.
    Escalated,
    /// Episode ended.
    Resolved,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 3] = [Status::Open, Status::Escalated, Status::Resolved];

    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Escalated => "escalated",
            Status::Resolved => "resolved",
        }
    }
}

/// Risk level of the alert contract, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// `low`
    Low = 0,
    /// `medium`
    Medium = 1,
    /// `high`
    High = 2,
    /// `critical`
    Critical = 3,
}

impl Risk {
    /// Every risk, lowest first.
    pub const ALL: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
    pub(crate) fn from_u8(v: u8) -> Risk {
        match v {
            0 => Risk::Low,
            1 => Risk::Medium,
            2 => Risk::High,
            _ => Risk::Critical,
        }
    }
}

/// What to do about it (alert contract `recommended_play`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Play {
    /// A valuable customer at risk: act to keep them.
    Retain,
    /// A new customer without a second sale: help them get going.
    RampUp,
    /// A customer whose cost (support, discounts) outweighs their value: fix the relationship.
    Restore,
    /// A lost customer: win them back.
    Regain,
    /// A quiet customer: wake them up.
    Reactivate,
}

impl Play {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Play::Retain => "retain",
            Play::RampUp => "ramp_up",
            Play::Restore => "restore",
            Play::Regain => "regain",
            Play::Reactivate => "reactivate",
        }
    }
}

/// The signals, in contract order. The discriminant is the bit in activity masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    /// `consumption_drop`
    ConsumptionDrop = 0,
    /// `discount_pressure`
    DiscountPressure = 1,
    /// `inactivity`
    Inactivity = 2,
    /// `support_tension`
    SupportTension = 3,
    /// `engagement_decline`
    EngagementDecline = 4,
    /// `no_second_purchase`
    NoSecondPurchase = 5,
    /// `nps_detractor`
    NpsDetractor = 6,
}

impl SignalKind {
    /// All signals in contract order.
    pub const ALL: [SignalKind; 7] = [
        SignalKind::ConsumptionDrop,
        SignalKind::DiscountPressure,
        SignalKind::Inactivity,
        SignalKind::SupportTension,
        SignalKind::EngagementDecline,
        SignalKind::NoSecondPurchase,
        SignalKind::NpsDetractor,
    ];

    /// The contract name.
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::ConsumptionDrop => "consumption_drop",
            SignalKind::DiscountPressure => "discount_pressure",
            SignalKind::Inactivity => "inactivity",
            SignalKind::SupportTension => "support_tension",
            SignalKind::EngagementDecline => "engagement_decline",
            SignalKind::NoSecondPurchase => "no_second_purchase",
            SignalKind::NpsDetractor => "nps_detractor",
        }
    }

    /// Bit of this signal in a mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What a signal found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// 0..1; 0.5 at the threshold.
    pub severity: f64,
    /// The observed quantity (see each signal).
    pub observed: f64,
    /// What the customer's own history (or the population) leads to expect.
    pub baseline: f64,
    /// Where the signal fires.
    pub threshold: f64,
    /// The window the numbers are about, days.
    pub window_days: f64,
    /// A signal-specific second number for the explanation.
    pub extra: f64,
    /// A signal-specific variant (e.g. value or count).
    pub detail: u8,
    /// The next instant this reading can change without a new event.
    pub due: Option<Timestamp>,
}

impl Reading {
    /// Nothing to say (not enough history, or not applicable).
    pub const NONE: Reading = Reading {
        severity: 0.0,
        observed: 0.0,
        baseline: 0.0,
        threshold: 0.0,
        window_days: 0.0,
        extra: 0.0,
        detail: 0,
        due: None,
    };
}

/// How alerts are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// JSON, the contract's default.
    Json,
    /// `churnsignal.v1.Alert`.
    Protobuf,
}

impl AlertFormat {
    /// The `content-type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            AlertFormat::Json => "application/json",
            AlertFormat::Protobuf => "application/x-protobuf",
        }
    }
}

/// How a topic's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON (the contract's default).
    Json,
    /// Plain protobuf `churnsignal.v1.Event`.
    Protobuf,
    /// Protobuf with the Confluent schema-registry framing.
    ConfluentProtobuf,
    /// Decide per message: the `content-type` header if present, else the first byte.
    Auto,
}

impl Encoding {
    /// The encoding a `content-type` header names, if it names one.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let media = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some(Encoding::Json),
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => Some(Encoding::Protobuf),
            "application/vnd.confluent.protobuf" => Some(Encoding::ConfluentProtobuf),
            _ => None,
        }
    }

    /// The encoding of one message: a `content-type` header wins over `auto`, and in
    /// `auto` without a header a leading `{` means JSON, a leading 0 Confluent framing,
    /// anything else plain protobuf. The guess is unambiguous for our schema: protobuf
    /// never starts with 0 (field number 0 is invalid), and `{` (0x7B) would be field 15
    /// as a deprecated group, which `churnsignal.v1.Event` does not have.
    pub fn resolve(self, content_type: Option<&str>, bytes: &[u8]) -> Encoding {
        if let Some(e) = content_type.and_then(Encoding::from_content_type) {
            return e;
        }
        match self {
            Encoding::Auto => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Encoding::Json,
                Some(0) if bytes.first() == Some(&0) => Encoding::ConfluentProtobuf,
                _ => Encoding::Protobuf,
            },
            e => e,
        }
    }
}
