//! The topic reconciler's decisions, as pure functions: from the declared topic and what Kafka
//! reports, what to create, grow, reconfigure and authorize, and what cannot be done.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::conditions::reason;
use crate::crd::kafka_topic::{DeletionPolicy, TopicAccess, TopicOperation, TopicOrigin};
use crate::crd::{KafkaTopic, OrderConsumer};
use crate::error::Error;
use crate::kafka::{Acl, AclOperation, ConfigEntry, ResourceKind, TopicDescription};
use crate::ownership;
use crate::tenancy::{self, Rules};

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
        let topic_name = topic.topic_name().to_owned();
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

/// The literal ALLOW ACLs that `access` grants on `topic`. A grant to a workload's principal
/// (`User:pubsubkafka.<namespace>.<name>`) goes to both of its usernames, so it holds across
/// credential rotations ([`crate::rotation`]).
pub fn acls_for(topic: &str, access: &[TopicAccess]) -> BTreeSet<Acl> {
    let mut acls = BTreeSet::new();
    for entry in access {
        let second = entry
            .principal
            .strip_prefix("User:")
            .filter(|user| user.starts_with(tenancy::MANAGED_USER_PREFIX) && !user.contains('~'))
            .map(|user| format!("User:{user}{}", crate::rotation::SECOND_SUFFIX));
        for principal in std::iter::once(&entry.principal).chain(second.as_ref()) {
            acls.extend(entry.operations.iter().map(|op| Acl {
                resource: ResourceKind::Topic,
                name: topic.to_owned(),
                principal: principal.clone(),
                operation: match op {
                    TopicOperation::Read => AclOperation::Read,
                    TopicOperation::Write => AclOperation::Write,
                    TopicOperation::Describe => AclOperation::Describe,
                    TopicOperation::DescribeConfigs => AclOperation::DescribeConfigs,
                },
            }));
        }
    }
    acls
}

/// Whether the namespace may manage this topic at all, before Kafka is asked anything: not a
/// Kafka internal topic, a name and grants its policy allows, and a topic no other resource
/// owns. A refusal changes nothing in Kafka.
pub fn admit<'a>(
    topic: &KafkaTopic,
    rules: &Rules,
    topics: impl IntoIterator<Item = &'a KafkaTopic>,
    consumers: impl IntoIterator<Item = &'a OrderConsumer>,
) -> Result<(), Error> {
    let name = topic.topic_name();
    if tenancy::is_internal_topic(name) {
        return Err(Error::Refused {
            reason: reason::RESERVED_TOPIC_NAME,
            message: format!(
                "{name} is a Kafka internal topic (names starting with '__'); the operator never \
                 creates, adopts or changes one"
            ),
        });
    }
    let refused = |v: tenancy::Violation| Error::Refused {
        reason: reason::POLICY_VIOLATION,
        message: v.message,
    };
    rules.check_topic(name).map_err(refused)?;
    for entry in &topic.spec.access {
        rules.check_principal(&entry.principal).map_err(refused)?;
    }
    if let Some(owner) = ownership::topic_conflict(topic, topics, consumers) {
        return Err(Error::Conflict {
            message: format!(
                "Kafka topic {name:?} is owned by {owner}; this resource changes nothing until \
                 that one is deleted"
            ),
        });
    }
    Ok(())
}

/// How this resource relates to the topic Kafka has under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Management {
    /// No such topic: create it.
    Create,
    /// This resource manages it: it created it, or adopted it.
    Manage(TopicOrigin),
    /// It exists, this resource never managed it, and the spec does not say `adopt`.
    Unmanaged,
}

/// Whether to create, keep managing, adopt or leave alone the topic Kafka reports. A topic this
/// resource managed is recognised by its id in the status (a topic deleted and created again by
/// someone else has another id), or, when the operator stopped between asking Kafka to create
/// it and recording its id, by `status.creating` (written before the request) on a topic of the
/// spec's shape ([`made_as_asked`]); a status from before `origin` existed counts as adopted,
/// the cautious reading for deletion.
pub fn management(topic: &KafkaTopic, observed: Option<&TopicDescription>) -> Management {
    let Some(observed) = observed else {
        return Management::Create;
    };
    let status = topic.status.clone().unwrap_or_default();
    let known = match status.topic_id.as_deref() {
        Some(id) if !observed.id.is_empty() => id == observed.id,
        _ => observed.id.is_empty() && status.origin.is_some(),
    };
    if known {
        Management::Manage(status.origin.unwrap_or(TopicOrigin::Adopted))
    } else if status.creating && status.topic_id.is_none() && made_as_asked(topic, observed) {
        Management::Manage(TopicOrigin::Created)
    } else if topic.spec.adopt {
        Management::Manage(TopicOrigin::Adopted)
    } else {
        Management::Unmanaged
    }
}

