//! Rebalances and pauses: which input topic-partitions start or stop a partition
//! engine, and which are kept paused (back-pressure, waiting for the rest of their
//! partition, full synchronization buffers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, OffsetReset};
use crate::kafka::client::STATS_INTERVAL_MS;
use crate::kafka::consumer::{ConsumerCtx, Shared};
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::work::{Assigned, Assignment, Work};
use crate::telemetry::{self};

/// The input topic-partitions to keep paused: all of them under back-pressure, else
/// those waiting for the rest of their partition and those whose buffers are full.
pub(crate) fn desired_pauses(
    assigned: &BTreeSet<(usize, i32)>,
    backpressure: bool,
    waiting: &BTreeSet<(usize, i32)>,
    full: &BTreeSet<(usize, i32)>,
) -> BTreeSet<(usize, i32)> {
    if backpressure {
        return assigned.clone();
    }
    assigned
        .iter()
        .filter(|tp| waiting.contains(tp) || full.contains(tp))
        .copied()
        .collect()
}

/// After a topic-partition is paused, resumed or moved, librdkafka's statistics go on
/// showing its fetch position from before (they are refreshed with each fetch
/// response): a position report says it is caught up only once this has passed since.
pub(crate) fn settle_time(cfg: &KafkaConfig) -> Duration {
    let fetch_wait = cfg
        .consumer_properties
        .pairs()
        .chain(cfg.properties.pairs())
        .find(|(k, _)| *k == "fetch.wait.max.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(500);
    Duration::from_millis(2 * u64::from(STATS_INTERVAL_MS) + fetch_wait)
}

/// What the poll loop has paused, and when each topic-partition's fetching last changed.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    pub(crate) paused: BTreeSet<(usize, i32)>,
    pub(crate) changed: BTreeMap<(usize, i32), Instant>,
}

impl Pauses {
    pub(crate) fn touch(&mut self, tp: (usize, i32), at: Instant) {
        self.changed.insert(tp, at);
    }

    /// Its fetch position in librdkafka's statistics is current.
    pub(crate) fn settled(&self, tp: (usize, i32), at: Instant, settle: Duration) -> bool {
        !self.paused.contains(&tp)
            && self
                .changed
                .get(&tp)
                .is_none_or(|t| at.saturating_duration_since(*t) >= settle)
    }
}

impl Shared {
    /// Pauses and resumes input topic-partitions so that exactly those of
    /// [`desired_pauses`] are paused. Only changes are passed on: librdkafka drops what
    /// it has prefetched of a partition at every pause or resume, even a repeated one.
    pub(crate) fn apply_pauses(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        let assigned = self.tracked.lock().expect("tracked lock").clone();
        let waiting: BTreeSet<(usize, i32)> = self
            .co
            .lock()
            .expect("co-partitions lock")
            .waiting()
            .into_iter()
            .collect();
        let full = self.full.snapshot();
        let backpressure = self.paused.load(Ordering::SeqCst);
        let desired = desired_pauses(&assigned, backpressure, &waiting, &full);
        let mut pauses = self.pauses.lock().expect("pauses lock");
        pauses.paused.retain(|tp| assigned.contains(tp));
        let pause: Vec<(usize, i32)> = desired.difference(&pauses.paused).copied().collect();
        let resume: Vec<(usize, i32)> = pauses.paused.difference(&desired).copied().collect();
        if !pause.is_empty() {
            if let Err(e) = consumer.pause(&self.list(&pause)) {
                tracing::warn!(error = %e, "pausing input partitions");
            }
        }
        if !resume.is_empty() {
            if let Err(e) = consumer.resume(&self.list(&resume)) {
                tracing::warn!(error = %e, "resuming input partitions");
            }
        }
        let now = Instant::now();
        for tp in pause.iter().chain(&resume) {
            pauses.touch(*tp, now);
        }
        pauses.paused = desired;
    }

