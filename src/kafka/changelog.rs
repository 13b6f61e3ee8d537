//! The state changelog: a compacted topic with the inputs' partition count, where each
//! partition engine writes, at every checkpoint and in one transaction with its input
//! offsets, the records of the customers that changed (keyed by customer id; a
//! tombstone for one forgotten) and its own record (keyed [`ENGINE_KEY`]) holding the
//! engine's state and the input positions it reflects.
//!
//! With exactly-once, the transactions between two such checkpoints write the
//! partition's journal instead (keyed [`JOURNAL_KEY`], see [`super::journal`]): a
//! restore replays it over the input since the checkpoint.
//!
//! Restoring a partition reads its changelog partition from the start with
//! `read_committed`: the last committed checkpoint, whole, and nothing of one left
//! unfinished by a crash. Compaction keeps the partition about the size of the live
//! state (one record per customer), so a restore costs in proportion to the state,
//! not to the history.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client::restore_consumer_config;
use super::journal::{Journal, JOURNAL_KEY};
use crate::config::{EngineSettings, KafkaConfig};
use crate::engine::codec::{CodecError, Reader, Writer};
use crate::engine::Engine;
use crate::telemetry;

/// Key of a partition's own record: not UTF-8, so no customer id can equal it.
pub const ENGINE_KEY: &[u8] = b"\xffchurnsignal-partition";

/// A partition record: the input positions (topic name, next offset to apply) and the
/// engine's record.
pub fn encode_partition_record(positions: &[(&str, i64)], engine: &Engine, out: &mut Vec<u8>) {
    let mut w = Writer::start(out);
    w.u32(positions.len() as u32);
    for (topic, next) in positions {
        w.str(topic);
        w.i64(*next);
    }
    engine.encode_engine(out);
}

/// Input positions: (topic, next offset to apply).
pub type Positions = Vec<(String, i64)>;

/// Reads a partition record back: positions, then the engine record's bytes.
pub fn decode_partition_record(bytes: &[u8]) -> Result<(Positions, &[u8]), CodecError> {
    let mut r = Reader::start(bytes)?;
    let n = r.u32()?;
    if n > 64 {
        return Err(CodecError::Invalid("more than 64 input positions"));
    }
    let mut positions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let topic = r.str()?.to_owned();
        positions.push((topic, r.i64()?));
    }
    Ok((positions, r.rest()))
}

/// The restore consumer's context: the end of the partition is how a restore knows it
/// is done, not an error worth a log line.
pub struct RestoreCtx;

impl rdkafka::ClientContext for RestoreCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_end_of_partition(&error) {
            tracing::warn!(target: "librdkafka", error = %error, "restore consumer: {reason}");
        }
    }
}

