//! `churnsignal evaluate`: how well the alerts and the score do on a labelled history,
//! measured on the code path that runs live (the history goes through [`crate::replay`]).
//!
//! Labels are JSON Lines, one per customer: `{"customer_id": "acme", "label": L,
//! "onset": "2026-03-01T00:00:00Z"}` where `L` is a signal name (the customer drifts in
//! that way from `onset`), `"churned"` (stops buying at `onset`) or `"steady"` (no
//! change; `onset` may be null). Customers without a label are not judged.
//!
//! - For each drifting label: recall within each window after the onset (an open or
//!   escalated alert naming the expected signal, or for `churned` any signal, decided
//!   then), the detection delay of those detected within the longest window (median,
//!   90th percentile), and how many alerts before the onset there were.
//! - For each signal: precision, the share of labelled customers it fired for (after
//!   their onset, for drifting ones) whose label is that signal.
//! - Steady customers: alert episodes opened per customer-year (from their first event
//!   to the end of the history), and the share alerted per year.
//! - With `as_of`: the history up to it is replayed, and the rest is the outcome; the
//!   area under the ROC curve for "no order within `horizon_days` after `as_of`" among
//!   customers who ordered before it, of the health score (lower = more at risk), of
//!   P(alive), and of days since the last order, the reference line.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::Config;
use crate::decode::{decode_json, Limits};
use crate::event::EventKind;
use crate::replay;
use crate::time::{Timestamp, DAY_MS};

/// One customer's label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// A signal name, `churned` or `steady`.
    pub label: String,
    /// When the change began (none for steady customers).
    pub onset: Option<Timestamp>,
}

/// Why labels could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// A label line is not what the format says.
    #[error("labels line {line}: {message}")]
    Label {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The replay failed (I/O).
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
}

/// The labels the format allows besides signal names.
const OTHER_LABELS: [&str; 2] = ["churned", "steady"];

/// Reads labels (JSON Lines).
pub fn read_labels(text: &str) -> Result<BTreeMap<String, Label>, EvaluateError> {
    let signals: Vec<&str> = crate::signals::SignalKind::ALL
        .iter()
        .map(|k| k.name())
        .collect();
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| EvaluateError::Label {
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let id = v["customer_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err("customer_id (a non-empty string) is missing".into()))?;
        let label = v["label"]
            .as_str()
            .ok_or_else(|| err("label (a string) is missing".into()))?;
        if !signals.contains(&label) && !OTHER_LABELS.contains(&label) {
            return Err(err(format!(
                "label {label:?} is none of {}, churned, steady",
                signals.join(", ")
            )));
        }
        let onset = match &v["onset"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(
                Timestamp::parse_rfc3339(s)
                    .ok_or_else(|| err(format!("onset {s:?} is not an RFC 3339 timestamp")))?,
            ),
            other => return Err(err(format!("onset {other} is not a timestamp or null"))),
        };
        if onset.is_none() && label != "steady" {
            return Err(err(format!("a {label} label needs an onset")));
        }
        if out
            .insert(
                id.to_owned(),
                Label {
                    label: label.to_owned(),
                    onset,
                },
            )
            .is_some()
        {
            return Err(err(format!("customer {id} is labelled twice")));
        }
    }
    Ok(out)
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Recall windows after the onset, days.
    pub windows_days: Vec<f64>,
    /// Cut-off for the ranking measures.
    pub as_of: Option<Timestamp>,
    /// The ranking measures' outcome: no order within this many days after `as_of`.
    pub horizon_days: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            windows_days: vec![14.0, 28.0, 45.0, 90.0],
            as_of: None,
            horizon_days: 90.0,
        }
    }
}

/// How one drifting label was detected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The label.
    pub label: String,
    /// Customers with it.
    pub customers: usize,
    /// Share detected within each window (days, share).
    pub recall: Vec<(f64, f64)>,
    /// Median days from onset to detection, among those detected within the longest window.
    pub delay_median_days: Option<f64>,
    /// 90th percentile of the same.
    pub delay_p90_days: Option<f64>,
    /// Customers with an alert (any signal) before their onset.
    pub alerted_before_onset: usize,
}