    /// New topic-partitions (all of them under the eager classic protocol, the added
    /// ones under KIP-848). Each partition now held whole starts: a new epoch, and its
    /// worker restores its engine. Topic-partitions whose partition is not whole yet
    /// wait, paused; ones that waited are read again from their committed offsets when
    /// it starts (what the poll loop fetched meanwhile was dropped).
    pub(crate) fn assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("assign");
        self.status.left_group.store(false, Ordering::Relaxed);
        let added = self.input_partitions(tpl);
        let mut tracked = self.tracked.lock().expect("tracked lock");
        tracked.extend(added.iter().copied());
        self.status.assigned.store(tracked.len(), Ordering::Relaxed);
        telemetry::assigned_partitions(tracked.len());
        let partitions: BTreeSet<i32> = tracked.iter().map(|(_, p)| *p).collect();
        drop(tracked);
        let mut co = self.co.lock().expect("co-partitions lock");
        let start = co.assign(added.iter().copied());
        let waiting = co.waiting();
        let starting: Vec<(usize, i32)> = start
            .iter()
            .flat_map(|p| co.held(*p).into_iter().map(move |t| (t, *p)))
            .collect();
        drop(co);
        if !waiting.is_empty() {
            tracing::info!(
                waiting = ?self.names(&waiting),
                "topic-partitions wait for the rest of their partition"
            );
        }
        {
            let now = Instant::now();
            let mut pauses = self.pauses.lock().expect("pauses lock");
            for tp in &added {
                pauses.touch(*tp, now);
            }
        }
        if starting.is_empty() {
            self.apply_pauses(consumer);
            return;
        }
        let committed = consumer
            .committed_offsets(self.list(&starting), Duration::from_secs(10))
            .map_err(|e| tracing::warn!(error = %e, "reading committed offsets"))
            .ok();
        let committed_of = |t: usize, p: i32| -> Option<i64> {
            let c = committed
                .as_ref()?
                .find_partition(&self.inputs[t].name, p)?;
            match c.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        };
        // Those that waited: back to their committed offsets, fetching again.
        let waited: Vec<(usize, i32)> = starting
            .iter()
            .copied()
            .filter(|k| !added.contains(k))
            .collect();
        if !waited.is_empty() {
            let reset = match self.cfg.kafka.auto_offset_reset {
                OffsetReset::Earliest => Offset::Beginning,
                OffsetReset::Latest => Offset::End,
            };
            for (t, p) in &waited {
                let to = committed_of(*t, *p).map_or(reset, Offset::Offset);
                if let Err(e) =
                    consumer.seek(&self.inputs[*t].name, *p, to, Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, topic = %self.inputs[*t].name, partition = p, "seeking a topic-partition that waited");
                }
            }
        }
        // The ones that waited resume (unless back-pressure holds everything).
        self.apply_pauses(consumer);
        let n = self.worker_count().max(1);
        let mut per_worker: Vec<Vec<Assigned>> = (0..n).map(|_| Vec::new()).collect();
        let epochs: BTreeMap<i32, u64> =
            start.iter().map(|p| (*p, self.epochs.start(*p))).collect();
        for (t, p) in &starting {
            per_worker[self.worker_of(*p, n)].push(Assigned {
                topic: *t,
                partition: *p,
                epoch: epochs[p],
                progress: Arc::new(Mutex::new(PartitionProgress::default())),
                committed: committed_of(*t, *p),
            });
        }
        let cap = self.cfg.engine.max_customers;
        let cap_share = if cap == 0 {
            0
        } else {
            (cap / partitions.len().max(1) as u64).max(1)
        };
        self.status.refresh_group(consumer);
        tracing::info!(partitions = ?start, "partitions start");
        for p in &start {
            telemetry::partition_engine("start", *p);
        }
        for (w, list) in per_worker.into_iter().enumerate() {
            let a = Assignment { list, cap_share };
            if !self.send_to(w, Work::Assign(a), Duration::from_secs(30)) {
                tracing::warn!(worker = w, "worker did not take its assignment");
            }
        }
    }

    /// Topic-partitions going away (all under the eager classic protocol, some under
    /// KIP-848). A running partition that loses any of its topics stops: its worker
    /// finishes what it holds of it and checkpoints it (state and offsets, once its
    /// outputs are acknowledged) before the group moves it. What remains of it waits,
    /// paused, to be revoked too.
    pub(crate) fn revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("revoke");
        let gone = self.input_partitions(tpl);
        let mut co = self.co.lock().expect("co-partitions lock");
        let stop = co.revoke(gone.iter().copied());
        drop(co);
        for p in &stop {
            self.epochs.stop(*p);
            telemetry::partition_engine("stop", *p);
        }
        let stopping = self.status.stopping.load(Ordering::SeqCst);
        if !stopping && !stop.is_empty() {
            let wait = Duration::from_secs(self.cfg.kafka.shutdown_timeout_secs.min(10));
            let n = self.worker_count();
            let all_topics = 0..self.inputs.len();
            let mut replies = Vec::new();
            for w in 0..n {
                let (tx, rx) = sync_channel(1);
                let mine: Vec<(usize, i32)> = stop
                    .iter()
                    .filter(|p| self.worker_of(**p, n) == w)
                    .flat_map(|p| all_topics.clone().map(move |t| (t, *p)))
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if self.send_to(w, Work::Revoke(mine, tx), wait) {
                    replies.push(rx);
                }
            }
            for rx in replies {
                let _ = rx.recv_timeout(wait);
            }
            if consumer.assignment_lost() {
                // The group already gave the partitions away: their checkpoints were
                // refused (fenced) or will be; the next owner restores the last
                // committed one.
                tracing::warn!("assignment lost; input since the last checkpoint is processed again by the next owner");
            }
        }
        self.status.refresh_group(consumer);
        let mut tracked = self.tracked.lock().expect("tracked lock");
        for k in &gone {
            tracked.remove(k);
        }
        self.status.assigned.store(tracked.len(), Ordering::Relaxed);
        telemetry::assigned_partitions(tracked.len());
        drop(tracked);
        {
            // Resumed as they left (see `pre_rebalance`).
            let mut pauses = self.pauses.lock().expect("pauses lock");
            for tp in &gone {
                pauses.paused.remove(tp);
                pauses.changed.remove(tp);
            }
        }
        // What is left of stopped partitions waits, paused.
        self.apply_pauses(consumer);
        tracing::info!(revoked = gone.len(), stopped = ?stop, "topic-partitions revoked");
    }
}
