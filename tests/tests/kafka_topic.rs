//! The KafkaTopic controller against the real API server and the real secured Kafka: each test
//! gets its own namespace, its own topic names and its own operator scoped to that namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use pubsubkafka_controller::crd::KafkaTopic;
use pubsubkafka_controller::crd::kafka_topic::TopicOrigin;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use testenv::operator::{self, Operator};
use testenv::scenario::Scenario;
use testenv::{KafkaInfo, eventually};

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    scenario: Scenario,
    topics: Api<KafkaTopic>,
}

impl std::ops::Deref for Env {
    type Target = Scenario;
    fn deref(&self) -> &Scenario {
        &self.scenario
    }
}

async fn env_with(kafka: &KafkaInfo, with_operator: bool) -> Env {
    let scenario = Scenario::with("topics", kafka, with_operator).await;
    Env {
        topics: Api::namespaced(scenario.client.clone(), &scenario.ns),
        scenario,
    }
}

async fn env() -> Env {
    env_with(&testenv::shared().kafka, true).await
}

impl Env {
    /// Waits until the resource's Ready condition has `reason` for its current generation.
    async fn wait_reason(&self, name: &str, reason: &str) -> KafkaTopic {
        eventually(&format!("{name} to report {reason}"), WAIT, || async {
            let topic = self.topics.get(name).await.map_err(|e| e.to_string())?;
            let status = topic.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c)
                    if c.reason == reason
                        && status.observed_generation == topic.metadata.generation =>
                {
                    Ok(topic)
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// KafkaTopic `name` (2 partitions, replication factor 1, `deletionPolicy: Delete`) as an
    /// operator stopped after writing its creation mark leaves it: the finalizer in place and
    /// `status.creating` written as the operator writes its status (server-side apply, its
    /// field manager). Run without an operator.
    async fn leave_marked(&self, name: &str) {
        self.apply_ok(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\n  \
             finalizers: [pubsubkafka.io/topic-cleanup]\nspec:\n  partitions: 2\n  \
             replicationFactor: 1\n  deletionPolicy: Delete\n"
        ));
        self.topics
            .patch_status(
                name,
                &kube::api::PatchParams::apply(pubsubkafka_controller::FIELD_MANAGER).force(),
                &kube::api::Patch::Apply(serde_json::json!({
                    "apiVersion": "pubsubkafka.io/v1alpha1",
                    "kind": "KafkaTopic",
                    "status": {"creating": true},
                })),
            )
            .await
            .unwrap();
    }

    async fn wait_ready(&self, name: &str) -> KafkaTopic {
        let topic = self.wait_reason(name, "Reconciled").await;
        assert!(topic.is_ready());
        topic
    }

    async fn kafka_partitions(&self, topic: &str) -> i32 {
        self.admin
            .describe_topic(topic)
            .await
            .unwrap()
            .map(|d| d.partition_count())
            .unwrap_or(0)
    }

    async fn dynamic_config(&self, topic: &str) -> BTreeMap<String, String> {
        self.admin
            .describe_topic_config(topic)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.dynamic)
            .map(|(k, e)| (k, e.value.unwrap_or_default()))
            .collect()
    }
}

fn topic_yaml(name: &str, partitions: i32, extra: &str) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\nspec:\n  \
         partitions: {partitions}\n  replicationFactor: 1\n{extra}"
    )
}

