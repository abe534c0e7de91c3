//! The demo (`make demo`): the local stack (with Prometheus and Jaeger), the operator,
//! `examples/dev` applied, worker pods run from the Deployments the operator wrote, the gateway,
//! and a stream of orders (with some bad ones) flowing through; it ends with a summary of what
//! happened and where to look. Every process exports its traces to Jaeger and is scraped by
//! Prometheus.
//!
//! Everything it starts keeps running after the summary (for exploring) until `make demo-down`;
//! the end-to-end test runs the same path and stops it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer};
use pubsubkafka_controller::kafka::KafkaAdmin;
use serde::{Deserialize, Serialize};

use crate::process::{self, Lifetime, Proc};
use crate::{Error, Stack, StackInfo, free_port, pods, worker};

/// How much traffic the demo sends.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub orders: usize,
    pub users: usize,
    pub bad_requests: usize,
    pub poison: usize,
    /// Print progress lines while orders flow.
    pub progress: bool,
}

/// What the demo measured; every figure is read back from the system, not counted by the
/// sender alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub topics: Vec<(String, i32)>,
    pub consumers: Vec<ConsumerSummary>,
    pub orders_sent: usize,
    pub orders_accepted: usize,
    pub rejected: BTreeMap<u16, usize>,
    pub poison_injected: usize,
    pub orders_stored: i64,
    pub dead_letters: BTreeMap<String, usize>,
    pub users_accepted: usize,
    pub users_delivered: usize,
    pub lag: i64,
    /// The trace id of one dead-lettered order (its `x-dlq-trace-id`).
    pub dead_letter_trace: Option<String>,
    pub urls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsumerSummary {
    pub name: String,
    pub replicas: i32,
    pub ready: i32,
    pub wanted: i32,
    pub max: i32,
    pub lag: i64,
}

/// Processes the demo started, for `demo down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Processes {
    pids: Vec<u32>,
}

fn binaries(repo: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let controller = target.join("debug/pubsubkafka-controller");
    let worker = target.join("debug/pubsubkafka-worker");
    for b in [&controller, &worker] {
        if !b.is_file() {
            return Err(Error::Missing {
                tool: b.display().to_string(),
                detail: "build it first: cargo build --workspace --bins".into(),
            });
        }
    }
    Ok((controller, worker))
}

