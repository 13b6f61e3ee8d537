//! Worker threads: each owns the partition engines of the partitions that hash to it
//! (partition number modulo the worker count), so a customer's events, which share a
//! partition, always meet in one engine on one thread. A worker decodes, validates,
//! applies, and hands alerts and dead letters to the producer, registering each input
//! offset's outputs with its partition's commit tracker *before* producing them.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::Message;

use super::offsets::PartitionProgress;
use super::records::{alert_record, dead_letter_record, OutRecord, Source};
use super::runtime::{Delivery, ProducerCtx, Status};
use crate::alert::{Alert, HealthRecord};
use crate::config::{Config, InputTopic};
use crate::decode::wire::decode_message;
use crate::decode::{DecodeError, Limits, Reason};
use crate::engine::{Engine, Outcome};
use crate::event::Event;
use crate::telemetry;
use crate::time::Timestamp;

/// One consumed input message, copied out of librdkafka in one allocation (key and
/// value together; headers only when the message has any).
pub(crate) struct InMsg {
    /// Index into the input topics.
    pub topic: usize,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, ms (-1 if none).
    pub timestamp_ms: i64,
    /// Rebalance epoch at which it was polled; stale ones are dropped.
    pub epoch: u64,
    /// Key length in `data`, `None` for a message without key.
    key_len: Option<u32>,
    /// Key, then value.
    data: Box<[u8]>,
    /// Headers, in order (a null value is kept as empty).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InMsg {
    /// Copies what a worker needs out of a consumed message.
    pub fn new(topic: usize, epoch: u64, m: &rdkafka::message::BorrowedMessage<'_>) -> InMsg {
        let key = m.key();
        let value = m.payload().unwrap_or(&[]);
        let mut data = Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.len());
        if let Some(k) = key {
            data.extend_from_slice(k);
        }
        data.extend_from_slice(value);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or(&[]).to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        InMsg {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
            epoch,
            key_len: key.map(|k| k.len() as u32),
            data: data.into_boxed_slice(),
            headers,
        }
    }

    /// The message key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.data[..n as usize])
    }

    /// The message value (empty for a null value).
    pub fn value(&self) -> &[u8] {
        &self.data[self.key_len.unwrap_or(0) as usize..]
    }

    fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A topic-partition handed to a worker.
pub(crate) struct Assigned {
    pub topic: usize,
    pub partition: i32,
    pub progress: Arc<Mutex<PartitionProgress>>,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
}

/// What a worker is asked to do, in order.
pub(crate) enum Work {
    /// Process these messages.
    Batch(Vec<InMsg>),
    /// These topic-partitions are now ours (possibly none: then parked engines go).
    Assign(u64, Vec<Assigned>),
    /// These topic-partitions are no longer ours; reply when done.
    Revoke(Vec<(usize, i32)>, SyncSender<()>),
    /// A customer's health record.
    Query(String, SyncSender<Option<HealthRecord>>),
    /// Everything before this is processed; reply.
    Drain(SyncSender<()>),
}

/// A partition engine: one engine for partition `p` of every input topic.
struct PartitionEngine {
    engine: Engine,
    /// Per input topic of this partition: tracker, epoch, and the next offset to apply.
    inputs: BTreeMap<usize, Input>,
    last_event: Instant,
}

impl PartitionEngine {
    /// Stream time is the minimum over the partition's input topics of their latest
    /// event time, minus the allowed lateness: a topic behind the others (catching up
    /// after a restart: the consumer fetches topics by bytes, not by time) keeps its
    /// events on time and holds back silence-driven signals until it is in. Topics with
    /// no event yet, and topics idle for `idle`, do not hold it back.
    fn cap_watermark(
        &mut self,
        topic: usize,
        t: Timestamp,
        now: Instant,
        idle: Duration,
        lateness: i64,
    ) {
        if let Some(i) = self.inputs.get_mut(&topic) {
            i.max_time = i.max_time.max(t.0);
            i.last_event = now;
        }
        let limit = self
            .inputs
            .values()
            .filter(|i| {
                i.active
                    && i.max_time != i64::MIN
                    && now.saturating_duration_since(i.last_event) < idle
            })
            .map(|i| i.max_time)
            .min();
        self.engine
            .set_watermark_limit(limit.map(|m| Timestamp(m.saturating_sub(lateness))));
    }
}

