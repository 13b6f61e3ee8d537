//! librdkafka client configurations, built from the validated config by pure functions
//! (tested without a broker). churnsignal owns the properties its guarantees rest on;
//! the user's pass-through properties come first and cannot override them (validation
//! refuses them), so the values set last here are the ones in force.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::config::{is_secret, Config, GroupProtocol, KafkaConfig};
use crate::telemetry::events::{ClientError, Emit};

/// Consumer defaults that differ from librdkafka's (a user's properties override them).
///
/// `fetch.queue.backoff.ms`: librdkafka (2.x) stops fetching for this long whenever its
/// local queue is above `queued.min.messages`. Its default, 1000 ms, starves a consumer
/// that hands messages to worker threads instead of dropping them: measured with
/// `bench kafka`, 170k events/s at 1000 ms, 670-810k/s at 20 ms, same machine and data.
///
/// `topic.metadata.propagation.max.ms`: how long librdkafka keeps treating a topic the
/// brokers no longer know as existing, counted from when it learnt the topic's state
/// (30 s by default, meant for topics just created). The inputs exist when the service
/// starts (it checks), so the grace only delays noticing that an input topic was
/// deleted, and until then its backlog holds the others' stream time back (measured on
/// the real broker: 26 s of standstill for a topic deleted soon after the start).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("fetch.queue.backoff.ms", "20"),
    ("topic.metadata.propagation.max.ms", "1000"),
];

/// Output producer defaults that differ from librdkafka's (a user's properties override
/// them).
///
/// `linger.ms`: how long an alert waits for others to share its produce request. At
/// librdkafka's 5 ms, it was most of an alert's time in `bench kafka` at 20,000
/// events/s (the `produce` stage, p50 6 ms of an end-to-end 7 ms). Alerts are rare
/// next to events (a few hundred a second there), so larger batches buy little.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "1")];

/// Transactional producer defaults that differ from librdkafka's (a user's properties
/// override them).
///
/// `retry.backoff.ms`: right after a commit the broker answers the next transaction's
/// first request with CONCURRENT_TRANSACTIONS until the markers are written, and
/// librdkafka retries after this backoff (100 ms by default): a pause per transaction,
/// every 100 ms.
///
/// No compression (librdkafka's default): state records are compact already (lz4
/// shrinks them by 12%), and in a profile of `bench kafka` compressing them was the
/// largest single CPU cost exactly-once added, in the client and in the broker, which
/// decompresses every batch of a compacted topic to check its keys. (The benchmark's
/// end-to-end ratio does not tell the two apart beyond its run-to-run spread.)
pub const TRANSACTIONAL_DEFAULTS: &[(&str, &str)] =
    &[("retry.backoff.ms", "5"), ("retry.backoff.max.ms", "100")];

/// How often librdkafka reports statistics (positions, ends: stream-time
/// synchronization and readiness), ms.
pub const STATS_INTERVAL_MS: u32 = 500;

fn base(
    cfg: &KafkaConfig,
    specific: &crate::config::Properties,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in cfg.properties.pairs().chain(specific.pairs()) {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set_log_level(RDKafkaLogLevel::Info);
    c
}

/// The input consumer: manual commits of acknowledged progress, the range assignor (it
/// gives one instance the same partition numbers of co-partitioned topics; under the
/// classic protocol on the client, under KIP-848 on the broker), and `read_committed` so
/// that transactional producers' aborted events are never seen.
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, &cfg.consumer_properties, CONSUMER_DEFAULTS);
    match cfg.group_protocol {
        GroupProtocol::Classic => {
            c.set("group.protocol", "classic")
                .set("partition.assignment.strategy", "range");
        }
        GroupProtocol::Consumer => {
            // Validation refused the classic protocol's session and heartbeat
            // properties: under KIP-848 they are the broker's group.consumer.* settings.
            c.set("group.protocol", "consumer")
                .set("group.remote.assignor", "range");
        }
    }
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", cfg.auto_offset_reset.as_str())
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string());
    if !cfg.group_instance_id.is_empty() {
        c.set("group.instance.id", &cfg.group_instance_id);
    }
    c
}

/// Partition `p`'s transactional producer: its checkpoints (state records and input
/// offsets; with exactly-once also its alerts and dead letters) commit atomically. Its
/// `transactional.id` is fixed per partition, so the next owner of the partition fences
/// this one and aborts whatever it left open. A record not delivered within the
/// transaction timeout makes the transaction abort (and the partition rewind).
pub fn transactional_producer_config(cfg: &KafkaConfig, partition: i32) -> ClientConfig {
    let mut c = producer_config(cfg);
    c.set("transactional.id", cfg.transactional_id(partition))
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "60000");
    for (k, v) in TRANSACTIONAL_DEFAULTS {
        if !cfg.producer_properties.0.contains_key(*k) && !cfg.properties.0.contains_key(*k) {
            c.set(*k, *v);
        }
    }
    c
}

/// The consumer that reads a partition's state back from the changelog: no group,
/// committed transactions only, and an end-of-partition event to know when it is done.
pub fn restore_consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, &cfg.consumer_properties, CONSUMER_DEFAULTS);
    c.set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    c
}

