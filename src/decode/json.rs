//! JSON (UTF-8, one event per message or line) into [`RawEvent`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::error::Category;

use super::{validate, DecodeError, Limits, RawEvent, RawTime, Reason};
use crate::event::Event;

/// A string that borrows from the input when it has no escapes. (serde's derive only
/// borrows a bare `Cow<str>` field, not one inside an `Option`.)
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Wire shape of a JSON event. Unknown fields are ignored (forward compatibility);
/// `null` counts as absent.
#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow)]
    event_id: Option<Str<'a>>,
    #[serde(borrow)]
    customer_id: Option<Str<'a>>,
    #[serde(borrow, rename = "type")]
    event_type: Option<Str<'a>>,
    #[serde(borrow)]
    occurred_at: Option<Str<'a>>,
    schema_version: Option<i64>,
    #[serde(borrow)]
    order_id: Option<Str<'a>>,
    amount: Option<f64>,
    #[serde(borrow)]
    currency: Option<Str<'a>>,
    discount_pct: Option<f64>,
    items: Option<i64>,
    #[serde(borrow)]
    ticket_id: Option<Str<'a>>,
    #[serde(borrow)]
    priority: Option<Str<'a>>,
    #[serde(borrow)]
    category: Option<Str<'a>>,
    requested_discount_pct: Option<f64>,
    csat: Option<i64>,
    #[serde(borrow)]
    user_id: Option<Str<'a>>,
    #[serde(borrow)]
    feature: Option<Str<'a>>,
    score: Option<i64>,
}