#[tokio::test]
async fn a_declared_topic_is_created_then_grown() {
    let env = env().await;
    let name = testenv::unique_name("orders");
    env.apply_ok(&topic_yaml(
        &name,
        3,
        "  config:\n    retention.ms: 3600000\n    cleanup.policy: delete\n",
    ));
    let topic = env.wait_ready(&name).await;
    let status = topic.status.unwrap();
    assert_eq!(status.topic_name.as_deref(), Some(name.as_str()));
    assert_eq!(status.partitions, Some(3));
    assert_eq!(status.replication_factor, Some(1));
    let described = env
        .admin
        .describe_topic(&name)
        .await
        .unwrap()
        .expect("topic exists in Kafka");
    assert_eq!(described.partition_count(), 3);
    assert_eq!(status.topic_id.as_deref(), Some(described.id.as_str()));
    let config = env.dynamic_config(&name).await;
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );

    env.apply_ok(&topic_yaml(
        &name,
        6,
        "  config:\n    retention.ms: 3600000\n    cleanup.policy: delete\n",
    ));
    eventually("6 partitions in status", WAIT, || async {
        let t = env.topics.get(&name).await.map_err(|e| e.to_string())?;
        (t.status.as_ref().and_then(|s| s.partitions) == Some(6) && t.is_ready())
            .then_some(())
            .ok_or(format!("{:?}", t.status))
    })
    .await;
    assert_eq!(env.kafka_partitions(&name).await, 6);

    // Kubernetes Events tell what happened.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    eventually("Created and PartitionsIncreased events", WAIT, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.iter().any(|r| r == "Created")
            && reasons.iter().any(|r| r == "PartitionsIncreased"))
        .then_some(())
        .ok_or(format!("{reasons:?}"))
    })
    .await;
}

#[tokio::test]
async fn fault_the_api_server_refuses_bad_manifests_naming_the_field() {
    let env = env_with(&testenv::shared().kafka, false).await;
    let name = testenv::unique_name("guarded");
    env.apply_ok(&topic_yaml(&name, 6, ""));

    let err = env
        .kubectl_apply(&topic_yaml(&name, 3, ""))
        .expect_err("a partition decrease is refused");
    assert!(
        err.contains("spec.partitions") && err.contains("may not decrease"),
        "{err}"
    );

    let err = env
        .kubectl_apply(&topic_yaml(&name, 6, "  topicName: renamed\n"))
        .expect_err("a rename is refused");
    assert!(
        err.contains("spec.topicName") && err.contains("immutable"),
        "{err}"
    );

    let bad = testenv::unique_name("bad");
    for (extra, partitions, field) in [
        ("  topicName: \"bad name!\"\n", 1, "spec.topicName"),
        ("  topicName: \"..\"\n", 1, "spec.topicName"),
        ("", 0, "spec.partitions"),
        ("  deletionPolicy: Sometimes\n", 1, "spec.deletionPolicy"),
        (
            "  access:\n  - principal: order-gateway\n    operations: [Write]\n",
            1,
            "spec.access[0].principal",
        ),
    ] {
        let err = env
            .kubectl_apply(&topic_yaml(&bad, partitions, extra))
            .expect_err("refused");
        assert!(err.contains(field), "expected {field} in: {err}");
    }
    let err = env
        .kubectl_apply(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {bad}\nspec:\n  \
             partitions: 1\n  replicationFactor: 0\n"
        ))
        .expect_err("replication factor 0 is refused");
    assert!(err.contains("spec.replicationFactor"), "{err}");
}

#[tokio::test]
async fn out_of_band_config_changes_are_reverted() {
    let env = env().await;
    let name = testenv::unique_name("drift");
    env.apply_ok(&topic_yaml(
        &name,
        1,
        "  config:\n    retention.ms: 3600000\n",
    ));
    env.wait_ready(&name).await;

    env.admin
        .alter_topic_config(
            &name,
            &BTreeMap::from([
                ("retention.ms".to_owned(), "1000".to_owned()),
                ("max.message.bytes".to_owned(), "2000000".to_owned()),
            ]),
            &[],
        )
        .await
        .unwrap();
    eventually("the drift to be reverted", WAIT, || async {
        let config = env.dynamic_config(&name).await;
        let expected = BTreeMap::from([("retention.ms".to_owned(), "3600000".to_owned())]);
        (config == expected)
            .then_some(())
            .ok_or(format!("{config:?}"))
    })
    .await;
}

