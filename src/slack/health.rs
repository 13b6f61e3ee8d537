//! The forwarder's `/healthz` and `/readyz`: its loop's heartbeat and its assignment.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::telemetry::http::{self, NotOk};

/// Shared with the HTTP probe.
pub(super) struct Status {
    pub(super) beat: Mutex<Instant>,
    pub(super) assigned: AtomicUsize,
    pub(super) stopping: AtomicBool,
    pub(super) liveness: Duration,
}

pub(super) struct Probe(pub(super) Arc<Status>);

impl http::Probe for Probe {
    fn live(&self) -> Result<(), NotOk> {
        let age = self.0.beat.lock().map(|b| b.elapsed()).unwrap_or_default();
        if age > self.0.liveness {
            return Err(NotOk::Stalled {
                name: "the forwarder loop".into(),
                ms: age.as_millis() as u64,
            });
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), NotOk> {
        if self.0.stopping.load(Ordering::Relaxed) {
            return Err(NotOk::ShuttingDown);
        }
        if self.0.assigned.load(Ordering::Relaxed) == 0 {
            return Err(NotOk::NothingAssigned("partition of the alerts topic"));
        }
        Ok(())
    }

    fn customer(&self, _id: &str) -> http::Lookup {
        http::Lookup::NotOwned
    }
}
