//! `churnsignal produce`: loads contract events (JSON Lines, as `generate` writes and
//! `replay` reads) into the configured input topics, each to its family's topic, keyed
//! by `customer_id` (so that a customer's events meet in one partition), with the
//! service's producer settings (idempotent, `acks=all`, its partitioner). For feeding a
//! local stack, backfills, and sending fixed dead letters back.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::decode::lines::Lines;
use crate::decode::Limits;
use crate::event::Family;

/// What a run produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Events produced, by topic.
    pub by_topic: BTreeMap<String, u64>,
    /// Lines that are not contract events (skipped).
    pub invalid: u64,
    /// Lines read (the number of the last one).
    pub lines_read: u64,
    /// The first few invalid lines: (line number, reason).
    pub first_invalid: Vec<(u64, String)>,
    /// Why the run stopped early or failed, if it did: what is counted above was
    /// delivered all the same (the producer is flushed before any error is returned).
    pub error: Option<String>,
}

/// Counts the records the broker refused for good.
#[derive(Default)]
struct Refusals {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for Refusals {}

impl ProducerContext for Refusals {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.count.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = self.first.lock() {
                f.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Produces every valid line of `input` and waits until all are acknowledged. An
/// invalid line (not an event, not UTF-8, longer than `input.max_event_bytes`) is
/// counted and skipped; a read error stops reading. Either way, everything queued before
/// is delivered before this returns, and [`Produced::error`] says what went wrong.
pub fn produce(cfg: &Config, input: impl BufRead) -> Produced {
    let mut out = Produced::default();
    let producer: ThreadedProducer<Refusals> =
        match crate::kafka::client::producer_config(&cfg.kafka)
            .set("linger.ms", "20")
            .create_with_context(Refusals::default())
        {
            Ok(p) => p,
            Err(e) => {
                out.error = Some(format!("producer: {e}"));
                return out;
            }
        };
    let t = &cfg.kafka.topics;
    let limits = Limits::from_input(&cfg.input, None);
    for line in Lines::new(input, limits.max_event_bytes) {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                out.error = Some(format!(
                    "reading stopped after line {}: {e}",
                    out.lines_read
                ));
                break;
            }
        };
        out.lines_read = line.number;
        if line.is_blank() {
            continue;
        }
        let event = match line.decode(&limits) {
            Ok(e) => e,
            Err(e) => {
                out.invalid += 1;
                if out.first_invalid.len() < 5 {
                    out.first_invalid.push((line.number, e.to_string()));
                }
                continue;
            }
        };
        let topic = match event.kind.family() {
            Family::Orders => &t.orders,
            Family::SupportTickets => &t.support_tickets,
            Family::Engagement => &t.engagement,
        };
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        let mut rec = BaseRecord::to(topic)
            .key(event.customer_id.as_bytes())
            .payload(&line.bytes[..])
            .headers(headers);
        let sent = loop {
            match producer.send(rec) {
                Ok(()) => break Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => break Err(format!("line {}: {e}", line.number)),
            }
        };
        if let Err(e) = sent {
            out.error = Some(e);
            break;
        }
        *out.by_topic.entry(topic.clone()).or_default() += 1;
    }
    if let Err(e) = producer.flush(Duration::from_secs(120)) {
        out.error.get_or_insert(format!("flush: {e}"));
    }
    let refused = producer.context().count.load(Ordering::Relaxed);
    if refused > 0 {
        let first = producer.context().first.lock().ok().and_then(|f| f.clone());
        out.error = Some(format!(
            "the broker refused {refused} events (first: {})",
            first.unwrap_or_default()
        ));
    }
    out
}
