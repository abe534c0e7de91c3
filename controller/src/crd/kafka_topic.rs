//! `KafkaTopic`: a topic declared in Kubernetes and kept true in Kafka by the topic reconciler.
//! The doc comments here are what `kubectl explain kafkatopic.spec` prints.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kafka topic. The operator creates it (or, with `adopt`, takes over an existing topic of the
/// same name that no resource manages), grows its partitions, reverts configuration drift,
/// writes the ACLs listed in `access`, and deletes it only when `deletionPolicy` is `Delete`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "KafkaTopic",
    namespaced,
    status = "KafkaTopicStatus",
    derive = "PartialEq",
    shortname = "pktopic",
    category = "pubsubkafka",
    doc = "A Kafka topic kept in line with this declaration by the PubSubKafka operator.",
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topicName"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".status.partitions"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicationFactor"),
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
        name = "Origin",
        type_ = "string",
        json_path = ".status.origin",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name) == \
         (has(oldSelf.spec.topicName) ? oldSelf.spec.topicName : oldSelf.metadata.name)"
    )
    .message("spec.topicName is immutable: a Kafka topic cannot be renamed")
    .field_path(".spec.topicName"),
    validation = Rule::new("has(self.spec.topicName) || size(self.metadata.name) <= 249")
        .message("metadata.name is longer than Kafka's 249-character limit: set spec.topicName")
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicSpec {
    /// Name of the topic in Kafka; defaults to metadata.name. Immutable. Kafka's grammar:
    /// 1 to 249 characters of [a-zA-Z0-9._-], and not "." or "..".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-zA-Z0-9._-]+$') && self != '.' && self != '..'"
    ).message("must be 1-249 characters of [a-zA-Z0-9._-], and not '.' or '..'"))]
    #[x_kube(validation = Rule::new("!self.startsWith('__')")
        .message("names starting with '__' are Kafka's internal topics (such as __consumer_offsets); the operator never manages them"))]
    pub topic_name: Option<String>,

    /// Number of partitions. It can grow but never shrink: Kafka cannot remove partitions.
    #[schemars(range(min = 1, max = 100000))]
    #[x_kube(validation = Rule::new("self >= oldSelf")
        .message("partitions may not decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,

    /// Number of replicas of each partition (at most the number of brokers). Kafka cannot change
    /// it for an existing topic through this operator; a difference is reported in status.
    #[schemars(range(min = 1, max = 32767))]
    pub replication_factor: i32,

    /// Topic-level Kafka configs, such as retention.ms, min.insync.replicas, cleanup.policy or
    /// compression.type. Keys the spec does not name are reset to the broker default, so an
    /// out-of-band change is reverted.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 200))]
    pub config: BTreeMap<String, IntOrString>,

    /// What happens to the Kafka topic when this resource is deleted: Retain (default) leaves
    /// the topic and its data; Delete deletes the topic.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over a topic that already exists in Kafka and that no resource manages (its
    /// configs and ACLs are then set to this spec). Without it, such a topic is left alone and
    /// Ready is False with reason TopicExists. status.origin shows whether the topic was
    /// created or adopted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,

    /// With deletionPolicy Delete, also delete the topic when it was adopted rather than
    /// created by this resource. Without it an adopted topic is kept, whatever deletionPolicy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_adopted: bool,

    /// Principals allowed on this topic and what they may do; the operator writes exactly these
    /// ACLs (literal, on this topic, from any host) and removes the ones taken out of this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["principal"]))]
    #[schemars(length(max = 100))]
    pub access: Vec<TopicAccess>,
}

/// What to do with the Kafka topic when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the topic, its data and its ACLs.
    #[default]
    Retain,
    /// Delete the topic and the ACLs this resource wrote.
    Delete,
}

/// One principal's permissions on the topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicAccess {
    /// A Kafka principal, such as User:order-gateway.
    #[schemars(length(min = 6, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('User:')")
        .message("must be a Kafka user principal such as User:order-gateway"))]
    pub principal: String,
    /// Operations allowed, e.g. [Write, Describe] for a producer.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub operations: Vec<TopicOperation>,
}

/// An operation on a topic, as Kafka's ACLs name it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum TopicOperation {
    Read,
    Write,
    Describe,
    DescribeConfigs,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The topic's name in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Kafka's topic id (changes if the topic is deleted and created again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Created (this resource created the topic) or Adopted (it existed and was taken over
    /// with spec.adopt); absent while this resource manages no topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<TopicOrigin>,
    /// True from just before the operator asks Kafka to create the topic until it records the
    /// created topic's id: an operator stopped in between knows the topic as the one this
    /// resource created when it starts again, rather than as a foreign topic needing `adopt`,
    /// if the topic has the spec's partitions and replication factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// The access entries whose ACLs are in Kafka, so removals from spec.access can be undone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_access: Vec<TopicAccess>,
    /// Ready (True when Kafka matches the spec) with a reason such as Reconciled,
    /// KafkaUnavailable, InvalidConfig, ResourceConflict, TopicExists, PolicyViolation,
    /// ReservedTopicName or ReplicationFactorChangeUnsupported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How the topic came under this resource's management.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TopicOrigin {
    /// This resource created the topic in Kafka.
    Created,
    /// The topic existed and this resource adopted it (spec.adopt).
    Adopted,
}

/// The finalizer a `deletionPolicy: Delete` topic carries until its Kafka topic is deleted.
pub const FINALIZER: &str = "pubsubkafka.io/topic-cleanup";

impl KafkaTopic {
    /// The topic's name in Kafka: spec.topicName, else metadata.name.
    pub fn topic_name(&self) -> &str {
        self.spec
            .topic_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }

    /// spec.config as Kafka's string values.
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        self.spec
            .config
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    IntOrString::Int(i) => i.to_string(),
                    IntOrString::String(s) => s.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// True when the Ready condition is True for the current generation.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.observed_generation == self.metadata.generation
                && super::conditions::is_ready(&s.conditions)
        })
    }
}
