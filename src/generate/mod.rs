//! A deterministic generator of realistic event histories, for replay tests, backtests,
//! `bench` and the demo.
//!
//! Each customer gets a profile from a hash of (seed, customer): most are steady (their
//! own cadence, basket size and engagement habit, with noise: skipped and extra orders,
//! routine tickets, NPS answers), some are sparse but regular, and some drift away from
//! a given day in one of the ways the signals detect. Randomness is a pure function of
//! (seed, customer, day, draw), so the history streams day by day without per-customer
//! generator state, and the same arguments always give the same events.
//!
//! Every customer's label ([`Profile`] and drift day) is known, so tests can count true
//! patterns caught and steady customers alerted.

pub mod bgnbd;

use std::borrow::Cow;
use std::io::Write;

use crate::event::{Category, Event, EventKind, Priority};
use crate::time::{Timestamp, DAY_MS};

/// What a generated customer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// Orders at their own cadence with noise.
    Steady,
    /// Orders rarely (every 30-60 days) but regularly.
    SparseRegular,
    /// Orders less often and smaller from the drift day.
    ConsumptionDrop,
    /// Asks for discounts and takes deeper ones from the drift day.
    DiscountPressure,
    /// Stops everything at the drift day.
    Inactivity,
    /// Urgent, escalated, reopened tickets with poor CSAT from the drift day.
    SupportTension,
    /// Engagement fades from the drift day.
    EngagementDecline,
    /// A new customer who orders once.
    NoSecondPurchase,
    /// Answers NPS as a detractor at the drift day.
    NpsDetractor,
}

impl Profile {
    /// The signal a drifting profile should raise.
    pub fn expected_signal(self) -> Option<&'static str> {
        Some(match self {
            Profile::Steady | Profile::SparseRegular => return None,
            Profile::ConsumptionDrop => "consumption_drop",
            Profile::DiscountPressure => "discount_pressure",
            Profile::Inactivity => "inactivity",
            Profile::SupportTension => "support_tension",
            Profile::EngagementDecline => "engagement_decline",
            Profile::NoSecondPurchase => "no_second_purchase",
            Profile::NpsDetractor => "nps_detractor",
        })
    }
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Customers.
    pub customers: u32,
    /// Days of history.
    pub days: u32,
    /// Seed.
    pub seed: u64,
    /// First day (midnight UTC).
    pub start: Timestamp,
    /// Fraction of customers that drift (spread over the seven patterns).
    pub drift_fraction: f64,
    /// A week in which everyone is less active (a holiday), as (first day, activity factor).
    pub holiday: Option<(u32, f64)>,
    /// Whether some customers join after day 0 (new customers). Off for benchmarks that
    /// want every customer present from the first days.
    pub late_joiners: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            customers: 1_000,
            days: 200,
            seed: 42,
            // 2026-01-01T00:00:00Z
            start: Timestamp(1_767_225_600_000),
            drift_fraction: 0.2,
            holiday: None,
            late_joiners: true,
        }
    }
}

