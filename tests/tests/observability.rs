//! Observability end to end, with real components: the stack's Prometheus scrapes the operator,
//! the gateway and a worker (all real processes) and evaluates the shipped alert rules; the
//! Grafana dashboard's queries run against it; the stack's Jaeger receives the spans of an order
//! from the HTTP request to the dead-letter record.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kube::api::{Api, PostParams};
use pubsubkafka_controller::crd::KafkaTopic;
use pubsubkafka_worker::config::{HandlerConfig, RetryPolicy, TracingConfig};
use pubsubkafka_worker::headers as h;
use rdkafka::Message;
use serde_json::json;
use testenv::jaeger::StoredTrace;
use testenv::process::{Lifetime, Proc};
use testenv::worker::{self, WorkerProcess};
use testenv::{StackInfo, eventually, operator};

const WAIT: Duration = Duration::from_secs(90);

fn order_body(order_id: &str) -> Vec<u8> {
    let sample = pubsubkafka_worker::order::sample(order_id, 0);
    serde_json::to_vec(&json!({
        "order_id": order_id,
        "customer_info": sample.customer_info,
        "items": sample.items,
        "inventory_status": sample.inventory_status,
    }))
    .unwrap()
}

/// The downstream service of the worker's HTTP handler: orders whose id contains `reject` are
/// refused (422: dead-lettered at once), those with `flaky` fail once (503: retried), the rest
/// are taken.
#[derive(Clone, Default)]
struct Receiver {
    attempts: Arc<Mutex<BTreeMap<String, u32>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("x-kafka-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = {
        let mut map = r.attempts.lock().unwrap();
        let n = map.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    if id.contains("reject") {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if id.contains("flaky") && attempt == 1 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

/// The order pipeline as processes: the operator (which creates the topics from KafkaTopic
/// resources), the gateway, one worker with an HTTP handler; all export traces to the stack's
/// Jaeger and are registered with its Prometheus under the label `test=<namespace>`.
struct Pipeline {
    stack: &'static StackInfo,
    ns: String,
    topic: String,
    dead_letter_topic: String,
    gateway: WorkerProcess,
    worker: WorkerProcess,
    _controller: Proc,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    async fn start(prefix: &str) -> Self {
        let stack = testenv::shared();
        let dir = tempfile::tempdir().unwrap();
        let client = stack.kube.client().await.unwrap();
        operator::install_crds(&client).await;
        let ns = testenv::unique_name(prefix);
        operator::create_namespace(&client, &ns).await;
        let otlp = stack.jaeger.otlp_endpoint.clone();

        // The operator, as its binary runs in a pod.
        let controller_port = testenv::free_port().unwrap();
        let mut cmd = Command::new(worker::binary().with_file_name("pubsubkafka-controller"));
        cmd.env("KUBECONFIG", &stack.kube.kubeconfig)
            .env("RUST_LOG", "info")
            .args(worker::kafka_args(&stack.kafka))
            .args(["--watch-namespace", &ns, "--resync-interval", "5s"])
            // Its topics are "<namespace>-orders", not "<namespace>.orders": today's rules.
            .args(["--default-access-policy", "open"])
            .args(["--log-format", "text", "--otlp-endpoint", &otlp])
            .args(["--metrics-addr", &format!("127.0.0.1:{controller_port}")]);
        let controller = Proc::spawn(
            "pubsubkafka-controller",
            cmd,
            &dir.path().join("controller.log"),
            Lifetime::Owned,
            None,
        )
        .unwrap();

        // The topics, created by the operator.
        let topic = format!("{ns}-orders");
        let dead_letter_topic = format!("{topic}-dlq");
        let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &ns);
        for name in [&topic, &dead_letter_topic] {
            let t: KafkaTopic = serde_json::from_value(json!({
                "apiVersion": "pubsubkafka.io/v1alpha1", "kind": "KafkaTopic",
                "metadata": {"name": name},
                "spec": {"partitions": 3, "replicationFactor": 1},
            }))
            .unwrap();
            topics.create(&PostParams::default(), &t).await.unwrap();
        }
        eventually("both KafkaTopics Ready", WAIT, || async {
            let list = topics
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            (list.items.len() == 2 && list.items.iter().all(KafkaTopic::is_ready))
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        })
        .await;

        let receiver_port = worker::serve(
            axum::Router::new()
                .route("/orders", axum::routing::post(receive))
                .with_state(Receiver::default()),
        )
        .await;
        let mut config = worker::config(
            &stack.kafka,
            &topic,
            &format!("{ns}.store"),
            HandlerConfig::Http {
                url: format!("http://127.0.0.1:{receiver_port}/orders"),
                timeout_ms: 5_000,
            },
        );
        config.retry = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 500,
            ..RetryPolicy::default()
        };
        config.tracing = Some(TracingConfig {
            otlp_endpoint: otlp.clone(),
        });
        let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();

        let gateway_port = testenv::free_port().unwrap();
        let mut args = vec![
            "gateway".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{gateway_port}"),
            "--orders-topic".into(),
            topic.clone(),
            "--otlp-endpoint".into(),
            otlp,
        ];
        args.extend(worker::kafka_args(&stack.kafka));
        let gateway = WorkerProcess::run(dir.path(), "gateway", args, gateway_port).unwrap();

        let prometheus = &stack.prometheus;
        let label = [("test", ns.as_str())];
        prometheus
            .add_target("controller", &ns, controller_port, &label)
            .unwrap();
        prometheus
            .add_target("gateway", &ns, gateway_port, &label)
            .unwrap();
        prometheus
            .add_target("worker", &ns, worker.http_port, &label)
            .unwrap();

        gateway.wait_ready().await;
        worker.wait_ready().await;
        Self {
            stack,
            ns,
            topic,
            dead_letter_topic,
            gateway,
            worker,
            _controller: controller,
            _dir: dir,
        }
    }

    /// POSTs an order; the 202's body.
    fn order(&self, order_id: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let (status, body) = self
            .gateway
            .post("/orders", &all, &order_body(order_id))
            .unwrap();
        assert_eq!(status, 202, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn dead_letters(&self, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
        let found =
            worker::read_all(&self.stack.kafka, &self.dead_letter_topic, expected, WAIT).await;
        assert_eq!(
            found.len(),
            expected,
            "dead letters in {}; worker log:\n{}\nworker metrics:\n{}\ngateway log:\n{}",
            self.dead_letter_topic,
            self.worker.log_text(),
            self.worker
                .get("/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default(),
            self.gateway.log_text()
        );
        found
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for job in testenv::prometheus::JOBS {
            self.stack.prometheus.remove_target(job, &self.ns);
        }
    }
}

/// Every panel's queries of the shipped Grafana dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/pubsubkafka/dashboards/pubsubkafka.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
            }
        }
    }
    out
}

