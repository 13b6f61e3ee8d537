//! A partition engine and what it owns: the engine, its inputs, their
//! synchronization buffer, its transactional producer and the input kept for a rewind.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::transactional::KafkaTxn;
use super::txn::Transactions;
use crate::config::{Config, InputTopic};
use crate::decode::wire::decode_message;
use crate::decode::{DecodeError, Limits, Reason};
use crate::engine::Engine;
use crate::event::Event;
use crate::kafka::journal::{Base, Journal};
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::records::OutRecord;
use crate::kafka::sync::Synchronizer;
use crate::kafka::work::InMsg;
use crate::time::Timestamp;

/// A consumed message waiting for its turn (see [`crate::kafka::sync`]), decoded against the
/// wall-clock `now` it arrived at.
pub(super) struct Buffered {
    pub(super) msg: InMsg,
    pub(super) decoded: Result<Event<'static>, DecodeError>,
    pub(super) now: Timestamp,
}

/// A partition engine: one engine for partition `p` of every input topic.
pub(super) struct PartitionEngine {
    pub(super) engine: Engine,
    /// Per input topic of this partition: tracker, epoch, and the next offset to apply.
    pub(super) inputs: BTreeMap<usize, Input>,
    /// The inputs' consumed messages, taken in event-time order (indexed by input topic).
    pub(super) sync: Synchronizer<Buffered>,
    /// When an input's idle time runs out (worker clock, ms): the partition may go on then.
    pub(super) wake: Option<u64>,
    pub(super) last_event: Instant,
    /// Its transactions: producer, phase, outputs held for the next one, and the input
    /// since the last commit, kept for a rewind (see [`super::txn`]).
    pub(super) tx: Transactions<KafkaTxn, InMsg>,
    /// Something changed since the last checkpoint.
    pub(super) dirty: bool,
    /// At-least-once outputs not acknowledged yet.
    pub(super) pending: Arc<AtomicI64>,
    /// Eviction counters already reported.
    pub(super) evicted: (u64, u64),
    /// Exactly-once: the input since the last state records (see [`crate::kafka::journal`]).
    pub(super) journal: Journal,
    /// When the state records were last written.
    pub(super) last_state: Instant,
    /// The next checkpoint writes the state records (revoked, draining, restored).
    pub(super) state_due: bool,
}

impl PartitionEngine {
    /// Index of input `topic` among the partition's inputs (a journal's numbering).
    pub(super) fn position(&self, topic: usize) -> usize {
        self.inputs
            .keys()
            .position(|t| *t == topic)
            .unwrap_or(usize::MAX)
    }

    /// The journal's inputs as the state records about to be written reflect them.
    pub(super) fn journal_base(&self, topics: &[InputTopic]) -> Vec<Base> {
        self.inputs
            .iter()
            .map(|(t, i)| Base {
                name: topics[*t].name.clone(),
                next: i.next,
                max_time: i.max_time,
            })
            .collect()
    }

    /// Sets the engine's customer cap (journaled: a replay must evict as it did).
    pub(super) fn set_cap(&mut self, n: u64, eos: bool) {
        if eos {
            self.journal.cap(n);
        }
        self.engine.set_max_customers(n);
    }

    /// The journal numbers the inputs as the partition does now.
    pub(super) fn journal_matches(&self, topics: &[InputTopic]) -> bool {
        self.journal.base.len() == self.inputs.len()
            && self
                .journal
                .base
                .iter()
                .zip(self.inputs.keys())
                .all(|(b, t)| b.name == topics[*t].name)
    }
}

/// Bit `k` of an input mask.
pub(super) fn bit(k: usize) -> u64 {
    1u64.checked_shl(k as u32).unwrap_or(0)
}

/// How journals written by builds before stream-time synchronization (see
/// [`crate::kafka::sync`]) held stream time back: at the minimum over the partition's inputs in
/// `live` of their latest event time, minus the allowed lateness. A journal's replay
/// must give the engine exactly what it was given, so runs recorded with a mask replay
/// with it; this build records none (0: no limit), since taking the inputs' messages in
/// event-time order is what holds stream time back now.
pub(super) fn cap_watermark(
    inputs: &mut BTreeMap<usize, Input>,
    engine: &mut Engine,
    topic: usize,
    t: Timestamp,
    live: u64,
    lateness: i64,
) {
    if let Some(i) = inputs.get_mut(&topic) {
        i.max_time = i.max_time.max(t.0);
    }
    let limit = inputs
        .values()
        .enumerate()
        .filter(|(k, i)| live & bit(*k) != 0 && i.max_time != i64::MIN)
        .map(|(_, i)| i.max_time)
        .min();
    engine.set_watermark_limit(limit.map(|m| Timestamp(m.saturating_sub(lateness))));
}

