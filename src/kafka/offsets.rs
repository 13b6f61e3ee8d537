//! At-least-once commit positions.
//!
//! An input offset may be committed only after every alert caused by it, and by
//! everything before it on its partition, has been acknowledged by the broker. Alerts
//! are acknowledged asynchronously and in any order, so each partition keeps the
//! offsets that still wait for acknowledgements, in offset order; the commit position
//! is the first of them, or one past the last processed offset when none waits.
//! Offsets that caused no alert cost nothing.

use std::collections::VecDeque;

/// Progress of one partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionProgress {
    /// Offsets with alerts still in flight: (offset, outstanding acknowledgements).
    waiting: VecDeque<(i64, u32)>,
    /// Next offset after the last one processed; `None` before the first.
    next: Option<i64>,
}

/// Misuse of the tracker (a bug in the caller, never a broker condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    /// Offsets must be processed in increasing order.
    #[error("offset {offset} processed after {last}")]
    OutOfOrder {
        /// The offset given.
        offset: i64,
        /// The last offset processed.
        last: i64,
    },
    /// An acknowledgement for an offset with nothing in flight.
    #[error("acknowledgement for offset {0} with nothing in flight")]
    UnexpectedAck(i64),
}

impl PartitionProgress {
    /// Records that `offset` was processed and caused `alerts` alerts now in flight.
    pub fn processed(&mut self, offset: i64, alerts: u32) -> Result<(), ProgressError> {
        if let Some(next) = self.next {
            if offset < next {
                return Err(ProgressError::OutOfOrder {
                    offset,
                    last: next - 1,
                });
            }
        }
        self.next = Some(offset + 1);
        if alerts > 0 {
            self.waiting.push_back((offset, alerts));
        }
        Ok(())
    }

    /// Records that one alert caused by `offset` was acknowledged.
    pub fn acked(&mut self, offset: i64) -> Result<(), ProgressError> {
        let i = self
            .waiting
            .binary_search_by_key(&offset, |(o, _)| *o)
            .map_err(|_| ProgressError::UnexpectedAck(offset))?;
        let entry = &mut self.waiting[i];
        entry.1 -= 1;
        if entry.1 == 0 {
            self.waiting.remove(i);
        }
        Ok(())
    }

    /// The offset to commit (the next one to read), if anything was processed.
    pub fn committable(&self) -> Option<i64> {
        match self.waiting.front() {
            Some((offset, _)) => Some(*offset),
            None => self.next,
        }
    }

    /// Alerts in flight on this partition.
    pub fn in_flight(&self) -> u64 {
        self.waiting.iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_stop_at_the_first_unacknowledged_alert() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.committable(), None);
        p.processed(10, 0).unwrap();
        assert_eq!(p.committable(), Some(11));
        p.processed(11, 2).unwrap();
        p.processed(12, 0).unwrap();
        p.processed(13, 1).unwrap();
        assert_eq!(p.committable(), Some(11), "11 waits for two acks");
        p.acked(13).unwrap();
        assert_eq!(
            p.committable(),
            Some(11),
            "a later ack does not move past 11"
        );
        p.acked(11).unwrap();
        assert_eq!(p.committable(), Some(11));
        p.acked(11).unwrap();
        assert_eq!(p.committable(), Some(14));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut p = PartitionProgress::default();
        p.processed(5, 1).unwrap();
        assert_eq!(
            p.processed(4, 0),
            Err(ProgressError::OutOfOrder { offset: 4, last: 5 })
        );
        assert_eq!(p.acked(7), Err(ProgressError::UnexpectedAck(7)));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Process(u8, u8),
        Ack(prop::sample::Index),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..4, 0u8..3).prop_map(|(gap, alerts)| Step::Process(gap, alerts)),
            any::<prop::sample::Index>().prop_map(Step::Ack),
        ]
    }

    proptest! {
        /// Model-based: the tracker and a naive model (every alert listed with its
        /// offset) agree on the commit position after any sequence of processing and
        /// acknowledgements in any order, and the position never passes an offset with
        /// an unacknowledged alert.
        #[test]
        fn agrees_with_a_naive_model(steps in prop::collection::vec(step(), 1..200)) {
            let mut p = PartitionProgress::default();
            let mut offset = 100i64;
            let mut last: Option<i64> = None;
            let mut unacked: Vec<i64> = Vec::new();
            for s in steps {
                match s {
                    Step::Process(gap, alerts) => {
                        offset += i64::from(gap);
                        p.processed(offset, u32::from(alerts)).unwrap();
                        last = Some(offset);
                        for _ in 0..alerts {
                            unacked.push(offset);
                        }
                    }
                    Step::Ack(i) if !unacked.is_empty() => {
                        let o = unacked.remove(i.index(unacked.len()));
                        p.acked(o).unwrap();
                    }
                    Step::Ack(_) => {}
                }
                let model = match (unacked.iter().min(), last) {
                    (Some(o), _) => Some(*o),
                    (None, Some(l)) => Some(l + 1),
                    (None, None) => None,
                };
                prop_assert_eq!(p.committable(), model);
                if let Some(c) = p.committable() {
                    prop_assert!(unacked.iter().all(|o| *o >= c));
                }
                prop_assert_eq!(p.in_flight(), unacked.len() as u64);
            }
        }
    }
}
