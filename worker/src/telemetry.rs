//! Process plumbing shared by every binary (the operator's too): logging set-up and the
//! shutdown signal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr: JSON in containers, readable text on a terminal (`format`: json, text or
/// auto). `RUST_LOG` overrides `default_filter`.
pub fn init_logging(format: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

/// A future that resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C. The handler is
/// installed when this is called, so a SIGTERM during start-up is not lost (nor fatal); call it
/// first thing, inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
