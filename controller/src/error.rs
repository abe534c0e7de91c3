//! The reconcilers' error: each failure maps to a condition reason (and metric label) and says
//! whether retrying soon can help.

use pubsubkafka_contract::duration::InvalidDuration;
use rdkafka::error::RDKafkaErrorCode;

use crate::crd::conditions::reason;
use crate::kafka::AdminError;

/// Why a reconcile pass failed. Each error maps to a condition reason and decides how soon to
/// try again: transient failures back off, a refused spec waits for a change (or the resync).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] AdminError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Another resource owns the topic or group this one names: nothing is changed.
    #[error("{message}")]
    Conflict { message: String },
    /// Refused by the tenancy rules (a KafkaAccessPolicy or the default, Kafka's internal
    /// topics, an existing topic without `adopt`): nothing is changed until the spec or the
    /// policy does.
    #[error("{message}")]
    Refused {
        reason: &'static str,
        message: String,
    },
    /// A dependency is missing or not ready (a KafkaTopic, a DLQPolicy): wait for it.
    #[error("{message}")]
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// The operator has not listed every resource yet: no ownership decision before it has.
    #[error(
        "the operator's caches of KafkaTopics, OrderConsumers, KafkaAccessPolicies and Namespaces \
         are not filled yet (check its RBAC: list and watch on each)"
    )]
    CachesNotReady,
    /// The spec cannot be acted on as written.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
}

/// Why a spec cannot be acted on as written: nothing is changed until it does.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A duration field the API server's CEL check let through but this parser refuses.
    #[error(transparent)]
    Duration(#[from] InvalidDuration),
    /// The same, named by its field (`backoff.max`).
    #[error("{field}: {source}")]
    FieldDuration {
        field: &'static str,
        source: InvalidDuration,
    },
    #[error("retry topic name {0} is longer than Kafka's 249 characters; shorten the topic name")]
    RetryTopicTooLong(String),
    #[error("set exactly one handler: eventStore or http")]
    Handler,
    /// kube's finalizer helper refused the object (as kube words it).
    #[error("object has no name")]
    Unnamed,
    #[error("invalid finalizer")]
    InvalidFinalizer,
}

impl Error {
    /// The condition reason (and metric label) for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kafka(AdminError::Unavailable(_)) => reason::KAFKA_UNAVAILABLE,
            Self::Kafka(AdminError::InvalidRequest(_)) => reason::INVALID_CONFIG,
            Self::Kafka(AdminError::NotAuthorized { .. }) => reason::NOT_AUTHORIZED,
            Self::Kafka(AdminError::Rejected { code, .. }) => match code {
                RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidRequest
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidPartitions => reason::INVALID_CONFIG,
                RDKafkaErrorCode::InvalidReplicationFactor => reason::INVALID_REPLICATION_FACTOR,
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SecurityDisabled => reason::NOT_AUTHORIZED,
                _ => reason::KAFKA_ERROR,
            },
            Self::Kube(_) | Self::CachesNotReady => reason::KUBERNETES_ERROR,
            Self::Conflict { .. } => reason::RESOURCE_CONFLICT,
            Self::Waiting { reason, .. } | Self::Refused { reason, .. } => reason,
            Self::InvalidSpec(_) => reason::INVALID_SPEC,
        }
    }

    /// True when retrying soon may help (the cluster or API server was unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kafka(e) => e.is_unavailable() || self.reason() == reason::KAFKA_ERROR,
            Self::Kube(_) | Self::CachesNotReady => true,
            Self::Conflict { .. }
            | Self::Refused { .. }
            | Self::Waiting { .. }
            | Self::InvalidSpec(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_acl_is_not_authorized_and_waits_for_a_grant() {
        let missing = Error::Kafka(AdminError::NotAuthorized {
            operation: "DESCRIBE",
            resource: "group shop.order-store".into(),
            detail: "GroupAuthorizationFailed".into(),
        });
        assert_eq!(missing.reason(), reason::NOT_AUTHORIZED);
        assert!(
            !missing.is_transient(),
            "retried at the resync, not hammered"
        );
        assert!(
            missing
                .to_string()
                .contains("lacks DESCRIBE on group shop.order-store"),
            "{missing}"
        );
        for code in [
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            let raw = Error::Kafka(AdminError::Rejected {
                code,
                message: String::new(),
            });
            assert_eq!(raw.reason(), reason::NOT_AUTHORIZED, "{code:?}");
        }
        let outage = Error::Kafka(AdminError::Unavailable("OperationTimedOut".into()));
        assert_eq!(outage.reason(), reason::KAFKA_UNAVAILABLE);
        assert!(outage.is_transient());
    }
}
