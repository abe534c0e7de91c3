//! End to end on the stack's real Kubernetes node: the chart installed with `helm`, the operator
//! running as a pod under the chart's RBAC, workers started by the Deployments it owns, probed
//! by the kubelet, replaced, scaled, garbage-collected and deleted with their namespace, all by
//! Kubernetes itself. Kafka and PostgreSQL are the stack's host processes, reached from pods at
//! the node's address.
//!
//! Each test installs its own release watching its own namespace, so tests run side by side;
//! a cluster-wide release (which would reconcile every namespace) takes the node to itself.

mod argocd;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer};
use pubsubkafka_controller::kafka::AclFilter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use testenv::cluster::{self, Release};
use testenv::{StackInfo, eventually, worker};
use tokio::sync::RwLock;

/// Namespace-scoped releases share the node; a cluster-wide one has it alone.
static NODE: RwLock<()> = RwLock::const_new(());

const PODS: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(120);

struct App {
    stack: &'static StackInfo,
    client: kube::Client,
    ns: String,
    topic: String,
    database: String,
}

impl App {
    /// A fresh namespace with a database Secret for pods, and (unless `operator_elsewhere`) a
    /// release of the chart watching only it.
    async fn new(prefix: &str, set: &[&str]) -> (Self, Release) {
        let stack = testenv::shared();
        let client = stack.kube.client().await.expect("client");
        let ns = testenv::unique_name(prefix);
        let watch = format!("watchNamespace={ns}");
        let mut values = vec![watch.as_str()];
        values.extend_from_slice(set);
        let release = cluster::install(stack, &ns, "psk", &values);
        (Self::in_namespace(stack, client, ns).await, release)
    }

    async fn in_namespace(stack: &'static StackInfo, client: kube::Client, ns: String) -> Self {
        let mut create = stack.kube.kubectl();
        create.args(["create", "namespace", &ns]);
        let _ = create.output();
        let database = stack
            .postgres
            .fresh_database("node")
            .await
            .expect("a database");
        let url = stack
            .postgres
            .database_url_for_pods(&database)
            .expect("the stack's PostgreSQL listens for pods");
        let app = Self {
            stack,
            client,
            topic: format!("{ns}.orders"),
            ns,
            database,
        };
        app.kubectl_apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db}}\nstringData:\n  url: {url}\n"
        ));
        app
    }

    fn kubectl_apply(&self, yaml: &str) {
        self.stack
            .kube
            .kubectl_with_stdin(&["apply", "-n", &self.ns, "-f", "-"], yaml)
            .unwrap_or_else(|e| panic!("kubectl apply failed: {e}\n{yaml}"));
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        self.stack.kube.kubectl_with_stdin(&all, "")
    }

    /// A KafkaTopic `orders` (topic `<ns>.orders`, 3 partitions) and an OrderConsumer
    /// `order-store` with `replicas` storing into the namespace's database.
    fn apply_pipeline(&self, replicas: i32, topic_spec: &str) {
        self.kubectl_apply(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
             spec:\n  topicName: {topic}\n  partitions: 3\n  replicationFactor: 1\n{topic_spec}---\n\
             apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {{name: order-store}}\n\
             spec:\n  topicRef: {{name: orders}}\n  replicas: {replicas}\n  handler:\n    eventStore:\n      \
             connectionSecret: {{name: orders-db, key: url}}\n",
            topic = self.topic,
        ));
    }

    async fn consumer(&self) -> OrderConsumer {
        Api::<OrderConsumer>::namespaced(self.client.clone(), &self.ns)
            .get("order-store")
            .await
            .expect("the consumer")
    }

    async fn worker_selector_from_status(&self) -> String {
        eventually("the consumer's selector in its status", WAIT, || async {
            self.consumer()
                .await
                .status
                .and_then(|s| s.selector)
                .ok_or("no selector yet".to_owned())
        })
        .await
    }

    async fn ready_workers(&self, count: usize) -> Vec<Pod> {
        let selector = self.worker_selector_from_status().await;
        let pods = cluster::wait_pods_ready(&self.client, &self.ns, &selector, count, PODS).await;
        // The consumer's status agrees with what the kubelet reports.
        eventually("the consumer's readyReplicas", WAIT, || async {
            let ready = self.consumer().await.status.and_then(|s| s.ready_replicas);
            (ready == Some(count as i32))
                .then_some(())
                .ok_or(format!("readyReplicas {ready:?}, {count} pods Ready"))
        })
        .await;
        pods
    }

    async fn db(&self) -> tokio_postgres::Client {
        self.stack
            .postgres
            .connect(&self.database)
            .await
            .expect("the database")
    }

    async fn wait_stored(&self, expected: i64) {
        let db = self.db().await;
        eventually(&format!("{expected} orders stored"), WAIT, || async {
            let (rows, distinct) = worker::stored(&db).await;
            assert_eq!(rows, distinct, "an order stored twice");
            assert!(rows <= expected, "{rows} stored of {expected} produced");
            (rows == expected)
                .then_some(())
                .ok_or(format!("{rows} stored"))
        })
        .await;
    }

    fn delete_namespace(&self) {
        self.stack.kube.drop_namespace(&self.ns);
    }
}

