//! The service's wiring: start (clients, threads, HTTP), stop (a bounded, graceful
//! shutdown) and `run(cfg, shutdown)`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::ThreadedProducer;

use crate::config::{Config, EngineSettings};
use crate::kafka::assignment::Epochs;
use crate::kafka::client::{consumer_config, describe, producer_config};
use crate::kafka::consumer::plan::Membership;
use crate::kafka::consumer::rebalance::settle_time;
use crate::kafka::consumer::{poll_loop, ConsumerCtx, Shared, BATCH};
use crate::kafka::preflight::{check_changelog, check_topics};
use crate::kafka::producer::ProducerCtx;
use crate::kafka::status::{Failure, RunError, Status};
use crate::kafka::work::{FullBuffers, Work};
use crate::kafka::worker::Worker;
use crate::telemetry::http::NotOk;
use crate::telemetry::{self, http};

/// A running service. Stop it with [`Service::stop`].
pub struct Service {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) poll: Option<JoinHandle<()>>,
    pub(crate) lag: Option<JoinHandle<()>>,
    pub(crate) workers: Vec<JoinHandle<()>>,
    pub(crate) http: Option<http::Server>,
    pub(crate) api: Option<http::Server>,
}

/// The operations server on `http.listen` and the customer API on
/// `http.customer_api.listen`, each when its address is set.
pub(crate) fn start_http(
    c: &crate::config::HttpConfig,
    probe: Arc<dyn http::Probe>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(Option<http::Server>, Option<http::Server>), RunError> {
    let limits = http::Limits::from_config(c);
    let bind = |listen: &str, router, name| -> Result<Option<http::Server>, RunError> {
        if listen.is_empty() {
            return Ok(None);
        }
        let failed = |message: String| RunError::Http {
            listen: listen.to_owned(),
            message,
        };
        let addr: SocketAddr = listen.parse().map_err(|e| failed(format!("{e}")))?;
        http::serve(addr, router, limits, name)
            .map(Some)
            .map_err(|e| failed(e.to_string()))
    };
    let ops = bind(&c.listen, http::ops(probe.clone(), metrics), "http")?;
    let a = &c.customer_api;
    let api = if a.listen.is_empty() {
        None
    } else {
        let access =
            http::Access::load(a, |k| std::env::var(k).ok()).map_err(|message| RunError::Http {
                listen: a.listen.clone(),
                message,
            })?;
        let limit = http::RateLimit::new(a.rate_per_sec, a.rate_burst);
        bind(&a.listen, http::api(probe, access, limit), "customer-api")?
    };
    Ok((ops, api))
}

/// Totals at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Input messages processed.
    pub events: u64,
    /// Of which dead-lettered.
    pub dead_letters: u64,
    /// Alerts produced.
    pub alerts: u64,
    /// Records acknowledged by the broker.
    pub acked: u64,
}

/// Options for [`Service::start`] that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Keep every event-to-alert latency in [`Status::latencies`] (benchmarks).
    pub record_latencies: bool,
}