/// Decodes and checks one input message as the partition's engine takes it, against
/// wall-clock `now` (events too far ahead of it are refused). Shared by live
/// processing and a journal's replay.
pub(super) fn decode_input(
    cfg: &Config,
    topic: &InputTopic,
    m: &InMsg,
    now: Timestamp,
) -> Result<Event<'static>, DecodeError> {
    let limits = Limits::from_input(&cfg.input, Some(now));
    decode_message(m.value(), topic.encoding, m.content_type(), &limits)
        .and_then(|e| check_placement(e, topic, m.key()))
}

pub(super) struct Input {
    /// Latest event time seen on this input (`i64::MIN` before the first).
    pub(super) max_time: i64,
    pub(super) progress: Arc<Mutex<PartitionProgress>>,
    pub(super) epoch: u64,
    /// The next offset to apply: what the state already holds is skipped.
    pub(super) next: Option<i64>,
    /// Assigned now.
    pub(super) active: bool,
    /// Gone from the brokers' metadata (its topic deleted): not waited for, and no
    /// offset of it is committed (the broker would refuse the whole commit).
    pub(super) gone: bool,
}

impl Input {
    /// An input of a restored partition, not assigned yet.
    pub(super) fn restored(epoch: u64, next: Option<i64>) -> Input {
        Input {
            max_time: i64::MIN,
            progress: Arc::new(Mutex::new(PartitionProgress::default())),
            epoch,
            next,
            active: false,
            gone: false,
        }
    }
}

pub(super) fn is_dead_letter(r: &OutRecord) -> bool {
    r.headers
        .iter()
        .any(|(k, _)| k == crate::kafka::records::dead_letter_headers::REASON)
}

/// The event's metric label: its contract type, with every engagement kind but NPS
/// folded into `engagement.activity` (kinds are open-ended; labels must stay bounded).
pub(super) fn event_label(e: &Event<'_>) -> &'static str {
    match e.kind.type_name() {
        "engagement" => "engagement.activity",
        t => t,
    }
}

/// An event must sit on a topic of its family, keyed by its customer.
pub(super) fn check_placement<'a>(
    e: Event<'a>,
    topic: &InputTopic,
    key: Option<&[u8]>,
) -> Result<Event<'a>, DecodeError> {
    let family = e.kind.family();
    if !topic.families.contains(&family) {
        return Err(DecodeError::new(
            Reason::WrongTopic,
            format!(
                "a {} event on topic {}, which carries {:?} events",
                e.kind.type_name(),
                topic.name,
                topic.families
            ),
        ));
    }
    match key {
        Some(k) if k == e.customer_id.as_bytes() => Ok(e),
        Some(_) => Err(DecodeError::new(
            Reason::KeyMismatch,
            "the message key differs from customer_id; events are keyed by customer_id",
        )),
        None => Err(DecodeError::new(
            Reason::KeyMismatch,
            "the message has no key; events are keyed by customer_id",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_json;
    use crate::event::Family;

    fn topic(families: Vec<Family>) -> InputTopic {
        InputTopic {
            name: "t".into(),
            families,
            encoding: crate::decode::wire::Encoding::Json,
        }
    }

    #[test]
    fn events_must_sit_on_their_familys_topic_keyed_by_customer() {
        let json = br#"{"event_id":"e","customer_id":"acme","type":"order.placed","occurred_at":"2026-03-01T10:15:00Z","order_id":"o","amount":5}"#;
        let e = || decode_json(json, &Limits::default()).unwrap();
        assert!(check_placement(e(), &topic(vec![Family::Orders]), Some(b"acme")).is_ok());
        let wrong = check_placement(e(), &topic(vec![Family::Engagement]), Some(b"acme"));
        assert_eq!(wrong.unwrap_err().reason, Reason::WrongTopic);
        let shared = topic(vec![Family::Engagement, Family::Orders]);
        assert!(check_placement(e(), &shared, Some(b"acme")).is_ok());
        let other = check_placement(e(), &shared, Some(b"globex"));
        assert_eq!(other.unwrap_err().reason, Reason::KeyMismatch);
        let none = check_placement(e(), &shared, None);
        assert_eq!(none.unwrap_err().reason, Reason::KeyMismatch);
    }
}