/// The end of a partition, as a consumer event or as the global error librdkafka also
/// reports it with.
fn is_end_of_partition(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

impl rdkafka::consumer::ConsumerContext for RestoreCtx {}

/// A partition's state read back from the changelog.
pub struct Restored {
    /// The engine (a new one when the changelog had nothing for the partition).
    pub engine: Engine,
    /// Input positions the state reflects (none for a new engine).
    pub positions: Vec<(String, i64)>,
    /// Exactly-once: the journal of the input applied since the state records, up to
    /// the last committed transaction, and each input's next offset after it.
    pub journal: Option<(Journal, Vec<Option<i64>>)>,
    /// Changelog records read.
    pub records: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why a restore did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The partition went elsewhere meanwhile.
    #[error("cancelled: the partition was revoked")]
    Cancelled,
    /// Kafka failed.
    #[error("reading the changelog: {0}")]
    Kafka(#[from] KafkaError),
    /// The journal could not be replayed over the input it covers.
    #[error("replaying the journal: {0}")]
    Journal(String),
    /// A record could not be decoded.
    #[error("a state record at offset {offset}: {error}")]
    Codec {
        /// Offset in the changelog partition.
        offset: i64,
        /// Why.
        error: CodecError,
    },
}

/// Reads partition `partition` of the changelog and rebuilds its engine. `keep_going`
/// is asked between polls (and beats liveness); false cancels.
pub fn restore(
    cfg: &KafkaConfig,
    settings: &EngineSettings,
    partition: i32,
    mut keep_going: impl FnMut() -> bool,
) -> Result<Restored, RestoreError> {
    let start = Instant::now();
    let topic = &cfg.topics.changelog;
    let consumer: BaseConsumer<RestoreCtx> =
        restore_consumer_config(cfg).create_with_context(RestoreCtx)?;
    let timeout = Duration::from_secs(cfg.startup_timeout_secs);
    // A changelog created moments ago may have no leader yet: asked again until the
    // startup timeout.
    let asked = Instant::now();
    // The high watermark, undecided transactions included: asked by a client that reads
    // uncommitted, since a `read_committed` one is told the last stable offset instead.
    let watermarks: BaseConsumer<RestoreCtx> = restore_consumer_config(cfg)
        .set("isolation.level", "read_uncommitted")
        .create_with_context(RestoreCtx)?;
    let (low, high) = loop {
        match watermarks.fetch_watermarks(topic, partition, timeout) {
            Ok(w) => break w,
            Err(e) if asked.elapsed() < timeout => {
                tracing::debug!(partition, error = %e, "changelog watermarks; asking again");
                if !keep_going() {
                    return Err(RestoreError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut customers: HashMap<Box<[u8]>, Box<[u8]>> = HashMap::new();
    let mut partition_record: Option<(i64, Box<[u8]>)> = None;
    let mut journal: Option<(i64, Box<[u8]>)> = None;
    let mut records = 0u64;
    if high <= low {
        // Nothing to read: the gauge says so (0 left) from the start.
        telemetry::restore_progress(partition, 0, 0);
    } else {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let total = (high - low) as u64;
        let mut last_report = Instant::now();
        let mut reported = 0u64;
        telemetry::restore_progress(partition, total, 0);
        loop {
            if !keep_going() {
                telemetry::restore_progress(partition, 0, records - reported);
                return Err(RestoreError::Cancelled);
            }
            match consumer.poll(Duration::from_millis(100)) {
                // The end as it was when the restore began. Under `read_committed`
                // librdkafka reports the end of a partition at its last stable offset,
                // which stops before a transaction still undecided: the one this
                // partition's producer has just committed or aborted (the broker writes
                // its markers after the call returns). Stopping there would restore an
                // older state than the committed one. The position (past control
                // records too) must reach the high watermark read at the start.
                None | Some(Err(KafkaError::PartitionEOF(_))) => {
                    if read_to(&consumer, topic, partition, high) {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(partition, error = %e, "reading the changelog; retrying");
                }
                Some(Ok(m)) => {
                    records += 1;
                    let Some(key) = m.key() else { continue };
                    if key == ENGINE_KEY {
                        if let Some(v) = m.payload() {
                            partition_record = Some((m.offset(), v.into()));
                        }
                    } else if key == JOURNAL_KEY {
                        journal = m.payload().map(|v| (m.offset(), v.into()));
                    } else {
                        match m.payload() {
                            Some(v) => {
                                customers.insert(key.into(), v.into());
                            }
                            None => {
                                customers.remove(key);
                            }
                        }
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                let position = low + records as i64;
                tracing::info!(
                    partition,
                    read = records,
                    of = total,
                    customers = customers.len(),
                    "restoring state"
                );
                telemetry::restore_progress(
                    partition,
                    (high - position).max(0) as u64,
                    records - reported,
                );
                reported = records;
            }
        }
        telemetry::restore_progress(partition, 0, records - reported);
    }
    let (engine, positions) = match partition_record {
        None => {
            if !customers.is_empty() {
                tracing::warn!(
                    partition,
                    customers = customers.len(),
                    "changelog has customer records but no partition record; starting afresh"
                );
            }
            (Engine::new(settings.clone()), Vec::new())
        }
        Some((offset, bytes)) => {
            let (positions, engine_rec) = decode_partition_record(&bytes)
                .map_err(|error| RestoreError::Codec { offset, error })?;
            // Key order: a restore does not depend on the order the log holds them in.
            let mut keys: Vec<&Box<[u8]>> = customers.keys().collect();
            keys.sort_unstable();
            let engine = Engine::restore(
                settings.clone(),
                engine_rec,
                keys.iter().map(|k| &customers[*k]),
            )
            .map_err(|error| RestoreError::Codec { offset, error })?;
            (engine, positions)
        }
    };
    let journal = match journal {
        Some((offset, bytes)) => {
            Some(Journal::decode(&bytes).map_err(|error| RestoreError::Codec { offset, error })?)
        }
        None => None,
    };
    Ok(Restored {
        engine,
        positions,
        journal,
        records,
        elapsed: start.elapsed(),
    })
}

/// Whether `consumer`'s position in `topic`[`partition`] has reached `end`.
fn read_to<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    end: i64,
) -> bool {
    consumer
        .position()
        .ok()
        .and_then(|l| l.find_partition(topic, partition).map(|e| e.offset()))
        .is_some_and(|o| matches!(o, Offset::Offset(o) if o >= end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_record_gives_back_its_positions_and_engine() {
        let engine = Engine::new(EngineSettings::default());
        let mut out = Vec::new();
        encode_partition_record(&[("orders", 42), ("engagement", 7)], &engine, &mut out);
        let (positions, rest) = decode_partition_record(&out).unwrap();
        assert_eq!(
            positions,
            vec![("orders".to_owned(), 42), ("engagement".to_owned(), 7)]
        );
        let mut engine_rec = Vec::new();
        engine.encode_engine(&mut engine_rec);
        assert_eq!(rest, &engine_rec[..]);
        assert!(decode_partition_record(&out[..5]).is_err());
        let key = ENGINE_KEY.to_vec();
        assert!(String::from_utf8(key).is_err(), "no customer id");
    }

    #[test]
    fn the_end_of_a_partition_is_no_warning_in_either_form() {
        use rdkafka::types::RDKafkaErrorCode;
        assert!(is_end_of_partition(&KafkaError::PartitionEOF(3)));
        assert!(is_end_of_partition(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_end_of_partition(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
