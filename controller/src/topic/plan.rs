//! The topic reconciler's decisions, as pure functions: from the declared topic and what Kafka
//! reports, what to create, grow, reconfigure and authorize, and what cannot be done.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::crd::KafkaTopic;
use crate::crd::kafka_topic::{TopicAccess, TopicOperation};
use crate::kafka::{Acl, AclOperation, ConfigEntry, ResourceKind, TopicDescription};

/// What Kafka reports about the topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub topic: Option<TopicDescription>,
    /// Every config entry (empty when the topic does not exist).
    pub config: BTreeMap<String, ConfigEntry>,
    /// ALLOW ACLs on this literal topic, for every principal.
    pub acls: BTreeSet<Acl>,
}

/// What the resource declares, in Kafka's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub topic_name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
    /// ACLs from spec.access.
    pub acls: BTreeSet<Acl>,
    /// ACLs from status.appliedAccess: what this resource wrote before.
    pub applied_acls: BTreeSet<Acl>,
}

impl Desired {
    pub fn of(topic: &KafkaTopic) -> Self {
        let topic_name = topic.topic_name();
        let applied = topic
            .status
            .as_ref()
            .map(|s| s.applied_access.as_slice())
            .unwrap_or_default();
        Self {
            acls: acls_for(&topic_name, &topic.spec.access),
            applied_acls: acls_for(&topic_name, applied),
            partitions: topic.spec.partitions,
            replication_factor: topic.spec.replication_factor,
            config: topic.config_strings(),
            topic_name,
        }
    }
}

/// Something the spec asks for that Kafka cannot do; reported, never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    ReplicationFactorChange { actual: i32, desired: i32 },
    PartitionsDecrease { actual: i32, desired: i32 },
}

impl Problem {
    pub fn reason(&self) -> &'static str {
        use crate::crd::conditions::reason;
        match self {
            Self::ReplicationFactorChange { .. } => reason::REPLICATION_FACTOR_CHANGE_UNSUPPORTED,
            Self::PartitionsDecrease { .. } => reason::PARTITIONS_DECREASE_UNSUPPORTED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::ReplicationFactorChange { actual, desired } => format!(
                "the topic has replication factor {actual} and the spec asks for {desired}; \
                 changing it needs a partition reassignment, which the operator does not do"
            ),
            Self::PartitionsDecrease { actual, desired } => format!(
                "the topic has {actual} partitions and the spec asks for {desired}; Kafka cannot \
                 remove partitions"
            ),
        }
    }
}

/// The changes one reconcile pass makes, in the order it makes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: bool,
    pub grow_partitions_to: Option<i32>,
    pub set_config: BTreeMap<String, String>,
    pub delete_config: Vec<String>,
    pub create_acls: Vec<Acl>,
    pub delete_acls: Vec<Acl>,
    pub problems: Vec<Problem>,
}

impl Plan {
    pub fn changes_config(&self) -> bool {
        !self.set_config.is_empty() || !self.delete_config.is_empty()
    }
}

/// Decides what to change so that Kafka matches `desired`.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut plan = Plan {
        create_acls: desired.acls.difference(&observed.acls).cloned().collect(),
        delete_acls: desired
            .applied_acls
            .difference(&desired.acls)
            .filter(|acl| observed.acls.contains(*acl))
            .cloned()
            .collect(),
        ..Plan::default()
    };
    let Some(topic) = &observed.topic else {
        // Created with its configs in one request.
        plan.create = true;
        return plan;
    };

    let actual = topic.partition_count();
    if desired.partitions > actual {
        plan.grow_partitions_to = Some(desired.partitions);
    } else if desired.partitions < actual {
        plan.problems.push(Problem::PartitionsDecrease {
            actual,
            desired: desired.partitions,
        });
    }
    let actual_rf = topic.replication_factor();
    if actual_rf != desired.replication_factor {
        plan.problems.push(Problem::ReplicationFactorChange {
            actual: actual_rf,
            desired: desired.replication_factor,
        });
    }

    for (key, value) in &desired.config {
        let current = observed.config.get(key);
        let in_place = current.is_some_and(|entry| {
            entry.dynamic && (entry.sensitive || entry.value.as_deref() == Some(value.as_str()))
        });
        if !in_place {
            plan.set_config.insert(key.clone(), value.clone());
        }
    }
    plan.delete_config = observed
        .config
        .iter()
        .filter(|(key, entry)| {
            entry.dynamic && !entry.read_only && !desired.config.contains_key(*key)
        })
        .map(|(key, _)| key.clone())
        .collect();
    plan
}

