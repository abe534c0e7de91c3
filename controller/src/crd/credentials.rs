//! Credential rotation, shared by OrderConsumer and OrderGateway: how often the operator
//! replaces a workload's SCRAM credential, and where a rotation stands.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation that rotates a workload's credential now: any new value (a timestamp, say)
/// starts one rotation, as `kubectl rollout restart` does for a Deployment.
pub const ROTATE_ANNOTATION: &str = "pubsubkafka.io/rotate-credentials";

/// The workload's Kafka credential.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Replace the SCRAM credential this often, such as 720h (at least 1h); never when absent.
    /// The annotation pubsubkafka.io/rotate-credentials rotates it at once whatever this says.
    /// A rotation never stops the workers: a second username with the same ACLs is created,
    /// the pods roll onto it, and the old one is deleted when nothing uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')")
        .message("must be a duration of at least 1h, such as 720h"))]
    pub rotation: Option<String>,
}

/// Where the workload's credential stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The SCRAM username the workers use (or, during a rotation, move to).
    pub active_user: String,
    /// When the active credential was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<Time>,
    /// During a rotation: the username being retired. Its credential and ACLs stay until no
    /// worker pod and no member of the consumer group uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_user: Option<String>,
    /// When the last rotation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<Time>,
    /// When spec.credentials.rotation rotates it next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Time>,
    /// The value of the pubsubkafka.io/rotate-credentials annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
}
