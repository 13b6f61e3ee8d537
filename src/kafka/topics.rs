//! Creating churnsignal's topics (for the demo, benchmarks, tests and
//! `churnsignal create-topics`): the input topics co-partitioned, the outputs and the
//! compacted state changelog with the same count, existing topics left as they are.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Why topics could not be created or deleted.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The admin client could not be created (a bad property).
    #[error("admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// The request failed as a whole (brokers unreachable, timed out, ...).
    #[error("{action}: {error}")]
    Request {
        /// What was asked.
        action: &'static str,
        /// Why it failed.
        error: rdkafka::error::KafkaError,
    },
    /// The brokers refused one topic.
    #[error("{action} topic {topic}: {code}")]
    Refused {
        /// What was asked.
        action: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// The thread running the request could not be run.
    #[error("topic creation thread: {0}")]
    Thread(String),
}

/// Creates the configured topics that do not exist yet, each with `partitions`
/// partitions; returns the names created.
pub async fn create(
    cfg: &KafkaConfig,
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>, TopicsError> {
    create_with(cfg, partitions, replication, &[]).await
}

/// [`create`], with topic settings for the input topics (the benchmark's broker-set
/// timestamps).
pub async fn create_with(
    cfg: &KafkaConfig,
    partitions: i32,
    replication: i32,
    input_config: &[(&str, &str)],
) -> Result<Vec<String>, TopicsError> {
    let admin = admin(cfg)?;
    let names = cfg.topics.distinct();
    let inputs: Vec<String> = cfg.input_topics().into_iter().map(|t| t.name).collect();
    let mut new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let mut t = NewTopic::new(n, partitions, TopicReplication::Fixed(replication));
            if inputs.iter().any(|i| i == n) {
                for (k, v) in input_config {
                    t = t.set(k, v);
                }
            }
            t
        })
        .collect();
    new.push(changelog_topic(cfg, partitions, replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|error| TopicsError::Request {
            action: "create topics",
            error,
        })?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicsError::Refused {
                    action: "create",
                    topic,
                    code,
                })
            }
        }
    }
    Ok(created)
}

/// An admin client with the user's connection properties (TLS, SASL).
fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, TopicsError> {
    let mut client = rdkafka::ClientConfig::new();
    for (k, v) in cfg.properties.pairs() {
        client.set(k, v);
    }
    client.set("bootstrap.servers", &cfg.brokers);
    client.create().map_err(TopicsError::Client)
}

/// The changelog's settings: compacted (one record per customer survives), in segments
/// small enough that the cleaner keeps up, cleaned when a quarter is dirty: a restore
/// reads little more than the live state.
pub const CHANGELOG_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "67108864"),
    ("min.cleanable.dirty.ratio", "0.25"),
];

fn changelog_topic(cfg: &KafkaConfig, partitions: i32, replication: i32) -> NewTopic<'_> {
    let mut t = NewTopic::new(
        &cfg.topics.changelog,
        partitions,
        TopicReplication::Fixed(replication),
    );
    for (k, v) in CHANGELOG_CONFIG {
        t = t.set(k, v);
    }
    t
}

/// Creates the changelog if it is missing (at start of `run`), with `partitions`
/// partitions and the replication of the brokers' default (capped by the cluster size).
/// Blocking; runs the admin request on a thread of its own.
pub fn ensure_changelog(
    cfg: &KafkaConfig,
    partitions: i32,
    brokers: usize,
) -> Result<bool, TopicsError> {
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TopicsError::Thread(e.to_string()))?;
        rt.block_on(async {
            let admin = admin(&cfg)?;
            let replication = (brokers as i32).clamp(1, 3);
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let results = admin
                .create_topics(&[changelog_topic(&cfg, partitions, replication)], &opts)
                .await
                .map_err(|error| TopicsError::Request {
                    action: "create the changelog",
                    error,
                })?;
            match results.into_iter().next() {
                Some(Ok(_)) => Ok(true),
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
                Some(Err((topic, code))) => Err(TopicsError::Refused {
                    action: "create",
                    topic,
                    code,
                }),
            }
        })
    })
    .join()
    .map_err(|_| TopicsError::Thread("panicked".to_owned()))?
}

/// Deletes every topic whose name starts with `prefix` (a benchmark's own); returns
/// how many.
pub async fn delete_prefixed(cfg: &KafkaConfig, prefix: &str) -> Result<usize, TopicsError> {
    let admin = admin(cfg)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|error| TopicsError::Request {
            action: "read metadata",
            error,
        })?;
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .delete_topics(&refs, &opts)
            .await
            .map_err(|error| TopicsError::Request {
                action: "delete topics",
                error,
            })?;
    for r in results {
        if let Err((topic, code)) = r {
            return Err(TopicsError::Refused {
                action: "delete",
                topic,
                code,
            });
        }
    }
    Ok(names.len())
}
