//! What the forwarder remembers to drop repeats: the keys (`alert_id`, `sequence`) of
//! the last alerts of each partition, read back from before the committed offset when
//! a partition is assigned.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::message::AlertView;
use crate::config::Config;

/// Alerts already posted (or skipped as repeats), per partition, the last `cap` of them.
#[derive(Debug, Default)]
pub struct Seen {
    cap: usize,
    order: VecDeque<(String, u64)>,
    set: HashSet<(String, u64)>,
}

impl Seen {
    /// Remembers at most `cap` keys.
    pub fn new(cap: usize) -> Seen {
        Seen {
            cap,
            ..Seen::default()
        }
    }

    /// Whether the key was seen.
    pub fn contains(&self, key: &(String, u64)) -> bool {
        self.set.contains(key)
    }

    /// Remembers a key, forgetting the oldest beyond the cap.
    pub fn insert(&mut self, key: (String, u64)) {
        if self.cap == 0 || !self.set.insert(key.clone()) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The keys of the `dedup_lookback` alerts before `start` on partition `p`: alerts
/// handled before this assignment (committed), whose repeats must not be posted.
pub fn read_back(
    cfg: &Config,
    stop: &AtomicBool,
    beat: impl Fn(),
    topic: &str,
    p: i32,
    start: i64,
) -> Seen {
    let cap = cfg.slack.dedup_lookback as usize;
    let mut seen = Seen::new(cap);
    if cap == 0 || start <= 0 {
        return seen;
    }
    let began = Instant::now();
    let result = (|| -> Result<(), String> {
        let reader: BaseConsumer = crate::kafka::client::slack_reader_config(cfg)
            .create()
            .map_err(|e| e.to_string())?;
        let (low, _) = reader
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let from = (start - cap as i64).max(low);
        if from >= start {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
        reader.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            beat();
            match reader.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    if m.offset() >= start {
                        return Ok(());
                    }
                    if let Ok(a) = AlertView::read(m.payload().unwrap_or_default(), None) {
                        seen.insert(a.key());
                    }
                    if m.offset() + 1 >= start {
                        return Ok(());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => tracing::warn!(error = %e, "reading back"),
                None => {}
            }
        }
        Err("timed out after 60 s".into())
    })();
    match result {
        Ok(()) => tracing::info!(
            partition = p,
            remembered = seen.len(),
            ms = began.elapsed().as_millis() as u64,
            "read back the alerts before the committed offset"
        ),
        Err(e) => tracing::warn!(partition = p, error = %e, remembered = seen.len(),
            "could not read back all alerts before the committed offset; repeats of older ones may be posted"),
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keys_are_bounded_and_forget_the_oldest_first() {
        let mut s = Seen::new(3);
        for i in 1..=4u64 {
            s.insert(("a".into(), i));
        }
        s.insert(("a".into(), 4));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&("a".into(), 1)), "the oldest is forgotten");
        assert!(s.contains(&("a".into(), 2)) && s.contains(&("a".into(), 4)));
        assert!(!s.contains(&("b".into(), 2)), "the key is the pair");
        let mut none = Seen::new(0);
        none.insert(("a".into(), 1));
        assert!(none.is_empty());
    }
}
