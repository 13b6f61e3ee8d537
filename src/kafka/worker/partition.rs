//! A partition and what it owns: the engine, its inputs, their synchronization buffer,
//! its transactions (producer, held outputs, the input kept for a rewind) and its
//! guarantee's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::guarantee::GuaranteeState;
use super::transactional::KafkaTxn;
use super::txn::Transactions;
use super::{count_alert, Shared};
use crate::config::{Config, InputTopic};
use crate::decode::wire::decode_message;
use crate::decode::{DecodeError, Limits, Reason};
use crate::engine::Engine;
use crate::event::Event;
use crate::kafka::journal::Base;
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::producer::Delivery;
use crate::kafka::records::alert_record;
use crate::kafka::records::OutRecord;
use crate::kafka::sync::{Position, Synchronizer};
use crate::kafka::trace::Trace;
use crate::kafka::work::{Assigned, InMsg};
use crate::telemetry;
use crate::time::Timestamp;

/// A consumed message waiting for its turn (see [`crate::kafka::sync`]), decoded against the
/// wall-clock `now` it arrived at.
pub(super) struct Buffered {
    pub(super) msg: InMsg,
    pub(super) decoded: Result<Event<'static>, DecodeError>,
    pub(super) now: Timestamp,
}

/// A partition: one engine for partition `number` of every input topic, and what it
/// owns around it. Its methods (here, in `process`, `checkpoint` and `restore`) take
/// what the worker's partitions share as a [`Shared`]; one that fails for good
/// returns a [`Leave`], and the worker drops the partition.
pub(super) struct Partition {
    pub(super) number: i32,
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
    /// The delivery guarantee and its state: unacknowledged outputs or the journal.
    pub(super) guarantee: GuaranteeState,
    /// Something changed since the last checkpoint.
    pub(super) dirty: bool,
    /// Eviction counters already reported.
    pub(super) evicted: (u64, u64),
    /// When the state records were last written.
    pub(super) last_state: Instant,
    /// The next checkpoint writes the state records (revoked, draining, restored).
    pub(super) state_due: bool,
}

/// Why a partition leaves its worker outside a rebalance.
#[derive(Debug)]
pub(super) enum Leave {
    /// Its producer is unusable (fenced: another instance owns it): the service stops.
    Fatal(String),
    /// Stopping with a checkpoint that did not finish, or a rewind cancelled (the
    /// partition moved on, or shutdown gave up waiting): dropped as it is; the next
    /// owner restores its last commit.
    Dropped,
}

impl Partition {
    /// Sets the engine's customer cap (journaled: a replay must evict as it did).
    pub(super) fn set_cap(&mut self, n: u64) {
        self.guarantee.journal_cap(n);
        self.engine.set_max_customers(n);
    }

    /// Exactly-once: the journal numbers the inputs as the partition does now.
    pub(super) fn journal_matches(&self, topics: &[InputTopic]) -> bool {
        self.guarantee.journal().is_none_or(|j| {
            j.base.len() == self.inputs.len()
                && j.base
                    .iter()
                    .zip(self.inputs.keys())
                    .all(|(b, t)| b.name == topics[*t].name)
        })
    }