/// How one signal's alerts hit their labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Precision {
    /// The signal.
    pub signal: String,
    /// Labelled customers it fired for.
    pub fired: usize,
    /// Of those, labelled with it.
    pub correct: usize,
    /// correct / fired.
    pub precision: Option<f64>,
}

/// Steady customers' false alerts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FalseAlerts {
    /// Steady customers.
    pub customers: usize,
    /// Customer-years observed.
    pub customer_years: f64,
    /// Alert episodes opened for them.
    pub episodes: usize,
    /// Episodes per customer-year.
    pub episodes_per_customer_year: f64,
    /// Steady customers with any alert.
    pub alerted: usize,
    /// Share of steady customers alerted, per year observed.
    pub alerted_share_per_year: f64,
}

/// Ranking at the cut-off.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// The cut-off.
    pub as_of: Timestamp,
    /// The outcome's horizon, days.
    pub horizon_days: f64,
    /// Customers who ordered before the cut-off.
    pub customers: usize,
    /// Of those, without an order within the horizon after it.
    pub no_order: usize,
    /// AUC of 100 − health score.
    pub auc_health_score: Option<f64>,
    /// AUC of 1 − P(alive).
    pub auc_p_alive: Option<f64>,
    /// AUC of the orders the purchase model expects in the horizon, fewer = more at risk.
    pub auc_expected_orders: Option<f64>,
    /// AUC of days since the last order (the reference line).
    pub auc_days_since_last_order: Option<f64>,
}

/// Everything `evaluate` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Events replayed.
    pub events: u64,
    /// Alerts the replay wrote.
    pub alerts: u64,
    /// Labelled customers seen in the history.
    pub labelled: usize,
    /// Per drifting label.
    pub detection: Vec<Detection>,
    /// Per signal.
    pub precision: Vec<Precision>,
    /// Steady customers.
    pub steady: Option<FalseAlerts>,
    /// At `as_of`.
    pub ranking: Option<Ranking>,
}

/// One alert, as much as evaluation needs.
struct Seen {
    customer: String,
    status: String,
    sequence: u64,
    signals: Vec<String>,
    as_of: Timestamp,
}

fn parse_alerts(bytes: &[u8]) -> Vec<Seen> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).ok()?;
            Some(Seen {
                customer: v["customer_id"].as_str()?.to_owned(),
                status: v["status"].as_str()?.to_owned(),
                sequence: v["sequence"].as_u64()?,
                signals: v["signals"]
                    .as_array()?
                    .iter()
                    .filter_map(|s| Some(s["signal"].as_str()?.to_owned()))
                    .collect(),
                as_of: Timestamp::parse_rfc3339(v["as_of"].as_str()?)?,
            })
        })
        .collect()
}

