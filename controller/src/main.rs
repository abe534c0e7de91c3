//! The operator binary: parse flags, set up logging, connect, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use pubsubkafka_controller::operator;
use pubsubkafka_controller::settings::Args;
use pubsubkafka_worker::telemetry::{self, TraceExport, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let export = TraceExport::new(
        args.trace.otlp_endpoint.as_deref(),
        "pubsubkafka-controller",
    );
    let telemetry = telemetry::init(
        &args.log_format,
        "info,kube_runtime=warn,rdkafka=warn",
        export.as_ref(),
    );
    // Installed first, so a SIGTERM during start-up stops the operator cleanly.
    let shutdown = shutdown_signal();
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes configuration (kubeconfig or in-cluster)");
            return ExitCode::FAILURE;
        }
    };
    let code = match operator::run(args, client, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the operator could not start");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    // The last spans (the final reconciles) leave before the process does.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
