//! The rebalance callbacks and pauses, carrying out the plans of [`super::plan`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, OffsetReset};
use crate::kafka::client::STATS_INTERVAL_MS;
use crate::kafka::consumer::plan::PauseChange;
use crate::kafka::consumer::{ConsumerCtx, Shared};
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::work::{Assigned, Assignment, Work};
use crate::telemetry::{self};

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

impl Shared {
    /// Pauses and resumes input topic-partitions so that exactly those of
    /// [`super::plan::desired_pauses`] are paused.
    pub(crate) fn apply_pauses(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        let full = self.full.snapshot();
        let backpressure = self.paused.load(Ordering::SeqCst);
        let change = self.membership.lock().expect("membership lock").pauses(
            backpressure,
            &full,
            Instant::now(),
        );
        self.pass_on(consumer, &change);
    }

    /// Passes pauses on to the consumer.
    fn pass_on(&self, consumer: &BaseConsumer<ConsumerCtx>, change: &PauseChange) {
        if !change.pause.is_empty() {
            if let Err(e) = consumer.pause(&self.list(&change.pause)) {
                tracing::warn!(error = %e, "pausing input partitions");
            }
        }
        self.resume(consumer, &change.resume, "resuming input partitions");
    }

    /// Resumes input topic-partitions (`what`: the log line if the consumer refuses).
    fn resume(&self, consumer: &BaseConsumer<ConsumerCtx>, tps: &[(usize, i32)], what: &str) {
        if tps.is_empty() {
            return;
        }
        if let Err(e) = consumer.resume(&self.list(tps)) {
            tracing::warn!(error = %e, "{what}");
        }
    }

    /// New topic-partitions: the plan (see [`super::plan::Membership::assign`]) carried out. The
    /// partitions that start get a new epoch and their workers restore their engines.
    pub(crate) fn assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("assign");
        self.status.left_group.store(false, Ordering::Relaxed);
        let added = self.input_partitions(tpl);
        let full = self.full.snapshot();
        let backpressure = self.paused.load(Ordering::SeqCst);
        let cap = self.cfg.engine.max_customers;
        let plan = self.membership.lock().expect("membership lock").assign(
            added,
            cap,
            backpressure,
            &full,
            Instant::now(),
        );
        // Nothing is fetched of them yet: they start unpaused, and the plan pauses what
        // must wait (back-pressure, the rest of their partition).
        self.resume(consumer, &plan.resume_first, "resuming assigned partitions");
        self.status.assigned.store(plan.assigned, Ordering::Relaxed);
        telemetry::assigned_partitions(plan.assigned);
        if !plan.waiting.is_empty() {
            tracing::info!(
                waiting = ?self.names(&plan.waiting),
                "topic-partitions wait for the rest of their partition"
            );
        }
        if plan.starting.is_empty() {
            self.pass_on(consumer, &plan.pauses);
            return;
        }
        let committed = consumer
            .committed_offsets(self.list(&plan.starting), Duration::from_secs(10))
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
        let reset = match self.cfg.kafka.auto_offset_reset {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        };
        for (t, p) in &plan.seek {
            let to = committed_of(*t, *p).map_or(reset, Offset::Offset);
            if let Err(e) = consumer.seek(&self.inputs[*t].name, *p, to, Duration::from_secs(10)) {
                tracing::warn!(error = %e, topic = %self.inputs[*t].name, partition = p, "seeking a topic-partition that waited");
            }
        }
        // The ones that waited resume (unless back-pressure holds everything).
        self.pass_on(consumer, &plan.pauses);
        let n = self.worker_count().max(1);
        let mut per_worker: Vec<Vec<Assigned>> = (0..n).map(|_| Vec::new()).collect();
        let epochs: BTreeMap<i32, u64> = plan
            .start
            .iter()
            .map(|p| (*p, self.epochs.start(*p)))
            .collect();
        for (t, p) in &plan.starting {
            per_worker[self.worker_of(*p, n)].push(Assigned {
                topic: *t,
                partition: *p,
                epoch: epochs[p],
                progress: Arc::new(Mutex::new(PartitionProgress::default())),
                committed: committed_of(*t, *p),
            });
        }
        self.status.refresh_group(consumer);
        tracing::info!(partitions = ?plan.start, "partitions start");
        for p in &plan.start {
            telemetry::partition_engine("start", *p);
        }
        for (w, list) in per_worker.into_iter().enumerate() {
            let a = Assignment {
                list,
                cap_share: plan.cap_share,
            };
            if !self.send_to(w, Work::Assign(a), Duration::from_secs(30)) {
                tracing::warn!(worker = w, "worker did not take its assignment");
            }
        }
    }

    /// Topic-partitions going away: the plan (see [`super::plan::Membership::revoke`]) carried out.
    /// A partition that stops is finished by its worker and checkpointed (state and
    /// offsets, once its outputs are acknowledged) before the group moves it.
    pub(crate) fn revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        telemetry::rebalance("revoke");
        let gone = self.input_partitions(tpl);
        let full = self.full.snapshot();
        let backpressure = self.paused.load(Ordering::SeqCst);
        let plan = self.membership.lock().expect("membership lock").revoke(
            gone,
            backpressure,
            &full,
            Instant::now(),
        );
        // A partition that leaves paused would come back paused in a later assignment,
        // with nothing left to resume it.
        self.resume(consumer, &plan.resume_first, "resuming revoked partitions");
        for p in &plan.stop {
            self.epochs.stop(*p);
            telemetry::partition_engine("stop", *p);
        }
        let stopping = self.status.stopping.load(Ordering::SeqCst);
        if !stopping && !plan.stop.is_empty() {
            let wait = Duration::from_secs(self.cfg.kafka.shutdown_timeout_secs.min(10));
            let n = self.worker_count();
            let all_topics = 0..self.inputs.len();
            let mut replies = Vec::new();
            for w in 0..n {
                let (tx, rx) = sync_channel(1);
                let mine: Vec<(usize, i32)> = plan
                    .stop
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
        self.status.assigned.store(plan.assigned, Ordering::Relaxed);
        telemetry::assigned_partitions(plan.assigned);
        // What is left of stopped partitions waits, paused.
        self.pass_on(consumer, &plan.pauses);
        tracing::info!(revoked = plan.resume_first.len(), stopped = ?plan.stop, "topic-partitions revoked");
    }
}
