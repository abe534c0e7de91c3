//! `OrderConsumer`: a consumer workload. The operator gives it a Kafka principal with exactly
//! the ACLs it needs, a dead-letter topic, and a worker Deployment whose replicas never exceed
//! the source topic's partitions.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use pubsubkafka_contract::config::GroupProtocol;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::credentials::{CredentialsSpec, CredentialsStatus};

/// A consumer of a KafkaTopic, run as worker pods by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "OrderConsumer",
    namespaced,
    status = "OrderConsumerStatus",
    derive = "PartialEq",
    shortname = "oc",
    category = "pubsubkafka",
    doc = "A consumer workload of the PubSubKafka operator: principal, ACLs, dead-letter topic and worker pods.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topicRef.name"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready-Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Max", type_ = "integer", json_path = ".status.maxReplicas"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OrderConsumerSpec {
    /// The KafkaTopic (in this namespace) to consume.
    pub topic_ref: LocalRef,

    /// Kafka consumer group; defaults to "<namespace>.<name>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub group_id: Option<String>,

    /// Worker pods wanted (before the partition cap). Ignored when autoscaling is set. The
    /// scale subresource drives it, so kubectl scale, an HPA or KEDA work.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Scale on consumer lag instead of spec.replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// The DLQPolicy (in this namespace) to apply; the defaults apply without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_policy_ref: Option<LocalRef>,

    /// What each record is handed to: exactly one of eventStore or http.
    pub handler: Handler,

    /// Records of one partition handled at once, across different keys (1 to 1000). Records of
    /// one key (order_id) are always handled one at a time, in order; a key whose record is
    /// retrying holds its later records back while other keys go on. With 1, a partition's
    /// records are handled strictly one after another in offset order, and a record retrying
    /// in place (DLQPolicy mode Blocking) holds up its whole partition.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency_per_partition: i32,

    /// Worker image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The SCRAM credential's rotation (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,

    /// The consumer group protocol of the workers: Consumer (Kafka's KIP-848 protocol, where
    /// scaling moves only the partitions that change owner; the workers fall back to Classic
    /// when the brokers refuse it) or Classic. Overrides the DLQPolicy's; Consumer when
    /// neither sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_protocol: Option<GroupProtocol>,
}

fn default_replicas() -> i32 {
    1
}

fn default_concurrency() -> i32 {
    pubsubkafka_contract::config::DEFAULT_CONCURRENCY as i32
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalRef {
    /// Its metadata.name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Lag-based scaling: replicas = ceil(total lag / targetLagPerReplica), within [min, max] and
/// never above the partition count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
    .field_path(".minReplicas"))]
pub struct Autoscaling {
    /// Fewest worker replicas (0 to 1000, default 1), whatever the lag; 0 lets an idle
    /// consumer scale to zero.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most worker replicas (1 to 1000) however high the lag; the source topic's partition
    /// count caps it too, since an extra consumer would sit idle.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Lag (records) one replica is expected to keep up with.
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: i64,
    /// How long lower recommendations must last before scaling down, such as 5m.
    #[serde(default = "default_stabilization")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')")
        .message("must be a duration such as 30s or 5m"))]
    pub scale_down_stabilization: String,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_target_lag() -> i64 {
    1000
}
fn default_stabilization() -> String {
    "5m".into()
}

/// Exactly one handler kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.eventStore) != has(self.http)")
    .message("set exactly one handler: eventStore or http"))]
pub struct Handler {
    /// Persist each order in PostgreSQL, idempotently on order_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_store: Option<EventStoreHandler>,
    /// POST each record to a URL: 2xx done, 4xx dead-lettered, 5xx or timeout retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHandler>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStoreHandler {
    /// Secret (in this namespace) holding the PostgreSQL connection URL.
    pub connection_secret: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHandler {
    /// http:// or https:// URL that receives each record.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("must be an http:// or https:// URL"))]
    pub url: String,
    /// Per-request timeout, such as 5s.
    #[serde(default = "default_http_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("must be a positive duration such as 5s"))]
    pub timeout: String,
}

fn default_http_timeout() -> String {
    "5s".into()
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderConsumerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Worker replicas the Deployment runs (after the partition cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas wanted before the cap (spec.replicas, or from lag when autoscaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Ready worker pods, from the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Partitions of the source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The replica cap (the partition count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Records not yet committed by the group, summed over partitions, measured from Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// The retry topics (mode RetryTopics), in order of attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_topics: Vec<String>,
    /// Every topic the operator created or claimed for this consumer (dead-letter and retry
    /// topics). They belong to it: a KafkaTopic naming one, or a consumer of another namespace,
    /// gets ResourceConflict and changes nothing. Kept while the consumer exists, even after a
    /// policy change names other topics, because the old ones still hold its records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned_topics: Vec<OwnedTopic>,
    /// The consumer's Kafka principal (User:...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Secret holding the principal's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The SCRAM username in use and the credential's rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// Label selector of the worker pods (for the scale subresource, HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready (every wanted worker pod is ready), Reconciled (the operator applied the
    /// current generation), Degraded (why the workers run below what was declared) and Capped
    /// (the partition count limited the replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A topic that exists for one consumer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct OwnedTopic {
    /// The topic's name in Kafka.
    pub name: String,
    /// What the consumer uses it for.
    pub kind: OwnedTopicKind,
}

/// Why the operator made a topic for a consumer. A new kind of owned topic is a new variant
/// here, recorded in status.ownedTopics like the others, so it is protected the same way.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum OwnedTopicKind {
    DeadLetter,
    Retry,
    /// Where a DLQReplay sends dead letters replayed too often.
    Parking,
}

/// The finalizer that removes the consumer's principal and ACLs from Kafka.
pub const FINALIZER: &str = "pubsubkafka.io/consumer-cleanup";

impl OrderConsumer {
    /// The topics this consumer owns, as its status records them.
    pub fn owned_topics(&self) -> &[OwnedTopic] {
        self.status
            .as_ref()
            .map(|s| s.owned_topics.as_slice())
            .unwrap_or_default()
    }

    /// The consumer group: spec.groupId, else "<namespace>.<name>".
    pub fn group_id(&self) -> String {
        self.spec.group_id.clone().unwrap_or_else(|| {
            format!(
                "{}.{}",
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }
}
