//! What librdkafka's statistics tell: each input's lag, and the positions the
//! workers' stream-time synchronization needs.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::statistics::Statistics;

use crate::kafka::consumer::Shared;
use crate::kafka::sync::Position;
use crate::kafka::work::PositionReport;
use crate::telemetry::{self};

impl Shared {
    pub(crate) fn lag(&self, stats: &Statistics) {
        let mut max: Option<i64> = None;
        let mut own = self.own.lock().expect("own positions lock");
        own.clear();
        for (ti, t) in self.inputs.iter().enumerate() {
            let Some(ts) = stats.topics.get(&t.name) else {
                continue;
            };
            for (p, ps) in &ts.partitions {
                if *p < 0 || !ps.desired {
                    continue;
                }
                if let Some(position) = consumed_position(ps) {
                    own.insert((ti, *p), position);
                }
                match partition_lag(ps) {
                    Some(l) => max = Some(max.map_or(l, |m: i64| m.max(l))),
                    None => max = Some(i64::MAX),
                }
            }
        }
        drop(own);
        let v = match max {
            Some(i64::MAX) | None => -1,
            Some(m) => m,
        };
        self.status.max_lag.store(v, Ordering::Relaxed);
        telemetry::ready(self.status.ready(self.cfg.kafka.ready_max_lag).is_ok());
    }

    /// What the statistics tell of the running partitions' inputs, for their workers'
    /// stream-time synchronization (handed on by the poll loop after every message it
    /// polled before them).
    pub(crate) fn positions(&self, stats: &Statistics) {
        let now = Instant::now();
        let epochs = self.epochs.snapshot();
        let membership = self.membership.lock().expect("membership lock");
        let mut out = Vec::new();
        for (ti, t) in self.inputs.iter().enumerate() {
            let Some(ts) = stats.topics.get(&t.name) else {
                continue;
            };
            for (p, ps) in &ts.partitions {
                let Some(epoch) = epochs.get(p) else {
                    continue;
                };
                if !ps.desired {
                    continue;
                }
                let settled = membership.settled((ti, *p), now, self.settle);
                let gone = ps.unknown;
                let position = if gone { None } else { position_of(ps, settled) };
                if gone || position.is_some() {
                    out.push(PositionReport {
                        topic: ti,
                        partition: *p,
                        epoch: *epoch,
                        position,
                    });
                }
            }
        }
        drop(membership);
        if !out.is_empty() {
            *self.reports.lock().expect("reports lock") = out;
            self.reports_ready.store(true, Ordering::Release);
        }
    }
}

/// A partition's end as the consumer reads it (`read_committed`): the last stable
/// offset, else the high watermark; `None` while unknown.
pub(crate) fn end_of(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if ps.ls_offset >= 0 {
        ps.ls_offset
    } else {
        ps.hi_offset
    };
    (end >= 0).then_some(end)
}

/// An input topic-partition's end as librdkafka's statistics show it (the last stable
/// offset: the consumer reads `read_committed`), and whether it is caught up: its fetch
/// position has reached the end (past transaction markers too, which a consumed
/// message's offset never shows) in the active fetch state, and everything below was
/// passed on. The fetch position is trusted only when `settled`: not paused, nor paused,
/// resumed or moved lately (see [`settle_time`]). A log that ends in an aborted
/// transaction is not caught up by this (what the consumer passed on stops short of
/// the aborted messages): its partition waits for its next message. `None` while the
/// end is unknown.
pub(crate) fn position_of(ps: &rdkafka::statistics::Partition, settled: bool) -> Option<Position> {
    let end = end_of(ps)?;
    // The fetch position is refreshed only with each fetch response: after a pause
    // (which drops what was prefetched) it goes on showing what had been fetched, and the
    // dropped messages come again later. It is trusted only when the consumer has also
    // passed on everything below the end but, at most, one transaction marker (or nothing
    // yet at all, as at the start of an empty partition).
    let passed_on = ps.app_offset < 0 || ps.app_offset >= end - 1;
    let caught_up = settled
        && passed_on
        && ps.fetch_state == "active"
        && ps.next_offset >= 0
        && ps.next_offset >= end;
    Some(Position { end, caught_up })
}

