//! Gauges of one partition engine, removed when the partition leaves this instance.
//!
//! The `metrics` facade cannot remove a series: a gauge set once is exported until the
//! process ends. A partition that moved to another instance would then go on showing
//! its last watermark, size and customers at risk here, frozen, next to the new owner's
//! (and `min by (partition)` of the watermark would pick the stale one). So these
//! gauges live in a small store of their own, rendered after the recorder's output, and
//! [`remove`] forgets every series of a partition at once.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::names;

/// (metric name, label set rendered `k="v",...`) → (partition, value).
type Series = BTreeMap<(&'static str, String), (i32, f64)>;

static STORE: Mutex<Series> = Mutex::new(BTreeMap::new());

/// The gauges kept here, with their help text.
pub const HELP: [(&str, &str); 6] = [
    (
        names::CUSTOMERS_TRACKED,
        "Customers held in memory, per partition",
    ),
    (names::STATE_BYTES, "Engine state size, per partition"),
    (names::WATERMARK, "Stream time per partition (unix seconds)"),
    (
        names::CUSTOMERS_AT_RISK,
        "Customers with an open alert, per partition, by announced risk and value tier",
    ),
    (
        names::SYNC_BUFFERED,
        "Consumed messages waiting for their turn in event-time order, per partition",
    ),
    (
        names::RESTORE_REMAINING,
        "Changelog records still to read by a restoring partition",
    ),
];

fn store() -> std::sync::MutexGuard<'static, Series> {
    // A panic while holding the lock cannot leave the map inconsistent (one insert or
    // retain at a time): keep using it.
    STORE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets gauge `name` of `partition` with extra `labels` (after `partition`).
pub fn set(name: &'static str, partition: i32, labels: &[(&str, &str)], value: f64) {
    let mut l = format!("partition=\"{partition}\"");
    for (k, v) in labels {
        // label values here are partition numbers and fixed words: nothing to escape
        let _ = write!(l, ",{k}=\"{v}\"");
    }
    store().insert((name, l), (partition, value));
}

/// Forgets every gauge of `partition`.
pub fn remove(partition: i32) {
    store().retain(|_, (p, _)| *p != partition);
}

/// Appends the gauges in the Prometheus text format.
pub fn render(out: &mut String) {
    let s = store();
    for (name, help) in HELP {
        let mut series = s
            .range((name, String::new())..)
            .take_while(|((n, _), _)| *n == name);
        let Some(first) = series.next() else {
            continue;
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((_, labels), (_, v)) in std::iter::once(first).chain(series) {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The store is process-wide: each test uses partitions of its own.

    #[test]
    fn a_removed_partition_disappears_and_the_others_stay() {
        set(names::WATERMARK, 9001, &[], 1_700_000_000.0);
        set(names::WATERMARK, 9002, &[], 1_700_000_100.0);
        set(
            names::CUSTOMERS_AT_RISK,
            9001,
            &[("risk", "high"), ("value_tier", "key")],
            3.0,
        );
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("churnsignal_watermark_seconds{partition=\"9001\"} 1700000000\n"));
        assert!(out.contains(
            "churnsignal_customers_at_risk{partition=\"9001\",risk=\"high\",value_tier=\"key\"} 3\n"
        ));
        remove(9001);
        let mut out = String::new();
        render(&mut out);
        assert!(!out.contains("partition=\"9001\""), "{out}");
        assert!(out.contains("churnsignal_watermark_seconds{partition=\"9002\"} 1700000100\n"));
        assert_eq!(
            out.matches("# TYPE churnsignal_watermark_seconds gauge")
                .count(),
            1
        );
        remove(9002);
    }

    #[test]
    fn a_gauge_set_again_keeps_one_series() {
        set(names::STATE_BYTES, 9101, &[], 10.0);
        set(names::STATE_BYTES, 9101, &[], 20.0);
        let mut out = String::new();
        render(&mut out);
        assert_eq!(out.matches("partition=\"9101\"").count(), 1, "{out}");
        assert!(out.contains("churnsignal_state_bytes{partition=\"9101\"} 20\n"));
        remove(9101);
    }
}
