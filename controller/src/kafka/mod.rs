//! Kafka, as the controller sees it: the admin adapter.

pub mod admin;

pub use admin::{
    Acl, AclFilter, AclOperation, AdminError, ConfigEntry, KafkaAdmin, ResourceKind,
    TopicDescription,
};
