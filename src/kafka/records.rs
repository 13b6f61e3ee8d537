//! The Kafka records churnsignal produces, built without a broker: alerts (keyed by
//! customer, with `content-type`, `alert-status` and CloudEvents binary-mode `ce_*`
//! headers) and dead letters (the original key, value and headers, plus headers naming
//! where the message came from and why it was rejected).

use crate::alert::Alert;
use crate::decode::DecodeError;
pub use crate::vocab::AlertFormat;

/// A record to produce: key, payload and headers (in order; names may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// CloudEvents `source` of every alert.
pub const CE_SOURCE: &str = "churnsignal";

/// The record of one alert: key = customer id; `ce_id` = `alert_id:sequence`, the
/// idempotency key downstream.
pub fn alert_record(alert: &Alert, format: AlertFormat) -> OutRecord {
    let payload = match format {
        AlertFormat::Json => alert.to_json().into_bytes(),
        AlertFormat::Protobuf => alert.to_protobuf(),
    };
    let h = |k: &str, v: String| (k.to_owned(), v.into_bytes());
    OutRecord {
        key: Some(alert.customer_id.clone().into_bytes()),
        payload,
        headers: vec![
            h("content-type", format.content_type().to_owned()),
            h("alert-status", alert.status.as_str().to_owned()),
            h("ce_specversion", "1.0".to_owned()),
            h("ce_id", format!("{}:{}", alert.alert_id, alert.sequence)),
            h("ce_source", CE_SOURCE.to_owned()),
            h(
                "ce_type",
                format!("dev.churnsignal.alert.{}", alert.status.as_str()),
            ),
            h("ce_subject", alert.customer_id.clone()),
            h("ce_time", alert.emitted_at.to_rfc3339()),
        ],
    }
}

/// Where a rejected message came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Dead-letter header names (stable: downstream tooling filters on them).
pub mod dead_letter_headers {
    /// Source topic.
    pub const TOPIC: &str = "churnsignal-source-topic";
    /// Source partition (decimal).
    pub const PARTITION: &str = "churnsignal-source-partition";
    /// Source offset (decimal).
    pub const OFFSET: &str = "churnsignal-source-offset";
    /// Machine-readable reason code (`bad_json`, `missing_field`, ...).
    pub const REASON: &str = "churnsignal-reason";
    /// Short human message (at most 300 bytes).
    pub const MESSAGE: &str = "churnsignal-message";
}

/// The dead letter of a rejected message: its original key, value and headers,
/// untouched, followed by the headers of [`dead_letter_headers`].
pub fn dead_letter_record(
    source: Source<'_>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(String, Vec<u8>)],
    error: &DecodeError,
) -> OutRecord {
    use dead_letter_headers as n;
    let mut out = headers.to_vec();
    out.push((n::TOPIC.to_owned(), source.topic.as_bytes().to_vec()));
    out.push((
        n::PARTITION.to_owned(),
        source.partition.to_string().into_bytes(),
    ));
    out.push((n::OFFSET.to_owned(), source.offset.to_string().into_bytes()));
    out.push((
        n::REASON.to_owned(),
        error.reason.code().as_bytes().to_vec(),
    ));
    out.push((n::MESSAGE.to_owned(), error.message.as_bytes().to_vec()));
    OutRecord {
        key: key.map(<[u8]>::to_vec),
        payload: value.to_vec(),
        headers: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_json, Limits, Reason};
    use crate::engine::Engine;

    fn an_alert() -> Alert {
        let mut engine = Engine::new(crate::config::EngineSettings::default());
        let e = decode_json(
            br#"{"event_id":"e-4","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":2}"#,
            &Limits::default(),
        )
        .unwrap();
        engine.apply(&e).pop().expect("a detractor opens an alert")
    }

    fn header<'a>(r: &'a OutRecord, name: &str) -> Vec<&'a str> {
        r.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
            .collect()
    }

    #[test]
    fn alert_records_are_keyed_by_customer_and_carry_cloudevents_headers() {
        let a = an_alert();
        let r = alert_record(&a, AlertFormat::Json);
        assert_eq!(r.key.as_deref(), Some(&b"acme"[..]));
        assert_eq!(header(&r, "content-type"), vec!["application/json"]);
        assert_eq!(header(&r, "alert-status"), vec!["open"]);
        assert_eq!(
            header(&r, "ce_id"),
            vec![format!("{}:1", a.alert_id).as_str()]
        );
        assert_eq!(header(&r, "ce_type"), vec!["dev.churnsignal.alert.open"]);
        assert_eq!(header(&r, "ce_time"), vec!["2026-03-03T12:00:00Z"]);
        let back: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(back["alert_id"], a.alert_id.as_str());
        let pb = alert_record(&a, AlertFormat::Protobuf);
        assert_eq!(header(&pb, "content-type"), vec!["application/x-protobuf"]);
        assert_eq!(pb.payload, a.to_protobuf());
    }

    #[test]
    fn dead_letters_keep_the_original_bytes_and_say_why() {
        let value = b"{not json".to_vec();
        let original = vec![("trace-id".to_owned(), b"abc".to_vec())];
        let err = decode_json(&value, &Limits::default()).unwrap_err();
        assert_eq!(err.reason, Reason::BadJson);
        let r = dead_letter_record(
            Source {
                topic: "orders",
                partition: 3,
                offset: 42,
            },
            Some(b"acme"),
            &value,
            &original,
            &err,
        );
        assert_eq!(r.payload, value);
        assert_eq!(r.key.as_deref(), Some(&b"acme"[..]));
        assert_eq!(
            r.headers[0], original[0],
            "original headers first, untouched"
        );
        assert_eq!(header(&r, dead_letter_headers::TOPIC), vec!["orders"]);
        assert_eq!(header(&r, dead_letter_headers::PARTITION), vec!["3"]);
        assert_eq!(header(&r, dead_letter_headers::OFFSET), vec!["42"]);
        assert_eq!(header(&r, dead_letter_headers::REASON), vec!["bad_json"]);
        assert!(!header(&r, dead_letter_headers::MESSAGE)[0].is_empty());
    }
}
