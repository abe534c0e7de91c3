//! `KafkaAccessPolicy`: cluster-scoped, written by cluster admins. It says which topic names,
//! principals and consumer group ids the namespaces it selects may use. The KafkaTopic and
//! OrderConsumer reconcilers read it (see [`crate::tenancy`]); it has no reconciler of its own.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// What the namespaces selected by this policy may use in Kafka. When several policies select a
/// namespace, it may use what any of them allows. A namespace that no policy selects gets the
/// operator's default (`--default-access-policy`: `namespaced` or `open`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "KafkaAccessPolicy",
    plural = "kafkaaccesspolicies",
    derive = "PartialEq",
    shortname = "kap",
    category = "pubsubkafka",
    doc = "Which topic names, principals and group ids the selected namespaces may use (cluster-scoped).",
    printcolumn(
        name = "Topic-Prefixes",
        type_ = "string",
        json_path = ".spec.topicPrefixes"
    ),
    printcolumn(
        name = "Group-Id-Prefixes",
        type_ = "string",
        json_path = ".spec.groupIdPrefixes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaAccessPolicySpec {
    /// The namespaces this policy applies to, by their labels (every namespace carries
    /// kubernetes.io/metadata.name). An empty selector selects every namespace.
    pub namespace_selector: LabelSelector,

    /// Prefixes of the Kafka topic names the namespaces may create or adopt, with KafkaTopics
    /// and as OrderConsumer dead-letter and retry topics (for example "orders" allows orders,
    /// orders-dlq and orders.v2). Kafka's internal topics ("__...") are never allowed.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 249)))]
    #[x_kube(validation = Rule::new(
        "self.all(p, p.matches('^[a-zA-Z0-9._-]+$') && !p.startsWith('__'))"
    ).message("each topic prefix is made of [a-zA-Z0-9._-] and does not start with '__'"))]
    pub topic_prefixes: Vec<String>,

    /// Principals that the namespaces' KafkaTopic access may grant to: exact (User:order-gateway)
    /// or a prefix ending in * (User:billing.*; User:* allows every principal, including the
    /// wildcard principal). The namespace's own OrderConsumer principals
    /// (User:pubsubkafka.<namespace>.*) are always allowed.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 6, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^User:[^*]*[*]?$'))")
        .message("each principal is like User:order-gateway, or a prefix ending in * like User:billing.*"))]
    pub principals: Vec<String>,

    /// Prefixes of the consumer group ids the namespaces' OrderConsumers may use.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 249)))]
    #[x_kube(validation = Rule::new("self.all(p, !p.startsWith(' ') && !p.endsWith(' '))")
        .message("a group id prefix has no leading or trailing spaces"))]
    pub group_id_prefixes: Vec<String>,
}