impl Service {
    /// Checks the topics, joins the group and starts processing.
    pub fn start(cfg: Config, opts: StartOptions) -> Result<Service, RunError> {
        let settings = Arc::new(EngineSettings::new(&cfg)?);
        let cfg = Arc::new(cfg);
        let k = &cfg.kafka;
        let workers = if k.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            k.workers
        };
        let inputs = Arc::new(k.input_topics());
        let status = Arc::new(Status::new(workers, opts.record_latencies));
        let metrics = telemetry::install();
        telemetry::register_error_codes(
            &crate::kafka::client::common_client_errors(),
            &crate::kafka::client::common_produce_errors(),
        );
        for t in inputs.iter() {
            // Zero for every reason from the start: rates and ratios in the alert rules
            // see a topic's dead letters before the first one.
            for reason in crate::decode::Reason::ALL {
                telemetry::dead_letters(&t.name, reason.code()).increment(0);
            }
        }
        let pcfg = producer_config(k);
        tracing::debug!(config = %describe(&pcfg), "producer");
        let producer: ThreadedProducer<ProducerCtx> = pcfg
            .create_with_context(ProducerCtx {
                status: status.clone(),
                transactional: false,
            })
            .map_err(|e| RunError::Client(e.to_string()))?;
        let per_worker = (k.worker_queue_events / BATCH).max(1);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = sync_channel::<Work>(per_worker);
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            inputs: inputs.clone(),
            status: status.clone(),
            workers: Mutex::new(senders),
            membership: Mutex::new(Membership::new(inputs.len())),
            epochs: Arc::new(Epochs::default()),
            producer: producer.clone(),
            paused: AtomicBool::new(false),
            own: Arc::new(Mutex::new(BTreeMap::new())),
            full: Arc::new(FullBuffers::default()),
            reports: Mutex::new(Vec::new()),
            reports_ready: AtomicBool::new(false),
            settle: settle_time(k),
        });
        let ccfg = consumer_config(k);
        tracing::debug!(config = %describe(&ccfg), "consumer");
        let consumer: BaseConsumer<ConsumerCtx> = ccfg
            .create_with_context(ConsumerCtx {
                shared: shared.clone(),
            })
            .map_err(|e| RunError::Client(e.to_string()))?;
        let partitions = check_topics(&consumer, &cfg)?;
        check_changelog(&consumer, &cfg, partitions)?;
        let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| RunError::Client(e.to_string()))?;

        let probe: Arc<dyn http::Probe> = Arc::new(Probe {
            shared: shared.clone(),
        });
        let (http, api) = start_http(&cfg.http, probe, metrics)?;

        let mut worker_threads = Vec::new();
        for (id, rx) in receivers.into_iter().enumerate() {
            let w = Worker::new(
                id,
                cfg.clone(),
                settings.clone(),
                producer.clone(),
                status.clone(),
                shared.epochs.clone(),
                shared.full.clone(),
            );
            worker_threads.push(
                std::thread::Builder::new()
                    .name(format!("churnsignal-worker-{id}"))
                    .spawn(move || w.run(rx))
                    .map_err(|e| thread_failed("worker", e))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lag = {
            let (k, inputs, own, stop) =
                (k.clone(), inputs.to_vec(), shared.own.clone(), stop.clone());
            std::thread::Builder::new()
                .name("churnsignal-lag".into())
                .spawn(move || crate::kafka::lag::run(k, inputs, own, stop))
                .map_err(|e| thread_failed("lag monitor", e))?
        };
        let poll = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("churnsignal-consumer".into())
                .spawn(move || poll_loop(consumer, shared, stop))
                .map_err(|e| thread_failed("consumer", e))?
        };
        tracing::info!(
            brokers = %k.brokers,
            group = %k.group_id,
            topics = ?names,
            workers,
            http = ?http.as_ref().map(|h| h.addr()),
            customer_api = ?api.as_ref().map(|h| h.addr()),
            "churnsignal running"
        );
        Ok(Service {
            shared,
            stop,
            poll: Some(poll),
            lag: Some(lag),
            workers: worker_threads,
            http,
            api,
        })
    }

    /// What the service has done so far.
    pub fn status(&self) -> &Arc<Status> {
        &self.shared.status
    }

    /// The HTTP server's address, if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr())
    }

    /// The customer API's address, if it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|h| h.addr())
    }

    /// Readiness as `/readyz` answers it.
    pub fn ready(&self) -> Result<(), NotOk> {
        self.shared
            .status
            .ready(self.shared.cfg.kafka.ready_max_lag)
    }

    /// Graceful shutdown: readiness goes false, queued work drains, the producer
    /// delivers, acknowledged progress is committed, the consumer leaves the group.
    /// Bounded by `kafka.shutdown_timeout_secs` also when the broker is unreachable.
    pub fn stop(mut self) -> Result<Report, RunError> {
        let s = &self.shared.status;
        s.stopping.store(true, Ordering::SeqCst);
        telemetry::ready(false);
        let total = Duration::from_secs(self.shared.cfg.kafka.shutdown_timeout_secs);
        let deadline = Instant::now() + total;
        // Sends still waiting for room in the producer queue give up at 60% of the
        // budget, leaving time to flush, commit and close.
        *s.abandon_after.lock().expect("abandon lock") = Some(Instant::now() + total * 6 / 10);
        self.stop.store(true, Ordering::SeqCst);
        let poll = self.poll.take().expect("poll thread");
        while !poll.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if poll.is_finished() {
            let _ = poll.join();
            // Workers end once their channels close; one still waiting for the broker
            // at the deadline is left behind.
            while self.workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            for w in self.workers.drain(..) {
                if w.is_finished() {
                    let _ = w.join();
                }
            }
        } else {
            tracing::warn!("shutdown deadline reached; leaving without the consumer's goodbye");
        }
        // What is left of the shutdown time (at most the servers' own grace) for
        // requests in flight; idle and slow connections close at once.
        for h in [self.http.take(), self.api.take()].into_iter().flatten() {
            h.stop_within(deadline.saturating_duration_since(Instant::now()));
        }
        // The lag monitor ends within its current request (left behind past 1 s).
        if let Some(lag) = self.lag.take() {
            let until = Instant::now() + Duration::from_secs(1);
            while !lag.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if lag.is_finished() {
                let _ = lag.join();
            }
        }
        let report = Report {
            events: s.events.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            alerts: s.alerts_sent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
        };
        match s.failure() {
            Some(f) => Err(RunError::Failed(f)),
            None => Ok(report),
        }
    }
}

