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
//! - [`vocab`]: the shared vocabulary (status, risk, play, signal kind, a signal's
//!   reading, alert format, input encoding); imports nothing above [`time`].
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
//!
//! # Repository layout
//!
//! ```text
//! src/main.rs       CLI (clap); anyhow only here
//! src/lib.rs        crate overview and data flow
//! src/event.rs      domain events
//! src/decode/       JSON and protobuf into events; one validation; rejection reasons
//! src/config/       TOML + environment -> validated config ([kafka] and [log] in kafka.rs, [http]
//!                   in http.rs); secret.rs: which values are secret, and their redaction
//! src/engine/       the pure core: state, window, index, deadlines, population, tiers, score, lifecycle,
//!                   clock (the agreed event time), codec (state records for changelog and restore)
//! src/signals/      one module per signal, each a pure `evaluate` with its tests
//! src/alert.rs      alerts and health records, JSON and protobuf
//! src/replay.rs     the engine over a file
//! src/generate/     deterministic realistic histories (tests, bench, backtests)
//! src/kafka/        the live service: client configs, runtime (poll loop, rebalances), worker
//!                   threads with partition engines and their checkpoint transactions,
//!                   changelog (state records, restore), offsets, records, topics
//! src/telemetry/    metric names, the HTTP servers and their limits (http.rs), and what they
//!                   answer (api.rs: metrics, health, the customer API with tokens and rate limit)
//! src/slack/        `slack`: the forwarder to Slack webhooks (message, post, one poster per
//!                   webhook, progress and its commit metadata)
//! src/demo.rs       `demo` on librdkafka's mock cluster
//! src/bench/        `bench engine`, `bench kafka`
//! proto/            protobuf contracts and their build script (protox, no system protoc)
//! config/           default.toml: every option with its default; slack.example.toml
//! tests/            scenario, property, replay, accuracy, HTTP and secret tests; tests/kafka: real-broker,
//!                   mock-cluster and demo tests (one test binary)
//! deploy/kafka/     a local single-node Apache Kafka 4.1 (KRaft) from Maven Central jars
//!                   (kafka.sh install|start|stop|halt|resume), used by tests and benchmarks
//! deploy/           README.md (operations and runbooks), Dockerfile, compose.yaml, kubernetes/, prometheus/ (rules and their
//!                   promtool tests), grafana/ (dashboard, provisioning); tests/deploy.rs
//!                   checks every file
//! ```
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
pub mod vocab;

/// Generated protobuf types (`proto/churnsignal/v1`).
pub mod proto {
    /// `churnsignal.v1`
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/churnsignal.v1.rs"));
    }
}
