//! The OrderConsumer and DLQPolicy control plane against the real API server and the real
//! secured Kafka: identity, exact ACLs, dead-letter topic, worker Deployment and the replica cap.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use pubsubkafka_controller::crd::order_consumer::OwnedTopicKind;
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer};
use pubsubkafka_worker::config::WorkerConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testenv::scenario::{Scenario, condition};
use testenv::{KafkaInfo, eventually};

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    scenario: Scenario,
    consumers: Api<OrderConsumer>,
    deployments: Api<Deployment>,
    secrets: Api<Secret>,
}

impl std::ops::Deref for Env {
    type Target = Scenario;
    fn deref(&self) -> &Scenario {
        &self.scenario
    }
}

async fn env() -> Env {
    let scenario = Scenario::new("consumers").await;
    Env {
        consumers: Api::namespaced(scenario.client.clone(), &scenario.ns),
        deployments: Api::namespaced(scenario.client.clone(), &scenario.ns),
        secrets: Api::namespaced(scenario.client.clone(), &scenario.ns),
        scenario,
    }
}

fn topic_yaml(name: &str, partitions: i32) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\nspec:\n  \
         partitions: {partitions}\n  replicationFactor: 1\n"
    )
}

fn consumer_yaml(name: &str, topic: &str, spec: &str) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: {name}\nspec:\n  \
         topicRef: {{name: {topic}}}\n  handler:\n    eventStore:\n      connectionSecret: {{name: orders-db}}\n{spec}"
    )
}

impl Env {
    async fn wait_consumer(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&OrderConsumer) -> bool,
    ) -> OrderConsumer {
        eventually(what, WAIT, || async {
            let c = self.consumers.get(name).await.map_err(|e| e.to_string())?;
            let current =
                c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation;
            (current && check(&c))
                .then_some(c.clone())
                .ok_or(format!("{:?}", c.status))
        })
        .await
    }

    async fn deployment_replicas(&self, name: &str, replicas: i32) -> Deployment {
        let deployment = format!("{name}-worker");
        eventually(
            &format!("{deployment} at {replicas} replicas"),
            WAIT,
            || async {
                let d = self
                    .deployments
                    .get_opt(&deployment)
                    .await
                    .map_err(|e| e.to_string())?;
                match d {
                    Some(d) if d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) => Ok(d),
                    other => Err(format!(
                        "{:?}",
                        other.and_then(|d| d.spec).and_then(|s| s.replicas)
                    )),
                }
            },
        )
        .await
    }

    async fn credentials(&self, name: &str) -> (String, String) {
        let secret = eventually("the credentials Secret", WAIT, || async {
            self.secrets
                .get_opt(&format!("{name}-kafka-credentials"))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("absent".to_owned())
        })
        .await;
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        (text("username"), text("password"))
    }

    /// The worker configuration the operator rendered for consumer `name`.
    async fn worker_config(&self, name: &str) -> WorkerConfig {
        let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &self.ns);
        let map = config_maps.get(&format!("{name}-worker")).await.unwrap();
        WorkerConfig::from_json(&map.data.unwrap()["worker.json"]).unwrap()
    }

    async fn topic_ready(&self, name: &str, partitions: i32) {
        let topics: Api<KafkaTopic> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(&format!("topic {name} Ready"), WAIT, || async {
            let t = topics.get(name).await.map_err(|e| e.to_string())?;
            (t.is_ready() && t.status.as_ref().and_then(|s| s.partitions) == Some(partitions))
                .then_some(())
                .ok_or(format!("{:?}", t.status))
        })
        .await;
    }
}

