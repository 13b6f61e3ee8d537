//! Internal events (vector's `internal_events` pattern): each error path of the service
//! is one event type whose [`Emit::emit`] writes its log line and counts its metric
//! together, so that no path logs without counting or counts without logging, and
//! whose log lines are rate-limited here, in one place (a broker outage fails thousands
//! of records a second; the counter sees each, the log one line per event type every
//! [`LOG_EVERY`], with how many were not logged since).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::counter;

use super::names;

/// At most one log line per event type this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// An internal event: logged and counted at once.
pub trait Emit {
    /// Logs (rate-limited) and counts the event.
    fn emit(self);
}

/// The rate limit of log lines: per event type, when it last logged and how many of
/// its lines were held back since.
static LIMITS: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// `Some(n)`: log now, `n` lines of this event type held back since the last one;
/// `None`: held back.
fn log_now(kind: &'static str, now: Instant) -> Option<u64> {
    let mut guard = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    match map.get_mut(kind) {
        Some((last, held)) if now.saturating_duration_since(*last) < LOG_EVERY => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            map.insert(kind, (now, 0));
            Some(0)
        }
    }
}

/// A librdkafka client error (the client retries on its own): `code` is librdkafka's
/// error code.
pub struct ClientError<'a> {
    /// librdkafka's error code.
    pub code: String,
    /// What failed.
    pub reason: &'a str,
}

impl Emit for ClientError<'_> {
    fn emit(self) {
        if let Some(held) = log_now("client_error", Instant::now()) {
            tracing::warn!(target: "librdkafka", code = %self.code, held_back = held, "{}", self.reason);
        }
        counter!(names::KAFKA_ERRORS, "code" => self.code).increment(1);
    }
}

/// A record the broker refused for good.
pub struct ProduceError<'a> {
    /// librdkafka's error code.
    pub code: String,
    /// The record's topic.
    pub topic: &'a str,
    /// The error.
    pub error: &'a dyn std::fmt::Display,
    /// It was part of a transaction (which aborts; the partition rewinds).
    pub transactional: bool,
}

impl Emit for ProduceError<'_> {
    fn emit(self) {
        if let Some(held) = log_now("produce_error", Instant::now()) {
            if self.transactional {
                tracing::warn!(error = %self.error, topic = self.topic, held_back = held, "a record of a transaction failed; the transaction aborts");
            } else {
                tracing::error!(error = %self.error, topic = self.topic, held_back = held, "the broker refused a record");
            }
        }
        counter!(names::PRODUCE_ERRORS, "code" => self.code).increment(1);
    }
}

/// A transactional API call failed; `class` is how it is handled (`retriable`: retried;
/// `abortable`: the transaction aborts and the partition rewinds; `fatal`: the
/// partition's producer is unusable).
pub struct TransactionError<'a> {
    /// `retriable`, `abortable` or `fatal`.
    pub class: &'static str,
    /// The call.
    pub what: &'a str,
    /// The error.
    pub error: &'a dyn std::fmt::Display,
}

impl Emit for TransactionError<'_> {
    fn emit(self) {
        let kind = match self.class {
            "retriable" => "transaction_retriable",
            "abortable" => "transaction_abortable",
            _ => "transaction_fatal",
        };
        if let Some(held) = log_now(kind, Instant::now()) {
            if self.class == "retriable" {
                tracing::warn!(error = %self.error, held_back = held, "{}: retrying", self.what);
            } else {
                // The operator's line is the caller's: what it does about it (rewind
                // the partition, or stop), with the partition.
                tracing::debug!(error = %self.error, class = self.class, held_back = held, "{} failed", self.what);
            }
        }
        counter!(names::TRANSACTION_ERRORS, "class" => self.class).increment(1);
    }
}

/// A partition's checkpoint transaction aborted: the partition rewinds to its last
/// commit (and gets a new producer when the old one is stuck).
pub struct CheckpointAborted<'a> {
    /// The input partition.
    pub partition: i32,
    /// Why.
    pub why: &'a str,
    /// The producer is replaced (its commit hung).
    pub new_producer: bool,
}

impl Emit for CheckpointAborted<'_> {
    fn emit(self) {
        if let Some(held) = log_now("checkpoint_aborted", Instant::now()) {
            if self.new_producer {
                tracing::error!(partition = self.partition, error = self.why, held_back = held, "checkpoint given up; replacing the partition's producer and rewinding the partition");
            } else {
                tracing::warn!(
                    partition = self.partition,
                    error = self.why,
                    held_back = held,
                    "checkpoint aborted; rewinding the partition"
                );
            }
        }
        super::checkpoint(false);
    }
}

/// The consumer left its group: the poll loop stalled past `max.poll.interval.ms`.
pub struct MaxPollExceeded;

impl Emit for MaxPollExceeded {
    fn emit(self) {
        if let Some(held) = log_now("max_poll_exceeded", Instant::now()) {
            tracing::warn!(
                held_back = held,
                "the consumer left its group: the poll loop stalled past max.poll.interval.ms"
            );
        }
        counter!(names::MAX_POLL_EXCEEDED).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_line_per_event_type_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        assert_eq!(log_now("test_a", t0), Some(0));
        assert_eq!(log_now("test_a", t0 + Duration::from_secs(1)), None);
        assert_eq!(log_now("test_a", t0 + Duration::from_secs(2)), None);
        // Another type has its own budget.
        assert_eq!(log_now("test_b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(log_now("test_a", t0 + LOG_EVERY), Some(2));
        assert_eq!(log_now("test_a", t0 + LOG_EVERY * 2), Some(0));
    }
}