#[tokio::test]
async fn an_existing_topic_is_adopted_on_request_and_a_second_claim_is_refused() {
    let env = env().await;
    let name = testenv::unique_name("existing");
    env.admin
        .create_topic(&name, 2, 1, &BTreeMap::new())
        .await
        .unwrap();
    let existing = testenv::kafka::topic_shown(&env.admin, &name).await;

    // Never silently: without the opt-in the status says how to adopt, and nothing changes.
    env.apply_ok(&topic_yaml(
        &name,
        2,
        "  config: {retention.ms: 1000}\n  deletionPolicy: Delete\n",
    ));
    let refused = env.wait_reason(&name, "TopicExists").await;
    let message = refused.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("spec.adopt: true"), "{message}");
    assert!(
        !env.dynamic_config(&name).await.contains_key("retention.ms"),
        "an unadopted topic keeps its configs"
    );

    env.apply_ok(&topic_yaml(&name, 2, "  adopt: true\n"));
    let adopted = env.wait_ready(&name).await;
    let status = adopted.status.unwrap();
    assert_eq!(
        status.topic_id,
        Some(existing.id.clone()),
        "same topic, adopted"
    );
    assert_eq!(
        status.origin,
        Some(pubsubkafka_controller::crd::kafka_topic::TopicOrigin::Adopted)
    );

    let rival = testenv::unique_name("rival");
    env.apply_ok(&topic_yaml(&rival, 4, &format!("  topicName: {name}\n")));
    let refused = env.wait_reason(&rival, "ResourceConflict").await;
    let ready = refused
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains(&format!("{}/{name}", env.ns)),
        "{}",
        ready.message
    );
    assert_eq!(
        env.kafka_partitions(&name).await,
        2,
        "the rival changed nothing"
    );
}

