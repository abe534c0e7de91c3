//! One test's world: a fresh namespace in the stack's API server, the CRDs installed, an
//! operator scoped to that namespace (optional), an admin client on Kafka, and `kubectl` as a
//! user would run it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use pubsubkafka_controller::kafka::KafkaAdmin;

use crate::operator::{self, Operator};
use crate::{KafkaInfo, KubeInfo};

pub struct Scenario {
    pub kube: KubeInfo,
    pub client: kube::Client,
    pub ns: String,
    pub admin: KafkaAdmin,
    pub operator: Option<Operator>,
}

impl Scenario {
    /// A namespace and an operator (resync 3 s) on the shared stack's Kafka.
    pub async fn new(prefix: &str) -> Self {
        Self::with(prefix, &crate::shared().kafka, true).await
    }

    /// A namespace, and an operator if `with_operator`, against `kafka`.
    pub async fn with(prefix: &str, kafka: &KafkaInfo, with_operator: bool) -> Self {
        let stack = crate::shared();
        let client = stack.kube.client().await.expect("client");
        operator::install_crds(&client).await;
        let ns = crate::unique_name(prefix);
        operator::create_namespace(&client, &ns).await;
        let operator = if with_operator {
            let args = operator::args(kafka, &ns, Duration::from_secs(3));
            Some(Operator::start(&stack.kube, args).await)
        } else {
            None
        };
        let admin = KafkaAdmin::new(
            &kafka
                .admin_connection()
                .client_config()
                .expect("admin config"),
            Duration::from_secs(10),
        )
        .expect("admin client");
        Self {
            kube: stack.kube.clone(),
            client,
            ns,
            admin,
            operator,
        }
    }

    /// `kubectl <args>` in the scenario's namespace with `stdin`: Ok(stdout) or Err(stderr).
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut args = args.to_vec();
        args.extend(["-n", &self.ns]);
        self.kube.kubectl_with_stdin(&args, stdin)
    }

    /// `kubectl apply -f -` of `yaml`: Ok(stdout) or Err(stderr).
    pub fn kubectl_apply(&self, yaml: &str) -> Result<String, String> {
        self.kubectl(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl apply` that must succeed.
    pub fn apply_ok(&self, yaml: &str) {
        if let Err(e) = self.kubectl_apply(yaml) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }
}

/// On the real node, a test's worker pods would run (or retry their image) until their
/// namespace goes: the namespace is deleted with the scenario (without waiting; finalizers of
/// an operator that stopped with the test may keep its custom resources, never its pods).
impl Drop for Scenario {
    fn drop(&mut self) {
        self.kube.drop_namespace(&self.ns);
    }
}

/// The condition of `type_` in `conditions`, if any.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Creates namespace `name` carrying `labels` (policies select namespaces by label).
pub async fn create_labeled_namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    use k8s_openapi::api::core::v1::Namespace;
    let labels: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}
    }))
    .expect("namespace object");
    kube::Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// Produces `count` records to `topic` as the Kafka admin, each acknowledged.
pub async fn produce_records(kafka: &KafkaInfo, topic: &str, count: usize) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka
        .admin_config()
        .set("message.timeout.ms", "20000")
        .create()
        .expect("a producer");
    for i in 0..count {
        let key = format!("order-{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload("{}"),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

/// Reads `topic` from the beginning of every partition to its end, as the Kafka admin, and
/// returns how many records it holds (a deleted topic holds none).
pub fn count_records(kafka: &KafkaInfo, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka
        .admin_config()
        .set("group.id", crate::unique_name("count"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let timeout = Duration::from_secs(10);
    let metadata = match consumer.fetch_metadata(Some(topic), timeout) {
        Ok(m) => m,
        Err(_) => return 0,
    };
    let Some(described) = metadata.topics().first().filter(|t| t.error().is_none()) else {
        return 0;
    };
    let mut assignment = TopicPartitionList::new();
    let mut to_read = 0;
    for partition in described.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .expect("watermarks");
        to_read += high - low;
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < to_read && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    read
}
