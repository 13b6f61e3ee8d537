//! The forwarder's `/healthz` and `/readyz`: its loop's heartbeat and its assignment.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::telemetry::http;

/// Shared with the HTTP probe.
pub(super) struct Status {
    pub(super) beat: Mutex<Instant>,
    pub(super) assigned: AtomicUsize,
    pub(super) stopping: AtomicBool,
    pub(super) liveness: Duration,
}

pub(super) struct Probe(pub(super) Arc<Status>);

impl http::Probe for Probe {
    fn live(&self) -> Result<(), String> {
        let age = self.0.beat.lock().map(|b| b.elapsed()).unwrap_or_default();
        if age > self.0.liveness {
            return Err(format!(
                "the forwarder loop has not reported for {} s",
                age.as_secs()
            ));
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if self.0.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.0.assigned.load(Ordering::Relaxed) == 0 {
            return Err("no partition of the alerts topic assigned".into());
        }
        Ok(())
    }

    fn customer(&self, _id: &str) -> http::Lookup {
        http::Lookup::NotOwned
    }
}
