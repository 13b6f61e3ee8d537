//! Replay: the engine over a file of contract events (JSON Lines), in file order, exactly
//! as live processing runs it. Used to tune thresholds and backtest on the code path that
//! runs live.
//!
//! Invalid lines are counted, the first few reported with line numbers, and skipped;
//! they never stop a replay. Alerts carry `emitted_at = as_of` so a replay of the same
//! file gives the same bytes every time.

use std::io::{BufRead, Write};

use crate::alert::Alert;
use crate::config::{Config, EngineSettings};
use crate::decode::lines::{Line, Lines};
use crate::decode::Limits;
use crate::engine::Engine;
use crate::time::Timestamp;

/// How many invalid lines are kept as examples.
pub const EXAMPLES: usize = 5;
/// Lines decoded and applied together.
const BATCH: usize = 1024;

/// Options of a replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stop at this instant: later events are skipped, stream time advances to it, and
    /// the snapshot (if any) is taken then.
    pub as_of: Option<Timestamp>,
    /// Reference instant for the clock-skew check (`None`: no check).
    pub now: Option<Timestamp>,
}

/// One invalid line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// 1-based line number.
    pub line: u64,
    /// Reason code.
    pub reason: &'static str,
    /// What was wrong.
    pub message: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Lines read (blank lines not counted).
    pub lines: u64,
    /// Events applied to the engine.
    pub applied: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// Invalid lines by reason code.
    pub invalid_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// The first invalid lines.
    pub examples: Vec<Invalid>,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Events older than the watermark.
    pub late: u64,
    /// Events after `--as-of`, skipped.
    pub after_as_of: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Customers known at the end.
    pub customers: u64,
    /// Health records written.
    pub records: u64,
}

/// Errors that stop a replay (I/O only; bad input never does).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the input failed.
    #[error("reading input: {0}")]
    Read(std::io::Error),
    /// Writing alerts or the snapshot failed.
    #[error("writing output: {0}")]
    Write(std::io::Error),
    /// A configuration value that is not allowed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn write_alerts(
    alerts: &mut Vec<Alert>,
    out: &mut impl Write,
    report: &mut Report,
) -> Result<(), ReplayError> {
    for a in alerts.drain(..) {
        out.write_all(a.to_json().as_bytes())
            .map_err(ReplayError::Write)?;
        out.write_all(b"\n").map_err(ReplayError::Write)?;
        report.alerts += 1;
    }
    Ok(())
}

/// Replays `input` through a new engine with `cfg`; alerts go to `alerts` as JSON Lines,
/// health records (if `snapshot` is given) to `snapshot` at the end.
pub fn run(
    input: impl BufRead,
    cfg: &Config,
    opts: &Options,
    alerts: &mut impl Write,
    snapshot: Option<&mut dyn Write>,
) -> Result<Report, ReplayError> {
    let mut engine = Engine::new(EngineSettings::new(cfg)?);
    let limits = Limits::from_input(&cfg.input, opts.now);
    let mut report = Report::default();
    let mut pending = Vec::new();
    // Lines are decoded and applied in batches, as the live consumer applies a poll's
    // messages: the same engine path (`apply_batch`), in the same order.
    // A line is held only up to the size limit: a longer one is read past and rejected.
    let mut batch: Vec<Line> = Vec::with_capacity(BATCH);
    let mut lines = Lines::new(input, limits.max_event_bytes);
    loop {
        batch.clear();
        for line in lines.by_ref() {
            let line = line.map_err(ReplayError::Read)?;
            if line.is_blank() {
                continue;
            }
            batch.push(line);
            if batch.len() == BATCH {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        report.lines += batch.len() as u64;
        let mut events = Vec::with_capacity(batch.len());
        let mut numbers = Vec::with_capacity(batch.len());
        for line in &batch {
            match line.decode(&limits) {
                Ok(e) if opts.as_of.is_some_and(|a| e.occurred_at > a) => report.after_as_of += 1,
                Ok(e) => {
                    events.push(e);
                    numbers.push(line.number);
                }
                Err(err) => report.invalid(line.number, err),
            }
        }
        // An event too old for stream time when its turn comes is invalid as well.
        engine.apply_batch_with(&events, &mut pending, |i, err| {
            report.invalid(numbers[i], err)
        });
        write_alerts(&mut pending, alerts, &mut report)?;
    }
    let end = match (opts.as_of, engine.max_event_time()) {
        (Some(a), _) => Some(a),
        (None, t) => t,
    };
    if let Some(t) = end {
        engine.advance_to_into(t, &mut pending);
        write_alerts(&mut pending, alerts, &mut report)?;
    }
    alerts.flush().map_err(ReplayError::Write)?;
    let s = engine.stats();
    report.applied = s.applied;
    report.duplicates = s.duplicates;
    report.late = s.late;
    report.customers = engine.customers() as u64;
    if let Some(out) = snapshot {
        for r in engine.snapshot() {
            out.write_all(r.to_json().as_bytes())
                .map_err(ReplayError::Write)?;
            out.write_all(b"\n").map_err(ReplayError::Write)?;
            report.records += 1;
        }
        out.flush().map_err(ReplayError::Write)?;
    }
    Ok(report)
}

impl Report {
    /// Counts an invalid line (and keeps the first few as examples).
    fn invalid(&mut self, line: u64, err: crate::decode::DecodeError) {
        self.invalid += 1;
        *self.invalid_by_reason.entry(err.reason.code()).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(Invalid {
                line,
                reason: err.reason.code(),
                message: err.message,
            });
        }
    }

    /// The human summary printed on stderr.
    pub fn render(&self) -> String {
        let mut s = format!(
            "replayed {} lines: {} events applied, {} invalid, {} duplicates, {} late, {} after --as-of; {} alerts; {} customers",
            self.lines, self.applied, self.invalid, self.duplicates, self.late, self.after_as_of, self.alerts, self.customers
        );
        if self.records > 0 {
            s.push_str(&format!("; {} health records", self.records));
        }
        if self.invalid > 0 {
            let by: Vec<String> = self
                .invalid_by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            s.push_str(&format!("\ninvalid lines by reason: {}", by.join(", ")));
            for e in &self.examples {
                s.push_str(&format!("\n  line {}: {}: {}", e.line, e.reason, e.message));
            }
        }
        s
    }
}
