//! The restore phase of `bench kafka`: a changelog partition holding the records of
//! many customers read back into an engine, as a newly assigned partition is.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};

use super::{producer, send_record, BenchError};
use crate::config::Config;
use crate::time::{Timestamp, DAY_MS};

/// What the restore phase measured.
pub(super) struct RestoreFigures {
    pub records: u64,
    pub bytes: u64,
    pub customers: usize,
    pub secs: f64,
    /// Resident bytes the restored engine added.
    pub held_rss: u64,
    /// Resident bytes at the peak of the restore, above the start.
    pub peak_rss: u64,
}

/// Writes the state of `customers` customers (16 weekly orders each, from an engine) to
/// partition 0 of a fresh changelog, then times reading it back into an engine, and
/// the memory that takes.
pub(super) fn restore_phase(cfg: &Config, customers: u32) -> Result<RestoreFigures, BenchError> {
    use crate::engine::Engine;
    use crate::event::{Event, EventKind};
    use std::borrow::Cow;
    let mut cfg = cfg.clone();
    cfg.kafka.topics.changelog = format!("{}-restore", cfg.kafka.topics.changelog);
    let settings = crate::config::EngineSettings::new(&cfg)?;
    let mut engine = Engine::new(settings.clone());
    engine.reserve(customers as usize);
    let day0 = 1_767_571_200_000i64;
    let mut out = Vec::new();
    let mut batch = Vec::with_capacity(4096);
    // Each customer orders once a week for 16 weeks (a discount on two orders in
    // three): every bucket of the ring in use, records about the size of the active
    // customers of the throughput phase (about 220 bytes).
    for week in 0..16i64 {
        for i in 0..customers {
            let id = format!("cust-{i:08}");
            let order = format!("o{i}-{week}");
            batch.push(Event {
                event_id: Cow::Owned(order.clone()),
                customer_id: Cow::Owned(id),
                occurred_at: Timestamp(day0 + week * 7 * DAY_MS + i64::from(i) * 10),
                kind: EventKind::OrderPlaced {
                    order_id: Cow::Owned(order),
                    amount: 10.37 + f64::from(i % 1000),
                    discount_pct: f64::from(i % 3) * 5.0,
                },
            });
            if batch.len() == 4096 {
                engine.apply_batch(&batch, &mut out);
                batch.clear();
                out.clear();
            }
        }
    }
    engine.apply_batch(&batch, &mut out);
    let prod = producer(&cfg.kafka.brokers, 20)?;
    let topic = cfg.kafka.topics.changelog.clone();
    crate::kafka::topics::ensure_changelog(&cfg.kafka, 1, 1)?;
    let mut bytes = 0u64;
    let mut rec = Vec::with_capacity(512);
    engine.take_changed(|id, c| {
        rec.clear();
        c.encode(&mut rec);
        bytes += (rec.len() + id.len()) as u64;
        send_record(
            &prod,
            BaseRecord::to(&topic)
                .key(id)
                .payload(&rec[..])
                .partition(0),
        );
    });
    rec.clear();
    crate::kafka::changelog::encode_partition_record(&[], &engine, &mut rec);
    let r = BaseRecord::to(&topic)
        .key(crate::kafka::changelog::ENGINE_KEY)
        .payload(&rec[..])
        .partition(0);
    send_record(&prod, r);
    prod.flush(Duration::from_secs(300))
        .map_err(|error| BenchError::Client {
            what: "flush",
            error,
        })?;
    drop(engine);
    drop(prod);
    eprintln!("bench kafka: changelog of {customers} customers written; restoring");
    let before = crate::bench::rss_bytes();
    crate::bench::reset_peak_rss();
    let restored = crate::kafka::changelog::restore(&cfg.kafka, &settings, 0, || true)?;
    let peak = crate::bench::peak_rss_bytes();
    let after = crate::bench::rss_bytes();
    Ok(RestoreFigures {
        records: restored.records,
        bytes,
        customers: restored.engine.customers(),
        secs: restored.elapsed.as_secs_f64(),
        held_rss: after.saturating_sub(before),
        peak_rss: peak.saturating_sub(before),
    })
}
