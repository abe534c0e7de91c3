//! The operator as a Kafka principal that is not a super user and holds exactly the ACLs the
//! README lists ("Kafka permissions"): every kind reconciles, grows, corrects and cleans up;
//! with one ACL taken away, the consumer's condition names the missing ACL and `kafka_up` stays 1.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer, OrderConsumerStatus, conditions};
use pubsubkafka_controller::kafka::{Acl, AclFilter, AclOperation, KafkaAdmin, ResourceKind};
use testenv::operator::{self, OperatorProcess};
use testenv::scenario::Scenario;
use testenv::worker::metric_value;
use testenv::{eventually, random_token, unique_name};

const WAIT: Duration = Duration::from_secs(90);

/// The README's list, verbatim: what `kafka-acls.sh` grants the operator's user.
fn documented_acls(principal: &str) -> Vec<Acl> {
    let acl = |resource, name: &str, operation| Acl {
        resource,
        name: name.to_owned(),
        principal: principal.to_owned(),
        operation,
    };
    let mut acls = vec![
        acl(ResourceKind::Cluster, "kafka-cluster", AclOperation::Alter),
        acl(
            ResourceKind::Cluster,
            "kafka-cluster",
            AclOperation::Describe,
        ),
    ];
    for operation in [
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::AlterConfigs,
        AclOperation::DescribeConfigs,
    ] {
        acls.push(acl(ResourceKind::Topic, "*", operation));
    }
    acls.push(acl(ResourceKind::Group, "*", AclOperation::Describe));
    acls
}

/// The operator's flags with the Kafka user swapped for `user`.
fn flags_as(user: &str, password_file: &std::path::Path, ns: &str) -> Vec<String> {
    let mut flags = operator::process_args(&testenv::shared().kafka, ns, Duration::from_secs(3));
    for (flag, value) in [
        ("--kafka-username", user.to_owned()),
        ("--kafka-password-file", password_file.display().to_string()),
    ] {
        let at = flags.iter().position(|f| f == flag).expect("flag present");
        flags[at + 1] = value;
    }
    flags
}

/// The consumer's `Reconciled` condition once `wanted` holds: whether the operator could do
/// its part with its Kafka permissions (no worker pods run here: the worker image of these
/// tests is not on the node, so `Ready` stays False).
async fn reconciled_condition(
    consumers: &Api<OrderConsumer>,
    name: &str,
    what: &str,
    wanted: impl Fn(
        &OrderConsumerStatus,
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    ) -> bool,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    eventually(what, WAIT, || async {
        let c = consumers.get(name).await.map_err(|e| e.to_string())?;
        let status = c.status.unwrap_or_default();
        let reconciled = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::RECONCILED)
            .cloned();
        match reconciled {
            Some(r) if wanted(&status, &r) => Ok(r),
            other => Err(format!("partitions {:?}: {other:?}", status.partitions)),
        }
    })
    .await
}

