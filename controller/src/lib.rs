//! PubSubKafka's control plane: the custom resource types, one reconciler per kind, and the
//! Kafka admin adapter they share.

pub mod cleanup;
pub mod consumer;
pub mod context;
pub mod crd;
pub use pubsubkafka_contract::duration;
pub mod error;
pub mod gateway;
pub mod http;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod ownership;
pub mod pods;
pub mod principal;
pub mod replay;
pub mod rotation;
pub mod settings;
pub mod tenancy;
pub mod topic;
pub mod workload;

/// The field manager of every object and status the operator writes (server-side apply).
pub const FIELD_MANAGER: &str = "pubsubkafka-controller";
