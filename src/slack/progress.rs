//! What the forwarder has done on one partition of the alerts topic, and what it
//! commits: the offset of the first alert still waiting for its webhook, with the
//! alerts after it that were handled already written into the commit's metadata.
//!
//! Each webhook posts from its own queue, so an alert to a failing webhook waits while
//! later alerts to other webhooks are posted. The committed offset cannot pass the
//! waiting alert, and the next reader of the partition (this forwarder after a crash,
//! or another one after a rebalance) starts there. The metadata tells it which of the
//! alerts after that offset are done, so that it posts only the rest:
//!
//! ```text
//! offsets    7   8   9   10  11  12        committed: 7
//! handled    ·   ✓   ✓   ·   ✓   (not read) metadata:  v1;end=12;pending=0,3
//! ```
//!
//! `pending` lists the waiting offsets, each as its distance from the one before
//! (starting at the committed offset); every offset below `end` not listed is done.
//! The metadata is kept under [`MAX_METADATA`] bytes (Kafka's
//! `offset.metadata.max.bytes` is 4,096 by default): when the waiting alerts do not fit,
//! `end` is cut back to the first one left out, so what follows is read again (and
//! posted again if it was: at-least-once, never lost).

use std::collections::BTreeSet;
use std::fmt::Write;

/// The longest metadata written with a commit.
pub const MAX_METADATA: usize = 3000;

/// What the previous reader of the partition had done past its committed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handover {
    /// Offsets below this one and not in `pending` were handled.
    pub end: i64,
    /// Offsets below `end` still to handle.
    pub pending: BTreeSet<i64>,
}

impl Handover {
    /// Reads the metadata committed with `offset`. Anything else (none, another
    /// tool's, a damaged one) hands nothing over: every alert from `offset` on is read
    /// as new, which at worst posts some again.
    pub fn parse(offset: i64, metadata: &str) -> Handover {
        Self::try_parse(offset, metadata).unwrap_or_default()
    }

    fn try_parse(offset: i64, metadata: &str) -> Option<Handover> {
        let rest = metadata.strip_prefix("v1;end=")?;
        let (end, pending) = rest.split_once(";pending=")?;
        let end: i64 = end.parse().ok()?;
        let mut at = offset;
        let mut set = BTreeSet::new();
        if !pending.is_empty() {
            for d in pending.split(',') {
                at = at.checked_add(d.parse::<u32>().ok()?.into())?;
                if at >= end {
                    return None;
                }
                set.insert(at);
            }
        }
        (end > offset).then_some(Handover { end, pending: set })
    }

    /// Whether the previous reader handled `offset`.
    pub fn handled(&self, offset: i64) -> bool {
        offset < self.end && !self.pending.contains(&offset)
    }
}

/// One partition's progress.
#[derive(Debug, Clone)]
pub struct Progress {
    /// One past the highest offset read.
    end: i64,
    /// Read, sent to a webhook, not posted yet.
    pending: BTreeSet<i64>,
    /// From the commit this reader started at.
    handover: Handover,
    /// The last (offset, metadata) committed or sent to be.
    committed: Option<(i64, String)>,
}

impl Progress {
    /// Starts at `start` (the committed offset, where reading begins), with what the
    /// previous reader handed over.
    pub fn new(start: i64, handover: Handover) -> Progress {
        Progress {
            end: start,
            pending: BTreeSet::new(),
            handover,
            committed: None,
        }
    }

    /// Whether `offset` was handled before this reader started (a post not to repeat).
    pub fn handed_over(&self, offset: i64) -> bool {
        self.handover.handled(offset)
    }

    /// Notes that `offset` was read and handled at once (skipped or handed over).
    pub fn done(&mut self, offset: i64) {
        self.end = self.end.max(offset + 1);
        self.pending.remove(&offset);
    }

    /// Notes that `offset` was read and waits for its webhook.
    pub fn wait(&mut self, offset: i64) {
        self.end = self.end.max(offset + 1);
        self.pending.insert(offset);
    }

    /// Alerts waiting.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The offset to commit and its metadata, or `None` when that was committed last.
    pub fn to_commit(&mut self) -> Option<(i64, String)> {
        let next = self.commit_point();
        if self.committed.as_ref() == Some(&next) {
            return None;
        }
        self.committed = Some(next.clone());
        Some(next)
    }

    /// The last commit did not go through: the next [`Progress::to_commit`] sends it
    /// again.
    pub fn commit_failed(&mut self) {
        self.committed = None;
    }

