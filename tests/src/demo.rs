//! The demo (`make demo`): the local stack with its real Kubernetes node, the chart installed by
//! `helm` (the operator runs as a pod), `examples/dev` applied, worker pods started by the
//! Deployments the operator owns, the gateway as a pod behind a Service, and a stream of orders
//! (with some bad ones) sent through that Service; it ends with a summary read back from the
//! system (pods as the kubelet reports them, rows in PostgreSQL, records in Kafka) and where to
//! look. Every pod exports its traces to Jaeger and is found by Prometheus through the
//! Kubernetes API.
//!
//! Everything keeps running after the summary (for exploring) until `make demo-down`; the
//! end-to-end test runs the same path on the test suite's stack and removes what it installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer, OrderGateway};
use pubsubkafka_controller::kafka::KafkaAdmin;
use serde::{Deserialize, Serialize};

use crate::process::{self, Lifetime, Proc};
use crate::{Error, Stack, StackInfo, free_port, worker};

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
    /// Every pod of the operator's and the shop's namespaces, as the API reports them.
    pub pods: Vec<PodSummary>,
    pub urls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodSummary {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub restarts: i32,
    pub ip: String,
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

fn say(line: &str) {
    println!("==> {line}");
}

/// Runs the demo with `lifetime` for what it starts (Detached for `make demo`, Owned for the
/// test) and returns its summary with the started processes.
/// Starts the local stack in `opts.dir` and runs the demo on it.
pub async fn run(opts: &Options, lifetime: Lifetime) -> Result<(Summary, Running), Error> {
    say(
        "starting the local stack: a Kubernetes node (kubelet, containerd, CoreDNS, ...) and \
         beside it Kafka, PostgreSQL, Prometheus and Jaeger",
    );
    crate::node::clean_host(&opts.dir);
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
    let (summary, mut running) = run_on(opts, &info, lifetime).await?;
    running.stack = stack;
    Ok((summary, running))
}

/// The demo's namespace (from `examples/dev`) and its release of the chart.
pub const NAMESPACE: &str = "shop";
pub const RELEASE: &str = "pubsubkafka";
pub const RELEASE_NAMESPACE: &str = "pubsubkafka-system";

/// The demo on a running stack: the chart installed by `helm`, `examples/dev` applied, the
/// gateway as a pod behind a Service, orders sent through that Service, and the summary read
/// back from the system. The demo starts no operator or worker process of its own and writes
/// no status: the node runs the pods.
pub async fn run_on(
    opts: &Options,
    info: &StackInfo,
    lifetime: Lifetime,
) -> Result<(Summary, Running), Error> {
    let started = Instant::now();
    let mut running = Running {
        procs: Vec::new(),
        stack: None,
        installed_on: None,
    };
    let node = info.node.clone().ok_or_else(|| Error::Missing {
        tool: "a Kubernetes node".into(),
        detail: "the stack has none".into(),
    })?;
    for name in ["controller", "worker"] {
        if !node.images.contains(&crate::node::product_image(name)) {
            return Err(Error::Missing {
                tool: format!("the {name} image"),
                detail: "run `make images` before the stack starts (`make demo` does)".into(),
            });
        }
    }
    let client = info.kube.client().await?;
    let demo_dir = opts.dir.join("demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| Error::io("creating the demo dir", e))?;
    let node_ip = crate::node::NODE_IP;

    say(
        "installing the chart: helm install pubsubkafka charts/pubsubkafka (the operator runs as a pod)",
    );
    let otlp = format!("tracing.otlpEndpoint={}", info.jaeger.otlp_endpoint);
    crate::cluster::try_install(
        info,
        RELEASE_NAMESPACE,
        RELEASE,
        &[&otlp, "resyncInterval=5s", "logFormat=json"],
    )
    .map_err(Error::Kube)?;
    running.installed_on = Some(info.clone());

    // The examples' two placeholders point at cluster services the demo does not have: its
    // PostgreSQL and its notifier listen on the node's address. They are replaced before
    // anything is applied, as the examples ask, so no Deployment rolls because of the demo.
    let db = info.postgres.fresh_database("shop").await?;
    let db_url = info
        .postgres
        .database_url_for_pods(&db)
        .ok_or_else(|| Error::Postgres("the stack's PostgreSQL does not listen for pods".into()))?;
    // The users' notifier: a small HTTP receiver on the node's address standing in for the
    // notification service.
    let receiver_port = free_port()?;
    let mut cmd = Command::new("python3");
    cmd.arg(opts.repo.join("scripts/demo-receiver.py"))
        .arg(receiver_port.to_string())
        .arg(node_ip);
    running.procs.push(Proc::spawn(
        "user-notifications",
        cmd,
        &demo_dir.join("receiver.log"),
        lifetime,
        None,
    )?);
    let receiver = format!("{node_ip}:{receiver_port}");
    let manifests = examples_with(
        &opts.repo.join("examples/dev"),
        &[
            (EXAMPLE_DATABASE_URL, db_url.as_str()),
            (EXAMPLE_NOTIFIER_URL, &format!("http://{receiver}/events")),
        ],
    )?;
    say("applying examples/dev (the database and notifier URLs replaced)");
    info.kube
        .kubectl_with_stdin(&["apply", "-f", "-"], &manifests)
        .map_err(|e| Error::Kube(format!("kubectl apply examples/dev: {e}")))?;
    let consumers: Api<OrderConsumer> = Api::namespaced(client.clone(), NAMESPACE);

    let admin = KafkaAdmin::new(
        &info
            .kafka
            .admin_connection()
            .client_config()
            .map_err(|e| Error::Kube(e.to_string()))?,
        Duration::from_secs(10),
    )
    .map_err(|e| Error::Kube(e.to_string()))?;

    say("waiting for the operator and the node: topics, principals, ACLs, Deployments, pods");
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), NAMESPACE);
    let gateways: Api<OrderGateway> = Api::namespaced(client.clone(), NAMESPACE);
    wait(
        Duration::from_secs(180),
        "KafkaTopics and OrderConsumers Ready, OrderGateways reconciled",
        || async {
            let t = topics
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let c = consumers
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let g = gateways
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let topics_ready = t.items.len() == 2 && t.items.iter().all(KafkaTopic::is_ready);
            // Their pods are waited for below, with the workers'.
            let gateways_reconciled = g.items.len() == 2
                && g.items.iter().all(|g| {
                    g.status.as_ref().is_some_and(|s| {
                        s.observed_generation == g.metadata.generation
                            && s.conditions.iter().any(|c| {
                                c.type_ == pubsubkafka_controller::crd::conditions::RECONCILED
                                    && c.status == "True"
                            })
                    })
                });
            let consumers_ready = c.items.len() == 2
                && c.items.iter().all(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        s.observed_generation == c.metadata.generation
                            && pubsubkafka_controller::crd::conditions::is_ready(&s.conditions)
                    })
                });
            if topics_ready && consumers_ready && gateways_reconciled {
                return Ok(());
            }
            // What a person would look at: each resource's Ready condition.
            let ready_of = |name: Option<String>, conditions: Option<&Vec<_>>| {
                let ready = conditions
                    .and_then(
                        |cs: &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
                            cs.iter().find(|c| c.type_ == "Ready").cloned()
                        },
                    )
                    .map(|c| format!("{} {}: {}", c.status, c.reason, c.message))
                    .unwrap_or_else(|| "no Ready condition yet".into());
                format!("{}: {ready}", name.unwrap_or_default())
            };
            let mut states: Vec<String> = t
                .items
                .iter()
                .map(|t| {
                    ready_of(
                        t.metadata.name.clone(),
                        t.status.as_ref().map(|s| &s.conditions),
                    )
                })
                .collect();
            states.extend(c.items.iter().map(|c| {
                ready_of(
                    c.metadata.name.clone(),
                    c.status.as_ref().map(|s| &s.conditions),
                )
            }));
            states.extend(g.items.iter().map(|g| {
                ready_of(
                    g.metadata.name.clone(),
                    g.status.as_ref().map(|s| &s.conditions),
                )
            }));
            Err(states.join("; "))
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    wait(
        Duration::from_secs(240),
        "every worker and gateway pod Running and Ready",
        || async {
            let mut missing = Vec::new();
            for c in consumers
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
            {
                let Some(status) = c.status else {
                    return Err("no status yet".into());
                };
                let selector = status.selector.clone().unwrap_or_default();
                let (ready, all) = ready_pods(&pods, &selector).await?;
                if ready != status.replicas.unwrap_or(0) as usize
                    || all != ready
                    || status.ready_replicas != status.replicas
                {
                    missing.push(format!(
                        "{}: {ready} of {:?} pods ready ({all} pods)",
                        c.metadata.name.unwrap_or_default(),
                        status.replicas
                    ));
                }
            }
            for g in gateways
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
            {
                let Some(status) = g.status else {
                    return Err("no gateway status yet".into());
                };
                let selector = status.selector.clone().unwrap_or_default();
                let (ready, all) = ready_pods(&pods, &selector).await?;
                if ready != g.spec.replicas as usize
                    || all != ready
                    || !pubsubkafka_controller::crd::conditions::is_ready(&status.conditions)
                {
                    missing.push(format!(
                        "{}: {ready} of {} gateway pods ready ({all} pods)",
                        g.metadata.name.unwrap_or_default(),
                        g.spec.replicas
                    ));
                }
            }
            missing
                .is_empty()
                .then_some(())
                .ok_or_else(|| missing.join(", "))
        },
    )
    .await?;
    // The Services' addresses from the host, as a client inside the cluster would use them;
    // their rules appear a moment after the pods are Ready.
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let mut addresses = Vec::new();
    for name in ["orders-gateway", "users-gateway"] {
        let service = services
            .get(name)
            .await
            .map_err(|e| Error::Kube(e.to_string()))?;
        let spec = service.spec.unwrap_or_default();
        let ip = spec
            .cluster_ip
            .ok_or_else(|| Error::Kube(format!("Service {name} has no ClusterIP")))?;
        let port = spec
            .ports
            .unwrap_or_default()
            .first()
            .map_or(80, |p| p.port);
        let address = format!("{ip}:{port}");
        wait(
            Duration::from_secs(60),
            &format!("Service {name} to answer"),
            || async {
                match worker::http_request_at(&address, "GET", "/readyz", &[], b"") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await?;
        addresses.push(address);
    }
    let (orders_gateway, users_gateway) = (addresses[0].clone(), addresses[1].clone());

    // The dead-letter topic outlives a namespace (Retain): count only this run's records.
    let dead_before = dead_letter_offsets(&admin).await;
    let mut summary = traffic(opts, info, &orders_gateway, &users_gateway).await?;

    // Read everything back from the system.
    say("waiting for the workers to drain");
    let pg = info.postgres.connect(&db).await?;
    let expected_dead = opts.poison;
    wait(
        Duration::from_secs(120),
        "orders stored and dead letters published",
        || async {
            let (stored, _) = worker::stored(&pg).await;
            let dead = dead_letter_count(&admin, &dead_before).await;
            (stored as usize == summary.orders_accepted && dead >= expected_dead)
                .then_some(())
                .ok_or(format!("{stored} stored, {dead} dead letters"))
        },
    )
    .await?;
    summary.orders_stored = worker::stored(&pg).await.0;
    let earlier: usize = dead_before.values().sum::<i64>() as usize;
    for m in worker::read_all(
        &info.kafka,
        "orders-dlq",
        earlier + expected_dead,
        Duration::from_secs(20),
    )
    .await
    .into_iter()
    .filter(|m| {
        use rdkafka::Message;
        m.offset() >= dead_before.get(&m.partition()).copied().unwrap_or(0)
    }) {
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
        let delivered = receiver_count(&receiver);
        (delivered >= summary.users_accepted)
            .then_some(())
            .ok_or(format!("{delivered} delivered"))
    })
    .await?;
    summary.users_delivered = receiver_count(&receiver);

    // The operator measures lag on its resync; wait for fresh figures.
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
            t.topic_name().to_owned(),
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
    // What the kubelet reports, not the operator: every pod's phase, readiness and restarts.
    for namespace in [RELEASE_NAMESPACE, NAMESPACE] {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        for p in api
            .list(&Default::default())
            .await
            .map_err(|e| Error::Kube(e.to_string()))?
            .items
        {
            let status = p.status.clone().unwrap_or_default();
            summary.pods.push(PodSummary {
                name: format!(
                    "{namespace}/{}",
                    p.metadata.name.clone().unwrap_or_default()
                ),
                phase: status.phase.clone().unwrap_or_default(),
                ready: crate::cluster::pod_ready(&p),
                restarts: status
                    .container_statuses
                    .iter()
                    .flatten()
                    .map(|c| c.restart_count)
                    .sum(),
                ip: status.pod_ip.clone().unwrap_or_default(),
            });
        }
    }
    summary.urls.insert(
        "orders gateway (Service orders-gateway)".into(),
        format!("http://{orders_gateway}/orders"),
    );
    summary.urls.insert(
        "users gateway (Service users-gateway)".into(),
        format!("http://{users_gateway}/users"),
    );
    summary.urls.insert(
        "orders gateway metrics".into(),
        format!("http://{orders_gateway}/metrics"),
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
    for pod in &summary.pods {
        let port = if pod.name.starts_with(RELEASE_NAMESPACE) {
            8080
        } else if pod.name.contains("gateway") {
            continue;
        } else {
            9090
        };
        summary.urls.insert(
            format!("{} metrics", pod.name),
            format!("http://{}:{port}/metrics", pod.ip),
        );
    }
    say(&format!("done in {:.0}s", started.elapsed().as_secs_f64()));

    if lifetime == Lifetime::Detached {
        let pids = Processes {
            pids: running.procs.drain(..).map(Proc::detach).collect(),
        };
        std::fs::write(
            opts.dir.join("demo.json"),
            serde_json::to_string(&pids).expect("serializes"),
        )
        .map_err(|e| Error::io("writing demo.json", e))?;
        running.installed_on = None;
    }
    Ok((summary, running))
}

/// Pods matching `selector` that are Running and Ready, not being deleted.
/// The example's event-store URL and notifier URL, which the demo replaces.
const EXAMPLE_DATABASE_URL: &str = "postgres://orders:change-me@postgresql.shop.svc:5432/orders";
const EXAMPLE_NOTIFIER_URL: &str = "http://user-notifications.shop.svc:8080/events";

/// Every manifest of `dir`, in file-name order, with each `(placeholder, value)` replaced; a
/// placeholder no longer in the examples is an error, not a silently unchanged manifest.
fn examples_with(dir: &std::path::Path, replacements: &[(&str, &str)]) -> Result<String, Error> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("listing the examples", e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut manifests = String::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| Error::io("reading an example", e))?;
        manifests.push_str("---\n");
        manifests.push_str(&text);
        manifests.push('\n');
    }
    for (placeholder, value) in replacements {
        if !manifests.contains(placeholder) {
            return Err(Error::Missing {
                tool: format!("the placeholder {placeholder}"),
                detail: format!("not found in {}", dir.display()),
            });
        }
        manifests = manifests.replace(placeholder, value);
    }
    Ok(manifests)
}

