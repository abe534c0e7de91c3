//! Who owns what in Kafka, as pure functions over what the operator sees in the API server:
//! every topic has one owner (a KafkaTopic, or the OrderConsumer it was made for), and every
//! consumer group one OrderConsumer. A second claimant gets `ResourceConflict` and changes
//! nothing.
//!
//! Ownership is recorded in the owners' own objects, so it survives operator restarts and
//! leaves with the owner: a KafkaTopic's claim is its immutable topic name; a consumer's
//! topics are listed in its `status.ownedTopics` (written before the operator creates them);
//! its group is `status.groupId` (written once the group was granted). A recorded claim beats
//! one that is only declared, so an old resource cannot take over what a newer one already
//! holds by pointing at it later; between equal claims the oldest resource wins.

use std::fmt;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::crd::order_consumer::OwnedTopicKind;
use crate::crd::{KafkaTopic, OrderConsumer, OrderGateway};
use kube::Resource;

/// A resource that owns a topic or a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    KafkaTopic {
        namespace: String,
        name: String,
    },
    OrderConsumer {
        namespace: String,
        name: String,
        /// What the topic is to the consumer (none for a group).
        role: Option<OwnedTopicKind>,
    },
}

impl Owner {
    pub fn namespace(&self) -> &str {
        match self {
            Self::KafkaTopic { namespace, .. } | Self::OrderConsumer { namespace, .. } => namespace,
        }
    }

    fn topic(topic: &KafkaTopic) -> Self {
        Self::KafkaTopic {
            namespace: topic.namespace().unwrap_or_default(),
            name: topic.name_any(),
        }
    }

    fn consumer(consumer: &OrderConsumer, role: Option<OwnedTopicKind>) -> Self {
        Self::OrderConsumer {
            namespace: consumer.namespace().unwrap_or_default(),
            name: consumer.name_any(),
            role,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KafkaTopic { namespace, name } => write!(f, "KafkaTopic {namespace}/{name}"),
            Self::OrderConsumer {
                namespace,
                name,
                role,
            } => {
                write!(f, "OrderConsumer {namespace}/{name}")?;
                match role {
                    Some(OwnedTopicKind::DeadLetter) => write!(f, " (its dead-letter topic)"),
                    Some(OwnedTopicKind::Retry) => write!(f, " (one of its retry topics)"),
                    Some(OwnedTopicKind::Parking) => {
                        write!(f, " (its dead letters' parking topic)")
                    }
                    None => Ok(()),
                }
            }
        }
    }
}

/// Orders claims: recorded before declared, then oldest, then namespace and name.
type Rank = (bool, Option<Timestamp>, String, String);

fn rank<K: kube::Resource>(object: &K, recorded: bool) -> Rank {
    let meta = object.meta();
    (
        !recorded,
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn same<K: kube::Resource>(a: &K, b: &K) -> bool {
    a.meta().namespace == b.meta().namespace && a.meta().name == b.meta().name
}

/// The consumer that owns Kafka topic `topic` (recorded in its status.ownedTopics), if any.
pub fn consumer_owning_topic<'a>(
    topic: &str,
    consumers: impl IntoIterator<Item = &'a OrderConsumer>,
) -> Option<Owner> {
    consumers
        .into_iter()
        .filter_map(|c| {
            let owned = c.owned_topics().iter().find(|o| o.name == topic)?;
            Some((rank(c, true), Owner::consumer(c, Some(owned.kind))))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, owner)| owner)
}

/// The owner of `me`'s Kafka topic when it is not `me`: a consumer that owns the topic
/// (dead-letter, retry, or any later kind), else the oldest KafkaTopic naming it.
pub fn topic_conflict<'a>(
    me: &KafkaTopic,
    topics: impl IntoIterator<Item = &'a KafkaTopic>,
    consumers: impl IntoIterator<Item = &'a OrderConsumer>,
) -> Option<Owner> {
    let name = me.topic_name();
    if let Some(owner) = consumer_owning_topic(name, consumers) {
        return Some(owner);
    }
    let owner = topics
        .into_iter()
        .filter(|t| t.topic_name() == name)
        .min_by_key(|t| rank(*t, false))?;
    (!same(owner, me)).then(|| Owner::topic(owner))
}

