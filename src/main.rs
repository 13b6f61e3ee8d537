//! The `churnsignal` command line: parses arguments, loads config, calls the library.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use churnsignal::config::{Config, LogFormat};
use churnsignal::time::Timestamp;
use churnsignal::{bench, generate, replay};

/// churnsignal: notices within seconds which customers are drifting away.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the live service: consume the input topics, alert, dead-letter, serve HTTP.
    Run {
        /// Configuration file (defaults built in; CHURNSIGNAL__* environment overrides apply).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Forward the alerts topic to Slack incoming webhooks ([slack] in the config).
    Slack {
        /// Configuration file (defaults built in; CHURNSIGNAL__* environment overrides apply).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Produce contract events (JSON Lines) to the configured input topics, keyed by customer.
    Produce {
        /// Events file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        input: String,
        /// Configuration file (defaults built in; CHURNSIGNAL__* environment overrides apply).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// GET an HTTP endpoint and exit 0 on a 2xx answer (container health checks).
    Probe {
        /// The URL (http only).
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Zero-setup demo: the live service on an in-process Kafka, fed a generated history.
    Demo {
        /// Customers.
        #[arg(long, default_value_t = 300)]
        customers: u32,
        /// Days of history.
        #[arg(long, default_value_t = 180)]
        days: u32,
        /// Simulated days per second.
        #[arg(long, default_value_t = 12.0)]
        speed: f64,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Address of /metrics, /healthz and /readyz (default: a free loopback port,
        /// printed at start).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Replay contract events (JSON Lines) through the engine: alerts out, optional snapshot.
    Replay {
        /// Events file, or `-` for standard input.
        #[arg(long)]
        input: String,
        /// Configuration file (defaults built in; CHURNSIGNAL__* environment overrides apply).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where alerts go (JSON Lines), `-` for standard output.
        #[arg(long, default_value = "-")]
        alerts: String,
        /// Write one health record per known customer (JSON Lines) here at the end.
        #[arg(long)]
        snapshot: Option<String>,
        /// Replay up to this instant (RFC 3339): later events are skipped, stream time
        /// advances to it, and the snapshot is taken then.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Measure alerts and the score against labels, on the code path that runs live:
    /// recall, detection delay and precision per signal, false alerts of steady
    /// customers, and (with --as-of) how well the score and P(alive) rank who orders
    /// again.
    Evaluate {
        /// Events file (JSON Lines).
        #[arg(long)]
        input: PathBuf,
        /// Labels (JSON Lines: {"customer_id", "label": "<signal>"|"churned"|"steady", "onset"}).
        #[arg(long)]
        labels: PathBuf,
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Cut-off for the ranking measures (RFC 3339): the history after it is the outcome.
        #[arg(long)]
        as_of: Option<String>,
        /// The outcome: no order within this many days after --as-of.
        #[arg(long, default_value_t = 90.0)]
        horizon_days: f64,
        /// Recall windows after the onset, days, comma-separated.
        #[arg(long, default_value = "14,28,45,90", value_delimiter = ',')]
        windows: Vec<f64>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create the configured topics that do not exist yet (inputs co-partitioned).
    CreateTopics {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Partitions of every topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 3)]
        replication_factor: i32,
    },
    /// Validate a configuration file (and the environment overrides).
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Write a generated, realistic event history (JSON Lines) to standard output.
    Generate {
        /// Customers.
        #[arg(long, default_value_t = 1000)]
        customers: u32,
        /// Days.
        #[arg(long, default_value_t = 200)]
        days: u32,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// A holiday week starting on this day, in which everyone is 70% less active.
        #[arg(long)]
        holiday: Option<u32>,
        /// Also write each customer's generated pattern (CSV: customer_id,profile,drift_day) here.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The live service end to end on a real broker, against a bare consumer; latency.
    Kafka {
        /// Bootstrap servers (start a local broker with deploy/kafka/kafka.sh start).
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Customers in the generated history.
        #[arg(long, default_value_t = 20_000)]
        customers: u32,
        /// Days of history.
        #[arg(long, default_value_t = 120)]
        days: u32,
        /// Partitions per topic.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// Offered load of the first latency phase, events/s (the second offers half
        /// the highest rate `run` sustained).
        #[arg(long, default_value_t = 20_000)]
        rate: u32,
        /// Length of each latency phase, seconds.
        #[arg(long, default_value_t = 20)]
        latency_secs: u32,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Customers in the changelog of the restore phase.
        #[arg(long, default_value_t = 1_000_000)]
        restore_customers: u32,
        /// Runs of each guarantee, alternating, in the exactly-once comparison.
        #[arg(long, default_value_t = 3)]
        guarantee_trials: u32,
        /// Configuration file (engine and service settings; topics and group are fresh).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The engine alone: decode + apply, apply alone, memory per customer.
    Engine {
        /// Distinct customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: u32,
        /// Events.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

fn open_output(target: &str) -> Result<Box<dyn Write>> {
    Ok(if target == "-" {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            File::create(target).with_context(|| format!("cannot create {target}"))?,
        ))
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("churnsignal: {e:#}");
            eprintln!("{}", churnsignal::config::secret::redact(&message));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &churnsignal::config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Redacting(io::stderr()));
    match cfg.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Standard error with every registered secret value replaced (the log writer: a
/// secret that reaches a log line by any path is not printed). The formatter writes
/// each event with one call.
struct Redacting(io::Stderr);

impl io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(churnsignal::config::secret::redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Raises the soft limit of open files to the hard limit, so that many clients (or a
/// large consumer group's sockets) do not exhaust it, and says so.
fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(before), Ok(after)) if after > before => {
            tracing::info!(from = before, to = after, "raised the open-file soft limit")
        }
        (_, Err(e)) => tracing::warn!(error = %e, "cannot raise the open-file soft limit"),
        _ => {}
    }
}

/// The small runtime the long-running commands wait for their signals on (their work
/// runs on threads of their own).
fn signal_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Resolves on SIGINT or SIGTERM.
async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config } => {
            let cfg = load_config(config.as_deref())?;
            init_logging(&cfg.log);
            raise_open_file_limit();
            let report = signal_runtime()?.block_on(churnsignal::kafka::run(cfg, termination()))?;
            tracing::info!(
                events = report.events,
                dead_letters = report.dead_letters,
                alerts = report.alerts,
                "stopped"
            );
            Ok(())
        }
        Command::Slack { config } => {
            let cfg = load_config(config.as_deref())?;
            init_logging(&cfg.log);
            raise_open_file_limit();
            let report = signal_runtime()?.block_on(churnsignal::slack::run(cfg, termination()))?;
            tracing::info!(posted = report.posted, "stopped");
            Ok(())
        }
        Command::Produce { input, config } => {
            let cfg = load_config(config.as_deref())?;
            let reader: Box<dyn BufRead> = if input == "-" {
                Box::new(io::stdin().lock())
            } else {
                Box::new(BufReader::new(
                    File::open(&input).with_context(|| format!("cannot open {input}"))?,
                ))
            };
            let p = churnsignal::kafka::produce::produce(&cfg, reader);
            for (line, why) in &p.first_invalid {
                eprintln!("line {line}: {why}");
            }
            let total: u64 = p.by_topic.values().sum();
            eprintln!(
                "produced {total} events ({}), skipped {} invalid lines",
                p.by_topic
                    .iter()
                    .map(|(t, n)| format!("{t}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.invalid
            );
            if let Some(e) = p.error {
                bail!("{e}");
            }
            if p.invalid > 0 {
                bail!(
                    "{} invalid lines were skipped (every valid one was delivered)",
                    p.invalid
                );
            }
            Ok(())
        }
        Command::Probe { url } => {
            let status =
                churnsignal::telemetry::http::probe(&url, std::time::Duration::from_secs(3))?;
            if !(200..300).contains(&status) {
                bail!("{url} answered {status}");
            }
            Ok(())
        }
        Command::Replay {
            input,
            config,
            alerts,
            snapshot,
            as_of,
        } => {
            let cfg = load_config(config.as_deref())?;
            let as_of = parse_as_of(as_of.as_deref())?;
            let reader: Box<dyn BufRead> = if input == "-" {
                Box::new(BufReader::new(io::stdin().lock()))
            } else {
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    File::open(&input).with_context(|| format!("cannot open {input}"))?,
                ))
            };
            if snapshot.as_deref() == Some("-") && alerts == "-" {
                bail!("--snapshot - and --alerts - would both write to standard output; give one a file");
            }
            let mut alerts_out = open_output(&alerts)?;
            let mut snap_out = match &snapshot {
                Some(s) => Some(open_output(s)?),
                None => None,
            };
            let opts = replay::Options {
                as_of,
                now: Some(Timestamp(chrono::Utc::now().timestamp_millis())),
            };
            let report = replay::run(
                reader,
                &cfg,
                &opts,
                &mut alerts_out,
                snap_out.as_mut().map(|w| w as &mut dyn Write),
            )?;
            eprintln!("{}", report.render());
            if report.lines > 0 && report.invalid == report.lines {
                bail!(
                    "not one of the {} lines of {input} is a valid event",
                    report.lines
                );
            }
            Ok(())
        }
        Command::Evaluate {
            input,
            labels,
            config,
            as_of,
            horizon_days,
            windows,
            json,
        } => {
            let cfg = load_config(config.as_deref())?;
            let as_of = parse_as_of(as_of.as_deref())?;
            if horizon_days.is_nan()
                || horizon_days <= 0.0
                || windows.iter().any(|w| w.is_nan() || *w <= 0.0)
            {
                bail!("--horizon-days and --windows must be positive numbers of days");
            }
            let history = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let text = std::fs::read_to_string(&labels)
                .with_context(|| format!("cannot read {}", labels.display()))?;
            let labels = churnsignal::evaluate::read_labels(&text)
                .with_context(|| format!("in {}", labels.display()))?;
            let opts = churnsignal::evaluate::Options {
                windows_days: windows,
                as_of,
                horizon_days,
            };
            let report = churnsignal::evaluate::run(&history, &labels, &cfg, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Demo {
            customers,
            days,
            speed,
            seed,
            listen,
        } => {
            if speed.is_nan() || speed <= 0.0 {
                bail!("--speed must be greater than 0 (simulated days per second), got {speed}");
            }
            let log = churnsignal::config::LogConfig {
                level: "warn".into(),
                ..Default::default()
            };
            init_logging(&log);
            raise_open_file_limit();
            let opts = churnsignal::demo::Options {
                customers,
                days,
                speed,
                seed,
                listen,
            };
            churnsignal::demo::run(&opts, &mut io::stdout())?;
            Ok(())
        }
        Command::CreateTopics {
            config,
            partitions,
            replication_factor,
        } => {
            let cfg = load_config(config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let created = rt.block_on(churnsignal::kafka::topics::create(
                &cfg.kafka,
                partitions,
                replication_factor,
            ))?;
            for t in &created {
                println!("created {t}");
            }
            if created.is_empty() {
                println!("all topics exist");
            }
            Ok(())
        }
        Command::CheckConfig { file } => {
            load_config(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Generate {
            customers,
            days,
            seed,
            holiday,
            labels,
        } => {
            let spec = generate::Spec {
                customers,
                days,
                seed,
                holiday: holiday.map(|d| (d, 0.3)),
                ..generate::Spec::default()
            };
            let history = generate::History::new(spec);
            if let Some(path) = labels {
                let mut w = BufWriter::new(
                    File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                );
                writeln!(w, "customer_id,profile,drift_day")?;
                for (c, t) in history.traits().iter().enumerate() {
                    writeln!(
                        w,
                        "{},{:?},{}",
                        generate::customer_id(c as u32),
                        t.profile,
                        t.drift_day
                    )?;
                }
                w.flush()?;
            }
            let mut out = BufWriter::new(io::stdout().lock());
            for g in history {
                g.write_json(&mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Kafka {
                    brokers,
                    customers,
                    days,
                    partitions,
                    rate,
                    latency_secs,
                    seed,
                    restore_customers,
                    guarantee_trials,
                    config,
                    json,
                },
        } => {
            let cfg = load_config(config.as_deref())?;
            let log = churnsignal::config::LogConfig {
                level: "warn".into(),
                ..cfg.log.clone()
            };
            init_logging(&log);
            let opts = bench::kafka::Options {
                brokers,
                customers,
                days,
                partitions,
                rate,
                latency_secs,
                seed,
                restore_customers,
                guarantee_trials,
            };
            let r = bench::kafka::run(&opts, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.render());
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Engine {
                    customers,
                    events,
                    seed,
                    config,
                    json,
                },
        } => {
            let cfg = load_config(config.as_deref())?;
            let r = bench::engine(
                &bench::Options {
                    customers,
                    events,
                    seed,
                },
                &churnsignal::config::EngineSettings::new(&cfg)?,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.render());
            }
            Ok(())
        }
    }
}

/// The `--as-of` option of `replay` and `evaluate`.
fn parse_as_of(as_of: Option<&str>) -> Result<Option<Timestamp>> {
    as_of
        .map(|s| {
            Timestamp::parse_rfc3339(s).with_context(|| {
                format!("--as-of {s:?} is not an RFC 3339 timestamp with offset (e.g. 2026-03-01T00:00:00Z)")
            })
        })
        .transpose()
}
