//! Status conditions shared by every kind: the condition types and reasons are constants here,
//! and conditions are merged so that `lastTransitionTime` only moves when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition every resource reports: working for the user. For a KafkaTopic, the topic
/// exists in Kafka as declared; for an OrderConsumer, the wanted worker pods are available.
pub const READY: &str = "Ready";
/// The operator did its part for the current generation (Kafka objects, ACLs, children
/// applied); says nothing about whether the workload runs.
pub const RECONCILED: &str = "Reconciled";
/// Something the user should look at: True with a reason (a crash-looping worker, an
/// unreachable sink) while the workload runs below what was declared.
pub const DEGRADED: &str = "Degraded";
/// OrderConsumer: replicas were limited by the partition count.
pub const CAPPED: &str = "Capped";
/// DLQReplay: True once it has ended, succeeded or failed (as a Job's `Complete`, so
/// `kubectl wait --for=condition=Complete` works).
pub const COMPLETE: &str = "Complete";
/// OrderConsumer and OrderGateway: True while the workers move to a new Kafka credential; False
/// once the last rotation ended (absent before the first).
pub const CREDENTIALS_ROTATING: &str = "CredentialsRotating";

/// Reasons, stable and machine-readable (alerts and runbooks key on them).
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    pub const INVALID_REPLICATION_FACTOR: &str = "InvalidReplicationFactor";
    pub const REPLICATION_FACTOR_CHANGE_UNSUPPORTED: &str = "ReplicationFactorChangeUnsupported";
    pub const PARTITIONS_DECREASE_UNSUPPORTED: &str = "PartitionsDecreaseUnsupported";
    pub const RESOURCE_CONFLICT: &str = "ResourceConflict";
    pub const NOT_AUTHORIZED: &str = "NotAuthorized";
    pub const KAFKA_ERROR: &str = "KafkaError";
    pub const TOPIC_NOT_READY: &str = "TopicNotReady";
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PARTITION_CAP: &str = "PartitionCap";
    pub const WITHIN_PARTITIONS: &str = "WithinPartitions";
    /// The topic exists in Kafka, no resource manages it, and the spec does not say `adopt`.
    pub const TOPIC_EXISTS: &str = "TopicExists";
    /// A KafkaAccessPolicy (or the operator's default policy) does not allow the name,
    /// principal or group id.
    pub const POLICY_VIOLATION: &str = "PolicyViolation";
    /// A Kafka internal topic (`__...`): never managed.
    pub const RESERVED_TOPIC_NAME: &str = "ReservedTopicName";
    /// OrderConsumer: every wanted worker pod is ready (or none is wanted).
    pub const WORKERS_READY: &str = "WorkersReady";
    /// OrderConsumer: worker pods are being created, started or rolled.
    pub const WORKERS_STARTING: &str = "WorkersStarting";
    /// OrderConsumer: fewer worker pods are ready than wanted, for no cause the pods show.
    pub const WORKERS_NOT_READY: &str = "WorkersNotReady";
    /// OrderConsumer: a worker container keeps exiting (CrashLoopBackOff).
    pub const WORKER_CRASH_LOOPING: &str = "WorkerCrashLooping";
    /// OrderConsumer: a worker pod cannot start its container (image pull, bad config).
    pub const WORKER_FAILING: &str = "WorkerFailing";
    /// OrderConsumer: worker pods run but report not ready, which they do while their sink
    /// (PostgreSQL, the HTTP endpoint) or Kafka is unreachable.
    pub const SINK_UNAVAILABLE: &str = "SinkUnavailable";
    /// Degraded=False: nothing to look at.
    pub const AS_DECLARED: &str = "AsDeclared";
    /// DLQReplay: its OrderConsumer does not exist (or has no dead-letter topic yet).
    pub const CONSUMER_NOT_FOUND: &str = "ConsumerNotFound";
    /// DLQReplay: another replay of the same dead-letter topic runs first.
    pub const WAITING_FOR_REPLAY: &str = "WaitingForReplay";
    /// DLQReplay: its Job is being created.
    pub const REPLAY_STARTING: &str = "Starting";
    /// DLQReplay: its Job runs.
    pub const REPLAY_RUNNING: &str = "Running";
    /// DLQReplay: its Job read the dead-letter topic to its end at the start.
    pub const REPLAY_SUCCEEDED: &str = "Succeeded";
    /// DLQReplay: its Job failed past its retries.
    pub const REPLAY_FAILED: &str = "JobFailed";
    /// DLQReplay Complete=False: not ended yet.
    pub const REPLAY_NOT_FINISHED: &str = "NotFinished";
    /// CredentialsRotating=True: a rotation is under way.
    pub const ROTATING: &str = "Rotating";
    /// CredentialsRotating=False: the last rotation ended, the old username is deleted.
    pub const ROTATED: &str = "Rotated";
}