async fn kafka_principal_acls(stack: &StackInfo, principal: &str) -> usize {
    stack
        .kafka
        .kafka_admin()
        .describe_acls(&AclFilter {
            principal: Some(principal.to_owned()),
            ..Default::default()
        })
        .await
        .expect("describing ACLs")
        .len()
}

/// Waits until the number of ACLs `principal` holds satisfies `wanted`: Kafka answers describes
/// from the broker's metadata, which can trail the write or the deletion by a second or more.
async fn principal_acls(
    stack: &StackInfo,
    principal: &str,
    what: &str,
    wanted: impl Fn(usize) -> bool,
) {
    eventually(what, Duration::from_secs(30), || async {
        let n = kafka_principal_acls(stack, principal).await;
        wanted(n).then_some(()).ok_or(format!("{n} ACLs"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_as_pods_survive_deletion_scale_and_are_collected() {
    let _node = NODE.read().await;
    let (app, _release) = App::new("node-e2e", &[]).await;
    app.apply_pipeline(2, "");
    let pods = app.ready_workers(2).await;

    // Orders flow through the pods; one pod is deleted mid-stream.
    let producer = worker::producer(&app.stack.kafka);
    let orders = worker::orders(&app.ns, 600);
    worker::produce(&producer, &app.topic, &orders[..200]).await;
    app.wait_stored(200).await;
    let victim = pods[0].metadata.name.clone().unwrap();
    app.kubectl(&["delete", "pod", &victim, "--wait=false"])
        .expect("kubectl delete pod");
    worker::produce(&producer, &app.topic, &orders[200..]).await;
    let replaced = app.ready_workers(2).await;
    assert!(
        replaced
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(&victim)),
        "the deleted pod {victim} was replaced"
    );
    // Every acknowledged order is stored, once.
    app.wait_stored(600).await;

    // The scale subresource drives the pods, capped at the partition count.
    app.kubectl(&["scale", "orderconsumer/order-store", "--replicas=5"])
        .expect("kubectl scale");
    app.ready_workers(3).await;
    let capped = app.consumer().await;
    let capped_status = capped.status.expect("status");
    assert_eq!(capped_status.replicas, Some(3));
    assert!(
        capped_status
            .conditions
            .iter()
            .any(|c| c.type_ == "Capped" && c.status == "True"),
        "{:?}",
        capped_status.conditions
    );
    app.kubectl(&["scale", "orderconsumer/order-store", "--replicas=1"])
        .expect("kubectl scale");
    app.ready_workers(1).await;

    // Deleting the consumer: Kubernetes collects what it owns, the operator its principal.
    let principal = format!("User:pubsubkafka.{}.order-store", app.ns);
    principal_acls(
        app.stack,
        &principal,
        "the principal's ACLs in Kafka",
        |n| n > 0,
    )
    .await;
    Api::<OrderConsumer>::namespaced(app.client.clone(), &app.ns)
        .delete("order-store", &DeleteParams::default())
        .await
        .expect("deleting the consumer");
    let deployments: Api<Deployment> = Api::namespaced(app.client.clone(), &app.ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(app.client.clone(), &app.ns);
    let secrets: Api<Secret> = Api::namespaced(app.client.clone(), &app.ns);
    let pods_api: Api<Pod> = Api::namespaced(app.client.clone(), &app.ns);
    let selector = capped_status.selector.clone().expect("a selector");
    eventually("the consumer's objects collected", WAIT, || async {
        let mut left = Vec::new();
        if deployments
            .get_opt("order-store-worker")
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            left.push("Deployment");
        }
        if config_maps
            .get_opt("order-store-worker")
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            left.push("ConfigMap");
        }
        if secrets
            .get_opt("order-store-kafka-credentials")
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            left.push("Secret");
        }
        let pods = pods_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        if !pods.items.is_empty() {
            left.push("pods");
        }
        left.is_empty()
            .then_some(())
            .ok_or(format!("{left:?} remain"))
    })
    .await;
    // Its SCRAM user and ACLs are gone (as the broker's metadata shows them), so it cannot log in.
    testenv::kafka::principal_gone(
        &app.stack.kafka.kafka_admin(),
        &format!("pubsubkafka.{}.order-store", app.ns),
    )
    .await;
    let login: BaseConsumer = app
        .stack
        .kafka
        .sasl_config(&format!("pubsubkafka.{}.order-store", app.ns), "any")
        .create()
        .expect("client");
    assert!(
        login.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "the principal no longer logs in"
    );
    app.delete_namespace();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_outage_turns_readiness_false_and_recovery_back() {
    let _node = NODE.read().await;
    let (app, _release) = App::new("node-sink", &[]).await;
    // A PostgreSQL of this test's own, reachable from pods, that it can stop.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pg = testenv::Postgres::start_with(dir.path(), testenv::Lifetime::Owned, true)
        .expect("own PostgreSQL");
    let url = pg.info.database_url_for_pods("postgres").expect("for pods");
    app.kubectl_apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: outage-db}}\nstringData:\n  url: {url}\n"
    ));
    app.kubectl_apply(&format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
         spec:\n  topicName: {topic}\n  partitions: 1\n  replicationFactor: 1\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {{name: order-store}}\n\
         spec:\n  topicRef: {{name: orders}}\n  replicas: 1\n  handler:\n    eventStore:\n      \
         connectionSecret: {{name: outage-db, key: url}}\n",
        topic = app.topic
    ));
    let pods = app.ready_workers(1).await;
    let pod = pods[0].metadata.name.clone().unwrap();
    let pods_api: Api<Pod> = Api::namespaced(app.client.clone(), &app.ns);
    let readiness = |want: bool| {
        let pods_api = pods_api.clone();
        let pod = pod.clone();
        async move {
            eventually(&format!("pod {pod} Ready={want}"), WAIT, || async {
                let p = pods_api.get(&pod).await.map_err(|e| e.to_string())?;
                (cluster::pod_ready(&p) == want)
                    .then_some(())
                    .ok_or(format!("Ready={}", cluster::pod_ready(&p)))
            })
            .await
        }
    };
    pg.stop();
    // The worker notices on its next write; give it records to write.
    let producer = worker::producer(&app.stack.kafka);
    worker::produce(&producer, &app.topic, &worker::orders(&app.ns, 10)).await;
    readiness(false).await;
    // The same pod, not a restart: the kubelet only took it out of rotation.
    let restarts = pods_api
        .get(&pod)
        .await
        .unwrap()
        .status
        .and_then(|s| s.container_statuses)
        .map(|c| c.iter().map(|c| c.restart_count).sum::<i32>());
    assert_eq!(
        restarts,
        Some(0),
        "the worker was not restarted by the outage"
    );
    pg.restart().expect("PostgreSQL back");
    readiness(true).await;
    let db = pg.info.connect("postgres").await.expect("own database");
    eventually("the orders written after the outage", WAIT, || async {
        let (rows, _) = worker::stored(&db).await;
        (rows == 10).then_some(()).ok_or(format!("{rows} stored"))
    })
    .await;
    app.delete_namespace();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_with_topics_policies_and_consumers_deletes_while_the_operator_runs() {
    // A cluster-wide release, as the README installs it: it would reconcile every namespace.
    let _node = NODE.write().await;
    let stack = testenv::shared();
    let client = stack.kube.client().await.expect("client");
    let operator_ns = testenv::unique_name("pubsubkafka-system");
    let release_name = testenv::unique_name("psk");
    let release = cluster::install(stack, &operator_ns, &release_name, &[]);
    let app = App::in_namespace(stack, client.clone(), testenv::unique_name("node-ns")).await;
    app.kubectl_apply(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata: {name: orders-policy}\n\
         spec:\n  maxRetries: 2\n",
    );
    app.apply_pipeline(1, "  deletionPolicy: Delete\n");
    app.ready_workers(1).await;
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &app.ns);
    eventually("the topic Ready", WAIT, || async {
        topics
            .get("orders")
            .await
            .map_err(|e| e.to_string())?
            .is_ready()
            .then_some(())
            .ok_or("not Ready".to_owned())
    })
    .await;
    let principal = format!("User:pubsubkafka.{}.order-store", app.ns);
    principal_acls(stack, &principal, "the principal's ACLs in Kafka", |n| {
        n > 0
    })
    .await;

    let started = std::time::Instant::now();
    stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &app.ns, "--timeout=150s"], "")
        .unwrap_or_else(|e| {
            panic!(
                "namespace deletion did not finish: {e}\n{}",
                cluster::describe_namespace(stack, &operator_ns)
            )
        });
    eprintln!(
        "namespace {} deleted in {:.1}s",
        app.ns,
        started.elapsed().as_secs_f64()
    );
    // The operator's cleanups ran: no ACLs left, the Delete topic is gone from Kafka.
    principal_acls(stack, &principal, "no ACL left", |n| n == 0).await;
    let metadata_consumer: BaseConsumer = stack
        .kafka
        .admin_config()
        .create()
        .expect("metadata client");
    let topic = app.topic.clone();
    eventually("the topic deleted from Kafka", WAIT, || async {
        let metadata = metadata_consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        (!metadata.topics().iter().any(|t| t.name() == topic))
            .then_some(())
            .ok_or("still in Kafka".to_owned())
    })
    .await;
    release.uninstall(stack).expect("helm uninstall");
    let _ = stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &operator_ns, "--wait=false"], "");
}

