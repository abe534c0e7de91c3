//! The gateway (the seed's Producer Service): `POST /orders` and `POST /users` validate a
//! request, enrich it into a complete ECST event, and publish it keyed by its id with an
//! idempotent producer. `202 Accepted` is answered only once the broker acknowledged the record
//! (or, in outbox mode, once PostgreSQL committed it for the relay to publish); a broker that
//! does not acknowledge within the delivery timeout gets `503`, never a false `202`.
//! `POST /orders` also takes a JSON array of orders, answered once every one is acknowledged.
//!
//! Bad requests are answered with the field at fault: 400 malformed JSON, 415 unsupported
//! content type, 413 too large, 422 with every invalid field. Every refusal, the HTTP stack's
//! own included (413, 405, 404), has one JSON shape: `{"error": "..."}`, plus `errors` on a
//! 422.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::field::Empty;
use tracing::{Instrument, Span, error, info, info_span, warn};

use crate::headers;
use crate::http::Health;
use crate::kafka::{KafkaArgs, ProducerError};
use crate::metrics::Metrics;
use crate::order::proto;
use crate::order::{self, CustomerInfo, FieldError, InventoryStatus, Item, Metadata, OrderEvent};
use crate::outbox::{Outbox, OutboxError};
use crate::{duration, ids, tracing_ctx};

mod producer;

use producer::SharedProducer;

/// `pubsubkafka-worker gateway` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Address of the API and of /metrics, /healthz, /readyz.
    #[arg(long, env = "PSK_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, env = "PSK_ORDERS_TOPIC", default_value = "orders")]
    pub orders_topic: String,
    #[arg(long, env = "PSK_USERS_TOPIC", default_value = "users")]
    pub users_topic: String,
    /// Answer 503 when the broker has not acknowledged within this long.
    #[arg(long, env = "PSK_DELIVERY_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub delivery_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    #[arg(long, env = "PSK_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most orders one `POST /orders` may carry as a JSON array (422 beyond).
    #[arg(long, env = "PSK_MAX_ORDERS_PER_REQUEST", default_value_t = MAX_ORDERS_PER_REQUEST,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_ORDERS_PER_REQUEST as u64))]
    pub max_orders_per_request: usize,
    /// The routes this gateway serves (comma-separated): `orders` (POST /orders), `users`
    /// (POST /users). A route it does not serve answers 404. An OrderGateway serves one.
    #[arg(
        long,
        env = "PSK_SERVE",
        value_delimiter = ',',
        default_value = "orders,users"
    )]
    pub serve: Vec<Domain>,
    /// Write each event and an outbox row in one PostgreSQL transaction instead of producing;
    /// `outbox-relay` publishes them.
    #[arg(long, env = "PSK_OUTBOX")]
    pub outbox: bool,
    /// File holding the PostgreSQL URL (outbox mode).
    #[arg(long, env = "PSK_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

/// A route of the gateway, and the topic its events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Domain {
    /// `POST /orders`, to `--orders-topic`.
    Orders,
    /// `POST /users`, to `--users-topic`.
    Users,
}

impl Domain {
    pub fn route(self) -> &'static str {
        match self {
            Self::Orders => "/orders",
            Self::Users => "/users",
        }
    }
}

/// An order as a client submits it; the gateway adds the metadata.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Generated when absent.
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer_info: CustomerInfo,
    pub items: Vec<Item>,
    #[serde(default)]
    pub inventory_status: Vec<InventoryStatus>,
}

/// A user registration, the seed's second domain.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    #[serde(default)]
    pub user_id: Option<String>,
    pub name: String,
    pub email: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// The event published to `users`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct UserEvent {
    pub user_id: String,
    pub name: String,
    pub email: String,
    pub country: String,
    pub metadata: Metadata,
}

/// Where accepted events go.
enum Sink {
    Kafka(Arc<SharedProducer>),
    Outbox(Outbox),
}

struct Gateway {
    sink: Sink,
    orders_topic: String,
    users_topic: String,
    delivery_timeout: Duration,
    max_orders_per_request: usize,
    metrics: Metrics,
    /// The hot series, resolved once: a request does no label lookups on success.
    orders_acked: prometheus::IntCounter,
    orders_accepted_latency: prometheus::Histogram,
}