#[tokio::test]
async fn retain_keeps_the_topic_and_delete_removes_it() {
    let env = env().await;
    let kept = testenv::unique_name("kept");
    let doomed = testenv::unique_name("doomed");
    env.apply_ok(&topic_yaml(&kept, 1, ""));
    env.apply_ok(&topic_yaml(&doomed, 1, "  deletionPolicy: Delete\n"));
    let kept_obj = env.wait_ready(&kept).await;
    let doomed_obj = env.wait_ready(&doomed).await;
    assert!(
        kept_obj.metadata.finalizers.unwrap_or_default().is_empty(),
        "Retain adds no finalizer"
    );
    assert_eq!(
        doomed_obj.metadata.finalizers.unwrap_or_default(),
        ["pubsubkafka.io/topic-cleanup"]
    );

    env.topics
        .delete(&kept, &DeleteParams::default())
        .await
        .unwrap();
    env.topics
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    for name in [&kept, &doomed] {
        eventually(&format!("{name} to be gone"), WAIT, || async {
            match env.topics.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        })
        .await;
    }
    assert!(
        env.admin.describe_topic(&kept).await.unwrap().is_some(),
        "retained in Kafka"
    );
    eventually("the Delete topic to leave Kafka", WAIT, || async {
        match env.admin.describe_topic(&doomed).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn access_acls_allow_the_named_principal_and_deny_others() {
    let env = env().await;
    let kafka = &testenv::shared().kafka;
    let name = testenv::unique_name("guarded-topic");
    let (gateway, other) = (
        testenv::unique_name("gateway"),
        testenv::unique_name("other"),
    );
    let password = testenv::random_token(24);
    for user in [&gateway, &other] {
        env.admin.upsert_scram_user(user, &password).await.unwrap();
    }
    let access =
        format!("  access:\n  - principal: User:{gateway}\n    operations: [Write, Describe]\n");
    env.apply_ok(&topic_yaml(&name, 1, &access));
    env.wait_ready(&name).await;

    eventually("the named principal to write", WAIT, || async {
        kafka
            .produce_as(&gateway, &password, &name)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let denied = kafka.produce_as(&other, &password, &name).await;
    assert!(
        matches!(
            denied,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        ),
        "{denied:?}"
    );

    // Taking the entry out of spec.access removes its ACLs.
    env.apply_ok(&topic_yaml(&name, 1, ""));
    eventually("the removed principal to be denied", WAIT, || async {
        match kafka.produce_as(&gateway, &password, &name).await {
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)) => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for user in [&gateway, &other] {
        env.admin.delete_scram_user(user).await.unwrap();
    }
}

#[tokio::test]
async fn refused_configs_are_reported_with_the_brokers_message() {
    let env = env().await;
    let name = testenv::unique_name("badconfig");
    env.apply_ok(&topic_yaml(
        &name,
        1,
        "  config:\n    retention.ms: forever\n",
    ));
    let topic = env.wait_reason(&name, "InvalidConfig").await;
    let ready = topic
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("retention.ms"), "{}", ready.message);

    let too_many = testenv::unique_name("rf");
    env.apply_ok(&format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {too_many}\nspec:\n  \
         partitions: 1\n  replicationFactor: 3\n"
    ));
    env.wait_reason(&too_many, "InvalidReplicationFactor").await;

    // Fixing the spec makes it Ready.
    env.apply_ok(&topic_yaml(
        &name,
        1,
        "  config:\n    retention.ms: 60000\n",
    ));
    env.wait_ready(&name).await;
}

#[tokio::test]
async fn fault_a_kafka_outage_is_reported_and_recovered_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka =
        testenv::Kafka::start(dir.path(), 1, testenv::Lifetime::Owned).expect("own Kafka");
    let env = env_with(&kafka.info, true).await;
    let name = testenv::unique_name("outage");
    env.apply_ok(&topic_yaml(&name, 1, ""));
    env.wait_ready(&name).await;

    kafka.stop();
    let during = env.wait_reason(&name, "KafkaUnavailable").await;
    let said = during
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message)
        .unwrap_or_default();

    kafka.restart().expect("Kafka restarts");
    env.wait_ready(&name).await;
    // A change made after the outage goes through.
    env.apply_ok(&topic_yaml(&name, 2, ""));
    eventually("2 partitions", WAIT, || async {
        let t = env.topics.get(&name).await.map_err(|e| e.to_string())?;
        (t.status.as_ref().and_then(|s| s.partitions) == Some(2))
            .then_some(())
            .ok_or("not yet".to_owned())
    })
    .await;
    println!(
        "Kafka stopped under the operator: Ready False, KafkaUnavailable ({said}); after the \
         restart Ready again and grown to 2 partitions"
    );
}

#[tokio::test]
async fn the_operator_refuses_to_start_without_its_crds() {
    let dir = tempfile::tempdir().unwrap();
    let api =
        testenv::KubeApi::start(dir.path(), testenv::Lifetime::Owned).expect("own API server");
    let kafka = &testenv::shared().kafka;
    let args = operator::args(kafka, "default", Duration::from_secs(60));
    let err = Operator::start(&api.info, args)
        .await
        .finished()
        .await
        .expect_err("no CRDs, no start");
    assert!(
        err.contains("not installed") && err.contains("kubectl apply -f crds/"),
        "{err}"
    );
}

/// A creation mark whose answer was lost, on a topic someone else created meanwhile: the
/// operator cannot learn from Kafka who created a topic, but a topic of another shape than the
/// spec (here 3 partitions where 2 were asked) was not made by its request. The resource is
/// refused, the mark cleared, and `deletionPolicy: Delete` leaves the topic. The state is made
/// exactly as such a stop leaves it, as in the test above.
#[tokio::test]
async fn a_creation_mark_never_claims_a_topic_of_another_shape() {
    let mut env = env().await;
    let operator = env.scenario.operator.take();
    drop(operator);
    let name = testenv::unique_name("foreign");
    env.leave_marked(&name).await;
    env.admin
        .create_topic(&name, 3, 1, &BTreeMap::new())
        .await
        .unwrap();
    let id = testenv::kafka::topic_shown(&env.admin, &name).await.id;

    let _operator = Operator::start(
        &env.kube,
        operator::args(&testenv::shared().kafka, &env.ns, Duration::from_secs(3)),
    )
    .await;
    let status = env.wait_reason(&name, "TopicExists").await.status.unwrap();
    assert!(!status.creating, "the mark is cleared");
    assert_eq!(
        status.topic_id, None,
        "the topic is not recorded as this resource's"
    );
    assert_eq!(status.origin, None);

    env.topics
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the KafkaTopic gone", WAIT, || async {
        match env.topics.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|t| t.map(|t| t.status)))),
        }
    })
    .await;
    assert_eq!(
        env.admin.describe_topic(&name).await.unwrap().map(|d| d.id),
        Some(id),
        "Delete leaves a topic the resource did not create"
    );
    env.admin.delete_topic(&name).await.unwrap();
}