/// The operator's Lease in `namespace`: its holder, if any.
async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_rolls_out_with_two_replicas_and_hands_its_lease_over() {
    let _node = NODE.read().await;
    // helm --wait needs both replicas Ready: a standby is Ready too.
    let (app, release) = App::new("node-rollout", &["replicas=2"]).await;
    let operators = release.operator_selector();
    cluster::wait_pods_ready(&app.client, &app.ns, &operators, 2, PODS).await;
    let lease = "pubsubkafka-controller";
    let first = eventually("a leader", WAIT, || async {
        lease_holder(&app.client, &app.ns, lease)
            .await
            .ok_or("no holder".to_owned())
    })
    .await;

    // A rolling restart completes (it deadlocked while only the leader could be Ready), and a
    // new pod holds the Lease within seconds of the old leader's SIGTERM.
    let started = std::time::Instant::now();
    app.kubectl(&["rollout", "restart", "deployment/psk-controller"])
        .expect("rollout restart");
    app.kubectl(&[
        "rollout",
        "status",
        "deployment/psk-controller",
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| {
        panic!(
            "the rollout did not finish: {e}\n{}",
            cluster::describe_namespace(app.stack, &app.ns)
        )
    });
    let pods = cluster::wait_pods_ready(&app.client, &app.ns, &operators, 2, PODS).await;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let second = eventually("a new leader among the new pods", WAIT, || async {
        match lease_holder(&app.client, &app.ns, lease).await {
            Some(h) if h != first && names.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}, pods {names:?}")),
        }
    })
    .await;
    eprintln!(
        "rollout with leader hand-over ({first} -> {second}) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // An upgrade that waits for readiness completes too.
    let mut upgrade = cluster::helm(app.stack);
    upgrade
        .args(["upgrade", &release.name])
        .arg(cluster::chart_dir())
        .args([
            "--namespace",
            &app.ns,
            "--reuse-values",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args(["--set", "replicas=1"]);
    let out = upgrade.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm upgrade --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster::wait_pods_ready(&app.client, &app.ns, &operators, 1, PODS).await;
    app.delete_namespace();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_uninstall_with_consumers_left_never_leaves_a_namespace_stuck() {
    let _node = NODE.read().await;
    let (app, release) = App::new("node-uninstall", &[]).await;
    app.apply_pipeline(1, "");
    app.ready_workers(1).await;
    let principal = format!("User:pubsubkafka.{}.order-store", app.ns);
    principal_acls(
        app.stack,
        &principal,
        "the principal's ACLs in Kafka",
        |n| n > 0,
    )
    .await;

    // The operator goes with its release while the consumer (and its finalizer) stays: the
    // chart's pre-delete hook, a Job on the node, cleans up what the operator would have.
    release.uninstall(app.stack).unwrap_or_else(|e| {
        panic!(
            "helm uninstall: {e}\n{}",
            cluster::describe_namespace(app.stack, &app.ns)
        )
    });
    principal_acls(
        app.stack,
        &principal,
        "the hook removed the consumer's ACLs",
        |n| n == 0,
    )
    .await;
    let started = std::time::Instant::now();
    app.stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &app.ns, "--timeout=120s"], "")
        .unwrap_or_else(|e| {
            panic!(
                "with no operator left, the namespace did not finish deleting: {e}\n{}",
                cluster::describe_namespace(app.stack, &app.ns)
            )
        });
    eprintln!(
        "namespace deleted {:.1}s after the uninstall",
        started.elapsed().as_secs_f64()
    );
    // The topic was declared with the default Retain: uninstalling never deletes data.
    let metadata: BaseConsumer = app
        .stack
        .kafka
        .admin_config()
        .create()
        .expect("metadata client");
    let topics = metadata
        .fetch_metadata(Some(&app.topic), Duration::from_secs(10))
        .expect("metadata");
    assert!(
        topics
            .topics()
            .iter()
            .any(|t| t.name() == app.topic && t.error().is_none()),
        "the Retain topic {} is still in Kafka",
        app.topic
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_database_secret_reaches_the_running_workers() {
    let _node = NODE.read().await;
    let (app, _release) = App::new("node-secret", &[]).await;
    app.apply_pipeline(1, "");
    let before = app.ready_workers(1).await;
    let producer = worker::producer(&app.stack.kafka);
    let orders = worker::orders(&app.ns, 40);
    worker::produce(&producer, &app.topic, &orders[..20]).await;
    app.wait_stored(20).await;

    // The Secret now names another database: the workers roll and write there.
    let second = app
        .stack
        .postgres
        .fresh_database("node2")
        .await
        .expect("a second database");
    let url = app
        .stack
        .postgres
        .database_url_for_pods(&second)
        .expect("for pods");
    app.kubectl_apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db}}\nstringData:\n  url: {url}\n"
    ));
    let old = before[0].metadata.name.clone().unwrap();
    let selector = app.worker_selector_from_status().await;
    let pods_api: Api<Pod> = Api::namespaced(app.client.clone(), &app.ns);
    eventually("a new worker pod", PODS, || async {
        let pods = pods_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        let fresh = pods.items.iter().any(|p| {
            p.metadata.name.as_deref() != Some(&old)
                && p.metadata.deletion_timestamp.is_none()
                && cluster::pod_ready(p)
        });
        let old_gone = pods
            .items
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(&old));
        (fresh && old_gone)
            .then_some(())
            .ok_or(format!("{} pods", pods.items.len()))
    })
    .await;
    worker::produce(&producer, &app.topic, &orders[20..]).await;
    let db = app
        .stack
        .postgres
        .connect(&second)
        .await
        .expect("the second database");
    eventually("the new orders in the second database", WAIT, || async {
        let (rows, _) = worker::stored(&db).await;
        (rows == 20).then_some(()).ok_or(format!("{rows} stored"))
    })
    .await;
    app.delete_namespace();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_secrets_reach_the_operator_and_every_worker_pod() {
    let _node = NODE.read().await;
    let (app, release) = App::new(
        "node-pull",
        &[
            "imagePullSecrets[0].name=registry-a",
            "workerImagePullSecrets[0].name=registry-b",
        ],
    )
    .await;
    app.apply_pipeline(1, "");
    let workers = app.ready_workers(1).await;
    let pull_secrets = |pod: &Pod| -> Vec<String> {
        pod.spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    let operators =
        cluster::wait_pods_ready(&app.client, &app.ns, &release.operator_selector(), 1, PODS).await;
    assert_eq!(pull_secrets(&operators[0]), vec!["registry-a".to_owned()]);
    assert_eq!(pull_secrets(&workers[0]), vec!["registry-b".to_owned()]);
    app.delete_namespace();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_watched_namespace_finishes_with_the_operator_elsewhere() {
    let _node = NODE.read().await;
    // The operator in a namespace of its own watches only the app's: its Role lives in the app's
    // namespace and goes first when that namespace is deleted.
    let stack = testenv::shared();
    let client = stack.kube.client().await.expect("client");
    let app = App::in_namespace(stack, client.clone(), testenv::unique_name("node-watched")).await;
    let operator_ns = format!("{}-op", app.ns);
    let watch = format!("watchNamespace={}", app.ns);
    let release = cluster::install(stack, &operator_ns, "psk", &[&watch]);
    app.apply_pipeline(1, "  deletionPolicy: Delete\n");
    app.ready_workers(1).await;
    let principal = format!("User:pubsubkafka.{}.order-store", app.ns);
    principal_acls(stack, &principal, "the principal's ACLs in Kafka", |n| {
        n > 0
    })
    .await;

    stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &app.ns, "--timeout=150s"], "")
        .unwrap_or_else(|e| {
            panic!(
                "the watched namespace did not finish deleting: {e}\n{}",
                cluster::describe_namespace(stack, &operator_ns)
            )
        });
    principal_acls(
        stack,
        &principal,
        "the operator cleaned the consumer's principal up",
        |n| n == 0,
    )
    .await;
    release.uninstall(stack).expect("helm uninstall");
    let _ = stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &operator_ns, "--wait=false"], "");
}