/// A partition's lag from librdkafka's statistics: its end (the last stable offset, as
/// the consumer reads `read_committed`) minus the position the application has
/// consumed to. Not librdkafka's own `consumer_lag`: that counts from the consumer's
/// committed offset, which transactional checkpoints (offsets sent by a producer) never
/// update, so it would stay where it was at assignment. Before the first message
/// since assignment, the committed offset fetched at assignment is the position.
/// `None` while the end or the position is unknown.
pub(crate) fn partition_lag(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = end_of(ps)?;
    Some((end - consumed_position(ps)?).max(0))
}

/// The position a partition is consumed to: the offset after the last message passed
/// on, before the first one since assignment the committed offset fetched then, before
/// that the log start. `None` while unknown.
pub(crate) fn consumed_position(ps: &rdkafka::statistics::Partition) -> Option<i64> {
    let position = ps.app_offset.max(ps.committed_offset);
    if position >= 0 {
        Some(position)
    } else if ps.lo_offset >= 0 {
        Some(ps.lo_offset)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{partition_lag, position_of};
    use crate::kafka::sync::Position;
    use rdkafka::statistics::Partition;

    /// Statistics of a fetching partition: its end, fetch position and what was passed on.
    fn fetching(end: i64, next: i64, app: i64) -> Partition {
        Partition {
            ls_offset: end,
            hi_offset: end,
            next_offset: next,
            app_offset: app,
            fetch_state: "active".into(),
            ..Partition::default()
        }
    }

    #[test]
    fn caught_up_when_fetched_to_the_end_and_passed_on_but_a_transaction_marker() {
        let caught = |p: Partition, settled| position_of(&p, settled).map(|p| p.caught_up);
        assert_eq!(
            position_of(&fetching(500, 500, 500), true),
            Some(Position {
                end: 500,
                caught_up: true
            })
        );
        // The last offset is a commit marker: no message shows it.
        assert_eq!(caught(fetching(500, 500, 499), true), Some(true));
        // Fetched to the end, not yet passed on: the messages in between come first,
        // but nothing says so beyond doubt (a pause may have dropped them).
        assert_eq!(caught(fetching(50_000, 50_000, 30_000), true), Some(false));
        // Paused lately: nothing is trusted.
        assert_eq!(caught(fetching(500, 500, 500), false), Some(false));
        // Still fetching.
        assert_eq!(caught(fetching(500, 300, 300), true), Some(false));
        // An empty partition, nothing passed on since assignment.
        assert_eq!(caught(fetching(0, 0, -1001), true), Some(true));
        // End not known yet.
        assert_eq!(caught(fetching(-1, 0, -1001), true), None);
    }

    fn stats(ls: i64, hi: i64, app: i64, committed: i64, lo: i64) -> Partition {
        Partition {
            ls_offset: ls,
            hi_offset: hi,
            app_offset: app,
            committed_offset: committed,
            lo_offset: lo,
            // What librdkafka reports after transactional checkpoints: counted from the
            // committed offset it fetched at assignment, never updated.
            consumer_lag: ls - committed,
            ..Partition::default()
        }
    }

    #[test]
    fn lag_counts_from_what_was_consumed_not_from_the_committed_offset_at_assignment() {
        // Assigned at 1,000 with the end at 20,000, now consumed to the end: caught up,
        // though librdkafka's consumer_lag still says 19,000.
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, 20_000, 1_000, 0)),
            Some(0)
        );
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, 15_000, 1_000, 0)),
            Some(5_000)
        );
    }

    #[test]
    fn before_the_first_message_the_committed_offset_is_the_position() {
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, -1, 1_000, 0)),
            Some(19_000)
        );
        // Nothing committed either: counted from the log's start.
        assert_eq!(
            partition_lag(&stats(20_000, 20_000, -1, -1001, 300)),
            Some(19_700)
        );
    }

    #[test]
    fn the_end_is_the_last_stable_offset_when_known() {
        // An open transaction on the input: read_committed stops at the LSO.
        assert_eq!(partition_lag(&stats(900, 1_000, 900, 0, 0)), Some(0));
        assert_eq!(partition_lag(&stats(-1, 1_000, 900, 0, 0)), Some(100));
    }

    #[test]
    fn unknown_end_or_position_is_no_figure() {
        assert_eq!(partition_lag(&stats(-1, -1, 10, 10, 0)), None);
        assert_eq!(partition_lag(&stats(100, 100, -1, -1001, -1)), None);
    }
}
