//! `churnsignal bench engine`: the engine alone, on a generated history
//! (`churnsignal bench kafka`, the service end to end, is in [`kafka`]).
//!
//! Three measurements on the same events, one thread (so the rates are per core):
//! decode + apply (JSON bytes in, alerts out), apply alone (events decoded beforehand,
//! borrowing the same bytes), and decode alone. Memory per customer is given two ways:
//! the engine's own accounting of its state, and the growth of the process's resident
//! memory while the engine filled up.

pub mod kafka;

use std::time::Instant;

use serde::Serialize;

use crate::config::EngineSettings;
use crate::decode::{decode_json, Limits};
use crate::engine::Engine;
use crate::event::Event;
use crate::generate::{History, Spec};

/// Events decoded and applied together.
const BATCH: usize = 1024;

/// Bench settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct customers.
    pub customers: u32,
    /// Events (the history is cut here).
    pub events: u64,
    /// Generator seed.
    pub seed: u64,
}

/// Results, all rates per core (one thread).
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Events measured.
    pub events: u64,
    /// Distinct customers the engine ended up tracking.
    pub customers: u64,
    /// Days of history the events span.
    pub days: f64,
    /// Mean JSON event size, bytes.
    pub mean_event_bytes: f64,
    /// Events/s with JSON decoding included, over all events.
    pub events_per_sec_with_decode: f64,
    /// Events/s, engine only (pre-decoded), over all events.
    pub events_per_sec_predecoded: f64,
    /// Events/s with JSON decoding included, second half of the stream (customers known).
    pub steady_events_per_sec_with_decode: f64,
    /// Events/s, engine only, second half of the stream (customers known).
    pub steady_events_per_sec_predecoded: f64,
    /// Events/s, JSON decoding only.
    pub events_per_sec_decode_only: f64,
    /// Alerts the engine emitted.
    pub alerts: u64,
    /// Engine state bytes per customer (its own accounting).
    pub state_bytes_per_customer: f64,
    /// Resident memory growth per customer while the engine filled up.
    pub rss_bytes_per_customer: f64,
    /// Deadline-queue entries per customer at the end.
    pub deadline_entries_per_customer: f64,
    /// `size_of::<Customer>()`.
    pub customer_record_bytes: usize,
    /// Mean encoded state record of a customer (the changelog's unit), bytes.
    pub state_record_bytes: f64,
    /// Customers encoded into state records per second.
    pub encode_customers_per_sec: f64,
    /// Customers rebuilt from state records per second (`Engine::restore`: decode,
    /// index, deadline queue).
    pub restore_customers_per_sec: f64,
}

