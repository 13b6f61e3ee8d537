//! Processing: a consumed message into its partition's synchronization buffer, then
//! in event-time order through the engine, and its alerts or dead letter out.

use std::sync::Arc;
use std::time::Instant;

use crate::decode::DecodeError;
use crate::engine::Outcome;
use crate::event::Event;
use crate::kafka::producer::{send, wall_now, Delivery, Out};
use crate::kafka::records::{alert_record, dead_letter_record, OutRecord, Source};
use crate::kafka::sync::Next;
use crate::kafka::trace::Trace;
use crate::kafka::work::InMsg;
use crate::kafka::worker::partition::{
    decode_input, event_label, is_dead_letter, position_of, Buffered, Leave, Partition,
};
use crate::kafka::worker::{count_alert, Shared};
use crate::telemetry::{self};
use crate::time::Timestamp;

impl Partition {
    /// Takes one consumed message into the synchronization buffer (decoded against
    /// `now`); false if it was dropped: revoked meanwhile (the new owner reads it
    /// again), polled before a rebalance, or delivered twice.
    pub(super) fn receive(&mut self, sh: &Shared, m: InMsg, now: Timestamp) -> bool {
        let Some(input) = self.inputs.get(&m.topic) else {
            return false;
        };
        if !input.active || input.epoch != m.epoch || !self.sync.fresh(m.topic, m.offset) {
            return false;
        }
        if input.next.is_some_and(|n| m.offset < n) {
            // Already in the state: consumed, not processed again.
            self.sync.seen(m.topic, m.offset);
            return true;
        }
        let decoded = decode_input(&sh.cfg, &sh.inputs[m.topic], &m, now);
        let time = decoded.as_ref().map_or(i64::MIN, |e| e.occurred_at.0);
        let (topic, offset) = (m.topic, m.offset);
        self.sync.push(
            topic,
            offset,
            time,
            Buffered {
                msg: m,
                decoded,
                now,
            },
        );
        true
    }

    /// Processes the buffered messages as far as stream-time synchronization lets it
    /// (see [`crate::kafka::sync`]), then pauses or resumes inputs by how full their
    /// buffers are.
    pub(super) fn drain(&mut self, sh: &mut Shared, instant: Instant) -> Result<(), Leave> {
        let at = sh.ms(instant);
        let (mut events, mut alerts) = (0, 0);
        let mut result = Ok(());
        loop {
            match self.sync.next(at) {
                Next::Take(k) => {
                    let b = self.sync.pop(k).expect("the head just looked at");
                    match self.process(sh, b.msg, b.decoded, b.now, instant) {
                        Ok(Some(a)) => {
                            events += 1;
                            alerts += a;
                        }
                        Ok(None) => {}
                        Err(leave) => {
                            result = Err(leave);
                            break;
                        }
                    }
                }
                Next::Hold { until, .. } => {
                    self.wake = until;
                    break;
                }
                Next::Empty => {
                    self.wake = None;
                    break;
                }
            }
        }
        sh.status.processed(events, alerts);
        sh.flush_consumed();
        result?;
        let p = self.number;
        let full = &sh.full;
        self.sync.flow(|k, pause| full.set((k, p), pause));
        let (held, inputs) = (&mut sh.held, &sh.inputs);
        self.sync.take_held(|k, ms| {
            let (counter, carried) = held
                .entry((p, k))
                .or_insert_with(|| (telemetry::stream_time_held(p, &inputs[k].name), 0));
            *carried += ms;
            counter.increment(*carried / 1000);
            *carried %= 1000;
        });
        Ok(())
    }