/// Decodes and validates one JSON event.
pub fn decode_json<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Event<'a>, DecodeError> {
    if bytes.len() > limits.max_event_bytes {
        return Err(DecodeError::new(
            Reason::Oversized,
            format!(
                "{} bytes, more than the limit of {}",
                bytes.len(),
                limits.max_event_bytes
            ),
        ));
    }
    // One UTF-8 check of the whole message, then parsing from `str`: serde_json then
    // skips validating each string on its own (measurably faster on small events).
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DecodeError::new(Reason::BadJson, format!("not UTF-8: {e}")))?;
    let j: JsonEvent<'a> = serde_json::from_str(text).map_err(|e| {
        let reason = match e.classify() {
            Category::Data => Reason::WrongType,
            Category::Syntax | Category::Eof | Category::Io => Reason::BadJson,
        };
        DecodeError::new(reason, e.to_string())
    })?;
    let raw = RawEvent {
        event_id: j.event_id.map(|s| s.0),
        customer_id: j.customer_id.map(|s| s.0),
        event_type: j.event_type.map(|s| s.0),
        occurred_at: j.occurred_at.map(|s| RawTime::Text(s.0)),
        schema_version: j.schema_version,
        order_id: j.order_id.map(|s| s.0),
        amount: j.amount,
        currency: j.currency.map(|s| s.0),
        discount_pct: j.discount_pct,
        items: j.items,
        ticket_id: j.ticket_id.map(|s| s.0),
        priority: j.priority.map(|s| s.0),
        category: j.category.map(|s| s.0),
        requested_discount_pct: j.requested_discount_pct,
        csat: j.csat,
        user_id: j.user_id.map(|s| s.0),
        feature: j.feature.map(|s| s.0),
        score: j.score,
    };
    validate(raw, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Category as Cat, EventKind, Priority};
    use crate::time::Timestamp;

    fn decode(s: &str) -> Result<Event<'_>, DecodeError> {
        decode_json(s.as_bytes(), &Limits::default())
    }

    fn reason(s: &str) -> Reason {
        decode(s).expect_err("must be rejected").reason
    }

    #[test]
    fn contract_examples_decode() {
        let e = decode(r#"{"event_id":"e-1","customer_id":"acme","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o-77","amount":1290.0,"currency":"EUR","discount_pct":5}"#).unwrap();
        assert_eq!(e.customer_id, "acme");
        assert_eq!(
            e.occurred_at,
            Timestamp::parse_rfc3339("2026-03-01T10:15:00Z").unwrap()
        );
        assert_eq!(
            e.kind,
            EventKind::OrderPlaced {
                order_id: "o-77".into(),
                amount: 1290.0,
                discount_pct: 5.0
            }
        );
        let e = decode(r#"{"event_id":"e-2","customer_id":"acme","type":"ticket.opened","occurred_at":"2026-03-02T08:00:00Z","ticket_id":"t-9","priority":"high","category":"discount_request","requested_discount_pct":20}"#).unwrap();
        assert_eq!(
            e.kind,
            EventKind::TicketOpened {
                ticket_id: "t-9".into(),
                priority: Priority::High,
                category: Cat::DiscountRequest
            }
        );
        let e = decode(r#"{"event_id":"e-3","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-02T09:30:00Z","user_id":"u-3"}"#).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Engagement {
                kind: "login".into()
            }
        );
        let e = decode(r#"{"event_id":"e-4","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":4}"#).unwrap();
        assert_eq!(e.kind, EventKind::Nps { score: 4 });
    }

    #[test]
    fn strings_borrow_from_the_input_when_unescaped() {
        let e = decode(r#"{"event_id":"e-1","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-02T09:30:00Z"}"#).unwrap();
        assert!(matches!(e.customer_id, Cow::Borrowed(_)));
        let e = decode(r#"{"event_id":"e-1","customer_id":"ac\u006de","type":"engagement.login","occurred_at":"2026-03-02T09:30:00Z"}"#).unwrap();
        assert_eq!(e.customer_id, "acme");
    }

    #[test]
    fn unknown_fields_and_nulls_are_ignored() {
        let e = decode(r#"{"event_id":"e-1","customer_id":"a","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":1,"new_field":{"x":[1,2]},"discount_pct":null}"#).unwrap();
        assert!(
            matches!(e.kind, EventKind::OrderPlaced { discount_pct, .. } if discount_pct == 0.0)
        );
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        assert_eq!(reason("{not json"), Reason::BadJson);
        assert_eq!(reason(""), Reason::BadJson);
        assert_eq!(reason("[1,2]"), Reason::WrongType);
        assert_eq!(
            reason(
                r#"{"customer_id":"a","type":"engagement.login","occurred_at":"2026-03-01T10:15:00Z"}"#
            ),
            Reason::MissingField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"a","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":"12"}"#
            ),
            Reason::WrongType
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"a","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":-1}"#
            ),
            Reason::OutOfRange
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"a","type":"order.shipped","occurred_at":"2026-03-01T10:15:00Z"}"#
            ),
            Reason::UnknownType
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"a","type":"engagement.login","occurred_at":"2026-03-01 10:15"}"#
            ),
            Reason::BadTimestamp
        );
        let big = format!(
            r#"{{"event_id":"e","customer_id":"a","type":"engagement.login","occurred_at":"2026-03-01T10:15:00Z","x":"{}"}}"#,
            "y".repeat(70_000)
        );
        assert_eq!(reason(&big), Reason::Oversized);
        assert_eq!(reason("\u{0}\u{ff}garbage"), Reason::BadJson);
    }

    #[test]
    fn invalid_utf8_is_bad_json_not_a_panic() {
        let bytes = b"{\"event_id\":\"\xff\xfe\"}";
        assert_eq!(
            decode_json(bytes, &Limits::default()).unwrap_err().reason,
            Reason::BadJson
        );
    }
}

#[cfg(test)]
mod long_values {
    use super::*;

    #[test]
    fn rejection_messages_never_carry_a_long_value() {
        let line = format!(
            r#"{{"event_id":"e","customer_id":"a","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":"{}"}}"#,
            "9".repeat(5_000)
        );
        let e = decode_json(line.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
        assert!(e.message.len() <= 300, "{} bytes", e.message.len());
    }
}