/// A customer's generated traits.
#[derive(Debug, Clone, Copy)]
pub struct Traits {
    /// Pattern.
    pub profile: Profile,
    /// First active day.
    pub start_day: u32,
    /// Day the drift starts (drifting profiles).
    pub drift_day: u32,
    /// Days between orders.
    pub cadence: u32,
    /// Phase of the order schedule.
    pub phase: u32,
    /// Mean order value.
    pub basket: f64,
    /// Engagement events per day.
    pub engagement_rate: f64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from (seed, customer, day, draw).
fn unit(seed: u64, customer: u32, day: u32, draw: u32) -> f64 {
    let h =
        mix(seed ^ mix(u64::from(customer) << 32 | u64::from(day)) ^ mix(u64::from(draw) + 0x51));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

const NO_DAY: u32 = u32::MAX;

/// The traits of customer `c`.
pub fn traits(spec: &Spec, c: u32) -> Traits {
    let u = |k: u32| unit(spec.seed, c, NO_DAY, k);
    let days = spec.days.max(30);
    let drifting = u(0) < spec.drift_fraction;
    let profile = if drifting {
        match (u(1) * 7.0) as u32 {
            0 => Profile::ConsumptionDrop,
            1 => Profile::DiscountPressure,
            2 => Profile::Inactivity,
            3 => Profile::SupportTension,
            4 => Profile::EngagementDecline,
            5 => Profile::NoSecondPurchase,
            _ => Profile::NpsDetractor,
        }
    } else if u(1) < 0.15 {
        Profile::SparseRegular
    } else {
        Profile::Steady
    };
    let cadence = match profile {
        Profile::SparseRegular => 30 + (u(2) * 31.0) as u32,
        _ => 3 + (u(2) * u(2) * 18.0) as u32,
    };
    // Most customers exist from the start; some join later (new customers).
    let start_day = match profile {
        _ if !spec.late_joiners => 0,
        Profile::NoSecondPurchase => days / 3 + (u(3) * (days as f64 / 3.0)) as u32,
        _ if u(3) < 0.1 => (u(4) * days as f64 * 0.4) as u32,
        _ => 0,
    };
    let drift_day = (days as f64 * (0.55 + 0.15 * u(5))) as u32;
    Traits {
        profile,
        start_day,
        drift_day,
        cadence,
        phase: (u(6) * cadence as f64) as u32,
        basket: 50.0 * (1.0 + 20.0 * u(7) * u(7)),
        engagement_rate: if u(8) < 0.75 || profile == Profile::EngagementDecline {
            0.3 + 2.5 * u(9)
        } else {
            0.0
        },
    }
}

/// One generated event, compact; see [`Generated::to_event`] and [`Generated::write_json`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generated {
    /// Event time.
    pub at: Timestamp,
    /// Customer number.
    pub customer: u32,
    /// Day number.
    pub day: u32,
    /// Draw within the day (unique per customer and day).
    pub n: u32,
    /// What.
    pub what: What,
}

/// Generated payloads.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum What {
    Order {
        amount: f64,
        discount_pct: f64,
    },
    Cancel {
        amount: f64,
    },
    Refund {
        amount: f64,
    },
    TicketOpened {
        ticket_day: u32,
        priority: Priority,
        category: Category,
    },
    TicketEscalated {
        ticket_day: u32,
    },
    TicketReopened {
        ticket_day: u32,
    },
    TicketResolved {
        ticket_day: u32,
        csat: Option<u8>,
    },
    Engagement {
        kind: &'static str,
    },
    Nps {
        score: u8,
    },
}

/// Customer id of number `c`.
pub fn customer_id(c: u32) -> String {
    format!("cust-{c:07}")
}

const KINDS: [&str; 4] = ["login", "feature_used", "email_opened", "meeting"];

impl Generated {
    fn event_id(&self) -> String {
        format!("ev-{}-{}-{}", self.customer, self.day, self.n)
    }

