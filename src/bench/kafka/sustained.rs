//! The highest rate `run` keeps up with while the load generator offers it live, on
//! the cores the service and the broker share: probes of a few seconds, each on the
//! history as it goes on (see `offer::Continuation`).
//!
//! The throughput phase's rate drains a backlog with the generator idle. Offered live
//! at that rate, the generator, the broker and the service together cannot keep it up
//! on a two-core machine, so half of it is no rate the service could sustain live.

use serde::Serialize;

use super::offer::{self, Continuation, LatencyPhase};
use super::BenchError;
use crate::config::Config;
use crate::kafka::Status;

/// Probes of the sustained rate, at most.
const PROBES: usize = 6;

/// One probe of the sustained rate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Probe {
    /// Events/s asked of the generator.
    pub offered: f64,
    /// Events/s the generator offered.
    pub achieved: f64,
    /// Events/s the service processed meanwhile.
    pub processed: f64,
    /// Events in the broker's log the service had not processed when the probe ended.
    pub behind: u64,
    /// Whether the service kept up (see `kept_up`).
    pub kept_up: bool,
}

/// The rate of the next probe, or `None` when the search is done. From step 3's rate
/// down, by the rate the service processed while it could not keep up, until it keeps
/// up; then bisected (geometrically) between the highest rate kept up with and the
/// lowest not, to within 10%. Done early when the generator could not offer the rate
/// asked and the service kept up: the machine offers no more.
fn next_probe(probes: &[Probe]) -> Option<f64> {
    let last = probes.last()?;
    if last.kept_up && last.achieved < 0.95 * last.offered {
        return None;
    }
    let failed = probes
        .iter()
        .filter(|p| !p.kept_up)
        .map(|p| p.achieved)
        .fold(f64::INFINITY, f64::min);
    match sustained_rate(probes) {
        (_, false) => Some(0.9 * last.achieved.min(last.processed)),
        (ok, true) if failed > 1.1 * ok => Some((ok * failed).sqrt()),
        (_, true) => None,
    }
}

/// The highest rate achieved in a probe the service kept up with, and `true`; if it
/// kept up with none, the lowest rate it processed, and `false`.
pub(super) fn sustained_rate(probes: &[Probe]) -> (f64, bool) {
    let ok = probes
        .iter()
        .filter(|p| p.kept_up)
        .map(|p| p.achieved)
        .fold(f64::NEG_INFINITY, f64::max);
    if ok.is_finite() {
        (ok, true)
    } else {
        let low = probes
            .iter()
            .map(|p| p.processed)
            .fold(f64::INFINITY, f64::min);
        (if low.is_finite() { low } else { 0.0 }, false)
    }
}

/// Length of a probe, seconds.
const PROBE_SECS: f64 = 4.0;

/// Whether the service kept up with an offering: when the offering ended, it was
/// behind the broker's log by at most a quarter of a second of the rate achieved. (A
/// service that cannot keep up falls behind by the difference of the rates times the
/// probe's length: at 94% of the rate offered, by a quarter of a second in a probe.)
fn kept_up(p: &LatencyPhase) -> bool {
    (p.behind_at_end as f64) <= 0.25 * p.achieved_rate
}

/// Probes from `start` events/s (see [`next_probe`]); `processed` counts the events the
/// service has processed, the probes' included when this returns.
pub(super) fn search(
    cfg: &Config,
    history: &mut Continuation,
    start: f64,
    status: &Status,
    processed: &mut u64,
) -> Result<Vec<Probe>, BenchError> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut rate = Some(start);
    while let Some(r) = rate.filter(|_| probes.len() < PROBES) {
        let o = offer::offer(
            cfg,
            history.next(),
            r.round() as u32,
            PROBE_SECS,
            status,
            *processed,
        )?;
        history.advance(o.last);
        *processed += o.events;
        let p = Probe {
            offered: r,
            achieved: o.phase.achieved_rate,
            processed: o.phase.processed_rate,
            behind: o.phase.behind_at_end,
            kept_up: kept_up(&o.phase),
        };
        eprintln!(
            "bench kafka: probe at {:.0}/s: {:.0} offered, {:.0} processed, {} behind, {}",
            p.offered,
            p.achieved,
            p.processed,
            p.behind,
            if p.kept_up { "kept up" } else { "not kept up" }
        );
        probes.push(p);
        rate = next_probe(&probes);
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(offered: f64, achieved: f64, processed: f64, kept_up: bool) -> Probe {
        Probe {
            offered,
            achieved,
            processed,
            behind: 0,
            kept_up,
        }
    }

    #[test]
    fn the_probes_step_down_until_the_service_keeps_up_then_bisect() {
        // Not kept up: 90% of what was processed (or achieved, if less).
        let mut p = vec![probe(500e3, 400e3, 200e3, false)];
        assert_eq!(next_probe(&p), Some(180e3));
        // Kept up at 180k, failed at 400k achieved: the geometric middle.
        p.push(probe(180e3, 180e3, 178e3, true));
        let mid = next_probe(&p).unwrap();
        assert!((mid - (180e3f64 * 400e3).sqrt()).abs() < 1.0);
        // Failed there: between 180k and 268k.
        p.push(probe(mid, mid, 200e3, false));
        let mid2 = next_probe(&p).unwrap();
        assert!(mid2 > 180e3 && mid2 < mid);
        // Kept up within 10% of the lowest failure: done, at the highest kept up.
        p.push(probe(mid2, 250e3, 249e3, true));
        assert_eq!(next_probe(&p), None);
        assert_eq!(sustained_rate(&p), (250e3, true));
    }

    #[test]
    fn the_search_stops_when_the_generator_cannot_offer_more() {
        let p = vec![probe(500e3, 300e3, 299e3, true)];
        assert_eq!(next_probe(&p), None);
        assert_eq!(sustained_rate(&p), (300e3, true));
    }

    #[test]
    fn without_a_probe_kept_up_the_sustained_rate_is_unconfirmed() {
        let p = vec![
            probe(500e3, 400e3, 200e3, false),
            probe(180e3, 180e3, 150e3, false),
        ];
        assert_eq!(sustained_rate(&p), (150e3, false));
        assert_eq!(sustained_rate(&[]), (0.0, false));
    }

    #[test]
    fn a_service_kept_up_when_at_most_a_quarter_second_of_input_was_left() {
        let phase = |achieved: f64, behind: u64| LatencyPhase {
            offered_rate: 0,
            achieved_rate: achieved,
            samples: 0,
            latency_ms: [0.0; 4],
            stage_ms: [[0.0; 4]; 4],
            upstream_ms: [0.0; 4],
            processed_rate: 0.0,
            behind_at_end: behind,
        };
        assert!(kept_up(&phase(100_000.0, 25_000)));
        assert!(!kept_up(&phase(100_000.0, 25_001)));
        assert!(kept_up(&phase(0.0, 0)));
    }
}
