//! Restoring a partition: its producer (which fences the previous owner), the
//! changelog's state records, and (exactly-once) the journal replayed over the input it covers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use super::transactional::KafkaTxn;
use super::txn::{Transactions, TxnFailure};
use crate::config::{Config, InputTopic};
use crate::engine::Engine;
use crate::kafka::changelog::{self, RestoreCtx};
use crate::kafka::client::restore_consumer_config;
use crate::kafka::journal::{Journal, Op};
use crate::kafka::sync::Synchronizer;
use crate::kafka::work::InMsg;
use crate::kafka::worker::guarantee::GuaranteeState;
use crate::kafka::worker::partition::{bit, cap_watermark, decode_input, Input, Partition};
use crate::kafka::worker::Shared;
use crate::telemetry::{self};
use crate::time::Timestamp;

/// A partition's state read back.
pub(super) struct Restoration {
    pub(super) engine: Engine,
    /// Its inputs, with the positions (and, after a journal, latest event times) the
    /// engine reflects; none assigned yet.
    pub(super) inputs: BTreeMap<usize, Input>,
    /// Exactly-once: the journal the engine reflects, to go on with (empty: none).
    pub(super) journal: Journal,
    /// Input messages the journal's replay applied.
    pub(super) replayed: u64,
    /// The state records are behind the engine: write them at the first checkpoint.
    pub(super) state_due: bool,
    /// Changelog records read.
    pub(super) records: u64,
    pub(super) elapsed: Duration,
}

impl Partition {
    /// Creates partition `p`'s producer and restores its state.
    pub(super) fn open(sh: &mut Shared, p: i32, epoch: u64) -> Result<Partition, TxnFailure> {
        let producer = KafkaTxn::create(&sh.cfg, p, &sh.status, sh.id, &sh.queue_full)?;
        telemetry::restoring(1.0);
        sh.status.restoring.fetch_add(1, Ordering::SeqCst);
        let restored = sh.restore_partition(p, epoch);
        sh.status.restoring.fetch_sub(1, Ordering::SeqCst);
        telemetry::restoring(-1.0);
        let r = match restored {
            Ok(r) => r,
            Err(changelog::RestoreError::Cancelled) => {
                tracing::info!(partition = p, "restore cancelled: the partition moved on");
                return Err(TxnFailure::Abandoned);
            }
            Err(e) => return Err(TxnFailure::Fatal(e.to_string())),
        };
        let secs = r.elapsed.as_secs_f64();
        tracing::info!(
            partition = p,
            customers = r.engine.customers(),
            records = r.records,
            replayed = r.replayed,
            seconds = secs,
            customers_per_second = (r.engine.customers() as f64 / secs.max(1e-6)) as u64,
            "state restored"
        );
        let evicted = (r.engine.stats().evicted_idle, r.engine.stats().evicted_cap);
        let k = &sh.cfg.kafka;
        Ok(Partition {
            number: p,
            engine: r.engine,
            inputs: r.inputs,
            sync: Synchronizer::new(sh.inputs.len(), k.max_task_idle_ms, k.sync_buffer()),
            wake: None,
            last_event: Instant::now(),
            tx: Transactions::new(producer),
            guarantee: GuaranteeState::restored(k.processing.guarantee, r.journal),
            dirty: r.state_due,
            evicted,
            last_state: Instant::now(),
            state_due: r.state_due,
        })
    }
}

