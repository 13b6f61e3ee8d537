//! Checks before joining the group: every configured topic exists, the inputs are
//! co-partitioned, and the changelog exists (created when missing) with their partition count.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::config::Config;
use crate::kafka::status::RunError;

/// A topic's partition count and whether any partition has no leader yet (`None`: not
/// known to the broker), and how many brokers the cluster has.
pub(crate) fn describe_topic<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &Config,
    name: &str,
) -> Result<(Option<(usize, bool)>, usize), RunError> {
    let k = &cfg.kafka;
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(k.startup_timeout_secs))
        .map_err(|e| RunError::Metadata {
            topic: name.to_owned(),
            brokers: k.brokers.clone(),
            message: e.to_string(),
        })?;
    let found = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let leaderless = t.partitions().iter().any(|p| p.leader() < 0);
            (t.partitions().len(), leaderless)
        });
    Ok((found, md.brokers().len()))
}

/// The changelog is created when missing; it must have the inputs' partition count.
pub(crate) fn check_changelog<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &Config,
    partitions: usize,
) -> Result<(), RunError> {
    let k = &cfg.kafka;
    let name = &k.topics.changelog;
    let timeout = Duration::from_secs(k.startup_timeout_secs);
    let started = Instant::now();
    let mut created = false;
    loop {
        let (found, brokers) = describe_topic(consumer, cfg, name)?;
        match found {
            Some((n, _)) if n != partitions => {
                return Err(RunError::NotCoPartitioned(format!(
                    "the state changelog {name} has {n} partitions, the inputs {partitions}; it must have the inputs' count"
                )))
            }
            Some((_, false)) => return Ok(()),
            Some((_, true)) if started.elapsed() >= timeout => return Ok(()),
            Some(_) => {}
            None if !created => {
                let made = crate::kafka::topics::ensure_changelog(k, partitions as i32, brokers)
                    .map_err(|e| RunError::Client(e.to_string()))?;
                if made {
                    tracing::info!(topic = %name, partitions, "state changelog created (compacted)");
                }
                created = true;
            }
            None if started.elapsed() >= timeout => {
                return Err(RunError::MissingTopic {
                    topic: name.clone(),
                    role: "changelog"})
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every configured topic must exist, and the inputs must have one partition count
/// (returned).
pub(crate) fn check_topics<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &Config,
) -> Result<usize, RunError> {
    let k = &cfg.kafka;
    let timeout = Duration::from_secs(k.startup_timeout_secs);
    let mut counts: Vec<(&'static str, &str, usize)> = Vec::new();
    for (role, name) in k.topics.with_roles() {
        // A topic created moments ago may not be known to every broker yet, or have no
        // leader yet: such answers are asked again for a few seconds (leaderless
        // partitions until the startup timeout) before the topic counts as missing.
        let asked = Instant::now();
        let partitions = loop {
            let (found, _) = describe_topic(consumer, cfg, name)?;
            let waited = asked.elapsed();
            match found {
                Some((n, false)) => break n,
                Some((n, true)) if waited >= timeout => break n,
                Some((_, true)) => {}
                None if waited >= Duration::from_secs(3).min(timeout) => {
                    return Err(RunError::MissingTopic {
                        topic: name.to_owned(),
                        role,
                    })
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        counts.push((role, name, partitions));
    }
    let inputs = &counts[..3];
    if inputs.iter().any(|(_, _, n)| *n != inputs[0].2) {
        let list = inputs
            .iter()
            .map(|(role, name, n)| format!("{name} ({role}) has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RunError::NotCoPartitioned(format!(
            "{list} partitions; give them the same partition count"
        )));
    }
    Ok(inputs[0].2)
}