    /// The partition's inputs at the next offsets to apply, by topic name (`gone`
    /// inputs included).
    pub(super) fn positions<'t>(
        &self,
        topics: &'t [InputTopic],
        gone: bool,
    ) -> Vec<(&'t str, i64)> {
        self.inputs
            .iter()
            .filter(|(_, i)| gone || !i.gone)
            .filter_map(|(t, i)| Some((topics[*t].name.as_str(), i.next?)))
            .collect()
    }

    /// Reports customers the engine forgot since the last look.
    pub(super) fn note_evictions(&mut self, sh: &mut Shared) {
        let s = self.engine.stats();
        let (idle, cap) = (s.evicted_idle, s.evicted_cap);
        if idle > self.evicted.0 {
            telemetry::customers_evicted("idle", idle - self.evicted.0);
        }
        if cap > self.evicted.1 {
            telemetry::customers_evicted("cap", cap - self.evicted.1);
            let now = Instant::now();
            if sh
                .last_cap_warning
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                sh.last_cap_warning = Some(now);
                tracing::warn!(
                    partition = self.number,
                    cap = sh.cap_share,
                    evicted = cap,
                    "customer cap reached (engine.max_customers shared among this instance's partitions): the least recently active customers are forgotten early"
                );
            }
        }
        self.evicted = (idle, cap);
    }

    /// Takes the positions the consumer reports for input `topic` (of rebalance
    /// `epoch`): `Some(position)` where it stands, `None` gone from the brokers'
    /// metadata. Returns `None` if the report is not for the running input, else
    /// whether the input went just now.
    pub(super) fn report(
        &mut self,
        topics: &[InputTopic],
        topic: usize,
        epoch: u64,
        position: Option<Position>,
    ) -> Option<bool> {
        let p = self.number;
        let i = self.inputs.get_mut(&topic)?;
        if !i.active || i.epoch != epoch {
            return None;
        }
        match position {
            Some(position) => {
                if i.gone {
                    tracing::info!(partition = p, topic = %topics[topic].name, "input topic-partition back");
                }
                i.gone = false;
                self.sync.set_present(topic, true);
                self.sync.report(topic, position);
                Some(false)
            }
            None if !i.gone => {
                tracing::warn!(
                    partition = p,
                    topic = %topics[topic].name,
                    "input topic-partition gone from the brokers' metadata (topic deleted?): the partition goes on without it"
                );
                i.gone = true;
                self.sync.set_present(topic, false);
                Some(true)
            }
            None => Some(false),
        }
    }

    /// Input `topic` is revoked; returns true when none of the partition's inputs is
    /// assigned any more.
    pub(super) fn revoke(&mut self, topic: usize) -> bool {
        if let Some(i) = self.inputs.get_mut(&topic) {
            i.active = false;
        }
        self.sync.set_present(topic, false);
        self.inputs.values().all(|i| !i.active)
    }

    /// Takes the partition's inputs of a new assignment (rebalance `epoch`).
    pub(super) fn assign(&mut self, topics: &[InputTopic], epoch: u64, list: Vec<Assigned>) {
        for x in list {
            let next = self.inputs.get(&x.topic).and_then(|i| i.next);
            if let (Some(c), Some(n)) = (x.committed, next) {
                if c != n {
                    tracing::warn!(
                        partition = self.number,
                        topic = %topics[x.topic].name,
                        committed = c,
                        state = n,
                        "the group's committed offset differs from the offset the state reflects; the state's wins"
                    );
                }
            }
            let max_time = self.inputs.get(&x.topic).map_or(i64::MIN, |i| i.max_time);
            self.sync.set_present(x.topic, true);
            self.inputs.insert(
                x.topic,
                Input {
                    max_time,
                    progress: x.progress,
                    epoch,
                    next,
                    active: true,
                    gone: false,
                },
            );
        }
    }

    /// An idle partition: after `idle_timeout_secs` without events, and with no input
    /// behind (nothing buffered, nothing left to consume as far as the consumer
    /// knows), the wall clock stands in for event time (stream time = `now` minus the
    /// allowed lateness, as a watermark would be if events were flowing), so
    /// silence-driven signals fire even when a partition's input stops. Events arriving
    /// later with older times are late and handled as `engine.late_events` says.
    pub(super) fn idle_advance(
        &mut self,
        sh: &mut Shared,
        instant: Instant,
        now: Timestamp,
    ) -> Result<(), Leave> {
        let idle = Duration::from_secs(sh.cfg.kafka.idle_timeout_secs);
        if instant.saturating_duration_since(self.last_event) < idle
            || self.engine.max_event_time().is_none()
            || self.sync.behind()
        {
            return Ok(());
        }
        let lateness = sh.cfg.engine.allowed_lateness_secs as i64 * 1000;
        let target = Timestamp(now.0 - lateness);
        if self.engine.stream_time().is_some_and(|s| target <= s) {
            return Ok(());
        }
        telemetry::idle_advance();
        self.dirty = true;
        self.guarantee.journal_advance(target.0);
        let mut alerts = std::mem::take(&mut sh.alerts);
        alerts.clear();
        self.engine.advance_to_into(target, &mut alerts);
        // Alerts of the passing of time follow no input offset.
        sh.status.timer_alerts(alerts.len());
        let fmt = sh.cfg.kafka.alerts_format;
        let mut result = Ok(());
        for a in &mut alerts {
            a.emitted_at = now;
            count_alert(a);
            let d = Delivery {
                progress: None,
                pending: None,
                offset: -1,
                trace: Trace::default(),
                alert: true,
            };
            result = self.emit(sh, alert_record(a, fmt), d, false);
            if result.is_err() {
                break;
            }
        }
        sh.alerts = alerts;
        result
    }

    /// A partition leaves: an open transaction (nothing worth keeping: a failed
    /// checkpoint) is aborted, gauges reset.
    pub(super) fn close(self, sh: &Shared) {
        sh.full.clear_partition(self.number);
        self.tx.close(&mut || true);
        telemetry::partition_gone(self.number);
    }
}

/// Index of input `topic` among a partition's `inputs` (a journal's numbering).
pub(super) fn position_of(inputs: &BTreeMap<usize, Input>, topic: usize) -> usize {
    inputs
        .keys()
        .position(|t| *t == topic)
        .unwrap_or(usize::MAX)
}

/// A journal's inputs as the state records about to be written reflect a partition's
/// `inputs`.
pub(super) fn journal_base(inputs: &BTreeMap<usize, Input>, topics: &[InputTopic]) -> Vec<Base> {
    inputs
        .iter()
        .map(|(t, i)| Base {
            name: topics[*t].name.clone(),
            next: i.next,
            max_time: i.max_time,
        })
        .collect()
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
