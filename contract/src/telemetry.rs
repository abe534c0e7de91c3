//! Process plumbing shared by every binary (the operator's too): logging, OpenTelemetry trace
//! export, and the shutdown signal.
//!
//! Tracing is off unless an OTLP endpoint is configured (`--otlp-endpoint`, the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, or `tracing.otlpEndpoint` in a worker's `worker.json`). When it
//! is on, the spans of this crate and of the operator are exported over OTLP/HTTP (protobuf) to
//! `<endpoint>/v1/traces` in batches; the standard `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_EXPORTER_OTLP_HEADERS`
//! variables apply. The worker's `tracing_ctx` carries the context across Kafka records.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The OTLP settings every binary takes on its command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceArgs {
    /// Export traces over OTLP/HTTP to this base URL (e.g. http://jaeger:4318; `/v1/traces` is
    /// appended). Tracing is off when neither this nor worker.json names an endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Where spans go and under which service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// Base URL of an OTLP/HTTP receiver.
    pub endpoint: String,
    /// `service.name`, unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
}

impl TraceExport {
    /// The export settings when `endpoint` is set and not blank.
    pub fn new(endpoint: Option<&str>, service_name: &str) -> Option<Self> {
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty())?;
        Some(Self {
            endpoint: endpoint.to_owned(),
            service_name: service_name.to_owned(),
        })
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// What stays alive while the process runs: dropping it (or [`Telemetry::shutdown`]) flushes the
/// spans still buffered.
#[must_use = "dropping the telemetry guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (at most a few seconds). Blocking: call it
    /// outside async code, or from `spawn_blocking`.
    pub fn shutdown(mut self) {
        self.flush_and_stop();
    }

    fn flush_and_stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.force_flush() {
                eprintln!("warning: flushing the last spans failed: {e}");
            }
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("warning: stopping the trace exporter failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

/// Targets whose spans are exported: ours, at info and above. Library spans (HTTP clients,
/// kube-runtime internals) would only add noise to an order's trace.
fn exported_targets() -> Targets {
    Targets::new()
        .with_target("pubsubkafka_worker", tracing::Level::INFO)
        .with_target("pubsubkafka_contract", tracing::Level::INFO)
        .with_target("pubsubkafka_controller", tracing::Level::INFO)
}

/// Target of the spans that exist for trace export only: one or two per request or batch on
/// the hot paths (the gateway's request and publish, the consumer's batch). The log layer leaves
/// them out, so without an OTLP endpoint they are never built (formatting their fields cost a
/// third of the gateway's CPU per request); log lines on those paths carry their own ids.
pub const TRACE_ONLY: &str = "pubsubkafka_worker::trace";

/// Logs to stderr: JSON in containers, readable text on a terminal (`format`: json, text or
/// auto). `RUST_LOG` overrides `default_filter`. With `export`, spans also go to an OTLP
/// receiver. A second call (tests) leaves the first subscriber in place.
pub fn init(format: &str, default_filter: &str, export: Option<&TraceExport>) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    // Colors only for a person at a terminal, not in a file `--log-format text` goes to.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        fmt.boxed()
    };
    let (provider, otel) = match export.map(build_provider) {
        Some(Ok(provider)) => {
            let tracer = provider.tracer("pubsubkafka");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_level(true);
            (Some(provider), Some(layer))
        }
        Some(Err(e)) => {
            eprintln!("warning: trace export is off: {e}");
            (None, None)
        }
        None => (None, None),
    };
    // The hint keeps the level of RUST_LOG: without it `log` records (librdkafka's client logs
    // a trace line per message) would all be built and filtered one by one.
    let hint = filter.max_level_hint();
    let logged = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == TRACE_ONLY)
    });
    let logged = match hint {
        Some(level) => logged.with_max_level_hint(level),
        None => logged,
    };
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(logged))
        // The filter wraps the Option: an absent layer with no filter of its own would take
        // every span, and the registry would build each one for nobody.
        .with(otel.with_filter(match provider {
            Some(_) => exported_targets(),
            None => Targets::new(),
        }))
        .try_init()
        .is_ok();
    if let (true, Some(export)) = (installed, export.filter(|_| provider.is_some())) {
        tracing::info!(endpoint = %export.traces_url(), service = %export.service_name, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// Logging only (no trace export); kept for callers that need nothing else.
pub fn init_logging(format: &str, default_filter: &str) {
    std::mem::forget(init(format, default_filter, None));
}

/// The OTLP exporter could not be built: trace export stays off.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter for {url}: {source}")]
struct ExporterError {
    url: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

fn build_provider(export: &TraceExport) -> Result<SdkTracerProvider, ExporterError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(export.traces_url())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| ExporterError {
            url: export.traces_url(),
            source,
        })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(export.service_name.clone());
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_turns_export_on_and_names_the_traces_url() {
        assert_eq!(TraceExport::new(None, "x"), None);
        assert_eq!(TraceExport::new(Some("  "), "x"), None);
        let e = TraceExport::new(Some("http://127.0.0.1:4318/"), "gateway").unwrap();
        assert_eq!(e.traces_url(), "http://127.0.0.1:4318/v1/traces");
        let e = TraceExport::new(Some("http://c:4318/v1/traces"), "gateway").unwrap();
        assert_eq!(e.traces_url(), "http://c:4318/v1/traces");
    }
}
