//! The one place that decides what contract v1 requires of each event type.

use std::borrow::Cow;

use super::{DecodeError, Limits, RawEvent, RawTime, Reason};
use crate::event::{Category, Event, EventKind, Priority};
use crate::time::Timestamp;

const MAX_ID_BYTES: usize = 128;
const MAX_KIND_BYTES: usize = 64;

fn missing(field: &str) -> DecodeError {
    DecodeError::new(Reason::MissingField, format!("`{field}` is required"))
}

fn range(field: &str, value: impl std::fmt::Display, allowed: &str) -> DecodeError {
    DecodeError::new(
        Reason::OutOfRange,
        format!("`{field}` = {value} is out of range; allowed: {allowed}"),
    )
}

fn id<'a>(field: &str, v: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, DecodeError> {
    let v = v.ok_or_else(|| missing(field))?;
    if v.is_empty() || v.len() > MAX_ID_BYTES {
        return Err(range(
            field,
            format_args!("a string of {} bytes", v.len()),
            "1..=128 bytes",
        ));
    }
    Ok(v)
}

fn amount(field: &str, v: f64, max: f64) -> Result<f64, DecodeError> {
    if v.is_finite() && v >= 0.0 && v <= max {
        Ok(v)
    } else {
        Err(range(
            field,
            format!("{v:e}"),
            &format!("a number from 0 to {max:e} (input.max_amount)"),
        ))
    }
}

fn pct(field: &str, v: f64) -> Result<f64, DecodeError> {
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(range(field, v, "0..=100"))
    }
}

fn priority(v: &str) -> Result<Priority, DecodeError> {
    Priority::parse(v).ok_or_else(|| range("priority", v, "low, normal, high, urgent"))
}

fn is_kind_word(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KIND_BYTES
        && k.as_bytes()[0].is_ascii_lowercase()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Turns a raw event into a domain event, or says precisely why not.
pub fn validate<'a>(raw: RawEvent<'a>, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    let event_id = id("event_id", raw.event_id)?;
    let customer_id = id("customer_id", raw.customer_id)?;
    let event_type = raw.event_type.ok_or_else(|| missing("type"))?;
    if let Some(v) = raw.schema_version {
        if v != 1 {
            return Err(DecodeError::new(
                Reason::UnsupportedVersion,
                format!("`schema_version` = {v}; this build understands 1"),
            ));
        }
    }
    let occurred_at = match raw.occurred_at.ok_or_else(|| missing("occurred_at"))? {
        RawTime::Text(s) => Timestamp::parse_rfc3339(&s).ok_or_else(|| {
            DecodeError::new(
                Reason::BadTimestamp,
                format!(
                    "`occurred_at` = {:?} is not RFC 3339 with an offset",
                    truncate(&s)
                ),
            )
        })?,
        RawTime::Millis(m) => Timestamp(m),
    };
    if occurred_at < limits.min_event_time {
        return Err(DecodeError::new(
            Reason::TooOld,
            format!(
                "`occurred_at` = {occurred_at} is before {} (input.min_event_time)",
                limits.min_event_time
            ),
        ));
    }
    if let Some(now) = limits.now {
        if occurred_at.0 > now.0.saturating_add(limits.max_clock_skew_ms) {
            return Err(DecodeError::new(
                Reason::FutureTimestamp,
                format!(
                    "`occurred_at` = {occurred_at} is {:.0}s ahead of now ({now}); the clock skew limit is {}s",
                    (occurred_at.0 - now.0) as f64 / 1000.0,
                    limits.max_clock_skew_ms / 1000
                ),
            ));
        }
    }
    if let Some(c) = &raw.currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(range(
                "currency",
                truncate(c),
                "an ISO 4217 code such as EUR",
            ));
        }
    }
    if let Some(i) = raw.items {
        if i < 0 {
            return Err(range("items", i, "an integer >= 0"));
        }
    }
    if let Some(p) = raw.requested_discount_pct {
        pct("requested_discount_pct", p)?;
    }

    let kind = match event_type.as_ref() {
        "order.placed" => EventKind::OrderPlaced {
            order_id: id("order_id", raw.order_id)?,
            amount: amount(
                "amount",
                raw.amount.ok_or_else(|| missing("amount"))?,
                limits.max_amount,
            )?,
            discount_pct: pct("discount_pct", raw.discount_pct.unwrap_or(0.0))?,
        },
        "order.cancelled" => EventKind::OrderCancelled {
            order_id: id("order_id", raw.order_id)?,
            amount: raw
                .amount
                .map(|a| amount("amount", a, limits.max_amount))
                .transpose()?,
        },
        "order.refunded" => EventKind::OrderRefunded {
            order_id: id("order_id", raw.order_id)?,
            amount: amount(
                "amount",
                raw.amount.ok_or_else(|| missing("amount"))?,
                limits.max_amount,
            )?,
        },
        "ticket.opened" => EventKind::TicketOpened {
            ticket_id: id("ticket_id", raw.ticket_id)?,
            priority: raw
                .priority
                .as_deref()
                .map(priority)
                .transpose()?
                .unwrap_or(Priority::Normal),
            category: match raw.category.as_deref() {
                None => Category::Other,
                Some(c) => Category::parse(c).ok_or_else(|| {
                    range(
                        "category",
                        truncate(c),
                        "billing, technical, discount_request, cancellation, complaint, other",
                    )
                })?,
            },
        },
        "ticket.escalated" => EventKind::TicketEscalated {
            ticket_id: id("ticket_id", raw.ticket_id)?,
            priority: raw.priority.as_deref().map(priority).transpose()?,
        },
        "ticket.reopened" => EventKind::TicketReopened {
            ticket_id: id("ticket_id", raw.ticket_id)?,
        },
        "ticket.resolved" => EventKind::TicketResolved {
            ticket_id: id("ticket_id", raw.ticket_id)?,
            csat: match raw.csat {
                None => None,
                Some(c @ 1..=5) => Some(c as u8),
                Some(c) => return Err(range("csat", c, "an integer 1..=5")),
            },
        },
        "engagement.nps" => match raw.score.ok_or_else(|| missing("score"))? {
            s @ 0..=10 => EventKind::Nps { score: s as u8 },
            s => return Err(range("score", s, "an integer 0..=10")),
        },
        t => match t.strip_prefix("engagement.") {
            Some(k) if is_kind_word(k) => EventKind::Engagement {
                kind: match event_type {
                    Cow::Borrowed(b) => Cow::Borrowed(&b["engagement.".len()..]),
                    Cow::Owned(ref o) => Cow::Owned(o["engagement.".len()..].to_owned()),
                },
            },
            _ => {
                return Err(DecodeError::new(
                    Reason::UnknownType,
                    format!("`type` = {:?} is not a contract v1 type", truncate(t)),
                ))
            }
        },
    };
    Ok(Event {
        event_id,
        customer_id,
        occurred_at,
        kind,
    })
}

