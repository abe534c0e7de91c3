//! A real trace backend for the local stack: Jaeger v2, built from the Go module proxy by
//! `scripts/install-tools.sh`, with an OTLP/HTTP receiver and in-memory storage on free loopback
//! ports. Tests and the demo read traces back through Jaeger's HTTP query API
//! (`/api/traces/<trace id>`, what its UI reads). The web UI itself is not in the Go module (its
//! assets are built with npm from another repository and published to no registry this project
//! uses), so this Jaeger serves the query API and a placeholder page.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{Lifetime, Proc, wait_until};
use crate::{Error, free_port, tools, worker};

/// How to reach a running Jaeger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JaegerInfo {
    /// Base URL of the OTLP/HTTP receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: String,
    /// The query API (`/api/services`, `/api/traces/<id>`).
    pub query_url: String,
    pub query_port: u16,
}

/// A Jaeger process owned by this value (or detached).
#[derive(Debug)]
pub struct Jaeger {
    pub info: JaegerInfo,
    proc_: Option<Proc>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The collector pipeline: OTLP/HTTP in (on `otlp_host`: loopback, or the Kubernetes node's
/// address so that pods export too), memory storage, the query extension on loopback, and no
/// internal metrics endpoint (it would need a port of its own).
fn config(otlp_host: &str, otlp: u16, query_http: u16, query_grpc: u16) -> String {
    format!(
        "# Written by the PubSubKafka test harness.\n\
service:\n\
\x20 extensions: [jaeger_storage, jaeger_query]\n\
\x20 pipelines:\n\
\x20   traces:\n\
\x20     receivers: [otlp]\n\
\x20     processors: [batch]\n\
\x20     exporters: [jaeger_storage_exporter]\n\
\x20 telemetry:\n\
\x20   metrics:\n\
\x20     level: none\n\
extensions:\n\
\x20 jaeger_query:\n\
\x20   storage:\n\
\x20     traces: memstore\n\
\x20   http:\n\
\x20     endpoint: 127.0.0.1:{query_http}\n\
\x20   grpc:\n\
\x20     endpoint: 127.0.0.1:{query_grpc}\n\
\x20 jaeger_storage:\n\
\x20   backends:\n\
\x20     memstore:\n\
\x20       memory:\n\
\x20         max_traces: 100000\n\
receivers:\n\
\x20 otlp:\n\
\x20   protocols:\n\
\x20     http:\n\
\x20       endpoint: {otlp_host}:{otlp}\n\
processors:\n\
\x20 batch:\n\
\x20   timeout: 200ms\n\
exporters:\n\
\x20 jaeger_storage_exporter:\n\
\x20   trace_storage: memstore\n"
    )
}

impl Jaeger {
    /// Starts Jaeger with its config and log under `dir`; waits until its query API answers.
    /// Its OTLP receiver listens on `otlp_host`.
    pub fn start(dir: &Path, lifetime: Lifetime, otlp_host: &str) -> Result<Self, Error> {
        crate::process::retry_port_clash(|| Self::start_once(dir, lifetime, otlp_host))
    }

    fn start_once(dir: &Path, lifetime: Lifetime, otlp_host: &str) -> Result<Self, Error> {
        let bin = tools::jaeger()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the jaeger dir", e))?;
        let (otlp, query_http, query_grpc) = (free_port()?, free_port()?, free_port()?);
        let config_file = dir.join("jaeger.yaml");
        std::fs::write(
            &config_file,
            config(otlp_host, otlp, query_http, query_grpc),
        )
        .map_err(|e| Error::io("writing jaeger.yaml", e))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config_file);
        let mut proc_ = Proc::spawn("jaeger", cmd, &dir.join("jaeger.log"), lifetime, None)?;
        wait_until(
            &mut proc_,
            "the query API and the OTLP port",
            READY_TIMEOUT,
            || {
                match worker::http_get(query_http, "/api/services") {
                    Ok((200, _)) => {}
                    other => return Err(format!("query API: {other:?}")),
                }
                std::net::TcpStream::connect((otlp_host, otlp))
                    .map(|_| ())
                    .map_err(|e| format!("OTLP port: {e}"))
            },
        )?;
        Ok(Self {
            info: JaegerInfo {
                otlp_endpoint: format!("http://{otlp_host}:{otlp}"),
                query_url: format!("http://127.0.0.1:{query_http}"),
                query_port: query_http,
            },
            proc_: Some(proc_),
        })
    }

    /// Lets the process outlive this value; returns its pid.
    pub fn detach(mut self) -> Vec<u32> {
        self.proc_.take().map(Proc::detach).into_iter().collect()
    }
}

/// One span of a stored trace.
#[derive(Debug, Clone)]
pub struct StoredSpan {
    pub span_id: String,
    /// The parent within the trace (`CHILD_OF` reference); `None` for the root.
    pub parent_span_id: Option<String>,
    pub operation: String,
    pub service: String,
    /// Attributes as text (`span.kind`, `correlation_id`, ...).
    pub tags: BTreeMap<String, String>,
}

/// A trace as the backend stores it.
#[derive(Debug, Clone)]
pub struct StoredTrace {
    pub trace_id: String,
    pub spans: Vec<StoredSpan>,
}

impl StoredTrace {
    /// The spans of `service` named `operation`.
    pub fn find(&self, service: &str, operation: &str) -> Vec<&StoredSpan> {
        self.spans
            .iter()
            .filter(|s| s.service == service && s.operation == operation)
            .collect()
    }

