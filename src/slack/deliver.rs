//! One thread per webhook, posting the alerts routed to it in the order they were
//! read: a webhook that fails holds back its own alerts only.
//!
//! A post is retried until Slack accepts it (429 after its `Retry-After`, 5xx and
//! network errors after a back-off, a refusal at the longest back-off). It is given up
//! only when the forwarder stops or the alert's partition is no longer this
//! forwarder's ([`Owned`]); the alert's offset is then not committed, and whoever reads
//! the partition next posts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::message::{self, AlertView};
use super::post::{self, Client, Outcome, Webhook};
use crate::telemetry;

/// The partitions this forwarder reads, each with the number of its current
/// assignment: an alert read under an earlier one belongs to a reader that is gone.
#[derive(Debug, Default)]
pub struct Owned(RwLock<HashMap<i32, u64>>);

impl Owned {
    /// Partition `p` is ours, under assignment `epoch`.
    pub fn insert(&self, p: i32, epoch: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, epoch);
    }

    /// Partition `p` is no longer ours.
    pub fn remove(&self, p: i32) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(&p);
    }

    /// Partition `p`'s current assignment.
    pub fn epoch(&self, p: i32) -> Option<u64> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .copied()
    }

    /// Whether an alert read from `p` under `epoch` is still ours to post.
    pub fn current(&self, p: i32, epoch: u64) -> bool {
        self.epoch(p) == Some(epoch)
    }
}

/// An alert for a webhook.
pub struct Job {
    /// Where it was read.
    pub partition: i32,
    /// Under which assignment.
    pub epoch: u64,
    /// Its offset.
    pub offset: i64,
    /// The alert.
    pub alert: AlertView,
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The webhook's index.
    pub webhook: usize,
    /// The job's partition.
    pub partition: i32,
    /// The job's assignment.
    pub epoch: u64,
    /// The job's offset.
    pub offset: i64,
    /// Slack accepted it; else it was given up (stopping, or the partition moved).
    pub posted: bool,
}

/// Retry settings.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First back-off.
    pub initial: Duration,
    /// Longest back-off.
    pub max: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
}

/// A webhook's thread.
pub struct Poster {
    /// Index of the webhook (in `Done`).
    pub index: usize,
    /// The webhook.
    pub hook: Webhook,
    /// The HTTP client (shared).
    pub client: Client,
    /// Retry settings.
    pub retry: Retry,
    /// The partitions still ours.
    pub owned: Arc<Owned>,
    /// Set when the forwarder stops.
    pub stop: Arc<AtomicBool>,
}

impl Poster {
    /// Starts the thread; it ends when the job sender is dropped.
    pub fn spawn(self, jobs: Receiver<Job>, done: Sender<Done>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("slack-{}", self.hook.name()))
            .spawn(move || {
                for job in jobs {
                    let posted = !self.stop.load(Ordering::Relaxed)
                        && self.owned.current(job.partition, job.epoch)
                        && self.deliver(&job);
                    let _ = done.send(Done {
                        webhook: self.index,
                        partition: job.partition,
                        epoch: job.epoch,
                        offset: job.offset,
                        posted,
                    });
                }
            })
    }

    /// Posts until accepted; false when given up.
    fn deliver(&self, job: &Job) -> bool {
        let name = self.hook.name();
        let alert = &job.alert;
        let mut backoff = post::Backoff::new(self.retry.initial, self.retry.max);
        let mut body = message::block_kit(alert);
        let mut text_only = false;
        loop {
            let outcome = self.client.post(&self.hook, &body);
            telemetry::slack_post(name, outcome.label());
            let wait = match &outcome {
                Outcome::Accepted => {
                    tracing::info!(
                        alert_id = %alert.alert_id,
                        sequence = alert.sequence,
                        status = %alert.status,
                        webhook = %name,
                        "posted to slack"
                    );
                    return true;
                }
                Outcome::RateLimited { retry_after } => retry_after
                    .map(|d| d.min(self.retry.retry_after_max))
                    .unwrap_or_else(|| backoff.next_wait()),
                Outcome::ServerError { .. } | Outcome::Network { .. } => backoff.next_wait(),
                Outcome::Rejected { body: reason, .. } => {
                    if !text_only && post::is_payload_error(reason) {
                        tracing::warn!(webhook = %name, reason = %reason, alert_id = %alert.alert_id,
                            "slack refused the blocks; posting the text alone");
                        body = message::text_only(alert);
                        text_only = true;
                        continue;
                    }
                    backoff.max()
                }
            };
            if matches!(outcome, Outcome::Rejected { .. }) {
                tracing::error!(webhook = %name, outcome = %outcome, retry_in_ms = wait.as_millis() as u64,
                    "slack refused the post; the alert is kept and retried (check the webhook)");
            } else {
                tracing::warn!(webhook = %name, outcome = %outcome, retry_in_ms = wait.as_millis() as u64,
                    "slack post failed; retrying");
            }
            if !self.wait(wait, job) {
                return false;
            }
        }
    }

    /// Waits before a retry. False when stopping or when the job's partition moved.
    fn wait(&self, d: Duration, job: &Job) -> bool {
        let name = self.hook.name();
        telemetry::slack_retrying(name, true);
        let until = Instant::now() + d;
        let keep = loop {
            if self.stop.load(Ordering::Relaxed) {
                break false;
            }
            if !self.owned.current(job.partition, job.epoch) {
                tracing::info!(
                    partition = job.partition,
                    webhook = %name,
                    "partition revoked while retrying; its next owner posts the alert"
                );
                break false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        };
        telemetry::slack_retrying(name, false);
        keep
    }
}
