//! The operator at rest writes nothing: on an API server of its own (so no other test's
//! requests count), KafkaTopics, DLQPolicies, OrderConsumers of every shape (fixed replicas,
//! lag autoscaling with a short and the default stabilization window, RetryTopics mode, an HTTP
//! handler), OrderGateways (plain, and with an outbox and its relay) and DLQReplays (running,
//! queued behind it, and waiting for a consumer) are reconciled, then held at rest for three
//! minutes with a 3 s resync while the
//! API server's own `apiserver_request_total` counts what the operator asks of it.
//!
//! The same real status objects then go through the Argo CD health check of README.md.

mod argocd;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use pubsubkafka_controller::crd::conditions;
use pubsubkafka_controller::crd::dlq_replay::ReplayPhase;
use pubsubkafka_controller::crd::{DLQPolicy, DLQReplay, KafkaTopic, OrderConsumer, OrderGateway};
use testenv::kube_api::{api_server_own, is_write, request_counts, request_increase};
use testenv::operator::{self, Operator};
use testenv::{KubeApi, Lifetime, eventually};

const WAIT: Duration = Duration::from_secs(90);
const AT_REST: Duration = Duration::from_secs(185);
const RESYNC: Duration = Duration::from_secs(3);

fn manifests(source: &str, plain: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: orders-db}}
stringData: {{url: "postgres://nobody@127.0.0.1:1/none"}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaTopic
metadata: {{name: {source}}}
spec: {{partitions: 3, replicationFactor: 1}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaTopic
metadata: {{name: {plain}}}
spec:
  partitions: 1
  replicationFactor: 1
  config: {{retention.ms: "3600000"}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQPolicy
metadata: {{name: blocking}}
spec: {{maxRetries: 2, mode: Blocking}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQPolicy
metadata: {{name: retry-topics}}
spec: {{maxRetries: 2, mode: RetryTopics}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {{name: fixed}}
spec:
  topicRef: {{name: {source}}}
  replicas: 2
  credentials: {{rotation: 720h}}
  dlqPolicyRef: {{name: blocking}}
  handler: {{eventStore: {{connectionSecret: {{name: orders-db}}}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {{name: autoscaled}}
spec:
  topicRef: {{name: {source}}}
  autoscaling: {{minReplicas: 1, maxReplicas: 3, scaleDownStabilization: 20s}}
  handler: {{eventStore: {{connectionSecret: {{name: orders-db}}}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {{name: autoscaled-default}}
spec:
  topicRef: {{name: {source}}}
  autoscaling: {{maxReplicas: 10}}
  handler: {{eventStore: {{connectionSecret: {{name: orders-db}}}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {{name: retrying}}
spec:
  topicRef: {{name: {source}}}
  dlqPolicyRef: {{name: retry-topics}}
  handler: {{http: {{url: "http://receiver:8080/orders"}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {{name: waiting}}
spec:
  topicRef: {{name: no-such-topic}}
  handler: {{http: {{url: "http://receiver:8080/orders"}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderGateway
metadata:
  name: gateway
  annotations: {{pubsubkafka.io/rotate-credentials: "at-creation"}}
spec:
  topicRef: {{name: {source}}}
  replicas: 2
  credentials: {{rotation: 720h}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderGateway
metadata: {{name: gateway-outbox}}
spec:
  topicRef: {{name: {plain}}}
  domain: Users
  outbox: {{connectionSecret: {{name: orders-db}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQReplay
metadata: {{name: replay-first}}
spec: {{consumerRef: {{name: fixed}}, filter: {{errorClasses: [Validation]}}}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQReplay
metadata: {{name: replay-second}}
spec: {{consumerRef: {{name: fixed}}, dryRun: true}}
---
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQReplay
metadata: {{name: replay-orphan}}
spec: {{consumerRef: {{name: nobody}}}}
"#
    )
}

const CONSUMERS: [&str; 4] = ["fixed", "autoscaled", "autoscaled-default", "retrying"];
const GATEWAYS: [&str; 2] = ["gateway", "gateway-outbox"];
/// DLQReplays and the phase and Ready reason each settles in. No Job runs on this API server
/// (no controller-manager): the first replay stays Running, reading its progress from Kafka;
/// the second (created in the same second: the name decides) waits for it.
const REPLAYS: [(&str, ReplayPhase, &str); 3] = [
    (
        "replay-first",
        ReplayPhase::Running,
        conditions::reason::REPLAY_RUNNING,
    ),
    (
        "replay-second",
        ReplayPhase::Pending,
        conditions::reason::WAITING_FOR_REPLAY,
    ),
    (
        "replay-orphan",
        ReplayPhase::Pending,
        conditions::reason::CONSUMER_NOT_FOUND,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_at_rest_and_argo_cd_reads_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(&dir.path().join("kube"), Lifetime::Owned).expect("own API server");
    let client = api.info.client().await.expect("client");
    operator::install_crds(&client).await;
    let ns = testenv::unique_name("rest");
    operator::create_namespace(&client, &ns).await;
    let kafka = &testenv::shared().kafka;
    let _operator = Operator::start(&api.info, operator::args(kafka, &ns, RESYNC)).await;

    let source = testenv::unique_name("rest-orders");
    let plain = testenv::unique_name("rest-plain");
    api.info
        .kubectl_with_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            &manifests(&source, &plain),
        )
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));

    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &ns);
    let consumers: Api<OrderConsumer> = Api::namespaced(client.clone(), &ns);
    let policies: Api<DLQPolicy> = Api::namespaced(client.clone(), &ns);
    let gateways: Api<OrderGateway> = Api::namespaced(client.clone(), &ns);
    let replays: Api<DLQReplay> = Api::namespaced(client.clone(), &ns);
    eventually("every resource reconciled", WAIT, || async {
        let mut pending = Vec::new();
        for name in [&source, &plain] {
            let t = topics.get(name).await.map_err(|e| e.to_string())?;
            if !t.is_ready() {
                pending.push(format!("{name}: {:?}", t.status));
            }
        }
        for name in CONSUMERS {
            let c = consumers.get(name).await.map_err(|e| e.to_string())?;
            let s = c.status.clone().unwrap_or_default();
            if !(conditions::is_reconciled(&s.conditions)
                && s.observed_generation == c.metadata.generation)
            {
                pending.push(format!("{name}: {:?}", c.status));
            }
        }
        for name in GATEWAYS {
            let g = gateways.get(name).await.map_err(|e| e.to_string())?;
            let s = g.status.clone().unwrap_or_default();
            if !(conditions::is_reconciled(&s.conditions)
                && s.observed_generation == g.metadata.generation)
            {
                pending.push(format!("{name}: {:?}", g.status));
            }
        }
        for (name, phase, reason) in REPLAYS {
            let r = replays.get(name).await.map_err(|e| e.to_string())?;
            let s = r.status.clone().unwrap_or_default();
            let ready = conditions::ready(&s.conditions).map(|c| c.reason.as_str());
            if !(r.phase() == phase && ready == Some(reason)) {
                pending.push(format!("{name}: {:?}", r.status));
            }
        }
        let waiting = consumers.get("waiting").await.map_err(|e| e.to_string())?;
        if !waiting.status.as_ref().is_some_and(|s| {
            conditions::ready(&s.conditions)
                .is_some_and(|c| c.reason == conditions::reason::TOPIC_NOT_READY)
        }) {
            pending.push(format!("waiting: {:?}", waiting.status));
        }
        pending.is_empty().then_some(()).ok_or(pending.join("\n"))
    })
    .await;
    // The first passes settle (finalizers, owned topics, Events of the creation).
    tokio::time::sleep(Duration::from_secs(15)).await;

    // Every resource's resourceVersion: any write, by anyone, moves it.
    let snapshot = || async {
        let mut all: Vec<(String, Option<String>)> = Vec::new();
        for t in topics.list(&Default::default()).await.unwrap() {
            all.push((format!("KafkaTopic/{}", t.name_any()), t.resource_version()));
        }
        for c in consumers.list(&Default::default()).await.unwrap() {
            all.push((
                format!("OrderConsumer/{}", c.name_any()),
                c.resource_version(),
            ));
        }
        for g in gateways.list(&Default::default()).await.unwrap() {
            all.push((
                format!("OrderGateway/{}", g.name_any()),
                g.resource_version(),
            ));
        }
        for r in replays.list(&Default::default()).await.unwrap() {
            all.push((format!("DLQReplay/{}", r.name_any()), r.resource_version()));
        }
        all
    };
    let before_versions = snapshot().await;
    let before = request_counts(&client).await;
    eprintln!("at rest for {AT_REST:?} with a {RESYNC:?} resync");
    tokio::time::sleep(AT_REST).await;
    let after = request_counts(&client).await;
    let after_versions = snapshot().await;

    let grown: Vec<(String, f64)> = request_increase(&before, &after)
        .into_iter()
        .filter(|(k, _)| !api_server_own(k))
        .collect();
    eprintln!("API requests at rest over {AT_REST:?} (verb resource, count):");
    for (key, count) in &grown {
        eprintln!("  {key:<45} {count}");
    }
    let writes: Vec<&(String, f64)> = grown.iter().filter(|(k, _)| is_write(k)).collect();
    let status_writes: Vec<&&(String, f64)> = writes
        .iter()
        .filter(|(k, _)| k.ends_with("/status"))
        .collect();
    assert!(
        status_writes.is_empty(),
        "status writes at rest: {status_writes:?}"
    );
    assert!(writes.is_empty(), "writes at rest: {writes:?}");
    assert_eq!(
        before_versions, after_versions,
        "a resource changed at rest"
    );

    // A gateway created with the rotate annotation starts on its fresh credential: nothing
    // to rotate, the request taken as done, the next rotation 720h ahead.
    let gateway = gateways.get("gateway").await.unwrap();
    let credentials = gateway.status.unwrap().credentials.unwrap();
    assert_eq!(credentials.active_user, format!("pubsubkafka.{ns}.gateway"));
    assert_eq!(credentials.rotation_request.as_deref(), Some("at-creation"));
    assert_eq!(
        (credentials.retiring_user, credentials.last_rotation),
        (None, None)
    );
    assert!(credentials.next_rotation.is_some());

    // Argo CD's view of the same objects.
    for name in [&source, &plain] {
        let t = topics.get(name).await.unwrap();
        let (status, message) = argocd::health(&t);
        assert_eq!(status, "Healthy", "KafkaTopic {name}: {message}");
    }
    for p in policies.list(&Default::default()).await.unwrap() {
        assert_eq!(argocd::health(&p).0, "Healthy");
    }
    // No pod runs on this API server: reconciled, but not Ready, so still progressing.
    for name in CONSUMERS {
        let c = consumers.get(name).await.unwrap();
        let (status, message) = argocd::health(&c);
        assert_eq!(status, "Progressing", "OrderConsumer {name}: {message}");
        assert!(
            message.starts_with("WorkersNotReady") || message.starts_with("WorkersStarting"),
            "{message}"
        );
    }
    let waiting = consumers.get("waiting").await.unwrap();
    let (status, message) = argocd::health(&waiting);
    assert_eq!(status, "Progressing", "{message}");
    assert!(message.contains("TopicNotReady"), "{message}");
    // A generation the operator has not seen yet is progress, whatever the conditions say.
    let mut newer = topics.get(&source).await.unwrap();
    newer.metadata.generation = newer.metadata.generation.map(|g| g + 1);
    assert_eq!(argocd::health(&newer).0, "Progressing");
    // A refusal is Degraded.
    let mut refused = consumers.get("fixed").await.unwrap();
    let status = refused.status.as_mut().unwrap();
    let failed = conditions::new(
        conditions::READY,
        false,
        conditions::reason::POLICY_VIOLATION,
        "group id not allowed",
        refused.metadata.generation,
    );
    status.conditions = conditions::merge_ready_and_reconciled(&status.conditions, failed);
    let (status, message) = argocd::health(&refused);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("PolicyViolation"), "{message}");
}
