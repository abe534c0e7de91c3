//! W3C trace context across HTTP requests and Kafka records: one order is one trace, from the
//! gateway's request through the record's `traceparent` header to the worker's spans and the
//! dead-letter record.
//!
//! These helpers work on `tracing` spans. When trace export is off (no OTLP endpoint, see
//! [`crate::telemetry`]) spans carry no OpenTelemetry context: the setters do nothing and the
//! getters return `None`, so callers keep their own fallback (for instance the trace id already
//! in a record's headers).
//!
//! Two rules from `tracing-opentelemetry`: a span's remote parent must be set *before* the span
//! is first entered (or its context read), and a span's context exists only once it has been
//! created with a level and target the exporter keeps (info and above, this crate's spans).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::headers::TRACEPARENT;

/// W3C `tracestate`, carried along with `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// Kafka record headers as a propagation carrier (first value of a key, case-insensitive).
struct KafkaCarrier<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for KafkaCarrier<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::headers::get(Some(self.0), key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// HTTP request headers as a propagation carrier.
struct HttpCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HttpCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// What an injection produced: `traceparent` and, when the trace has one, `tracestate`.
#[derive(Default)]
struct Collected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

fn remote_context(carrier: &dyn Extractor) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The producer's span context in a record's `traceparent` (and `tracestate`), if valid.
pub fn remote_span_context<H: Headers>(headers: Option<&H>) -> Option<SpanContext> {
    let cx = remote_context(&KafkaCarrier(headers?))?;
    Some(cx.span().span_context().clone())
}

/// Makes `span` a child of the context in the record's `traceparent`: call it on the worker's
/// per-record span right after creating it, before it is entered or instrumented. True when a
/// remote parent was found and set; false without one (the span starts a trace of its own) or
/// when trace export is off.
pub fn set_parent_from_headers<H: Headers>(span: &tracing::Span, headers: Option<&H>) -> bool {
    // With export off the span is disabled: not even a walk of the headers.
    if span.is_disabled() {
        return false;
    }
    match headers.and_then(|h| remote_context(&KafkaCarrier(h))) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

/// Makes `span` a child of the caller's `traceparent` in an HTTP request (the gateway). Same
/// rules as [`set_parent_from_headers`].
pub fn set_parent_from_http(span: &tracing::Span, headers: &http::HeaderMap) -> bool {
    if span.is_disabled() {
        return false;
    }
    match remote_context(&HttpCarrier(headers)) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

/// Links `span` to the producer's span of a record, for a span that covers many records (a
/// batch) and so cannot be the child of each. Call before the span is entered.
pub fn link_from_headers<H: Headers>(span: &tracing::Span, headers: Option<&H>) {
    if let Some(cx) = remote_span_context(headers) {
        span.add_link(cx);
    }
}

/// The `traceparent` value of `span` (`00-<trace id>-<span id>-<flags>`); `None` when trace
/// export is off or the span is disabled. Reading it starts the span: set a remote parent first.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    collect(span).traceparent
}

fn collect(span: &tracing::Span) -> Collected {
    let mut out = Collected::default();
    if span.is_disabled() {
        return out;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut out);
    }
    out
}

/// The 32-hex-digit trace id of `span`, when it has an OpenTelemetry context.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The 16-hex-digit span id of `span`, when it has an OpenTelemetry context.
pub fn span_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_string())
}

/// `headers` with `traceparent` (and `tracestate`) naming `span` instead of whatever they named,
/// every other header unchanged and in order: for a record this process publishes on behalf of
/// another (a retry-topic hop, a dead letter), so the next consumer continues from `span`.
/// Without a span context (export off) the headers are returned unchanged.
pub fn with_span_context(headers: OwnedHeaders, span: &tracing::Span) -> OwnedHeaders {
    let ours = collect(span);
    let Some(tp) = &ours.traceparent else {
        // No copy: each header of an OwnedHeaders is an allocation in librdkafka.
        return headers;
    };
    let mut out = OwnedHeaders::new_with_capacity(headers.count() + 2);
    for h in headers.iter() {
        if !(h.key.eq_ignore_ascii_case(TRACEPARENT) || h.key.eq_ignore_ascii_case(TRACESTATE)) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out = out.insert(Header {
        key: TRACEPARENT,
        value: Some(tp.as_str()),
    });
    if let Some(ts) = &ours.tracestate {
        out = out.insert(Header {
            key: TRACESTATE,
            value: Some(ts.as_str()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_records_traceparent_is_read_as_the_remote_parent() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(TP),
            });
        let sc = remote_span_context(Some(&headers)).expect("a valid context");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        let bad = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        });
        assert!(remote_span_context(Some(&bad)).is_none());
        assert!(remote_span_context::<OwnedHeaders>(None).is_none());
    }

    #[test]
    fn without_export_headers_pass_through_unchanged() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some(TP),
            })
            .insert(Header {
                key: "x-correlation-id",
                value: Some("c-1"),
            });
        let span = tracing::Span::none();
        assert!(!set_parent_from_headers(&span, Some(&headers)));
        assert_eq!(traceparent(&span), None);
        let out = with_span_context(headers.clone(), &span);
        let pairs: Vec<(&str, Option<&[u8]>)> = out.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            pairs,
            [
                ("traceparent", Some(TP.as_bytes())),
                ("x-correlation-id", Some(&b"c-1"[..]))
            ]
        );
    }

    #[test]
    fn with_export_a_span_continues_the_records_trace_and_hands_on_its_own() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(TP),
                })
                .insert(Header {
                    key: "x-correlation-id",
                    value: Some("c-1"),
                });
            let span = tracing::info_span!("record", correlation_id = "c-1");
            assert!(set_parent_from_headers(&span, Some(&headers)));
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let own = span_id(&span).unwrap();
            assert_ne!(own, "00f067aa0ba902b7");
            assert_eq!(
                traceparent(&span).unwrap(),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{own}-01")
            );
            // Once started, the parent is fixed.
            assert!(!set_parent_from_headers(&span, Some(&headers)));

            let out = with_span_context(headers.clone(), &span);
            let keys: Vec<&str> = out.iter().map(|h| h.key).collect();
            assert_eq!(keys, ["x-correlation-id", "traceparent"]);
            assert_eq!(
                crate::headers::get(Some(&out), "traceparent"),
                traceparent(&span).as_deref()
            );

            // A child span (the dead-letter publish) is in the same trace.
            let child = span.in_scope(|| tracing::info_span!("dead_letter"));
            assert_eq!(trace_id(&child), trace_id(&span));
            assert_ne!(span_id(&child), span_id(&span));

            // A record without context: the span starts a trace of its own.
            let fresh = tracing::info_span!("record");
            assert!(!set_parent_from_headers::<OwnedHeaders>(&fresh, None));
            assert!(trace_id(&fresh).is_some());
            assert_ne!(trace_id(&fresh), trace_id(&span));
        });
    }
}