    /// The offset of the first alert not done, with the metadata that says which
    /// after it are.
    fn commit_point(&self) -> (i64, String) {
        // Ours, then what was handed over past what we read.
        let waiting = self.pending.iter().copied().chain(
            self.handover
                .pending
                .range(self.end..)
                .copied()
                .filter(|o| *o < self.handover.end),
        );
        let end = self.end.max(self.handover.end);
        let mut waiting = waiting.peekable();
        let offset = waiting.peek().copied().unwrap_or(end);
        if offset == end {
            return (end, String::new());
        }
        // Room for the list: the prefix with the end's digits counted at their longest.
        let room = MAX_METADATA - "v1;end=;pending=".len() - 20;
        let mut list = String::new();
        let mut at = offset;
        let mut cut = end;
        for o in waiting {
            let kept = list.len();
            let comma = if kept == 0 { "" } else { "," };
            let _ = write!(list, "{comma}{}", o - at);
            if list.len() > room {
                list.truncate(kept);
                cut = o;
                break;
            }
            at = o;
        }
        let text = format!("v1;end={cut};pending={list}");
        (offset, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_stops_at_the_first_waiting_alert_and_names_the_done_ones_after_it() {
        let mut p = Progress::new(7, Handover::default());
        p.wait(7);
        p.done(8);
        p.done(9);
        p.wait(10);
        p.done(11);
        let (offset, meta) = p.to_commit().unwrap();
        assert_eq!((offset, meta.as_str()), (7, "v1;end=12;pending=0,3"));
        assert_eq!(p.to_commit(), None, "nothing new: nothing to commit");
        let next = Progress::new(offset, Handover::parse(offset, &meta));
        let handled: Vec<i64> = (7..14).filter(|o| next.handed_over(*o)).collect();
        assert_eq!(
            handled,
            vec![8, 9, 11],
            "the next reader posts 7, 10, 12, ..."
        );
        p.done(7);
        assert_eq!(p.to_commit(), Some((10, "v1;end=12;pending=0".to_owned())));
        p.done(10);
        assert_eq!(p.to_commit(), Some((12, String::new())));
    }

    #[test]
    fn a_reader_that_starts_from_a_handover_keeps_it_until_it_has_read_past_it() {
        // The previous reader: 20 waiting, 21-24 posted, 25 waiting, read up to 29.
        let handover = Handover::parse(20, "v1;end=30;pending=0,5");
        let mut p = Progress::new(20, handover);
        assert!(!p.handed_over(20) && p.handed_over(21) && !p.handed_over(25));
        assert!(!p.handed_over(30), "past the end: not known, read as new");
        // This reader posts 20 and crashes before reading further: the next one must
        // still skip 21-24 and 26-29.
        p.wait(20);
        p.done(20);
        let (offset, meta) = p.to_commit().unwrap();
        assert_eq!((offset, meta.as_str()), (25, "v1;end=30;pending=0"));
        let third = Progress::new(offset, Handover::parse(offset, &meta));
        let handled: Vec<i64> = (25..31).filter(|o| third.handed_over(*o)).collect();
        assert_eq!(handled, vec![26, 27, 28, 29]);
    }

    #[test]
    fn too_many_waiting_alerts_cut_the_end_back_so_nothing_is_skipped_that_was_not_done() {
        let mut p = Progress::new(0, Handover::default());
        for o in 0..20_000 {
            if o % 7 == 0 {
                p.wait(o * 1000);
            } else {
                p.done(o * 1000);
            }
        }
        let (offset, meta) = p.to_commit().unwrap();
        assert!(meta.len() <= MAX_METADATA, "{} bytes", meta.len());
        let next = Progress::new(offset, Handover::parse(offset, &meta));
        // Whatever the next reader skips was done here; the waiting ones it reads.
        for o in (offset..20_000_000).step_by(1000) {
            if next.handed_over(o) {
                assert!(
                    !p.pending.contains(&o),
                    "waiting alert {o} would be skipped"
                );
            }
        }
        assert!(next.handed_over(1000), "some done alerts are handed over");
    }

    #[test]
    fn metadata_that_is_not_ours_hands_nothing_over() {
        for meta in [
            "",
            "v1;end=abc;pending=",
            "v1;end=30;pending=0,x",
            "v1;end=5;pending=",
            "v1;end=30;pending=50",
            "some other tool's note",
        ] {
            assert_eq!(Handover::parse(10, meta), Handover::default(), "{meta}");
        }
    }
}
