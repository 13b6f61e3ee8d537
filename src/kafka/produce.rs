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
use crate::decode::{decode_json, Limits};
use crate::event::Family;

/// What a run produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Events produced, by topic.
    pub by_topic: BTreeMap<String, u64>,
    /// Lines that are not contract events (skipped).
    pub invalid: u64,
    /// The first few invalid lines: (line number, reason).
    pub first_invalid: Vec<(u64, String)>,
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

/// Produces every valid line of `input`; returns once all are acknowledged (an error
/// if the broker refused any).
pub fn produce(cfg: &Config, input: impl BufRead) -> Result<Produced, String> {
    let producer: ThreadedProducer<Refusals> = crate::kafka::client::producer_config(&cfg.kafka)
        .set("linger.ms", "20")
        .create_with_context(Refusals::default())
        .map_err(|e| format!("producer: {e}"))?;
    let t = &cfg.kafka.topics;
    let limits = Limits {
        max_event_bytes: cfg.input.max_event_bytes,
        ..Limits::default()
    };
    let mut out = Produced::default();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("reading line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match decode_json(line.as_bytes(), &limits) {
            Ok(e) => e,
            Err(e) => {
                out.invalid += 1;
                if out.first_invalid.len() < 5 {
                    out.first_invalid.push((i as u64 + 1, e.to_string()));
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
            .payload(line.as_bytes())
            .headers(headers);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(format!("line {}: {e}", i + 1)),
            }
        }
        *out.by_topic.entry(topic.clone()).or_default() += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("flush: {e}"))?;
    let refused = producer.context().count.load(Ordering::Relaxed);
    if refused > 0 {
        let first = producer.context().first.lock().ok().and_then(|f| f.clone());
        return Err(format!(
            "the broker refused {refused} events (first: {})",
            first.unwrap_or_default()
        ));
    }
    Ok(out)
}
