//! The pure core: per-customer state, signals and alert lifecycle, in event time.
//!
//! No async, no Kafka, no clock: [`Engine::apply`] takes one event and returns the alert
//! changes it caused; [`Engine::advance_to`] lets stream time pass and returns the
//! changes that absence caused (inactivity, no second purchase, windows rolling, tickets
//! left open). The same engine runs live (one per Kafka partition) and in replay, so
//! both produce the same alerts for the same events in the same order.
//!
//! Stream time is a watermark: the latest event time that several recent events agree on
//! (see [`clock`]: one outlier cannot move it) minus the allowed lateness. An event
//! older than stream time by more than `input.max_event_age_days` is refused.
//! Customers due for re-evaluation wait in a deadline queue, so letting time pass costs
//! O(customers due).

pub mod basket;
pub mod bgnbd;
pub mod clock;
pub mod codec;
pub mod deadlines;
pub mod index;
pub mod lifecycle;
pub mod population;
pub mod score;
pub mod state;
pub mod tiers;
pub mod window;

use crate::alert::{clip, round4, Aggregates, Alert, Evidence, HealthRecord, SignalView};
use crate::config::{Config, LatePolicy};
use crate::event::{Category, Event, EventKind};
use crate::signals::{self, support_tension, Input, PopulationView, Reading, SignalKind};
use crate::time::Timestamp;
use compact_str::CompactString;
use deadlines::Deadlines;
use lifecycle::{active_mask, Rules, Status};
use population::{Activity, LogHistogram, Population};
use score::Risk;
use state::{fingerprint, Customer, NEVER, UNSCHEDULED};
use tiers::{Tier, Tiers};
use window::{Added, Delta, Layout, TroubleKind, WindowView};

pub use window::RING;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Window-driven severity from which a customer is re-evaluated once per bucket even
/// without an open alert. Looking at every active customer each bucket bounds how late
/// a slow decline is noticed when events skip evaluation, but costs about a quarter of
/// the throughput at a million customers (measured: 2.97M vs 3.9M events/s); below
/// this severity a window signal rarely reaches its threshold within one bucket.
const WATCH_SEVERITY: f64 = 0.1;
/// The population cadence a customer with few orders is blended with: a generous one
/// (most customers order at least this often), since little evidence about a customer
/// must not make the engine quicker to call them inactive.
const CADENCE_PRIOR_QUANTILE: f64 = 0.8;
/// Repeat buyers the population needs before its cadence replaces the default.
const MIN_CADENCE_SAMPLES: u32 = 30;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the customer's state.
    Applied,
    /// Applied, though older than the watermark.
    AppliedLate,
    /// An `event_id` the customer recently had: ignored.
    Duplicate,
    /// Older than the watermark and `late_events = "drop"`: ignored.
    DroppedLate,
    /// Older than stream time by more than `input.max_event_age_days`: refused (callers
    /// that dead-letter ask [`Engine::check_age`] first).
    TooOld,
}

/// Counters of an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events applied (late ones included).
    pub applied: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Events older than the watermark (applied or dropped).
    pub late: u64,
    /// Late events dropped by policy.
    pub late_dropped: u64,
    /// Events older than the window ring: lifetime facts kept, windows not.
    pub too_old_for_windows: u64,
    /// Re-evaluations caused by stream time.
    pub deadline_evaluations: u64,
    /// Events that could only improve a customer with no open alert: state updated,
    /// evaluation left to the customer's deadlines.
    pub skipped_evaluations: u64,
    /// Alerts by status: open (reminders included), escalated, resolved.
    pub alerts_open: u64,
    /// Escalations.
    pub alerts_escalated: u64,
    /// Resolutions.
    pub alerts_resolved: u64,
    /// Customers first seen (again, after an eviction).
    pub customers_created: u64,
    /// Customers forgotten after `evict_after_days` without events.
    pub evicted_idle: u64,
    /// Customers forgotten early because the engine held `max_customers`.
    pub evicted_cap: u64,
}

struct Evaluation {
    view: WindowView,
    readings: [Reading; 7],
    /// The customer's purchase summary (none before the first order).
    purchases: Option<bgnbd::Summary>,
    health: u8,
    risk: Risk,
    tier: Tier,
}

/// The engine of one partition (or of a replay).
pub struct Engine {
    cfg: Config,
    customers: Vec<Customer>,
    index: index::Index,
    deadlines: Deadlines,
    population: Population,
    tiers: Tiers,
    /// The purchase model (BG/NBD) fitted on this engine's customers.
    model: bgnbd::Model,
    /// The store's basket spread (see [`basket`]), learnt with each fit of the model;
    /// none until enough customers have a baseline.
    basket_spread: Option<f64>,
    /// The latest event time recent events agree on (see [`clock`]).
    max_event_time: Timestamp,
    recent: clock::Recent,
    stream_time: Timestamp,
    /// The most the watermark may be, set by a caller that merges several sources.
    watermark_limit: Timestamp,
    /// Customers whose state changed since [`Engine::take_changed`]: a bit per
    /// customer, and the list of those set.
    changed_bits: Vec<u64>,
    changed: Vec<u32>,
    /// Positions of forgotten customers, reused by new ones.
    free: Vec<u32>,
    /// Eviction candidates: (earliest eviction instant ms, position), one per customer.
    idle: BinaryHeap<Reverse<(i64, u32)>>,
    /// Ids forgotten since [`Engine::take_changed`].
    evicted: Vec<CompactString>,
    /// Most customers held (0 = no cap).
    max_customers: u64,
    stats: Stats,
}

