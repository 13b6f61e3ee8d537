//! Creating churnsignal's topics (for the demo, benchmarks, tests and
//! `churnsignal create-topics`): the input topics co-partitioned, the outputs with the
//! same count, existing topics left as they are.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Creates the configured topics that do not exist yet, each with `partitions`
/// partitions; returns the names created.
pub async fn create(
    cfg: &KafkaConfig,
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>, String> {
    let mut client = rdkafka::ClientConfig::new();
    for (k, v) in cfg.properties.pairs() {
        client.set(k, v);
    }
    client.set("bootstrap.servers", &cfg.brokers);
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("admin client: {e}"))?;
    let names = cfg.topics.distinct();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| format!("create topics: {e}"))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("create topic {name}: {code}")),
        }
    }
    Ok(created)
}
