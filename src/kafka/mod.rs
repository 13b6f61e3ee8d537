//! The Kafka shell around the pure engine: clients, the live service, and what it
//! decides without a broker (commit positions, record layouts), kept apart so that it
//! is tested exhaustively without one.
//!
//! # Delivery and state
//!
//! How the live service keeps its state and its guarantees through crashes, rebalances,
//! backlogs and broker outages. (Operations — deploying, sizing, metrics, runbooks — are
//! in `deploy/README.md`.)
//!
//! - **State, durable.** One engine per input partition number (partition *p* of all
//!   three topics: they are co-partitioned and keyed by customer), spread over
//!   `kafka.workers` threads. Every checkpoint, a partition engine writes the records of
//!   the customers that changed (keyed by customer id; versioned binary, about 220 bytes
//!   for a customer active for months, less for newer ones; this build reads the records
//!   of the previous layout too, but an older build refuses the new layout by its version,
//!   so rolling back across an upgrade means starting from a fresh changelog)
//!   and one partition record (its own state plus the input positions it reflects) to the
//!   compacted **changelog** topic (`kafka.topics.changelog`, created at start when
//!   missing with the inputs' partition count, `cleanup.policy=compact`), **together with
//!   the input offsets, in one Kafka transaction** of the partition's own transactional
//!   producer (`transactional.id` `<prefix>-state-<p>`). A crash therefore never leaves
//!   state and offsets apart: the next owner of the partition reads the changelog partition
//!   back (`read_committed`: the last committed checkpoint, whole) before it processes any
//!   of its input. `/readyz` says so while it restores; progress is logged every 2 s and
//!   exported (`churnsignal_restore_remaining_records`, `churnsignal_restoring_partitions`).
//!   Compaction keeps one record per customer, so a restore reads about the live state,
//!   not the history (1,000,000 customers: 3.0 s on the project's machine, see `deploy/README.md`).
//! - **At-least-once** (`kafka.processing.guarantee`, the default). Alerts and dead letters
//!   go out at once through an idempotent producer (`acks=all`, retried without a message
//!   timeout). A checkpoint, every `kafka.commit_interval_ms` (1 s), first waits until every
//!   alert and dead letter of its partition is acknowledged, so the offsets it commits never
//!   run ahead of an output (while some are in flight, it is put off until after the
//!   worker's next batch, for at most an interval, rather than holding the messages
//!   behind it). Its customer records mostly go into its transaction ahead of it, while
//!   the worker is idle in the interval's second half. After a crash, the input since the last checkpoint is processed
//!   again from the restored state, and its alerts come again **with the same `alert_id`
//!   and `sequence`**: downstream drops repeats by that key. (Measured: 15 to 54 repeats
//!   over five SIGKILLs in 110,000 events, in different runs.)
//! - **Exactly-once** (`guarantee = "exactly_once"`). A partition's alerts, dead letters
//!   and input offsets are one transaction, committed every
//!   `kafka.processing.transaction_interval_ms` (100 ms); readers with
//!   `isolation.level=read_committed` see every alert exactly once (tested through five
//!   SIGKILLs on one topic and on three, a broker restart, and an alerts topic that
//!   refuses every record for a while, so that dozens of transactions in a row abort and
//!   rewind). A commit runs on a helper thread while processing goes on; what that
//!   processing emits waits for the next transaction. The customer records are not
//!   rewritten in every transaction: they go to the changelog every
//!   `kafka.commit_interval_ms` (1 s), as at-least-once writes them, and each
//!   transaction in between writes the partition's **journal** (key
//!   `\xffchurnsignal-journal`, a few hundred bytes): where the last state records stand
//!   in the input, and what the engine was given since, in order (runs of messages per
//!   input topic, in the order they were taken, with the wall-clock time they were
//!   validated against; idle advances; cap changes). A restore reads the state
//!   records, then the input from their positions to the committed offsets, and replays
//!   the journal over it with its outputs dropped (they were committed already): the
//!   engine is exactly the one that committed (`churnsignal_restore_replayed_messages_total`
//!   counts that input). The state records are also written when a journal would cover
//!   100,000 messages, on revoke and at shutdown, and once an idle partition's journal is
//!   older than the interval, so a restore needs no more input than about one interval of
//!   processing. If that input is gone anyway (retention ran out while the service was
//!   down), the restore logs an error and goes on from the state records at the committed
//!   offsets, as a consumer whose position is gone goes on from what there is. Transactional
//!   errors are handled by class as librdkafka documents them: retriable ones are retried,
//!   abortable ones (a record or the offsets refused) abort the transaction and rewind
//!   the partition (state restored from the changelog, the input since the last commit,
//!   which the worker keeps, processed again, and what the partition made meanwhile
//!   dropped: a rewind happens only between two messages, never inside one), fatal
//!   ones (fenced: another instance took the partition and initialised its transactional
//!   id) stop the process with an error, and nothing the zombie wrote after the fence is
//!   visible. The partition's transactional id is fixed, so a new owner also aborts at
//!   once whatever a dead one left open.
//! - **Rebalances.** Partition *p* of every input topic must sit on one instance, so
//!   churnsignal uses the range assignor in both of Kafka's group protocols
//!   (`kafka.group_protocol`). librdkafka's cooperative-sticky assignor is not an option:
//!   it assigns topic-partitions independently (it would split partition *p* of the three
//!   topics over instances), and librdkafka has no custom assignor API.
//!   - `"classic"` (the default; any broker): the client-side range assignor, eager. Every
//!     rebalance stops every partition engine of every member; each restores from the
//!     changelog (about 3 s per million customers) and goes on. With **static
//!     membership** (`kafka.group_instance_id`, e.g. a StatefulSet pod name) an instance
//!     restarting within `session.timeout.ms` gets its partitions back without a
//!     rebalance at all. Measured on the real broker (Kafka 4.1, two instances, six
//!     partitions): an instance joining consumes its share within about 1 s and has
//!     restored it within 3; a clean stop leaves the group and its partitions move within
//!     2.2 s; a killed one's move after `session.timeout.ms` (42.5 s at librdkafka's 45 s).
//!     That default is kept on purpose (KIP-735 raised it from 10 s because shorter ones
//!     evict members on transient network trouble); lower it in
//!     `[kafka.consumer_properties]` where crashes matter more than such blips.
//!   - `"consumer"` (KIP-848, Kafka 4.0 or later): the broker's range assignor, which is
//!     incremental. A rebalance stops only the engines of the partitions that change
//!     owner; the others keep working through it (tested: a partition that stays on an
//!     instance while another is killed or added is never stopped). The broker hands a
//!     partition's topics over one heartbeat at a time, so an engine starts only when
//!     its instance holds partition *p* of every input topic; the topic-partitions that
//!     came first wait, paused, and are read from their committed offsets once the rest
//!     arrives. The broker's range assignor keeps ranges contiguous, so a change can move
//!     a partition that a sticky assignor would have left in place; it moves at most once
//!     per change. Session and heartbeat are the broker's
//!     (`group.consumer.session.timeout.ms`, 45 s by default;
//!     `group.consumer.heartbeat.interval.ms`), and churnsignal refuses the classic
//!     `session.timeout.ms`/`heartbeat.interval.ms` properties with this protocol. With
//!     static membership the broker refuses a member that takes the
//!     `group.instance.id` of one that was killed until that one's session expires: the
//!     restarted instance stops with an error naming this, and its orchestrator's restart
//!     after the session succeeds (a clean stop releases the id at once). Under
//!     this protocol a member's epoch also moves when other members join or leave, so an
//!     exactly-once transaction in flight at that moment can be refused
//!     (`ILLEGAL_GENERATION`); its partition then rewinds as described above, and nothing
//!     is lost or repeated.
//!
//!   A revoked partition is checkpointed and dropped; its next owner restores it.
//! - **State bounds.** A customer with no event for `engine.evict_after_days` (400) is
//!   forgotten, with a tombstone to the changelog (`churnsignal_customers_evicted_total
//!   {reason="idle"}`); one whose alert is open is kept until its silence is part of the
//!   alert (inactivity active: the play has turned to `regain`). `engine.max_customers`
//!   caps the customers an instance holds (shared evenly among its partitions): at the cap
//!   the least recently active go first, with a warning and `reason="cap"`. A forgotten
//!   customer who comes back starts afresh. Tested: 2,000,000 distinct customers through
//!   one instance stay under 400 MiB resident (the state alone would take 920 MB).
//! - **Dead letters.** An invalid message goes to the dead-letter topic with its original
//!   key, value and headers, plus `churnsignal-source-topic`, `-partition`, `-offset`,
//!   `churnsignal-reason` (a stable code) and `churnsignal-message`; it is counted and its
//!   offset committed like any other. Besides the decoding reasons (`decode::Rejection`), `wrong_topic`
//!   (an event on the topic of another family) and `key_mismatch` (the message key absent
//!   or not the event's `customer_id`: a customer's events must meet in one partition).
//! - **Back-pressure.** Each worker takes at most `kafka.worker_queue_events` events ahead;
//!   when the producer queue is full (a slow or unreachable broker), workers wait, their
//!   queues fill, the poll loop waits and after a second pauses the consumer. Memory stays
//!   bounded, and the process rides out a broker outage without a restart.
//! - **Shutdown.** On SIGTERM or SIGINT readiness goes false, what was consumed is
//!   processed and a last checkpoint commits, and the consumer leaves its group, within
//!   `kafka.shutdown_timeout_secs` (20 s) also when the broker is unreachable (then the last
//!   checkpoint is given up and its input is processed again by the next owner).
//! - **Live equals replay, also on a backlog.** A partition engine reads partition *p* of
//!   the three input topics, which the consumer fetches by bytes, not by time: deployed on
//!   topics that already hold months of history, one topic can deliver months of event
//!   time before another delivers its first message. The engine therefore takes its
//!   inputs' messages in **event-time order** (stream-time synchronization, the semantics
//!   of Kafka Streams' KIP-353 and KIP-695): consumed messages wait in a small buffer per
//!   input, the earliest event goes first (ties: orders, then tickets, then engagement),
//!   and an input whose buffer is empty holds the others back as long as it has
//!   unconsumed messages, whether or not it has delivered anything yet (its position is
//!   below its end, as the consumer's statistics report every 500 ms). So `run` on a
//!   backlog, after a stall, or through a rebalance alerts exactly as `replay` of each
//!   partition's events merged in time order (tested on the real broker: three topics of
//!   three partitions filled one after the other and in the reverse order, a stop during
//!   which the topics fill at different rates, a second instance joining and leaving
//!   during the catch-up, SIGKILLs under exactly-once; restores replay the journal in the
//!   order it recorded). A topic that runs ahead waits in its buffer; when the buffer
//!   holds a quarter of `kafka.worker_queue_events` its partition is paused until the
//!   others catch up, so memory stays bounded. An input that is caught up with nothing
//!   buffered holds the others back for `kafka.max_task_idle_ms` (the one knob; default 0,
//!   as Kafka Streams: never wait for a caught-up input), then counts as idle; an empty
//!   topic therefore never holds anything back for longer, and a deleted one is dropped
//!   from its partitions once librdkafka sees it gone from the metadata: within about a
//!   second (churnsignal sets the consumer's `topic.metadata.propagation.max.ms` to 1000;
//!   librdkafka's 30 s grace is meant for topics just created), and a checkpoint that was
//!   committing the deleted topic's offset is given up at once (its partition rewinds to
//!   the last committed checkpoint). Measured by the real-broker test: the other topics
//!   stood still for at most 1.8 s, against 30 s before.
//!   `churnsignal_stream_time_held_seconds_total{partition,topic}` says how long each
//!   partition waited for which topic, `churnsignal_sync_buffered_messages` how much waits.
//! - **Time.** Stream time is the latest event time a partition engine has taken, minus
//!   the allowed lateness. When a partition has had no event for `kafka.idle_timeout_secs`
//!   and none of its inputs has unconsumed messages, the wall clock stands in (now minus
//!   the allowed lateness), so inactivity and missing second purchases are still noticed
//!   when a feed stops; never while a backlog is being read.
//! - **Ordering.** At the live edge, where every input is caught up, events are taken as
//!   they arrive: an event that reaches one topic a moment after a later event reached
//!   another is applied after it (within the allowed lateness it is not late). Raise
//!   `kafka.max_task_idle_ms` to wait that long for a caught-up topic before going on.

mod assignment;
pub mod changelog;
pub mod client;
pub(crate) mod consumer;
pub mod journal;
pub mod lag;
pub mod offsets;
pub(crate) mod preflight;
pub mod produce;
pub(crate) mod producer;
pub mod records;
pub mod service;
pub mod status;
pub(crate) mod sync;
pub mod topics;
pub(crate) mod trace;
pub(crate) mod work;
mod worker;

pub use service::{run, Report, Service, StartOptions};
pub use status::{Failure, RunError, Status};