    /// The domain event.
    pub fn to_event(&self) -> Event<'static> {
        let tid = |d: u32| Cow::Owned(format!("t-{}-{d}", self.customer));
        let kind = match self.what {
            What::Order {
                amount,
                discount_pct,
            } => EventKind::OrderPlaced {
                order_id: Cow::Owned(format!("o-{}-{}", self.customer, self.day)),
                amount,
                discount_pct,
            },
            What::Cancel { amount } => EventKind::OrderCancelled {
                order_id: Cow::Owned(format!("o-{}-{}", self.customer, self.day)),
                amount: Some(amount),
            },
            What::Refund { amount } => EventKind::OrderRefunded {
                order_id: Cow::Owned(format!("o-{}-{}", self.customer, self.day)),
                amount,
            },
            What::TicketOpened {
                ticket_day,
                priority,
                category,
            } => EventKind::TicketOpened {
                ticket_id: tid(ticket_day),
                priority,
                category,
            },
            What::TicketEscalated { ticket_day } => EventKind::TicketEscalated {
                ticket_id: tid(ticket_day),
                priority: Some(Priority::Urgent),
            },
            What::TicketReopened { ticket_day } => EventKind::TicketReopened {
                ticket_id: tid(ticket_day),
            },
            What::TicketResolved { ticket_day, csat } => EventKind::TicketResolved {
                ticket_id: tid(ticket_day),
                csat,
            },
            What::Engagement { kind } => EventKind::Engagement {
                kind: Cow::Borrowed(kind),
            },
            What::Nps { score } => EventKind::Nps { score },
        };
        Event {
            event_id: Cow::Owned(self.event_id()),
            customer_id: Cow::Owned(customer_id(self.customer)),
            occurred_at: self.at,
            kind,
        }
    }

    /// Writes the contract JSON form and a newline.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(
            out,
            r#"{{"event_id":"{}","customer_id":"{}","occurred_at":"{}","#,
            self.event_id(),
            customer_id(self.customer),
            self.at
        )?;
        let c = self.customer;
        match self.what {
            What::Order {
                amount,
                discount_pct,
            } => write!(
                out,
                r#""type":"order.placed","order_id":"o-{c}-{}","amount":{amount:.2},"currency":"EUR","discount_pct":{discount_pct:.1}}}"#,
                self.day
            ),
            What::Cancel { amount } => write!(
                out,
                r#""type":"order.cancelled","order_id":"o-{c}-{}","amount":{amount:.2}}}"#,
                self.day
            ),
            What::Refund { amount } => write!(
                out,
                r#""type":"order.refunded","order_id":"o-{c}-{}","amount":{amount:.2}}}"#,
                self.day
            ),
            What::TicketOpened {
                ticket_day,
                priority,
                category,
            } => write!(
                out,
                r#""type":"ticket.opened","ticket_id":"t-{c}-{ticket_day}","priority":"{}","category":"{}"}}"#,
                priority.as_str(),
                category.as_str()
            ),
            What::TicketEscalated { ticket_day } => write!(
                out,
                r#""type":"ticket.escalated","ticket_id":"t-{c}-{ticket_day}","priority":"urgent"}}"#
            ),
            What::TicketReopened { ticket_day } => {
                write!(
                    out,
                    r#""type":"ticket.reopened","ticket_id":"t-{c}-{ticket_day}"}}"#
                )
            }
            What::TicketResolved { ticket_day, csat } => match csat {
                Some(s) => write!(
                    out,
                    r#""type":"ticket.resolved","ticket_id":"t-{c}-{ticket_day}","csat":{s}}}"#
                ),
                None => write!(
                    out,
                    r#""type":"ticket.resolved","ticket_id":"t-{c}-{ticket_day}"}}"#
                ),
            },
            What::Engagement { kind } => {
                write!(out, r#""type":"engagement.{kind}","user_id":"u-{c}"}}"#)
            }
            What::Nps { score } => write!(out, r#""type":"engagement.nps","score":{score}}}"#),
        }?;
        out.write_all(b"\n")
    }
}

/// Streams a history day by day, in event-time order.
pub struct History {
    spec: Spec,
    traits: Vec<Traits>,
    day: u32,
    buffer: std::vec::IntoIter<Generated>,
}

impl History {
    /// A history for `spec`.
    pub fn new(spec: Spec) -> History {
        let traits = (0..spec.customers).map(|c| traits(&spec, c)).collect();
        History {
            spec,
            traits,
            day: 0,
            buffer: Vec::new().into_iter(),
        }
    }

    /// Traits of every customer (the labels).
    pub fn traits(&self) -> &[Traits] {
        &self.traits
    }