    /// Processes one message (decoded against `now`); returns the alerts it caused,
    /// `None` if it was skipped.
    pub(super) fn process(
        &mut self,
        sh: &mut Shared,
        m: InMsg,
        decoded: Result<Event<'static>, DecodeError>,
        now: Timestamp,
        instant: Instant,
    ) -> Result<Option<u64>, Leave> {
        let partition = self.number;
        let offset = m.offset;
        // Revoked meanwhile, polled before a rebalance, or (replayed after a rewind)
        // already in the state: skipped.
        let Some(input) = self.inputs.get_mut(&m.topic) else {
            return Ok(None);
        };
        if !input.active || input.epoch != m.epoch || input.next.is_some_and(|n| offset < n) {
            return Ok(None);
        }
        input.next = Some(offset + 1);
        let progress = input.progress.clone();
        self.last_event = instant;
        self.dirty = true;
        // Too old for this partition's stream time: a dead letter like a decode error.
        let decoded = decoded.and_then(|e| self.engine.check_age(&e).map(|()| e));
        // Exactly-once journals the message under the input's position.
        let inputs = &self.inputs;
        self.guarantee
            .journal_message(|| position_of(inputs, m.topic), offset, now.0);
        sh.out.clear();
        match decoded {
            Ok(event) => {
                let ty = event_label(&event);
                sh.count_consumed(m.topic, ty);
                sh.alerts.clear();
                if let Some(i) = self.inputs.get_mut(&m.topic) {
                    i.max_time = i.max_time.max(event.occurred_at.0);
                }
                match self.engine.apply_into(&event, &mut sh.alerts) {
                    Outcome::Duplicate => sh.duplicate.increment(1),
                    Outcome::AppliedLate | Outcome::DroppedLate => sh.late.increment(1),
                    _ => {}
                }
                for a in &mut sh.alerts {
                    a.emitted_at = now;
                    count_alert(a);
                    sh.out.push(alert_record(a, sh.cfg.kafka.alerts_format));
                }
            }
            Err(e) => {
                let reason = e.reason.code();
                sh.count_consumed(m.topic, "invalid");
                let topic = &sh.inputs[m.topic];
                sh.dead
                    .entry((m.topic, reason))
                    .or_insert_with(|| telemetry::dead_letters(&topic.name, reason))
                    .increment(1);
                sh.out.push(dead_letter_record(
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
                sh.status.dead_lettered();
            }
        }
        let n_alerts = if sh.out.first().is_some_and(is_dead_letter) {
            0
        } else {
            sh.out.len()
        };
        let tracker = self
            .guarantee
            .processed(&progress, offset, sh.out.len() as u32);
        // Only an alert's making reads the clock (see `crate::kafka::trace`).
        let trace = Trace {
            produced: m.timestamp_ms,
            polled: m.polled_ms,
            received: now.0,
            applied: if sh.out.is_empty() { 0 } else { wall_now().0 },
        };
        let mut outs = std::mem::take(&mut sh.out);
        let mut sent = Ok(());
        for rec in outs.drain(..) {
            let dead = is_dead_letter(&rec);
            let delivery = Delivery {
                progress: tracker.clone(),
                pending: None,
                offset,
                trace,
                alert: !dead,
            };
            if sent.is_ok() {
                sent = self.emit(sh, rec, delivery, dead);
            }
        }
        sh.out = outs;
        sh.out.clear();
        sent?;
        self.note_evictions(sh);
        if self.tx.keep(m) {
            // The input kept for a rewind stays bounded: checkpoint early.
            self.checkpoint(sh, false)?;
        }
        Ok(Some(n_alerts as u64))
    }

    /// Sends an alert or dead letter: in the transaction (exactly-once) or through the
    /// shared producer, counted as pending until acknowledged.
    pub(super) fn emit(
        &mut self,
        sh: &Shared,
        rec: OutRecord,
        mut delivery: Delivery,
        dead: bool,
    ) -> Result<(), Leave> {
        let Some(pending) = self.guarantee.output_sent() else {
            // Exactly-once: into the transaction, or held for the next one; never
            // settles a commit here (see `Transactions::output`).
            return self.tx.output((rec, dead, delivery)).map_err(Leave::Fatal);
        };
        let topics = &sh.cfg.kafka.topics;
        let topic = if dead {
            &topics.dead_letters
        } else {
            &topics.alerts
        };
        let out = Out::record(topic, &rec);
        delivery.pending = Some(pending);
        let d = Arc::new(delivery);
        if let Err(e) = send(&sh.producer, &sh.status, &sh.queue_full, sh.id, out, d) {
            sh.status.fail(e);
        }
        Ok(())
    }
}