/// p50, p90, p99 and max of `sorted`, NaN when empty.
pub fn percentiles(sorted: &[i64]) -> [f64; 4] {
    [0.5, 0.9, 0.99, 1.0].map(|q| {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[i] as f64
    })
}

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], bytes
/// (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident set size to the current one (Linux `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs the benchmark. `events` is rounded down to whole batches of 1,024.
pub fn engine(opts: &Options, cfg: &EngineSettings) -> Results {
    let spec = Spec {
        customers: opts.customers,
        days: 3_650,
        seed: opts.seed,
        late_joiners: false,
        ..Spec::default()
    };
    // Generate the JSON lines up front (not measured).
    let mut buf = Vec::with_capacity(opts.events as usize * 200);
    let mut bounds = Vec::with_capacity(opts.events as usize);
    let (mut first, mut last) = (None, None);
    let n = (opts.events as usize / BATCH * BATCH).max(BATCH);
    for g in History::new(spec).take(n) {
        let start = buf.len();
        g.write_json(&mut buf).expect("writing to memory");
        bounds.push((start, buf.len() - 1));
        first.get_or_insert(g.at);
        last = Some(g.at);
    }
    let events = bounds.len() as u64;
    let limits = Limits::from_input(cfg.input(), None);

    // 1. decode + apply
    let rss_before = rss_bytes();
    let mut engine = Engine::new(cfg.clone());
    let mut out = Vec::new();
    let mut alerts = 0u64;
    // Decode a batch, then apply it: the shape of the live consumer (a poll returns a
    // batch of messages), and it lets the engine overlap its cache misses.
    let half = bounds.len() / BATCH / 2 * BATCH;
    let mut batch: Vec<Event<'_>> = Vec::with_capacity(BATCH);
    let t0 = Instant::now();
    let mut t_half = t0;
    for (i, chunk) in bounds.chunks(BATCH).enumerate() {
        if i * BATCH == half {
            t_half = Instant::now();
        }
        batch.clear();
        batch.extend(
            chunk
                .iter()
                .filter_map(|&(s, e)| decode_json(&buf[s..e], &limits).ok()),
        );
        engine.apply_batch(&batch, &mut out);
        alerts += out.len() as u64;
        out.clear();
    }
    let with_decode = t0.elapsed().as_secs_f64();
    let with_decode_steady = t_half.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let customers = engine.customers() as u64;
    let state_bytes = engine.state_bytes();
    let queued = engine.queued_deadlines();
    drop(engine);

    // 2. decode only, keeping the events (they borrow `buf`)
    let t0 = Instant::now();
    let decoded: Vec<Event<'_>> = bounds
        .iter()
        .filter_map(|&(s, e)| decode_json(&buf[s..e], &limits).ok())
        .collect();
    let decode_only = t0.elapsed().as_secs_f64();

    // 3. apply only
    let mut engine = Engine::new(cfg.clone());
    let (first_half, second) = decoded.split_at(half);
    let t0 = Instant::now();
    for batch in first_half.chunks(BATCH) {
        engine.apply_batch(batch, &mut out);
        out.clear();
    }
    let t_half = Instant::now();
    for batch in second.chunks(BATCH) {
        engine.apply_batch(batch, &mut out);
        out.clear();
    }
    let predecoded = t0.elapsed().as_secs_f64();
    let predecoded_steady = t_half.elapsed().as_secs_f64();

    // 4. state records: encode every customer, then rebuild an engine from them
    let t0 = Instant::now();
    let mut engine_record = Vec::new();
    engine.encode_engine(&mut engine_record);
    let records: Vec<Vec<u8>> = engine.encode_customers().collect();
    let encode = t0.elapsed().as_secs_f64();
    let record_bytes = records.iter().map(Vec::len).sum::<usize>() as f64;
    drop(engine);
    let t0 = Instant::now();
    let rebuilt = Engine::restore(cfg.clone(), &engine_record, &records)
        .expect("records the engine just wrote decode");
    let restore = t0.elapsed().as_secs_f64();
    assert_eq!(rebuilt.customers(), records.len());
    drop(rebuilt);

    let per_customer = |b: f64| {
        if customers > 0 {
            b / customers as f64
        } else {
            0.0
        }
    };
    Results {
        events,
        customers,
        days: match (first, last) {
            (Some(a), Some(b)) => b.days_since(a),
            _ => 0.0,
        },
        mean_event_bytes: buf.len() as f64 / events.max(1) as f64,
        events_per_sec_with_decode: events as f64 / with_decode,
        events_per_sec_predecoded: decoded.len() as f64 / predecoded,
        steady_events_per_sec_with_decode: (events - half as u64) as f64 / with_decode_steady,
        steady_events_per_sec_predecoded: second.len() as f64 / predecoded_steady,
        events_per_sec_decode_only: decoded.len() as f64 / decode_only,
        alerts,
        state_bytes_per_customer: per_customer(state_bytes as f64),
        rss_bytes_per_customer: per_customer(rss_after.saturating_sub(rss_before) as f64),
        deadline_entries_per_customer: per_customer(queued as f64),
        customer_record_bytes: std::mem::size_of::<crate::engine::state::Customer>(),
        state_record_bytes: record_bytes / records.len().max(1) as f64,
        encode_customers_per_sec: records.len() as f64 / encode,
        restore_customers_per_sec: records.len() as f64 / restore,
    }
}

impl Results {
    /// Human-readable report.
    pub fn render(&self) -> String {
        format!(
            "bench engine: {} events, {} customers, {:.1} days of history, {:.0} bytes/event (JSON), 1 thread\n\
             \x20 decode + apply : {:>12.0} events/s overall, {:>12.0} events/s steady (second half, customers known)\n\
             \x20 apply only     : {:>12.0} events/s overall, {:>12.0} events/s steady (pre-decoded)\n\
             \x20 decode only    : {:>12.0} events/s\n\
             \x20 alerts         : {}\n\
             \x20 memory         : {:.0} bytes/customer resident, {:.0} bytes/customer accounted ({} per record, {:.2} deadline entries per customer)\n\
             \x20 state records  : {:.0} bytes/customer; encode {:.0} customers/s, restore {:.0} customers/s",
            self.events,
            self.customers,
            self.days,
            self.mean_event_bytes,
            self.events_per_sec_with_decode,
            self.steady_events_per_sec_with_decode,
            self.events_per_sec_predecoded,
            self.steady_events_per_sec_predecoded,
            self.events_per_sec_decode_only,
            self.alerts,
            self.rss_bytes_per_customer,
            self.state_bytes_per_customer,
            self.customer_record_bytes,
            self.deadline_entries_per_customer,
            self.state_record_bytes,
            self.encode_customers_per_sec,
            self.restore_customers_per_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank_and_the_maximum() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentiles(&v), [51.0, 90.0, 99.0, 100.0]);
        assert_eq!(percentiles(&[7]), [7.0; 4]);
        assert!(percentiles(&[]).iter().all(|p| p.is_nan()));
    }
}
