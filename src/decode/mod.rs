//! Decoding and validation of contract-v1 events.
//!
//! JSON and protobuf are first read into one [`RawEvent`] (every field optional, strings
//! borrowed), then a single [`validate`] turns it into a domain [`Event`](crate::event::Event) or a
//! [`DecodeError`] with a stable, machine-readable [`Reason`]. The same reasons are used
//! as dead-letter headers and metric labels, so their codes never change.

mod json;
pub mod lines;
mod protobuf;
mod validate;
pub mod wire;

use std::borrow::Cow;
use std::fmt;

pub use json::decode_json;
pub use protobuf::{decode_protobuf, encode_protobuf};
pub use validate::validate;

use crate::time::Timestamp;

/// Why an input was rejected. [`Reason::code`] is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not valid JSON (syntax error, truncated, not UTF-8).
    BadJson,
    /// Not a valid protobuf `churnsignal.v1.Event`.
    BadProtobuf,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON/protobuf type.
    WrongType,
    /// A field is outside its allowed range or set of values.
    OutOfRange,
    /// `type` is not one of the contract's types.
    UnknownType,
    /// `occurred_at` is not RFC 3339 with an offset.
    BadTimestamp,
    /// `occurred_at` lies further in the future than the configured clock skew.
    FutureTimestamp,
    /// The message is larger than the configured maximum.
    Oversized,
    /// `schema_version` is not one this build understands.
    UnsupportedVersion,
    /// The Confluent schema-registry framing is missing or names another message type.
    BadFraming,
    /// A valid event on the topic of another family (an `order.*` on the engagement topic).
    WrongTopic,
    /// The Kafka message key is absent or differs from `customer_id` (events are keyed
    /// by customer, so that a customer's events meet in one partition).
    KeyMismatch,
    /// `occurred_at` is before `input.min_event_time`, or older than stream time by more
    /// than `input.max_event_age_days`.
    TooOld,
}

impl Reason {
    /// Every reason, for metrics pre-registration and documentation.
    pub const ALL: [Reason; 14] = [
        Reason::BadJson,
        Reason::BadProtobuf,
        Reason::MissingField,
        Reason::WrongType,
        Reason::OutOfRange,
        Reason::UnknownType,
        Reason::BadTimestamp,
        Reason::FutureTimestamp,
        Reason::Oversized,
        Reason::UnsupportedVersion,
        Reason::BadFraming,
        Reason::WrongTopic,
        Reason::KeyMismatch,
        Reason::TooOld,
    ];

    /// The stable code used in dead-letter headers, metric labels and reports.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BadJson => "bad_json",
            Reason::BadProtobuf => "bad_protobuf",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::UnknownType => "unknown_type",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::Oversized => "oversized",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::BadFraming => "bad_framing",
            Reason::WrongTopic => "wrong_topic",
            Reason::KeyMismatch => "key_mismatch",
            Reason::TooOld => "too_old",
        }
    }
}

/// A rejected input: the reason code and a short human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", reason.code())]
pub struct DecodeError {
    /// Machine-readable reason.
    pub reason: Reason,
    /// What exactly was wrong, for a person (never contains the whole payload).
    pub message: String,
}

/// Longest rejection message, bytes: it travels in a dead-letter header and must
/// never repeat a large part of the payload.
pub const MAX_MESSAGE_BYTES: usize = 300;

impl DecodeError {
    /// A rejection; the message is capped at [`MAX_MESSAGE_BYTES`], and control
    /// characters in it (which may come from the event) are escaped (`\n`, `\u{1b}`),
    /// so that it stays one line in a report or a dead-letter header.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.chars().any(char::is_control) {
            message = message
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
        }
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        DecodeError { reason, message }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted message, in bytes.
    pub max_event_bytes: usize,
    /// How far `occurred_at` may lie ahead of `now`, in milliseconds.
    pub max_clock_skew_ms: i64,
    /// The reference instant for the skew check (wall clock in live mode). `None`
    /// disables the check.
    pub now: Option<Timestamp>,
    /// Events before this instant are refused (`too_old`).
    pub min_event_time: Timestamp,
    /// Largest accepted amount.
    pub max_amount: f64,
}

impl Limits {
    /// The limits `[input]` sets, with `now` for the clock-skew check.
    pub fn from_input(c: &crate::config::InputConfig, now: Option<Timestamp>) -> Limits {
        Limits {
            max_event_bytes: c.max_event_bytes,
            max_clock_skew_ms: c.max_clock_skew_secs as i64 * 1000,
            now,
            min_event_time: c.min_event_time(),
            max_amount: c.max_amount,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 64 * 1024,
            max_clock_skew_ms: 5 * 60 * 1000,
            now: None,
            min_event_time: Timestamp(i64::MIN),
            max_amount: f64::MAX,
        }
    }
}

/// `occurred_at` as found on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime<'a> {
    /// JSON: an RFC 3339 string.
    Text(Cow<'a, str>),
    /// Protobuf: a `google.protobuf.Timestamp`.
    Millis(i64),
}

/// An event as read from the wire, before validation. Every field is optional here;
/// [`validate`] decides what each `type` requires.
#[derive(Debug, Default, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct RawEvent<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub customer_id: Option<Cow<'a, str>>,
    pub event_type: Option<Cow<'a, str>>,
    pub occurred_at: Option<RawTime<'a>>,
    pub schema_version: Option<i64>,
    pub order_id: Option<Cow<'a, str>>,
    pub amount: Option<f64>,
    pub currency: Option<Cow<'a, str>>,
    pub discount_pct: Option<f64>,
    pub items: Option<i64>,
    pub ticket_id: Option<Cow<'a, str>>,
    pub priority: Option<Cow<'a, str>>,
    pub category: Option<Cow<'a, str>>,
    pub requested_discount_pct: Option<f64>,
    pub csat: Option<i64>,
    pub user_id: Option<Cow<'a, str>>,
    pub feature: Option<Cow<'a, str>>,
    pub score: Option<i64>,
}

impl fmt::Display for RawTime<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawTime::Text(s) => f.write_str(s),
            RawTime::Millis(m) => write!(f, "{}", Timestamp(*m)),
        }
    }
}
