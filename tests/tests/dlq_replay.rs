//! DLQReplay on the stack's real node: the operator (in-process, watching one namespace) runs
//! each replay as a Job of the worker image. Every check reads the real system: the orders in
//! PostgreSQL, the dead-letter, parking and source topics and the principals in Kafka, the Job
//! and its pods from the API server.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams};
use pubsubkafka_controller::crd::OrderConsumer;
use pubsubkafka_controller::crd::conditions;
use pubsubkafka_controller::crd::dlq_replay::{DLQReplay, DLQReplayStatus, ReplayPhase};
use pubsubkafka_controller::crd::order_consumer::OwnedTopicKind;
use pubsubkafka_worker::headers as h;
use rdkafka::Message;
use testenv::cluster;
use testenv::operator::{self, Operator};
use testenv::{StackInfo, eventually, worker};

const PODS: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(120);

/// A namespace with the operator watching it, a 3-partition topic `orders`, its dead-letter
/// policy and an OrderConsumer storing to a fresh PostgreSQL database.
struct Shop {
    stack: &'static StackInfo,
    client: kube::Client,
    ns: String,
    topic: String,
    dead_letters: String,
    db: tokio_postgres::Client,
    _operator: Operator,
}

impl Shop {
    async fn new(prefix: &str) -> Self {
        let stack = testenv::shared();
        cluster::require_images(stack);
        let client = stack.kube.client().await.expect("client");
        operator::install_crds(&client).await;
        let ns = testenv::unique_name(prefix);
        operator::create_namespace(&client, &ns).await;
        let kafka = &stack.kafka;
        let args = operator::node_args(kafka, &ns, Duration::from_secs(3));
        let operator = Operator::start(&stack.kube, args).await;
        let database = stack.postgres.fresh_database("replay").await.unwrap();
        let url = stack.postgres.database_url_for_pods(&database).unwrap();
        let db = stack.postgres.connect(&database).await.unwrap();
        let shop = Self {
            stack,
            client,
            topic: format!("{ns}.orders"),
            dead_letters: format!("{ns}.orders-dlq"),
            ns,
            db,
            _operator: operator,
        };
        shop.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db}}\nstringData:\n  url: {url}\n\
             ---\napiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
             spec: {{topicName: {topic}, partitions: 3, replicationFactor: 1}}\n\
             ---\napiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata: {{name: orders}}\n\
             spec:\n  maxRetries: 1\n  backoff: {{initial: 100ms, multiplier: 2, max: 1s, jitter: 0}}\n  \
             deadLetterTopic: {dlq}\n  permanentErrors: [Deserialization, Validation, Conflict]\n\
             ---\napiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {{name: order-store}}\n\
             spec:\n  topicRef: {{name: orders}}\n  replicas: 1\n  dlqPolicyRef: {{name: orders}}\n  \
             handler:\n    eventStore:\n      connectionSecret: {{name: orders-db, key: url}}\n",
            topic = shop.topic,
            dlq = shop.dead_letters,
        ));
        shop.wait("consumer order-store Ready", || async {
            let c = Api::<OrderConsumer>::namespaced(shop.client.clone(), &shop.ns)
                .get("order-store")
                .await
                .map_err(|e| e.to_string())?;
            let status = c.status.ok_or("no status")?;
            conditions::is_ready(&status.conditions)
                .then_some(())
                .ok_or_else(|| format!("{:?}", status.conditions))
        })
        .await;
        shop
    }

    fn apply(&self, yaml: &str) {
        self.stack
            .kube
            .kubectl_with_stdin(&["apply", "-n", &self.ns, "-f", "-"], yaml)
            .unwrap_or_else(|e| panic!("kubectl apply failed: {e}\n{yaml}"));
    }

    async fn wait<F, Fut, T>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        eventually(what, PODS, check).await
    }

    fn replays(&self) -> Api<DLQReplay> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies DLQReplay `name` for order-store with the extra `spec` lines.
    fn replay(&self, name: &str, spec: &str) {
        self.apply(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQReplay\nmetadata: {{name: {name}}}\n\
             spec:\n  consumerRef: {{name: order-store}}\n{spec}"
        ));
    }

    /// Waits until replay `name` has ended, with `kubectl wait` as a pipeline would.
    async fn finished(&self, name: &str) -> DLQReplayStatus {
        self.stack
            .kube
            .kubectl_with_stdin(
                &[
                    "wait",
                    "--for=condition=Complete",
                    &format!("dlqreplay/{name}"),
                    "-n",
                    &self.ns,
                    "--timeout=180s",
                ],
                "",
            )
            .unwrap_or_else(|e| panic!("kubectl wait for {name}: {e}"));
        let status = self.replays().get(name).await.unwrap().status.unwrap();
        assert_eq!(status.phase, Some(ReplayPhase::Succeeded), "{status:?}");
        status
    }

    /// Records in `topic` now (the sum of its partitions' end offsets).
    async fn records_in(&self, topic: &str) -> i64 {
        let admin = self.stack.kafka.kafka_admin();
        match admin.describe_topic(topic).await.unwrap() {
            None => 0,
            Some(t) => admin
                .end_offsets(topic, t.partition_count())
                .await
                .unwrap()
                .values()
                .sum(),
        }
    }

    /// Stored order ids with the size of their stored event.
    async fn stored(&self) -> BTreeMap<String, i32> {
        self.db
            .query(
                "SELECT order_id, length(event::text)::int FROM orders ORDER BY order_id",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default()
    }

    /// Waits until `topic` holds `count` records.
    async fn wait_records(&self, topic: &str, count: i64) {
        self.wait(&format!("{count} records in {topic}"), || async {
            let n = self.records_in(topic).await;
            (n == count).then_some(()).ok_or(format!("{n} records"))
        })
        .await;
    }

    /// The replay's principal is gone from Kafka, with its ACLs.
    async fn principal_gone(&self, name: &str) {
        let user = format!("pubsubkafka.{}.dlqreplay.{name}", self.ns);
        testenv::kafka::principal_gone(&self.stack.kafka.kafka_admin(), &user).await;
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stack.kube.drop_namespace(&self.ns);
    }
}