    /// Events of one customer on one day (unsorted).
    fn customer_day(&self, c: u32, d: u32, out: &mut Vec<Generated>) {
        let t = &self.traits[c as usize];
        if d < t.start_day {
            return;
        }
        let seed = self.spec.seed;
        let u = |k: u32| unit(seed, c, d, k);
        let drifted = d >= t.drift_day && t.profile.expected_signal().is_some();
        if drifted && t.profile == Profile::Inactivity {
            return;
        }
        let holiday = match self.spec.holiday {
            Some((h, f)) if d >= h && d < h + 7 => f,
            _ => 1.0,
        };
        let mut n = 0;
        let mut push = |what: What, at_frac: f64, out: &mut Vec<Generated>| {
            let at = Timestamp(
                self.spec.start.0 + i64::from(d) * DAY_MS + (at_frac * (DAY_MS - 1) as f64) as i64,
            );
            out.push(Generated {
                at,
                customer: c,
                day: d,
                n,
                what,
            });
            n += 1;
        };

        // Orders.
        let mut order_today = match t.profile {
            Profile::NoSecondPurchase => d == t.start_day,
            _ => {
                ((d + t.phase) % t.cadence == 0 && u(1) > 0.1)
                    || u(2) < 1.0 / (f64::from(t.cadence) * 6.0)
            }
        };
        if d == t.start_day {
            order_today = true;
        }
        let mut basket = t.basket;
        let mut discount = if u(3) < 0.3 {
            5.0 * (u(4) * 2.0).floor()
        } else {
            0.0
        };
        if drifted && t.profile == Profile::ConsumptionDrop {
            order_today = order_today && u(5) < 0.3;
            basket *= 0.5;
        }
        if drifted && t.profile == Profile::DiscountPressure {
            discount = (20.0 + 15.0 * u(6)).round();
        }
        if order_today && u(7) < holiday.max(0.05) {
            let amount = (basket * (0.6 + 0.8 * u(8)) * 100.0).round() / 100.0;
            push(
                What::Order {
                    amount,
                    discount_pct: discount,
                },
                u(9),
                out,
            );
            if u(10) < 0.01 {
                push(What::Cancel { amount }, u(9) + (1.0 - u(9)) * 0.25, out);
            } else if u(10) < 0.03 {
                push(
                    What::Refund {
                        amount: (amount * 0.5 * 100.0).round() / 100.0,
                    },
                    u(9) + (1.0 - u(9)) * 0.5,
                    out,
                );
            }
        }

        // Engagement.
        let mut rate = t.engagement_rate * holiday;
        if drifted && t.profile == Profile::EngagementDecline {
            rate *= 0.08;
        }
        let events = (rate + u(11)).floor() as u32;
        for k in 0..events.min(8) {
            let kind = KINDS[(u(12 + k) * KINDS.len() as f64) as usize];
            push(What::Engagement { kind }, u(20 + k), out);
        }

        // Routine tickets, resolved one to three days later with decent CSAT.
        let routine = |day: u32| unit(seed, c, day, 30) < 1.0 / 45.0;
        if routine(d) {
            let category = if unit(seed, c, d, 31) < 0.5 {
                Category::Technical
            } else {
                Category::Billing
            };
            push(
                What::TicketOpened {
                    ticket_day: d,
                    priority: Priority::Normal,
                    category,
                },
                u(32),
                out,
            );
        }
        for back in 1..=3 {
            if d >= back
                && d - back >= t.start_day
                && routine(d - back)
                && (unit(seed, c, d - back, 33) * 3.0) as u32 + 1 == back
            {
                let csat = Some(3 + (unit(seed, c, d - back, 34) * 3.0) as u8);
                push(
                    What::TicketResolved {
                        ticket_day: d - back,
                        csat,
                    },
                    u(35),
                    out,
                );
            }
        }
        // Occasional discount request (steady customers ask now and then), answered
        // within two days.
        let asks = |day: u32| unit(seed, c, day, 36) < 1.0 / 120.0;
        if d >= 2 && d - 2 >= t.start_day && asks(d - 2) && !routine(d - 2) {
            push(
                What::TicketResolved {
                    ticket_day: d - 2,
                    csat: Some(4),
                },
                u(38),
                out,
            );
        }
        if asks(d) && !routine(d) {
            push(
                What::TicketOpened {
                    ticket_day: d,
                    priority: Priority::Low,
                    category: Category::DiscountRequest,
                },
                u(37),
                out,
            );
        }

        // Drift patterns of tickets and NPS.
        if drifted {
            match t.profile {
                Profile::DiscountPressure if (d - t.drift_day) % 5 == 0 => {
                    push(
                        What::TicketOpened {
                            ticket_day: d,
                            priority: Priority::Normal,
                            category: Category::DiscountRequest,
                        },
                        u(40),
                        out,
                    );
                }
                Profile::SupportTension if (d - t.drift_day) % 4 == 0 => {
                    let category = if u(41) < 0.3 {
                        Category::Complaint
                    } else {
                        Category::Technical
                    };
                    push(
                        What::TicketOpened {
                            ticket_day: d,
                            priority: Priority::Urgent,
                            category,
                        },
                        u(42) * 0.5,
                        out,
                    );
                }
                Profile::SupportTension if (d - t.drift_day) % 4 == 1 => {
                    push(What::TicketEscalated { ticket_day: d - 1 }, u(43), out);
                }
                Profile::SupportTension if (d - t.drift_day) % 4 == 2 && u(44) < 0.5 => {
                    push(
                        What::TicketResolved {
                            ticket_day: d - 2,
                            csat: Some(1 + (u(45) * 2.0) as u8),
                        },
                        u(46),
                        out,
                    );
                }
                Profile::SupportTension
                    if (d - t.drift_day) % 4 == 3 && unit(seed, c, d - 1, 44) < 0.5 =>
                {
                    push(What::TicketReopened { ticket_day: d - 3 }, u(52), out);
                }
                Profile::NpsDetractor if d == t.drift_day => {
                    push(
                        What::Nps {
                            score: (u(47) * 5.0) as u8,
                        },
                        u(48),
                        out,
                    );
                }
                _ => {}
            }
        }
        // Regular NPS survey every 90 days for steady customers: mostly promoters/passives.
        if (d + c) % 90 == 45 && u(49) < 0.3 && !(drifted && t.profile == Profile::NpsDetractor) {
            push(
                What::Nps {
                    score: 7 + (u(50) * 4.0) as u8,
                },
                u(51),
                out,
            );
        }
    }
}

