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
//! # The live service, by owner
//!
//! Dependencies go one way, down this list (checked with `../shared/tools/structure`:
//! no import cycle among the modules).
//!
//! ```text
//! kafka::service       start (clients, threads, HTTP), graceful stop, run(cfg, shutdown)
//! kafka::preflight     topics exist, inputs co-partitioned, changelog created or checked
//! kafka::consumer      the poll thread: poll, batch to workers, pause under back-pressure
//!   ::rebalance        assign/revoke callbacks: partitions that start or stop, pauses
//!   ::stats            lag and input positions from librdkafka's statistics
//!   ::plan             the pure plans the callbacks carry out: what starts, stops, is
//!                      sought, paused or resumed (property-tested against librdkafka's pauses)
//! kafka::worker        a worker thread: receive, route, tick; runs each Partition's methods
//!                      with what the partitions share (Shared), drops one that must Leave
//!   ::partition        a Partition: engine, inputs, sync buffer, transactions, guarantee
//!   ::guarantee        GuaranteeState: at-least-once's unacknowledged outputs or
//!                      exactly-once's journal, each guarantee's decisions on its own state
//!   ::process          Partition::receive/drain/process/emit: message -> engine -> outputs
//!   ::checkpoint       Partition::checkpoint/settle/rewind: state records, journal and
//!                      offsets in one transaction
//!   ::restore          Partition::open: its producer, the changelog read back, the journal replayed
//!   ::txn              the transaction lifecycle as a state machine (no Kafka; model-tested)
//!   ::transactional    librdkafka's transactional producer behind txn's trait
//! kafka::work          what the consumer and the workers send each other
//! kafka::producer      delivery bookkeeping, the producers' context, send with back-off
//! kafka::status        liveness beats, readiness, the typed Failure that stops the service
//! kafka::sync, assignment, offsets, journal, changelog, records, trace   pure decisions and layouts
//! kafka::client, lag, topics, produce                          clients and tools
//! ```
//!
//! # One event, end to end
//!
//! 1. `kafka::consumer::poll_loop` polls a message of, say, `orders[3]`, copies it into
//!    an `InMsg` (`kafka::work`) tagged with partition 3's rebalance epoch, and batches
//!    it for worker `3 % workers`; a full worker queue pauses the consumer.
//! 2. The worker (`kafka::worker`, `Work::Batch`) hands it to its `Partition::receive`: dropped
//!    if its partition was revoked or moved since, skipped if the restored state
//!    already holds it, else decoded ([`decode`], and the topic and key checked) against
//!    the wall clock and buffered in the partition's synchronizer (`kafka::sync`).
//! 3. `Partition::drain` takes the buffered messages of the partition's three inputs in
//!    event-time order (holding back for an input that lags, up to
//!    `kafka.max_task_idle_ms`); `Partition::process` applies each to the partition's
//!    [`engine::Engine`], which updates the customer's windows, evaluates the
//!    [`signals`], scores and moves the alert lifecycle, and returns alerts.
//! 4. Alerts (or a dead letter, for an event refused anywhere above) become records
//!    (`kafka::records`) and leave in `Partition::emit`, as the partition's
//!    `GuaranteeState` says. At-least-once: sent at once through the shared idempotent
//!    producer, counted pending until acknowledged. Exactly-once: sent into the
//!    partition's open transaction (`txn::Transactions::output`; held while a commit
//!    runs), and the message joins the partition's journal.
//! 5. Every interval, `Partition::checkpoint` writes the changed customers' state
//!    records, the partition record (or, exactly-once between state writes, the
//!    journal) and the input offsets in one transaction, and commits it on a helper
//!    thread; at-least-once first waits for every pending output's acknowledgement
//!    (`GuaranteeState::put_off`: after the worker's next batch while outputs are in
//!    flight), and has sent most customer records into that transaction already, in
//!    the worker's idle moments (`Partition::stream_state`). The
//!    worker settles the commit between two messages (`txn::Transactions::step`); a
//!    failed one rewinds the partition (state restored, its input processed again).
//! 6. Downstream, `churnsignal slack` ([`slack`]) reads the alerts topic and posts to
//!    Slack; the HTTP API answers "why is this customer at risk?" from the engine's
//!    health record of the customer.
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
//! src/kafka/        the live service (see "The live service, by owner" above): service,
//!                   preflight, consumer/ (poll loop, rebalances, statistics), worker/
//!                   (partitions, processing, checkpoints, the transaction state machine),
//!                   producer, status, changelog, journal, offsets, records, topics
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
