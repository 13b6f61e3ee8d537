//! Protobuf (`churnsignal.v1.Event`) into [`RawEvent`], and the reverse for producers,
//! tests and the generator.

use std::borrow::Cow;

use prost::Message;

use super::{validate, DecodeError, Limits, RawEvent, RawTime, Reason};
use crate::event::{Event, EventKind};
use crate::proto::v1 as pb;

/// Decodes and validates one protobuf-encoded event (plain protobuf, no framing).
pub fn decode_protobuf(bytes: &[u8], limits: &Limits) -> Result<Event<'static>, DecodeError> {
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
    let m = pb::Event::decode(bytes)
        .map_err(|e| DecodeError::new(Reason::BadProtobuf, e.to_string()))?;
    fn s(v: String) -> Option<Cow<'static, str>> {
        (!v.is_empty()).then_some(Cow::Owned(v))
    }
    let occurred_at = match m.occurred_at {
        None => None,
        Some(t) => {
            if !(0..1_000_000_000).contains(&t.nanos) {
                return Err(DecodeError::new(
                    Reason::BadTimestamp,
                    format!("`occurred_at.nanos` = {} is out of range", t.nanos),
                ));
            }
            let millis = t
                .seconds
                .checked_mul(1000)
                .and_then(|ms| ms.checked_add(i64::from(t.nanos) / 1_000_000))
                .ok_or_else(|| DecodeError::new(Reason::BadTimestamp, "`occurred_at` overflows"))?;
            Some(RawTime::Millis(millis))
        }
    };
    let raw = RawEvent {
        event_id: s(m.event_id),
        customer_id: s(m.customer_id),
        event_type: s(m.r#type),
        occurred_at,
        schema_version: m.schema_version.map(i64::from),
        order_id: m.order_id.map(Cow::Owned),
        amount: m.amount,
        currency: m.currency.map(Cow::Owned),
        discount_pct: m.discount_pct,
        items: m.items,
        ticket_id: m.ticket_id.map(Cow::Owned),
        priority: m.priority.map(Cow::Owned),
        category: m.category.map(Cow::Owned),
        requested_discount_pct: m.requested_discount_pct,
        csat: m.csat,
        user_id: m.user_id.map(Cow::Owned),
        feature: m.feature.map(Cow::Owned),
        score: m.score,
    };
    validate(raw, limits)
}

/// Encodes a domain event as protobuf (the inverse of [`decode_protobuf`]).
pub fn encode_protobuf(e: &Event<'_>) -> Vec<u8> {
    let mut m = pb::Event {
        event_id: e.event_id.to_string(),
        customer_id: e.customer_id.to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: e.occurred_at.0.div_euclid(1000),
            nanos: (e.occurred_at.0.rem_euclid(1000) * 1_000_000) as i32,
        }),
        schema_version: Some(1),
        ..Default::default()
    };
    m.r#type = e.kind.type_name().to_owned();
    match &e.kind {
        EventKind::OrderPlaced {
            order_id,
            amount,
            discount_pct,
        } => {
            m.order_id = Some(order_id.to_string());
            m.amount = Some(*amount);
            m.discount_pct = Some(*discount_pct);
        }
        EventKind::OrderCancelled { order_id, amount } => {
            m.order_id = Some(order_id.to_string());
            m.amount = *amount;
        }
        EventKind::OrderRefunded { order_id, amount } => {
            m.order_id = Some(order_id.to_string());
            m.amount = Some(*amount);
        }
        EventKind::TicketOpened {
            ticket_id,
            priority,
            category,
        } => {
            m.ticket_id = Some(ticket_id.to_string());
            m.priority = Some(priority.as_str().to_owned());
            m.category = Some(category.as_str().to_owned());
        }
        EventKind::TicketEscalated {
            ticket_id,
            priority,
        } => {
            m.ticket_id = Some(ticket_id.to_string());
            m.priority = priority.map(|p| p.as_str().to_owned());
        }
        EventKind::TicketReopened { ticket_id } => m.ticket_id = Some(ticket_id.to_string()),
        EventKind::TicketResolved { ticket_id, csat } => {
            m.ticket_id = Some(ticket_id.to_string());
            m.csat = csat.map(i64::from);
        }
        EventKind::Engagement { kind } => m.r#type = format!("engagement.{kind}"),
        EventKind::Nps { score } => m.score = Some(i64::from(*score)),
    }
    m.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_json;

    #[test]
    fn protobuf_and_json_decode_to_the_same_event() {
        let lines = [
            r#"{"event_id":"e-1","customer_id":"acme","type":"order.placed","occurred_at":"2026-03-01T10:15:00.123Z","order_id":"o-77","amount":1290.0,"discount_pct":5}"#,
            r#"{"event_id":"e-2","customer_id":"acme","type":"ticket.opened","occurred_at":"2026-03-02T08:00:00Z","ticket_id":"t-9","priority":"high","category":"discount_request"}"#,
            r#"{"event_id":"e-3","customer_id":"acme","type":"engagement.login","occurred_at":"2026-03-02T09:30:00Z"}"#,
            r#"{"event_id":"e-4","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":4}"#,
            r#"{"event_id":"e-5","customer_id":"acme","type":"ticket.resolved","occurred_at":"2026-03-03T12:00:00Z","ticket_id":"t-9","csat":2}"#,
            r#"{"event_id":"e-6","customer_id":"acme","type":"order.cancelled","occurred_at":"2026-03-03T12:00:00Z","order_id":"o-77"}"#,
        ];
        for l in lines {
            let from_json = decode_json(l.as_bytes(), &Limits::default()).unwrap();
            let bytes = encode_protobuf(&from_json);
            let from_pb = decode_protobuf(&bytes, &Limits::default()).unwrap();
            assert_eq!(from_json, from_pb, "{l}");
        }
    }

    #[test]
    fn garbage_is_bad_protobuf_and_empty_is_missing_fields() {
        let e = decode_protobuf(&[0xff, 0xff, 0xff], &Limits::default()).unwrap_err();
        assert_eq!(e.reason, Reason::BadProtobuf);
        let e = decode_protobuf(&[], &Limits::default()).unwrap_err();
        assert_eq!(e.reason, Reason::MissingField);
    }

    #[test]
    fn a_field_of_the_wrong_wire_type_is_bad_protobuf() {
        // field 11 (amount, double) sent as a varint
        let e = decode_protobuf(&[0x58, 0x01], &Limits::default()).unwrap_err();
        assert_eq!(e.reason, Reason::BadProtobuf);
    }
}
