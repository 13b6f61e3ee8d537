//! Judging a customer: the signals' readings, the score and the play, the alert
//! lifecycle's transition, the next deadline, and the alert and health record rendered.

use super::lifecycle::{active_mask, Status};
use super::state::{fingerprint, NEVER, UNSCHEDULED};
use super::window::WindowView;
use super::{bgnbd, index, score, Engine, Evaluation, WATCH_SEVERITY};
use crate::alert::{clip, round4, Aggregates, Alert, Evidence, HealthRecord, SignalView};
use crate::signals::{self, Input, Reading, SignalKind};
use crate::time::Timestamp;

impl Engine {
    pub(super) fn evaluate(&mut self, idx: usize, now: Timestamp) -> Evaluation {
        let layout = self.layout_at(now);
        let view = WindowView::read(
            &self.customers[idx].ring,
            layout,
            self.customers[idx].first_seen,
        );
        let population = self.population_view(idx, layout.recent_start, now);
        let c = &self.customers[idx];
        let readings = signals::evaluate_all(
            &Input {
                customer: c,
                window: &view,
                now,
                population,
            },
            self.cfg.signals(),
        );
        let bin = self.register_revenue(idx, view.trailing_revenue());
        let t = &self.cfg.value_tiers();
        let tier = self
            .tiers
            .tier(bin, t.key_top_fraction, t.core_top_fraction);
        let c = &self.customers[idx];
        let purchases =
            bgnbd::Model::summary(c.first_order.0, c.last_order.0, c.orders_total, now.0);
        let base = purchases.map_or(1.0, |s| {
            score::purchase_health(&self.model.params, s, self.cfg.score().horizon_days)
        });
        let health = score::health(&readings, &self.cfg, base, purchases.is_some());
        let risk = score::risk(health, tier, &self.cfg);
        Evaluation {
            view,
            readings,
            purchases,
            health,
            risk,
            tier,
        }
    }

    pub(super) fn evaluate_and_transition(
        &mut self,
        idx: usize,
        now: Timestamp,
        event_id: Option<&str>,
        out: &mut Vec<Alert>,
    ) {
        self.touch(idx);
        let ev = self.evaluate(idx, now);
        let rules = self.rules();
        let c = &mut self.customers[idx];
        let status = c
            .episode
            .transition(&c.id, &ev.readings, ev.risk, now, rules);
        if let Some(status) = status {
            if status != Status::Resolved {
                c.episode.announced_tier = c.episode.announced_tier.max(ev.tier as u8 + 1);
            }
            match status {
                Status::Open => self.stats.alerts_open += 1,
                Status::Escalated => self.stats.alerts_escalated += 1,
                Status::Resolved => self.stats.alerts_resolved += 1,
            }
            out.push(self.render_alert(idx, &ev, status, now, event_id));
        }
        self.schedule(idx, &ev, now);
    }

    /// Computes and queues the next instant this customer can change without an event.
    pub(super) fn schedule(&mut self, idx: usize, ev: &Evaluation, now: Timestamp) {
        let rules = self.rules();
        let width = self.cfg.engine().bucket_ms();
        let c = &self.customers[idx];
        let mut due = UNSCHEDULED;
        for r in &ev.readings {
            if let Some(d) = r.due {
                due = due.min(d);
            }
        }
        let window_driven = [
            SignalKind::ConsumptionDrop,
            SignalKind::DiscountPressure,
            SignalKind::SupportTension,
            SignalKind::EngagementDecline,
        ];
        let warm = window_driven
            .iter()
            .any(|k| ev.readings[*k as usize].severity >= WATCH_SEVERITY);
        if (c.episode.open || warm) && !c.ring.empty_from(ev.view.layout.baseline_from) {
            // Windows change when a bucket rolls: look again early in the next bucket,
            // when the recent window has just shed its oldest week (a step change shows
            // most clearly then), spreading customers over the first seventh of the
            // bucket so a boundary is not a burst.
            let jitter = i64::from(fingerprint(&c.id)) % (width / 7).max(1);
            due = due.min(Timestamp(
                (i64::from(ev.view.layout.current) + 1) * width + jitter,
            ));
        } else if c.episode.open {
            // Risk keeps rising while a customer stays silent: look again each bucket.
            due = due.min(Timestamp(now.0 + width));
        }
        if let Some(r) = c.episode.reminder_due(rules) {
            due = due.min(r);
        }
        if due != UNSCHEDULED && due > now {
            let scheduled = c.scheduled;
            self.customers[idx].scheduled = self.deadlines.schedule(idx as u32, due, scheduled);
        }
    }

    pub(super) fn signal_views(readings: &[Reading; 7], mask: u8) -> Vec<SignalView> {
        SignalKind::ALL
            .into_iter()
            .filter(|k| mask & k.bit() != 0)
            .map(|k| {
                let r = &readings[k as usize];
                SignalView {
                    signal: k,
                    severity: round4(r.severity),
                    observed: round4(r.observed),
                    baseline: round4(r.baseline),
                    threshold: round4(r.threshold),
                    window_days: round4(r.window_days),
                    explanation: signals::explain(k, r),
                }
            })
            .collect()
    }