impl Engine {
    /// A new engine; `cfg` must be validated ([`Config::load`] does that).
    pub fn new(cfg: Config) -> Engine {
        Engine {
            customers: Vec::new(),
            index: index::Index::default(),
            deadlines: Deadlines::default(),
            population: Population::default(),
            tiers: Tiers::default(),
            model: bgnbd::Model::default(),
            basket_spread: None,
            max_event_time: NEVER,
            recent: clock::Recent::default(),
            stream_time: NEVER,
            watermark_limit: Timestamp(i64::MAX),
            changed_bits: Vec::new(),
            changed: Vec::new(),
            free: Vec::new(),
            idle: BinaryHeap::new(),
            evicted: Vec::new(),
            max_customers: cfg_max_customers(&cfg),
            cfg,
            stats: Stats::default(),
        }
    }

    /// Sets the most customers held (0 = no cap); the live service gives each partition
    /// engine its share of the instance's cap.
    pub fn set_max_customers(&mut self, n: u64) {
        self.max_customers = n;
        if n > 0 {
            let over = (self.customers() as u64).saturating_sub(n);
            self.evict_oldest(over as usize);
        }
    }

    /// The most customers held (0 = no cap).
    pub fn max_customers(&self) -> u64 {
        self.max_customers
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Customers tracked.
    pub fn customers(&self) -> usize {
        self.customers.len() - self.free.len()
    }

    /// Customers with an open alert, by the highest risk announced in their episode
    /// (`[low, medium, high, critical]`) and the value tier they are in now (`[tail,
    /// core, key]`). A scan of the customers (for gauges, every few seconds).
    pub fn at_risk(&self) -> [[u64; 3]; 4] {
        let t = &self.cfg.value_tiers;
        let mut out = [[0; 3]; 4];
        for c in self.customers.iter().filter(|c| c.episode.open) {
            let now = self
                .tiers
                .tier(c.value_bin, t.key_top_fraction, t.core_top_fraction);
            let tier = (now as usize).max(usize::from(c.episode.announced_tier).saturating_sub(1));
            out[usize::from(c.episode.announced_risk.min(3))][tier.min(2)] += 1;
        }
        out
    }

    /// The watermark (`None` before the first event).
    pub fn stream_time(&self) -> Option<Timestamp> {
        (self.stream_time != NEVER).then_some(self.stream_time)
    }

    /// The latest event time recent events agree on (see [`clock`]); before enough
    /// events to agree, the latest seen. End of input advances stream time to it.
    pub fn max_event_time(&self) -> Option<Timestamp> {
        (self.max_event_time != NEVER)
            .then_some(self.max_event_time)
            .or_else(|| self.recent.latest().map(Timestamp))
    }

    /// `Err` when `e` is older than stream time by more than `input.max_event_age_days`
    /// (the dead-letter reason `too_old`): such an event would rewrite history that
    /// windows, baselines and the purchase model have moved past.
    pub fn check_age(&self, e: &Event<'_>) -> Result<(), crate::decode::DecodeError> {
        let days = self.cfg.input.max_event_age_days;
        if days == 0 || self.stream_time == NEVER {
            return Ok(());
        }
        let oldest = self.stream_time.plus_days(-f64::from(days));
        if e.occurred_at >= oldest {
            return Ok(());
        }
        Err(crate::decode::DecodeError::new(
            crate::decode::Reason::TooOld,
            format!(
                "`occurred_at` = {} is more than {days} days (input.max_event_age_days) before stream time ({})",
                e.occurred_at, self.stream_time
            ),
        ))
    }

    /// Bytes of state held: customer records, index, deadline queue, long ids.
    pub fn state_bytes(&self) -> usize {
        self.customers.capacity() * std::mem::size_of::<Customer>()
            + self.index.bytes()
            + self.deadlines.bytes()
            + self.idle.capacity() * 16
            + self
                .customers
                .iter()
                .map(Customer::heap_bytes)
                .sum::<usize>()
    }

    /// Entries in the deadline queue (live and stale).
    pub fn queued_deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// Reserves room for `n` more customers.
    pub fn reserve(&mut self, n: usize) {
        self.customers.reserve_exact(n);
        let customers = &self.customers;
        self.index
            .reserve(n, |i| index::hash(&customers[i as usize].id));
    }

    fn rules(&self) -> Rules {
        Rules {
            entry: self.cfg.score.entry_severity,
            exit: self.cfg.score.exit_severity,
            repeat_ms: (self.cfg.alerts.repeat_after_secs as i64).saturating_mul(1000),
        }
    }

    fn find(&self, hash: u64, id: &str) -> Option<usize> {
        let customers = &self.customers;
        self.index
            .find(hash, |i| customers[i as usize].id == id)
            .map(|i| i as usize)
    }

    fn find_or_insert(&mut self, hash: u64, id: &str) -> usize {
        if let Some(i) = self.find(hash, id) {
            return i;
        }
        if self.max_customers > 0 && self.customers() as u64 >= self.max_customers {
            self.evict_oldest(1 + self.customers() - self.max_customers as usize);
        }
        let idx = match self.free.pop() {
            Some(i) => {
                self.customers[i as usize] = Customer::new(id);
                i as usize
            }
            None => {
                self.customers.push(Customer::new(id));
                self.customers.len() - 1
            }
        };
        let customers = &self.customers;
        self.index
            .insert(hash, idx as u32, |i| index::hash(&customers[i as usize].id));
        self.tiers.insert();
        self.touch(idx);
        self.stats.customers_created += 1;
        self.idle.push(Reverse((i64::MIN, idx as u32)));
        idx
    }

    fn horizon_ms(&self) -> i64 {
        i64::from(self.cfg.engine.evict_after_days) * crate::time::DAY_MS
    }

    /// Forgets the customers due for eviction at the current stream time: no event for
    /// `evict_after_days`, and no open alert unless its silence is part of it.
    fn evict_due(&mut self) {
        let horizon = self.horizon_ms();
        if horizon == 0 || self.stream_time == NEVER {
            return;
        }
        let now = self.stream_time.0;
        let bucket = self.cfg.engine.bucket_ms();
        while let Some(&Reverse((due, idx))) = self.idle.peek() {
            if due > now {
                return;
            }
            self.idle.pop();
            let c = &self.customers[idx as usize];
            let eligible = c.last_seen.0.saturating_add(horizon);
            if eligible > due {
                // active since: its entry moves to its new instant
                self.idle.push(Reverse((eligible, idx)));
                continue;
            }
            let silent_alert = c.episode.active & SignalKind::Inactivity.bit() != 0;
            if c.episode.open && !silent_alert {
                self.idle.push(Reverse((now.max(due) + bucket, idx)));
                continue;
            }
            self.remove(idx as usize);
            self.stats.evicted_idle += 1;
        }
    }

    /// Forgets the `n` least recently active customers (at the cap).
    fn evict_oldest(&mut self, mut n: usize) {
        while n > 0 {
            let Some(Reverse((key, idx))) = self.idle.pop() else {
                return;
            };
            let last = self.customers[idx as usize].last_seen.0;
            if last > key {
                self.idle.push(Reverse((last, idx)));
                continue;
            }
            self.remove(idx as usize);
            self.stats.evicted_cap += 1;
            n -= 1;
        }
    }

    /// Takes customer `idx` out: index, distributions, tiers; its position is reused.
    fn remove(&mut self, idx: usize) {
        let c = std::mem::replace(&mut self.customers[idx], Customer::new(""));
        self.tiers.remove(c.value_bin);
        if let Some(b) = cadence_bin(&c) {
            self.population.cadence.remove(b);
        }
        if c.gap_bin != 255 {
            self.population.second_order_gap.remove(c.gap_bin);
        }
        let customers = &self.customers;
        let removed = self.index.remove(index::hash(&c.id), idx as u32, |i| {
            index::hash(&customers[i as usize].id)
        });
        debug_assert!(removed, "an indexed customer");
        self.free.push(idx as u32);
        self.evicted.push(c.id);
    }

    /// Appends the engine's own state record (stream time, population baseline, value
    /// tiers, counters; version byte first) to `out`.
    pub fn encode_engine(&self, out: &mut Vec<u8>) {
        let mut w = codec::Writer::start(out);
        w.i64(self.max_event_time.0);
        w.i64(self.stream_time.0);
        w.i64(self.watermark_limit.0);
        let s = &self.stats;
        for v in [
            s.applied,
            s.duplicates,
            s.late,
            s.late_dropped,
            s.too_old_for_windows,
            s.deadline_evaluations,
            s.skipped_evaluations,
            s.alerts_open,
            s.alerts_escalated,
            s.alerts_resolved,
            s.customers_created,
            s.evicted_idle,
            s.evicted_cap,
        ] {
            w.u64(v);
        }
        self.population.encode(&mut w);
        self.tiers.encode(&mut w);
        self.model.encode(&mut w);
        self.recent.encode(&mut w);
        for d in self.population.slot_days() {
            w.i64(*d);
        }
        w.f64(self.basket_spread.unwrap_or(0.0));
    }

    /// The state record of every customer, in the engine's order.
    pub fn encode_customers(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.customers.iter().filter(|c| !c.id.is_empty()).map(|c| {
            let mut out = Vec::with_capacity(448);
            c.encode(&mut out);
            out
        })
    }

    /// An engine rebuilt from its records: the engine record and every customer's, in
    /// the order [`Engine::encode_customers`] gave them. It continues exactly as the
    /// engine that wrote them would have. The index and the deadline queue are rebuilt.
    pub fn restore<B: AsRef<[u8]>>(
        cfg: Config,
        engine: &[u8],
        customers: impl IntoIterator<Item = B>,
    ) -> Result<Engine, codec::CodecError> {
        let mut e = Engine::new(cfg);
        let horizon = e.horizon_ms();
        let mut r = codec::Reader::start(engine)?;
        e.max_event_time = Timestamp(r.i64()?);
        e.stream_time = Timestamp(r.i64()?);
        e.watermark_limit = Timestamp(r.i64()?);
        let s = &mut e.stats;
        for v in [
            &mut s.applied,
            &mut s.duplicates,
            &mut s.late,
            &mut s.late_dropped,
            &mut s.too_old_for_windows,
            &mut s.deadline_evaluations,
            &mut s.skipped_evaluations,
            &mut s.alerts_open,
            &mut s.alerts_escalated,
            &mut s.alerts_resolved,
            &mut s.customers_created,
            &mut s.evicted_idle,
            &mut s.evicted_cap,
        ] {
            *v = r.u64()?;
        }
        e.population = population::Population::decode(&mut r)?;
        e.tiers = tiers::Tiers::decode(&mut r)?;
        // Records written before the purchase model end here: the prior, fitted again at
        // the first chance.
        if !r.rest().is_empty() {
            e.model = bgnbd::Model::decode(&mut r)?;
        }
        // Records written before the agreed event time: their latest event time is taken
        // as agreed.
        e.recent = if r.rest().is_empty() {
            if e.max_event_time == NEVER {
                clock::Recent::default()
            } else {
                clock::Recent::filled(e.max_event_time.0)
            }
        } else {
            clock::Recent::decode(&mut r)?
        };
        // Records written before population slots had days: derived from the latest day.
        let slot_days = if r.rest().is_empty() {
            None
        } else {
            let mut days = [0i64; population::DAYS];
            for d in days.iter_mut() {
                *d = r.i64()?;
            }
            Some(days)
        };
        e.population.set_slot_days(slot_days);
        // Records written before the store's basket spread: none, learnt at the next fit.
        if !r.rest().is_empty() {
            let v = r.f64()?;
            e.basket_spread = (v > 0.0).then_some(v);
        }
        r.end()?;
        for bytes in customers {
            let c = Customer::decode(bytes.as_ref())?;
            let hash = index::hash(&c.id);
            if e.find(hash, &c.id).is_some() {
                return Err(codec::CodecError::Invalid("a customer recorded twice"));
            }
            let idx = e.customers.len();
            let scheduled = c.scheduled;
            e.idle
                .push(Reverse((c.last_seen.0.saturating_add(horizon), idx as u32)));
            e.customers.push(c);
            let customers = &e.customers;
            e.index
                .insert(hash, idx as u32, |i| index::hash(&customers[i as usize].id));
            if scheduled != UNSCHEDULED {
                e.deadlines.schedule(idx as u32, scheduled, UNSCHEDULED);
            }
        }
        Ok(e)
    }

    /// Caps the watermark that events raise: a caller merging several sources (the
    /// three input topics of a Kafka partition) sets the minimum over its sources of
    /// their latest event time minus the allowed lateness, so that a source behind the
    /// others (a topic still catching up) does not see its events turn late, nor
    /// silence-driven signals fire before its events are in. `None` lifts the cap.
    /// [`Engine::advance_to`] is not capped.
    pub fn set_watermark_limit(&mut self, limit: Option<Timestamp>) {
        self.watermark_limit = limit.unwrap_or(Timestamp(i64::MAX));
    }

    /// Applies one event; alert changes go to `out`.
    pub fn apply_into(&mut self, e: &Event<'_>, out: &mut Vec<Alert>) -> Outcome {
        self.apply_hashed(e, index::hash(&e.customer_id), out)
    }

    /// [`Engine::apply_into`] with the customer id's hash already computed.
    fn apply_hashed(&mut self, e: &Event<'_>, hash: u64, out: &mut Vec<Alert>) -> Outcome {
        let t = e.occurred_at;
        if self.check_age(e).is_err() {
            return Outcome::TooOld;
        }
        let idx = self.find_or_insert(hash, &e.customer_id);
        let fp = fingerprint(&e.event_id);
        if self.customers[idx].dedup.seen(fp) {
            self.stats.duplicates += 1;
            return Outcome::Duplicate;
        }
        let late = self.stream_time != NEVER && t < self.stream_time;
        if late {
            self.stats.late += 1;
            if self.cfg.engine.late_events == LatePolicy::Drop {
                self.stats.late_dropped += 1;
                return Outcome::DroppedLate;
            }
        }
        self.stats.applied += 1;
        self.record(idx, e, fp);

        self.recent.push(t.0);
        if let Some(agreed) = self.recent.agreed() {
            self.max_event_time = self.max_event_time.max(Timestamp(agreed));
        }
        let watermark = Timestamp(
            self.max_event_time
                .0
                .saturating_sub(self.cfg.engine.lateness_ms()),
        );
        self.stream_time = self.stream_time.max(watermark.min(self.watermark_limit));

        let now = t.max(self.stream_time);
        let c = &self.customers[idx];
        // A benign event cannot raise a signal now, but it can bring the next silence
        // deadline forward (more orders or engagement make the customer's rhythm surer,
        // so its silence threshold shorter): no threshold is shorter than
        // `min_silence_days` from this activity, so the customer is looked at again by
        // then at the latest.
        let recheck = Timestamp(t.0.saturating_add(self.cfg.signals.inactivity.min_silence_ms()));
        if self.cfg.engine.skip_benign_evaluations
            && is_benign(&e.kind)
            && !c.episode.open
            && c.scheduled != UNSCHEDULED
            && recheck > now
        {
            self.stats.skipped_evaluations += 1;
            let scheduled = c.scheduled;
            self.customers[idx].scheduled = self.deadlines.schedule(idx as u32, recheck, scheduled);
            let c = &self.customers[idx];
            if matches!(e.kind, EventKind::OrderPlaced { .. }) {
                // revenue changed: keep the value tiers current (the same span an
                // evaluation registers, without evaluating)
                let revenue = window::trailing_revenue(&c.ring, &self.layout_at(now));
                self.register_revenue(idx, revenue);
            }
        } else {
            self.evaluate_and_transition(idx, now, Some(&e.event_id), out);
        }
        self.run_deadlines(out);
        if late {
            Outcome::AppliedLate
        } else {
            Outcome::Applied
        }
    }

    /// Applies a batch of events in order; alert changes go to `out`. Exactly the same
    /// as calling [`Engine::apply_into`] on each in turn, but faster on large state: it
    /// first looks up every customer of the batch and asks the CPU to fetch their
    /// records, so the cache misses of one batch overlap instead of queueing.
    pub fn apply_batch(&mut self, events: &[Event<'_>], out: &mut Vec<Alert>) {
        self.apply_batch_with(events, out, |_, _| {});
    }

    /// [`Engine::apply_batch`], telling `refused` (with the event's position in
    /// `events`) of each event [`Engine::check_age`] refuses when its turn comes.
    pub fn apply_batch_with(
        &mut self,
        events: &[Event<'_>],
        out: &mut Vec<Alert>,
        mut refused: impl FnMut(usize, crate::decode::DecodeError),
    ) {
        const CHUNK: usize = 32;
        for (n, chunk) in events.chunks(CHUNK).enumerate() {
            // 1. the index slot of every event
            let mut hashes = [0u64; CHUNK];
            for (h, e) in hashes.iter_mut().zip(chunk) {
                *h = index::hash(&e.customer_id);
                prefetch(self.index.slot_ptr(*h));
            }
            // 2. the record of every candidate
            for h in hashes.iter().take(chunk.len()) {
                if let Some(i) = self.index.candidate(*h) {
                    self.prefetch_customer(i as usize);
                }
            }
            // 3. the work, in order
            for (i, (e, h)) in chunk.iter().zip(hashes).enumerate() {
                if let Err(why) = self.check_age(e) {
                    refused(n * CHUNK + i, why);
                    continue;
                }
                self.apply_hashed(e, h, out);
            }
        }
    }

    /// Applies one event and returns the alert changes it caused.
    pub fn apply(&mut self, e: &Event<'_>) -> Vec<Alert> {
        let mut out = Vec::new();
        self.apply_into(e, &mut out);
        out
    }

    /// Lets stream time pass to `t` (never backwards); alert changes go to `out`.
    pub fn advance_to_into(&mut self, t: Timestamp, out: &mut Vec<Alert>) {
        self.stream_time = self.stream_time.max(t);
        self.run_deadlines(out);
    }

    /// Lets stream time pass to `t` and returns the alert changes absence caused.
    pub fn advance_to(&mut self, t: Timestamp) -> Vec<Alert> {
        let mut out = Vec::new();
        self.advance_to_into(t, &mut out);
        out
    }

    /// End of input: stream time advances to the latest event time (no more late
    /// events can come).
    pub fn finish(&mut self) -> Vec<Alert> {
        match self.max_event_time() {
            Some(t) => self.advance_to(t),
            None => Vec::new(),
        }
    }

    fn run_deadlines(&mut self, out: &mut Vec<Alert>) {
        if self.stream_time == NEVER {
            return;
        }
        if self.model.due(self.stream_time.0) {
            if self.cfg.signals.consumption_drop.learn_basket_spread {
                self.learn_basket_spread();
            }
            self.fit_model();
        }
        // Due customers are taken in batches whose records are prefetched first: at a
        // bucket boundary many customers fall due at once, each a cache miss. Taking a
        // batch ahead changes nothing: an evaluation only ever schedules later than
        // now, so the set of entries due now is fixed before the first is evaluated.
        const BATCH: usize = 32;
        let mut batch = [(Timestamp(0), 0u32); BATCH];
        loop {
            let mut n = 0;
            while n < BATCH {
                match self.deadlines.pop_due(self.stream_time) {
                    Some(entry) => {
                        batch[n] = entry;
                        n += 1;
                    }
                    None => break,
                }
            }
            if n == 0 {
                self.evict_due();
                return;
            }
            for &(_, idx) in &batch[..n] {
                self.prefetch_customer(idx as usize);
            }
            for &(due, idx) in &batch[..n] {
                let idx = idx as usize;
                if self.customers[idx].scheduled != due {
                    continue; // stale: the customer was rescheduled earlier since
                }
                self.customers[idx].scheduled = UNSCHEDULED;
                self.stats.deadline_evaluations += 1;
                let now = self.stream_time.max(self.customers[idx].last_seen);
                self.evaluate_and_transition(idx, now, None, out);
            }
        }
    }

    /// Asks the CPU to bring a customer's record into cache.
    fn prefetch_customer(&self, idx: usize) {
        const LINES: usize = std::mem::size_of::<Customer>().div_ceil(64);
        let base = (&self.customers[idx] as *const Customer).cast::<u8>();
        for line in 0..LINES {
            prefetch(base.wrapping_add(line * 64));
        }
    }

    /// Updates state for one event (everything but evaluation).
    /// Notes that customer `idx`'s state changed.
    fn touch(&mut self, idx: usize) {
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        if word >= self.changed_bits.len() {
            self.changed_bits.resize(word + 1, 0);
        }
        if self.changed_bits[word] & bit == 0 {
            self.changed_bits[word] |= bit;
            self.changed.push(idx as u32);
        }
    }

    /// The ids of the customers forgotten since the last call (before
    /// [`Engine::take_changed`], whose records may bring some back): what a changelog
    /// writes tombstones for.
    pub fn take_evicted(&mut self, mut f: impl FnMut(&str)) {
        for id in self.evicted.drain(..) {
            f(&id);
        }
    }

    /// The ids of the customers whose state changed since the last call (each once, in
    /// the order they first changed): what a changelog must write. A new customer
    /// counts as changed.
    pub fn take_changed(&mut self, mut f: impl FnMut(&str, &Customer)) {
        for idx in self.changed.drain(..) {
            let c = &self.customers[idx as usize];
            if !c.id.is_empty() {
                f(&c.id, c);
            }
        }
        self.changed_bits.iter_mut().for_each(|w| *w = 0);
    }

    fn record(&mut self, idx: usize, e: &Event<'_>, fp: u32) {
        self.touch(idx);
        let t = e.occurred_at;
        let width = self.cfg.engine.bucket_ms();
        let c = &mut self.customers[idx];
        let is_order = matches!(e.kind, EventKind::OrderPlaced { .. });
        let old_cadence = if is_order { cadence_bin(c) } else { None };
        let old_gap = c.gap_bin;
        let mut delta = Delta::default();
        let (mut pop_orders, mut pop_engagement) = (0.0, 0.0);
        match &e.kind {
            EventKind::OrderPlaced {
                amount,
                discount_pct,
                ..
            } => {
                delta.value = *amount as f32;
                delta.discount_value = (*amount * *discount_pct / 100.0) as f32;
                delta.orders = 1;
                c.record_order(t);
                pop_orders = 1.0;
            }
            EventKind::OrderCancelled { amount, .. } => {
                delta.value = -(amount.unwrap_or(0.0) as f32)
            }
            EventKind::OrderRefunded { amount, .. } => delta.value = -(*amount as f32),
            EventKind::TicketOpened {
                ticket_id,
                priority,
                category,
            } => {
                delta.tickets = 1;
                delta.trouble = support_tension::opened_points(*priority, *category);
                if delta.trouble > 0 {
                    delta.kinds = TroubleKind::SevereOpening.one();
                }
                delta.requests = u8::from(*category == Category::DiscountRequest);
                c.tickets.open(fingerprint(ticket_id), t);
            }
            EventKind::TicketEscalated { priority, .. } => {
                delta.trouble = support_tension::escalated_points(*priority);
                delta.kinds = TroubleKind::Escalation.one();
            }
            EventKind::TicketReopened { ticket_id } => {
                delta.trouble = support_tension::REOPENED_POINTS;
                delta.kinds = TroubleKind::Reopening.one();
                c.tickets.open(fingerprint(ticket_id), t);
            }
            EventKind::TicketResolved { ticket_id, csat } => {
                delta.trouble = support_tension::resolved_points(*csat);
                if delta.trouble > 0 {
                    delta.kinds = TroubleKind::PoorCsat.one();
                }
                c.tickets.resolve(fingerprint(ticket_id), t);
            }
            EventKind::Engagement { .. } => {
                delta.engagement = 1;
                c.last_engagement = c.last_engagement.max(t);
                pop_engagement = 1.0;
            }
            EventKind::Nps { score } => {
                delta.engagement = 1;
                c.last_engagement = c.last_engagement.max(t);
                c.record_nps(t, *score);
                pop_engagement = 1.0;
            }
        }
        if c.ring.add(t, width, &delta) == Added::TooOld {
            self.stats.too_old_for_windows += 1;
        }
        c.dedup.remember(fp);
        c.first_seen = c.first_seen.min(t);
        c.last_seen = c.last_seen.max(t);
        // population distributions: replace this customer's contribution (only an
        // order can change it)
        let new_cadence = if is_order { cadence_bin(c) } else { None };
        if is_order && new_cadence != old_cadence {
            if let Some(b) = old_cadence {
                self.population.cadence.remove(b);
            }
            if let Some(b) = new_cadence {
                self.population.cadence.add(b);
            }
        }
        if is_order && c.second_order != NEVER {
            let gap = LogHistogram::bin_of(c.second_order.days_since(c.first_order));
            if gap != old_gap {
                if old_gap != 255 {
                    self.population.second_order_gap.remove(old_gap);
                }
                self.population.second_order_gap.add(gap);
                c.gap_bin = gap;
            }
        }
        // An event dated further ahead of the agreed event time than the population
        // keeps days (an event dated "now" inside a backfill) is left out of it: it
        // would take the slot of a day the backfill has yet to count.
        let horizon = self
            .max_event_time
            .plus_days(population::DAYS as f64)
            .max(self.max_event_time);
        let far_ahead = self.max_event_time != NEVER && t > horizon;
        if (pop_orders > 0.0 || pop_engagement > 0.0) && !far_ahead {
            self.population.record(t, pop_orders, pop_engagement);
        }
    }

    /// Fits the purchase model on a sample of this engine's customers at stream time:
    /// those whose id hashes into it, in hash order, so that the same customers give the
    /// same parameters in whatever order they were restored. The sample is a cohort by
    /// first order, which the model takes without bias: customers whose first order
    /// came after the engine's warm-up (earlier ones may have bought before it started,
    /// so their counts are cut short) and within the eviction horizon (older ones may
    /// have been forgotten for their silence, the very thing the model learns from);
    /// every customer while that cohort is too small.
    fn fit_model(&mut self) {
        let now = self.stream_time.0;
        let warm = self
            .population
            .observed_since()
            .plus_days(self.cfg.signals.no_second_purchase.warmup_days);
        let horizon = self.horizon_ms();
        let oldest = if horizon == 0 {
            i64::MIN
        } else {
            now.saturating_sub(horizon)
        };
        let cohort = |c: &Customer| c.first_order >= warm && c.first_order.0 >= oldest;
        let buyers = |c: &&Customer| !c.id.is_empty() && c.orders_total > 0;
        let in_cohort = self
            .customers
            .iter()
            .filter(buyers)
            .filter(|c| cohort(c))
            .count();
        let all = in_cohort < bgnbd::MIN_SAMPLE;
        let n = if all {
            self.customers.iter().filter(buyers).count()
        } else {
            in_cohort
        };
        let every = n.div_ceil(bgnbd::SAMPLE).max(1) as u32;
        let mut sample: Vec<(u32, &str, bgnbd::Summary)> = self
            .customers
            .iter()
            .filter(buyers)
            .filter(|c| all || cohort(c))
            .filter_map(|c| {
                let fp = fingerprint(&c.id);
                if fp % every != 0 {
                    return None;
                }
                let s =
                    bgnbd::Model::summary(c.first_order.0, c.last_order.0, c.orders_total, now)?;
                Some((fp, c.id.as_str(), s))
            })
            .collect();
        sample.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let samples: Vec<bgnbd::Summary> = sample.into_iter().map(|(_, _, s)| s).collect();
        self.model.refit(&samples, now);
    }

    /// Learns the store's basket spread (see [`basket`]) from a sample of customers at
    /// stream time: those whose id hashes into it, so that the same customers give the
    /// same spread in whatever order they were restored.
    fn learn_basket_spread(&mut self) {
        let layout = self.layout_at(self.stream_time);
        let enough = |c: &&Customer| {
            !c.id.is_empty() && c.orders_total as usize >= basket::MIN_ORDER_BUCKETS
        };
        let n = self.customers.iter().filter(enough).count();
        let every = n.div_ceil(basket::SAMPLE).max(1) as u32;
        let estimates = self
            .customers
            .iter()
            .filter(enough)
            .filter(|c| fingerprint(&c.id) % every == 0)
            .filter_map(|c| {
                let (mean, var, buckets) =
                    WindowView::read(&c.ring, layout, c.first_seen).baseline_basket()?;
                basket::estimate(mean, var, buckets)
            })
            .collect();
        if let Some(spread) = basket::prior(estimates) {
            self.basket_spread = Some(spread);
        }
    }

    /// The store's basket spread learnt so far (none before enough customers had a
    /// baseline).
    pub fn basket_spread(&self) -> Option<f64> {
        self.basket_spread
    }

    /// The purchase model in force.
    pub fn purchase_model(&self) -> bgnbd::Params {
        self.model.params
    }

    fn population_view(
        &mut self,
        idx: usize,
        recent_start: Timestamp,
        now: Timestamp,
    ) -> PopulationView {
        let cfg = &self.cfg;
        let c = &self.customers[idx];
        let pop = &mut self.population;
        let nsp = &cfg.signals.no_second_purchase;
        let (cadence_days, second_order_days) = pop.priors(now, |pop| {
            let cadence = pop
                .trusted(
                    pop.cadence.quantile(CADENCE_PRIOR_QUANTILE),
                    pop.cadence.total(),
                    MIN_CADENCE_SAMPLES,
                    now,
                )
                .unwrap_or(cfg.signals.inactivity.default_cadence_days);
            let learned = pop.second_order_gap.quantile(nsp.quantile);
            let samples = pop.second_order_gap.total();
            // Until the engine has watched long enough, gaps longer than its watch are
            // missing from the histogram and the learned quantile is too short; but
            // even then it is a lower bound: beyond the configured time, it wins.
            let second = match pop.trusted(learned, samples, nsp.min_samples, now) {
                Some(d) => d,
                None => learned
                    .filter(|_| samples >= nsp.min_samples)
                    .map_or(nsp.expected_days, |d| d.max(nsp.expected_days)),
            };
            let second = if nsp.learn_from_population {
                second.clamp(7.0, 3650.0)
            } else {
                nsp.expected_days
            };
            (cadence, second)
        });
        let mut v = PopulationView {
            cadence_days,
            second_order_days,
            observed_since: pop.observed_since(),
            ..PopulationView::default()
        };
        if cfg.signals.consumption_drop.learn_basket_spread {
            if let Some(spread) = self.basket_spread {
                v.basket_spread = spread;
            }
        }
        if cfg.population.enabled
            && (self.customers.len() - self.free.len()) as u32 >= cfg.population.min_customers
        {
            let m = cfg.population.min_factor;
            v.orders_factor = pop.factor(Activity::Orders, recent_start, now, m);
            v.engagement_factor = pop.factor(Activity::Engagement, recent_start, now, m);
            if c.last_order != NEVER {
                v.order_silence_factor = pop.factor(Activity::Orders, c.last_order, now, m);
            }
            if c.last_engagement != NEVER {
                v.engagement_silence_factor =
                    pop.factor(Activity::Engagement, c.last_engagement, now, m);
            }
        }
        v
    }

    fn layout_at(&self, now: Timestamp) -> Layout {
        let e = &self.cfg.engine;
        Layout::at(now, e.bucket_ms(), e.recent_buckets, e.baseline_buckets)
    }

    /// Counts a customer's trailing revenue in the value tiers; returns their bin.
    fn register_revenue(&mut self, idx: usize, revenue: f64) -> u16 {
        self.touch(idx);
        let bin = self.tiers.update(self.customers[idx].value_bin, revenue);
        self.customers[idx].value_bin = bin;
        bin
    }

    fn evaluate(&mut self, idx: usize, now: Timestamp) -> Evaluation {
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
            &self.cfg.signals,
        );
        let bin = self.register_revenue(idx, view.trailing_revenue());
        let t = &self.cfg.value_tiers;
        let tier = self
            .tiers
            .tier(bin, t.key_top_fraction, t.core_top_fraction);
        let c = &self.customers[idx];
        let purchases =
            bgnbd::Model::summary(c.first_order.0, c.last_order.0, c.orders_total, now.0);
        let base = purchases.map_or(1.0, |s| {
            score::purchase_health(&self.model.params, s, self.cfg.score.horizon_days)
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

    fn evaluate_and_transition(
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
    fn schedule(&mut self, idx: usize, ev: &Evaluation, now: Timestamp) {
        let rules = self.rules();
        let width = self.cfg.engine.bucket_ms();
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

    fn signal_views(readings: &[Reading; 7], mask: u8) -> Vec<SignalView> {
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

    fn render_alert(
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

    fn record_of(&mut self, idx: usize) -> HealthRecord {
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

/// Hints the CPU to bring the cache line at `p` in; never faults, never changes behaviour.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it does not dereference `p` architecturally and
    // cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Events that can only lower a customer's signals: engagement (NPS answers excluded)
/// and orders without discount.
fn is_benign(kind: &EventKind<'_>) -> bool {
    match kind {
        EventKind::Engagement { .. } => true,
        EventKind::OrderPlaced { discount_pct, .. } => *discount_pct == 0.0,
        _ => false,
    }
}

/// A customer's own mean order gap bin (2+ orders), for the population cadence.
fn cfg_max_customers(cfg: &Config) -> u64 {
    cfg.engine.max_customers
}

fn cadence_bin(c: &Customer) -> Option<u8> {
    (c.orders_total >= 2).then(|| {
        LogHistogram::bin_of(c.last_order.days_since(c.first_order) / f64::from(c.orders_total - 1))
    })
}
