//! # churnsignal
//!
//! A stream processor that tells a company which of its customers are drifting away
//! while there is still time to act.
//!
//! ```text
//! events (JSON / protobuf)                              alerts (open / escalated / resolved)
//!   ──► decode ──► Event ──► engine: windows, signals, score, lifecycle ──► Alert
//!        │                       ▲                                      └─► HealthRecord
//!        └─► rejection reason    └── stream time (watermark) drives absence signals
//! ```
//!
//! # Layout
//! - [`time`]: event-time instants.
//! - [`event`]: domain events (what the engine consumes).
//! - [`decode`]: JSON and protobuf into events, with a stable reason for every rejection.
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`engine`]: the pure core (no async, no Kafka, no clock): per-customer windows,
//!   customer index, deadline queue, population baseline, value tiers, score, alert
//!   lifecycle.
//! - [`signals`]: the seven health signals, one module each.
//! - [`alert`]: alerts and health records, JSON and protobuf.
//! - [`replay`]: the engine over a file of events, as `churnsignal replay` runs it.
//! - [`evaluate`]: `churnsignal evaluate`, alerts and score against labels.
//! - [`kafka`]: the live service around the engine: consumer group, partition engines
//!   on worker threads, the state changelog (restore on assignment, checkpoints in
//!   Kafka transactions with the input offsets), alerts and dead letters out.
//! - [`slack`]: `churnsignal slack`, the forwarder from the alerts topic to Slack
//!   incoming webhooks (Block Kit, routing, retries, no repeats).
//! - [`generate`]: a deterministic generator of realistic event histories.
//! - [`bench`](mod@bench): `churnsignal bench engine`.
#![deny(missing_docs)]

pub mod alert;
pub mod bench;
pub mod config;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod evaluate;
pub mod event;
pub mod generate;
pub mod kafka;
pub mod replay;
pub mod signals;
pub mod slack;
pub mod telemetry;
pub mod time;

/// Generated protobuf types (`proto/churnsignal/v1`).
pub mod proto {
    /// `churnsignal.v1`
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/churnsignal.v1.rs"));
    }
}
