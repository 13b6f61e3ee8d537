//! A partition's transactional producer over librdkafka: the [`TxnProducer`] the
//! worker runs its transaction lifecycle (see [`super::txn`]) with. Transactional API
//! errors are handled by class, as librdkafka documents them: retriable ones are
//! retried, abortable and fatal ones returned.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics::Counter;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::txn::{Commit, TxnFailure, TxnProducer};
use crate::config::Config;
use crate::kafka::client::transactional_producer_config;
use crate::kafka::producer::{send, Delivery, Out, ProducerCtx};
use crate::kafka::records::OutRecord;
use crate::kafka::status::{Failure, Status};
use crate::telemetry::events::{Emit, TransactionError};

/// An exactly-once output: the record, whether it is a dead letter, its delivery.
pub(super) type Output = (OutRecord, bool, Delivery);

/// Partition `partition`'s transactional producer (`transactional.id`
/// `<prefix>-state-<p>`), with what a send needs for back-pressure.
pub(super) struct KafkaTxn {
    producer: ThreadedProducer<ProducerCtx>,
    partition: i32,
    status: Arc<Status>,
    /// The worker's id (its liveness beat while waiting).
    id: usize,
    queue_full: Counter,
    alerts: Arc<str>,
    dead_letters: Arc<str>,
}

impl KafkaTxn {
    /// Creates the partition's producer and initialises its transactions, which fences
    /// the previous owner and aborts what it left open.
    pub fn create(
        cfg: &Config,
        partition: i32,
        status: &Arc<Status>,
        id: usize,
        queue_full: &Counter,
    ) -> Result<KafkaTxn, TxnFailure> {
        let pcfg = transactional_producer_config(&cfg.kafka, partition);
        let producer: ThreadedProducer<ProducerCtx> = pcfg
            .create_with_context(ProducerCtx::transactional(status.clone()))
            .map_err(|e| TxnFailure::Fatal(format!("transactional producer: {e}")))?;
        let timeout = Duration::from_secs(cfg.kafka.startup_timeout_secs);
        txn_call(status, id, "init_transactions", || {
            producer.init_transactions(timeout)
        })?;
        Ok(KafkaTxn {
            producer,
            partition,
            status: status.clone(),
            id,
            queue_full: queue_full.clone(),
            alerts: cfg.kafka.topics.alerts.as_str().into(),
            dead_letters: cfg.kafka.topics.dead_letters.as_str().into(),
        })
    }

    /// Sends one of the checkpoint's own records (state, journal) into the open
    /// transaction.
    pub fn send_out(&self, out: Out<'_>, delivery: Arc<Delivery>) -> Result<(), Failure> {
        send(
            &self.producer,
            &self.status,
            &self.queue_full,
            self.id,
            out,
            delivery,
        )
    }
}

impl TxnProducer for KafkaTxn {
    type Record = Output;
    type Commit = JoinHandle<Result<(), TxnFailure>>;

    fn begin(&self) -> Result<(), TxnFailure> {
        txn_call(&self.status, self.id, "begin_transaction", || {
            self.producer.begin_transaction()
        })
    }

    fn send(&self, (rec, dead, delivery): Output) -> Result<(), String> {
        let topic = if dead {
            &self.dead_letters
        } else {
            &self.alerts
        };
        self.send_out(Out::record(topic, &rec), Arc::new(delivery))
            .map_err(|e| e.to_string())
    }

    fn commit(&self, offsets: Vec<(String, i64)>) -> Result<Self::Commit, TxnFailure> {
        let group = self
            .status
            .group()
            .ok_or_else(|| TxnFailure::Abortable("no group metadata".into()))?;
        let mut list = TopicPartitionList::new();
        for (topic, next) in &offsets {
            let _ = list.add_partition_offset(topic, self.partition, Offset::Offset(*next));
        }
        let (status, id, producer) = (self.status.clone(), self.id, self.producer.clone());
        std::thread::Builder::new()
            .name(format!("churnsignal-commit-{}", self.partition))
            .spawn(move || {
                let timeout = Duration::from_secs(30);
                if list.count() > 0 {
                    txn_call(&status, id, "send_offsets_to_transaction", || {
                        producer.send_offsets_to_transaction(&list, &group, timeout)
                    })?;
                }
                // Delivered before the commit: rdkafka's commit_transaction flushes
                // first, and its flush polls in 100 ms steps (a fixed 100 ms per
                // transaction); the producer's own thread serves delivery reports as
                // they come.
                while producer.in_flight_count() > 0 {
                    if status.abandon_sends() {
                        return Err(TxnFailure::Abandoned);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                txn_call(&status, id, "commit_transaction", || {
                    producer.commit_transaction(timeout)
                })
            })
            .map_err(|e| TxnFailure::Fatal(format!("checkpoint thread: {e}")))
    }

    fn abort(&self, patient: bool) -> Result<(), TxnFailure> {
        if !patient {
            let _ = self.producer.abort_transaction(Duration::from_secs(5));
            return Ok(());
        }
        txn_call(&self.status, self.id, "abort_transaction", || {
            self.producer.abort_transaction(Duration::from_secs(30))
        })
    }
}

impl Commit for JoinHandle<Result<(), TxnFailure>> {
    fn is_finished(&self) -> bool {
        JoinHandle::is_finished(self)
    }

    fn wait(
        self,
        limit: Duration,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Result<(), TxnFailure>, Self> {
        let deadline = Instant::now() + limit;
        while !JoinHandle::is_finished(&self) {
            if Instant::now() >= deadline || !keep_waiting() {
                return Err(self);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(self
            .join()
            .unwrap_or_else(|_| Err(TxnFailure::Fatal("checkpoint thread panicked".into()))))
    }
}

/// Runs a transactional API call: retriable errors are retried (until shutdown gives
/// up), abortable and fatal ones are returned by class.
pub(super) fn txn_call<T>(
    status: &Status,
    id: usize,
    what: &str,
    mut f: impl FnMut() -> KafkaResult<T>,
) -> Result<T, TxnFailure> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(KafkaError::Transaction(e)) => {
                let (class, failure) = if e.is_fatal() {
                    ("fatal", Some(TxnFailure::Fatal(format!("{what}: {e}"))))
                } else if e.txn_requires_abort() || !e.is_retriable() {
                    (
                        "abortable",
                        Some(TxnFailure::Abortable(format!("{what}: {e}"))),
                    )
                } else {
                    ("retriable", None)
                };
                TransactionError {
                    class,
                    what,
                    error: &e,
                }
                .emit();
                if let Some(f) = failure {
                    return Err(f);
                }
            }
            Err(e) => {
                TransactionError {
                    class: "abortable",
                    what,
                    error: &e,
                }
                .emit();
                return Err(TxnFailure::Abortable(format!("{what}: {e}")));
            }
        }
        if status.abandon_sends() {
            return Err(TxnFailure::Abandoned);
        }
        status.beat(1 + id);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
