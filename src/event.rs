//! Domain events: what the engine consumes. Decoding (JSON, protobuf) produces these and
//! nothing of serde or prost leaks past it. Strings borrow from the input where they can.

use std::borrow::Cow;

use crate::time::Timestamp;

/// One validated contract-v1 event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Unique per event; the idempotency key.
    pub event_id: Cow<'a, str>,
    /// The customer (account) the event belongs to.
    pub customer_id: Cow<'a, str>,
    /// Event time.
    pub occurred_at: Timestamp,
    /// What happened.
    pub kind: EventKind<'a>,
}

impl Event<'_> {
    /// Copies borrowed strings so the event outlives its input buffer.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            customer_id: Cow::Owned(self.customer_id.into_owned()),
            occurred_at: self.occurred_at,
            kind: self.kind.into_owned(),
        }
    }
}

/// Ticket priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `low`
    Low,
    /// `normal` (default)
    Normal,
    /// `high`
    High,
    /// `urgent`
    Urgent,
}

impl Priority {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// Parses the contract spelling.
    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s {
            "low" => Priority::Low,
            "normal" => Priority::Normal,
            "high" => Priority::High,
            "urgent" => Priority::Urgent,
            _ => return None,
        })
    }
}

/// Ticket category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `billing`
    Billing,
    /// `technical`
    Technical,
    /// `discount_request`: a discount request.
    DiscountRequest,
    /// `cancellation`
    Cancellation,
    /// `complaint`
    Complaint,
    /// `other` (default)
    Other,
}

impl Category {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Billing => "billing",
            Category::Technical => "technical",
            Category::DiscountRequest => "discount_request",
            Category::Cancellation => "cancellation",
            Category::Complaint => "complaint",
            Category::Other => "other",
        }
    }

    /// Parses the contract spelling.
    pub fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "billing" => Category::Billing,
            "technical" => Category::Technical,
            "discount_request" => Category::DiscountRequest,
            "cancellation" => Category::Cancellation,
            "complaint" => Category::Complaint,
            "other" => Category::Other,
            _ => return None,
        })
    }
}

/// The event types of contract v1 with their payloads.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind<'a> {
    /// `order.placed`
    OrderPlaced {
        /// Order id.
        order_id: Cow<'a, str>,
        /// Order value in `currency` units, >= 0.
        amount: f64,
        /// Discount granted on this order, 0..=100.
        discount_pct: f64,
    },
    /// `order.cancelled`
    OrderCancelled {
        /// Order id.
        order_id: Cow<'a, str>,
        /// Value withdrawn, if known.
        amount: Option<f64>,
    },
    /// `order.refunded`
    OrderRefunded {
        /// Order id.
        order_id: Cow<'a, str>,
        /// Value refunded.
        amount: f64,
    },
    /// `ticket.opened`
    TicketOpened {
        /// Ticket id.
        ticket_id: Cow<'a, str>,
        /// Priority (default normal).
        priority: Priority,
        /// Category (default other).
        category: Category,
    },
    /// `ticket.escalated`
    TicketEscalated {
        /// Ticket id.
        ticket_id: Cow<'a, str>,
        /// New priority, if given.
        priority: Option<Priority>,
    },
    /// `ticket.reopened`
    TicketReopened {
        /// Ticket id.
        ticket_id: Cow<'a, str>,
    },
    /// `ticket.resolved`
    TicketResolved {
        /// Ticket id.
        ticket_id: Cow<'a, str>,
        /// Satisfaction 1..=5, if given.
        csat: Option<u8>,
    },
    /// `engagement.<kind>` other than `engagement.nps`.
    Engagement {
        /// The `<kind>` word (`login`, `feature_used`, ...).
        kind: Cow<'a, str>,
    },
    /// `engagement.nps`
    Nps {
        /// Score 0..=10.
        score: u8,
    },
}

impl EventKind<'_> {
    fn into_owned(self) -> EventKind<'static> {
        fn o(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        match self {
            EventKind::OrderPlaced {
                order_id,
                amount,
                discount_pct,
            } => EventKind::OrderPlaced {
                order_id: o(order_id),
                amount,
                discount_pct,
            },
            EventKind::OrderCancelled { order_id, amount } => EventKind::OrderCancelled {
                order_id: o(order_id),
                amount,
            },
            EventKind::OrderRefunded { order_id, amount } => EventKind::OrderRefunded {
                order_id: o(order_id),
                amount,
            },
            EventKind::TicketOpened {
                ticket_id,
                priority,
                category,
            } => EventKind::TicketOpened {
                ticket_id: o(ticket_id),
                priority,
                category,
            },
            EventKind::TicketEscalated {
                ticket_id,
                priority,
            } => EventKind::TicketEscalated {
                ticket_id: o(ticket_id),
                priority,
            },
            EventKind::TicketReopened { ticket_id } => EventKind::TicketReopened {
                ticket_id: o(ticket_id),
            },
            EventKind::TicketResolved { ticket_id, csat } => EventKind::TicketResolved {
                ticket_id: o(ticket_id),
                csat,
            },
            EventKind::Engagement { kind } => EventKind::Engagement { kind: o(kind) },
            EventKind::Nps { score } => EventKind::Nps { score },
        }
    }

    /// The Kafka input topic family this type belongs to.
    pub fn family(&self) -> Family {
        match self {
            EventKind::OrderPlaced { .. }
            | EventKind::OrderCancelled { .. }
            | EventKind::OrderRefunded { .. } => Family::Orders,
            EventKind::TicketOpened { .. }
            | EventKind::TicketEscalated { .. }
            | EventKind::TicketReopened { .. }
            | EventKind::TicketResolved { .. } => Family::SupportTickets,
            EventKind::Engagement { .. } | EventKind::Nps { .. } => Family::Engagement,
        }
    }

    /// The contract `type` string (for `engagement.<kind>` the kind is appended by the caller).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::OrderPlaced { .. } => "order.placed",
            EventKind::OrderCancelled { .. } => "order.cancelled",
            EventKind::OrderRefunded { .. } => "order.refunded",
            EventKind::TicketOpened { .. } => "ticket.opened",
            EventKind::TicketEscalated { .. } => "ticket.escalated",
            EventKind::TicketReopened { .. } => "ticket.reopened",
            EventKind::TicketResolved { .. } => "ticket.resolved",
            EventKind::Engagement { .. } => "engagement",
            EventKind::Nps { .. } => "engagement.nps",
        }
    }
}

/// The three input families (one Kafka topic each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `orders`
    Orders,
    /// `support-tickets`
    SupportTickets,
    /// `engagement`
    Engagement,
}