/// Replays `history` (JSON Lines) with `cfg` and measures it against `labels`.
pub fn run(
    history: &[u8],
    labels: &BTreeMap<String, Label>,
    cfg: &Config,
    opts: &Options,
) -> Result<Report, EvaluateError> {
    let mut alerts_json = Vec::new();
    let replayed = replay::run(
        history,
        cfg,
        &replay::Options::default(),
        &mut alerts_json,
        None,
    )?;
    let alerts = parse_alerts(&alerts_json);
    // First and last event of every customer, and their order times.
    let limits = Limits::from_input(&cfg.input, None);
    let mut span: BTreeMap<String, (Timestamp, Timestamp)> = BTreeMap::new();
    let mut orders: BTreeMap<String, Vec<Timestamp>> = BTreeMap::new();
    let mut end = Timestamp(i64::MIN);
    for line in history.split(|b| *b == b'\n') {
        let Ok(e) = decode_json(line, &limits) else {
            continue;
        };
        let t = e.occurred_at;
        end = end.max(t);
        let s = span.entry(e.customer_id.to_string()).or_insert((t, t));
        s.0 = s.0.min(t);
        s.1 = s.1.max(t);
        if matches!(e.kind, EventKind::OrderPlaced { .. }) {
            orders.entry(e.customer_id.to_string()).or_default().push(t);
        }
    }
    let labelled: BTreeMap<&String, &Label> = labels
        .iter()
        .filter(|(id, _)| span.contains_key(*id))
        .collect();
    let mut by_customer: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for a in &alerts {
        by_customer.entry(&a.customer).or_default().push(a);
    }
    let raising = |a: &&&Seen| a.status != "resolved";

    // Detection per drifting label.
    let mut kinds: BTreeSet<&str> = labelled.values().map(|l| l.label.as_str()).collect();
    kinds.remove("steady");
    let longest = opts.windows_days.iter().copied().fold(0.0, f64::max);
    let mut detection = Vec::new();
    for kind in kinds {
        let members: Vec<(&String, Timestamp)> = labelled
            .iter()
            .filter(|(_, l)| l.label == kind)
            .filter_map(|(id, l)| Some((*id, l.onset?)))
            .collect();
        let mut delays = Vec::new();
        let mut before = 0;
        for (id, onset) in &members {
            let mine = by_customer.get(id.as_str()).map_or(&[][..], |v| &v[..]);
            if mine.iter().filter(raising).any(|a| a.as_of < *onset) {
                before += 1;
            }
            let first = mine
                .iter()
                .filter(raising)
                .filter(|a| a.as_of >= *onset)
                .filter(|a| kind == "churned" || a.signals.iter().any(|s| s == kind))
                .map(|a| a.as_of)
                .min();
            if let Some(t) = first {
                delays.push((t.0 - onset.0) as f64 / DAY_MS as f64);
            }
        }
        let n = members.len();
        let recall = opts
            .windows_days
            .iter()
            .map(|w| {
                let hit = delays.iter().filter(|d| **d <= *w).count();
                (*w, ratio(hit, n).unwrap_or(0.0))
            })
            .collect();
        let mut within: Vec<f64> = delays.into_iter().filter(|d| *d <= longest).collect();
        within.sort_by(f64::total_cmp);
        detection.push(Detection {
            label: kind.to_owned(),
            customers: n,
            recall,
            delay_median_days: quantile(&within, 0.5),
            delay_p90_days: quantile(&within, 0.9),
            alerted_before_onset: before,
        });
    }

    // Precision per signal.
    let mut precision = Vec::new();
    for k in crate::signals::SignalKind::ALL {
        let name = k.name();
        let (mut fired, mut correct) = (0, 0);
        for (id, l) in &labelled {
            let mine = by_customer.get(id.as_str()).map_or(&[][..], |v| &v[..]);
            let hit = mine.iter().filter(raising).any(|a| {
                a.signals.iter().any(|s| s == name) && l.onset.is_none_or(|o| a.as_of >= o)
            });
            if hit {
                fired += 1;
                if l.label == name {
                    correct += 1;
                }
            }
        }
        precision.push(Precision {
            signal: name.to_owned(),
            fired,
            correct,
            precision: ratio(correct, fired),
        });
    }

    // Steady customers.
    let steady_ids: Vec<&String> = labelled
        .iter()
        .filter(|(_, l)| l.label == "steady")
        .map(|(id, _)| *id)
        .collect();
    let steady = (!steady_ids.is_empty()).then(|| {
        let mut years = 0.0;
        let (mut episodes, mut alerted) = (0, 0);
        for id in &steady_ids {
            let (first, _) = span[*id];
            years += (end.0 - first.0).max(0) as f64 / (365.25 * DAY_MS as f64);
            let mine = by_customer.get(id.as_str()).map_or(&[][..], |v| &v[..]);
            let opened = mine
                .iter()
                .filter(|a| a.status == "open" && a.sequence == 1)
                .count();
            episodes += opened;
            alerted += usize::from(opened > 0);
        }
        let per_year = |n: usize| if years > 0.0 { n as f64 / years } else { 0.0 };
        FalseAlerts {
            customers: steady_ids.len(),
            customer_years: years,
            episodes,
            episodes_per_customer_year: per_year(episodes),
            alerted,
            // alerted customers / customers, per (mean) year observed
            alerted_share_per_year: if years > 0.0 {
                alerted as f64 / years
            } else {
                0.0
            },
        }
    });

    let ranking = match opts.as_of {
        None => None,
        Some(as_of) => Some(rank(history, cfg, &orders, as_of, opts.horizon_days)?),
    };
    Ok(Report {
        events: replayed.applied,
        alerts: replayed.alerts,
        labelled: labelled.len(),
        detection,
        precision,
        steady,
        ranking,
    })
}