impl Iterator for History {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        loop {
            if let Some(g) = self.buffer.next() {
                return Some(g);
            }
            if self.day >= self.spec.days {
                return None;
            }
            let mut day = Vec::new();
            for c in 0..self.spec.customers {
                self.customer_day(c, self.day, &mut day);
            }
            day.sort_by_key(|g| (g.at, g.customer, g.n));
            self.buffer = day.into_iter();
            self.day += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_are_deterministic_and_time_ordered() {
        let spec = Spec {
            customers: 50,
            days: 60,
            ..Spec::default()
        };
        let a: Vec<Generated> = History::new(spec.clone()).collect();
        let b: Vec<Generated> = History::new(spec).collect();
        assert_eq!(a, b);
        assert!(a.len() > 500, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn generated_json_is_valid_contract_json_equal_to_the_event() {
        let spec = Spec {
            customers: 300,
            days: 200,
            ..Spec::default()
        };
        let limits = crate::decode::Limits::default();
        let mut kinds = std::collections::BTreeSet::new();
        for g in History::new(spec) {
            let mut line = Vec::new();
            g.write_json(&mut line).unwrap();
            let decoded = crate::decode::decode_json(&line[..line.len() - 1], &limits)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
            assert_eq!(decoded, g.to_event());
            kinds.insert(decoded.kind.type_name());
        }
        assert_eq!(kinds.len(), 9, "every contract type: {kinds:?}");
    }

    #[test]
    fn every_pattern_is_represented() {
        let spec = Spec {
            customers: 2_000,
            ..Spec::default()
        };
        let h = History::new(spec);
        let profiles: std::collections::BTreeSet<Profile> =
            h.traits().iter().map(|t| t.profile).collect();
        assert_eq!(profiles.len(), 9);
    }
}
