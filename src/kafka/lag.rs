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
//!
//! The lag in seconds is how long ago the log end passed the offset consumption counts
//! from, interpolated between the ends observed (kafka-lag-exporter's method, see
//! [`EndHistory`]): the age of the oldest message not consumed yet, as the brokers saw
//! it arrive.

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
    (o.end - counted_from(o, reset)).max(0)
}

/// The log ends of one partition as the monitor saw them: (end offset, wall-clock
/// seconds when it was first seen), oldest first, one entry per change of the end, at
/// most [`EndHistory::CAP`] (the oldest are dropped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndHistory {
    ends: std::collections::VecDeque<(i64, f64)>,
}

impl EndHistory {
    /// Entries kept: at one measurement every [`INTERVAL`], at least 30 minutes of a
    /// partition written to continuously.
    pub const CAP: usize = 1_000;

    /// Records the end seen at `now` (nothing new while the end stays).
    pub fn observe(&mut self, end: i64, now: f64) {
        match self.ends.back() {
            Some(&(e, _)) if e == end => return,
            // The log was truncated or recreated: start over.
            Some(&(e, _)) if e > end => self.ends.clear(),
            _ => {}
        }
        if self.ends.len() == Self::CAP {
            self.ends.pop_front();
        }
        self.ends.push_back((end, now));
    }

    /// Seconds since the end passed `from` (the next offset to consume), at `now`: 0
    /// when nothing waits; interpolated between the two ends observed around it; and,
    /// for an offset older than the history, the age of the oldest entry (a lower
    /// bound: the monitor did not see it arrive).
    pub fn seconds_behind(&self, from: i64, now: f64) -> f64 {
        let Some(&(last, _)) = self.ends.back() else {
            return 0.0;
        };
        if from >= last {
            return 0.0;
        }
        // The first end beyond `from`: the message at `from` arrived by then.
        let k = self.ends.partition_point(|&(e, _)| e <= from);
        let arrived = match k {
            0 => self.ends[0].1,
            k => {
                let (o0, t0) = self.ends[k - 1];
                let (o1, t1) = self.ends[k];
                t0 + (from - o0 + 1) as f64 / (o1 - o0) as f64 * (t1 - t0)
            }
        };
        (now - arrived).max(0.0)
    }
}

/// Where consumption of a partition counts from (see [`lag`]).
fn counted_from(o: Offsets, reset: OffsetReset) -> i64 {
    let from = match (o.own, o.committed) {
        (Some(own), c) => own.max(c.unwrap_or(i64::MIN)),
        (None, Some(c)) => c,
        (None, None) => match reset {
            OffsetReset::Earliest => o.start,
            OffsetReset::Latest => o.end,
        },
    };
    from.max(o.start)
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
    let mut history: BTreeMap<(usize, i32), EndHistory> = BTreeMap::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + INTERVAL;
        match measure(&consumer, &inputs, &own, timeout) {
            Ok(all) => {
                let now = wall_seconds();
                history.retain(|k, _| all.contains_key(k));
                for ((t, p), o) in all {
                    let h = history.entry((t, p)).or_default();
                    h.observe(o.end, now);
                    let from = counted_from(o, cfg.auto_offset_reset);
                    telemetry::consumer_lag(
                        &inputs[t].name,
                        p,
                        lag(o, cfg.auto_offset_reset),
                        h.seconds_behind(from, now),
                    );
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

fn wall_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

    fn history(ends: &[(i64, f64)]) -> EndHistory {
        let mut h = EndHistory::default();
        for &(e, t) in ends {
            h.observe(e, t);
        }
        h
    }

    #[test]
    fn seconds_behind_interpolate_between_the_ends_seen() {
        // ends 100 at t=0, 200 at t=10, 300 at t=20 (ten messages a second)
        let h = history(&[(100, 0.0), (100, 5.0), (200, 10.0), (300, 20.0)]);
        // caught up
        assert_eq!(h.seconds_behind(300, 25.0), 0.0);
        // the next to consume, 249, arrived when the end passed it: t = 15
        assert!((h.seconds_behind(249, 25.0) - 10.0).abs() < 1e-9);
        // a stalled consumer's lag in seconds grows with the wall clock
        assert!((h.seconds_behind(249, 85.0) - 70.0).abs() < 1e-9);
    }

    #[test]
    fn an_offset_older_than_the_history_is_at_least_as_old_as_its_oldest_entry() {
        let h = history(&[(1_000, 50.0), (1_100, 60.0)]);
        assert_eq!(h.seconds_behind(10, 70.0), 20.0);
    }

    #[test]
    fn a_truncated_log_starts_the_history_over_and_no_end_means_no_lag() {
        let h = history(&[(1_000, 50.0), (10, 60.0), (20, 70.0)]);
        assert_eq!(h, history(&[(10, 60.0), (20, 70.0)]));
        assert_eq!(EndHistory::default().seconds_behind(0, 10.0), 0.0);
    }

    #[test]
    fn the_history_keeps_its_newest_entries() {
        let mut h = EndHistory::default();
        for i in 0..(EndHistory::CAP as i64 + 10) {
            h.observe(i, i as f64);
        }
        assert_eq!(h.ends.len(), EndHistory::CAP);
        assert_eq!(h.ends[0], (10, 10.0));
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag(o(0, 900, Some(950), None), OffsetReset::Earliest), 0);
    }
}