#[tokio::test]
async fn the_documented_acls_are_enough_and_a_missing_one_is_named() {
    let kafka = &testenv::shared().kafka;
    let scenario = Scenario::with("acls", kafka, false).await;
    let admin: &KafkaAdmin = &scenario.admin;
    let dir = tempfile::tempdir().unwrap();

    // A user of its own, not a super user, with exactly the documented ACLs.
    let user = unique_name("psk-operator");
    let password = random_token(24);
    let password_file = dir.path().join("password");
    testenv::write_private(&password_file, &password).unwrap();
    admin.upsert_scram_user(&user, &password).await.unwrap();
    let principal = format!("User:{user}");
    let granted = documented_acls(&principal);
    admin.create_acls(&granted).await.unwrap();

    let mut operator = OperatorProcess::start(
        &scenario.kube,
        &flags_as(&user, &password_file, &scenario.ns),
        &dir.path().join("operator.log"),
    );
    operator.wait_ready().await;

    // Every kind: a topic (configs, access ACLs, deletion), a DLQPolicy with retry topics, a
    // consumer (dead-letter and retry topics, principal, ACLs, lag).
    let topic = unique_name("orders");
    let policy = "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: retries\nspec:\n  \
                  maxRetries: 2\n  mode: RetryTopics\n  backoff: {initial: 1s, max: 2s}\n";
    let topic_yaml = |partitions: i32, retention: &str| {
        format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {topic}\nspec:\n  \
             partitions: {partitions}\n  replicationFactor: 1\n  deletionPolicy: Delete\n  \
             config: {{retention.ms: \"{retention}\"}}\n  access:\n    - principal: User:{topic}-gateway\n      \
             operations: [Write, Describe]\n"
        )
    };
    let consumer = format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: store\nspec:\n  \
         topicRef: {{name: {topic}}}\n  dlqPolicyRef: {{name: retries}}\n  handler:\n    eventStore:\n      \
         connectionSecret: {{name: orders-db, key: url}}\n"
    );
    scenario.apply_ok(policy);
    scenario.apply_ok(&topic_yaml(2, "3600000"));
    scenario.apply_ok(&consumer);

    let topics: Api<KafkaTopic> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    let consumers: Api<OrderConsumer> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    let topic_at = |partitions: i32| {
        let topics = topics.clone();
        let topic = topic.clone();
        async move {
            eventually(
                &format!("KafkaTopic Ready with {partitions} partitions"),
                WAIT,
                || async {
                    let t = topics.get(&topic).await.map_err(|e| e.to_string())?;
                    (t.is_ready()
                        && t.metadata.generation
                            == t.status.as_ref().and_then(|s| s.observed_generation)
                        && t.status.as_ref().and_then(|s| s.partitions) == Some(partitions))
                    .then_some(())
                    .ok_or(format!("{:?}", t.status))
                },
            )
            .await
        }
    };
    topic_at(2).await;
    reconciled_condition(&consumers, "store", "the consumer Reconciled", |_, r| {
        r.status == "True"
    })
    .await;
    // Growing and reconfiguring the topic: ALTER and ALTER_CONFIGS on it.
    scenario.apply_ok(&topic_yaml(3, "7200000"));
    topic_at(3).await;
    // Read from the broker's metadata, which can trail the change the operator made.
    eventually("the config change in Kafka", WAIT, || async {
        let config = admin
            .describe_topic_config(&topic)
            .await
            .map_err(|e| e.to_string())?;
        let retention = config["retention.ms"].value.clone();
        (retention.as_deref() == Some("7200000"))
            .then_some(())
            .ok_or(format!("retention.ms {retention:?}"))
    })
    .await;
    // A Reconciled condition of before the change does not count: until the consumer's pass
    // sees the grown topic Ready, it may still report the topic as not ready.
    reconciled_condition(
        &consumers,
        "store",
        "the consumer Reconciled on 3 partitions",
        |s, r| r.status == "True" && s.partitions == Some(3),
    )
    .await;

    // Take DESCRIBE on groups away: lag cannot be measured, and the condition says which ACL.
    let group_describe = granted
        .iter()
        .find(|a| a.resource == ResourceKind::Group)
        .unwrap()
        .clone();
    admin
        .delete_acls(&[AclFilter::from(&group_describe)])
        .await
        .unwrap();
    // Waits for the reason itself: a pass can also fail for a moment for another reason (a
    // Kafka timeout under load), and that is not the answer to the ACL removed.
    let refused =
        reconciled_condition(&consumers, "store", "the consumer NotAuthorized", |_, r| {
            r.status == "False" && r.reason == conditions::reason::NOT_AUTHORIZED
        })
        .await;
    assert_eq!(
        refused.reason,
        conditions::reason::NOT_AUTHORIZED,
        "{refused:?}"
    );
    let group = format!("{}.store", scenario.ns);
    assert!(
        refused
            .message
            .contains(&format!("DESCRIBE on group {group}")),
        "the message names the operation and the group: {}",
        refused.message
    );
    let (_, metrics) = operator.get("/metrics").unwrap();
    assert_eq!(
        metric_value(&metrics, "pubsubkafka_controller_kafka_up", &[]),
        1.0,
        "an authorization failure is not an outage"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "pubsubkafka_controller_reconcile_errors_total",
            &[("kind", "OrderConsumer"), ("reason", "KafkaUnavailable")]
        ),
        0.0,
        "never reported as KafkaUnavailable"
    );

    // Granted again, the consumer recovers; deleting everything cleans Kafka up.
    admin.create_acls(&[group_describe]).await.unwrap();
    reconciled_condition(
        &consumers,
        "store",
        "the consumer Reconciled again",
        |_, r| r.status == "True",
    )
    .await;
    let status = consumers.get("store").await.unwrap().status.unwrap();
    let mut companions = status.retry_topics.clone();
    companions.extend(status.dead_letter_topic.clone());
    assert!(
        companions.len() >= 2,
        "a dead-letter and retry topics: {companions:?}"
    );
    consumers
        .delete("store", &DeleteParams::default())
        .await
        .unwrap();
    topics
        .delete(&topic, &DeleteParams::default())
        .await
        .unwrap();
    eventually("both resources gone", WAIT, || async {
        let left = consumers
            .get_opt("store")
            .await
            .map_err(|e| e.to_string())?
            .is_some()
            || topics
                .get_opt(&topic)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
        (!left).then_some(()).ok_or("still there".to_owned())
    })
    .await;
    // The consumer's SCRAM user and ACLs are removed.
    testenv::kafka::principal_gone(admin, &format!("pubsubkafka.{}.store", scenario.ns)).await;
    // deletionPolicy Delete deleted the topic.
    testenv::kafka::topic_gone(admin, &topic).await;
    operator.check_alive().unwrap();

    admin
        .delete_acls(&[AclFilter {
            principal: Some(principal),
            ..AclFilter::default()
        }])
        .await
        .unwrap();
    admin.delete_scram_user(&user).await.unwrap();
    for topic in companions {
        admin.delete_topic(&topic).await.unwrap();
    }
}
