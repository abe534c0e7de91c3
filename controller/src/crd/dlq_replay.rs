//! `DLQReplay`: a declared, reviewable replay of an OrderConsumer's dead letters. The operator
//! runs it once, as a Job with the worker image and a principal that may only read the
//! dead-letter topic and write to the target and parking topics, and keeps the resource
//! afterwards as the record of what was replayed.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use pubsubkafka_contract::config::ErrorClass;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::order_consumer::LocalRef;

/// A one-off replay of an OrderConsumer's dead letters back to its topic.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "DLQReplay",
    plural = "dlqreplays",
    namespaced,
    status = "DLQReplayStatus",
    derive = "PartialEq",
    shortname = "dlqr",
    category = "pubsubkafka",
    doc = "A replay of an OrderConsumer's dead letters, run once by the PubSubKafka operator as a Job; the resource stays as its record.",
    printcolumn(
        name = "Consumer",
        type_ = "string",
        json_path = ".spec.consumerRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matched"),
    printcolumn(name = "Replayed", type_ = "integer", json_path = ".status.replayed"),
    printcolumn(name = "Parked", type_ = "integer", json_path = ".status.parked"),
    printcolumn(name = "Dry-Run", type_ = "boolean", json_path = ".spec.dryRun"),
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
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("a DLQReplay's spec cannot change once created: create another DLQReplay"))]
pub struct DLQReplaySpec {
    /// The OrderConsumer (in this namespace) whose dead letters are replayed: its DLQPolicy's
    /// dead-letter topic is read, and only the dead letters its own consumer group wrote are
    /// selected (a domain's dead-letter topic may hold other consumers' too).
    pub consumer_ref: LocalRef,

    /// Which dead letters to replay; every given filter must match. Without filters, all of
    /// the consumer's dead letters up to where the topic ended when the replay started.
    #[serde(default)]
    pub filter: ReplayFilter,

    /// Records republished per second at most; 0 means no limit.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub rate: i32,

    /// Count what would be replayed and parked, and write nothing (no record, no progress).
    #[serde(default)]
    pub dry_run: bool,

    /// Replays a record may have had: a dead letter already replayed this many times goes to
    /// the parking topic (`<dead-letter topic>-parking`, owned by the consumer) instead of
    /// looping.
    #[serde(default = "default_max_replays")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replays: i32,

    /// The KafkaTopic (in this namespace) the records go back to; the consumer's own topic
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<LocalRef>,
}

fn default_max_replays() -> i32 {
    3
}

/// Dead-letter selection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.since) || !has(self.until) || timestamp(self.since) < timestamp(self.until)")
    .message("since must be before until")
    .field_path(".since"))]
pub struct ReplayFilter {
    /// Only dead letters of these error classes (the `x-dlq-error-class` header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub error_classes: Vec<ErrorClass>,
    /// Only dead letters that failed at or after this time (RFC 3339, the `x-dlq-failed-at`
    /// header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Only dead letters that failed before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
    /// Only dead letters carrying each of these headers with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: BTreeMap<String, String>,
    /// Only dead letters with one of these record keys (an order's key is its order_id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub keys: Vec<String>,
}

/// Where a replay is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReplayPhase {
    /// Not started: waiting for its consumer, topics, or another replay of the same
    /// dead-letter topic (the Ready condition says which).
    Pending,
    /// Its Job runs.
    Running,
    /// Read the dead-letter topic to where it ended at the start.
    Succeeded,
    /// Its Job failed; the Ready condition has the last pod's message.
    Failed,
}

impl ReplayPhase {
    /// Succeeded and Failed are final: the operator leaves the replay as it is.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// How far the replay read one dead-letter partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionProgress {
    pub partition: i32,
    /// The next offset to read (everything before it was read).
    pub offset: i64,
    /// Where the partition ended when the replay started: it stops there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// What the operator and the replay's Job last reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DLQReplayStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReplayPhase>,
    /// Dead letters the filters selected (replayed plus parked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    /// Republished to the target topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// Read and left alone: another class, time, header or key, or another consumer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// Sent to the parking topic, replayed `maxReplays` times already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<u64>,
    /// The dead-letter offsets reached, per partition: the replay group's committed offsets
    /// while it runs, the Job's last read when it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_offsets: Vec<PartitionProgress>,
    /// The dead-letter topic read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// The topic records go back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_topic: Option<String>,
    /// Where records replayed `maxReplays` times go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parking_topic: Option<String>,
    /// The Job that runs the replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The replay's Kafka principal (User:...), removed once it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The finalizer that stops the replay's Job and removes its principal and ACLs.
pub const FINALIZER: &str = "pubsubkafka.io/replay-cleanup";

impl DLQReplay {
    /// The phase, Pending until the operator has written one.
    pub fn phase(&self) -> ReplayPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(ReplayPhase::Pending)
    }
}