/// Whether `observed` has the partitions and replication factor this resource asks for, as a
/// topic its own request created has. A creation mark whose answer was lost (a timeout, the
/// operator stopped) cannot say who created the topic Kafka now reports: someone else may have
/// created it first, and Kafka refused this resource's request. A topic of another shape is
/// certainly not this resource's, so the mark does not claim it. One of the same shape still
/// can be someone else's: that risk is left.
pub fn made_as_asked(topic: &KafkaTopic, observed: &TopicDescription) -> bool {
    observed.partition_count() == topic.spec.partitions
        && observed.replication_factor() == topic.spec.replication_factor
}

/// What deleting the resource removes from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The ACLs it wrote (status.appliedAccess).
    pub remove_acls: bool,
    pub delete_topic: bool,
    /// Why a `Delete` topic is kept, when it is.
    pub kept_because: Option<&'static str>,
}

/// Deleting the resource removes only what it manages: its ACLs when it managed the topic, and
/// with `deletionPolicy: Delete` the topic itself when it is the same topic (same id), no other
/// resource owns it, and this resource created it or `deleteAdopted` says to delete it.
pub fn cleanup(
    topic: &KafkaTopic,
    observed: Option<&TopicDescription>,
    owned_elsewhere: bool,
) -> Cleanup {
    let status = topic.status.clone().unwrap_or_default();
    let kafka_id = observed.map(|d| d.id.as_str());
    // Asked Kafka to create it, and stopped before recording its id (see `management`).
    let asked = status.creating
        && status.topic_id.is_none()
        && observed.is_none_or(|d| made_as_asked(topic, d));
    let origin = status.origin.or(asked.then_some(TopicOrigin::Created));
    let managed =
        !owned_elsewhere && !tenancy::is_internal_topic(topic.topic_name()) && origin.is_some();
    let wants_delete = topic.spec.deletion_policy == DeletionPolicy::Delete;
    let kept_because = if !wants_delete || kafka_id.is_none() {
        None
    } else if !managed {
        Some("this resource never managed it")
    } else if !asked && kafka_id != status.topic_id.as_deref() && kafka_id != Some("") {
        Some("it is not the topic this resource managed (another topic id)")
    } else if origin == Some(TopicOrigin::Adopted) && !topic.spec.delete_adopted {
        Some("it was adopted, not created, by this resource (set spec.deleteAdopted to delete it)")
    } else {
        None
    };
    Cleanup {
        remove_acls: managed,
        delete_topic: wants_delete && kafka_id.is_some() && kept_because.is_none(),
        kept_because,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_to_a_workload_holds_for_both_of_its_usernames() {
        let access = |principal: &str| TopicAccess {
            principal: principal.into(),
            operations: vec![TopicOperation::Read],
        };
        let principals = |grant: &str| -> Vec<String> {
            acls_for("orders", &[access(grant)])
                .into_iter()
                .map(|a| a.principal)
                .collect()
        };
        assert_eq!(
            principals("User:pubsubkafka.shop.audit"),
            [
                "User:pubsubkafka.shop.audit",
                "User:pubsubkafka.shop.audit~2"
            ]
        );
        assert_eq!(
            principals("User:pubsubkafka.shop.audit~2"),
            ["User:pubsubkafka.shop.audit~2"]
        );
        assert_eq!(principals("User:order-gateway"), ["User:order-gateway"]);
    }

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

    fn with_status(yaml: &str, status: &str) -> KafkaTopic {
        let mut topic = topic_yaml(yaml);
        topic.status = Some(serde_yaml::from_str(status).expect("status parses"));
        topic
    }

    #[test]
    fn an_existing_topic_is_adopted_only_when_asked() {
        let adopting = format!("{ORDERS}  adopt: true\n");
        let fresh = described(6, 1);
        let none = "{}";
        let created = "{topicId: abc, origin: Created}";
        let adopted = "{topicId: abc, origin: Adopted}";
        let legacy = "{topicId: abc}";
        let other_id = "{topicId: xyz, origin: Created}";
        for (spec, status, observed, expected) in [
            (ORDERS, none, None, Management::Create),
            (ORDERS, created, None, Management::Create),
            (ORDERS, none, Some(&fresh), Management::Unmanaged),
            (
                adopting.as_str(),
                none,
                Some(&fresh),
                Management::Manage(TopicOrigin::Adopted),
            ),
            (
                ORDERS,
                created,
                Some(&fresh),
                Management::Manage(TopicOrigin::Created),
            ),
            (
                ORDERS,
                adopted,
                Some(&fresh),
                Management::Manage(TopicOrigin::Adopted),
            ),
            // Managed before origin was recorded: the cautious reading.
            (
                ORDERS,
                legacy,
                Some(&fresh),
                Management::Manage(TopicOrigin::Adopted),
            ),
            // Deleted and created again by someone else: not ours any more.
            (ORDERS, other_id, Some(&fresh), Management::Unmanaged),
            (
                adopting.as_str(),
                other_id,
                Some(&fresh),
                Management::Manage(TopicOrigin::Adopted),
            ),
        ] {
            let topic = with_status(spec, status);
            assert_eq!(
                management(&topic, observed),
                expected,
                "{status} adopt={}",
                topic.spec.adopt
            );
        }
    }

    #[test]
    fn a_topic_whose_creation_was_asked_is_known_without_its_id() {
        // The operator wrote `creating`, asked Kafka, and stopped before recording the id.
        let fresh = described(6, 1);
        assert_eq!(
            management(&with_status(ORDERS, "{creating: true}"), Some(&fresh)),
            Management::Manage(TopicOrigin::Created)
        );
        assert_eq!(
            management(&with_status(ORDERS, "{creating: true}"), None),
            Management::Create,
            "stopped before Kafka created it: asked again"
        );
        assert_eq!(
            management(
                &with_status(ORDERS, "{creating: true}"),
                Some(&described(2, 1))
            ),
            Management::Unmanaged,
            "a topic of another shape was not made by this resource's request"
        );
        assert_eq!(
            management(
                &with_status(ORDERS, "{creating: true}"),
                Some(&described(6, 3))
            ),
            Management::Unmanaged,
            "nor one of another replication factor"
        );
        let other = with_status(ORDERS, "{topicId: xyz, origin: Created, creating: true}");
        assert_eq!(
            management(&other, Some(&fresh)),
            Management::Unmanaged,
            "a status naming another topic id wins"
        );
        assert_eq!(
            management(&with_status(ORDERS, "{}"), Some(&fresh)),
            Management::Unmanaged,
            "without the mark, an unknown topic is foreign"
        );
    }

    #[test]
    fn deletion_removes_only_what_this_resource_manages() {
        let delete = format!("{ORDERS}  deletionPolicy: Delete\n");
        let delete_adopted = format!("{delete}  adopt: true\n  deleteAdopted: true\n");
        let created = "{topicId: abc, origin: Created}";
        let adopted = "{topicId: abc, origin: Adopted}";
        let never = "{topicName: orders}";
        let asked = "{creating: true}";
        // (spec, status, id in Kafka, owned elsewhere, remove ACLs, delete topic)
        for (spec, status, kafka_id, elsewhere, acls, deleted) in [
            (delete.as_str(), created, Some("abc"), false, true, true),
            (ORDERS, created, Some("abc"), false, true, false),
            (delete.as_str(), adopted, Some("abc"), false, true, false),
            (
                delete_adopted.as_str(),
                adopted,
                Some("abc"),
                false,
                true,
                true,
            ),
            (delete.as_str(), never, Some("abc"), false, false, false),
            (delete.as_str(), created, Some("abc"), true, false, false),
            (delete.as_str(), created, Some("new"), false, true, false),
            (delete.as_str(), created, None, false, true, false),
            // Stopped between asking Kafka to create it and recording its id: created here.
            (delete.as_str(), asked, Some("new"), false, true, true),
            (ORDERS, asked, Some("new"), false, true, false),
            (delete.as_str(), asked, Some("new"), true, false, false),
            // Asked, but Kafka holds a topic of another shape: someone else's.
            (
                delete.as_str(),
                asked,
                Some("other-shape"),
                false,
                false,
                false,
            ),
        ] {
            let observed = kafka_id.map(|id| {
                let (partitions, replication) = if id == "other-shape" { (2, 1) } else { (6, 1) };
                TopicDescription {
                    id: id.to_owned(),
                    ..described(partitions, replication)
                }
            });
            let steps = cleanup(&with_status(spec, status), observed.as_ref(), elsewhere);
            assert_eq!(
                (steps.remove_acls, steps.delete_topic),
                (acls, deleted),
                "{status} {kafka_id:?} elsewhere={elsewhere}: {:?}",
                steps.kept_because
            );
        }
    }

    #[test]
    fn internal_topics_bad_names_and_foreign_grants_are_refused() {
        let rules = |default| tenancy::rules("shop", &BTreeMap::new(), [], default);
        let named = |name: &str, access: &str| {
            topic_yaml(&format!(
                "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\n\
                 metadata: {{name: t, namespace: shop}}\n\
                 spec: {{topicName: {name}, partitions: 1, replicationFactor: 1, access: {access}}}"
            ))
        };
        use tenancy::DefaultAccessPolicy::{Namespaced, Open};
        for (name, access, default, expected) in [
            ("__consumer_offsets", "[]", Open, Some("ReservedTopicName")),
            ("__transaction_state", "[]", Open, Some("ReservedTopicName")),
            ("orders", "[]", Open, None),
            ("orders", "[]", Namespaced, Some("PolicyViolation")),
            ("shop.orders", "[]", Namespaced, None),
            (
                "shop.orders",
                "[{principal: 'User:pubsubkafka.shop.store', operations: [Read]}]",
                Namespaced,
                None,
            ),
            (
                "orders",
                "[{principal: 'User:pubsubkafka.other.store', operations: [Read]}]",
                Open,
                Some("PolicyViolation"),
            ),
            (
                "orders",
                "[{principal: 'User:*', operations: [Read]}]",
                Open,
                Some("PolicyViolation"),
            ),
        ] {
            let topic = named(name, access);
            let got = admit(&topic, &rules(default), [&topic], []).err();
            assert_eq!(
                got.as_ref().map(Error::reason),
                expected,
                "{name} {access} {default:?}: {got:?}"
            );
        }
    }
}