    pub(super) fn render_alert(
        &self,
        idx: usize,
        ev: &Evaluation,
        status: Status,
        now: Timestamp,
        event_id: Option<&str>,
    ) -> Alert {
        let c = &self.customers[idx];
        let mask = if status == Status::Resolved {
            0
        } else {
            c.episode.active
        };
        let signals = Self::signal_views(&ev.readings, mask);
        let play = score::play(c.episode.active, &ev.readings, ev.tier, &self.cfg);
        let names: Vec<&str> = signals.iter().map(|s| s.signal.name()).collect();
        let what = match status {
            Status::Open => format!("at risk: {}", names.join(", ")),
            Status::Escalated => format!("risk up: {}", names.join(", ")),
            Status::Resolved => "recovered, alert resolved".to_owned(),
        };
        let summary = format!(
            "{} ({} account) {what}; health {}, risk {}, play {}",
            clip(&c.id, 40),
            ev.tier.as_str(),
            ev.health,
            ev.risk.as_str(),
            play.as_str()
        );
        let v = &ev.view;
        Alert {
            alert_id: format!("{:016x}", c.episode.alert_id),
            sequence: u32::from(c.episode.sequence),
            customer_id: c.id.to_string(),
            status,
            risk: ev.risk,
            health_score: ev.health,
            signals,
            value_tier: ev.tier.as_str(),
            recommended_play: play,
            summary: clip(&summary, crate::alert::SUMMARY_MAX_CHARS),
            as_of: now,
            emitted_at: now,
            evidence: Evidence {
                window_start: v.layout.recent_start,
                window_end: now,
                baseline_start: v.layout.baseline_start,
                recent_orders: v.recent.orders,
                recent_order_value: round4(v.recent.value),
                baseline_orders: v.baseline.orders,
                baseline_order_value: round4(v.baseline.value),
                recent_engagement: v.recent.engagement,
                baseline_engagement: v.baseline.engagement,
                recent_tickets: v.recent.tickets,
                recent_discount_requests: v.recent.requests,
                open_tickets: c.tickets.count(),
                orders_total: c.orders_total,
                last_order_at: (c.last_order != NEVER).then_some(c.last_order),
                last_engagement_at: (c.last_engagement != NEVER).then_some(c.last_engagement),
                event_ids: event_id.map(|e| vec![e.to_owned()]).unwrap_or_default(),
                trigger: if event_id.is_some() {
                    "event"
                } else {
                    "stream_time"
                },
                p_alive: ev.purchases.map(|s| round4(self.model.params.p_alive(s))),
                expected_orders_90d: ev
                    .purchases
                    .map(|s| round4(self.model.params.expected_purchases(s, 90.0))),
            },
            schema_version: crate::alert::SCHEMA_VERSION,
        }
    }

    /// The health record of one customer at the current stream time (`None` if this
    /// engine does not know the customer). Reading a record changes no alert state.
    pub fn health_record(&mut self, customer_id: &str) -> Option<HealthRecord> {
        let idx = self.find(index::hash(customer_id), customer_id)?;
        self.tiers.refresh();
        Some(self.record_of(idx))
    }

    /// Health records of every customer, sorted by customer id, at the current stream time.
    pub fn snapshot(&mut self) -> Vec<HealthRecord> {
        self.population.invalidate();
        self.tiers.refresh();
        // Re-register every revenue first so that tiers reflect the same instant for all.
        let live: Vec<usize> = (0..self.customers.len())
            .filter(|i| !self.customers[*i].id.is_empty())
            .collect();
        for &idx in &live {
            let now = self.stream_time.max(self.customers[idx].last_seen);
            self.evaluate(idx, now);
        }
        self.tiers.refresh();
        let mut order = live;
        order.sort_by(|a, b| self.customers[*a].id.cmp(&self.customers[*b].id));
        order.into_iter().map(|i| self.record_of(i)).collect()
    }

    pub(super) fn record_of(&mut self, idx: usize) -> HealthRecord {
        let now = self.stream_time.max(self.customers[idx].last_seen);
        let ev = self.evaluate(idx, now);
        let c = &self.customers[idx];
        let rules = self.rules();
        let mask = active_mask(c.episode.active, &ev.readings, rules.entry, rules.exit);
        let v = &ev.view;
        let opt = |t: Timestamp| (t != NEVER).then_some(t);
        HealthRecord {
            customer_id: c.id.to_string(),
            health_score: ev.health,
            risk: ev.risk,
            signals: Self::signal_views(&ev.readings, mask),
            value_tier: ev.tier.as_str(),
            recommended_play: score::play(mask, &ev.readings, ev.tier, &self.cfg),
            as_of: now,
            open_alert_id: c
                .episode
                .open
                .then(|| format!("{:016x}", c.episode.alert_id)),
            windows: Aggregates {
                recent_start: v.layout.recent_start,
                baseline_start: v.layout.baseline_start,
                recent_days: round4(v.recent_days),
                baseline_days: round4(v.baseline_days),
                recent_orders: v.recent.orders,
                baseline_orders: v.baseline.orders,
                recent_order_value: round4(v.recent.value),
                baseline_order_value: round4(v.baseline.value),
                recent_engagement: v.recent.engagement,
                baseline_engagement: v.baseline.engagement,
                recent_tickets: v.recent.tickets,
                recent_trouble_points: v.recent.trouble,
                recent_discount_requests: v.recent.requests,
                open_tickets: c.tickets.count(),
                orders_total: c.orders_total,
                trailing_revenue: round4(v.trailing_revenue()),
                first_order_at: opt(c.first_order),
                last_order_at: opt(c.last_order),
                last_engagement_at: opt(c.last_engagement),
                last_nps: (c.nps <= 10).then_some(c.nps),
                p_alive: ev.purchases.map(|s| round4(self.model.params.p_alive(s))),
                expected_orders_90d: ev
                    .purchases
                    .map(|s| round4(self.model.params.expected_purchases(s, 90.0))),
                severities: SignalKind::ALL
                    .into_iter()
                    .map(|k| (k.name(), round4(ev.readings[k as usize].severity)))
                    .collect(),
            },
        }
    }
}