/// The ranking measures at `as_of`.
fn rank(
    history: &[u8],
    cfg: &Config,
    orders: &BTreeMap<String, Vec<Timestamp>>,
    as_of: Timestamp,
    horizon_days: f64,
) -> Result<Ranking, EvaluateError> {
    let mut snapshot = Vec::new();
    let mut sink = Vec::new();
    replay::run(
        history,
        cfg,
        &replay::Options {
            as_of: Some(as_of),
            now: None,
        },
        &mut sink,
        Some(&mut snapshot),
    )?;
    let until = Timestamp(as_of.0 + (horizon_days * DAY_MS as f64) as i64);
    // (no order in the horizon, 100 − health, 1 − P(alive), days since last order,
    // −expected orders)
    let mut rows: Vec<(bool, f64, f64, f64, f64)> = Vec::new();
    for line in snapshot.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(id), Some(health)) = (v["customer_id"].as_str(), v["health_score"].as_f64())
        else {
            continue;
        };
        let Some(last) = v["windows"]["last_order_at"]
            .as_str()
            .and_then(Timestamp::parse_rfc3339)
        else {
            continue; // never ordered before the cut-off
        };
        let p_alive = v["windows"]["p_alive"].as_f64().unwrap_or(1.0);
        let expected = v["windows"]["expected_orders_90d"].as_f64().unwrap_or(0.0);
        let bought = orders
            .get(id)
            .is_some_and(|o| o.iter().any(|t| *t > as_of && *t <= until));
        rows.push((
            !bought,
            100.0 - health,
            1.0 - p_alive,
            (as_of.0 - last.0) as f64 / DAY_MS as f64,
            -expected,
        ));
    }
    let auc_of = |f: fn(&(bool, f64, f64, f64, f64)) -> f64| {
        auc(&rows.iter().map(|r| (r.0, f(r))).collect::<Vec<_>>())
    };
    Ok(Ranking {
        as_of,
        horizon_days,
        customers: rows.len(),
        no_order: rows.iter().filter(|r| r.0).count(),
        auc_health_score: auc_of(|r| r.1),
        auc_p_alive: auc_of(|r| r.2),
        auc_expected_orders: auc_of(|r| r.4),
        auc_days_since_last_order: auc_of(|r| r.3),
    })
}

