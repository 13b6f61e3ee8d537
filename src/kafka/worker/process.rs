//! Processing: a consumed message into its partition's synchronization buffer, then
//! in event-time order through the engine, and its alerts or dead letter out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Guarantee;
use crate::decode::DecodeError;
use crate::engine::Outcome;
use crate::event::Event;
use crate::kafka::producer::{send, Delivery, Out};
use crate::kafka::records::{alert_record, dead_letter_record, OutRecord, Source};
use crate::kafka::sync::Next;
use crate::kafka::work::InMsg;
use crate::kafka::worker::partition::{decode_input, event_label, is_dead_letter, Buffered};
use crate::kafka::worker::{count_alert, Worker};
use crate::telemetry::{self};
use crate::time::Timestamp;

impl Worker {
    /// Takes one consumed message into its partition's synchronization buffer (decoded
    /// against `now`); returns its partition, `None` if it was dropped: revoked
    /// meanwhile (the new owner reads it again), polled before a rebalance, or delivered
    /// twice.
    pub(super) fn receive(&mut self, m: InMsg, now: Timestamp) -> Option<i32> {
        let p = m.partition;
        let pe = self.engines.get_mut(&p)?;
        let input = pe.inputs.get(&m.topic)?;
        if !input.active || input.epoch != m.epoch || !pe.sync.fresh(m.topic, m.offset) {
            return None;
        }
        if input.next.is_some_and(|n| m.offset < n) {
            // Already in the state: consumed, not processed again.
            pe.sync.seen(m.topic, m.offset);
            return Some(p);
        }
        let decoded = decode_input(&self.cfg, &self.inputs[m.topic], &m, now);
        let time = decoded.as_ref().map_or(i64::MIN, |e| e.occurred_at.0);
        let (topic, offset) = (m.topic, m.offset);
        pe.sync.push(
            topic,
            offset,
            time,
            Buffered {
                msg: m,
                decoded,
                now,
            },
        );
        Some(p)
    }

    /// Processes partition `p`'s buffered messages as far as stream-time synchronization
    /// lets it (see [`crate::kafka::sync`]), then pauses or resumes inputs by how full their
    /// buffers are.
    pub(super) fn drain(&mut self, p: i32, instant: Instant) {
        let at = self.ms(instant);
        let (mut events, mut alerts) = (0, 0);
        while let Some(pe) = self.engines.get_mut(&p) {
            match pe.sync.next(at) {
                Next::Take(k) => {
                    let b = pe.sync.pop(k).expect("the head just looked at");
                    if let Some(a) = self.process(b.msg, b.decoded, b.now, instant) {
                        events += 1;
                        alerts += a;
                    }
                }
                Next::Hold { until, .. } => {
                    pe.wake = until;
                    break;
                }
                Next::Empty => {
                    pe.wake = None;
                    break;
                }
            }
        }
        self.status.processed(events, alerts);
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        let full = &self.full;
        pe.sync.flow(|k, pause| full.set((k, p), pause));
        let (held, inputs) = (&mut self.held, &self.inputs);
        pe.sync.take_held(|k, ms| {
            let (counter, carried) = held
                .entry((p, k))
                .or_insert_with(|| (telemetry::stream_time_held(p, &inputs[k].name), 0));
            *carried += ms;
            counter.increment(*carried / 1000);
            *carried %= 1000;
        });
    }

    /// Processes one message (decoded against `now`); returns the alerts it caused,
    /// `None` if it was skipped.
    pub(super) fn process(
        &mut self,
        m: InMsg,
        decoded: Result<Event<'static>, DecodeError>,
        now: Timestamp,
        instant: Instant,
    ) -> Option<u64> {
        let partition = m.partition;
        let offset = m.offset;
        let eos = self.exactly_once();
        // Revoked meanwhile, polled before a rebalance, or (replayed after a rewind)
        // already in the state: skipped.
        let pe = self.engines.get_mut(&partition)?;
        let input = pe.inputs.get_mut(&m.topic)?;
        if !input.active || input.epoch != m.epoch || input.next.is_some_and(|n| offset < n) {
            return None;
        }
        input.next = Some(offset + 1);
        let progress = input.progress.clone();
        pe.last_event = instant;
        pe.dirty = true;
        let topic = &self.inputs[m.topic];
        // Too old for this partition's stream time: a dead letter like a decode error.
        let decoded = decoded.and_then(|e| pe.engine.check_age(&e).map(|()| e));
        // Exactly-once journals the message under the input's position.
        let position = eos.then(|| pe.position(m.topic));
        self.out.clear();
        match decoded {
            Ok(event) => {
                let ty = event_label(&event);
                self.consumed
                    .entry((m.topic, ty))
                    .or_insert_with(|| telemetry::events_consumed(&topic.name, ty))
                    .increment(1);
                self.alerts.clear();
                if let Some(position) = position {
                    pe.journal.message(position, offset, 0, now.0);
                }
                if let Some(i) = pe.inputs.get_mut(&m.topic) {
                    i.max_time = i.max_time.max(event.occurred_at.0);
                }
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
                if let Some(position) = position {
                    pe.journal.message(position, offset, 0, now.0);
                }
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
                    m.value(),
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
        if !eos {
            if let Err(e) = progress
                .lock()
                .expect("progress lock")
                .processed(offset, self.out.len() as u32)
            {
                tracing::error!(error = %e, "offset tracking");
            }
        }
        let ts = m.timestamp_ms;
        let mut outs = std::mem::take(&mut self.out);
        for rec in outs.drain(..) {
            let dead = is_dead_letter(&rec);
            let delivery = Delivery {
                progress: (!eos).then(|| progress.clone()),
                pending: None,
                offset,
                input_ts_ms: ts,
                alert: !dead,
            };
            self.emit(partition, rec, delivery, dead);
        }
        self.out = outs;
        self.out.clear();
        self.note_evictions(partition);
        let full = self
            .engines
            .get_mut(&partition)
            .is_some_and(|pe| pe.tx.keep(m));
        if full {
            // The input kept for a rewind stays bounded: checkpoint early.
            self.checkpoint(partition, false);
        }
        Some(n_alerts as u64)
    }

    /// Sends an alert or dead letter of partition `p`: in its transaction (exactly-once)
    /// or through the shared producer, counted as pending until acknowledged.
    pub(super) fn emit(&mut self, p: i32, rec: OutRecord, mut delivery: Delivery, dead: bool) {
        let Some(pe) = self.engines.get_mut(&p) else {
            return;
        };
        if self.cfg.kafka.processing.guarantee == Guarantee::ExactlyOnce {
            // Into the partition's transaction, or held for the next one; never
            // settles a commit here (see `Transactions::output`).
            if let Err(why) = pe.tx.output((rec, dead, delivery)) {
                self.fatal(p, why);
            }
            return;
        }
        let topics = &self.cfg.kafka.topics;
        let topic = if dead {
            &topics.dead_letters
        } else {
            &topics.alerts
        };
        let out = Out::record(topic, &rec);
        pe.pending.fetch_add(1, Ordering::AcqRel);
        delivery.pending = Some(pe.pending.clone());
        let d = Arc::new(delivery);
        if let Err(e) = send(
            &self.producer,
            &self.status,
            &self.queue_full,
            self.id,
            out,
            d,
        ) {
            self.status.fail(e);
        }
    }
}
