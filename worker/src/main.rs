//! The worker binary: one subcommand per data-plane role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pubsubkafka_worker::config::WorkerConfig;
use pubsubkafka_worker::consumer::RuntimeError;
use pubsubkafka_worker::gateway::{GatewayArgs, GatewayError};
use pubsubkafka_worker::handler::{ConnectError, Handler};
use pubsubkafka_worker::http::{self, Health};
use pubsubkafka_worker::metrics::Metrics;
use pubsubkafka_worker::outbox::{OutboxError, RelayArgs};
use pubsubkafka_worker::replay::{ReplayArgs, ReplayError};
use pubsubkafka_worker::telemetry::{self, TraceArgs, TraceExport, shutdown_signal};
use tracing::error;

/// Decoding an order allocates a few dozen small strings; mimalloc serves those faster than the
/// system allocator (measured with `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pubsubkafka-worker", version, about = "PubSubKafka data plane")]
struct Cli {
    /// Log format: json, text, or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "PSK_LOG_FORMAT", default_value = "auto", global = true)]
    log_format: String,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume a topic with retries and a dead-letter topic (what OrderConsumer pods run).
    Consume {
        /// The worker configuration the operator renders (worker.json).
        #[arg(long, env = "PSK_WORKER_CONFIG")]
        config: PathBuf,
        /// Serve /metrics, /healthz and /readyz here (default: 0.0.0.0:<httpPort>).
        #[arg(long, env = "PSK_HTTP_ADDR")]
        http_addr: Option<SocketAddr>,
    },
    /// Accept orders and users over HTTP and publish them (202 after the broker's ack).
    Gateway(GatewayArgs),
    /// Publish the gateway's pending outbox rows.
    OutboxRelay(RelayArgs),
    /// Republish dead letters to their original topics.
    Replay(ReplayArgs),
}

/// Why the worker stopped: what `main` prints before exiting with a failure.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("reading {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a worker configuration: {source}", path.display())]
    InvalidConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("binding the HTTP endpoint {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing the summary to {}: {source}", path.display())]
    WriteSummary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Handler(#[from] ConnectError),
    #[error(transparent)]
    Consumer(#[from] RuntimeError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Relay(#[from] OutboxError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A consumer reads its trace settings from worker.json (what the operator rendered); the
    // command line (OTEL_EXPORTER_OTLP_ENDPOINT) applies when the file names none.
    let config = match &cli.command {
        Command::Consume { config, .. } => match read_config(config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let endpoint = config
        .as_ref()
        .and_then(|c| c.tracing.as_ref())
        .map(|t| t.otlp_endpoint.as_str())
        .or(cli.trace.otlp_endpoint.as_deref());
    let service = match &cli.command {
        Command::Consume { .. } => "pubsubkafka-worker",
        Command::Gateway(_) => "pubsubkafka-gateway",
        Command::OutboxRelay(_) => "pubsubkafka-outbox-relay",
        Command::Replay(_) => "pubsubkafka-replay",
    };
    let export = TraceExport::new(endpoint, service);
    let telemetry = telemetry::init(&cli.log_format, "info,rdkafka=warn", export.as_ref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(async {
        // First: a SIGTERM while starting must stop the process cleanly, not kill it.
        let shutdown = shutdown_signal();
        match cli.command {
            Command::Consume { http_addr, .. } => {
                let config = config.expect("read above");
                consume(config, http_addr, shutdown).await
            }
            Command::Gateway(args) => {
                let metrics = Metrics::new();
                let health = Arc::new(Health::default());
                Ok(pubsubkafka_worker::gateway::run(args, metrics, health, shutdown).await?)
            }
            Command::OutboxRelay(args) => {
                let metrics = Metrics::new();
                let health = Arc::new(Health::default());
                serve_probes(args.http_addr, metrics.clone(), Arc::clone(&health)).await?;
                Ok(pubsubkafka_worker::outbox::relay(args, metrics, health, shutdown).await?)
            }
            Command::Replay(args) => {
                let summary_file = args.summary_file.clone();
                let summary = pubsubkafka_worker::replay::run(args).await?;
                let json = serde_json::to_string(&summary).expect("serializes");
                println!("{json}");
                if let Some(path) = summary_file {
                    std::fs::write(&path, &json)
                        .map_err(|source| Error::WriteSummary { path, source })?;
                }
                Ok(())
            }
        }
    });
    // Outside the runtime: the exporter's final flush blocks.
    drop(runtime);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "the worker stopped on an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

fn read_config(config_path: &PathBuf) -> Result<WorkerConfig, Error> {
    let text = std::fs::read_to_string(config_path).map_err(|source| Error::ReadConfig {
        path: config_path.clone(),
        source,
    })?;
    WorkerConfig::from_json(&text).map_err(|source| Error::InvalidConfig {
        path: config_path.clone(),
        source,
    })
}

async fn consume(
    config: WorkerConfig,
    http_addr: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Metrics::new();
    metrics.prime_consumer(&config.source_topic, &config.dead_letter_topic);
    let health = Arc::new(Health::default());
    let addr = http_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], config.http_port)));
    serve_probes(addr, metrics.clone(), Arc::clone(&health)).await?;
    let handler = Handler::connect(&config.handler).await?;
    pubsubkafka_worker::consumer::run(config, handler, metrics, health, shutdown).await?;
    Ok(())
}

/// Serves /metrics, /healthz and /readyz on `addr` in the background.
async fn serve_probes(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let routes = http::routes(metrics, health);
    tokio::spawn(async move { axum::serve(listener, routes).await });
    Ok(())
}