#[tokio::test]
async fn replicas_are_capped_at_partitions_and_follow_a_growing_topic() {
    let env = env().await;
    let topic = testenv::unique_name("orders");
    env.apply_ok(&topic_yaml(&topic, 3));
    env.apply_ok(&consumer_yaml("store", &topic, "  replicas: 10\n"));

    let deployment = env.deployment_replicas("store", 3).await;
    let c = env
        .wait_consumer("store", "Capped", |c| {
            c.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "Capped").is_some_and(|c| c.status == "True")
                    && s.replicas == Some(3)
            })
        })
        .await;
    let status = c.status.unwrap();
    assert_eq!(status.desired_replicas, Some(10));
    assert_eq!(status.max_replicas, Some(3));
    assert_eq!(status.dead_letter_topic, Some(format!("{topic}-dlq")));
    assert_eq!(
        status.selector.as_deref(),
        Some("pubsubkafka.io/consumer=store,app.kubernetes.io/name=pubsubkafka-worker")
    );
    assert!(
        condition(&status.conditions, "Capped")
            .unwrap()
            .message
            .contains("3 partitions")
    );
    let owner = &deployment.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("OrderConsumer", "store")
    );

    // The rendered config is the worker's own type, readable back.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(env.client.clone(), &env.ns);
    let cm = config_maps.get("store-worker").await.unwrap();
    let config = WorkerConfig::from_json(&cm.data.unwrap()["worker.json"]).unwrap();
    assert_eq!(config.source_topic, topic);
    assert_eq!(config.group_id, format!("{}.store", env.ns));
    assert_eq!(config.retry.max_retries, 3, "defaults without a DLQPolicy");

    let dlq = env
        .admin
        .describe_topic(&format!("{topic}-dlq"))
        .await
        .unwrap()
        .expect("dead-letter topic");
    assert_eq!(dlq.partition_count(), 3);

    // A partition increase raises the cap at once and grows the dead-letter topic.
    env.apply_ok(&topic_yaml(&topic, 6));
    env.deployment_replicas("store", 6).await;
    eventually("the dead-letter topic to grow", WAIT, || async {
        let d = env
            .admin
            .describe_topic(&format!("{topic}-dlq"))
            .await
            .map_err(|e| e.to_string())?;
        d.filter(|d| d.partition_count() >= 6)
            .map(drop)
            .ok_or("not yet".to_owned())
    })
    .await;

    // kubectl scale goes through the scale subresource.
    env.kubectl(&["scale", "orderconsumer", "store", "--replicas=2"], "")
        .expect("kubectl scale");
    env.deployment_replicas("store", 2).await;
    env.wait_consumer("store", "Capped False", |c| {
        c.status.as_ref().is_some_and(|s| {
            condition(&s.conditions, "Capped").is_some_and(|c| c.status == "False")
                && s.replicas == Some(2)
        })
    })
    .await;
}