/// The pods `selector` matches that are Ready and not being deleted, and all it matches: a
/// rollout is over when the two are equal (no pod of an old ReplicaSet left, even finished).
async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Result<(usize, usize), String> {
    let all = pods
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .map_err(|e| e.to_string())?
        .items;
    let ready = all
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && crate::cluster::pod_ready(p))
        .count();
    Ok((ready, all.len()))
}

/// What a demo run started, when it owns it (the test): dropped, everything stops; a demo run
/// on a shared stack deletes its namespace (the operator still running) and uninstalls its
/// release.
pub struct Running {
    pub procs: Vec<Proc>,
    pub stack: Option<Stack>,
    installed_on: Option<StackInfo>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(info) = self.installed_on.take() else {
            return;
        };
        let _ = info
            .kube
            .kubectl()
            .args(["delete", "namespace", NAMESPACE, "--timeout=120s"])
            .output();
        let _ = crate::cluster::Release {
            name: RELEASE.into(),
            namespace: RELEASE_NAMESPACE.into(),
        }
        .uninstall(&info);
        let _ = info
            .kube
            .kubectl()
            .args(["delete", "namespace", RELEASE_NAMESPACE, "--wait=false"])
            .output();
    }
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

/// The end offset of each partition of `orders-dlq` (none before the topic exists).
async fn dead_letter_offsets(admin: &KafkaAdmin) -> BTreeMap<i32, i64> {
    match admin.describe_topic("orders-dlq").await {
        Ok(Some(d)) => admin
            .end_offsets("orders-dlq", d.partition_count())
            .await
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    }
}

