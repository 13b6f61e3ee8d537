//! The alert lifecycle: a small state machine per customer.
//!
//! - `open`: the first signal becomes active (severity ≥ entry). Starts an episode with
//!   a deterministic `alert_id`: a hash of the customer id and the instant it opened,
//!   and of the previous episode's id if the customer had one. Evaluation instants can
//!   go back (a late event on a topic behind the others is evaluated at its own time),
//!   so two episodes of a customer can open at the same instant; the previous id keeps
//!   their ids apart.
//! - `escalated`: within the episode, a signal joins that was not announced yet, or the
//!   risk level rises above the highest announced. Falling back and rising again to an
//!   already announced level is not news.
//! - `resolved`: no signal is active any more; an active signal stays active until its
//!   severity falls below the exit threshold (hysteresis).
//! - reminder (optional): status `open` again, same id, after `repeat_after` without news.
//!
//! Nothing else emits: the same risk with the same signals is silence.

use crate::time::Timestamp;
pub use crate::vocab::Status;
use crate::vocab::{Reading, Risk, SignalKind};

/// Lifecycle state of one customer. 24 bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Episode {
    /// Id of the current (or last) episode.
    pub alert_id: u64,
    /// When the last alert of the episode was emitted (event time).
    pub last_alert_at: Timestamp,
    /// Sequence number of the last alert of the episode.
    pub sequence: u16,
    /// Signals active now (bit mask), with hysteresis.
    pub active: u8,
    /// Signals announced in this episode (bit mask).
    pub announced: u8,
    /// Highest risk announced in this episode.
    pub announced_risk: u8,
    /// Highest value tier announced in this episode, plus one (0: none yet, or a record
    /// of an older build): a key account whose falling revenue moves it out of `key`
    /// while its alert is open is still counted as one.
    pub announced_tier: u8,
    /// An episode is open.
    pub open: bool,
}

/// The hysteresis rule: which signals are active given the previous mask.
pub fn active_mask(previous: u8, readings: &[Reading; 7], entry: f64, exit: f64) -> u8 {
    let mut mask = 0;
    for k in SignalKind::ALL {
        let s = readings[k as usize].severity;
        let was = previous & k.bit() != 0;
        if (was && s >= exit) || (!was && s >= entry) {
            mask |= k.bit();
        }
    }
    mask
}

/// Deterministic id of an episode that opened at `at` for `customer_id`.
pub fn episode_id(customer_id: &str, at: Timestamp) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(customer_id.as_bytes());
    h.update(&[0]);
    h.update(&at.0.to_le_bytes());
    h.digest()
}

/// Deterministic id of an episode that opened at `at` for `customer_id` after the
/// episode `previous` (which may have opened at the same instant: [`episode_id`] alone
/// would give both the same id).
pub fn next_episode_id(previous: u64, customer_id: &str, at: Timestamp) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(customer_id.as_bytes());
    h.update(&[1]);
    h.update(&at.0.to_le_bytes());
    h.update(&previous.to_le_bytes());
    h.digest()
}

/// Settings of the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Severity to become active.
    pub entry: f64,
    /// Severity to stay active.
    pub exit: f64,
    /// Reminder period in ms, 0 = never.
    pub repeat_ms: i64,
}

impl Episode {
    /// Applies an evaluation; returns the status to emit, if any.
    pub fn transition(
        &mut self,
        customer_id: &str,
        readings: &[Reading; 7],
        risk: Risk,
        now: Timestamp,
        rules: Rules,
    ) -> Option<Status> {
        let active = active_mask(self.active, readings, rules.entry, rules.exit);
        self.active = active;
        let risk = risk as u8;
        if !self.open {
            if active == 0 {
                return None;
            }
            let alert_id = if self.alert_id != 0 {
                next_episode_id(self.alert_id, customer_id, now)
            } else {
                episode_id(customer_id, now)
            };
            *self = Episode {
                alert_id,
                last_alert_at: now,
                sequence: 1,
                active,
                announced: active,
                announced_risk: risk,
                announced_tier: 0,
                open: true,
            };
            return Some(Status::Open);
        }
        if active == 0 {
            self.open = false;
            self.sequence = self.sequence.saturating_add(1);
            self.last_alert_at = now;
            return Some(Status::Resolved);
        }
        if active & !self.announced != 0 || risk > self.announced_risk {
            self.announced |= active;
            self.announced_risk = self.announced_risk.max(risk);
            self.sequence = self.sequence.saturating_add(1);
            self.last_alert_at = now;
            return Some(Status::Escalated);
        }
        if rules.repeat_ms > 0 && now.0 - self.last_alert_at.0 >= rules.repeat_ms {
            self.sequence = self.sequence.saturating_add(1);
            self.last_alert_at = now;
            return Some(Status::Open);
        }
        None
    }

