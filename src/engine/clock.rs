//! The event time that stream time follows: the latest time that several recent events
//! agree on, so that one event cannot move stream time for everyone. A single event
//! dated "now" in the middle of a backfill (a clock reset, a test message) would
//! otherwise turn every later event of the backfill late and let every customer's
//! silence deadline pass at once.
//!
//! The rule: of the last [`RECENT`] event times, the [`AGREE`]-th largest. Stream time
//! advances once [`AGREE`] of the last [`RECENT`] events reach a time; in time order it
//! follows the events [`AGREE`]` - 1` behind. Pure and deterministic (the same events
//! in the same order give the same times), and part of the engine's state record.

use super::codec::{CodecError, Reader, Writer};

/// Recent event times remembered.
pub const RECENT: usize = 5;
/// How many of them must reach a time before stream time does.
pub const AGREE: usize = 3;

/// The last [`RECENT`] event times, oldest overwritten first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recent {
    times: [i64; RECENT],
    len: u8,
    next: u8,
}

impl Recent {
    /// Remembers an event's time.
    pub fn push(&mut self, t: i64) {
        self.times[self.next as usize] = t;
        self.next = ((self.next as usize + 1) % RECENT) as u8;
        self.len = (self.len + 1).min(RECENT as u8);
    }

    fn held(&self) -> &[i64] {
        &self.times[..self.len as usize]
    }

    /// The [`AGREE`]-th largest recent time (`None` before [`AGREE`] events).
    pub fn agreed(&self) -> Option<i64> {
        let held = self.held();
        if held.len() < AGREE {
            return None;
        }
        let mut sorted = [i64::MIN; RECENT];
        sorted[..held.len()].copy_from_slice(held);
        sorted[..held.len()].sort_unstable_by(|a, b| b.cmp(a));
        Some(sorted[AGREE - 1])
    }

    /// The largest recent time (`None` before the first event).
    pub fn latest(&self) -> Option<i64> {
        self.held().iter().copied().max()
    }

    /// As many times `t` as the ring holds: what an engine recorded before this rule
    /// resumes from (its latest event time is taken as agreed).
    pub fn filled(t: i64) -> Recent {
        Recent {
            times: [t; RECENT],
            len: RECENT as u8,
            next: 0,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.len);
        w.u8(self.next);
        for t in self.held() {
            w.i64(*t);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Recent, CodecError> {
        let len = r.u8()?;
        let next = r.u8()?;
        if len as usize > RECENT || next as usize >= RECENT {
            return Err(CodecError::Invalid("recent event times out of range"));
        }
        let mut times = [0i64; RECENT];
        for t in times.iter_mut().take(len as usize) {
            *t = r.i64()?;
        }
        Ok(Recent { times, len, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(times: &[i64]) -> Recent {
        let mut r = Recent::default();
        for t in times {
            r.push(*t);
        }
        r
    }

    #[test]
    fn one_or_two_outliers_do_not_move_it_three_do() {
        assert_eq!(after(&[10, 20]).agreed(), None);
        assert_eq!(after(&[10, 20, 30]).agreed(), Some(10));
        assert_eq!(after(&[10, 20, 30, 40, 50]).agreed(), Some(30));
        assert_eq!(after(&[10, 20, 30, 9_999, 40]).agreed(), Some(30));
        assert_eq!(after(&[10, 20, 9_999, 30, 9_999]).agreed(), Some(30));
        assert_eq!(after(&[20, 9_999, 30, 9_999, 9_999]).agreed(), Some(9_999));
        // an old outlier is just a low time
        assert_eq!(after(&[50, 60, -1_000_000, 70, 80]).agreed(), Some(60));
        assert_eq!(after(&[50, 60, 9_999]).latest(), Some(9_999));
    }

    #[test]
    fn it_survives_its_record() {
        let r = after(&[1, 2, 3, 4, 5, 6, 7]);
        let mut out = Vec::new();
        let mut w = Writer::start(&mut out);
        r.encode(&mut w);
        let mut rd = Reader::start(&out).unwrap();
        assert_eq!(Recent::decode(&mut rd).unwrap(), r);
        assert_eq!(Recent::filled(9).agreed(), Some(9));
    }
}
