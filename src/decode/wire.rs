//! Which decoder a Kafka message needs: by the topic's configured encoding, the
//! `content-type` header, or (in `auto`) the first byte; and the Confluent
//! schema-registry framing of protobuf messages.
//!
//! Confluent framing: magic byte 0, a 4-byte big-endian schema id, then (protobuf only)
//! the message-index path as a zigzag-varint count followed by zigzag-varint indexes,
//! then the protobuf payload. The path `[0]` (the first message type, ours) is written
//! either as the single byte 0 (the usual optimisation) or in full as count 1, index 0;
//! both are accepted. Any other path names another message type and is rejected.

use super::{decode_json, decode_protobuf, DecodeError, Limits, Reason};
use crate::event::Event;
pub use crate::vocab::Encoding;

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn framing(message: impl Into<String>) -> DecodeError {
    DecodeError::new(Reason::BadFraming, message)
}

/// Strips the Confluent framing from a protobuf message: (schema id, payload).
pub fn strip_confluent_protobuf(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if bytes.len() < 6 || bytes[0] != 0 {
        return Err(framing(
            "not Confluent framing: magic byte 0 and a 4-byte schema id expected",
        ));
    }
    let schema_id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let mut at = 5;
    let count =
        zigzag(varint(bytes, &mut at).ok_or_else(|| framing("truncated message-index count"))?);
    match count {
        // the optimised form of the path [0]
        0 => {}
        1 => {
            let index =
                zigzag(varint(bytes, &mut at).ok_or_else(|| framing("truncated message index"))?);
            if index != 0 {
                return Err(framing(format!(
                    "message index [{index}] is not churnsignal.v1.Event"
                )));
            }
        }
        n => {
            return Err(framing(format!(
                "message-index path of length {n} is not churnsignal.v1.Event"
            )))
        }
    }
    Ok((schema_id, &bytes[at..]))
}

/// Decodes one Kafka message of the given (resolved or configured) encoding.
pub fn decode_message(
    bytes: &[u8],
    encoding: Encoding,
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<Event<'static>, DecodeError> {
    match encoding.resolve(content_type, bytes) {
        Encoding::Json | Encoding::Auto => decode_json(bytes, limits).map(Event::into_owned),
        Encoding::Protobuf => decode_protobuf(bytes, limits),
        Encoding::ConfluentProtobuf => {
            let (_, payload) = strip_confluent_protobuf(bytes)?;
            decode_protobuf(payload, limits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::encode_protobuf;

    const JSON: &str = r#"{"event_id":"e-4","customer_id":"acme","type":"engagement.nps","occurred_at":"2026-03-03T12:00:00Z","score":4}"#;

    fn event() -> Event<'static> {
        decode_json(JSON.as_bytes(), &Limits::default())
            .unwrap()
            .into_owned()
    }

    fn framed(path: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 44];
        v.extend_from_slice(path);
        v.extend(encode_protobuf(&event()));
        v
    }

    #[test]
    fn every_encoding_decodes_to_the_same_event() {
        let pb = encode_protobuf(&event());
        // (bytes, topic encoding, content-type header)
        let cases: [(&[u8], Encoding, Option<&str>); 7] = [
            (JSON.as_bytes(), Encoding::Json, None),
            (&pb, Encoding::Protobuf, None),
            // both encodings of the message-index path [0]
            (&framed(&[0]), Encoding::ConfluentProtobuf, None),
            (&framed(&[2, 0]), Encoding::ConfluentProtobuf, None),
            // auto follows the first byte...
            (JSON.as_bytes(), Encoding::Auto, None),
            (&pb, Encoding::Auto, None),
            (&framed(&[0]), Encoding::Auto, None),
        ];
        for (bytes, encoding, content_type) in cases {
            let decoded = decode_message(bytes, encoding, content_type, &Limits::default());
            assert_eq!(decoded.unwrap(), event(), "{encoding:?}");
        }
        assert_eq!(strip_confluent_protobuf(&framed(&[0])).unwrap().0, 300);
    }

    #[test]
    fn the_content_type_header_wins() {
        let pb = encode_protobuf(&event());
        // ...and the header wins, also over the topic's configured encoding
        let decoded = decode_message(
            &pb,
            Encoding::Json,
            Some("application/x-protobuf"),
            &Limits::default(),
        );
        assert_eq!(decoded.unwrap(), event());
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }

    #[test]
    fn bad_framing_has_its_own_reason() {
        let l = Limits::default();
        for bytes in [
            vec![1, 0, 0, 0, 1, 0],
            vec![0, 0, 0],
            framed(&[2, 2]),
            framed(&[4, 0, 0]),
            vec![0, 0, 0, 0, 1, 0xff],
        ] {
            let e = decode_message(&bytes, Encoding::ConfluentProtobuf, None, &l).unwrap_err();
            assert_eq!(e.reason, Reason::BadFraming, "{bytes:?}: {e}");
        }
    }
}
