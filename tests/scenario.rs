//! A small language for engine scenarios: events in (by day), alerts out.

use std::borrow::Cow;

use churnsignal::alert::{Alert, HealthRecord};
use churnsignal::config::{Config, EngineSettings};
use churnsignal::engine::lifecycle::Status;
use churnsignal::engine::Engine;
use churnsignal::event::{Category, Event, EventKind, Priority};
use churnsignal::time::{Timestamp, DAY_MS};

/// 2026-01-05T00:00:00Z, a Monday: day 0 of every scenario.
pub const DAY0: i64 = 1_767_571_200_000;

pub fn at(day: f64) -> Timestamp {
    Timestamp(DAY0 + (day * DAY_MS as f64) as i64)
}

/// Events are queued as the test states them and applied in event-time order (ties in
/// the order stated) when time advances or alerts are looked at, as a stream would
/// deliver them.
pub struct Scenario {
    pub engine: Engine,
    pub alerts: Vec<Alert>,
    next_id: u64,
    pending: Vec<(Timestamp, u64, Event<'static>)>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    pub fn new() -> Scenario {
        Scenario::with(Config::default())
    }

    pub fn with(cfg: Config) -> Scenario {
        Scenario {
            engine: Engine::new(EngineSettings::new(&cfg).unwrap()),
            alerts: Vec::new(),
            next_id: 0,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, customer: &str, day: f64, kind: EventKind<'static>) -> String {
        self.next_id += 1;
        let id = format!("e-{}", self.next_id);
        self.send_with_id(&id, customer, day, kind);
        id
    }

    pub fn send_with_id(&mut self, id: &str, customer: &str, day: f64, kind: EventKind<'static>) {
        let e = Event {
            event_id: Cow::Owned(id.to_owned()),
            customer_id: Cow::Owned(customer.to_owned()),
            occurred_at: at(day),
            kind,
        };
        self.next_id += 1;
        self.pending.push((e.occurred_at, self.next_id, e));
    }

    /// Applies every queued event up to `until`, in event-time order.
    pub fn flush_until(&mut self, until: Timestamp) {
        self.pending.sort_by_key(|(t, seq, _)| (*t, *seq));
        let n = self.pending.partition_point(|(t, _, _)| *t <= until);
        for (_, _, e) in self.pending.drain(..n) {
            let out = self.engine.apply(&e);
            self.alerts.extend(out);
        }
    }

    /// Applies every queued event.
    pub fn flush(&mut self) {
        self.flush_until(Timestamp(i64::MAX));
    }

    pub fn order(&mut self, customer: &str, day: f64, amount: f64) -> String {
        self.order_discounted(customer, day, amount, 0.0)
    }

    pub fn order_discounted(
        &mut self,
        customer: &str,
        day: f64,
        amount: f64,
        discount_pct: f64,
    ) -> String {
        let order_id = Cow::Owned(format!("o-{customer}-{day}"));
        self.send(
            customer,
            day,
            EventKind::OrderPlaced {
                order_id,
                amount,
                discount_pct,
            },
        )
    }

    pub fn login(&mut self, customer: &str, day: f64) {
        self.send(
            customer,
            day,
            EventKind::Engagement {
                kind: Cow::Borrowed("login"),
            },
        );
    }

    pub fn nps(&mut self, customer: &str, day: f64, score: u8) {
        self.send(customer, day, EventKind::Nps { score });
    }

    pub fn ticket(
        &mut self,
        customer: &str,
        day: f64,
        ticket: &str,
        priority: Priority,
        category: Category,
    ) {
        let ticket_id = Cow::Owned(ticket.to_owned());
        self.send(
            customer,
            day,
            EventKind::TicketOpened {
                ticket_id,
                priority,
                category,
            },
        );
    }

    pub fn escalate(&mut self, customer: &str, day: f64, ticket: &str) {
        let ticket_id = Cow::Owned(ticket.to_owned());
        self.send(
            customer,
            day,
            EventKind::TicketEscalated {
                ticket_id,
                priority: Some(Priority::Urgent),
            },
        );
    }

    pub fn reopen(&mut self, customer: &str, day: f64, ticket: &str) {
        let ticket_id = Cow::Owned(ticket.to_owned());
        self.send(customer, day, EventKind::TicketReopened { ticket_id });
    }

    pub fn resolve(&mut self, customer: &str, day: f64, ticket: &str, csat: Option<u8>) {
        let ticket_id = Cow::Owned(ticket.to_owned());
        self.send(customer, day, EventKind::TicketResolved { ticket_id, csat });
    }

    /// Lets stream time pass to `day`.
    pub fn advance(&mut self, day: f64) {
        self.flush_until(at(day));
        let out = self.engine.advance_to(at(day));
        self.alerts.extend(out);
    }

    /// A customer who logs in every day from `from` to `to`: keeps stream time moving
    /// like the rest of a real population would.
    pub fn metronome(&mut self, from: u32, to: u32) {
        for d in from..to {
            self.login("metronome", f64::from(d) + 0.5);
        }
    }

    /// The alerts of one customer as (status, signals, day of `as_of`).
    pub fn story(&mut self, customer: &str) -> Vec<(Status, Vec<&'static str>, f64)> {
        self.flush();
        self.alerts
            .iter()
            .filter(|a| a.customer_id == customer)
            .map(|a| {
                (
                    a.status,
                    a.signals.iter().map(|s| s.signal.name()).collect(),
                    (a.as_of.0 - DAY0) as f64 / DAY_MS as f64,
                )
            })
            .collect()
    }

    pub fn alerts_of(&mut self, customer: &str) -> Vec<&Alert> {
        self.flush();
        self.alerts
            .iter()
            .filter(|a| a.customer_id == customer)
            .collect()
    }

    pub fn record(&mut self, customer: &str) -> HealthRecord {
        self.flush();
        self.engine.health_record(customer).expect("known customer")
    }
}
