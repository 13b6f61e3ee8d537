//! The messages between the consumer and the workers: consumed input, assignments,
//! revocations, position reports, queries, and the full buffers workers report back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use rdkafka::message::Headers;
use rdkafka::Message;

use crate::alert::HealthRecord;
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::sync::Position;

/// One consumed input message, copied out of librdkafka in one allocation (key and
/// value together; headers only when the message has any).
pub(crate) struct InMsg {
    /// Index into the input topics.
    pub topic: usize,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, ms (-1 if none).
    pub timestamp_ms: i64,
    /// Rebalance epoch at which it was polled; stale ones are dropped.
    pub epoch: u64,
    /// Key length in `data`, `None` for a message without key.
    pub(crate) key_len: Option<u32>,
    /// Key, then value.
    pub(crate) data: Box<[u8]>,
    /// Headers, in order (a null value is kept as empty).
    pub headers: Vec<(String, Vec<u8>)>,
    /// When it was polled, wall clock ms (see [`crate::kafka::trace`]).
    pub polled_ms: i64,
}

impl InMsg {
    /// Copies what a worker needs out of a consumed message, polled at wall-clock
    /// `polled_ms`.
    pub fn new(
        topic: usize,
        epoch: u64,
        m: &rdkafka::message::BorrowedMessage<'_>,
        polled_ms: i64,
    ) -> InMsg {
        let key = m.key();
        let value = m.payload().unwrap_or(&[]);
        let mut data = Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.len());
        if let Some(k) = key {
            data.extend_from_slice(k);
        }
        data.extend_from_slice(value);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or(&[]).to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        InMsg {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
            epoch,
            key_len: key.map(|k| k.len() as u32),
            data: data.into_boxed_slice(),
            headers,
            polled_ms,
        }
    }

    /// The message key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.data[..n as usize])
    }

    /// The message value (empty for a null value).
    pub fn value(&self) -> &[u8] {
        &self.data[self.key_len.unwrap_or(0) as usize..]
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A topic-partition handed to a worker.
pub(crate) struct Assigned {
    pub topic: usize,
    pub partition: i32,
    /// Its partition's epoch (see `Epochs`).
    pub epoch: u64,
    pub progress: Arc<Mutex<PartitionProgress>>,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
}

/// What a worker is asked to do, in order.
pub(crate) enum Work {
    /// Process these messages.
    Batch(Vec<InMsg>),
    /// What the consumer knew of these input topic-partitions' ends after it had passed
    /// on every message sent before this.
    Positions(Vec<PositionReport>),
    /// These topic-partitions are now ours: restore, then process.
    Assign(Assignment),
    /// These topic-partitions are no longer ours: checkpoint, drop; reply when done.
    Revoke(Vec<(usize, i32)>, SyncSender<()>),
    /// A customer's health record.
    Query(String, SyncSender<Option<HealthRecord>>),
    /// Checkpoint everything (shutdown); reply.
    Drain(SyncSender<()>),
}

/// The consumer's knowledge of one input topic-partition's end (see [`Position`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PositionReport {
    pub topic: usize,
    pub partition: i32,
    /// The partition's epoch when it was read.
    pub epoch: u64,
    /// `None`: the topic-partition is gone from the brokers' metadata (its topic was
    /// deleted): the partition goes on without it.
    pub position: Option<Position>,
}

/// A worker's share of a new assignment.
pub(crate) struct Assignment {
    pub list: Vec<Assigned>,
    /// Customers each partition engine may hold (the instance cap shared; 0 = no cap).
    pub cap_share: u64,
}

/// Input topic-partitions (topic index, partition) whose synchronization buffers are
/// full (see [`crate::kafka::sync`]): their workers ask the poll loop to pause them until the
/// other inputs of their partitions catch up in event time.
#[derive(Debug, Default)]
pub(crate) struct FullBuffers {
    pub(crate) set: Mutex<BTreeSet<(usize, i32)>>,
    pub(crate) changed: AtomicBool,
}

impl FullBuffers {
    /// Topic-partition `tp`'s buffer is full, or no longer is.
    pub fn set(&self, tp: (usize, i32), full: bool) {
        let mut s = self.set.lock().expect("full buffers lock");
        let changed = if full { s.insert(tp) } else { s.remove(&tp) };
        if changed {
            self.changed.store(true, Ordering::Release);
        }
    }

    /// Partition `p` stopped here: none of its buffers is full any more.
    pub fn clear_partition(&self, p: i32) {
        let mut s = self.set.lock().expect("full buffers lock");
        let before = s.len();
        s.retain(|(_, q)| *q != p);
        if s.len() != before {
            self.changed.store(true, Ordering::Release);
        }
    }

    pub(crate) fn snapshot(&self) -> BTreeSet<(usize, i32)> {
        self.set.lock().expect("full buffers lock").clone()
    }
}
