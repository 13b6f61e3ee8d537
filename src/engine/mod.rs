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

mod judge;
mod learn;
mod persist;
mod store;

use crate::alert::Alert;
use crate::config::{EngineSettings, LatePolicy};
use crate::event::{Event, EventKind};
use crate::signals::Reading;
use crate::time::Timestamp;
use compact_str::CompactString;
use deadlines::Deadlines;
use lifecycle::Rules;
use population::{LogHistogram, Population};
use score::Risk;
use state::{fingerprint, Customer, NEVER, UNSCHEDULED};
use tiers::{Tier, Tiers};
use window::WindowView;

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

impl Stats {
    /// Every counter, in the order the engine's state record stores them: written once,
    /// so that encoding and restoring cannot disagree (a counter added to [`Stats`]
    /// without a place here fails to compile: the destructuring names every field).
    fn counters_mut(&mut self) -> [&mut u64; 13] {
        let Stats {
            applied,
            duplicates,
            late,
            late_dropped,
            too_old_for_windows,
            deadline_evaluations,
            skipped_evaluations,
            alerts_open,
            alerts_escalated,
            alerts_resolved,
            customers_created,
            evicted_idle,
            evicted_cap,
        } = self;
        [
            applied,
            duplicates,
            late,
            late_dropped,
            too_old_for_windows,
            deadline_evaluations,
            skipped_evaluations,
            alerts_open,
            alerts_escalated,
            alerts_resolved,
            customers_created,
            evicted_idle,
            evicted_cap,
        ]
    }
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
    cfg: EngineSettings,
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
    /// A new engine with `cfg`, the validated settings it reads.
    pub fn new(cfg: EngineSettings) -> Engine {
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

    /// Its settings.
    pub fn settings(&self) -> &EngineSettings {
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
        let t = &self.cfg.value_tiers();
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
        let days = self.cfg.input().max_event_age_days;
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
            entry: self.cfg.score().entry_severity,
            exit: self.cfg.score().exit_severity,
            repeat_ms: (self.cfg.alerts().repeat_after_secs as i64).saturating_mul(1000),
        }
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
            if self.cfg.engine().late_events == LatePolicy::Drop {
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
                .saturating_sub(self.cfg.engine().lateness_ms()),
        );
        self.stream_time = self.stream_time.max(watermark.min(self.watermark_limit));

        let now = t.max(self.stream_time);
        let c = &self.customers[idx];
        // A benign event cannot raise a signal now, but it can bring the next silence
        // deadline forward (more orders or engagement make the customer's rhythm surer,
        // so its silence threshold shorter): no threshold is shorter than
        // `min_silence_days` from this activity, so the customer is looked at again by
        // then at the latest.
        let recheck = Timestamp(t.0.saturating_add(self.cfg.signals().inactivity.min_silence_ms()));
        if self.cfg.engine().skip_benign_evaluations
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
            if self.cfg.signals().consumption_drop.learn_basket_spread {
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

/// The configured customer cap (0: none).
fn cfg_max_customers(cfg: &EngineSettings) -> u64 {
    cfg.engine().max_customers
}

/// A customer's own mean order gap bin (2+ orders), for the population cadence.
fn cadence_bin(c: &Customer) -> Option<u8> {
    (c.orders_total >= 2).then(|| {
        LogHistogram::bin_of(c.last_order.days_since(c.first_order) / f64::from(c.orders_total - 1))
    })
}
