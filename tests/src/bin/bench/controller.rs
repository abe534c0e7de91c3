//! The controller at scale: N KafkaTopic resources applied at once to a real API server, the
//! controller binary (release build) reconciling them against the benchmark's Kafka. Measures
//! the time until every resource is Ready for its generation, the controller's resident memory
//! once at rest, and the API requests it made per resource (from the API server's own
//! `apiserver_request_total`, minus the benchmark's own requests).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, PostParams};
use pubsubkafka_controller::crd::KafkaTopic;
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

/// The API server's `apiserver_request_total`, summed by `verb resource/subresource`.
async fn request_counts(client: &kube::Client) -> BTreeMap<String, f64> {
    let text = client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("the API server's metrics");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *counts.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// Requests the API server makes of itself (its endpoint and lease reconcilers, OpenAPI
/// aggregation) or that are not API calls (the metrics scrapes): not the controller's. The
/// controller runs without leader election here, so it takes no Lease.
fn api_server_own(key: &str) -> bool {
    let resource = key.split_whitespace().nth(1).unwrap_or_default();
    resource.starts_with('/')
        || ["endpoints", "endpointslices", "leases"]
            .iter()
            .any(|r| resource.split('/').next() == Some(*r))
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

/// Starts an API server, then for each size in `sizes` a controller on a namespace of its own.
pub async fn controller_bench(
    kafka: &KafkaInfo,
    controller_bin: &Path,
    dir: &Path,
    sizes: &[usize],
) -> Vec<ControllerResult> {
    eprintln!("==> starting kube-apiserver and etcd");
    let api = KubeApi::start(&dir.join("kube"), Lifetime::Owned).expect("API server");
    let client = api.info.client().await.expect("client");
    operator::install_crds(&client).await;
    let mut results = Vec::new();
    for &n in sizes {
        results.push(one_size(kafka, &api, &client, controller_bin, dir, n).await);
    }
    results
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
    let metrics_port = testenv::free_port().expect("port");
    let mut cmd = Command::new(controller_bin);
    cmd.env("KUBECONFIG", &api.info.kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--kafka-bootstrap-servers", &kafka.bootstrap])
        .args(["--kafka-security-protocol", "PLAINTEXT"])
        .args(["--watch-namespace", &ns])
        // The benchmark's topic names are not "<namespace>.*": today's rules.
        .args(["--default-access-policy", "open"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--log-format", "json"]);
    let mut controller = testenv::process::Proc::spawn(
        "bench-controller",
        cmd,
        &dir.join(format!("controller-{n}.log")),
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
    let mut lists = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let seconds_to_ready = loop {
        controller.check_alive().expect("the controller runs");
        let list = topics.list(&ListParams::default()).await.expect("list");
        lists += 1.0;
        let ready = list.items.iter().filter(|t| t.is_ready()).count();
        if ready == n {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {n} Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
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
    // Ours: the creates and the list polls.
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