struct Input {
    /// Latest event time seen on this input (`i64::MIN` before the first).
    max_time: i64,
    /// When its latest event arrived.
    last_event: Instant,
    progress: Arc<Mutex<PartitionProgress>>,
    epoch: u64,
    /// The next offset to apply: what was applied before a rebalance is skipped after it.
    next: Option<i64>,
    /// Assigned now (a revoked input keeps `next` in case it comes back).
    active: bool,
}

pub(crate) struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub inputs: Arc<Vec<InputTopic>>,
    pub producer: ThreadedProducer<ProducerCtx>,
    pub status: Arc<Status>,
    engines: BTreeMap<i32, PartitionEngine>,
    /// Revoked engines, kept until the next assignment says whether they come back.
    parked: BTreeMap<i32, PartitionEngine>,
    consumed: BTreeMap<(usize, &'static str), Counter>,
    dead: BTreeMap<(usize, &'static str), Counter>,
    late: Counter,
    duplicate: Counter,
    queue_full: Counter,
    alerts: Vec<Alert>,
    out: Vec<OutRecord>,
    last_gauges: Instant,
}

/// How long a worker blocks for work before it looks at idle partitions.
const TICK: Duration = Duration::from_millis(200);

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        inputs: Arc<Vec<InputTopic>>,
        producer: ThreadedProducer<ProducerCtx>,
        status: Arc<Status>,
    ) -> Worker {
        Worker {
            id,
            cfg,
            inputs,
            producer,
            status,
            engines: BTreeMap::new(),
            parked: BTreeMap::new(),
            consumed: BTreeMap::new(),
            dead: BTreeMap::new(),
            late: telemetry::late_events(),
            duplicate: telemetry::duplicate_events(),
            queue_full: telemetry::producer_queue_full(),
            alerts: Vec::new(),
            out: Vec::new(),
            last_gauges: Instant::now(),
        }
    }

    /// Runs until the channel closes or the service stops for good.
    pub fn run(mut self, rx: Receiver<Work>) {
        let mut last_tick = Instant::now();
        loop {
            match rx.recv_timeout(TICK) {
                Ok(work) => self.handle(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.status.beat_at(1 + self.id, now);
            if now.saturating_duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
        }
        for p in self.engines.keys() {
            telemetry::partition_state(*p, 0, 0, None);
        }
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Batch(msgs) => {
                let n = msgs.len() as i64;
                let now = wall_now();
                let instant = Instant::now();
                let (mut events, mut alerts) = (0, 0);
                for m in msgs {
                    if let Some(a) = self.process(m, now, instant) {
                        events += 1;
                        alerts += a;
                    }
                }
                self.status.processed(events, alerts);
                self.status.dequeued(n);
            }
            Work::Assign(epoch, list) => self.assign(epoch, list),
            Work::Revoke(list, reply) => {
                for (topic, partition) in list {
                    let Some(pe) = self.engines.get_mut(&partition) else {
                        continue;
                    };
                    if let Some(i) = pe.inputs.get_mut(&topic) {
                        i.active = false;
                    }
                    if pe.inputs.values().all(|i| !i.active) {
                        let pe = self.engines.remove(&partition).expect("present");
                        self.parked.insert(partition, pe);
                    }
                }
                let _ = reply.send(());
            }
            Work::Query(id, reply) => {
                let found = self
                    .engines
                    .values_mut()
                    .find_map(|pe| pe.engine.health_record(&id));
                let _ = reply.send(found);
            }
            Work::Drain(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Takes the new assignment. A parked engine comes back only if the group's
    /// committed offsets are not past what it already applied (nobody else moved the
    /// partition on meanwhile); it then skips what it already applied. Otherwise the
    /// partition starts with an empty engine from the committed offset.
    fn assign(&mut self, epoch: u64, list: Vec<Assigned>) {
        for a in list {
            if !self.engines.contains_key(&a.partition) {
                let pe = match self.parked.remove(&a.partition) {
                    Some(pe) => pe,
                    None => PartitionEngine {
                        engine: Engine::new(self.cfg.as_ref().clone()),
                        inputs: BTreeMap::new(),
                        last_event: Instant::now(),
                    },
                };
                self.engines.insert(a.partition, pe);
            }
            let pe = self.engines.get_mut(&a.partition).expect("inserted");
            let next = pe.inputs.get(&a.topic).and_then(|i| i.next);
            let max_time = pe.inputs.get(&a.topic).map_or(i64::MIN, |i| i.max_time);
            let stale = matches!((a.committed, next), (Some(c), Some(n)) if c > n);
            if stale {
                tracing::info!(
                    partition = a.partition,
                    topic = %self.inputs[a.topic].name,
                    "the group moved past this instance's state of the partition; starting it afresh"
                );
                pe.engine = Engine::new(self.cfg.as_ref().clone());
                for i in pe.inputs.values_mut() {
                    i.next = None;
                    i.max_time = i64::MIN;
                }
            }
            pe.inputs.insert(
                a.topic,
                Input {
                    max_time: if stale { i64::MIN } else { max_time },
                    last_event: Instant::now(),
                    progress: a.progress,
                    epoch,
                    next: if stale { None } else { next },
                    active: true,
                },
            );
        }
        // Parked engines that did not come back belong to someone else now.
        for (p, _) in std::mem::take(&mut self.parked) {
            telemetry::partition_state(p, 0, 0, None);
        }
    }

    /// Processes one message; returns the alerts it caused, `None` if it was skipped.
    fn process(&mut self, m: InMsg, now: Timestamp, instant: Instant) -> Option<u64> {
        let partition = m.partition;
        let offset = m.offset;
        // Revoked meanwhile (the new owner reads it again), polled before a rebalance,
        // or already applied before one: skipped.
        let pe = self.engines.get_mut(&partition)?;
        let input = pe.inputs.get_mut(&m.topic)?;
        if !input.active || input.epoch != m.epoch || input.next.is_some_and(|n| offset < n) {
            return None;
        }
        input.next = Some(offset + 1);
        let progress = input.progress.clone();
        pe.last_event = instant;
        let topic = &self.inputs[m.topic];
        let limits = Limits {
            max_event_bytes: self.cfg.input.max_event_bytes,
            max_clock_skew_ms: self.cfg.input.max_clock_skew_secs as i64 * 1000,
            now: Some(now),
        };
        let payload = m.value();
        let decoded = decode_message(payload, topic.encoding, m.content_type(), &limits)
            .and_then(|e| check_placement(e, topic, m.key()));
        self.out.clear();
        match decoded {
            Ok(event) => {
                let ty = event_label(&event);
                self.consumed
                    .entry((m.topic, ty))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, ty))
                    .increment(1);
                self.alerts.clear();
                let idle = Duration::from_secs(self.cfg.kafka.idle_timeout_secs);
                let lateness = self.cfg.engine.lateness_ms();
                pe.cap_watermark(m.topic, event.occurred_at, instant, idle, lateness);
                match pe.engine.apply_into(&event, &mut self.alerts) {
                    Outcome::Duplicate => self.duplicate.increment(1),
                    Outcome::AppliedLate | Outcome::DroppedLate => self.late.increment(1),
                    _ => {}
                }
                for a in &mut self.alerts {
                    a.emitted_at = now;
                    count_alert(a);
                    self.out.push(alert_record(a, self.cfg.kafka.alerts_format));
                }
            }
            Err(e) => {
                let reason = e.reason.code();
                self.consumed
                    .entry((m.topic, "invalid"))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, "invalid"))
                    .increment(1);
                self.dead
                    .entry((m.topic, reason))
                    .or_insert_with(|| telemetry::dead_letters(&topic.name, reason))
                    .increment(1);
                self.out.push(dead_letter_record(
                    Source {
                        topic: &topic.name,
                        partition,
                        offset,
                    },
                    m.key(),
                    payload,
                    &m.headers,
                    &e,
                ));
                self.status.dead_lettered();
            }
        }
        let n_alerts = if self.out.first().is_some_and(is_dead_letter) {
            0
        } else {
            self.out.len()
        };
        if let Err(e) = progress
            .lock()
            .expect("progress lock")
            .processed(offset, self.out.len() as u32)
        {
            tracing::error!(error = %e, "offset tracking");
        }
        let ts = m.timestamp_ms;
        for rec in std::mem::take(&mut self.out) {
            let dead = is_dead_letter(&rec);
            let delivery = Delivery {
                progress: Some(progress.clone()),
                offset,
                input_ts_ms: ts,
                alert: !dead,
            };
            let cfg = self.cfg.clone();
            let topic = if dead {
                &cfg.kafka.topics.dead_letters
            } else {
                &cfg.kafka.topics.alerts
            };
            self.produce(topic, rec, delivery);
        }
        Some(n_alerts as u64)
    }

    /// Sends one record, waiting while the producer queue is full (back-pressure). At
    /// shutdown past the deadline the record is abandoned: its input offset is then
    /// never committed, so it is produced again after restart.
    fn produce(&mut self, topic: &str, rec: OutRecord, delivery: Delivery) {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(delivery))
            .payload(&rec.payload)
            .headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((e, back)) => {
                    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
                    if !matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        self.status.fail(format!("cannot produce to {topic}: {e}"));
                        return;
                    }
                    if self.status.abandon_sends() {
                        return;
                    }
                    self.queue_full.increment(1);
                    self.status.beat(1 + self.id);
                    std::thread::sleep(Duration::from_millis(5));
                    record = back;
                }
            }
        }
    }

    /// Idle partitions: after `idle_timeout_secs` without events, the wall clock stands
    /// in for event time (stream time = now minus the allowed lateness, as a watermark
    /// would be if events were flowing), so silence-driven signals fire even when a
    /// partition's input stops. Events arriving later with older times are late and
    /// handled as `engine.late_events` says. Also refreshes the size gauges.
    fn tick(&mut self, instant: Instant) {
        let idle = Duration::from_secs(self.cfg.kafka.idle_timeout_secs);
        let lateness = self.cfg.engine.allowed_lateness_secs as i64 * 1000;
        let now = wall_now();
        let fmt = self.cfg.kafka.alerts_format;
        let mut out: Vec<OutRecord> = Vec::new();
        for pe in self.engines.values_mut() {
            if instant.saturating_duration_since(pe.last_event) < idle
                || pe.engine.max_event_time().is_none()
            {
                continue;
            }
            let target = Timestamp(now.0 - lateness);
            if pe.engine.stream_time().is_some_and(|s| target <= s) {
                continue;
            }
            telemetry::idle_advance();
            self.alerts.clear();
            pe.engine.advance_to_into(target, &mut self.alerts);
            for a in &mut self.alerts {
                a.emitted_at = now;
                count_alert(a);
                out.push(alert_record(a, fmt));
            }
        }
        // Alerts of the passing of time follow no input offset: nothing to hold back.
        self.status.timer_alerts(out.len());
        let topic = self.cfg.kafka.topics.alerts.clone();
        for rec in out {
            let d = Delivery {
                progress: None,
                offset: -1,
                input_ts_ms: -1,
                alert: true,
            };
            self.produce(&topic, rec, d);
        }
        if instant.saturating_duration_since(self.last_gauges) >= Duration::from_secs(2) {
            self.last_gauges = instant;
            for (p, pe) in &self.engines {
                telemetry::partition_state(
                    *p,
                    pe.engine.customers(),
                    pe.engine.state_bytes(),
                    pe.engine.stream_time().map(|t| t.0),
                );
            }
        }
    }
}

fn is_dead_letter(r: &OutRecord) -> bool {
    r.headers
        .iter()
        .any(|(k, _)| k == super::records::dead_letter_headers::REASON)
}

fn count_alert(a: &Alert) {
    let signal = a.signals.first().map_or("none", |s| s.signal.name());
    telemetry::alert(a.status.as_str(), signal, a.risk.as_str(), a.value_tier);
}

/// The event's metric label: its contract type, with every engagement kind but NPS
/// folded into `engagement.activity` (kinds are open-ended; labels must stay bounded).
fn event_label(e: &Event<'_>) -> &'static str {
    match e.kind.type_name() {
        "engagement" => "engagement.activity",
        t => t,
    }
}

/// An event must sit on a topic of its family, keyed by its customer.
fn check_placement<'a>(
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

pub(crate) fn wall_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
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