/// The area under the ROC curve of `score` for `positive` (ties count half): the
/// probability that a random positive scores above a random negative.
pub fn auc(rows: &[(bool, f64)]) -> Option<f64> {
    let pos = rows.iter().filter(|r| r.0).count();
    let neg = rows.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = rows.iter().map(|(p, s)| (*s, *p)).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann–Whitney: the rank sum of the positives, ties given their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let mean_rank = (i + j + 1) as f64 / 2.0; // ranks i+1 ..= j
        rank_sum += mean_rank * sorted[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

impl Report {
    /// A text table.
    pub fn render(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
        let mut s = format!(
            "{} events replayed, {} alerts, {} labelled customers\n",
            self.events, self.alerts, self.labelled
        );
        if !self.detection.is_empty() {
            let windows: Vec<String> = self.detection[0]
                .recall
                .iter()
                .map(|(w, _)| format!("{:>6}", format!("{w:.0}d")))
                .collect();
            s.push_str(&format!(
                "\n{:<20} {:>9}  recall within {}   delay median  p90   alerted before onset\n",
                "label",
                "customers",
                windows.join(" ")
            ));
            for d in &self.detection {
                let r: Vec<String> = d
                    .recall
                    .iter()
                    .map(|(_, v)| format!("{:>6}", format!("{:.0}%", v * 100.0)))
                    .collect();
                s.push_str(&format!(
                    "{:<20} {:>9}  {:>13} {}   {:>12} {:>5}   {}\n",
                    d.label,
                    d.customers,
                    "",
                    r.join(" "),
                    f(d.delay_median_days, 1),
                    f(d.delay_p90_days, 1),
                    d.alerted_before_onset
                ));
            }
        }
        s.push_str(&format!(
            "\n{:<20} {:>6} {:>8} {:>10}\n",
            "signal", "fired", "correct", "precision"
        ));
        for p in &self.precision {
            s.push_str(&format!(
                "{:<20} {:>6} {:>8} {:>10}\n",
                p.signal,
                p.fired,
                p.correct,
                p.precision
                    .map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0))
            ));
        }
        if let Some(st) = &self.steady {
            s.push_str(&format!(
                "\nsteady customers: {} over {:.1} customer-years; {} alerted ({:.2}% per year), {} episodes ({:.3} per customer-year)\n",
                st.customers,
                st.customer_years,
                st.alerted,
                st.alerted_share_per_year * 100.0,
                st.episodes,
                st.episodes_per_customer_year
            ));
        }
        if let Some(r) = &self.ranking {
            s.push_str(&format!(
                "\nat {} ({} customers who had ordered, {} without an order in the next {:.0} days):\nAUC health score {}, P(alive) {}, expected orders {}, days since last order {} (reference)\n",
                r.as_of,
                r.customers,
                r.no_order,
                r.horizon_days,
                f(r.auc_health_score, 3),
                f(r.auc_p_alive, 3),
                f(r.auc_expected_orders, 3),
                f(r.auc_days_since_last_order, 3)
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_share_of_positive_negative_pairs_ranked_right_ties_half() {
        assert_eq!(auc(&[(true, 2.0), (false, 1.0)]), Some(1.0));
        assert_eq!(auc(&[(true, 1.0), (false, 2.0)]), Some(0.0));
        assert_eq!(auc(&[(true, 1.0), (false, 1.0)]), Some(0.5));
        // 2 positives x 2 negatives: (3>1, 3>2, 1<2 wrong, 1=1 half) = 2.5 / 4
        let rows = [(true, 3.0), (true, 1.0), (false, 1.0), (false, 2.0)];
        assert_eq!(auc(&rows), Some(0.625));
        assert_eq!(auc(&[(true, 1.0)]), None);
    }

    #[test]
    fn labels_name_what_is_wrong_by_line() {
        let ok = "{\"customer_id\":\"a\",\"label\":\"steady\",\"onset\":null}\n\
                  {\"customer_id\":\"b\",\"label\":\"inactivity\",\"onset\":\"2026-03-01T00:00:00Z\"}\n";
        let l = read_labels(ok).unwrap();
        assert_eq!(l["a"].onset, None);
        assert_eq!(l["b"].label, "inactivity");
        let bad = |t: &str| read_labels(t).unwrap_err().to_string();
        assert!(bad("{\"customer_id\":\"a\",\"label\":\"gone\"}").contains("line 1"));
        assert!(
            bad("{\"customer_id\":\"a\",\"label\":\"churned\",\"onset\":null}")
                .contains("needs an onset")
        );
        assert!(bad(&format!(
            "{ok}{{\"customer_id\":\"a\",\"label\":\"steady\"}}"
        ))
        .contains("line 3: customer a is labelled twice"));
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        assert_eq!(quantile(&v, 0.9), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