/// Someone else creates each topic around the moment the operator creates it for a KafkaTopic.
/// Whoever Kafka let create it owns it. When the other creator's request succeeded, the
/// resource is refused (`TopicExists`) and deleting it with `deletionPolicy: Delete` leaves
/// the topic. When Kafka refused the other creator, the operator created the topic and it is
/// the resource's to delete. The other creator asks for 2 partitions and the resources for 1,
/// so Kafka itself says whose each topic is. One create every 50 ms or so while 30 resources
/// are applied: some land before the operator looks, some after it created the topic, and any
/// in between take the branch where the operator's own create is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_someone_else_creates_meanwhile_stays_theirs() {
    let env = env().await;
    let base = testenv::unique_name("race");
    let names: Vec<String> = (0..100).map(|i| format!("{base}-{i}")).collect();
    let other = {
        let (admin, names) = (env.admin.clone(), names.clone());
        tokio::spawn(async move {
            let creates = names.into_iter().enumerate().map(|(i, name)| {
                let admin = admin.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(200 + 5 * i as u64)).await;
                    match admin.create_topic(&name, 2, 1, &BTreeMap::new()).await {
                        Ok(()) => Some(name),
                        Err(e) if e.code() == Some(RDKafkaErrorCode::TopicAlreadyExists) => None,
                        Err(e) => panic!("{name}: {e}"),
                    }
                }
            });
            futures::future::join_all(creates)
                .await
                .into_iter()
                .flatten()
                .collect::<BTreeSet<String>>()
        })
    };
    let manifests: Vec<String> = names
        .iter()
        .map(|n| topic_yaml(n, 1, "  deletionPolicy: Delete\n"))
        .collect();
    env.apply_ok(&manifests.join("---\n"));
    let theirs = other.await.unwrap();

    for name in &names {
        let described = eventually(&format!("{name} in Kafka"), WAIT, || async {
            env.admin
                .describe_topic(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("absent".to_owned())
        })
        .await;
        if theirs.contains(name) {
            assert_eq!(
                described.partition_count(),
                2,
                "{name}: the other creator's"
            );
            let status = env.wait_reason(name, "TopicExists").await.status.unwrap();
            assert_ne!(status.origin, Some(TopicOrigin::Created), "{name}");
            assert!(!status.creating, "{name}: no creation mark left");
        } else {
            assert_eq!(
                described.partition_count(),
                1,
                "{name}: Kafka refused the other creator, so the operator created it"
            );
            let status = env.wait_ready(name).await.status.unwrap();
            assert_eq!(status.origin, Some(TopicOrigin::Created), "{name}");
            assert_eq!(status.topic_id, Some(described.id), "{name}");
        }
    }
    // How many the operator's own create found taken (the branch between its look and its
    // create), from its events: timing decides, so it is reported, not asserted.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let raced = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.note
                .as_deref()
                .is_some_and(|n| n.contains("while this resource was creating it"))
        })
        .count();
    eprintln!(
        "{} of {} topics were the other creator's, {raced} of them created while the operator \
         was creating them",
        theirs.len(),
        names.len()
    );

    for name in &names {
        env.topics
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in &names {
        eventually(&format!("KafkaTopic {name} gone"), WAIT, || async {
            match env.topics.get_opt(name).await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|t| t.map(|t| t.status)))),
            }
        })
        .await;
        if theirs.contains(name) {
            assert!(
                env.admin.describe_topic(name).await.unwrap().is_some(),
                "{name}: Delete removes only a topic the resource created"
            );
            env.admin.delete_topic(name).await.unwrap();
        } else {
            testenv::kafka::topic_gone(&env.admin, name).await;
        }
    }
}

