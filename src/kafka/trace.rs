//! Where an alert's time went: the wall-clock instants its input message passed, from
//! its Kafka timestamp to the alert's acknowledgement, split into stages. The service
//! records them as `churnsignal_alert_latency_stage_seconds{stage}` next to the
//! end-to-end `churnsignal_event_to_alert_latency_seconds`; `bench kafka` reports
//! their percentiles.
//!
//! The instants cost no clock read per message: the poll loop's wall clock is the one
//! it reads every 64 polls while messages flow (every poll when idle), the worker's is
//! read once per batch, and only the moment an alert is made reads the clock (alerts
//! are a small fraction of events).

/// The wall-clock instants (ms since the epoch) an alert's input message passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Trace {
    /// The input message's Kafka timestamp (0 or less: none, as for an alert of the
    /// passing of time, which follows no message).
    pub produced: i64,
    /// Polled by the consumer.
    pub polled: i64,
    /// Received by its worker (decoded, buffered for synchronization).
    pub received: i64,
    /// Applied: its alert made.
    pub applied: i64,
}

/// The stages, in order, as the `stage` label names them.
pub(crate) const STAGES: [&str; 4] = ["fetch", "queue", "sync", "produce"];

impl Trace {
    /// The stages' durations, ms, once the alert is acknowledged at `acked`:
    /// - `fetch`: produced to polled (the upstream producer's batching, the broker, the
    ///   consumer's fetch and its local queue);
    /// - `queue`: polled to received (the poll loop's batch and the worker's channel);
    /// - `sync`: received to applied (held by stream-time synchronization, and the
    ///   partition's earlier messages);
    /// - `produce`: applied to acknowledged (the alert's send and the broker's ack).
    ///
    /// A negative difference (the producer's clock ahead of this host's) counts as 0.
    /// `None` without an input timestamp.
    pub(crate) fn stages(&self, acked: i64) -> Option<[i64; 4]> {
        if self.produced <= 0 {
            return None;
        }
        let points = [
            self.produced,
            self.polled,
            self.received,
            self.applied,
            acked,
        ];
        let mut out = [0; 4];
        for (k, d) in out.iter_mut().enumerate() {
            *d = (points[k + 1] - points[k]).max(0);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alerts_time_splits_into_its_stages() {
        let t = Trace {
            produced: 1_000,
            polled: 1_040,
            received: 1_041,
            applied: 1_300,
        };
        assert_eq!(t.stages(1_306), Some([40, 1, 259, 6]));
        // A producer whose clock runs ahead: its part counts as nothing, not less.
        let ahead = Trace {
            produced: 1_100,
            ..t
        };
        assert_eq!(ahead.stages(1_306), Some([0, 1, 259, 6]));
        // Alerts of the passing of time follow no input message.
        assert_eq!(Trace::default().stages(1_306), None);
    }
}
