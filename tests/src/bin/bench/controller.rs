//! The controller at scale: N KafkaTopic resources applied at once to a real API server, the
//! controller binary (release build) reconciling them against the benchmark's Kafka. Measures
//! the time until every resource is Ready for its generation, the controller's resident memory
//! once at rest, and the API requests it made per resource (from the API server's own
//! `apiserver_request_total`, minus the benchmark's own requests).
//!
//! Then N autoscaled OrderConsumers on one topic, held at rest: the API requests the controller
//! makes per consumer over a window several resyncs long, and its writes (which should be none).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer, conditions};
use testenv::kube_api::{api_server_own, is_write, request_counts, request_increase};
use testenv::{KafkaInfo, KubeApi, Lifetime, operator};

pub struct ControllerResult {
    pub topics: usize,
    pub seconds_to_ready: f64,
    pub rss_mib: f64,
    /// API requests of the controller: every request the API server counted, less its own and
    /// the benchmark's. Watches are counted when they end, so open ones are not in it.
    pub controller_requests: f64,
    /// The API server's request counts that changed, by verb, resource and subresource.
    pub breakdown: Vec<(String, f64)>,
    pub bench_requests: f64,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// N autoscaled OrderConsumers at rest.
pub struct ConsumersAtRest {
    pub consumers: usize,
    pub seconds_to_reconciled: f64,
    /// The controller's VmRSS once all are Reconciled.
    pub rss_mib: f64,
    /// The controller's API requests from the first create until all were Reconciled.
    pub apply_requests: f64,
    pub resync_s: u64,
    pub window_s: u64,
    /// Every request of the controller during the window (the benchmark makes none then).
    pub requests: f64,
    /// Of which writes (create, update, patch, apply, delete), status included.
    pub writes: f64,
    pub breakdown: Vec<(String, f64)>,
}

/// Starts an API server, then for each size in `sizes` a controller on a namespace of its own;
/// then, when `consumers` > 0, that many autoscaled OrderConsumers at rest.
pub async fn controller_bench(
    kafka: &KafkaInfo,
    controller_bin: &Path,
    dir: &Path,
    sizes: &[usize],
    consumers: usize,
) -> (Vec<ControllerResult>, Option<ConsumersAtRest>) {
    eprintln!("==> starting kube-apiserver and etcd");
    let api = KubeApi::start(&dir.join("kube"), Lifetime::Owned).expect("API server");
    let client = api.info.client().await.expect("client");
    operator::install_crds(&client).await;
    let mut results = Vec::new();
    for &n in sizes {
        results.push(one_size(kafka, &api, &client, controller_bin, dir, n).await);
    }
    let at_rest = if consumers > 0 {
        Some(consumers_at_rest(kafka, &api, &client, controller_bin, dir, consumers).await)
    } else {
        None
    };
    (results, at_rest)
}

/// A controller on namespace `ns` of `api` with `extra` flags, once it serves /readyz.
async fn start_controller(
    kafka: &KafkaInfo,
    api: &KubeApi,
    controller_bin: &Path,
    dir: &Path,
    ns: &str,
    extra: &[&str],
) -> testenv::process::Proc {
    let metrics_port = testenv::free_port().expect("port");
    let mut cmd = Command::new(controller_bin);
    cmd.env("KUBECONFIG", &api.info.kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--kafka-bootstrap-servers", &kafka.bootstrap])
        .args(["--kafka-security-protocol", "PLAINTEXT"])
        .args(["--watch-namespace", ns])
        // The benchmark's topic names are not "<namespace>.*": today's rules.
        .args(["--default-access-policy", "open"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--log-format", "json"])
        .args(extra);
    let mut controller = testenv::process::Proc::spawn(
        "bench-controller",
        cmd,
        &dir.join(format!("controller-{ns}.log")),
        Lifetime::Owned,
        None,
    )
    .expect("the controller starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(
        testenv::worker::http_get(metrics_port, "/readyz"),
        Ok((200, _))
    ) {
        controller.check_alive().expect("the controller runs");
        assert!(Instant::now() < deadline, "the controller did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    controller
}

/// N OrderConsumers with lag autoscaling on one topic, reconciled, then held at rest for
/// several resyncs while the API server counts the controller's requests.
async fn consumers_at_rest(
    kafka: &KafkaInfo,
    api: &KubeApi,
    client: &kube::Client,
    controller_bin: &Path,
    dir: &Path,
    n: usize,
) -> ConsumersAtRest {
    const RESYNC_S: u64 = 30;
    const WINDOW_S: u64 = 120;
    let ns = format!("bench-consumers-{n}");
    operator::create_namespace(client, &ns).await;
    let resync = format!("{RESYNC_S}s");
    let mut controller = start_controller(
        kafka,
        api,
        controller_bin,
        dir,
        &ns,
        &["--resync-interval", &resync],
    )
    .await;
    let topic = format!("{ns}-orders");
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db}}\nstringData: {{url: 'postgres://nobody@127.0.0.1:1/none'}}\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: {topic}}}\nspec: {{partitions: 3, replicationFactor: 1}}\n"
    );
    api.info
        .kubectl_with_stdin(&["apply", "-n", &ns, "-f", "-"], &yaml)
        .expect("the topic and Secret");
    eprintln!("==> {n} autoscaled OrderConsumers applied at once");
    let consumers: Api<OrderConsumer> = Api::namespaced(client.clone(), &ns);
    let before = request_counts(client).await;
    let started = Instant::now();
    let created = futures::stream::iter(0..n)
        .map(|i| {
            let consumers = consumers.clone();
            let topic = topic.clone();
            async move {
                let consumer: OrderConsumer = serde_json::from_value(serde_json::json!({
                    "apiVersion": "pubsubkafka.io/v1alpha1",
                    "kind": "OrderConsumer",
                    "metadata": {"name": format!("c{i:05}")},
                    "spec": {
                        "topicRef": {"name": topic},
                        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                        "handler": {"eventStore": {"connectionSecret": {"name": "orders-db"}}}
                    }
                }))
                .expect("an OrderConsumer");
                consumers
                    .create(&PostParams::default(), &consumer)
                    .await
                    .expect("created")
            }
        })
        .buffer_unordered(64)
        .count()
        .await;
    assert_eq!(created, n);
    let seconds_to_reconciled = until_all(
        &consumers,
        n,
        started,
        Duration::from_secs(1800),
        &mut controller,
        |c: &OrderConsumer| {
            c.status.as_ref().is_some_and(|s| {
                s.observed_generation == c.metadata.generation
                    && conditions::is_reconciled(&s.conditions)
            })
        },
    )
    .await
    .unwrap_or_else(|done| panic!("{done} of {n} Reconciled after 30 minutes"));
    let rss_mib = rss_mib(controller.pid());
    let reconciled = request_counts(client).await;
    // The benchmark's own: its creates, and its watch (the list it starts with, the watch).
    let apply_requests = request_increase(&before, &reconciled)
        .into_iter()
        .filter(|(k, _)| !api_server_own(k))
        .fold(0.0, |sum, (_, d)| sum + d)
        - n as f64
        - 2.0;
    eprintln!(
        "==> all {n} Reconciled in {seconds_to_reconciled:.1} s; settling {RESYNC_S} s, then {WINDOW_S} s at rest"
    );
    tokio::time::sleep(Duration::from_secs(RESYNC_S)).await;
    let before = request_counts(client).await;
    tokio::time::sleep(Duration::from_secs(WINDOW_S)).await;
    let after = request_counts(client).await;
    controller.stop(Duration::from_secs(10));
    // The benchmark's own (its two metrics reads) are not API paths: left out with the API
    // server's own.
    let breakdown: Vec<(String, f64)> = request_increase(&before, &after)
        .into_iter()
        .filter(|(k, _)| !api_server_own(k))
        .collect();
    let requests = breakdown.iter().fold(0.0, |sum, (_, d)| sum + d);
    let writes = breakdown
        .iter()
        .filter(|(k, _)| is_write(k))
        .fold(0.0, |sum, (_, d)| sum + d);
    ConsumersAtRest {
        consumers: n,
        seconds_to_reconciled,
        rss_mib,
        apply_requests,
        resync_s: RESYNC_S,
        window_s: WINDOW_S,
        requests,
        writes,
        breakdown,
    }
}

/// Watches `api` until `n` of its objects pass `done`: the seconds since `started`, or how
/// many had passed when `limit` ran out. Fails when the controller exits.
async fn until_all<K>(
    api: &Api<K>,
    n: usize,
    started: Instant,
    limit: Duration,
    controller: &mut testenv::process::Proc,
    done: impl Fn(&K) -> bool,
) -> Result<f64, usize>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let mut passed: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut count = 0;
    let events = watcher(api.clone(), watcher::Config::default()).applied_objects();
    let mut events = std::pin::pin!(events);
    let deadline = started + limit;
    while count < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(count);
        }
        controller.check_alive().expect("the controller runs");
        let Ok(next) = tokio::time::timeout(left.min(Duration::from_secs(1)), events.next()).await
        else {
            continue;
        };
        let object = next.expect("the watch goes on").expect("a watch event");
        let now = done(&object);
        let name = object.meta().name.clone().unwrap_or_default();
        match passed.insert(name, now) {
            Some(true) if !now => count -= 1,
            Some(false) | None if now => count += 1,
            _ => {}
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn one_size(
    kafka: &KafkaInfo,
    api: &KubeApi,
    client: &kube::Client,
    controller_bin: &Path,
    dir: &Path,
    n: usize,
) -> ControllerResult {
    let ns = format!("bench-{n}");
    operator::create_namespace(client, &ns).await;
    let mut controller = start_controller(kafka, api, controller_bin, dir, &ns, &[]).await;

    eprintln!("==> {n} KafkaTopic resources applied at once");
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &ns);
    let before = request_counts(client).await;
    let started = Instant::now();
    let creates = futures::stream::iter(0..n)
        .map(|i| {
            let topics = topics.clone();
            let ns = ns.clone();
            async move {
                let topic: KafkaTopic = serde_json::from_value(serde_json::json!({
                    "apiVersion": "pubsubkafka.io/v1alpha1",
                    "kind": "KafkaTopic",
                    "metadata": {"name": format!("{ns}-t{i:05}")},
                    "spec": {"partitions": 1, "replicationFactor": 1}
                }))
                .expect("a KafkaTopic");
                topics
                    .create(&PostParams::default(), &topic)
                    .await
                    .expect("created")
            }
        })
        .buffer_unordered(64)
        .count()
        .await;
    assert_eq!(creates, n);
    // Watched, not polled: a list of 10,000 resources every moment would load the API server
    // the controller is measured against. The watch's initial list is the benchmark's only one.
    let seconds_to_ready = until_all(
        &topics,
        n,
        started,
        Duration::from_secs(600),
        &mut controller,
        |t| t.is_ready(),
    )
    .await
    .unwrap_or_else(|done| panic!("{done} of {n} Ready after 10 minutes"));
    // Its watch: the list it starts with, and the watch itself.
    let lists = 2.0;
    eprintln!("==> all {n} Ready in {seconds_to_ready:.1} s; at rest for 20 s");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rss = rss_mib(controller.pid());
    let after = request_counts(client).await;
    controller.stop(Duration::from_secs(10));

    let mut breakdown: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    breakdown.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = breakdown
        .iter()
        .filter(|(k, _)| !api_server_own(k))
        .map(|(_, d)| d)
        .sum();
    // Ours: the creates and the watch.
    let bench_requests = n as f64 + lists;
    ControllerResult {
        topics: n,
        seconds_to_ready,
        rss_mib: rss,
        controller_requests: total - bench_requests,
        breakdown,
        bench_requests,
    }
}
