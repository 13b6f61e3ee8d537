//! `[kafka]` and `[log]`: the live service's settings, validated like the engine's.
//! librdkafka properties pass through `properties.rs`.

use serde::Deserialize;

use super::{check_range, invalid, ConfigError, Properties};
use crate::event::Family;
use crate::vocab::AlertFormat;
use crate::vocab::Encoding;

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// `client.id` of the consumer and the producer.
    pub client_id: String,
    /// Topic names.
    pub topics: TopicsConfig,
    /// How each input topic's messages are encoded.
    pub encoding: EncodingConfig,
    /// `json` or `protobuf`.
    pub alerts_format: AlertFormat,
    /// Where a partition without a committed offset starts.
    pub auto_offset_reset: OffsetReset,
    /// librdkafka `partitioner` of the alert and dead-letter producer.
    pub partitioner: String,
    /// Worker threads running partition engines; 0 = one per core.
    pub workers: usize,
    /// How often a partition's changed customer records are written (with, at least
    /// once, its acknowledged progress committed), ms.
    pub commit_interval_ms: u64,
    /// Events handed to one worker and not yet processed, at most.
    pub worker_queue_events: usize,
    /// After this long without events, a partition's stream time runs on the wall clock.
    pub idle_timeout_secs: u64,
    /// How long a caught-up input topic with nothing buffered holds a partition's stream
    /// time back before it counts as idle, ms (Kafka Streams' `max.task.idle.ms`). An
    /// input with unconsumed messages holds it back however long it takes.
    pub max_task_idle_ms: u64,
    /// `/readyz` is true while the consumer lag of every partition is at most this.
    pub ready_max_lag: i64,
    /// Longest wait for broker metadata at start, seconds.
    pub startup_timeout_secs: u64,
    /// Longest graceful shutdown, seconds.
    pub shutdown_timeout_secs: u64,
    /// `group.instance.id` (static membership); empty = dynamic membership.
    pub group_instance_id: String,
    /// The consumer group protocol: `classic` (eager, range) or `consumer` (KIP-848:
    /// incremental, the broker's range assignor).
    pub group_protocol: GroupProtocol,
    /// Delivery guarantee and transactions.
    pub processing: ProcessingConfig,
    /// librdkafka properties for the consumer and the producer (TLS, SASL, ...).
    pub properties: Properties,
    /// librdkafka properties for the consumer only.
    pub consumer_properties: Properties,
    /// librdkafka properties for the producer only.
    pub producer_properties: Properties,
    /// Properties refused as unsafe (they load code, run commands or turn off TLS
    /// verification) that are nevertheless allowed, by name.
    pub allow_unsafe_properties: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "churnsignal".into(),
            client_id: "churnsignal".into(),
            topics: TopicsConfig::default(),
            encoding: EncodingConfig::default(),
            alerts_format: AlertFormat::Json,
            auto_offset_reset: OffsetReset::Earliest,
            partitioner: "murmur2_random".into(),
            workers: 0,
            commit_interval_ms: 1000,
            worker_queue_events: 20_000,
            idle_timeout_secs: 300,
            max_task_idle_ms: 0,
            ready_max_lag: 10_000,
            startup_timeout_secs: 30,
            shutdown_timeout_secs: 20,
            group_instance_id: String::new(),
            group_protocol: GroupProtocol::Classic,
            processing: ProcessingConfig::default(),
            properties: Properties::default(),
            consumer_properties: Properties::default(),
            producer_properties: Properties::default(),
            allow_unsafe_properties: Vec::new(),
        }
    }
}

/// `[kafka.topics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Orders.
    pub orders: String,
    /// Support tickets.
    pub support_tickets: String,
    /// Engagement.
    pub engagement: String,
    /// Alerts out.
    pub alerts: String,
    /// Invalid input out.
    pub dead_letters: String,
    /// The partition engines' state (compacted; created at start when missing).
    pub changelog: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            orders: "orders".into(),
            support_tickets: "support-tickets".into(),
            engagement: "engagement".into(),
            alerts: "churn-alerts".into(),
            dead_letters: "churn-dead-letters".into(),
            changelog: "churnsignal-state".into(),
        }
    }
}