#[tokio::test]
async fn prometheus_scrapes_every_component_counts_the_dead_letters_and_serves_the_dashboard() {
    let p = Pipeline::start("obs-prom").await;
    let prometheus = &p.stack.prometheus;

    // Every component is a target, and up.
    eventually("the three targets scraped and up", WAIT, || async {
        let targets = prometheus.targets()?;
        let ours: Vec<_> = targets
            .iter()
            .filter(|t| t.labels.get("test") == Some(&p.ns))
            .collect();
        let jobs: Vec<&str> = ours.iter().map(|t| t.labels["job"].as_str()).collect();
        let down: Vec<String> = ours
            .iter()
            .filter(|t| t.health != "up")
            .map(|t| {
                format!(
                    "{} {}: {} {}",
                    t.labels["job"], t.scrape_url, t.health, t.last_error
                )
            })
            .collect();
        (ours.len() == 3 && down.is_empty())
            .then_some(())
            .ok_or(format!("jobs {jobs:?}, not up: {down:?}"))
    })
    .await;
    // The worker's counters exist (at 0) before the first dead letter, so increase() sees it.
    let primed = format!(
        "kafka_dlq_messages_total{{topic=\"{}\",error_class=\"Rejected\"}}",
        p.dead_letter_topic
    );
    eventually("the dead-letter counter scraped at 0", WAIT, || async {
        let samples = prometheus.query(&primed)?;
        (samples.len() == 1 && samples[0].value() == 0.0)
            .then_some(())
            .ok_or(format!("{samples:?}"))
    })
    .await;

    // 10 taken, 2 retried once then taken, 3 refused (dead-lettered).
    let mut ids: Vec<String> = (0..10).map(|i| format!("{}-ok-{i}", p.ns)).collect();
    ids.extend((0..2).map(|i| format!("{}-flaky-{i}", p.ns)));
    ids.extend((0..3).map(|i| format!("{}-reject-{i}", p.ns)));
    for id in &ids {
        p.order(id, &[("X-Correlation-ID", &format!("corr-{id}"))]);
    }
    let dead = p.dead_letters(3).await;
    for m in &dead {
        assert_eq!(h::get(m.headers(), h::DLQ_ERROR_CLASS), Some("Rejected"));
    }

    let up = prometheus
        .query(&format!("up{{test=\"{}\"}}", p.ns))
        .unwrap();
    assert_eq!(up.len(), 3);
    assert!(up.iter().all(|s| s.value() == 1.0), "{up:?}");

    // Prometheus counts exactly the dead letters the worker published.
    let dlq = format!(
        "sum(kafka_dlq_messages_total{{topic=\"{}\"}})",
        p.dead_letter_topic
    );
    eventually("kafka_dlq_messages_total = 3", WAIT, || async {
        let n = prometheus.query_sum(&dlq)?;
        (n == 3.0).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let by_class = prometheus
        .query(&format!(
            "kafka_dlq_messages_total{{topic=\"{}\",test=\"{}\"}} > 0",
            p.dead_letter_topic, p.ns
        ))
        .unwrap();
    assert_eq!(by_class.len(), 1, "{by_class:?}");
    assert_eq!(by_class[0].metric["error_class"], "Rejected");
    assert_eq!(by_class[0].metric["job"], "worker");
    let produced = format!(
        "sum(kafka_producer_messages_total{{job=\"gateway\",test=\"{}\",outcome=\"acked\"}})",
        p.ns
    );
    eventually("the gateway's produce count", WAIT, || async {
        let n = prometheus.query_sum(&produced)?;
        (n == ids.len() as f64).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let retries = format!(
        "sum(kafka_consumer_retries_total{{topic=\"{}\",error_class=\"Transient\"}})",
        p.topic
    );
    eventually("two retries counted", WAIT, || async {
        let n = prometheus.query_sum(&retries)?;
        (n == 2.0).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The shipped rules are loaded, and the dead-letter alert fires for this topic.
    let rules = prometheus.alerting_rules().unwrap();
    for alert in [
        "KafkaConsumerLagHigh",
        "KafkaDeadLettersPublished",
        "KafkaProcessingSlow",
        "PubSubKafkaReconcileErrors",
        "PubSubKafkaKafkaUnavailable",
    ] {
        assert!(
            rules.iter().any(|r| r == alert),
            "{alert} not loaded: {rules:?}"
        );
    }
    eventually(
        "KafkaDeadLettersPublished firing for this topic",
        WAIT,
        || async {
            let alerts = prometheus.alerts()?;
            alerts
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "KafkaDeadLettersPublished"
                        && a["labels"]["topic"] == p.dead_letter_topic.as_str()
                        && a["state"] == "firing"
                })
                .then_some(())
                .ok_or(format!("{alerts:?}"))
        },
    )
    .await;
    // Kafka is up: that alert is not even pending.
    let alerts = prometheus.alerts().unwrap();
    assert!(
        !alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "PubSubKafkaKafkaUnavailable"),
        "{alerts:?}"
    );

    // Every dashboard query parses and returns data now that orders have flowed.
    let queries = dashboard_queries();
    assert!(queries.len() >= 6, "{queries:?}");
    for (panel, expr) in &queries {
        eventually(
            &format!("data for panel {panel:?}: {expr}"),
            WAIT,
            || async {
                let result = prometheus
                    .query(expr)
                    .map_err(|e| format!("Prometheus refused the query: {e}"))?;
                (!result.is_empty())
                    .then_some(())
                    .ok_or_else(|| "no series".to_owned())
            },
        )
        .await;
    }
}

/// The spans of `trace_id` in the stack's Jaeger once `check` accepts them.
async fn wait_trace(
    stack: &StackInfo,
    trace_id: &str,
    what: &str,
    check: impl Fn(&StoredTrace) -> Result<(), String>,
) -> StoredTrace {
    eventually(what, WAIT, || async {
        let trace = stack
            .jaeger
            .trace(trace_id)?
            .ok_or_else(|| format!("no trace {trace_id} yet"))?;
        check(&trace).map_err(|e| format!("{e}; spans: {}", trace.outline()))?;
        Ok(trace)
    })
    .await
}

#[tokio::test]
async fn the_gateways_request_and_publish_spans_reach_jaeger_and_the_record_names_the_publish_span()
{
    let stack = testenv::shared();
    let dir = tempfile::tempdir().unwrap();
    let admin = pubsubkafka_controller::kafka::KafkaAdmin::new(
        &stack.kafka.admin_connection().client_config().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    let topic = testenv::unique_name("obs-gw");
    admin
        .create_topic(&topic, 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let port = testenv::free_port().unwrap();
    let mut args = vec![
        "gateway".to_owned(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--orders-topic".into(),
        topic.clone(),
        "--otlp-endpoint".into(),
        stack.jaeger.otlp_endpoint.clone(),
    ];
    args.extend(worker::kafka_args(&stack.kafka));
    let gateway = WorkerProcess::run(dir.path(), "gateway", args, port).unwrap();
    gateway.wait_ready().await;

    // The caller's trace is continued.
    let caller_trace = pubsubkafka_worker::ids::trace_id();
    let caller_span = pubsubkafka_worker::ids::span_id();
    let correlation = testenv::unique_name("corr");
    let (status, body) = gateway
        .post(
            "/orders",
            &[
                ("Content-Type", "application/json"),
                ("X-Correlation-ID", &correlation),
                (
                    "traceparent",
                    &h::format_traceparent(&caller_trace, &caller_span, true),
                ),
            ],
            &order_body("obs-gw-1"),
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["trace_id"], caller_trace.as_str());

    let record = worker::read_all(&stack.kafka, &topic, 1, WAIT).await;
    let header = h::get(record[0].headers(), h::TRACEPARENT)
        .unwrap()
        .to_owned();
    let tp = h::parse_traceparent(&header).unwrap();
    assert_eq!(tp.trace_id, caller_trace);
    let event: pubsubkafka_worker::order::OrderEvent =
        serde_json::from_slice(record[0].payload().unwrap()).unwrap();
    assert_eq!(event.metadata.trace_id.as_str(), caller_trace);
    assert_eq!(
        event.metadata.span_id.as_str(),
        tp.span_id,
        "metadata names the publish span"
    );

    let publish_name = format!("{topic} publish");
    let trace = wait_trace(stack, &caller_trace, "the gateway's spans", |t| {
        let request = t.find("pubsubkafka-gateway", "POST /orders");
        let publish = t.find("pubsubkafka-gateway", &publish_name);
        (request.len() == 1 && publish.len() == 1)
            .then_some(())
            .ok_or_else(|| "request and publish spans not both stored".to_owned())
    })
    .await;
    let request = trace.find("pubsubkafka-gateway", "POST /orders")[0];
    let publish = trace.find("pubsubkafka-gateway", &publish_name)[0];
    assert_eq!(
        request.parent_span_id.as_deref(),
        Some(caller_span.as_str())
    );
    assert_eq!(
        publish.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    assert_eq!(
        publish.span_id, tp.span_id,
        "the record's traceparent names the publish span"
    );
    assert_eq!(request.tags["span.kind"], "server");
    assert_eq!(request.tags["http.response.status_code"], "202");
    assert_eq!(publish.tags["span.kind"], "producer");
    assert_eq!(publish.tags["messaging.destination.name"], topic);
    assert_eq!(publish.tags["messaging.kafka.message.key"], "obs-gw-1");
    for span in [request, publish] {
        assert_eq!(span.tags["correlation_id"], correlation, "{span:?}");
    }
}

/// Needs the worker's span wiring in consumer.rs (issue 9/10): the per-record span as a child of
/// the record's `traceparent` and the dead-letter publish as its child. Remove the `ignore` when
/// it is in.
#[tokio::test]
async fn an_order_dead_lettered_by_the_worker_is_one_trace_from_the_request_to_the_dead_letter() {
    let p = Pipeline::start("obs-trace").await;
    let order_id = format!("{}-reject-1", p.ns);
    let correlation = testenv::unique_name("corr");
    let answer = p.order(&order_id, &[("X-Correlation-ID", &correlation)]);
    let trace_id = answer["trace_id"].as_str().unwrap().to_owned();
    let dead = p.dead_letters(1).await;
    assert_eq!(
        h::get(dead[0].headers(), h::DLQ_TRACE_ID),
        Some(trace_id.as_str())
    );
    assert_eq!(
        h::get(dead[0].headers(), h::DLQ_CORRELATION_ID),
        Some(correlation.as_str())
    );

    let publish_name = format!("{} publish", p.topic);
    let dead_letter_name = format!("{} publish", p.dead_letter_topic);
    let trace = wait_trace(
        p.stack,
        &trace_id,
        "gateway, worker and dead-letter spans in one trace",
        |t| {
            let consume = t.spans.iter().any(|s| {
                s.service == "pubsubkafka-worker"
                    && s.tags.get("span.kind").map(String::as_str) == Some("consumer")
            });
            let dead_letter = !t.find("pubsubkafka-worker", &dead_letter_name).is_empty();
            let gateway = !t.find("pubsubkafka-gateway", &publish_name).is_empty();
            (consume && dead_letter && gateway)
                .then_some(())
                .ok_or_else(|| "not every span yet".to_owned())
        },
    )
    .await;
    let request = trace.find("pubsubkafka-gateway", "POST /orders")[0];
    let publish = trace.find("pubsubkafka-gateway", &publish_name)[0];
    let consume = trace
        .spans
        .iter()
        .find(|s| s.service == "pubsubkafka-worker" && s.tags["span.kind"] == "consumer")
        .unwrap();
    let dead_letter = trace.find("pubsubkafka-worker", &dead_letter_name)[0];
    assert!(trace.descends_from(publish, request));
    assert_eq!(
        consume.parent_span_id.as_deref(),
        Some(publish.span_id.as_str()),
        "the worker's span continues the record's traceparent"
    );
    assert!(
        trace.descends_from(dead_letter, consume),
        "{}",
        trace.outline()
    );
    assert_eq!(dead_letter.tags["span.kind"], "producer");
    for span in [request, publish, consume] {
        assert_eq!(span.tags["correlation_id"], correlation, "{span:?}");
    }
    // The dead letter hands the trace on: replay or a DLQ consumer continues from it.
    let header = h::get(dead[0].headers(), h::TRACEPARENT).unwrap();
    assert_eq!(h::parse_traceparent(header).unwrap().trace_id, trace_id);
}