    /// When a reminder is due, if reminders are on and an episode is open.
    pub fn reminder_due(&self, rules: Rules) -> Option<Timestamp> {
        (self.open && rules.repeat_ms > 0)
            .then(|| Timestamp(self.last_alert_at.0 + rules.repeat_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        entry: 0.5,
        exit: 0.35,
        repeat_ms: 0,
    };

    fn with(pairs: &[(SignalKind, f64)]) -> [Reading; 7] {
        let mut r = [Reading::NONE; 7];
        for (k, s) in pairs {
            r[*k as usize].severity = *s;
        }
        r
    }

    #[test]
    fn open_escalate_resolve_with_sequences() {
        let mut e = Episode::default();
        let t = Timestamp(1_000);
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.4)]),
                Risk::Low,
                t,
                RULES
            ),
            None
        );
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.6)]),
                Risk::Medium,
                t,
                RULES
            ),
            Some(Status::Open)
        );
        let id = e.alert_id;
        assert_eq!(e.sequence, 1);
        // same signals, same risk: silence
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.62)]),
                Risk::Medium,
                t,
                RULES
            ),
            None
        );
        // a new signal joins
        let two = with(&[
            (SignalKind::Inactivity, 0.6),
            (SignalKind::NpsDetractor, 0.7),
        ]);
        assert_eq!(
            e.transition("c", &two, Risk::Medium, t, RULES),
            Some(Status::Escalated)
        );
        // risk rises
        assert_eq!(
            e.transition("c", &two, Risk::High, t, RULES),
            Some(Status::Escalated)
        );
        // risk falls and rises back: not news
        assert_eq!(e.transition("c", &two, Risk::Medium, t, RULES), None);
        assert_eq!(e.transition("c", &two, Risk::High, t, RULES), None);
        // hysteresis: 0.4 keeps it active, 0.3 clears
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.4)]),
                Risk::Low,
                t,
                RULES
            ),
            None
        );
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.3)]),
                Risk::Low,
                t,
                RULES
            ),
            Some(Status::Resolved)
        );
        assert_eq!((e.alert_id, e.sequence), (id, 4));
        // a new episode gets a new id
        assert_eq!(
            e.transition(
                "c",
                &with(&[(SignalKind::Inactivity, 0.6)]),
                Risk::Low,
                Timestamp(2_000),
                RULES
            ),
            Some(Status::Open)
        );
        assert_ne!(e.alert_id, id);
        assert_eq!(e.sequence, 1);
    }

    #[test]
    fn episodes_opening_at_an_instant_an_earlier_one_opened_get_ids_of_their_own() {
        // A late event on a topic behind the others is evaluated at its own, earlier
        // time: an episode opened at 2000 can resolve at 1500 and the next open at
        // 2000 again (or at the same instant it resolved).
        let high = with(&[(SignalKind::Inactivity, 0.8)]);
        let low = with(&[(SignalKind::Inactivity, 0.1)]);
        let mut e = Episode::default();
        let mut seen = std::collections::BTreeSet::new();
        for (open, resolve) in [
            (2_000, 1_500),
            (2_000, 2_000),
            (2_000, 2_500),
            (3_000, 3_000),
        ] {
            assert_eq!(
                e.transition("c", &high, Risk::High, Timestamp(open), RULES),
                Some(Status::Open)
            );
            assert_eq!(e.sequence, 1);
            assert!(seen.insert(e.alert_id), "a repeated (alert_id, 1)");
            assert_eq!(
                e.transition("c", &low, Risk::Low, Timestamp(resolve), RULES),
                Some(Status::Resolved)
            );
        }
        // The first episode of a customer: its id depends on the customer and instant.
        assert!(seen.contains(&episode_id("c", Timestamp(2_000))));
        let mut other = Episode::default();
        other.transition("c", &high, Risk::High, Timestamp(2_000), RULES);
        assert_eq!(other.alert_id, episode_id("c", Timestamp(2_000)));
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(
            episode_id("acme", Timestamp(5)),
            episode_id("acme", Timestamp(5))
        );
        assert_ne!(
            episode_id("acme", Timestamp(5)),
            episode_id("acme", Timestamp(6))
        );
        assert_ne!(
            episode_id("acme", Timestamp(5)),
            episode_id("acm", Timestamp(5))
        );
    }

    #[test]
    fn reminders_repeat_the_open_alert() {
        let rules = Rules {
            repeat_ms: 100,
            ..RULES
        };
        let mut e = Episode::default();
        let r = with(&[(SignalKind::Inactivity, 0.6)]);
        assert_eq!(
            e.transition("c", &r, Risk::Low, Timestamp(0), rules),
            Some(Status::Open)
        );
        assert_eq!(e.reminder_due(rules), Some(Timestamp(100)));
        assert_eq!(e.transition("c", &r, Risk::Low, Timestamp(99), rules), None);
        assert_eq!(
            e.transition("c", &r, Risk::Low, Timestamp(100), rules),
            Some(Status::Open)
        );
        assert_eq!(e.sequence, 2);
    }
}