/// How a consumer may use one of the topics the operator makes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Companion {
    /// The consumer owns it (alone or with consumers of its namespace, as a domain's shared
    /// dead-letter topic): the operator creates and grows it, and records it as owned.
    Owned,
    /// A KafkaTopic of the consumer's own namespace manages it: the consumer writes to it, the
    /// KafkaTopic decides its partitions and configs.
    ManagedBy(String),
}

/// Whether `me` may use `topic` as its companion topic, or who owns it instead.
pub fn companion_topic<'a>(
    me: &OrderConsumer,
    topic: &str,
    topics: impl IntoIterator<Item = &'a KafkaTopic>,
    consumers: impl IntoIterator<Item = &'a OrderConsumer>,
) -> Result<Companion, Owner> {
    let namespace = me.namespace().unwrap_or_default();
    let consumers: Vec<&OrderConsumer> = consumers.into_iter().collect();
    // Another namespace's consumer that recorded the topic first keeps it.
    let recorded_by_me = me.owned_topics().iter().any(|o| o.name == topic);
    let owner = consumers
        .iter()
        .filter(|c| !same(**c, me))
        .filter_map(|c| {
            let owned = c.owned_topics().iter().find(|o| o.name == topic)?;
            Some((rank(*c, true), Owner::consumer(c, Some(owned.kind))))
        })
        .chain(recorded_by_me.then(|| (rank(me, true), Owner::consumer(me, None))))
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, owner)| owner);
    if let Some(owner) = &owner
        && owner.namespace() != namespace
    {
        return Err(owner.clone());
    }
    let managing = topics
        .into_iter()
        .filter(|t| t.topic_name() == topic)
        .min_by_key(|t| rank(*t, false));
    match managing {
        // Recorded by a consumer of this namespace first: the KafkaTopic is the newcomer.
        Some(_) if owner.is_some() => Ok(Companion::Owned),
        Some(t) if t.namespace().as_deref() == Some(namespace.as_str()) => {
            Ok(Companion::ManagedBy(t.name_any()))
        }
        Some(t) => Err(Owner::topic(t)),
        None => Ok(Companion::Owned),
    }
}

/// The consumer that owns `me`'s group id when it is not `me`: among every consumer naming
/// the group, one whose status records the group first, then the oldest.
pub fn group_conflict<'a>(
    me: &'a OrderConsumer,
    consumers: impl IntoIterator<Item = &'a OrderConsumer>,
) -> Option<Owner> {
    let group = me.group_id();
    let recorded = |c: &OrderConsumer| {
        c.status
            .as_ref()
            .is_some_and(|s| s.group_id.as_deref() == Some(group.as_str()))
    };
    let owner = consumers
        .into_iter()
        .filter(|c| !same(*c, me) && c.group_id() == group)
        .chain([me])
        .min_by_key(|c| rank(*c, recorded(c)))?;
    (!same(owner, me)).then(|| Owner::consumer(owner, None))
}