/// Why the gateway could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("--outbox needs --database-url-file")]
    OutboxWithoutDatabase,
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The listener or the server failed.
    #[error(transparent)]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Serves the gateway until `shutdown`.
pub async fn run(
    args: GatewayArgs,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let sink = if args.outbox {
        let file = args
            .database_url_file
            .as_ref()
            .ok_or(GatewayError::OutboxWithoutDatabase)?;
        let outbox = Outbox::open(file)?;
        outbox.migrate().await?;
        Sink::Outbox(outbox)
    } else {
        Sink::Kafka(Arc::new(SharedProducer::new(
            args.kafka.connection(),
            args.delivery_timeout,
            metrics.clone(),
        )?))
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: args.listen,
            source,
        })?;
    info!(addr = %listener.local_addr()?, outbox = args.outbox, "gateway listening");
    let ready = Arc::new(AtomicBool::new(false));
    if let Sink::Kafka(producer) = &sink {
        tokio::spawn(watch_broker(
            Arc::clone(producer),
            Arc::clone(&health),
            Arc::clone(&ready),
        ));
        let (producer, health) = (Arc::clone(producer), Arc::clone(&health));
        tokio::spawn(async move {
            // Only a new producer that cannot even be created ends the watch: the kubelet
            // restarts the gateway rather than it refusing every order.
            let e = producer.watch().await;
            error!(error = %e, "could not replace the Kafka producer: failing liveness");
            health.set_broken(format!("could not replace the Kafka producer: {e}"));
        });
    } else {
        health.set_started(true);
    }
    let gateway = Arc::new(Gateway {
        orders_acked: metrics
            .producer_messages
            .with_label_values(&[&args.orders_topic, "acked"]),
        orders_accepted_latency: metrics
            .request_duration
            .with_label_values(&["/orders", "202"]),
        sink,
        orders_topic: args.orders_topic,
        users_topic: args.users_topic,
        delivery_timeout: args.delivery_timeout,
        max_orders_per_request: args.max_orders_per_request,
        metrics: metrics.clone(),
    });
    let routes = served_routes(&args.serve);
    let app = router(gateway, args.max_body_bytes, &args.serve)
        .merge(crate::http::routes(metrics, health))
        .fallback(move || async move {
            Rejection::new(
                StatusCode::NOT_FOUND,
                format!("no such route: POST {routes}"),
            )
        });
    // On the runtime's workers, not the thread that started it: every core serves requests.
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    })
    .await??;
    Ok(())
}

/// Readiness follows the broker: a metadata request every 5 s. A producer that stopped
/// delivering is replaced by [`SharedProducer::watch`].
async fn watch_broker(producer: Arc<SharedProducer>, health: Arc<Health>, ready: Arc<AtomicBool>) {
    loop {
        let p = producer.current();
        let up = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(5))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if up != ready.swap(up, Ordering::Relaxed) {
            info!(broker_reachable = up, "broker reachability changed");
        }
        health.set_started(up);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The routes `serve` names, for messages: "/orders and /users".
fn served_routes(serve: &[Domain]) -> String {
    serve
        .iter()
        .map(|d| d.route())
        .collect::<Vec<_>>()
        .join(" and ")
}

fn router(gateway: Arc<Gateway>, max_body: usize, serve: &[Domain]) -> Router {
    let served = served_routes(serve);
    let mut router = Router::new();
    for domain in [Domain::Orders, Domain::Users] {
        router = if serve.contains(&domain) {
            match domain {
                Domain::Orders => router.route(domain.route(), post(post_order)),
                Domain::Users => router.route(domain.route(), post(post_user)),
            }
        } else {
            let message = format!(
                "this gateway does not serve {}; it serves {served}",
                domain.route(),
            );
            router.route(
                domain.route(),
                post(move || async move { Rejection::new(StatusCode::NOT_FOUND, message) }),
            )
        };
    }
    router
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(move |response: Response| {
            json_refusal(response, max_body)
        }))
        .with_state(gateway)
}