/// The literal ALLOW ACLs that `access` grants on `topic`.
pub fn acls_for(topic: &str, access: &[TopicAccess]) -> BTreeSet<Acl> {
    access
        .iter()
        .flat_map(|entry| {
            entry.operations.iter().map(|op| Acl {
                resource: ResourceKind::Topic,
                name: topic.to_owned(),
                principal: entry.principal.clone(),
                operation: match op {
                    TopicOperation::Read => AclOperation::Read,
                    TopicOperation::Write => AclOperation::Write,
                    TopicOperation::Describe => AclOperation::Describe,
                    TopicOperation::DescribeConfigs => AclOperation::DescribeConfigs,
                },
            })
        })
        .collect()
}

/// Among every resource that names the same Kafka topic as `me`, the oldest owns it (ties
/// broken by namespace and name). Returns the owner's `namespace/name` when it is not `me`.
pub fn conflicting_owner<'a>(
    me: &KafkaTopic,
    all: impl IntoIterator<Item = &'a KafkaTopic>,
) -> Option<String> {
    let topic = me.topic_name();
    let key = |t: &KafkaTopic| {
        (
            t.metadata.creation_timestamp.clone().map(|ts| ts.0),
            t.namespace().unwrap_or_default(),
            t.name_any(),
        )
    };
    let owner = all
        .into_iter()
        .filter(|t| t.topic_name() == topic)
        .min_by_key(|t| key(t))?;
    let mine = (me.namespace().unwrap_or_default(), me.name_any());
    let theirs = (owner.namespace().unwrap_or_default(), owner.name_any());
    (theirs != mine).then(|| format!("{}/{}", theirs.0, theirs.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KafkaTopicSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn topic_yaml(yaml: &str) -> KafkaTopic {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    fn described(partitions: usize, rf: usize) -> TopicDescription {
        TopicDescription {
            name: "orders".into(),
            id: "abc".into(),
            partitions: vec![(1..=rf as i32).collect(); partitions],
        }
    }

    fn entry(value: &str, dynamic: bool) -> ConfigEntry {
        ConfigEntry {
            value: Some(value.into()),
            dynamic,
            sensitive: false,
            read_only: false,
        }
    }

    const ORDERS: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaTopic
metadata: {name: orders, namespace: shop}
spec:
  partitions: 6
  replicationFactor: 1
  config: {retention.ms: 604800000, cleanup.policy: delete}
  access:
  - principal: User:order-gateway
    operations: [Write, Describe]
"#;

    #[test]
    fn a_missing_topic_is_created_with_its_acls() {
        let desired = Desired::of(&topic_yaml(ORDERS));
        let plan = plan(&desired, &Observed::default());
        assert!(plan.create);
        assert_eq!(plan.grow_partitions_to, None);
        assert!(
            plan.set_config.is_empty(),
            "configs go with the create request"
        );
        let ops: Vec<_> = plan.create_acls.iter().map(|a| a.operation).collect();
        assert_eq!(ops, [AclOperation::Write, AclOperation::Describe]);
        assert!(
            plan.create_acls
                .iter()
                .all(|a| a.principal == "User:order-gateway" && a.name == "orders")
        );
    }

    #[test]
    fn partitions_grow_and_never_shrink() {
        let desired = Desired::of(&topic_yaml(ORDERS));
        let observed = Observed {
            topic: Some(described(3, 1)),
            ..Default::default()
        };
        assert_eq!(plan(&desired, &observed).grow_partitions_to, Some(6));

        let observed = Observed {
            topic: Some(described(8, 1)),
            ..Default::default()
        };
        let plan = plan(&desired, &observed);
        assert_eq!(plan.grow_partitions_to, None);
        assert_eq!(
            plan.problems,
            [Problem::PartitionsDecrease {
                actual: 8,
                desired: 6
            }]
        );
        assert_eq!(plan.problems[0].reason(), "PartitionsDecreaseUnsupported");
    }

    #[test]
    fn a_replication_factor_difference_is_reported() {
        let desired = Desired::of(&topic_yaml(ORDERS));
        let observed = Observed {
            topic: Some(described(6, 3)),
            ..Default::default()
        };
        let plan = plan(&desired, &observed);
        assert_eq!(
            plan.problems,
            [Problem::ReplicationFactorChange {
                actual: 3,
                desired: 1
            }]
        );
        assert_eq!(
            plan.problems[0].reason(),
            "ReplicationFactorChangeUnsupported"
        );
    }

    #[test]
    fn config_drift_is_set_back_and_unnamed_dynamic_keys_removed() {
        let desired = Desired::of(&topic_yaml(ORDERS));
        let observed = Observed {
            topic: Some(described(6, 1)),
            config: [
                // Drifted out of band.
                ("retention.ms".to_owned(), entry("1000", true)),
                // Matches, but only as the broker default: pin it on the topic.
                ("cleanup.policy".to_owned(), entry("delete", false)),
                // Set out of band, not in the spec.
                ("max.message.bytes".to_owned(), entry("2000000", true)),
                // A broker default the spec does not name: left alone.
                ("segment.bytes".to_owned(), entry("1073741824", false)),
            ]
            .into(),
            acls: BTreeSet::new(),
        };
        let plan = plan(&desired, &observed);
        assert_eq!(
            plan.set_config,
            BTreeMap::from([
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("retention.ms".to_owned(), "604800000".to_owned()),
            ])
        );
        assert_eq!(plan.delete_config, ["max.message.bytes"]);
    }

    #[test]
    fn a_converged_topic_needs_nothing() {
        let desired = Desired::of(&topic_yaml(ORDERS));
        let observed = Observed {
            topic: Some(described(6, 1)),
            config: [
                ("retention.ms".to_owned(), entry("604800000", true)),
                ("cleanup.policy".to_owned(), entry("delete", true)),
            ]
            .into(),
            acls: desired.acls.clone(),
        };
        assert_eq!(plan(&desired, &observed), Plan::default());
    }

    #[test]
    fn acls_removed_from_the_spec_are_deleted_and_others_left_alone() {
        let mut topic = topic_yaml(ORDERS);
        let old_access = topic.spec.access.clone();
        topic.spec.access.clear();
        topic.status = Some(crate::crd::KafkaTopicStatus {
            applied_access: old_access,
            ..Default::default()
        });
        let desired = Desired::of(&topic);
        let foreign = Acl {
            resource: ResourceKind::Topic,
            name: "orders".into(),
            principal: "User:orders-consumer".into(),
            operation: AclOperation::Read,
        };
        let mut acls = desired.applied_acls.clone();
        acls.insert(foreign.clone());
        let observed = Observed {
            topic: Some(described(6, 1)),
            acls,
            ..Default::default()
        };
        let plan = plan(&desired, &observed);
        assert_eq!(plan.delete_acls.len(), 2);
        assert!(
            !plan.delete_acls.contains(&foreign),
            "ACLs written by others stay"
        );
        assert!(plan.create_acls.is_empty());
    }

    #[test]
    fn the_oldest_claim_owns_a_topic_name() {
        let at = |secs: i64| Some(Time(jiff::Timestamp::from_second(secs).unwrap()));
        let mut older = KafkaTopic::new(
            "orders",
            KafkaTopicSpec {
                topic_name: None,
                partitions: 3,
                replication_factor: 1,
                config: Default::default(),
                deletion_policy: Default::default(),
                access: vec![],
            },
        );
        older.metadata.namespace = Some("team-a".into());
        older.metadata.creation_timestamp = at(100);
        let mut newer = older.clone();
        newer.metadata.namespace = Some("team-b".into());
        newer.metadata.name = Some("my-orders".into());
        newer.spec.topic_name = Some("orders".into());
        newer.metadata.creation_timestamp = at(200);
        let mut unrelated = older.clone();
        unrelated.metadata.name = Some("users".into());
        unrelated.metadata.creation_timestamp = at(1);

        let all = [older.clone(), newer.clone(), unrelated];
        assert_eq!(conflicting_owner(&older, &all), None);
        assert_eq!(
            conflicting_owner(&newer, &all).as_deref(),
            Some("team-a/orders")
        );
    }
}