/// The lag monitor's client (see the `lag` module): asks for the input partitions' ends
/// (`read_committed`: last stable offsets) and the group's committed offsets; it never
/// joins the group.
pub fn lag_monitor_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, &cfg.consumer_properties, CONSUMER_DEFAULTS);
    c.set("group.id", &cfg.group_id)
        .set("client.id", format!("{}-lag", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

/// The Slack forwarder's consumer of the alerts topic: its own group, manual commits
/// (an offset is stored once its alert is posted), `read_committed` (an exactly-once
/// service's aborted alerts are never posted). It pauses its partitions while it waits
/// to retry, and keeps polling, so the default `max.poll.interval.ms` holds.
pub fn slack_consumer_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = base(k, &k.consumer_properties, &[]);
    c.set("group.id", &cfg.slack.group_id)
        .set("client.id", format!("{}-slack", k.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", cfg.slack.auto_offset_reset.as_str())
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    c
}

/// The Slack forwarder's reader of the alerts before its starting offset (no group).
pub fn slack_reader_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = base(k, &k.consumer_properties, &[]);
    c.set("group.id", format!("{}-readback", cfg.slack.group_id))
        .set("client.id", format!("{}-slack-readback", k.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    c
}

/// The alert and dead-letter producer: idempotent, `acks=all`, retried until delivered
/// (a record is only given up at shutdown, and then its input offset is not committed).
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, &cfg.producer_properties, PRODUCER_DEFAULTS);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("partitioner", &cfg.partitioner);
    c
}

/// The properties of a client config as `key=value` lines, secrets redacted: the only
/// way churnsignal prints a client config (rdkafka's own `Debug` shows secrets).
pub fn describe(c: &ClientConfig) -> String {
    let mut pairs: Vec<(&String, &String)> = c.config_map().iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| {
            if is_secret(k) {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How an error's code is spelled in metric labels (`churnsignal_kafka_errors_total`,
/// `churnsignal_produce_errors_total`): the librdkafka code's name, `unknown` without
/// one.
pub fn error_code(e: &rdkafka::error::KafkaError) -> String {
    e.rdkafka_error_code()
        .map_or_else(|| "unknown".into(), |c| format!("{c:?}"))
}

/// Client error codes counted at zero from the start: those an operator acts on
/// (brokers unreachable, authentication and authorization, a topic gone, a fatal error).
pub fn common_client_errors() -> Vec<String> {
    use rdkafka::types::RDKafkaErrorCode::*;
    spelled(&[
        AllBrokersDown,
        BrokerTransportFailure,
        Resolve,
        Authentication,
        SaslAuthenticationFailed,
        TopicAuthorizationFailed,
        GroupAuthorizationFailed,
        UnknownTopicOrPartition,
        Fatal,
    ])
}

/// Produce error codes counted at zero from the start: why a broker refuses a record
/// for good.
pub fn common_produce_errors() -> Vec<String> {
    use rdkafka::types::RDKafkaErrorCode::*;
    spelled(&[
        MessageTimedOut,
        MessageSizeTooLarge,
        TopicAuthorizationFailed,
        UnknownTopicOrPartition,
        InvalidRecord,
        PolicyViolation,
    ])
}

/// Codes as [`error_code`] spells them.
fn spelled(codes: &[rdkafka::types::RDKafkaErrorCode]) -> Vec<String> {
    codes.iter().map(|c| format!("{c:?}")).collect()
}

/// Routes a librdkafka log line into tracing (target `librdkafka`).
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{msg}")
        }
        Warning => tracing::warn!(target: "librdkafka", facility = fac, "{msg}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility = fac, "{msg}"),
        Debug => tracing::debug!(target: "librdkafka", facility = fac, "{msg}"),
    }
}

pub(crate) fn client_error(error: KafkaError, reason: &str) {
    ClientError {
        code: error_code(&error),
        reason,
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(extra: &str) -> KafkaConfig {
        Config::from_toml(extra).unwrap().kafka
    }

    #[test]
    fn the_guarantees_are_set_and_pass_through_applies() {
        let k = cfg("[kafka]\nbrokers = \"b1:9092,b2:9092\"\ngroup_id = \"g\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n[kafka.producer_properties]\n\"linger.ms\" = 20\n[kafka.consumer_properties]\n\"fetch.max.bytes\" = 1048576\n");
        let c = consumer_config(&k);
        let p = producer_config(&k);
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("partitioner"), Some("murmur2_random"));
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("security.protocol"), Some("ssl"));
        assert_eq!(p.get("group.id"), None);
        assert_eq!(
            c.get("fetch.queue.backoff.ms"),
            Some("20"),
            "churnsignal's default"
        );
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("group.remote.assignor"), None);
        let k = cfg("[kafka]\ngroup_protocol = \"consumer\"\n");
        let c = consumer_config(&k);
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(
            c.get("group.remote.assignor"),
            Some("range"),
            "co-partitioned topics need the range assignor under KIP-848 too"
        );
        assert_eq!(
            c.get("partition.assignment.strategy"),
            None,
            "librdkafka refuses it under KIP-848"
        );
        assert_eq!(
            producer_config(&cfg("")).get("linger.ms"),
            Some("1"),
            "churnsignal's default"
        );
        let k = cfg("[kafka.consumer_properties]\n\"fetch.queue.backoff.ms\" = 100\n");
        assert_eq!(
            consumer_config(&k).get("fetch.queue.backoff.ms"),
            Some("100"),
            "a user's property overrides churnsignal's defaults"
        );
    }

    #[test]
    fn describe_redacts_secrets() {
        let k = cfg(
            "[kafka.properties]\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"p4ss-w0rd\"\n",
        );
        let d = describe(&consumer_config(&k));
        assert!(d.contains("sasl.username=svc"), "{d}");
        assert!(d.contains("sasl.password=<redacted>"), "{d}");
        assert!(!d.contains("p4ss-w0rd"), "{d}");
    }
}