fn kubectl(info: &StackInfo, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(&info.kube.kubectl)
        .env("KUBECONFIG", &info.kube.kubeconfig)
        .args(args)
        .output()
        .map_err(|e| Error::io("running kubectl", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Kube(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn say(line: &str) {
    println!("==> {line}");
}

/// Runs the demo with `lifetime` for what it starts (Detached for `make demo`, Owned for the
/// test) and returns its summary with the started processes.
pub async fn run(opts: &Options, lifetime: Lifetime) -> Result<(Summary, Running), Error> {
    let started = Instant::now();
    let (controller_bin, worker_bin) = binaries(&opts.repo)?;
    say("starting the local stack (Kafka, kube-apiserver + etcd, PostgreSQL, Prometheus, Jaeger)");
    let _ = std::fs::remove_dir_all(&opts.dir);
    let stack = Stack::start(&opts.dir, lifetime)?;
    let info = stack.info.clone();
    let stack = match lifetime {
        Lifetime::Detached => {
            stack.detach()?;
            None
        }
        Lifetime::Owned => Some(stack),
    };
    let mut procs: Vec<Proc> = Vec::new();

    let client = info.kube.client().await?;
    say("installing the CRDs");
    kubectl(
        &info,
        &[
            "apply",
            "--server-side",
            "--field-manager=demo",
            "-f",
            &opts.repo.join("crds").display().to_string(),
        ],
    )?;
    crate::operator::install_crds(&client).await;

    let demo_dir = opts.dir.join("demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| Error::io("creating the demo dir", e))?;
    let controller_port = free_port()?;
    say("starting the operator");
    let mut cmd = Command::new(&controller_bin);
    cmd.env("KUBECONFIG", &info.kube.kubeconfig)
        .args(["--kafka-bootstrap-servers", &info.kafka.sasl_bootstrap])
        .args(["--kafka-security-protocol", "SASL_SSL"])
        .args(["--kafka-username", &info.kafka.admin.username])
        .arg("--kafka-password-file")
        .arg(&info.kafka.admin_password_file)
        .arg("--kafka-ca-file")
        .arg(&info.kafka.ca_file)
        .args(["--resync-interval", "5s", "--log-format", "json"])
        .args(["--otlp-endpoint", &info.jaeger.otlp_endpoint])
        .args(["--metrics-addr", &format!("127.0.0.1:{controller_port}")]);
    procs.push(Proc::spawn(
        "pubsubkafka-controller",
        cmd,
        &demo_dir.join("controller.log"),
        lifetime,
        None,
    )?);
    info.prometheus
        .add_target("controller", "operator", controller_port, &[])?;

    say("applying examples/dev");
    kubectl(
        &info,
        &[
            "apply",
            "-f",
            &opts.repo.join("examples/dev").display().to_string(),
        ],
    )?;
    // The example's database Secret points at a cluster service; the demo has its own.
    let db = info.postgres.fresh_database("shop").await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    secrets
        .patch(
            "orders-db",
            &PatchParams::apply("demo").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "orders-db", "namespace": "shop"},
                "stringData": {"url": info.postgres.database_url(&db)},
            })),
        )
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    // The users' notifier: a small HTTP receiver standing in for the notification service.
    let receiver_port = free_port()?;
    let mut cmd = Command::new("python3");
    cmd.arg(opts.repo.join("scripts/demo-receiver.py"))
        .arg(receiver_port.to_string());
    procs.push(Proc::spawn(
        "user-notifications",
        cmd,
        &demo_dir.join("receiver.log"),
        lifetime,
        None,
    )?);
    let consumers: Api<OrderConsumer> = Api::namespaced(client.clone(), "shop");
    consumers
        .patch(
            "user-notifier",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"handler": {"http": {"url": format!("http://127.0.0.1:{receiver_port}/events")}}}})),
        )
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;

    say("waiting for the operator: topics, principals, ACLs, dead-letter topics, Deployments");
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), "shop");
    wait(
        Duration::from_secs(120),
        "KafkaTopics and OrderConsumers Ready",
        || async {
            let t = topics
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let c = consumers
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let topics_ready = t.items.len() == 2 && t.items.iter().all(KafkaTopic::is_ready);
            let consumers_ready = c.items.len() == 2
                && c.items.iter().all(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        s.observed_generation == c.metadata.generation
                            && pubsubkafka_controller::crd::conditions::is_ready(&s.conditions)
                    })
                });
            (topics_ready && consumers_ready)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await?;

    say("running the worker pods as the Deployments define them");
    let mut worker_ports = BTreeMap::new();
    for deployment in ["order-store-worker", "user-notifier-worker"] {
        let pods = pods::start_deployment(
            &client,
            "shop",
            deployment,
            &worker_bin,
            &demo_dir.join("pods"),
            lifetime,
        )
        .await?;
        let ports: Vec<u16> = pods.iter().map(|p| p.http_port).collect();
        for pod in &pods {
            info.prometheus.add_target(
                "worker",
                &pod.name,
                pod.http_port,
                &[("namespace", "shop")],
            )?;
        }
        for pod in pods {
            worker_ports.insert(pod.name.clone(), pod.http_port);
            procs.push(pod.proc_);
        }
        wait(
            Duration::from_secs(60),
            "the worker pods to be ready",
            || async {
                let ready = ports
                    .iter()
                    .all(|p| matches!(worker::http_get(*p, "/readyz"), Ok((200, _))));
                ready.then_some(()).ok_or_else(|| "not yet".to_owned())
            },
        )
        .await?;
        pods::report_ready(&client, "shop", deployment, ports.len() as i32).await?;
    }

    say("starting the gateway as principal User:order-gateway");
    let admin = KafkaAdmin::new(
        &info
            .kafka
            .admin_connection()
            .client_config()
            .map_err(|e| Error::Kube(e.to_string()))?,
        Duration::from_secs(10),
    )
    .map_err(|e| Error::Kube(e.to_string()))?;
    let gateway_password = crate::random_token(32);
    admin
        .upsert_scram_user("order-gateway", &gateway_password)
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    let password_file = demo_dir.join("order-gateway.password");
    crate::write_private(&password_file, &gateway_password)?;
    let gateway_port = free_port()?;
    let mut cmd = Command::new(&worker_bin);
    cmd.args([
        "--log-format",
        "json",
        "gateway",
        "--listen",
        &format!("127.0.0.1:{gateway_port}"),
    ])
    .args(["--kafka-bootstrap-servers", &info.kafka.sasl_bootstrap])
    .args(["--kafka-username", "order-gateway"])
    .arg("--kafka-password-file")
    .arg(&password_file)
    .arg("--kafka-ca-file")
    .arg(&info.kafka.ca_file)
    .args(["--otlp-endpoint", &info.jaeger.otlp_endpoint]);
    procs.push(Proc::spawn(
        "gateway",
        cmd,
        &demo_dir.join("gateway.log"),
        lifetime,
        None,
    )?);
    info.prometheus
        .add_target("gateway", "gateway", gateway_port, &[])?;
    wait(
        Duration::from_secs(60),
        "the gateway to be ready",
        || async {
            match worker::http_get(gateway_port, "/readyz") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;

    let mut summary = traffic(opts, &info, gateway_port, &admin).await?;

    // Read everything back from the system.
    say("waiting for the workers to drain");
    let pg = info.postgres.connect(&db).await?;
    let expected_dead = opts.poison;
    wait(
        Duration::from_secs(120),
        "orders stored and dead letters published",
        || async {
            let (stored, _) = worker::stored(&pg).await;
            let dead = dead_letter_count(&admin).await;
            (stored as usize == summary.orders_accepted && dead >= expected_dead)
                .then_some(())
                .ok_or(format!("{stored} stored, {dead} dead letters"))
        },
    )
    .await?;
    summary.orders_stored = worker::stored(&pg).await.0;
    for m in worker::read_all(
        &info.kafka,
        "orders-dlq",
        expected_dead,
        Duration::from_secs(20),
    )
    .await
    {
        let headers = rdkafka::Message::headers(&m);
        let class = pubsubkafka_worker::headers::get(headers, "x-dlq-error-class")
            .unwrap_or("?")
            .to_owned();
        *summary.dead_letters.entry(class).or_default() += 1;
        if summary.dead_letter_trace.is_none() {
            summary.dead_letter_trace =
                pubsubkafka_worker::headers::get(headers, "x-dlq-trace-id").map(str::to_owned);
        }
    }
    wait(Duration::from_secs(60), "users delivered", || async {
        let delivered = receiver_count(receiver_port);
        (delivered >= summary.users_accepted)
            .then_some(())
            .ok_or(format!("{delivered} delivered"))
    })
    .await?;
    summary.users_delivered = receiver_count(receiver_port);

    // The operator measures lag and readiness on its resync; wait for fresh figures.
    wait(
        Duration::from_secs(60),
        "the operator to report zero lag",
        || async {
            let c = consumers
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let settled = c.items.iter().all(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.lag == Some(0) && s.ready_replicas == s.replicas)
            });
            settled.then_some(()).ok_or_else(|| "not yet".to_owned())
        },
    )
    .await?;
    for t in topics
        .list(&Default::default())
        .await
        .map_err(|e| Error::Kube(e.to_string()))?
        .items
    {
        summary.topics.push((
            t.topic_name(),
            t.status.and_then(|s| s.partitions).unwrap_or(0),
        ));
    }
    for dlq in ["orders-dlq", "users-dlq"] {
        if let Ok(Some(d)) = admin.describe_topic(dlq).await {
            summary.topics.push((dlq.to_owned(), d.partition_count()));
        }
    }
    for c in consumers
        .list(&Default::default())
        .await
        .map_err(|e| Error::Kube(e.to_string()))?
        .items
    {
        let s = c.status.clone().unwrap_or_default();
        summary.lag += s.lag.unwrap_or(0);
        summary.consumers.push(ConsumerSummary {
            name: c.metadata.name.clone().unwrap_or_default(),
            replicas: s.replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            wanted: s.desired_replicas.unwrap_or(0),
            max: s.max_replicas.unwrap_or(0),
            lag: s.lag.unwrap_or(0),
        });
    }
    summary.urls.insert(
        "gateway".into(),
        format!("http://127.0.0.1:{gateway_port}/orders"),
    );
    summary.urls.insert(
        "gateway metrics".into(),
        format!("http://127.0.0.1:{gateway_port}/metrics"),
    );
    summary
        .urls
        .insert("prometheus".into(), info.prometheus.url.clone());
    summary
        .urls
        .insert("jaeger".into(), info.jaeger.query_url.clone());
    if let Some(trace) = &summary.dead_letter_trace {
        summary.urls.insert(
            "dead-lettered order trace".into(),
            info.jaeger.trace_url(trace),
        );
    }
    summary.urls.insert(
        "operator metrics".into(),
        format!("http://127.0.0.1:{controller_port}/metrics"),
    );
    for (pod, port) in &worker_ports {
        summary.urls.insert(
            format!("{pod} metrics"),
            format!("http://127.0.0.1:{port}/metrics"),
        );
    }
    say(&format!("done in {:.0}s", started.elapsed().as_secs_f64()));

    if lifetime == Lifetime::Detached {
        let pids = Processes {
            pids: procs.drain(..).map(Proc::detach).collect(),
        };
        std::fs::write(
            opts.dir.join("demo.json"),
            serde_json::to_string(&pids).expect("serializes"),
        )
        .map_err(|e| Error::io("writing demo.json", e))?;
    }
    Ok((summary, Running { procs, stack }))
}