/// One input topic: its name, the event families it carries and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTopic {
    /// Topic name.
    pub name: String,
    /// Families accepted on it (several when topics are configured with one name).
    pub families: Vec<Family>,
    /// Its messages' encoding.
    pub encoding: Encoding,
}

impl TopicsConfig {
    /// Every configured topic with its role (`orders`, ..., `dead_letters`); a name
    /// shared by several families appears once per family.
    pub fn with_roles(&self) -> [(&'static str, &str); 5] {
        [
            ("orders", &self.orders),
            ("support_tickets", &self.support_tickets),
            ("engagement", &self.engagement),
            ("alerts", &self.alerts),
            ("dead_letters", &self.dead_letters),
        ]
    }

    /// The distinct topic names, inputs first: what has to exist.
    pub fn distinct(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::with_capacity(5);
        for (_, n) in self.with_roles() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

impl KafkaConfig {
    /// Messages one input of a partition may hold for their turn in event-time order
    /// before it is paused (`worker_queue_events`): a topic running ahead of the others
    /// in event time waits there, bounded. Smaller than a few fetch responses (1 MB
    /// each by default), it pauses and resumes constantly, and librdkafka drops what it
    /// had fetched of a topic-partition at every pause.
    pub fn sync_buffer(&self) -> usize {
        self.worker_queue_events
    }

    /// The distinct input topics, in configuration order. Families configured with the
    /// same topic name share it (all events on one topic is a valid setup).
    pub fn input_topics(&self) -> Vec<InputTopic> {
        let t = &self.topics;
        let e = &self.encoding;
        let mut out: Vec<InputTopic> = Vec::new();
        for (name, family, encoding) in [
            (&t.orders, Family::Orders, e.orders),
            (
                &t.support_tickets,
                Family::SupportTickets,
                e.support_tickets,
            ),
            (&t.engagement, Family::Engagement, e.engagement),
        ] {
            match out.iter_mut().find(|i| &i.name == name) {
                Some(i) => i.families.push(family),
                None => out.push(InputTopic {
                    name: name.clone(),
                    families: vec![family],
                    encoding,
                }),
            }
        }
        out
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("kafka.brokers", &self.brokers),
            ("kafka.group_id", &self.group_id),
            ("kafka.client_id", &self.client_id),
            ("kafka.partitioner", &self.partitioner),
            ("kafka.topics.orders", &self.topics.orders),
            ("kafka.topics.support_tickets", &self.topics.support_tickets),
            ("kafka.topics.engagement", &self.topics.engagement),
            ("kafka.topics.alerts", &self.topics.alerts),
            ("kafka.topics.dead_letters", &self.topics.dead_letters),
            ("kafka.topics.changelog", &self.topics.changelog),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(key, "\"\"", "a non-empty string"));
            }
        }
        let inputs = self.input_topics();
        for out in [&self.topics.alerts, &self.topics.dead_letters] {
            if inputs.iter().any(|i| &i.name == out) {
                return Err(invalid(
                    "kafka.topics",
                    format!("\"{out}\""),
                    "output topics (alerts, dead_letters) distinct from the input topics",
                ));
            }
        }
        if self
            .topics
            .distinct()
            .contains(&self.topics.changelog.as_str())
        {
            return Err(invalid(
                "kafka.topics.changelog",
                format!("\"{}\"", self.topics.changelog),
                "a topic of its own (it is compacted and holds state records only)",
            ));
        }
        check_range(
            "kafka.processing.transaction_interval_ms",
            self.processing.transaction_interval_ms as f64,
            10.0,
            60_000.0,
        )?;
        for i in &inputs {
            if i.families.len() > 1 {
                let enc = |f: Family| match f {
                    Family::Orders => self.encoding.orders,
                    Family::SupportTickets => self.encoding.support_tickets,
                    Family::Engagement => self.encoding.engagement,
                };
                if i.families.iter().any(|f| enc(*f) != i.encoding) {
                    return Err(invalid(
                        "kafka.encoding",
                        format!("different encodings for the shared topic \"{}\"", i.name),
                        "one encoding per topic",
                    ));
                }
            }
        }
        check_range("kafka.workers", self.workers as f64, 0.0, 256.0)?;
        check_range(
            "kafka.commit_interval_ms",
            self.commit_interval_ms as f64,
            10.0,
            600_000.0,
        )?;
        check_range(
            "kafka.worker_queue_events",
            self.worker_queue_events as f64,
            100.0,
            10_000_000.0,
        )?;
        check_range(
            "kafka.idle_timeout_secs",
            self.idle_timeout_secs as f64,
            1.0,
            30.0 * 86_400.0,
        )?;
        check_range(
            "kafka.max_task_idle_ms",
            self.max_task_idle_ms as f64,
            0.0,
            3_600_000.0,
        )?;
        check_range("kafka.ready_max_lag", self.ready_max_lag as f64, 0.0, 1e12)?;
        check_range(
            "kafka.startup_timeout_secs",
            self.startup_timeout_secs as f64,
            1.0,
            3600.0,
        )?;
        check_range(
            "kafka.shutdown_timeout_secs",
            self.shutdown_timeout_secs as f64,
            1.0,
            600.0,
        )?;
        for (section, props) in [
            ("kafka.properties", &self.properties),
            ("kafka.consumer_properties", &self.consumer_properties),
            ("kafka.producer_properties", &self.producer_properties),
        ] {
            props.validate(section, &self.allow_unsafe_properties)?;
            let reaches_consumer = section != "kafka.producer_properties";
            if reaches_consumer && self.group_protocol == GroupProtocol::Consumer {
                if let Some((k, v)) = props
                    .0
                    .iter()
                    .find(|(k, _)| CLASSIC_ONLY.contains(&k.as_str()))
                {
                    return Err(invalid(
                        &format!("{section}.\"{k}\""),
                        v.to_string(),
                        "nothing with kafka.group_protocol = \"consumer\": the broker sets the \
                         session and heartbeat (group.consumer.session.timeout.ms, \
                         group.consumer.heartbeat.interval.ms) and churnsignal the assignor",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Consumer properties of the classic group protocol only (librdkafka refuses them
/// under KIP-848).
const CLASSIC_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// `[kafka.processing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingConfig {
    /// `at_least_once` or `exactly_once`.
    pub guarantee: Guarantee,
    /// Exactly-once: how often a partition's transaction commits, ms.
    pub transaction_interval_ms: u64,
    /// Prefix of the per-partition `transactional.id`s; empty = the group id.
    pub transactional_id_prefix: String,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            guarantee: Guarantee::AtLeastOnce,
            transaction_interval_ms: 100,
            transactional_id_prefix: String::new(),
        }
    }
}

impl KafkaConfig {
    /// The `transactional.id` of partition `p`'s producer: fixed per partition, so
    /// that a new owner fences the old one and aborts what it left open.
    pub fn transactional_id(&self, partition: i32) -> String {
        let prefix = match self.processing.transactional_id_prefix.as_str() {
            "" => self.group_id.as_str(),
            p => p,
        };
        format!("{prefix}-state-{partition}")
    }

    /// How often a partition engine checkpoints (state, offsets; with exactly-once also
    /// its outputs), ms.
    pub fn checkpoint_interval_ms(&self) -> u64 {
        match self.processing.guarantee {
            Guarantee::AtLeastOnce => self.commit_interval_ms,
            Guarantee::ExactlyOnce => self.processing.transaction_interval_ms,
        }
    }
}

/// The delivery guarantee of alerts and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Produced at once; after a crash, some are produced again (same id and sequence).
    AtLeastOnce,
    /// Produced in the partition's transaction with its state and input offsets.
    ExactlyOnce,
}

/// The consumer group protocol. Both keep partition *p* of every input topic on one
/// instance (the range assignor); they differ in how partitions move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol with the client-side range assignor: every rebalance
    /// revokes every partition of every member first (eager). Any broker.
    Classic,
    /// KIP-848 (`group.protocol=consumer`, Kafka 4.0 or later) with the broker's range
    /// assignor: incremental, so a rebalance moves only the partitions that change owner
    /// and the others keep working (sticky only as far as its contiguous ranges allow).
    Consumer,
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// From the oldest retained message.
    Earliest,
    /// From new messages only.
    Latest,
}

impl OffsetReset {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// `[kafka.encoding]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodingConfig {
    /// Orders topic.
    pub orders: Encoding,
    /// Support-tickets topic.
    pub support_tickets: Encoding,
    /// Engagement topic.
    pub engagement: Encoding,
}

impl Default for EncodingConfig {
    fn default() -> Self {
        EncodingConfig {
            orders: Encoding::Json,
            support_tickets: Encoding::Json,
            engagement: Encoding::Json,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter (`info`, `churnsignal=debug,librdkafka=warn`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn classic_session_settings_are_refused_under_kip_848_with_what_sets_them() {
        let toml = "[kafka]\ngroup_protocol = \"consumer\"\n[kafka.consumer_properties]\n\"session.timeout.ms\" = 6000\n";
        let msg = Config::from_toml(toml).unwrap_err().to_string();
        assert!(
            msg.contains("kafka.consumer_properties.\"session.timeout.ms\"")
                && msg.contains("6000")
                && msg.contains("group.consumer.session.timeout.ms"),
            "{msg}"
        );
        let classic = toml.replace("consumer\"\n[", "classic\"\n[");
        assert!(
            Config::from_toml(&classic).is_ok(),
            "the classic protocol takes it"
        );
        let msg = Config::from_toml("[kafka]\ngroup_protocol = \"eager\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("group_protocol") || msg.contains("eager"),
            "{msg}"
        );
        let producer_only = "[kafka]\ngroup_protocol = \"consumer\"\n[kafka.producer_properties]\n\"session.timeout.ms\" = 6000\n";
        assert!(
            Config::from_toml(producer_only).is_ok(),
            "producer properties never reach the consumer"
        );
        let err = Config::from_toml("[kafka.properties]\n\"group.protocol\" = \"consumer\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("kafka.group_protocol"), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let c = Config::from_toml(
            "[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.password\" = \"hunter2-secret\"\n\"ssl.key.password\" = \"pem-pass\"\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("pem-pass"),
            "{dbg}"
        );
        assert!(
            dbg.contains("sasl_ssl") && dbg.contains("<redacted>"),
            "{dbg}"
        );
        let err = Config::from_toml("[kafka.properties]\n\"sasl.password\" = [\"hunter2\"]\n")
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn families_sharing_one_topic_make_one_input() {
        let c = Config::from_toml(
            "[kafka.topics]\norders = \"events\"\nsupport_tickets = \"events\"\nengagement = \"eng\"\n",
        )
        .unwrap();
        let inputs = c.kafka.input_topics();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].name, "events");
        assert_eq!(inputs[0].families.len(), 2);
        assert_eq!(
            c.kafka.topics.distinct(),
            vec!["events", "eng", "churn-alerts", "churn-dead-letters"],
            "each topic once, inputs first"
        );
        let err = Config::from_toml("[kafka.topics]\nalerts = \"orders\"\n").unwrap_err();
        assert!(err.to_string().contains("kafka.topics"), "{err}");
    }
}