    /// The span with id `span_id`.
    pub fn span(&self, span_id: &str) -> Option<&StoredSpan> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// True when `span` descends from `ancestor` through parent links inside this trace.
    pub fn descends_from(&self, span: &StoredSpan, ancestor: &StoredSpan) -> bool {
        let mut current = span.parent_span_id.as_deref();
        for _ in 0..self.spans.len() {
            match current {
                Some(id) if id == ancestor.span_id => return true,
                Some(id) => current = self.span(id).and_then(|s| s.parent_span_id.as_deref()),
                None => return false,
            }
        }
        false
    }

    /// `service: operation` of every span, for failure messages.
    pub fn outline(&self) -> String {
        self.spans
            .iter()
            .map(|s| format!("{}: {}", s.service, s.operation))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Jaeger's query API answer for one trace.
#[derive(Deserialize)]
struct TracesAnswer {
    #[serde(default)]
    data: Vec<RawTrace>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrace {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: Vec<RawSpan>,
    processes: BTreeMap<String, RawProcess>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Vec<RawReference>,
    #[serde(rename = "processID")]
    process_id: String,
    #[serde(default)]
    tags: Vec<RawTag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReference {
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProcess {
    service_name: String,
}

#[derive(Deserialize)]
struct RawTag {
    key: String,
    value: serde_json::Value,
}

impl JaegerInfo {
    /// The trace `trace_id` (32 hex digits), `Ok(None)` while the backend has none.
    pub fn trace(&self, trace_id: &str) -> Result<Option<StoredTrace>, String> {
        let (status, body) = worker::http_get(self.query_port, &format!("/api/traces/{trace_id}"))?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(format!("HTTP {status}: {body:.300}"));
        }
        let answer: TracesAnswer =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body:.300}"))?;
        let Some(raw) = answer.data.into_iter().next() else {
            return Ok(None);
        };
        let spans = raw
            .spans
            .into_iter()
            .map(|s| StoredSpan {
                parent_span_id: s
                    .references
                    .iter()
                    .find(|r| r.ref_type == "CHILD_OF")
                    .map(|r| r.span_id.clone()),
                service: raw
                    .processes
                    .get(&s.process_id)
                    .map(|p| p.service_name.clone())
                    .unwrap_or_default(),
                tags: s
                    .tags
                    .into_iter()
                    .map(|t| {
                        let text = match t.value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (t.key, text)
                    })
                    .collect(),
                span_id: s.span_id,
                operation: s.operation_name,
            })
            .collect();
        Ok(Some(StoredTrace {
            trace_id: raw.trace_id,
            spans,
        }))
    }

    /// Services that reported spans.
    pub fn services(&self) -> Result<Vec<String>, String> {
        let (_, body) = worker::http_get(self.query_port, "/api/services")?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }

    /// The query API's URL of a trace (JSON: every span with its service, parent and tags).
    pub fn trace_url(&self, trace_id: &str) -> String {
        format!("{}/api/traces/{trace_id}", self.query_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_yaml_with_the_query_api_on_loopback() {
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&config("10.88.0.1", 4318, 16686, 16685)).unwrap();
        assert_eq!(
            yaml["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
            "10.88.0.1:4318"
        );
        assert_eq!(
            yaml["extensions"]["jaeger_query"]["http"]["endpoint"],
            "127.0.0.1:16686"
        );
        assert_eq!(
            yaml["service"]["pipelines"]["traces"]["exporters"][0],
            "jaeger_storage_exporter"
        );
    }
}