/// A status with conditions: what [`crate::context::Context::write_status`] compares.
pub trait HasConditions: Clone + PartialEq + serde::Serialize {
    fn conditions(&self) -> &[Condition];
    /// The status with its conditions left out, to compare the rest.
    fn without_conditions(&self) -> Self;
}

/// Implements [`HasConditions`] for status types with a `conditions` field.
macro_rules! has_conditions {
    ($($status:ty),* $(,)?) => {$(
        impl HasConditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn without_conditions(&self) -> Self {
                Self {
                    conditions: Vec::new(),
                    ..self.clone()
                }
            }
        }
    )*};
}

has_conditions!(
    super::KafkaTopicStatus,
    super::OrderConsumerStatus,
    super::OrderGatewayStatus,
    super::DLQReplayStatus,
);

/// A condition observed now for `generation`.
pub fn new(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Puts `update` into `conditions`, keeping the old transition time when the status is unchanged.
pub fn merge(conditions: &[Condition], mut update: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != update.type_)
        .cloned()
        .collect();
    if let Some(old) = conditions.iter().find(|c| c.type_ == update.type_)
        && old.status == update.status
    {
        update.last_transition_time = old.last_transition_time.clone();
    }
    out.push(update);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Puts `ready` into `conditions` with its twin `Reconciled` (same verdict, reason and
/// message): for a kind whose Ready is the operator's own work (a KafkaTopic is ready when the
/// operator made the topic so), the two say the same, and every kind reports both.
pub fn merge_ready_and_reconciled(conditions: &[Condition], ready: Condition) -> Vec<Condition> {
    let reconciled = Condition {
        type_: RECONCILED.to_owned(),
        ..ready.clone()
    };
    merge(&merge(conditions, ready), reconciled)
}

/// Equal in everything but the transition time.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// The `Ready` condition, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// True when `Ready` is `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    ready(conditions).is_some_and(|c| c.status == "True")
}

/// True when `Reconciled` is `True`: the operator did its part for the observed generation.
pub fn is_reconciled(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == RECONCILED && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut first = new(READY, false, reason::KAFKA_UNAVAILABLE, "down", Some(1));
        first.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        let merged = merge(
            &[first.clone()],
            new(
                READY,
                false,
                reason::KAFKA_UNAVAILABLE,
                "still down",
                Some(1),
            ),
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].last_transition_time, first.last_transition_time);
        assert_eq!(merged[0].message, "still down");

        let merged = merge(&merged, new(READY, true, reason::RECONCILED, "ok", Some(1)));
        assert_ne!(merged[0].last_transition_time, first.last_transition_time);
    }

    #[test]
    fn same_ignores_only_the_time() {
        let a = vec![new(READY, true, reason::RECONCILED, "ok", Some(2))];
        let mut b = a.clone();
        b[0].last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        assert!(same(&a, &b));
        b[0].observed_generation = Some(3);
        assert!(!same(&a, &b));
    }

    #[test]
    fn other_condition_types_are_kept_and_sorted() {
        let capped = new(CAPPED, true, "PartitionCap", "3 partitions", Some(1));
        let merged = merge(
            &[capped],
            new(READY, true, reason::RECONCILED, "ok", Some(1)),
        );
        let types: Vec<_> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Capped", "Ready"]);
    }
}
