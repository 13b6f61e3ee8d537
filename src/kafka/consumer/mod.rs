//! The consumer side: the poll thread's loop, which owns the group member, hands
//! messages to the worker of their partition in batches, pauses the consumer under
//! back-pressure, and runs the rebalance callbacks (see [`rebalance`]) and statistics
//! (see [`stats`]).

pub(crate) mod plan;
pub(crate) mod rebalance;
pub(crate) mod stats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::Message;

use crate::config::{Config, InputTopic};
use crate::kafka::assignment::Epochs;
use crate::kafka::client::{client_error, log};
use crate::kafka::consumer::plan::Membership;
use crate::kafka::producer::{wall_now, ProducerCtx};
use crate::kafka::status::{Failure, Status};
use crate::kafka::work::{FullBuffers, InMsg, PositionReport, Work};
use crate::telemetry::events::{Emit, MaxPollExceeded};
use crate::telemetry::{self};

/// State shared by the poll thread, the consumer callbacks and the HTTP probe.
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) inputs: Arc<Vec<InputTopic>>,
    pub(crate) status: Arc<Status>,
    pub(crate) workers: Mutex<Vec<SyncSender<Work>>>,
    /// What is assigned, which partitions run, what is paused (see [`plan`]).
    pub(crate) membership: Mutex<Membership>,
    /// The running partitions' epochs.
    pub(crate) epochs: Arc<Epochs>,
    pub(crate) producer: ThreadedProducer<ProducerCtx>,
    /// The poll loop has paused the consumer (back-pressure). librdkafka keeps a
    /// partition's pause across a rebalance, but a resume only reaches the partitions
    /// assigned when it is called: each rebalance therefore resumes the partitions it
    /// takes away and gives the ones it brings this state.
    pub(crate) paused: AtomicBool,
    /// The consumed position of each input partition this instance consumes (for the
    /// lag monitor).
    pub(crate) own: crate::kafka::lag::OwnPositions,
    /// Topic-partitions whose workers' buffers are full.
    pub(crate) full: Arc<FullBuffers>,
    /// Position reports from the last statistics, for the poll loop to hand on.
    pub(crate) reports: Mutex<Vec<PositionReport>>,
    pub(crate) reports_ready: AtomicBool,
    /// See [`settle_time`].
    pub(crate) settle: Duration,
}

impl Shared {
    pub(crate) fn topic_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|t| t.name == name)
    }

    pub(crate) fn worker_of(&self, partition: i32, n: usize) -> usize {
        partition.unsigned_abs() as usize % n
    }

    /// Sends to a worker, waiting at most `timeout` for room.
    pub(crate) fn send_to(&self, w: usize, mut work: Work, timeout: Duration) -> bool {
        let Some(tx) = self.workers.lock().expect("workers lock").get(w).cloned() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match tx.try_send(work) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    work = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    pub(crate) fn worker_count(&self) -> usize {
        self.workers.lock().expect("workers lock").len()
    }

    /// The input topic-partitions of a list, as (topic index, partition).
    pub(crate) fn input_partitions(&self, tpl: &TopicPartitionList) -> Vec<(usize, i32)> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())))
            .collect()
    }

    /// A list of topic-partitions.
    pub(crate) fn list(&self, tps: &[(usize, i32)]) -> TopicPartitionList {
        let mut l = TopicPartitionList::new();
        for (t, p) in tps {
            l.add_partition(&self.inputs[*t].name, *p);
        }
        l
    }

    pub(crate) fn names(&self, tps: &[(usize, i32)]) -> Vec<String> {
        tps.iter()
            .map(|(t, p)| format!("{}[{p}]", self.inputs[*t].name))
            .collect()
    }
}

/// The consumer's context: rebalances, commits, statistics, logs.
pub(crate) struct ConsumerCtx {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.shared.lag(&statistics);
        self.shared.positions(&statistics);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // The callbacks carry out plans (see `plan::Membership`).
            Rebalance::Revoke(tpl) => self.shared.revoke(consumer, tpl),
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                telemetry::rebalance("error");
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.assign(consumer, tpl);
        }
    }
}

pub(crate) const BATCH: usize = 512;

/// How long the poll loop waits for room in a worker queue before it pauses the consumer.
pub(crate) const PAUSE_AFTER: Duration = Duration::from_secs(1);