/// Every refusal in one shape, `{"error": "..."}`: the HTTP stack answers some requests
/// before the handlers see them (413 past the body limit, 405 for another method, 400 for a
/// body it could not read) in plain text or with no body at all; those are rewritten here.
async fn json_refusal(response: Response, max_body: usize) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body larger than {max_body} bytes")
        }
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed: use POST".to_owned(),
        _ if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("refused").to_owned(),
    };
    let mut refusal = Rejection::new(status, message).into_response();
    // Keep what the stack said besides the body (such as Allow on a 405).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            refusal.headers_mut().insert(name.clone(), value.clone());
        }
    }
    refusal
}

/// A rejected request: status and a JSON body naming what is wrong.
struct Rejection {
    status: StatusCode,
    body: serde_json::Value,
}

impl Rejection {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn fields(errors: Vec<FieldError>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "error": "invalid fields", "errors": errors }),
        }
    }
}

impl Rejection {
    /// The error message of the body.
    fn message(&self) -> String {
        self.body["error"].as_str().unwrap_or_default().to_owned()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// Parses a JSON body: 415 for another content type, 400 when it is not JSON, 422 naming the
/// field when the JSON does not have the request's shape.
fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Rejection> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let media = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media != order::CONTENT_TYPE_JSON {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {media:?}: send application/json (or \
                     application/x-protobuf to /orders)"
                ),
            ));
        }
    }
    // The happy path parses once; only a refused body is parsed again to name the field.
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let inner = e.inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed JSON: {inner}"),
                ));
            }
            let path = e.path().to_string();
            let field = if path == "." {
                "(body)".to_owned()
            } else {
                path
            };
            // serde's message ends with a position; the field path says more.
            let message = inner.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned();
            return Err(Rejection::fields(vec![FieldError { field, message }]));
        }
    };
    de.end()
        .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Correlation id from `X-Correlation-ID` (or a new one), and the trace and span ids the event