/// What a demo run started, when it owns it (the test): dropped, everything stops.
pub struct Running {
    pub procs: Vec<Proc>,
    pub stack: Option<Stack>,
}

async fn wait<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(Error::Kube(format!("timed out waiting for {what}: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn dead_letter_count(admin: &KafkaAdmin) -> usize {
    match admin.describe_topic("orders-dlq").await {
        Ok(Some(d)) => admin
            .end_offsets("orders-dlq", d.partition_count())
            .await
            .map(|ends| ends.values().sum::<i64>() as usize)
            .unwrap_or(0),
        _ => 0,
    }
}

fn receiver_count(port: u16) -> usize {
    worker::http_get(port, "/count")
        .ok()
        .and_then(|(_, body)| body.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends orders, users, bad requests and poison records; returns the sender's side.
async fn traffic(
    opts: &Options,
    info: &StackInfo,
    port: u16,
    _admin: &KafkaAdmin,
) -> Result<Summary, Error> {
    say(&format!(
        "sending {} orders, {} users and {} bad requests to the gateway; injecting {} poison records",
        opts.orders, opts.users, opts.bad_requests, opts.poison
    ));
    let mut summary = Summary {
        orders_sent: opts.orders,
        poison_injected: opts.poison,
        ..Summary::default()
    };
    let json = [("Content-Type", "application/json")];
    let total = opts.orders;
    let lanes = 8;
    let progress = opts.progress;
    let handles: Vec<_> = (0..lanes)
        .map(|lane| {
            tokio::task::spawn_blocking(move || {
                let mut accepted = 0;
                for i in (lane..total).step_by(lanes) {
                    let event = pubsubkafka_worker::order::sample(&format!("demo-{i}"), 0);
                    let body = serde_json::to_vec(&serde_json::json!({
                        "order_id": event.order_id,
                        "customer_info": event.customer_info,
                        "items": event.items,
                        "inventory_status": event.inventory_status,
                    }))
                    .expect("serializes");
                    let correlation = format!("demo-request-{i}");
                    if let Ok((202, _)) = worker::http_request(
                        port,
                        "POST",
                        "/orders",
                        &[
                            ("Content-Type", "application/json"),
                            ("X-Correlation-ID", &correlation),
                        ],
                        &body,
                    ) {
                        accepted += 1;
                    }
                    if progress && lane == 0 && i % 100 == 0 {
                        println!("    ... {i} of {total} orders sent");
                    }
                }
                accepted
            })
        })
        .collect();
    for h in handles {
        summary.orders_accepted += h.await.map_err(|e| Error::Kube(e.to_string()))?;
    }
    for i in 0..opts.users {
        let body = format!(
            r#"{{"user_id": "user-{i}", "name": "User {i}", "email": "user{i}@example.com", "country": "FR"}}"#
        );
        if let Ok((202, _)) = worker::http_request(port, "POST", "/users", &json, body.as_bytes()) {
            summary.users_accepted += 1;
        }
    }
    /// Request headers and body.
    type Request<'a> = (&'a [(&'a str, &'a str)], &'a [u8]);
    let bad: [Request<'_>; 3] = [
        (&json, b"{\"customer_info\": "),
        (&[("Content-Type", "text/csv")], b"order,1"),
        (&json, br#"{"customer_info": {"customer_id": "c", "name": "n", "email": "not-an-email", "shipping_address": {"line1": "1 rue", "city": "Lyon", "postal_code": "69001", "country": "FR"}}, "items": []}"#),
    ];
    for i in 0..opts.bad_requests {
        let (headers, body) = bad[i % bad.len()];
        if let Ok((status, _)) = worker::http_request(port, "POST", "/orders", headers, body) {
            *summary.rejected.entry(status).or_default() += 1;
        }
    }
    // A legacy producer writes records that are not valid orders straight to the topic. It is
    // instrumented with OpenTelemetry: each record carries the `traceparent` of its publish span,
    // so a dead-lettered order is one trace in Jaeger, from its producer to the dead letter.
    let producer = worker::producer(&info.kafka);
    let legacy = LegacyProducerTraces::new(&info.jaeger.otlp_endpoint);
    let poison: Vec<(String, Vec<u8>)> = (0..opts.poison)
        .map(|i| {
            let value = if i % 2 == 0 {
                b"<order><id>legacy</id></order>".to_vec()
            } else {
                let mut e = pubsubkafka_worker::order::sample(&format!("legacy-{i}"), 0);
                e.items[0].quantity = 0;
                serde_json::to_vec(&e).expect("serializes")
            };
            (format!("legacy-{i}"), value)
        })
        .collect();
    let traceparents: Vec<String> = poison.iter().map(|(key, _)| legacy.publish(key)).collect();
    worker::produce_traced(&producer, "orders", &poison, &traceparents).await;
    legacy.flush().await;
    Ok(summary)
}

/// The spans of the demo's legacy producer, exported to the stack's Jaeger.
struct LegacyProducerTraces {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl LegacyProducerTraces {
    fn new(otlp_endpoint: &str) -> Self {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{otlp_endpoint}/v1/traces"))
            .build()
            .expect("an OTLP/HTTP exporter");
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("legacy-order-system")
                    .build(),
            )
            .build();
        Self { provider }
    }

    /// A producer span for the record keyed `key`; its `traceparent`.
    fn publish(&self, key: &str) -> String {
        use opentelemetry::trace::{Span, SpanKind, Tracer, TracerProvider};
        let tracer = self.provider.tracer("demo");
        let mut span = tracer
            .span_builder("orders publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                opentelemetry::KeyValue::new("messaging.system", "kafka"),
                opentelemetry::KeyValue::new("messaging.destination.name", "orders"),
                opentelemetry::KeyValue::new("messaging.kafka.message.key", key.to_owned()),
            ])
            .start(&tracer);
        let cx = span.span_context().clone();
        span.end();
        pubsubkafka_worker::headers::format_traceparent(
            &cx.trace_id().to_string(),
            &cx.span_id().to_string(),
            cx.is_sampled(),
        )
    }

    async fn flush(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .await;
    }
}

/// The summary as the demo prints it.
pub fn render(s: &Summary) -> String {
    let mut out = String::from("\nPubSubKafka demo: summary\n");
    let topics: Vec<String> = s
        .topics
        .iter()
        .map(|(t, p)| format!("{t} ({p} partitions)"))
        .collect();
    out.push_str(&format!("  Topics        {}\n", topics.join(", ")));
    for c in &s.consumers {
        let cap = if c.wanted > c.replicas {
            format!(" ({} wanted, capped at the {} partitions)", c.wanted, c.max)
        } else {
            String::new()
        };
        let plural = if c.replicas == 1 {
            "replica"
        } else {
            "replicas"
        };
        out.push_str(&format!(
            "  Consumer      {}: {} {plural}{cap}, {} ready, lag {}\n",
            c.name, c.replicas, c.ready, c.lag
        ));
    }
    out.push_str(&format!(
        "  Orders        {} sent, {} accepted (202 after the broker's ack), {} stored in PostgreSQL\n",
        s.orders_sent, s.orders_accepted, s.orders_stored
    ));
    let rejected: Vec<String> = s
        .rejected
        .iter()
        .map(|(code, n)| format!("{n} x {code}"))
        .collect();
    out.push_str(&format!(
        "  Rejected      {} bad requests ({}): nothing reached Kafka\n",
        s.rejected.values().sum::<usize>(),
        rejected.join(", ")
    ));
    let dead: Vec<String> = s
        .dead_letters
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    out.push_str(&format!(
        "  Dead letters  {} in orders-dlq of {} poison records injected: {}\n",
        s.dead_letters.values().sum::<usize>(),
        s.poison_injected,
        dead.join(", ")
    ));
    out.push_str(&format!(
        "  Users         {} accepted, {} delivered to the notifier\n",
        s.users_accepted, s.users_delivered
    ));
    out.push_str(&format!("  Total lag     {}\n", s.lag));
    if let Some(trace) = &s.dead_letter_trace {
        out.push_str(&format!(
            "  Traces        a dead-lettered order is trace {trace} (link below)\n"
        ));
    }
    out.push_str("\nWhere to look next:\n  source .stack/stack.env\n");
    out.push_str("  kubectl get kafkatopics,dlqpolicies,orderconsumers -n shop\n");
    out.push_str("  kubectl describe orderconsumer order-store -n shop\n");
    for (name, url) in &s.urls {
        out.push_str(&format!("  {name:<31} {url}\n"));
    }
    out.push_str("  logs: .stack/demo/*.log    stop everything: make demo-down\n");
    out
}

/// Stops what `make demo` started and the stack.
pub fn down(dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(dir.join("demo.json"))
        && let Ok(p) = serde_json::from_str::<Processes>(&text)
    {
        for pid in p.pids {
            process::terminate_pid(pid, Duration::from_secs(10));
        }
    }
    match StackInfo::read(dir) {
        Ok(info) => info.stop_detached(),
        Err(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
