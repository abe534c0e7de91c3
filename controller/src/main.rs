//! The operator binary: parse flags, set up logging, connect, run until SIGTERM or Ctrl-C.
//! `pubsubkafka-controller cleanup [FLAGS]` runs the uninstall step instead (see
//! [`pubsubkafka_controller::cleanup`]).

use std::process::ExitCode;

use clap::Parser;
use pubsubkafka_contract::telemetry::{self, TraceExport, shutdown_signal};
use pubsubkafka_controller::cleanup::{self, CleanupArgs};
use pubsubkafka_controller::operator;
use pubsubkafka_controller::settings::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "cleanup") {
        argv.remove(1);
        argv[0] = "pubsubkafka-controller cleanup".into();
        return cleanup_main(CleanupArgs::parse_from(argv)).await;
    }
    let args = Args::parse_from(argv);
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

/// `pubsubkafka-controller cleanup`: one pass, exit 0 when nothing of the operator is left.
async fn cleanup_main(args: CleanupArgs) -> ExitCode {
    let _telemetry = telemetry::init(&args.operator.log_format, "info,rdkafka=warn", None);
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: no Kubernetes configuration (kubeconfig or in-cluster): {e}");
            return ExitCode::FAILURE;
        }
    };
    match cleanup::run(args, client).await {
        Ok(summary) => {
            println!(
                "removed the principals, ACLs and finalizers of {} OrderConsumers, {} \
                 OrderGateways and {} DLQReplays, and the finalizers of {} KafkaTopics",
                summary.consumers.len(),
                summary.gateways.len(),
                summary.replays.len(),
                summary.topics.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cleanup did not finish");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
