//! The HTTP handler: POSTs each record to a URL with its headers. 2xx means done, 4xx means the
//! receiver refuses it (Rejected), 5xx and timeouts may pass on retry (Transient), and a
//! refused connection is an outage.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{ConnectError, Delivery, HandlerError};
use crate::config::ErrorClass;
use crate::headers;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct HttpHandler {
    client: Client<Https, Full<Bytes>>,
    url: http::Uri,
    timeout: Duration,
}

impl HttpHandler {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let uri: http::Uri = url.parse().map_err(|source| ConnectError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(ConnectError::UrlScheme(url.to_owned()));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(ConnectError::NativeRoots)?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            client,
            url: uri,
            timeout,
        })
    }

    pub async fn post(&self, d: &Delivery<'_>) -> Result<(), HandlerError> {
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, d.content_type)
            .header("x-kafka-topic", d.topic)
            .header("x-kafka-partition", d.partition.to_string())
            .header("x-kafka-offset", d.offset.to_string());
        if let Some(key) = d.key.and_then(|k| std::str::from_utf8(k).ok()) {
            request = request.header("x-kafka-key", key);
        }
        if let Some(event) = d.event {
            request = request.header("x-order-id", event.order_id.as_str());
        }
        if let Some(c) = d.correlation_id {
            request = request.header(headers::CORRELATION_ID, c);
        }
        if let Some(t) = downstream_traceparent(d.traceparent) {
            request = request.header(headers::TRACEPARENT, t);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(d.value)))
            .map_err(|e| HandlerError::Failed {
                class: ErrorClass::Transient,
                message: format!("building the request: {e}"),
            })?;
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Err(_) => {
                return Err(HandlerError::Failed {
                    class: ErrorClass::Transient,
                    message: format!("no answer from {} within {:?}", self.url, self.timeout),
                });
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(HandlerError::Unavailable(format!(
                    "{}: {}",
                    self.url,
                    super::with_causes(&e)
                )));
            }
            Ok(Err(e)) => {
                return Err(HandlerError::Failed {
                    class: ErrorClass::Transient,
                    message: format!("{}: {}", self.url, super::with_causes(&e)),
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        if status.is_success() {
            Ok(())
        } else if status.is_client_error()
            && status != http::StatusCode::REQUEST_TIMEOUT
            && status != http::StatusCode::TOO_MANY_REQUESTS
        {
            Err(HandlerError::Failed {
                class: ErrorClass::Rejected,
                message: format!("{} answered {status}", self.url),
            })
        } else {
            Err(HandlerError::Failed {
                class: ErrorClass::Transient,
                message: format!("{} answered {status}", self.url),
            })
        }
    }
}

/// The `traceparent` the receiving service continues from: the worker's current span when it is
/// part of the record's trace (so the receiver's spans nest under the worker's), else the
/// record's own header unchanged.
fn downstream_traceparent(record: Option<&str>) -> Option<String> {
    let ours = crate::tracing_ctx::traceparent(&tracing::Span::current());
    let trace_of = |tp: &str| headers::parse_traceparent(tp).map(|t| t.trace_id.to_owned());
    match (ours, record) {
        (Some(ours), Some(record)) if trace_of(&ours) == trace_of(record) => Some(ours),
        (Some(ours), None) => Some(ours),
        (_, record) => record.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_receiver_gets_the_records_context_when_the_worker_has_none() {
        assert_eq!(
            downstream_traceparent(Some(RECORD)).as_deref(),
            Some(RECORD)
        );
        assert_eq!(downstream_traceparent(None), None);
    }

    #[test]
    fn the_receiver_continues_from_the_workers_span_within_the_records_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let record = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: headers::TRACEPARENT,
                value: Some(RECORD),
            });
            let span = tracing::info_span!("record");
            crate::tracing_ctx::set_parent_from_headers(&span, Some(&record));
            let sent = span
                .in_scope(|| downstream_traceparent(Some(RECORD)))
                .unwrap();
            assert_eq!(sent, crate::tracing_ctx::traceparent(&span).unwrap());
            assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            // A span of another trace (no wiring) does not replace the record's context.
            let other = tracing::info_span!("unrelated");
            let sent = other.in_scope(|| downstream_traceparent(Some(RECORD)));
            assert_eq!(sent.as_deref(), Some(RECORD));
        });
    }
}