impl Shared {
    /// Reads partition `p`'s state back: the changelog's records, then (exactly-once)
    /// the journal of the transactions committed since them, replayed over the input
    /// it covers. Cancelled when the partition moves on (a newer rebalance epoch).
    pub(super) fn restore_partition(
        &self,
        p: i32,
        epoch: u64,
    ) -> Result<Restoration, changelog::RestoreError> {
        let started = Instant::now();
        let (status, id, epochs) = (self.status.clone(), self.id, self.epochs.clone());
        let mut keep_going = move || {
            status.beat(1 + id);
            epochs.current(p) == Some(epoch) && !status.abandon_sends()
        };
        let r = changelog::restore(&self.cfg.kafka, &self.settings, p, &mut keep_going)?;
        let mut inputs = BTreeMap::new();
        for (name, next) in &r.positions {
            if let Some(t) = self.inputs.iter().position(|i| &i.name == name) {
                inputs.insert(t, Input::restored(epoch, Some(*next)));
            }
        }
        let mut engine = r.engine;
        let (mut journal, mut replayed, mut stale) = (Journal::default(), 0, false);
        if let Some((j, ends)) = r.journal {
            // The journal written with the state records names their positions; one
            // that does not (never seen: both are written in one transaction) is stale.
            let ours = r.positions.iter().all(|(name, next)| {
                j.base
                    .iter()
                    .any(|b| &b.name == name && b.next == Some(*next))
            });
            if ours {
                let replay_started = Instant::now();
                let replay = replay_journal(
                    &self.cfg,
                    &self.inputs,
                    p,
                    epoch,
                    &mut engine,
                    &mut inputs,
                    (&j, &ends),
                    &mut keep_going,
                );
                match replay {
                    Ok(n) => {
                        replayed = n;
                        telemetry::replayed_messages(n);
                        if n > 0 {
                            tracing::info!(
                                partition = p,
                                messages = n,
                                operations = j.ops.len(),
                                seconds = replay_started.elapsed().as_secs_f64(),
                                "journal replayed over the input since the state records"
                            );
                        }
                        journal = j;
                    }
                    Err(changelog::RestoreError::Journal(why)) => {
                        // The input is gone (retention, a recreated topic): as a consumer
                        // whose offset is out of range goes on from what there is, the
                        // state goes on from its records, at the committed offsets.
                        tracing::error!(
                            partition = p,
                            error = %why,
                            "the journal cannot be replayed: the state goes on from its records without the input between them and the committed offsets"
                        );
                        for (b, end) in j.base.iter().zip(&ends) {
                            if let Some(t) = self.inputs.iter().position(|i| i.name == b.name) {
                                let i = inputs
                                    .entry(t)
                                    .or_insert_with(|| Input::restored(epoch, None));
                                i.next = *end;
                            }
                        }
                        // Its state records are written at the first checkpoint.
                        stale = true;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                tracing::warn!(
                    partition = p,
                    "the changelog's journal does not start at its state records; ignored"
                );
            }
        }
        // Journals of earlier builds may have left a watermark limit (see
        // `cap_watermark`); from here the order of the inputs' messages holds stream
        // time back.
        engine.set_watermark_limit(None);
        Ok(Restoration {
            engine,
            inputs,
            journal,
            replayed,
            state_due: replayed > 0 || stale,
            records: r.records,
            elapsed: started.elapsed(),
        })
    }
}

/// Replays a journal over the input it covers: the engine and the inputs' positions
/// and event times become what they were when its transaction committed. Its outputs
/// were committed then and are not made again. Returns the messages applied.
#[allow(clippy::too_many_arguments)]
pub(super) fn replay_journal(
    cfg: &Config,
    topics: &[InputTopic],
    p: i32,
    epoch: u64,
    engine: &mut Engine,
    inputs: &mut BTreeMap<usize, Input>,
    (j, ends): (&Journal, &[Option<i64>]),
    keep_going: &mut impl FnMut() -> bool,
) -> Result<u64, changelog::RestoreError> {
    use changelog::RestoreError;
    let counts = j.counts();
    // Journal input → input topic index.
    let mut index = Vec::with_capacity(j.base.len());
    for (k, b) in j.base.iter().enumerate() {
        match topics.iter().position(|t| t.name == b.name) {
            Some(t) => index.push(Some(t)),
            None if counts[k] == 0 => index.push(None),
            None => {
                return Err(RestoreError::Journal(format!(
                    "it covers {} messages of input topic {}, which is no longer configured",
                    counts[k], b.name
                )))
            }
        }
    }
    for (b, t) in j.base.iter().zip(&index) {
        let Some(t) = t else { continue };
        let i = inputs
            .entry(*t)
            .or_insert_with(|| Input::restored(epoch, None));
        i.max_time = b.max_time;
        i.next = b.next;
    }
    // The journal's input masks in the partition's numbering.
    let bits: Vec<u64> = index
        .iter()
        .map(|t| {
            t.and_then(|t| inputs.keys().position(|x| *x == t))
                .map_or(0, bit)
        })
        .collect();
    let remap = |live: u64| {
        bits.iter()
            .enumerate()
            .filter(|(k, _)| live & bit(*k) != 0)
            .fold(0, |m, (_, b)| m | b)
    };
    let mut queues: Vec<VecDeque<InMsg>> = j.base.iter().map(|_| VecDeque::new()).collect();
    if j.messages > 0 {
        read_journal_input(cfg, p, (j, ends), &index, &counts, &mut queues, keep_going)?;
    }
    let lateness = cfg.engine.lateness_ms();
    let mut scratch = Vec::new();
    for op in &j.ops {
        match *op {
            Op::Run {
                input,
                live,
                now,
                count,
            } => {
                let k = usize::from(input);
                let Some(t) = index[k] else { continue };
                let live = remap(live);
                for _ in 0..count {
                    let Some(m) = queues[k].pop_front() else {
                        return Err(RestoreError::Journal(
                            "it covers more input than was read".into(),
                        ));
                    };
                    if let Some(i) = inputs.get_mut(&t) {
                        i.next = Some(m.offset + 1);
                    }
                    // Refused (a dead letter then): nothing reaches the engine.
                    let decoded = decode_input(cfg, &topics[t], &m, Timestamp(now))
                        .and_then(|e| engine.check_age(&e).map(|()| e));
                    if let Ok(event) = decoded {
                        let time = event.occurred_at;
                        cap_watermark(inputs, engine, t, time, live, lateness);
                        engine.apply_into(&event, &mut scratch);
                        scratch.clear();
                    }
                }
            }
            Op::Advance { target } => {
                engine.advance_to_into(Timestamp(target), &mut scratch);
                scratch.clear();
            }
            Op::Cap(n) => engine.set_max_customers(n),
        }
    }
    for (t, end) in index.iter().zip(ends) {
        if let (Some(t), Some(end)) = (t, end) {
            if let Some(i) = inputs.get_mut(t) {
                i.next = Some(*end);
            }
        }
    }
    Ok(j.messages)
}

/// Reads the input a journal covers, from its start positions, `counts[k]` messages of
/// input `k` (before its end), with `read_committed` as the service's consumer reads.
pub(super) fn read_journal_input(
    cfg: &Config,
    p: i32,
    (j, ends): (&Journal, &[Option<i64>]),
    index: &[Option<usize>],
    counts: &[u64],
    queues: &mut [VecDeque<InMsg>],
    keep_going: &mut impl FnMut() -> bool,
) -> Result<(), changelog::RestoreError> {
    use changelog::RestoreError;
    let consumer: BaseConsumer<RestoreCtx> =
        restore_consumer_config(&cfg.kafka).create_with_context(RestoreCtx)?;
    let timeout = Duration::from_secs(cfg.kafka.startup_timeout_secs);
    let mut tpl = TopicPartitionList::new();
    for (k, b) in j.base.iter().enumerate() {
        if counts[k] == 0 {
            continue;
        }
        let Some(from) = b.next else {
            return Err(RestoreError::Journal(format!(
                "no start position for input topic {}",
                b.name
            )));
        };
        let (low, _) = consumer.fetch_watermarks(&b.name, p, timeout)?;
        if low > from {
            return Err(RestoreError::Journal(format!(
                "{}[{p}] starts at offset {low} now: retention removed the input from offset {from} the journal covers",
                b.name
            )));
        }
        tpl.add_partition_offset(&b.name, p, Offset::Offset(from))?;
    }
    consumer.assign(&tpl)?;
    let mut got = vec![0u64; counts.len()];
    let mut progress = Instant::now();
    while got != counts {
        if !keep_going() {
            return Err(RestoreError::Cancelled);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(k) = j.base.iter().position(|b| b.name == m.topic()) else {
                    continue;
                };
                if got[k] >= counts[k] {
                    continue;
                }
                if ends[k].is_some_and(|end| m.offset() >= end) {
                    return Err(RestoreError::Journal(format!(
                        "{}[{p}] holds {} of the {} messages the journal covers before offset {}",
                        j.base[k].name,
                        got[k],
                        counts[k],
                        ends[k].unwrap_or_default()
                    )));
                }
                let t = index[k].expect("an input with messages is configured");
                queues[k].push_back(InMsg::new(t, 0, &m, 0));
                got[k] += 1;
                progress = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "reading the input a journal covers; retrying");
            }
        }
        if progress.elapsed() > timeout {
            return Err(RestoreError::Journal(format!(
                "the input it covers did not arrive within {} s",
                timeout.as_secs()
            )));
        }
    }
    Ok(())
}