#[tokio::test]
async fn status_is_written_only_when_it_changes() {
    let env = env().await;
    let name = testenv::unique_name("quiet");
    env.apply_ok(&topic_yaml(&name, 1, ""));
    let first = env.wait_ready(&name).await;
    // Several resyncs (every 3 s) later, nothing has been rewritten.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let later = env.topics.get(&name).await.unwrap();
    assert_eq!(
        first.metadata.resource_version,
        later.metadata.resource_version
    );
}

/// An operator stopped between asking Kafka to create a topic and recording the new topic's id
/// in the status finds the topic again as the one it created: Ready, `origin: Created`, and
/// deleted with `deletionPolicy: Delete`, never refused as a foreign topic that needs `adopt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_an_operator_stopped_while_creating_topics_resumes_them_as_its_own() {
    let mut env = env().await;
    let delete = "  deletionPolicy: Delete\n";

    // The state such a stop leaves, made exactly: the finalizer and `creating` written, the
    // topic created in Kafka, no topic id in the status.
    drop(env.scenario.operator.take());
    let left = testenv::unique_name("left");
    env.leave_marked(&left).await;
    env.admin
        .create_topic(&left, 2, 1, &BTreeMap::new())
        .await
        .unwrap();

    // And the real thing: an operator stopped while a batch of topics is being created.
    let operator_args =
        || operator::args(&testenv::shared().kafka, &env.ns, Duration::from_secs(3));
    let first = Operator::start(&env.kube, operator_args()).await;
    let names: Vec<String> = (0..30).map(|i| format!("{left}-{i}")).collect();
    let manifests: Vec<String> = names.iter().map(|n| topic_yaml(n, 1, delete)).collect();
    env.apply_ok(&manifests.join("---\n"));
    eventually("the first topic of the batch in Kafka", WAIT, || async {
        for name in &names {
            if env
                .admin
                .describe_topic(name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Ok(());
            }
        }
        Err("none yet".to_owned())
    })
    .await;
    drop(first);
    let mut in_kafka_without_id = 0;
    for name in &names {
        let recorded = env
            .topics
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.topic_id);
        if recorded.is_none() && env.admin.describe_topic(name).await.unwrap().is_some() {
            in_kafka_without_id += 1;
        }
    }
    eprintln!(
        "at the stop, {in_kafka_without_id} of {} topics were in Kafka without their id in the status",
        names.len()
    );

    let _second = Operator::start(&env.kube, operator_args()).await;
    for name in std::iter::once(&left).chain(&names) {
        let topic = env.wait_ready(name).await;
        let status = topic.status.unwrap();
        assert_eq!(status.origin, Some(TopicOrigin::Created), "{name}");
        assert!(!status.creating, "{name}: the mark is cleared");
        assert_eq!(
            status.topic_id.as_deref(),
            env.admin
                .describe_topic(name)
                .await
                .unwrap()
                .map(|d| d.id)
                .as_deref(),
            "{name}: the id of the topic in Kafka"
        );
    }
    for name in std::iter::once(&left).chain(&names) {
        env.topics
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in std::iter::once(&left).chain(&names) {
        eventually(
            &format!("{name} gone from Kafka and the API"),
            WAIT,
            || async {
                let resource = env.topics.get_opt(name).await.map_err(|e| e.to_string())?;
                let topic = env
                    .admin
                    .describe_topic(name)
                    .await
                    .map_err(|e| e.to_string())?;
                (resource.is_none() && topic.is_none())
                    .then_some(())
                    .ok_or(format!(
                        "resource {}, Kafka topic {}",
                        resource.is_some(),
                        topic.is_some()
                    ))
            },
        )
        .await;
    }
}