/// Reads `topic` as the consumer's principal in its group: Ok when authorized.
fn read_as(
    kafka: &KafkaInfo,
    user: &str,
    password: &str,
    group: &str,
    topic: &str,
) -> Result<(), String> {
    let consumer: BaseConsumer = kafka
        .sasl_config(user, password)
        .set("group.id", group)
        .create()
        .map_err(|e| e.to_string())?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    // Fetching committed offsets needs READ on the group and DESCRIBE/READ on the topic.
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    match committed.elements()[0].error() {
        Ok(()) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn the_principal_gets_exactly_its_permissions_and_loses_them_on_deletion() {
    let env = env().await;
    let kafka = &testenv::shared().kafka;
    let topic = testenv::unique_name("orders");
    let other = testenv::unique_name("payments");
    env.apply_ok(&topic_yaml(&topic, 1));
    env.apply_ok(&topic_yaml(&other, 1));
    env.apply_ok(&consumer_yaml("acl", &topic, ""));
    // Reconciled, not Ready: no worker pod runs on this API server.
    env.wait_consumer("acl", "Reconciled", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| pubsubkafka_controller::crd::conditions::is_reconciled(&s.conditions))
    })
    .await;
    let (user, password) = env.credentials("acl").await;
    assert_eq!(user, format!("pubsubkafka.{}.acl", env.ns));
    assert_eq!(password.len(), 32);
    let group = format!("{}.acl", env.ns);
    env.topic_ready(&other, 1).await;

    eventually("reading the source topic", WAIT, || async {
        read_as(kafka, &user, &password, &group, &topic)
    })
    .await;
    eventually("writing the dead-letter topic", WAIT, || async {
        kafka
            .produce_as(&user, &password, &format!("{topic}-dlq"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let denied = read_as(kafka, &user, &password, &group, &other);
    assert!(denied.is_err(), "reading another topic must be denied");
    let denied = kafka.produce_as(&user, &password, &topic).await;
    assert!(
        matches!(
            denied,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        ),
        "producing to the source must be denied: {denied:?}"
    );

    // The password is generated once and kept.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.credentials("acl").await.1, password);

    env.consumers
        .delete("acl", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the consumer to be gone", WAIT, || async {
        match env
            .consumers
            .get_opt("acl")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    testenv::kafka::principal_gone(&env.admin, &user).await;
    eventually("the login to fail", WAIT, || async {
        match read_as(kafka, &user, &password, &group, &topic) {
            Err(_) => Ok(()),
            Ok(()) => Err("still logs in".to_owned()),
        }
    })
    .await;
}

#[tokio::test]
async fn lag_drives_autoscaling_within_the_cap() {
    let env = env().await;
    let kafka = &testenv::shared().kafka;
    let topic = testenv::unique_name("backlog");
    env.apply_ok(&topic_yaml(&topic, 3));
    env.topic_ready(&topic, 3).await;
    let producer: FutureProducer = kafka.admin_config().set("linger.ms", "5").create().unwrap();
    let sends: Vec<_> = (0..5000)
        .map(|i| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .key(&format!("order-{i}"))
                            .payload("{}"),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("delivered");
            }
        })
        .collect();
    futures::future::join_all(sends).await;

    env.apply_ok(&consumer_yaml(
        "scaler",
        &topic,
        "  autoscaling:\n    minReplicas: 1\n    maxReplicas: 8\n    targetLagPerReplica: 1000\n",
    ));
    let c = env
        .wait_consumer("scaler", "lag 5000 measured", |c| {
            c.status.as_ref().is_some_and(|s| s.lag == Some(5000))
        })
        .await;
    let status = c.status.unwrap();
    assert_eq!(status.desired_replicas, Some(5));
    assert_eq!(status.replicas, Some(3), "capped at the partitions");
    assert!(condition(&status.conditions, "Capped").is_some_and(|c| c.status == "True"));
    env.deployment_replicas("scaler", 3).await;
}

#[tokio::test]
async fn a_policy_change_rolls_the_workers() {
    let env = env().await;
    let topic = testenv::unique_name("orders");
    env.apply_ok(&topic_yaml(&topic, 1));
    let policy = |retries: i32| {
        format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: strict\nspec:\n  \
             maxRetries: {retries}\n  deadLetterTopic: {topic}-dead\n  backoff: {{initial: 200ms, max: 5s}}\n"
        )
    };
    env.apply_ok(&policy(2));
    env.apply_ok(&consumer_yaml(
        "rolled",
        &topic,
        "  dlqPolicyRef: {name: strict}\n",
    ));
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["pubsubkafka.io/config-hash"]
            .clone()
    };
    let first = hash(&env.deployment_replicas("rolled", 1).await);
    assert!(
        env.admin
            .describe_topic(&format!("{topic}-dead"))
            .await
            .unwrap()
            .is_some(),
        "the policy's topic"
    );

    env.apply_ok(&policy(7));
    let second = eventually("a new config hash", WAIT, || async {
        let d = env
            .deployments
            .get("rolled-worker")
            .await
            .map_err(|e| e.to_string())?;
        let h = hash(&d);
        (h != first).then_some(h).ok_or("unchanged".to_owned())
    })
    .await;
    assert_ne!(first, second);
    let config = env.worker_config("rolled").await;
    assert_eq!(config.retry.max_retries, 7);
    assert_eq!(config.retry.initial_backoff_ms, 200);
}

#[tokio::test]
async fn retry_topics_are_created_grown_and_granted_to_the_principal() {
    let env = env().await;
    let kafka = &testenv::shared().kafka;
    let topic = testenv::unique_name("orders");
    env.apply_ok(&topic_yaml(&topic, 2));
    env.apply_ok(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: nonblocking\nspec:\n  \
         mode: RetryTopics\n  maxRetries: 5\n  backoff: {initial: 500ms, multiplier: 2, max: 2s}\n",
    );
    env.apply_ok(&consumer_yaml(
        "retrier",
        &topic,
        "  dlqPolicyRef: {name: nonblocking}\n  concurrencyPerPartition: 4\n",
    ));
    let names: Vec<String> = (1..=3)
        .map(|n| format!("{topic}-retrier-retry-{n}"))
        .collect();
    let c = env
        .wait_consumer("retrier", "Reconciled with retry topics", |c| {
            c.status.as_ref().is_some_and(|s| {
                pubsubkafka_controller::crd::conditions::is_reconciled(&s.conditions)
                    && s.retry_topics == names
            })
        })
        .await;
    let ready = condition(&c.status.as_ref().unwrap().conditions, "Reconciled").unwrap();
    assert!(
        ready
            .message
            .contains(&format!("retries wait in {} to {}", names[0], names[2])),
        "{}",
        ready.message
    );
    let admin = &env.admin;
    let partitions = |name: String| async move {
        admin
            .describe_topic(&name)
            .await
            .unwrap()
            .map(|t| t.partition_count())
    };
    for name in &names {
        assert_eq!(partitions(name.clone()).await, Some(2), "{name}");
    }
    // The consumer owns its dead-letter and retry topics: recorded in its status, so no
    // KafkaTopic can take them over (tests/tenancy.rs).
    let owned: Vec<(String, OwnedTopicKind)> = c
        .status
        .as_ref()
        .unwrap()
        .owned_topics
        .iter()
        .map(|o| (o.name.clone(), o.kind))
        .collect();
    let mut expected = vec![(format!("{topic}-dlq"), OwnedTopicKind::DeadLetter)];
    expected.extend(names.iter().map(|n| (n.clone(), OwnedTopicKind::Retry)));
    assert_eq!(owned, expected);
    let config = env.worker_config("retrier").await;
    assert_eq!(config.concurrency, 4);
    let delays: Vec<u64> = config.retry_topics.iter().map(|t| t.delay_ms).collect();
    assert_eq!(delays, [500, 1000, 2000]);

    // The principal feeds and reads its retry topics.
    let (user, password) = env.credentials("retrier").await;
    let group = format!("{}.retrier", env.ns);
    for name in &names {
        eventually(&format!("writing {name}"), WAIT, || async {
            kafka
                .produce_as(&user, &password, name)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        eventually(&format!("reading {name}"), WAIT, || async {
            read_as(kafka, &user, &password, &group, name)
        })
        .await;
    }

    // The retry topics grow with the source.
    env.apply_ok(&topic_yaml(&topic, 4));
    for name in names {
        eventually(&format!("{name} grown to 4 partitions"), WAIT, || async {
            match partitions(name.clone()).await {
                Some(4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
}

#[tokio::test]
async fn fault_missing_dependencies_are_reported_not_crashed_on() {
    let env = env().await;
    let topic = testenv::unique_name("later");
    env.apply_ok(&consumer_yaml(
        "early",
        &topic,
        "  dlqPolicyRef: {name: absent}\n",
    ));
    env.wait_consumer("early", "TopicNotReady", |c| {
        c.status.as_ref().is_some_and(|s| {
            condition(&s.conditions, "Ready").is_some_and(|r| r.reason == "TopicNotReady")
        })
    })
    .await;
    env.apply_ok(&topic_yaml(&topic, 1));
    env.wait_consumer("early", "PolicyNotFound", |c| {
        c.status.as_ref().is_some_and(|s| {
            condition(&s.conditions, "Ready").is_some_and(|r| r.reason == "PolicyNotFound")
        })
    })
    .await;
}

#[tokio::test]
async fn fault_the_api_server_refuses_bad_consumers_and_policies_naming_the_field() {
    let env = Scenario::with("consumers-bad", &testenv::shared().kafka, false).await;
    let cases = [
        (
            consumer_yaml("bad", "orders", "  autoscaling: {minReplicas: 5, maxReplicas: 2}\n"),
            "spec.autoscaling.minReplicas",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: bad\nspec:\n  \
             topicRef: {name: orders}\n  handler:\n    eventStore: {connectionSecret: {name: db}}\n    \
             http: {url: 'http://x:80/'}\n"
                .to_owned(),
            "spec.handler",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: bad\nspec:\n  \
             topicRef: {name: orders}\n  handler: {}\n"
                .to_owned(),
            "exactly one handler",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  maxRetries: 500\n"
                .to_owned(),
            "spec.maxRetries",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             backoff: {initial: 10s, max: 1s}\n"
                .to_owned(),
            "spec.backoff",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             backoff: {multiplier: 0.5}\n"
                .to_owned(),
            "spec.backoff.multiplier",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             backoff: {jitter: 2}\n"
                .to_owned(),
            "spec.backoff.jitter",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             backoff: {initial: soon}\n"
                .to_owned(),
            "spec.backoff.initial",
        ),
    ];
    for (yaml, field) in cases {
        let err = env
            .kubectl_apply(&yaml)
            .expect_err(&format!("refused: {yaml}"));
        assert!(err.contains(field), "expected {field} in: {err}");
    }

    // Defaults are filled in by the API server, so GitOps tools see no drift.
    env.apply_ok("apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: plain\nspec: {}\n");
    let policies: Api<pubsubkafka_controller::crd::DLQPolicy> =
        Api::namespaced(env.client.clone(), &env.ns);
    let plain = policies.get("plain").await.unwrap();
    assert_eq!(plain.spec.max_retries, 3);
    assert_eq!(plain.spec.backoff.initial, "1s");
    let as_json = serde_json::to_value(&plain.spec).unwrap();
    let stored: BTreeMap<String, serde_json::Value> = serde_json::from_value(as_json).unwrap();
    assert!(
        stored.contains_key("permanentErrors") && stored.contains_key("mode"),
        "{stored:?}"
    );
}