/// Runs until `shutdown` resolves or the service fails; then stops gracefully.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Report, RunError> {
    let service = tokio::task::spawn_blocking(move || Service::start(cfg, StartOptions::default()))
        .await
        .map_err(|e| thread_failed("start", e))??;
    let status = service.status().clone();
    let failed = async move {
        loop {
            if status.failure().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        _ = failed => {}
    }
    tokio::task::spawn_blocking(move || service.stop())
        .await
        .map_err(|e| thread_failed("stop", e))?
}

pub(crate) fn thread_failed(thread: &'static str, error: impl std::fmt::Display) -> RunError {
    RunError::Failed(Failure::Thread {
        thread,
        error: error.to_string(),
    })
}

pub(crate) struct Probe {
    pub(crate) shared: Arc<Shared>,
}

impl http::Probe for Probe {
    fn live(&self) -> Result<(), NotOk> {
        self.shared.status.live(Duration::from_secs(
            self.shared.cfg.http.liveness_timeout_secs,
        ))
    }

    fn ready(&self) -> Result<(), NotOk> {
        let r = self
            .shared
            .status
            .ready(self.shared.cfg.kafka.ready_max_lag);
        telemetry::ready(r.is_ok());
        r
    }

    fn customer(&self, id: &str) -> http::Lookup {
        let n = self.shared.worker_count();
        if n == 0 || self.shared.status.stopping.load(Ordering::Relaxed) {
            return http::Lookup::Unavailable("shutting down".into());
        }
        let mut replies = Vec::new();
        for w in 0..n {
            let (tx, rx) = sync_channel(1);
            if self
                .shared
                .send_to(w, Work::Query(id.to_owned(), tx), Duration::from_secs(5))
            {
                replies.push(rx);
            }
        }
        if replies.len() < n {
            return http::Lookup::Unavailable("a worker is busy; try again".into());
        }
        for rx in replies {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Some(rec)) => return http::Lookup::Found(rec.to_json()),
                Ok(None) => {}
                Err(_) => return http::Lookup::Unavailable("a worker is busy; try again".into()),
            }
        }
        http::Lookup::NotOwned
    }
}