/// Which kind keeps the Kafka principal `pubsubkafka.<namespace>.<name>` when an OrderConsumer
/// and an OrderGateway of one namespace share a name. Like every claim here, recorded before
/// declared: the one that controls the credentials Secret both would use (`secret_controller`,
/// the UID of that Secret's controller) holds it; when neither does yet, the older of the two,
/// the consumer on a tie (creation timestamps count whole seconds, so ties happen). The other
/// is refused with ResourceConflict, and gets no principal or ACL, until it is renamed; both
/// reconcilers apply this one rule, so they never write each other's ACLs.
pub fn consumer_keeps_principal(
    consumer: &OrderConsumer,
    gateway: &OrderGateway,
    secret_controller: Option<&str>,
) -> bool {
    match secret_controller {
        Some(holder) if Some(holder) == consumer.meta().uid.as_deref() => return true,
        Some(holder) if Some(holder) == gateway.meta().uid.as_deref() => return false,
        _ => {}
    }
    let created = |meta: &ObjectMeta| meta.creation_timestamp.as_ref().map(|t| t.0);
    created(consumer.meta()) <= created(gateway.meta())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::order_consumer::{OrderConsumerStatus, OwnedTopic};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Option<Time> {
        Some(Time(Timestamp::from_second(secs).unwrap()))
    }

    fn topic(ns: &str, name: &str, topic_name: &str, created: i64) -> KafkaTopic {
        let mut t: KafkaTopic = serde_yaml::from_str(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\n\
             metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{topicName: {topic_name}, partitions: 1, replicationFactor: 1}}"
        ))
        .unwrap();
        t.metadata.creation_timestamp = at(created);
        t
    }

    fn consumer(
        ns: &str,
        name: &str,
        created: i64,
        owned: &[(&str, OwnedTopicKind)],
    ) -> OrderConsumer {
        let mut c: OrderConsumer = serde_yaml::from_str(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\n\
             metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{topicRef: {{name: orders}}, handler: {{http: {{url: 'http://x:80/'}}}}}}"
        ))
        .unwrap();
        c.metadata.creation_timestamp = at(created);
        if !owned.is_empty() {
            c.status = Some(OrderConsumerStatus {
                owned_topics: owned
                    .iter()
                    .map(|(name, kind)| OwnedTopic {
                        name: (*name).to_owned(),
                        kind: *kind,
                    })
                    .collect(),
                ..Default::default()
            });
        }
        c
    }

    use OwnedTopicKind::{DeadLetter, Retry};

    #[test]
    fn a_kafka_topic_naming_a_consumers_topic_conflicts_whatever_its_age() {
        let store = consumer("shop", "store", 500, &[("orders-dlq", DeadLetter)]);
        let retrying = consumer("shop", "retrier", 500, &[("orders-r-retry-1", Retry)]);
        let consumers = [store, retrying];
        for (victim, kind) in [("orders-dlq", "dead-letter"), ("orders-r-retry-1", "retry")] {
            // Older than the consumer, in another namespace or the same one.
            for ns in ["attacker", "shop"] {
                let thief = topic(ns, "steal", victim, 1);
                let owner =
                    topic_conflict(&thief, [&thief], &consumers).expect("the consumer owns it");
                assert!(
                    owner.to_string().starts_with("OrderConsumer shop/")
                        && owner.to_string().contains(kind),
                    "{owner}"
                );
            }
        }
    }

    #[test]
    fn the_oldest_kafka_topic_owns_a_name() {
        let older = topic("team-a", "orders", "orders", 100);
        let newer = topic("team-b", "my-orders", "orders", 200);
        let unrelated = topic("team-a", "users", "users", 1);
        let all = [older.clone(), newer.clone(), unrelated];
        assert_eq!(topic_conflict(&older, &all, []), None);
        assert_eq!(
            topic_conflict(&newer, &all, []).map(|o| o.to_string()),
            Some("KafkaTopic team-a/orders".to_owned())
        );
    }

    #[test]
    fn companion_topics_are_shared_in_a_namespace_and_refused_across() {
        let kt = |ns: &str, created| topic(ns, "declared-dlq", "orders-dlq", created);
        let first = consumer("shop", "store", 100, &[("orders-dlq", DeadLetter)]);
        let sibling = consumer("shop", "notifier", 200, &[]);
        let outsider = consumer("attacker", "thief", 50, &[]);
        let recorded_outsider = consumer("attacker", "thief", 50, &[("orders-dlq", DeadLetter)]);
        type Case<'a> = (
            &'a OrderConsumer,
            Vec<KafkaTopic>,
            Vec<&'a OrderConsumer>,
            Result<Companion, &'static str>,
        );
        let cases: Vec<Case> = vec![
            // Nobody claims it: the consumer may own it.
            (&sibling, vec![], vec![], Ok(Companion::Owned)),
            // A consumer of the same namespace recorded it: a domain's shared DLQ.
            (&sibling, vec![], vec![&first], Ok(Companion::Owned)),
            // Another namespace recorded it first: refused, even for an older consumer.
            (
                &outsider,
                vec![],
                vec![&first],
                Err("OrderConsumer shop/store (its dead-letter topic)"),
            ),
            // Both recorded it (a race): the older recorder keeps it.
            (
                &first,
                vec![],
                vec![&recorded_outsider],
                Err("OrderConsumer attacker/thief (its dead-letter topic)"),
            ),
            // A KafkaTopic of its own namespace manages it: used as it is.
            (
                &sibling,
                vec![kt("shop", 10)],
                vec![],
                Ok(Companion::ManagedBy("declared-dlq".into())),
            ),
            // A KafkaTopic of another namespace manages it: refused.
            (
                &sibling,
                vec![kt("attacker", 10)],
                vec![],
                Err("KafkaTopic attacker/declared-dlq"),
            ),
            // Recorded by this namespace before a KafkaTopic named it: still owned.
            (
                &sibling,
                vec![kt("shop", 1000)],
                vec![&first],
                Ok(Companion::Owned),
            ),
        ];
        for (i, (me, topics, consumers, expected)) in cases.into_iter().enumerate() {
            let got = companion_topic(me, "orders-dlq", &topics, consumers.iter().copied())
                .map_err(|o| o.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "case {i}");
        }
    }

    #[test]
    fn a_group_belongs_to_its_recorded_or_oldest_consumer() {
        let with_group = |ns: &str, name: &str, created, group: &str, recorded: bool| {
            let mut c = consumer(ns, name, created, &[]);
            c.spec.group_id = Some(group.to_owned());
            if recorded {
                c.status = Some(OrderConsumerStatus {
                    group_id: Some(group.to_owned()),
                    ..Default::default()
                });
            }
            c
        };
        let victim = with_group("shop", "order-store", 200, "shop.order-store", true);
        // Older, but it pointed at the group after the victim was granted it.
        let old_thief = with_group("attacker", "thief", 100, "shop.order-store", false);
        let new_thief = with_group("attacker", "late", 300, "shop.order-store", false);
        let other = with_group("billing", "x", 1, "billing.x", true);
        let all = [
            victim.clone(),
            old_thief.clone(),
            new_thief.clone(),
            other.clone(),
        ];
        assert_eq!(group_conflict(&victim, &all), None);
        for thief in [&old_thief, &new_thief] {
            assert_eq!(
                group_conflict(thief, &all).map(|o| o.to_string()),
                Some("OrderConsumer shop/order-store".to_owned())
            );
        }
        assert_eq!(group_conflict(&other, &all), None);
        // Before anyone was granted the group, the oldest wins.
        let fresh_a = with_group("a", "one", 100, "g", false);
        let fresh_b = with_group("b", "two", 200, "g", false);
        let both = [fresh_a.clone(), fresh_b.clone()];
        assert_eq!(group_conflict(&fresh_a, &both), None);
        assert!(group_conflict(&fresh_b, &both).is_some());
    }

    #[test]
    fn the_holder_of_the_credentials_secret_keeps_a_shared_principal_whatever_its_age() {
        let mut store = consumer("shop", "orders", 100, &[]);
        store.metadata.uid = Some("consumer-uid".into());
        let mut gateway: OrderGateway = serde_yaml::from_str(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderGateway\n\
             metadata: {name: orders, namespace: shop, uid: gateway-uid}\n\
             spec: {topicRef: {name: orders}}",
        )
        .unwrap();
        for (consumer_created, gateway_created, secret, consumer_keeps) in [
            // Nobody holds it yet: the older, the consumer on a tie (whole seconds).
            (100, 200, None, true),
            (200, 100, None, false),
            (100, 100, None, true),
            // The Secret's controller holds it, older or not.
            (100, 100, Some("gateway-uid"), false),
            (100, 200, Some("gateway-uid"), false),
            (200, 100, Some("consumer-uid"), true),
            // A Secret some third object controls settles nothing.
            (200, 100, Some("someone-else"), false),
        ] {
            store.metadata.creation_timestamp = at(consumer_created);
            gateway.metadata.creation_timestamp = at(gateway_created);
            assert_eq!(
                consumer_keeps_principal(&store, &gateway, secret),
                consumer_keeps,
                "consumer {consumer_created}, gateway {gateway_created}, secret {secret:?}"
            );
        }
    }
}
