//! Sending outputs: the delivery bookkeeping of each record, the producers' context
//! (acknowledgements, event-to-alert latency) and a send that waits while the queue is full.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::Message;

use crate::kafka::client::{client_error, log};
use crate::kafka::offsets::PartitionProgress;
use crate::kafka::records::OutRecord;
use crate::kafka::status::{Failure, Status};
use crate::kafka::trace::Trace;
use crate::telemetry::events::{Emit, ProduceError};
use crate::telemetry::{self};
use crate::time::Timestamp;

/// Delivery bookkeeping of one produced record.
pub(crate) struct Delivery {
    pub progress: Option<Arc<Mutex<PartitionProgress>>>,
    /// At-least-once: the partition's count of unacknowledged outputs.
    pub pending: Option<Arc<AtomicI64>>,
    pub offset: i64,
    /// Where the alert's time went (see [`crate::kafka::trace`]).
    pub trace: Trace,
    pub alert: bool,
}

impl Delivery {
    /// A record whose delivery nothing waits for one by one (state records: their
    /// transaction's commit waits for all of them). One is shared by all.
    pub fn untracked() -> Delivery {
        Delivery {
            progress: None,
            pending: None,
            offset: -1,
            trace: Trace::default(),
            alert: false,
        }
    }
}

/// The producer's context: acknowledges delivered records, routes logs.
pub(crate) struct ProducerCtx {
    pub(crate) status: Arc<Status>,
    /// A partition's transactional producer: a failed record fails its transaction,
    /// which the worker handles; it does not stop the service by itself.
    pub(crate) transactional: bool,
}

impl ProducerCtx {
    /// The context of a partition's transactional producer.
    pub fn transactional(status: Arc<Status>) -> ProducerCtx {
        ProducerCtx {
            status,
            transactional: true,
        }
    }
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Arc<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Arc<Delivery>) {
        self.settle(result);
        if let Some(p) = &d.pending {
            // Refused records count as settled too, after the failure is recorded: a
            // checkpoint never commits past a failure.
            p.fetch_sub(1, Ordering::AcqRel);
        }
        self.acknowledge(result, &d);
    }
}

impl ProducerCtx {
    pub(crate) fn settle(&self, result: &DeliveryResult<'_>) {
        if let Err((e, msg)) = result {
            let code = crate::kafka::client::error_code(e);
            let purged = matches!(
                e,
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                )
            );
            if self.transactional && purged {
                // Purged by the abort of its transaction: that abort was logged, with
                // its cause, and not once per record.
                return;
            }
            ProduceError {
                code,
                topic: msg.topic(),
                error: e,
                transactional: self.transactional,
            }
            .emit();
            if !self.transactional && !self.status.stopping.load(Ordering::Relaxed) {
                self.status.fail(Failure::RecordRefused {
                    topic: msg.topic().to_owned(),
                    error: e.to_string(),
                });
            }
        }
    }

    pub(crate) fn acknowledge(&self, result: &DeliveryResult<'_>, d: &Delivery) {
        if result.is_err() {
            return;
        }
        if let Some(p) = &d.progress {
            if let Err(e) = p.lock().expect("progress lock").acked(d.offset) {
                tracing::error!(error = %e, "offset tracking");
            }
        }
        if d.alert || d.offset >= 0 {
            self.status.acked.fetch_add(1, Ordering::Relaxed);
        }
        if !d.alert {
            return;
        }
        let now = wall_now().0;
        if let Some(stages) = d.trace.stages(now) {
            let ms = (now - d.trace.produced).max(0);
            telemetry::event_to_alert_latency(ms as f64 / 1000.0);
            telemetry::alert_latency_stages(&stages);
            if let Some(l) = &self.status.latencies {
                l.lock().expect("latency lock").push((ms, stages));
            }
        }
    }
}

/// One record to send.
pub(crate) struct Out<'a> {
    pub(crate) topic: &'a str,
    /// An explicit partition (the changelog's is the input's); `None`: by key.
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) headers: &'a [(String, Vec<u8>)],
}

impl<'a> Out<'a> {
    /// An alert or dead letter to `topic`, partitioned by its key.
    pub(crate) fn record(topic: &'a str, rec: &'a OutRecord) -> Out<'a> {
        Out {
            topic,
            partition: None,
            key: rec.key.as_deref(),
            payload: Some(&rec.payload),
            headers: &rec.headers,
        }
    }
}

/// Sends one record, waiting while the producer queue is full (back-pressure). At
/// shutdown past the deadline the record is abandoned (its input offset is then never
/// committed, so it is produced again after restart). A send refused for another
/// reason is returned.
pub(crate) fn send<
    C: ClientContext + rdkafka::producer::ProducerContext<DeliveryOpaque = Arc<Delivery>>,
>(
    producer: &ThreadedProducer<C>,
    status: &Status,
    queue_full: &Counter,
    id: usize,
    out: Out<'_>,
    delivery: Arc<Delivery>,
) -> Result<(), Failure> {
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Delivery>> =
        BaseRecord::with_opaque_to(out.topic, delivery);
    // State records have none: no header list to allocate and free for each.
    if !out.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (k, v) in out.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        record = record.headers(headers);
    }
    if let Some(p) = out.payload {
        record = record.payload(p);
    }
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) => {
                if !matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) {
                    if let Some(p) = &back.delivery_opaque.pending {
                        p.fetch_sub(1, Ordering::AcqRel);
                    }
                    return Err(Failure::RecordRefused {
                        topic: out.topic.to_owned(),
                        error: e.to_string(),
                    });
                }
                if status.abandon_sends() {
                    return Ok(());
                }
                queue_full.increment(1);
                status.beat(1 + id);
                std::thread::sleep(Duration::from_millis(5));
                record = back;
            }
        }
    }
}

pub(crate) fn wall_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}