/// Dead letters published since `before` was read.
async fn dead_letter_count(admin: &KafkaAdmin, before: &BTreeMap<i32, i64>) -> usize {
    dead_letter_offsets(admin)
        .await
        .iter()
        .map(|(p, end)| end - before.get(p).copied().unwrap_or(0))
        .sum::<i64>() as usize
}

fn receiver_count(address: &str) -> usize {
    worker::http_request_at(address, "GET", "/count", &[], b"")
        .ok()
        .and_then(|(_, body)| body.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends orders, users, bad requests and poison records; returns the sender's side.
async fn traffic(
    opts: &Options,
    info: &StackInfo,
    gateway: &str,
    users_gateway: &str,
) -> Result<Summary, Error> {
    say(&format!(
        "sending {} orders, {} users and {} bad requests to the gateways; injecting {} poison records",
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
            let gateway = gateway.to_owned();
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
                    if let Ok((202, _)) = worker::http_request_at(
                        &gateway,
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
        if let Ok((202, _)) =
            worker::http_request_at(users_gateway, "POST", "/users", &json, body.as_bytes())
        {
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
        if let Ok((status, _)) = worker::http_request_at(gateway, "POST", "/orders", headers, body)
        {
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
    let running = s
        .pods
        .iter()
        .filter(|p| p.phase == "Running" && p.ready)
        .count();
    let restarts: i32 = s.pods.iter().map(|p| p.restarts).sum();
    out.push_str(&format!(
        "  Pods          {running} of {} Running and Ready, {restarts} restarts (started by Kubernetes: \
         the operator, the workers, the gateways)\n",
        s.pods.len()
    ));
    if let Some(trace) = &s.dead_letter_trace {
        out.push_str(&format!(
            "  Traces        a dead-lettered order is trace {trace} (link below)\n"
        ));
    }
    out.push_str("\nWhere to look next:\n  source .stack/stack.env\n");
    out.push_str("  kubectl get pods -A -o wide\n");
    out.push_str("  kubectl get kafkatopics,dlqpolicies,orderconsumers -n shop\n");
    out.push_str("  kubectl logs -n pubsubkafka-system deploy/pubsubkafka-controller\n");
    out.push_str("  kubectl describe orderconsumer order-store -n shop\n");
    for (name, url) in &s.urls {
        out.push_str(&format!("  {name:<31} {url}\n"));
    }
    out.push_str("  node logs: .stack/node/logs/*.log    stop everything: make demo-down\n");
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