/// Ready as a user reads it, on real pods: the in-process operator of this tree watching one
/// namespace (the chart's image may be older), its workers run by the node. A consumer whose
/// pods all run is Ready (and `kubectl wait` returns); one whose workers cannot reach their
/// database, or crash at start, is Ready=False and Degraded with the reason; the Argo CD
/// health check of README.md reads the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_wanted_workers_are_available() {
    use pubsubkafka_controller::crd::conditions::{self, reason};
    let _node = NODE.read().await;
    let stack = testenv::shared();
    let client = stack.kube.client().await.expect("client");
    testenv::operator::install_crds(&client).await;
    let app = App::in_namespace(stack, client, testenv::unique_name("node-ready")).await;
    let mut args = testenv::operator::args(&stack.kafka, &app.ns, Duration::from_secs(5));
    args.worker_image = testenv::node::product_image("worker");
    args.worker_bootstrap_servers = stack.kafka.node_bootstrap.clone();
    let operator = testenv::operator::Operator::start(&stack.kube, args).await;

    // Nothing listens on port 1 of the node: the worker runs and waits for its database.
    let closed = format!("postgres://nobody@{}:1/none", testenv::node::NODE_IP);
    app.kubectl_apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: closed-db}}\nstringData:\n  url: '{closed}'\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: garbage-db}}\nstringData:\n  url: 'not a url'\n"
    ));
    // The node's worker image may predate this tree: a policy naming only the error classes
    // every worker knows keeps the rendered config readable by it.
    app.kubectl_apply(&format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
         spec:\n  topicName: {topic}\n  partitions: 3\n  replicationFactor: 1\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata: {{name: known-classes}}\n\
         spec:\n  permanentErrors: [Deserialization, Validation, Rejected]\n",
        topic = app.topic,
    ));
    for (name, replicas, secret) in [
        ("order-store", 2, "orders-db"),
        ("no-sink", 1, "closed-db"),
        ("crasher", 1, "garbage-db"),
    ] {
        app.kubectl_apply(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {{name: {name}}}\n\
             spec:\n  topicRef: {{name: orders}}\n  replicas: {replicas}\n  dlqPolicyRef: {{name: known-classes}}\n  \
             handler:\n    eventStore:\n      connectionSecret: {{name: {secret}, key: url}}\n"
        ));
    }
    let consumers: Api<OrderConsumer> = Api::namespaced(app.client.clone(), &app.ns);
    let ready_condition = |c: &OrderConsumer, type_: &str| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|x| x.type_ == type_).cloned())
    };

    // Ready comes with the pods, not before: whenever Ready is True, 2 of 2 are ready.
    let store = eventually("order-store Ready", PODS, || async {
        let c = consumers
            .get("order-store")
            .await
            .map_err(|e| e.to_string())?;
        let s = c.status.clone().unwrap_or_default();
        if conditions::is_ready(&s.conditions) {
            assert_eq!(s.ready_replicas, Some(2), "Ready with {:?}", s);
            return Ok(c);
        }
        Err(format!("{:?}", conditions::ready(&s.conditions)))
    })
    .await;
    let ready = ready_condition(&store, "Ready").unwrap();
    assert_eq!(ready.reason, reason::WORKERS_READY);
    assert_eq!(ready.observed_generation, store.metadata.generation);
    let degraded = ready_condition(&store, "Degraded").unwrap();
    assert_eq!(degraded.status, "False");
    assert!(conditions::is_reconciled(
        &store.status.as_ref().unwrap().conditions
    ));
    let pods: Api<Pod> = Api::namespaced(app.client.clone(), &app.ns);
    let ready_pods = pods
        .list(&ListParams::default().labels("pubsubkafka.io/consumer=order-store"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| cluster::pod_ready(p))
        .count();
    assert_eq!(ready_pods, 2);
    app.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "orderconsumer/order-store",
        "--timeout=30s",
    ])
    .unwrap_or_else(|e| panic!("kubectl wait: {e}"));
    let (health, message) = argocd::health(&store);
    assert_eq!(health, "Healthy", "{message}");

    for (name, why) in [
        ("no-sink", reason::SINK_UNAVAILABLE),
        ("crasher", reason::WORKER_CRASH_LOOPING),
    ] {
        let c = eventually(&format!("{name} Degraded with {why}"), PODS, || async {
            let c = consumers.get(name).await.map_err(|e| e.to_string())?;
            match ready_condition(&c, "Degraded") {
                Some(d) if d.status == "True" && d.reason == why => Ok(c),
                other => Err(format!("{other:?} / {:?}", ready_condition(&c, "Ready"))),
            }
        })
        .await;
        let ready = ready_condition(&c, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", why)
        );
        assert!(
            ready.message.contains("0 of 1 worker pods ready"),
            "{}",
            ready.message
        );
        assert!(conditions::is_reconciled(
            &c.status.as_ref().unwrap().conditions
        ));
        let (health, message) = argocd::health(&c);
        assert_eq!(health, "Degraded", "{name}: {message}");
        assert!(message.starts_with(why), "{message}");
        assert!(
            app.kubectl(&[
                "wait",
                "--for=condition=Ready",
                &format!("orderconsumer/{name}"),
                "--timeout=2s"
            ])
            .is_err(),
            "kubectl wait must not return for {name}"
        );
    }

    // Removed while the operator runs, so its finalizers go with them.
    for name in ["order-store", "no-sink", "crasher"] {
        consumers
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("the consumers gone", WAIT, || async {
        let left = consumers
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        left.items
            .is_empty()
            .then_some(())
            .ok_or(format!("{} left", left.items.len()))
    })
    .await;
    drop(operator);
    app.delete_namespace();
}
