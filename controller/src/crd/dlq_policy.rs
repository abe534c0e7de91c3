//! `DLQPolicy`: how a consumer's failures are retried and dead-lettered. A configuration object
//! read by the OrderConsumer reconciler; a change rolls the workers that use it.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use pubsubkafka_contract::config::{ErrorClass, GroupProtocol, RetryMode};
use serde::{Deserialize, Serialize};

/// How failed records are retried and where they go when retries run out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "DLQPolicy",
    plural = "dlqpolicies",
    namespaced,
    derive = "PartialEq",
    shortname = "dlqp",
    category = "pubsubkafka",
    doc = "Retry and dead-letter policy for OrderConsumers.",
    printcolumn(
        name = "Max-Retries",
        type_ = "integer",
        json_path = ".spec.maxRetries"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Dead-Letter-Topic",
        type_ = "string",
        json_path = ".spec.deadLetterTopic"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DLQPolicySpec {
    /// Retries after the first attempt (0 to 100); a record is attempted at most
    /// maxRetries + 1 times before it goes to the dead-letter topic.
    #[serde(default = "default_max_retries")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100")
        .message("maxRetries must be between 0 and 100"))]
    pub max_retries: i32,

    /// Exponential backoff between attempts.
    #[serde(default)]
    pub backoff: BackoffSpec,

    /// The dead-letter topic; defaults to "<source topic>-dlq" (one per domain, such as
    /// orders-dlq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-zA-Z0-9._-]+$') && self != '.' && self != '..'"
    ).message("must be 1-249 characters of [a-zA-Z0-9._-], and not '.' or '..'"))]
    #[x_kube(validation = Rule::new("!self.startsWith('__')")
        .message("names starting with '__' are Kafka's internal topics; the operator never writes to them"))]
    pub dead_letter_topic: Option<String>,

    /// Settings of the dead-letter topic when the operator creates it.
    #[serde(default)]
    pub dead_letter: DeadLetterTopicSpec,

    /// Error classes that go to the dead-letter topic without retries: Deserialization (not a
    /// decodable message), Validation (breaks the order contract), Rejected (an HTTP handler
    /// answered 4xx), Conflict (the event store already holds a different event with the same
    /// order_id), Transient (5xx, timeouts, other handler failures). The default is every class
    /// but Transient; leave Conflict out to retry a conflict (it goes to the dead-letter topic
    /// once the retries run out, unless the stored order was removed meanwhile).
    #[serde(default = "default_permanent_errors")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub permanent_errors: Vec<ErrorClass>,

    /// Where a failed record waits for its next attempt. Blocking: in place, in the worker; its
    /// key waits (the key's later records are held back) while the other keys of the partition
    /// go on, as many at once as the consumer's concurrencyPerPartition; with
    /// concurrencyPerPartition 1 the whole partition waits. RetryTopics: the record is
    /// published to a delay topic (one per attempt, created by the operator) and the
    /// partition's offset moves on; later records of its key are still held back until it is
    /// done. Both keep per-key order.
    #[serde(default)]
    pub mode: RetryMode,

    /// The consumer group protocol of the workers that use this policy, unless an
    /// OrderConsumer sets its own. Consumer (the default when neither sets one): Kafka's
    /// consumer group protocol (KIP-848, Kafka 4.0 and later), where scaling moves only the
    /// partitions that change owner and the others keep going; the worker falls back to
    /// Classic when the brokers refuse it. Classic: every rebalance pauses every partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_protocol: Option<GroupProtocol>,
}

fn default_max_retries() -> i32 {
    3
}

fn default_permanent_errors() -> Vec<ErrorClass> {
    ErrorClass::DEFAULT_PERMANENT.to_vec()
}

/// Delay before retry n: min(initial * multiplier^(n-1), max), spread by +/- jitter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.initial) <= duration(self.max)")
    .message("backoff.initial must not exceed backoff.max"))]
pub struct BackoffSpec {
    /// First delay, as a duration such as 500ms or 1s.
    #[serde(default = "default_initial")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')")
        .message("must be a duration such as 500ms or 1s"))]
    pub initial: String,
    /// Factor between consecutive delays (at least 1).
    #[serde(default = "default_multiplier")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("multiplier must be at least 1"))]
    pub multiplier: f64,
    /// Longest delay, such as 30s.
    #[serde(default = "default_max")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')")
        .message("must be a duration such as 30s or 1m"))]
    pub max: String,
    /// Random spread of each delay, from 0 (none) to 1 (+/- 100%).
    #[serde(default = "default_jitter")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0")
        .message("jitter must be between 0 and 1"))]
    pub jitter: f64,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            multiplier: default_multiplier(),
            max: default_max(),
            jitter: default_jitter(),
        }
    }
}

fn default_initial() -> String {
    "1s".into()
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max() -> String {
    "30s".into()
}
fn default_jitter() -> f64 {
    0.2
}

/// The dead-letter topic as the operator creates it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterTopicSpec {
    /// How long dead letters are kept, such as 336h (14 days); the broker default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("must be a positive duration such as 168h"))]
    pub retention: Option<String>,
    /// Replication factor; the source topic's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32767))]
    pub replication_factor: Option<i32>,
    /// Minimum partitions; the topic always has at least as many as the source topic, so a
    /// dead letter keeps its partition number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: Option<i32>,
}