pub(crate) fn set_paused(consumer: &BaseConsumer<ConsumerCtx>, shared: &Shared, pause: bool) {
    shared.paused.store(pause, Ordering::SeqCst);
    shared.apply_pauses(consumer);
    telemetry::backpressure(pause);
}

/// How often the poll loop refreshes the group metadata workers send offsets with.
pub(crate) const GROUP_REFRESH: Duration = Duration::from_millis(20);

/// The poll thread's loop.
pub(crate) fn poll_loop(
    consumer: BaseConsumer<ConsumerCtx>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let status = shared.status.clone();
    let n = shared.worker_count();
    let mut batches: Vec<Vec<InMsg>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
    let senders: Vec<SyncSender<Work>> = shared.workers.lock().expect("workers lock").clone();
    let mut paused = false;
    let mut blocked_since: Option<Instant> = None;
    let mut last_flush = Instant::now();
    let mut polls = 0u32;
    let mut now = Instant::now();
    // The wall clock read with `now`, for alerts' latency stages (see `kafka::trace`).
    let mut wall = wall_now().0;
    let (mut epochs, mut epochs_seen) = (BTreeMap::new(), u64::MAX);
    let mut group_refreshed = now;
    // Position reports waiting for their worker's batch to go first.
    let mut reports: Vec<Vec<PositionReport>> = (0..n).map(|_| Vec::new()).collect();
    while !stop.load(Ordering::Relaxed) && !status.failed.load(Ordering::Relaxed) {
        if shared.full.changed.swap(false, Ordering::AcqRel) {
            shared.apply_pauses(&consumer);
        }
        // One clock reading per 64 polls while messages flow (every one when idle).
        polls = polls.wrapping_add(1);
        if polls % 64 == 0 {
            now = Instant::now();
            wall = wall_now().0;
            status.beat_at(0, now);
        }
        if now.saturating_duration_since(group_refreshed) >= GROUP_REFRESH {
            // Under KIP-848 the member epoch changes without a rebalance callback here
            // (when only other members' partitions move).
            status.refresh_group(&consumer);
            group_refreshed = now;
        }
        // A full worker queue first makes the loop wait without polling: the workers
        // usually catch up within moments. Only when it stays full for PAUSE_AFTER (a
        // slow or unreachable broker) is the consumer paused, so that it goes on
        // serving the group (heartbeats, rebalances) through a long stall. Pausing
        // drops librdkafka's prefetched messages, so it is kept for long stalls.
        let waiting = blocked_since.is_some() && !paused;
        let mut idle = true;
        if waiting {
            std::thread::sleep(Duration::from_micros(500));
        } else {
            let holding = batches.iter().any(|b| !b.is_empty());
            let wait = if paused {
                Duration::from_millis(20)
            } else if holding {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let polled = consumer.poll(wait);
            if !matches!(polled, Some(Ok(_))) {
                now = Instant::now();
                wall = wall_now().0;
                status.beat_at(0, now);
            }
            match polled {
                Some(Ok(m)) => {
                    idle = false;
                    let v = shared.epochs.version();
                    if v != epochs_seen {
                        epochs = shared.epochs.snapshot();
                        epochs_seen = v;
                    }
                    // A message of a partition that does not run (waiting for the rest
                    // of it) is dropped: it is read again when the partition starts.
                    if let (Some(t), Some(e)) =
                        (shared.topic_index(m.topic()), epochs.get(&m.partition()))
                    {
                        let w = shared.worker_of(m.partition(), n);
                        batches[w].push(InMsg::new(t, *e, &m, wall));
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded))) => {
                    MaxPollExceeded.emit();
                    status.left_group.store(true, Ordering::Relaxed);
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    // The consumer is unusable: stop, so that the orchestrator starts
                    // the instance again (with a fresh consumer).
                    let hint = if code == RDKafkaErrorCode::UnreleasedInstanceId {
                        "; another member still holds kafka.group_instance_id (under KIP-848 a killed member's id is released when its session expires: the broker's group.consumer.session.timeout.ms)"
                    } else {
                        ""
                    };
                    status.fail(Failure::ConsumerFatal {
                        code: code.to_string(),
                        hint,
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                }
                None => {}
            }
        }
        // Position reports (from statistics served by that poll) follow every message
        // polled before them.
        let mut reported = false;
        if shared.reports_ready.swap(false, Ordering::AcqRel) {
            // Each report covers every running partition: the newest replaces any not
            // handed on yet.
            reports.iter_mut().for_each(Vec::clear);
            for r in std::mem::take(&mut *shared.reports.lock().expect("reports lock")) {
                reports[shared.worker_of(r.partition, n)].push(r);
            }
            reported = true;
        }
        // Hand over full batches at once, the rest when polling goes quiet, every 5 ms,
        // or when reports are to follow them.
        let flush_all = idle
            || reported
            || now.saturating_duration_since(last_flush) >= Duration::from_millis(5);
        let mut blocked = false;
        for (w, b) in batches.iter_mut().enumerate() {
            if !b.is_empty() && (b.len() >= BATCH || flush_all) {
                let len = b.len() as i64;
                let batch = std::mem::replace(b, Vec::with_capacity(BATCH));
                match senders[w].try_send(Work::Batch(batch)) {
                    Ok(()) => status.enqueued(len),
                    Err(TrySendError::Full(Work::Batch(back)))
                    | Err(TrySendError::Disconnected(Work::Batch(back))) => {
                        *b = back;
                        blocked = true;
                    }
                    Err(_) => unreachable!("a batch was sent"),
                }
            }
            if b.is_empty() && !reports[w].is_empty() {
                let list = std::mem::take(&mut reports[w]);
                match senders[w].try_send(Work::Positions(list)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(Work::Positions(back)))
                    | Err(TrySendError::Disconnected(Work::Positions(back))) => {
                        reports[w] = back;
                    }
                    Err(_) => unreachable!("positions were sent"),
                }
            }
        }
        if flush_all {
            last_flush = now;
        }
        if blocked {
            now = Instant::now();
            let since = *blocked_since.get_or_insert(now);
            if !paused && now.saturating_duration_since(since) >= PAUSE_AFTER {
                set_paused(&consumer, &shared, true);
                paused = true;
            }
        } else {
            blocked_since = None;
            if paused {
                set_paused(&consumer, &shared, false);
                paused = false;
            }
        }
        if flush_all {
            let inflight = shared.producer.in_flight_count() as i64;
            status
                .max_producer_in_flight
                .fetch_max(inflight, Ordering::Relaxed);
        }
    }
    shutdown(consumer, &shared, batches);
}

/// Drains what was consumed, checkpoints (state, offsets) once outputs are
/// acknowledged, leaves the group.
pub(crate) fn shutdown(
    consumer: BaseConsumer<ConsumerCtx>,
    shared: &Shared,
    batches: Vec<Vec<InMsg>>,
) {
    let cfg = &shared.cfg.kafka;
    let start = Instant::now();
    let budget = Duration::from_secs(cfg.shutdown_timeout_secs);
    let left = || budget.saturating_sub(start.elapsed());
    if let Ok(a) = consumer.assignment() {
        let _ = consumer.pause(&a);
    }
    let failed = shared.status.failure().is_some();
    if !failed {
        // In-flight work drains: what was polled is processed, then the workers reply.
        for (w, b) in batches.into_iter().enumerate() {
            if !b.is_empty() {
                let len = b.len() as i64;
                if shared.send_to(w, Work::Batch(b), left() / 2) {
                    shared.status.enqueued(len);
                }
            }
        }
        let mut replies = Vec::new();
        for w in 0..shared.worker_count() {
            let (tx, rx) = sync_channel(1);
            if shared.send_to(w, Work::Drain(tx), left() / 2) {
                replies.push(rx);
            }
        }
        for rx in replies {
            let _ = rx.recv_timeout(left() / 2);
        }
        let drained = start.elapsed();
        if let Err(e) = shared.producer.flush(left() / 2) {
            tracing::warn!(error = %e, in_flight = shared.producer.in_flight_count(), "records not delivered at shutdown; their input offsets stay uncommitted");
        }
        tracing::info!(
            drained_ms = drained.as_millis() as u64,
            delivered_ms = (start.elapsed() - drained).as_millis() as u64,
            "work drained and delivered"
        );
    }
    // Workers end when their channels close.
    shared.workers.lock().expect("workers lock").clear();
    shared.membership.lock().expect("membership lock").clear();
    shared.status.assigned.store(0, Ordering::Relaxed);
    telemetry::assigned_partitions(0);
    tracing::info!(
        events = shared.status.events.load(Ordering::Relaxed),
        alerts = shared.status.alerts_sent.load(Ordering::Relaxed),
        "consumer closing"
    );
    drop(consumer);
}
