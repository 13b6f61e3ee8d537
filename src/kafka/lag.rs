//! Consumer lag of every input partition, owned here or not.
//!
//! The consumer's own statistics know only the partitions it holds, and their ends only
//! from its fetch responses: a paused or stalled consumer sees no new end, and a
//! partition that no member consumes (its owner stuck, or not started) has no one to
//! report it. So, as kafka-lag-exporter does, every instance also asks the brokers: the
//! log end offsets (`read_committed`: the last stable offsets) of every partition of
//! the input topics, and the group's committed offsets. A partition's lag is its end
//! minus what was consumed of it: this instance's position when it consumes it,
//! otherwise the group's committed offset (before any commit: the log start, or the end
//! with `auto_offset_reset = "latest"`). Every instance reports every partition; the
//! owner's figure is the freshest, the others' are behind by at most a commit interval,
//! so dashboards take the largest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::changelog::RestoreCtx;
use super::client::lag_monitor_config;
use crate::config::{InputTopic, KafkaConfig, OffsetReset};
use crate::telemetry;

/// How often the brokers are asked.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What is known of one input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// Log start offset.
    pub start: i64,
    /// Log end (last stable) offset.
    pub end: i64,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// This instance's consumed position, if it consumes the partition.
    pub own: Option<i64>,
}

/// Messages not consumed yet: `end` minus this instance's position where it consumes
/// the partition, else the group's committed offset, else where a new consumer would
/// start.
pub fn lag(o: Offsets, reset: OffsetReset) -> i64 {
    let from = match (o.own, o.committed) {
        (Some(own), c) => own.max(c.unwrap_or(i64::MIN)),
        (None, Some(c)) => c,
        (None, None) => match reset {
            OffsetReset::Earliest => o.start,
            OffsetReset::Latest => o.end,
        },
    };
    (o.end - from.max(o.start)).max(0)
}

/// This instance's consumed positions, by (input topic index, partition), as its
/// consumer's statistics last showed them.
pub type OwnPositions = Arc<Mutex<BTreeMap<(usize, i32), i64>>>;

/// Runs until `stop`: every [`INTERVAL`], every input partition's lag into its gauge.
pub fn run(cfg: KafkaConfig, inputs: Vec<InputTopic>, own: OwnPositions, stop: Arc<AtomicBool>) {
    let consumer: BaseConsumer<RestoreCtx> = match lag_monitor_config(&cfg)
        .create_with_context(RestoreCtx)
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "lag monitor: no client; lag is reported for owned partitions only");
            return;
        }
    };
    let timeout = Duration::from_secs(5);
    let mut last_warning: Option<Instant> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + INTERVAL;
        match measure(&consumer, &inputs, &own, timeout) {
            Ok(all) => {
                for ((t, p), o) in all {
                    telemetry::consumer_lag(&inputs[t].name, p, lag(o, cfg.auto_offset_reset));
                }
            }
            Err(e) => {
                // Logged once a minute at most: a broker outage is reported elsewhere.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "lag monitor: offsets not read");
                }
            }
        }
    }
}

/// Every input partition's offsets, from the brokers (and this instance's positions).
fn measure(
    consumer: &BaseConsumer<RestoreCtx>,
    inputs: &[InputTopic],
    own: &OwnPositions,
    timeout: Duration,
) -> Result<BTreeMap<(usize, i32), Offsets>, rdkafka::error::KafkaError> {
    let mut all = TopicPartitionList::new();
    let mut keys = Vec::new();
    for (t, input) in inputs.iter().enumerate() {
        let md = consumer.fetch_metadata(Some(&input.name), timeout)?;
        for topic in md.topics().iter().filter(|x| x.name() == input.name) {
            for p in topic.partitions() {
                all.add_partition(&input.name, p.id());
                keys.push((t, p.id()));
            }
        }
    }
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let at = |o: Offset| -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
        let mut l = all.clone();
        l.set_all_offsets(o)?;
        consumer.offsets_for_times(l, timeout)
    };
    let ends = at(Offset::End)?;
    let starts = at(Offset::Beginning)?;
    let committed = consumer.committed_offsets(all.clone(), timeout)?;
    let own = own.lock().expect("own positions lock").clone();
    let offset = |l: &TopicPartitionList, t: usize, p: i32| -> Option<i64> {
        match l.find_partition(&inputs[t].name, p)?.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        }
    };
    Ok(keys
        .into_iter()
        .filter_map(|(t, p)| {
            let o = Offsets {
                start: offset(&starts, t, p)?,
                end: offset(&ends, t, p)?,
                committed: offset(&committed, t, p),
                own: own.get(&(t, p)).copied(),
            };
            Some(((t, p), o))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(start: i64, end: i64, committed: Option<i64>, own: Option<i64>) -> Offsets {
        Offsets {
            start,
            end,
            committed,
            own,
        }
    }

    #[test]
    fn a_partition_nobody_consumes_counts_from_the_groups_committed_offset() {
        assert_eq!(lag(o(0, 900, Some(100), None), OffsetReset::Earliest), 800);
    }

    #[test]
    fn a_partition_consumed_here_counts_from_this_instances_position() {
        // Committed a checkpoint ago; consumed to 880 since.
        assert_eq!(
            lag(o(0, 900, Some(100), Some(880)), OffsetReset::Earliest),
            20
        );
    }

    #[test]
    fn with_nothing_committed_a_new_consumer_would_start_where_the_reset_says() {
        assert_eq!(lag(o(50, 900, None, None), OffsetReset::Earliest), 850);
        assert_eq!(lag(o(50, 900, None, None), OffsetReset::Latest), 0);
        // Retention removed what was committed: counted from the log start.
        assert_eq!(
            lag(o(500, 900, Some(100), None), OffsetReset::Earliest),
            400
        );
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag(o(0, 900, Some(950), None), OffsetReset::Earliest), 0);
    }
}