/// Keeps error messages short even for huge fields.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: &str) -> RawEvent<'static> {
        RawEvent {
            event_id: Some("e".into()),
            customer_id: Some("c".into()),
            event_type: Some(Cow::Owned(t.to_owned())),
            occurred_at: Some(RawTime::Millis(1_000)),
            ..Default::default()
        }
    }

    #[test]
    fn ids_must_be_1_to_128_bytes() {
        let mut r = raw("engagement.login");
        r.customer_id = Some("".into());
        assert_eq!(
            validate(r, &Limits::default()).unwrap_err().reason,
            Reason::OutOfRange
        );
        let mut r = raw("engagement.login");
        r.event_id = Some(Cow::Owned("x".repeat(129)));
        assert_eq!(
            validate(r, &Limits::default()).unwrap_err().reason,
            Reason::OutOfRange
        );
        let mut r = raw("engagement.login");
        r.event_id = Some(Cow::Owned("x".repeat(128)));
        assert!(validate(r, &Limits::default()).is_ok());
    }

    #[test]
    fn engagement_kind_must_be_a_lowercase_word() {
        assert!(validate(raw("engagement.feature_used"), &Limits::default()).is_ok());
        for bad in [
            "engagement.",
            "engagement.Login",
            "engagement.a b",
            "engagement",
        ] {
            assert_eq!(
                validate(raw(bad), &Limits::default()).unwrap_err().reason,
                Reason::UnknownType,
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_are_checked_per_field() {
        let cases: Vec<(RawEvent<'static>, &str)> = vec![
            (
                RawEvent {
                    score: Some(11),
                    ..raw("engagement.nps")
                },
                "score",
            ),
            (
                RawEvent {
                    csat: Some(0),
                    ticket_id: Some("t".into()),
                    ..raw("ticket.resolved")
                },
                "csat",
            ),
            (
                RawEvent {
                    priority: Some("asap".into()),
                    ticket_id: Some("t".into()),
                    ..raw("ticket.opened")
                },
                "priority",
            ),
            (
                RawEvent {
                    category: Some("rant".into()),
                    ticket_id: Some("t".into()),
                    ..raw("ticket.opened")
                },
                "category",
            ),
            (
                RawEvent {
                    order_id: Some("o".into()),
                    amount: Some(1.0),
                    discount_pct: Some(101.0),
                    ..raw("order.placed")
                },
                "discount_pct",
            ),
            (
                RawEvent {
                    order_id: Some("o".into()),
                    amount: Some(f64::NAN),
                    ..raw("order.placed")
                },
                "amount",
            ),
            (
                RawEvent {
                    order_id: Some("o".into()),
                    amount: Some(1.0),
                    currency: Some("euro".into()),
                    ..raw("order.placed")
                },
                "currency",
            ),
            (
                RawEvent {
                    order_id: Some("o".into()),
                    amount: Some(1.0),
                    items: Some(-2),
                    ..raw("order.placed")
                },
                "items",
            ),
        ];
        for (r, field) in cases {
            let e = validate(r, &Limits::default()).unwrap_err();
            assert_eq!(e.reason, Reason::OutOfRange, "{field}");
            assert!(e.message.contains(field), "{} names {field}", e.message);
        }
    }

    #[test]
    fn required_fields_per_type() {
        for (t, field) in [
            ("order.placed", "order_id"),
            ("order.refunded", "order_id"),
            ("ticket.opened", "ticket_id"),
            ("engagement.nps", "score"),
        ] {
            let e = validate(raw(t), &Limits::default()).unwrap_err();
            assert_eq!(e.reason, Reason::MissingField);
            assert!(e.message.contains(field));
        }
        let r = RawEvent {
            order_id: Some("o".into()),
            ..raw("order.placed")
        };
        assert!(validate(r, &Limits::default())
            .unwrap_err()
            .message
            .contains("amount"));
    }

    #[test]
    fn future_timestamps_beyond_the_skew_are_rejected() {
        let limits = Limits {
            now: Some(Timestamp(0)),
            max_clock_skew_ms: 500,
            ..Limits::default()
        };
        assert_eq!(
            validate(raw("engagement.login"), &limits)
                .unwrap_err()
                .reason,
            Reason::FutureTimestamp
        );
        let limits = Limits {
            max_clock_skew_ms: 1_000,
            ..limits
        };
        assert!(validate(raw("engagement.login"), &limits).is_ok());
    }

    #[test]
    fn events_before_the_minimum_time_and_amounts_over_the_maximum_are_refused() {
        let limits = Limits {
            min_event_time: Timestamp(946_684_800_000),
            max_amount: 1e12,
            ..Limits::default()
        };
        let e = validate(raw("order.placed"), &limits).unwrap_err();
        assert_eq!(e.reason, Reason::TooOld, "{e}");
        assert!(e.message.contains("min_event_time"), "{e}");
        let mut r = raw("order.placed");
        r.occurred_at = Some(RawTime::Millis(1_767_225_600_000));
        r.order_id = Some("o".into());
        r.amount = Some(1.7e308);
        let e = validate(r, &limits).unwrap_err();
        assert_eq!(e.reason, Reason::OutOfRange);
        assert!(e.message.contains("max_amount"), "{e}");
    }

    #[test]
    fn control_characters_in_a_message_are_escaped() {
        let e = DecodeError::new(Reason::OutOfRange, "id \"a\nline 999: ok\u{1b}[2J\"");
        assert!(!e.message.chars().any(char::is_control), "{}", e.message);
        assert!(
            e.message.contains("\\n") && e.message.contains("\\u{1b}"),
            "{}",
            e.message
        );
    }

    #[test]
    fn only_schema_version_1_is_understood() {
        let r = RawEvent {
            schema_version: Some(2),
            ..raw("engagement.login")
        };
        assert_eq!(
            validate(r, &Limits::default()).unwrap_err().reason,
            Reason::UnsupportedVersion
        );
        let r = RawEvent {
            schema_version: Some(1),
            ..raw("engagement.login")
        };
        assert!(validate(r, &Limits::default()).is_ok());
    }
}
