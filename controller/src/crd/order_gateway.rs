//! `OrderGateway`: the seed's Producer Service. The operator gives it a Kafka principal that may
//! only write to its topic, and runs it as a Deployment behind a Service, with the outbox relay
//! beside it when the gateway writes through a PostgreSQL outbox.

// kube's printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::credentials::{CredentialsSpec, CredentialsStatus};

use super::order_consumer::{LocalRef, SecretKeyRef};

/// An HTTP gateway that publishes the orders (or users) it accepts to a KafkaTopic.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pubsubkafka.io",
    version = "v1alpha1",
    kind = "OrderGateway",
    namespaced,
    status = "OrderGatewayStatus",
    derive = "PartialEq",
    shortname = "ogw",
    category = "pubsubkafka",
    doc = "The producer service of the PubSubKafka operator: POST /orders (or /users) to a KafkaTopic, 202 once the broker acknowledged.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topicRef.name"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready-Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
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
#[x_kube(validation = Rule::new("!has(self.outbox) || self.replicas == 0 || self.outbox.relayReplicas > 0")
    .message("an outbox needs at least one relay replica while the gateway runs: without one, accepted orders are never published")
    .field_path(".outbox.relayReplicas"))]
pub struct OrderGatewaySpec {
    /// The KafkaTopic (in this namespace) the gateway publishes to. Its principal gets WRITE and
    /// DESCRIBE on that topic and nothing else.
    pub topic_ref: LocalRef,

    /// What the gateway accepts: Orders (POST /orders, a JSON or protobuf order, or a JSON array
    /// of orders) or Users (POST /users). The other route answers 404.
    #[serde(default)]
    pub domain: Domain,

    /// Gateway pods. The gateway is stateless, so there is no partition cap. The scale
    /// subresource drives it, so kubectl scale and an HPA on CPU work.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// The Service in front of the pods.
    #[serde(default)]
    pub service: GatewayService,

    /// Request limits.
    #[serde(default)]
    pub limits: GatewayLimits,

    /// Write each accepted event and an outbox row in one PostgreSQL transaction instead of
    /// producing to Kafka; the operator then also runs the outbox relay, which publishes the
    /// rows. Requests are accepted while the brokers are down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<GatewayOutbox>,

    /// Gateway image (the worker image); the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of each gateway container (and of the relay's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The SCRAM credential's rotation (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,

    /// Trace export; the operator's worker OTLP endpoint when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<GatewayTracing>,
}

fn default_replicas() -> i32 {
    2
}

/// The route a gateway serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Domain {
    /// POST /orders.
    #[default]
    Orders,
    /// POST /users.
    Users,
}

impl Domain {
    /// The worker's `--serve` value.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Users => "users",
        }
    }
}

/// The gateway's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayService {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The Service port (the pods listen on 8080).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for GatewayService {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_port(),
        }
    }
}

fn default_port() -> i32 {
    80
}

/// Kubernetes Service types the gateway may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What one request may carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayLimits {
    /// Largest request body in bytes; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_body_bytes: i64,
    /// Most orders one POST /orders may carry as a JSON array; more get 422.
    #[serde(default = "default_max_orders")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_orders_per_request: i32,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_orders_per_request: default_max_orders(),
        }
    }
}

fn default_max_body_bytes() -> i64 {
    1024 * 1024
}

fn default_max_orders() -> i32 {
    pubsubkafka_contract::config::MAX_ORDERS_PER_REQUEST as i32
}

/// The PostgreSQL outbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOutbox {
    /// Secret (in this namespace) holding the PostgreSQL connection URL.
    pub connection_secret: SecretKeyRef,
    /// Relay pods. The relay locks the rows it publishes, so more than one is safe; one is
    /// enough for most loads.
    #[serde(default = "default_relay_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub relay_replicas: i32,
}

fn default_relay_replicas() -> i32 {
    1
}

/// Trace export of the gateway pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTracing {
    /// OTLP/HTTP endpoint, such as http://otel-collector.monitoring:4318.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("must be an http:// or https:// URL"))]
    pub otlp_endpoint: String,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderGatewayStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gateway replicas the Deployment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready gateway pods, from the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Ready relay pods (outbox only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ready_replicas: Option<i32>,
    /// Where clients in the cluster send requests: the Service's DNS name and route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Kafka topic the gateway publishes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The gateway's Kafka principal (User:...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Secret holding the principal's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The SCRAM username in use and the credential's rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// Label selector of the gateway pods (for the scale subresource and an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Reconciled (the operator applied the spec) and Ready (every wanted pod is ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The finalizer that removes the gateway's principal and ACLs from Kafka.
pub const FINALIZER: &str = "pubsubkafka.io/gateway-cleanup";