fn order(id: &str, size: usize) -> (String, Vec<u8>) {
    let event = pubsubkafka_worker::order::sample(id, size);
    (id.to_owned(), serde_json::to_vec(&event).unwrap())
}

fn invalid(id: &str) -> (String, Vec<u8>) {
    let mut event = pubsubkafka_worker::order::sample(id, 0);
    event.customer_info.email = "nobody".into();
    (id.to_owned(), serde_json::to_vec(&event).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_one_class_stores_what_was_fixed_and_parks_what_fails_again() {
    let shop = Shop::new("replay").await;
    let producer = worker::producer(&shop.stack.kafka);
    let good: Vec<_> = (0..10).map(|i| order(&format!("ok-{i}"), 1024)).collect();
    worker::produce(&producer, &shop.topic, &good).await;
    shop.wait("10 orders stored", || async {
        let n = shop.stored().await.len();
        (n == 10).then_some(()).ok_or(format!("{n} stored"))
    })
    .await;
    // Five orders come again with other contents (Conflict), four break the contract
    // (Validation), three are not JSON (Deserialization): twelve dead letters.
    let mut poison: Vec<_> = (0..5).map(|i| order(&format!("ok-{i}"), 2048)).collect();
    poison.extend((0..4).map(|i| invalid(&format!("bad-{i}"))));
    poison.extend((0..3).map(|i| (format!("junk-{i}"), b"not json".to_vec())));
    worker::produce(&producer, &shop.topic, &poison).await;
    shop.wait_records(&shop.dead_letters, 12).await;

    // The conflict is resolved in the database: the stored versions of the five go.
    shop.db
        .execute(
            "DELETE FROM orders WHERE order_id = ANY($1)",
            &[&(0..5).map(|i| format!("ok-{i}")).collect::<Vec<_>>()],
        )
        .await
        .unwrap();
    let source_before = shop.records_in(&shop.topic).await;
    shop.replay("fix-conflicts", "  filter: {errorClasses: [Conflict]}\n");
    let status = shop.finished("fix-conflicts").await;
    assert_eq!(
        (
            status.matched,
            status.replayed,
            status.parked,
            status.skipped
        ),
        (Some(5), Some(5), Some(0), Some(7)),
        "{status:?}"
    );
    let reached: i64 = status.dead_letter_offsets.iter().map(|p| p.offset).sum();
    assert_eq!(
        reached, 12,
        "read to the end: {:?}",
        status.dead_letter_offsets
    );
    assert_eq!(status.target_topic.as_deref(), Some(shop.topic.as_str()));
    assert_eq!(status.principal, None);
    // Checked against the topic, not the status: five records went back to it.
    assert_eq!(shop.records_in(&shop.topic).await, source_before + 5);
    shop.wait("the replayed orders stored", || async {
        let stored = shop.stored().await;
        let ok =
            stored.len() == 10 && (0..5).all(|i| stored[&format!("ok-{i}")] > stored["ok-9"] + 500);
        ok.then_some(()).ok_or(format!("{stored:?}"))
    })
    .await;
    shop.principal_gone("fix-conflicts").await;
    // The Job stays as a record, and Argo CD-style tools see it Complete.
    let job = Api::<Job>::namespaced(shop.client.clone(), &shop.ns)
        .get("fix-conflicts-replay")
        .await
        .expect("the Job is kept");
    assert_eq!(job.status.unwrap().succeeded, Some(1));

    // The contract breakers fail again when replayed: back in the dead-letter topic, counted.
    shop.replay(
        "retry-invalid",
        "  filter: {errorClasses: [Validation]}\n  maxReplays: 1\n",
    );
    let retried = shop.finished("retry-invalid").await;
    assert_eq!((retried.replayed, retried.parked), (Some(4), Some(0)));
    shop.wait_records(&shop.dead_letters, 16).await;
    let again = worker::read_all(&shop.stack.kafka, &shop.dead_letters, 16, WAIT).await;
    let counted = again
        .iter()
        .filter(|m| h::get(m.headers(), h::DLQ_REPLAY_COUNT) == Some("1"))
        .count();
    assert_eq!(
        counted, 4,
        "the re-dead-lettered records carry their replay count"
    );

    // Replayed once already: the next replay parks them in the consumer's parking topic.
    let since = retried.start_time.unwrap().0;
    shop.replay(
        "park-invalid",
        &format!("  filter: {{errorClasses: [Validation], since: '{since}'}}\n  maxReplays: 1\n"),
    );
    let parked = shop.finished("park-invalid").await;
    assert_eq!(
        (parked.matched, parked.replayed, parked.parked),
        (Some(4), Some(0), Some(4)),
        "{parked:?}"
    );
    let parking = format!("{}-parking", shop.dead_letters);
    assert_eq!(parked.parking_topic.as_deref(), Some(parking.as_str()));
    let in_parking = worker::read_all(&shop.stack.kafka, &parking, 4, WAIT).await;
    assert_eq!(in_parking.len(), 4);
    assert!(
        in_parking
            .iter()
            .all(|m| h::get(m.headers(), h::DLQ_ERROR_CLASS) == Some("Validation")),
        "parked records keep their dead-letter headers"
    );
    let consumer = Api::<OrderConsumer>::namespaced(shop.client.clone(), &shop.ns)
        .get("order-store")
        .await
        .unwrap();
    assert!(
        consumer
            .owned_topics()
            .iter()
            .any(|t| t.name == parking && t.kind == OwnedTopicKind::Parking),
        "the consumer holds its parking topic: {:?}",
        consumer.owned_topics()
    );
    // Nothing else moved: the junk stays in the dead-letter topic, nothing new arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shop.records_in(&shop.dead_letters).await, 16);
    assert_eq!(shop.stored().await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replay_waits_a_deleted_one_stops_and_a_dry_run_writes_nothing() {
    let shop = Shop::new("replay-queue").await;
    let producer = worker::producer(&shop.stack.kafka);
    let poison: Vec<_> = (0..30).map(|i| invalid(&format!("bad-{i}"))).collect();
    worker::produce(&producer, &shop.topic, &poison).await;
    shop.wait_records(&shop.dead_letters, 30).await;

    // Two records a second: long enough to be seen running, and deleted.
    shop.replay(
        "slow",
        "  filter: {errorClasses: [Validation]}\n  rate: 2\n  maxReplays: 5\n",
    );
    shop.wait("slow Running", || async {
        let r = shop
            .replays()
            .get("slow")
            .await
            .map_err(|e| e.to_string())?;
        (r.phase() == ReplayPhase::Running)
            .then_some(())
            .ok_or(format!("{:?}", r.status))
    })
    .await;
    shop.replay("dry", "  dryRun: true\n");
    shop.wait("dry waiting for slow", || async {
        let r = shop.replays().get("dry").await.map_err(|e| e.to_string())?;
        let status = r.status.clone().ok_or("no status")?;
        let ready = conditions::ready(&status.conditions).ok_or("no Ready")?;
        (r.phase() == ReplayPhase::Pending
            && ready.reason == conditions::reason::WAITING_FOR_REPLAY
            && ready.message.contains("DLQReplay slow"))
        .then_some(())
        .ok_or(format!("{status:?}"))
    })
    .await;

    // Deleted while it runs: its Job and pods go, its principal goes, and it writes no more.
    shop.replays()
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(shop.client.clone(), &shop.ns);
    shop.wait("slow's Job gone", || async {
        match jobs
            .get_opt("slow-replay")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    cluster::wait_pods_ready(
        &shop.client,
        &shop.ns,
        "pubsubkafka.io/dlqreplay=slow",
        0,
        PODS,
    )
    .await;
    shop.principal_gone("slow").await;
    let written = shop.records_in(&shop.topic).await;
    assert!(
        written < 60,
        "stopped before the end: {written} records in the source"
    );
    // Its replays that fail again settle in the dead-letter topic; then nothing moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let source = shop.records_in(&shop.topic).await;
    let dead = shop.records_in(&shop.dead_letters).await;
    assert_eq!(source, written, "nothing replayed after the deletion");

    // Now the dry run starts: it counts every Validation dead letter and writes nothing.
    let status = shop.finished("dry").await;
    let matched = status.matched.unwrap();
    assert_eq!(matched as i64, dead, "{status:?}");
    assert_eq!(
        status.replayed,
        Some(matched),
        "a dry run counts what it would replay"
    );
    assert!(
        conditions::ready(&status.conditions)
            .unwrap()
            .message
            .starts_with("dry run"),
        "{status:?}"
    );
    assert_eq!(
        shop.records_in(&shop.topic).await,
        source,
        "nothing replayed"
    );
    assert_eq!(shop.records_in(&shop.dead_letters).await, dead);
    let progress = shop
        .stack
        .kafka
        .kafka_admin()
        .group_offsets(
            &format!("pubsubkafka-replay.{}.dry", shop.ns),
            &shop.dead_letters,
            3,
        )
        .await
        .unwrap();
    assert!(
        progress.values().all(Option::is_none),
        "a dry run commits no progress: {progress:?}"
    );
    shop.principal_gone("dry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_replay_is_refused_by_the_api_server_naming_the_field() {
    let stack = testenv::shared();
    let client = stack.kube.client().await.expect("client");
    operator::install_crds(&client).await;
    let ns = testenv::unique_name("replay-bad");
    operator::create_namespace(&client, &ns).await;
    let refused = |spec: &str| {
        stack
            .kube
            .kubectl_with_stdin(
                &["apply", "-n", &ns, "-f", "-"],
                &format!(
                    "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQReplay\nmetadata: {{name: r}}\n\
                     spec:\n  consumerRef: {{name: order-store}}\n{spec}"
                ),
            )
            .expect_err("refused")
    };
    let e = refused("  maxReplays: 0\n");
    assert!(e.contains("spec.maxReplays"), "{e}");
    let e = refused("  filter: {errorClasses: [Typo]}\n");
    assert!(e.contains("spec.filter.errorClasses"), "{e}");
    let e = refused("  filter: {since: '2026-12-02T00:00:00Z', until: '2026-12-01T00:00:00Z'}\n");
    assert!(
        e.contains("spec.filter.since") && e.contains("before until"),
        "{e}"
    );
    // Accepted, then the spec is frozen: a replay is a record.
    stack
        .kube
        .kubectl_with_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQReplay\nmetadata: {name: r}\n\
             spec:\n  consumerRef: {name: order-store}\n",
        )
        .unwrap();
    let e = refused("  rate: 5\n");
    assert!(e.contains("cannot change once created"), "{e}");
    let _ = stack
        .kube
        .kubectl_with_stdin(&["delete", "namespace", &ns, "--wait=false"], "");
}