/// carries: those of `produce` (the span that publishes it) when trace export is on; otherwise the
/// caller's trace from `traceparent` with a new span id, or a new trace.
fn trace_context(headers: &HeaderMap, produce: &Span) -> (String, String, String) {
    let correlation = headers
        .get(headers::CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(ids::uuid_v4);
    if let (Some(trace_id), Some(span_id)) = (
        tracing_ctx::trace_id(produce),
        tracing_ctx::span_id(produce),
    ) {
        return (correlation, trace_id, span_id);
    }
    let trace_id = headers
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(headers::parse_traceparent)
        .map(|t| t.trace_id.to_owned())
        .unwrap_or_else(ids::trace_id);
    (correlation, trace_id, ids::span_id())
}

/// The server span of one request, a child of the caller's `traceparent` when it sent one.
fn request_span(route: &'static str, headers: &HeaderMap) -> Span {
    let span = info_span!(
        target: crate::telemetry::TRACE_ONLY,
        "request",
        otel.name = %format!("POST {route}"),
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
        correlation_id = Empty,
    );
    tracing_ctx::set_parent_from_http(&span, headers);
    span
}

/// The producer span of one event: its context is what the record's `traceparent` names.
fn produce_span(topic: &str, key: &str) -> Span {
    info_span!(
        target: crate::telemetry::TRACE_ONLY,
        "publish",
        otel.name = %format!("{topic} publish"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.kafka.message.key = key,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        correlation_id = Empty,
        otel.status_code = Empty,
    )
}

/// Records the answer's status on the request span (an error status for 5xx).
fn finish_request(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

fn metadata(correlation_id: String, trace_id: String, span_id: String) -> Metadata {
    Metadata {
        correlation_id: correlation_id.into(),
        trace_id: trace_id.into(),
        span_id: span_id.into(),
        created_at: jiff::Timestamp::now().to_string().into(),
        schema_version: order::SCHEMA_VERSION,
        source: "order-gateway".into(),
    }
}

async fn post_order(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let span = request_span("/orders", &headers);
    let response = accept_order(&gw, &headers, &body)
        .instrument(span.clone())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    finish_request(&span, response.status());
    if response.status() == StatusCode::ACCEPTED {
        gw.orders_accepted_latency
            .observe(started.elapsed().as_secs_f64());
    } else {
        observe(&gw.metrics, "/orders", response.status(), started);
    }
    response
}

/// The media type of the request body (JSON when absent).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_else(|| order::CONTENT_TYPE_JSON.to_owned())
}

async fn accept_order(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Rejection> {
    let media = media_type(headers);
    let protobuf = media == proto::CONTENT_TYPE_PROTOBUF;
    if !protobuf && body.trim_ascii_start().first() == Some(&b'[') {
        return accept_orders(gw, headers, body).await;
    }
    let parts = if protobuf {
        match proto::decode_request(body) {
            Ok(parts) => Some(parts),
            Err(proto::RequestError::MissingField(field)) => {
                return Err(Rejection::fields(vec![field]));
            }
            Err(e @ proto::RequestError::Malformed(_)) => {
                return Err(Rejection::new(StatusCode::BAD_REQUEST, e.to_string()));
            }
        }
    } else if media == order::CONTENT_TYPE_JSON {
        // A plain order takes the fast parser (a third of serde_json's time on the bench's
        // 1 KiB order); anything it is not sure of goes to serde_json, which decides.
        order::parse_request_fast(body)
    } else {
        None
    };
    let request: OrderRequest = match parts {
        Some((order_id, customer_info, items, inventory_status)) => OrderRequest {
            order_id,
            customer_info,
            items,
            inventory_status,
        },
        None => parse_json(headers, body)?,
    };
    let pending = prepare_order(gw, headers, request, protobuf).map_err(Rejection::fields)?;
    let placed = send_order(gw, &pending).await?;
    Ok(accepted(&pending.accepted(gw, placed)))
}

pub use crate::config::MAX_ORDERS_PER_REQUEST;

/// `POST /orders` with a JSON array: every order is validated first (one invalid order refuses
/// the request with 422, naming `[index].field`, and nothing is published), then all are
/// published at once. `202` lists where each was placed, once the broker acknowledged every
/// one; otherwise `503` says which were acknowledged and which were not (resending the whole
/// array is safe: the event store is idempotent on `order_id`).
async fn accept_orders(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Rejection> {
    let requests: Vec<OrderRequest> = parse_json(headers, body)?;
    if requests.is_empty() || requests.len() > gw.max_orders_per_request {
        return Err(Rejection::fields(vec![FieldError {
            field: "(body)".into(),
            message: format!("an array of 1 to {} orders", gw.max_orders_per_request),
        }]));
    }
    let mut pending = Vec::with_capacity(requests.len());
    let mut errors = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        match prepare_order(gw, headers, request, false) {
            Ok(p) => pending.push(p),
            Err(fields) => errors.extend(fields.into_iter().map(|e| FieldError {
                field: format!("[{i}].{}", e.field),
                message: e.message,
            })),
        }
    }
    if !errors.is_empty() {
        return Err(Rejection::fields(errors));
    }
    let results = futures::future::join_all(pending.iter().map(|p| send_order(gw, p))).await;
    let mut placed = Vec::with_capacity(pending.len());
    let mut failed = None;
    for (p, result) in pending.iter().zip(results) {
        match result {
            Ok(at) => placed.push(BatchItem::Accepted(p.accepted(gw, at))),
            Err(rejection) => {
                placed.push(BatchItem::Failed {
                    order_id: &p.event.order_id,
                    error: rejection.message(),
                });
                failed.get_or_insert(rejection.status);
            }
        }
    }
    match failed {
        None => Ok((
            StatusCode::ACCEPTED,
            axum::Json(BatchBody { orders: placed }),
        )
            .into_response()),
        Some(status) => Err(Rejection {
            status,
            body: json!({
                "error": "some orders were not acknowledged; each order says whether it was placed",
                "orders": placed,
            }),
        }),
    }
}

/// The body of an answer to an array of orders, one entry per order in request order.
#[derive(Debug, Serialize)]
struct BatchBody<'a> {
    orders: Vec<BatchItem<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BatchItem<'a> {
    Accepted(Accepted<'a>),
    Failed { order_id: &'a str, error: String },
}

/// A valid order event, encoded and ready to publish.
struct PendingOrder {
    event: OrderEvent,
    value: Vec<u8>,
    content_type: &'static str,
    produce: Span,
}

impl PendingOrder {
    fn accepted<'a>(&'a self, gw: &'a Gateway, placed: (i32, i64)) -> Accepted<'a> {
        Accepted {
            order_id: Some(&self.event.order_id),
            correlation_id: &self.event.metadata.correlation_id,
            trace_id: &self.event.metadata.trace_id,
            topic: &gw.orders_topic,
            partition: placed.0,
            offset: placed.1,
            ..Accepted::default()
        }
    }
}

/// Enriches a request into the complete event (ids, trace context, metadata), validates it and
/// encodes it in the request's format; the invalid fields otherwise.
fn prepare_order(
    gw: &Gateway,
    headers: &HeaderMap,
    request: OrderRequest,
    protobuf: bool,
) -> Result<PendingOrder, Vec<FieldError>> {
    let order_id: compact_str::CompactString = request.order_id.unwrap_or_else(ids::uuid_v4).into();
    let produce = produce_span(&gw.orders_topic, &order_id);
    let (correlation_id, trace_id, span_id) = trace_context(headers, &produce);
    Span::current().record("correlation_id", correlation_id.as_str());
    produce.record("correlation_id", correlation_id.as_str());
    let event = OrderEvent {
        order_id,
        customer_info: request.customer_info,
        items: request.items,
        inventory_status: request.inventory_status,
        metadata: metadata(correlation_id, trace_id, span_id),
    };
    let errors = event.validate();
    if !errors.is_empty() {
        return Err(errors);
    }
    // The record keeps the request's encoding; its content-type header names it.
    let (value, content_type) = if protobuf {
        (proto::encode_event(&event), proto::CONTENT_TYPE_PROTOBUF)
    } else {
        (order::encode_json(&event), order::CONTENT_TYPE_JSON)
    };
    Ok(PendingOrder {
        event,
        value,
        content_type,
        produce,
    })
}

async fn send_order(gw: &Gateway, pending: &PendingOrder) -> Result<(i32, i64), Rejection> {
    publish(
        gw,
        &gw.orders_topic,
        &pending.event.order_id,
        &pending.value,
        pending.content_type,
        &pending.event.metadata,
        &pending.produce,
    )
    .instrument(pending.produce.clone())
    .await
}

async fn post_user(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let span = request_span("/users", &headers);
    let response = accept_user(&gw, &headers, &body)
        .instrument(span.clone())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    finish_request(&span, response.status());
    observe(&gw.metrics, "/users", response.status(), started);
    response
}

async fn accept_user(
    gw: &Gateway,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Rejection> {
    let request: UserRequest = parse_json(headers, body)?;
    let user_id = request.user_id.unwrap_or_else(ids::uuid_v4);
    let produce = produce_span(&gw.users_topic, &user_id);
    let (correlation_id, trace_id, span_id) = trace_context(headers, &produce);
    Span::current().record("correlation_id", correlation_id.as_str());
    produce.record("correlation_id", correlation_id.as_str());
    let event = UserEvent {
        user_id,
        name: request.name,
        email: request.email,
        country: request.country,
        metadata: metadata(correlation_id, trace_id, span_id),
    };
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if event.user_id.is_empty() || event.user_id.len() > 64 {
        fail("user_id", "must be 1 to 64 characters");
    }
    if event.name.trim().is_empty() || event.name.len() > 256 {
        fail("name", "must be 1 to 256 characters");
    }
    if !event
        .email
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
    {
        fail("email", "must be an email address");
    }
    if event.country.len() != 2 || !event.country.bytes().all(|b| b.is_ascii_uppercase()) {
        fail("country", "must be an ISO 3166-1 alpha-2 code such as FR");
    }
    if !errors.is_empty() {
        return Err(Rejection::fields(errors));
    }
    let value = serde_json::to_vec(&event).expect("a user event serializes");
    let placed = publish(
        gw,
        &gw.users_topic,
        &event.user_id,
        &value,
        order::CONTENT_TYPE_JSON,
        &event.metadata,
        &produce,
    )
    .instrument(produce.clone())
    .await?;
    Ok(accepted(&Accepted {
        user_id: Some(&event.user_id),
        correlation_id: &event.metadata.correlation_id,
        trace_id: &event.metadata.trace_id,
        topic: &gw.users_topic,
        partition: placed.0,
        offset: placed.1,
        ..Accepted::default()
    }))
}

/// The body of a `202 Accepted`: the event's id and where it was placed (partition and offset
/// -1 in outbox mode, where the relay places it later).
#[derive(Debug, Default, Serialize)]
struct Accepted<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    correlation_id: &'a str,
    trace_id: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
}

fn accepted(body: &Accepted<'_>) -> Response {
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

fn observe(metrics: &Metrics, route: &str, status: StatusCode, started: Instant) {
    metrics
        .request_duration
        .with_label_values(&[route, status.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// The record headers every event carries.
pub fn event_headers(content_type: &str, correlation_id: &str, traceparent: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(content_type),
        })
        .insert(Header {
            key: headers::CORRELATION_ID,
            value: Some(correlation_id),
        })
        .insert(Header {
            key: headers::TRACEPARENT,
            value: Some(traceparent),
        })
}

/// Publishes (or stores in the outbox) and returns the record's partition and offset (-1, -1
/// for the outbox: the relay assigns them).
async fn publish(
    gw: &Gateway,
    topic: &str,
    key: &str,
    value: &[u8],
    content_type: &str,
    meta: &Metadata,
    span: &Span,
) -> Result<(i32, i64), Rejection> {
    // The producer span's own context when traces are exported (its sampling decision too).
    let traceparent = tracing_ctx::traceparent(span)
        .unwrap_or_else(|| headers::format_traceparent(&meta.trace_id, &meta.span_id, true));
    match &gw.sink {
        Sink::Kafka(shared) => {
            let producer = shared.current();
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(event_headers(
                    content_type,
                    &meta.correlation_id,
                    &traceparent,
                ));
            let sent = producer.send(record, gw.delivery_timeout).await;
            shared.record(sent.as_ref().map(drop).map_err(|(e, _)| e));
            match sent {
                Ok(delivery) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    if topic == gw.orders_topic {
                        gw.orders_acked.inc();
                    } else {
                        gw.metrics
                            .producer_messages
                            .with_label_values(&[topic, "acked"])
                            .inc();
                    }
                    Ok((delivery.partition, delivery.offset))
                }
                Err((e, _)) => {
                    span.record("otel.status_code", "ERROR");
                    gw.metrics
                        .producer_messages
                        .with_label_values(&[topic, "failed"])
                        .inc();
                    warn!(error = %e, topic, key, correlation_id = %meta.correlation_id, "the broker did not acknowledge the record");
                    Err(Rejection::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "Kafka did not acknowledge the event within {:?} ({e}); nothing was accepted, retry later",
                            gw.delivery_timeout
                        ),
                    ))
                }
            }
        }
        Sink::Outbox(outbox) => match outbox
            .append(
                topic,
                key,
                value,
                content_type,
                &meta.correlation_id,
                &traceparent,
            )
            .await
        {
            Ok(()) => {
                gw.metrics
                    .producer_messages
                    .with_label_values(&[topic, "outboxed"])
                    .inc();
                Ok((-1, -1))
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                warn!(error = %e, topic, key, correlation_id = %meta.correlation_id, "the outbox write failed");
                Err(Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the event could not be stored ({e}); nothing was accepted, retry later"
                    ),
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        h
    }

    #[test]
    fn malformed_json_is_a_400_and_wrong_shapes_name_the_field() {
        let err = parse_json::<OrderRequest>(&json_headers(), b"{\"items\": [").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);

        let body = br#"{"customer_info": {"customer_id": "c", "name": "n", "email": "e@x.io",
            "shipping_address": {"line1": "l", "city": "c", "postal_code": "1", "country": "FR"}},
            "items": [{"sku": "s", "name": "n", "quantity": "two", "unit_price": 1, "currency": "EUR"}]}"#;
        let err = parse_json::<OrderRequest>(&json_headers(), body).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.body["errors"][0]["field"], "items[0].quantity");

        let err = parse_json::<OrderRequest>(&json_headers(), br#"{"items": []}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("customer_info")
        );
    }

    #[test]
    fn other_content_types_are_a_415() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let err = parse_json::<OrderRequest>(&h, b"{}").unwrap_err();
        assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn the_callers_trace_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        h.insert("x-correlation-id", "req-7".parse().unwrap());
        let (correlation, trace, span) = trace_context(&h, &Span::none());
        assert_eq!(correlation, "req-7");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span, "00f067aa0ba902b7");
        let (correlation, trace, _) = trace_context(&HeaderMap::new(), &Span::none());
        assert_eq!(correlation.len(), 36);
        assert_eq!(trace.len(), 32);
    }
}
