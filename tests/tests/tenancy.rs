//! Tenancy and ownership against the real API server and the real secured Kafka: an app team in
//! one namespace (the attacker) tries to change, grant on, read or delete what another
//! namespace (the victim) or Kafka owns. After every attempt the victim's topic has the same
//! id, partitions and configs, the attacker's principal has no ACL, and every record the victim
//! produced is still there.
//!
//! Each test runs one operator over its two namespaces, as installed (all namespaces), limited
//! by a label selector to the test's own resources so tests side by side do not meet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams};
use pubsubkafka_controller::crd::{KafkaAccessPolicy, KafkaTopic, OrderConsumer};
use pubsubkafka_controller::kafka::{Acl, AclFilter, KafkaAdmin, ResourceKind};
use pubsubkafka_controller::tenancy::DefaultAccessPolicy;
use testenv::operator::{self, Operator};
use testenv::scenario::{self, condition};
use testenv::{KafkaInfo, KubeInfo, eventually};

const WAIT: Duration = Duration::from_secs(60);
const RUN_LABEL: &str = "pubsubkafka.io/test-run";
/// Records the victim holds before each attempt.
const RECORDS: usize = 17;

/// Two namespaces on one operator.
struct Tenants {
    kube: KubeInfo,
    client: kube::Client,
    kafka: KafkaInfo,
    admin: KafkaAdmin,
    run: String,
    victim: String,
    attacker: String,
    _operator: Operator,
}

async fn tenants(default: DefaultAccessPolicy) -> Tenants {
    let stack = testenv::shared();
    let client = stack.kube.client().await.expect("client");
    operator::install_crds(&client).await;
    let run = testenv::unique_name("run");
    let victim = testenv::unique_name("victim");
    let attacker = testenv::unique_name("attacker");
    for ns in [&victim, &attacker] {
        scenario::create_labeled_namespace(&client, ns, &[(RUN_LABEL, &run)]).await;
    }
    let mut args = operator::args(&stack.kafka, &victim, Duration::from_secs(3));
    args.watch_namespace = None;
    args.watch_selector = Some(format!("{RUN_LABEL}={run}"));
    args.default_access_policy = default;
    let operator = Operator::start(&stack.kube, args).await;
    Tenants {
        kube: stack.kube.clone(),
        client,
        kafka: stack.kafka.clone(),
        admin: stack.kafka.kafka_admin(),
        run,
        victim,
        attacker,
        _operator: operator,
    }
}

/// Both namespaces go with the test (without waiting): on a stack with a node, the victims'
/// worker pods would otherwise run on after it.
impl Drop for Tenants {
    fn drop(&mut self) {
        for ns in [&self.victim, &self.attacker] {
            self.kube.drop_namespace(ns);
        }
    }
}

/// What the victim's topic is in Kafka: what no attempt may change.
#[derive(Debug, PartialEq)]
struct TopicState {
    id: String,
    partitions: i32,
    config: BTreeMap<String, String>,
    records: i64,
}

impl Tenants {
    /// `kubectl apply` in `ns`.
    fn apply(&self, ns: &str, yaml: &str) -> Result<String, String> {
        self.kube
            .kubectl_with_stdin(&["apply", "-n", ns, "-f", "-"], yaml)
    }

    fn apply_ok(&self, ns: &str, yaml: &str) {
        if let Err(e) = self.apply(ns, yaml) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }

    /// A manifest of `kind` named `name`, labelled for this test's operator, with `spec` (YAML
    /// lines indented by two spaces).
    fn manifest(&self, kind: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  \
             labels: {{{RUN_LABEL}: {}}}\nspec:\n{spec}",
            self.run
        )
    }

    fn topic(&self, name: &str, spec: &str) -> String {
        self.manifest(
            "KafkaTopic",
            name,
            &format!("  partitions: 1\n  replicationFactor: 1\n{spec}"),
        )
    }

    fn consumer(&self, name: &str, topic_ref: &str, spec: &str) -> String {
        self.manifest(
            "OrderConsumer",
            name,
            &format!(
                "  topicRef: {{name: {topic_ref}}}\n  handler:\n    http: {{url: 'http://receiver:8080/'}}\n{spec}"
            ),
        )
    }

    /// Waits until `kind`'s Reconciled condition has `reason` for the current generation.
    async fn wait_reason<K>(&self, ns: &str, name: &str, reason: &str) -> Condition
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + HasConditions,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        eventually(&format!("{ns}/{name} to report {reason}"), WAIT, || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            let (generation, conditions) = object.observed();
            // Reconciled: the operator's verdict (for a KafkaTopic it is Ready's twin; an
            // OrderConsumer is Ready only once worker pods run, which they do not here).
            match condition(&conditions, "Reconciled") {
                Some(c) if c.reason == reason && generation == object.meta().generation => {
                    Ok(c.clone())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    async fn delete_and_wait<K>(&self, ns: &str, name: &str)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        eventually(&format!("{ns}/{name} to be gone"), WAIT, || async {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there (finalizer)".to_owned()),
            }
        })
        .await;
    }

    async fn topic_state(&self, topic: &str) -> TopicState {
        let described = self
            .admin
            .describe_topic(topic)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("topic {topic} is gone from Kafka"));
        let config = self
            .admin
            .describe_topic_config(topic)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.dynamic)
            .map(|(k, e)| (k, e.value.unwrap_or_default()))
            .collect();
        let kafka = self.kafka.clone();
        let name = topic.to_owned();
        let records = tokio::task::spawn_blocking(move || scenario::count_records(&kafka, &name))
            .await
            .unwrap();
        TopicState {
            id: described.id.clone(),
            partitions: described.partition_count(),
            config,
            records,
        }
    }

    /// Every ACL `principal` holds, on anything.
    async fn acls_of(&self, principal: &str) -> BTreeSet<Acl> {
        self.admin
            .describe_acls(&AclFilter {
                principal: Some(principal.to_owned()),
                ..AclFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// The ACLs of `principal` once `wanted` holds of them: Kafka answers describes from the
    /// broker's metadata, which can trail the operator's write by a second or more.
    async fn acls_when(
        &self,
        principal: &str,
        what: &str,
        wanted: impl Fn(&BTreeSet<Acl>) -> bool,
    ) -> BTreeSet<Acl> {
        eventually(what, WAIT, || async {
            let acls = self.acls_of(principal).await;
            if wanted(&acls) {
                Ok(acls)
            } else {
                Err(format!("{acls:?}"))
            }
        })
        .await
    }

    /// Every ACL on topic `topic`.
    async fn acls_on(&self, topic: &str) -> BTreeSet<Acl> {
        self.admin
            .describe_acls(&AclFilter {
                resource: Some((
                    pubsubkafka_controller::kafka::ResourceKind::Topic,
                    topic.to_owned(),
                )),
                ..AclFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Fills the victim's topic with [`RECORDS`] records and returns its state.
    async fn fill(&self, topic: &str) -> TopicState {
        scenario::produce_records(&self.kafka, topic, RECORDS).await;
        let state = self.topic_state(topic).await;
        assert_eq!(state.records, RECORDS as i64, "the victim's records");
        state
    }

    /// The victim's topic and ACLs are as they were, and the attacker holds no ACL.
    async fn assert_untouched(
        &self,
        topic: &str,
        before: &TopicState,
        acls_before: &BTreeSet<Acl>,
        attackers: &[&str],
    ) {
        assert_eq!(
            &self.topic_state(topic).await,
            before,
            "the victim's topic {topic} changed"
        );
        assert_eq!(
            &self.acls_on(topic).await,
            acls_before,
            "the ACLs on the victim's topic {topic} changed"
        );
        for principal in attackers {
            let acls = self.acls_of(principal).await;
            assert!(acls.is_empty(), "{principal} was granted {acls:?}");
        }
    }
}

/// The observed generation and conditions of a status.
trait HasConditions {
    fn observed(&self) -> (Option<i64>, Vec<Condition>);
}

impl HasConditions for KafkaTopic {
    fn observed(&self) -> (Option<i64>, Vec<Condition>) {
        let s = self.status.clone().unwrap_or_default();
        (s.observed_generation, s.conditions)
    }
}

impl HasConditions for OrderConsumer {
    fn observed(&self) -> (Option<i64>, Vec<Condition>) {
        let s = self.status.clone().unwrap_or_default();
        (s.observed_generation, s.conditions)
    }
}

/// A victim in its namespace: a topic, and a consumer of it whose dead-letter topic (and, with
/// `retry_topics`, one retry topic) the operator made. Returns the consumer, Ready.
async fn victim_consumer(t: &Tenants, topic: &str, retry_topics: bool) -> OrderConsumer {
    t.apply_ok(&t.victim, &t.topic(topic, ""));
    t.wait_reason::<KafkaTopic>(&t.victim, topic, "Reconciled")
        .await;
    let policy = if retry_topics {
        t.apply_ok(
            &t.victim,
            &t.manifest(
                "DLQPolicy",
                "retrying",
                "  maxRetries: 1\n  mode: RetryTopics\n  backoff: {initial: 1s, max: 1s}\n",
            ),
        );
        "  dlqPolicyRef: {name: retrying}\n"
    } else {
        ""
    };
    t.apply_ok(&t.victim, &t.consumer("store", topic, policy));
    t.wait_reason::<OrderConsumer>(&t.victim, "store", "Reconciled")
        .await;
    // Its ACLs are written in one request: once its group's shows, all of them do.
    t.acls_when(
        &format!("User:pubsubkafka.{}.store", t.victim),
        "the victim's ACLs in Kafka",
        |acls| acls.iter().any(|a| a.resource == ResourceKind::Group),
    )
    .await;
    let consumers: Api<OrderConsumer> = Api::namespaced(t.client.clone(), &t.victim);
    consumers.get("store").await.unwrap()
}

#[tokio::test]
async fn kafkas_internal_topics_are_refused_at_admission_naming_the_field() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let before = t
        .admin
        .describe_topic_config("__consumer_offsets")
        .await
        .unwrap();
    let refused = t
        .apply(
            &t.attacker,
            &t.topic(
                "offsets",
                "  topicName: __consumer_offsets\n  adopt: true\n  config: {retention.ms: 1000}\n",
            ),
        )
        .expect_err("__consumer_offsets must be refused");
    assert!(
        refused.contains("spec.topicName") && refused.contains("internal"),
        "{refused}"
    );
    let refused = t
        .apply(
            &t.attacker,
            &t.manifest(
                "DLQPolicy",
                "into-offsets",
                "  deadLetterTopic: __transaction_state\n",
            ),
        )
        .expect_err("a dead-letter topic named __* must be refused");
    assert!(refused.contains("spec.deadLetterTopic"), "{refused}");
    assert_eq!(
        t.admin
            .describe_topic_config("__consumer_offsets")
            .await
            .unwrap(),
        before,
        "__consumer_offsets is as it was"
    );
}

/// With a CRD from before the `__` rule (an operator upgraded before its CRDs), the API server
/// lets the manifest in: the controller refuses it and touches nothing.
#[tokio::test]
async fn the_controller_refuses_internal_topics_that_an_older_crd_let_in() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let stack = testenv::shared();
    let dir = tempfile::tempdir().unwrap();
    let api =
        testenv::KubeApi::start(dir.path(), testenv::Lifetime::Owned).expect("own API server");
    let client = api.info.client().await.unwrap();
    operator::install_crds(&client).await;
    // The KafkaTopic CRD without the rule on spec.topicName, applied by the same field manager
    // so that the rule it no longer lists is removed.
    let mut crd = KafkaTopic::crd_without_internal_topic_rule();
    crd.metadata.managed_fields = None;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "kafkatopics.pubsubkafka.io",
        &PatchParams::apply("pubsubkafka-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let ns = testenv::unique_name("older");
    operator::create_namespace(&client, &ns).await;
    let _operator = Operator::start(
        &api.info,
        operator::args(&stack.kafka, &ns, Duration::from_secs(3)),
    )
    .await;
    let admin = stack.kafka.kafka_admin();
    let before = admin
        .describe_topic_config("__consumer_offsets")
        .await
        .unwrap();
    let thief = format!("User:{}", testenv::unique_name("thief"));
    let yaml = format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: offsets\nspec:\n  \
         topicName: __consumer_offsets\n  partitions: 50\n  replicationFactor: 1\n  adopt: true\n  \
         config: {{retention.ms: 1000}}\n  access:\n  - principal: {thief}\n    operations: [Read]\n"
    );
    // Admitted: only the controller stands between the manifest and the topic.
    eventually(
        "the older CRD to admit __consumer_offsets",
        WAIT,
        || async {
            api.info
                .kubectl_with_stdin(&["apply", "-n", &ns, "-f", "-"], &yaml)
                .map(drop)
        },
    )
    .await;
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &ns);
    eventually("ReservedTopicName", WAIT, || async {
        let t = topics.get("offsets").await.map_err(|e| e.to_string())?;
        let (generation, conditions) = t.observed();
        match condition(&conditions, "Ready") {
            Some(c) if c.reason == "ReservedTopicName" && generation == t.metadata.generation => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        admin
            .describe_topic_config("__consumer_offsets")
            .await
            .unwrap(),
        before,
        "__consumer_offsets is as it was"
    );
    let acls = admin
        .describe_acls(&AclFilter {
            principal: Some(thief.clone()),
            ..AclFilter::default()
        })
        .await
        .unwrap();
    assert!(acls.is_empty(), "{thief} was granted {acls:?}");
}

/// The KafkaTopic CRD as a release before the `__` rule generated it.
trait OlderCrd {
    fn crd_without_internal_topic_rule()
    -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
}

impl OlderCrd for KafkaTopic {
    fn crd_without_internal_topic_rule()
    -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        use kube::CustomResourceExt;
        let mut value = serde_json::to_value(KafkaTopic::crd()).unwrap();
        let rules = value
            .pointer_mut(
                "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/topicName/x-kubernetes-validations",
            )
            .and_then(|v| v.as_array_mut())
            .expect("topicName has validations");
        let before = rules.len();
        rules.retain(|r| !r["rule"].as_str().unwrap_or_default().contains("__"));
        assert_eq!(rules.len(), before - 1, "the __ rule was there");
        serde_json::from_value(value).unwrap()
    }
}

#[tokio::test]
async fn a_kafka_topic_cannot_take_over_another_namespaces_dead_letter_and_retry_topics() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let topic = testenv::unique_name("orders");
    let victim = victim_consumer(&t, &topic, true).await;
    let owned: Vec<String> = victim
        .status
        .unwrap()
        .owned_topics
        .into_iter()
        .map(|o| o.name)
        .collect();
    let dead_letter = format!("{topic}-dlq");
    let retry = format!("{topic}-store-retry-1");
    assert_eq!(
        owned,
        [dead_letter.clone(), retry.clone()],
        "recorded as owned"
    );

    let thief = format!("User:{}", testenv::unique_name("thief"));
    for (name, victim_topic) in [("steal-dlq", &dead_letter), ("steal-retry", &retry)] {
        let before = t.fill(victim_topic).await;
        let acls = t.acls_on(victim_topic).await;
        // Everything a KafkaTopic can do: adopt, reconfigure, grow, grant, and delete.
        t.apply_ok(
            &t.attacker,
            &t.topic(
                name,
                &format!(
                    "  topicName: {victim_topic}\n  adopt: true\n  deletionPolicy: Delete\n  \
                     deleteAdopted: true\n  config: {{retention.ms: 1000}}\n  access:\n  - \
                     principal: {thief}\n    operations: [Read, Describe]\n"
                ),
            )
            .replace("partitions: 1", "partitions: 4"),
        );
        let refused = t
            .wait_reason::<KafkaTopic>(&t.attacker, name, "ResourceConflict")
            .await;
        assert!(
            refused
                .message
                .contains(&format!("OrderConsumer {}/store", t.victim)),
            "{}",
            refused.message
        );
        t.assert_untouched(victim_topic, &before, &acls, &[&thief])
            .await;
        t.delete_and_wait::<KafkaTopic>(&t.attacker, name).await;
        t.assert_untouched(victim_topic, &before, &acls, &[&thief])
            .await;
    }
}

#[tokio::test]
async fn a_kafka_topic_cannot_manage_or_delete_another_namespaces_topic() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let topic = testenv::unique_name("orders");
    t.apply_ok(&t.victim, &t.topic(&topic, ""));
    t.wait_reason::<KafkaTopic>(&t.victim, &topic, "Reconciled")
        .await;
    let before = t.fill(&topic).await;
    let acls = t.acls_on(&topic).await;
    let thief = format!("User:{}", testenv::unique_name("thief"));
    t.apply_ok(
        &t.attacker,
        &t.topic(
            "steal",
            &format!(
                "  topicName: {topic}\n  adopt: true\n  deletionPolicy: Delete\n  deleteAdopted: \
                 true\n  config: {{retention.ms: 1000}}\n  access:\n  - principal: {thief}\n    \
                 operations: [Read]\n"
            ),
        ),
    );
    let refused = t
        .wait_reason::<KafkaTopic>(&t.attacker, "steal", "ResourceConflict")
        .await;
    assert!(
        refused
            .message
            .contains(&format!("KafkaTopic {}/{topic}", t.victim)),
        "{}",
        refused.message
    );
    t.delete_and_wait::<KafkaTopic>(&t.attacker, "steal").await;
    t.assert_untouched(&topic, &before, &acls, &[&thief]).await;
}

#[tokio::test]
async fn an_unmanaged_topic_is_adopted_only_on_request_and_kept_unless_asked() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    // A topic Kafka has and no resource manages (made with Kafka's own tools).
    let topic = testenv::unique_name("legacy");
    t.admin
        .create_topic(&topic, 2, 1, &BTreeMap::new())
        .await
        .unwrap();
    let before = testenv::kafka::topic_shown(&t.admin, &topic).await;
    assert_eq!(before.partition_count(), 2);
    let before = t.fill(&topic).await;
    let acls = t.acls_on(&topic).await;
    let thief = format!("User:{}", testenv::unique_name("thief"));
    let spec = format!(
        "  topicName: {topic}\n  deletionPolicy: Delete\n  config: {{retention.ms: 1000}}\n  \
         access:\n  - principal: {thief}\n    operations: [Read]\n"
    );

    // Without the opt-in: TopicExists, saying how to adopt, and nothing changes.
    t.apply_ok(
        &t.attacker,
        &t.topic("quiet", &spec)
            .replace("partitions: 1", "partitions: 2"),
    );
    let exists = t
        .wait_reason::<KafkaTopic>(&t.attacker, "quiet", "TopicExists")
        .await;
    assert!(exists.message.contains("adopt: true"), "{}", exists.message);
    t.delete_and_wait::<KafkaTopic>(&t.attacker, "quiet").await;
    t.assert_untouched(&topic, &before, &acls, &[&thief]).await;

    // With it: adopted (shown in status), and deletionPolicy Delete still keeps the topic.
    let adopting =
        format!("  adopt: true\n{spec}").replace("retention.ms: 1000", "retention.ms: 3600000");
    t.apply_ok(
        &t.attacker,
        &t.topic("adopter", &adopting)
            .replace("partitions: 1", "partitions: 2"),
    );
    t.wait_reason::<KafkaTopic>(&t.attacker, "adopter", "Reconciled")
        .await;
    let topics: Api<KafkaTopic> = Api::namespaced(t.client.clone(), &t.attacker);
    let adopted = topics.get("adopter").await.unwrap().status.unwrap();
    assert_eq!(
        adopted.origin,
        Some(pubsubkafka_controller::crd::kafka_topic::TopicOrigin::Adopted)
    );
    assert_eq!(adopted.topic_id.as_deref(), Some(before.id.as_str()));
    t.delete_and_wait::<KafkaTopic>(&t.attacker, "adopter")
        .await;
    let after = t.topic_state(&topic).await;
    assert_eq!(
        (after.id.as_str(), after.records),
        (before.id.as_str(), RECORDS as i64),
        "an adopted topic is kept without deleteAdopted"
    );

    // deleteAdopted is the explicit opt-in to delete it.
    t.apply_ok(
        &t.attacker,
        &t.topic("owner", &format!("{adopting}  deleteAdopted: true\n"))
            .replace("partitions: 1", "partitions: 2"),
    );
    t.wait_reason::<KafkaTopic>(&t.attacker, "owner", "Reconciled")
        .await;
    t.delete_and_wait::<KafkaTopic>(&t.attacker, "owner").await;
    eventually("the adopted topic to leave Kafka", WAIT, || async {
        match t.admin.describe_topic(&topic).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_consumer_cannot_join_another_namespaces_group() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let topic = testenv::unique_name("orders");
    let victim = victim_consumer(&t, &topic, false).await;
    let group = victim.status.unwrap().group_id.unwrap();
    assert_eq!(group, format!("{}.store", t.victim));
    let victim_principal = format!("User:pubsubkafka.{}.store", t.victim);
    let victim_acls = t.acls_of(&victim_principal).await;
    assert!(
        victim_acls.iter().any(|a| a.name == group),
        "the victim reads its group: {victim_acls:?}"
    );

    let own = testenv::unique_name("mine");
    t.apply_ok(&t.attacker, &t.topic(&own, ""));
    t.wait_reason::<KafkaTopic>(&t.attacker, &own, "Reconciled")
        .await;
    t.apply_ok(
        &t.attacker,
        &t.consumer("thief", &own, &format!("  groupId: {group}\n")),
    );
    let refused = t
        .wait_reason::<OrderConsumer>(&t.attacker, "thief", "ResourceConflict")
        .await;
    assert!(
        refused
            .message
            .contains(&format!("OrderConsumer {}/store", t.victim)),
        "{}",
        refused.message
    );
    let thief = format!("User:pubsubkafka.{}.thief", t.attacker);
    assert!(t.acls_of(&thief).await.is_empty(), "the thief holds no ACL");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(t.client.clone(), &t.attacker);
    assert!(
        secrets
            .get_opt("thief-kafka-credentials")
            .await
            .unwrap()
            .is_none(),
        "no credentials for a refused consumer"
    );
    assert_eq!(
        t.acls_of(&victim_principal).await,
        victim_acls,
        "the victim keeps its ACLs"
    );
    assert!(
        t.admin
            .describe_topic(&format!("{own}-dlq"))
            .await
            .unwrap()
            .is_none(),
        "a refused consumer creates no topic"
    );
}

#[tokio::test]
async fn a_consumer_cannot_dead_letter_into_another_namespaces_topic() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let topic = testenv::unique_name("orders");
    t.apply_ok(&t.victim, &t.topic(&topic, ""));
    t.wait_reason::<KafkaTopic>(&t.victim, &topic, "Reconciled")
        .await;
    let before = t.fill(&topic).await;
    let acls = t.acls_on(&topic).await;

    // A bigger source topic would grow the victim's topic to match, as a dead-letter topic.
    let own = testenv::unique_name("mine");
    t.apply_ok(
        &t.attacker,
        &t.topic(&own, "").replace("partitions: 1", "partitions: 4"),
    );
    t.wait_reason::<KafkaTopic>(&t.attacker, &own, "Reconciled")
        .await;
    t.apply_ok(
        &t.attacker,
        &t.manifest(
            "DLQPolicy",
            "redirect",
            &format!("  deadLetterTopic: {topic}\n"),
        ),
    );
    t.apply_ok(
        &t.attacker,
        &t.consumer("thief", &own, "  dlqPolicyRef: {name: redirect}\n"),
    );
    let refused = t
        .wait_reason::<OrderConsumer>(&t.attacker, "thief", "ResourceConflict")
        .await;
    assert!(
        refused
            .message
            .contains(&format!("KafkaTopic {}/{topic}", t.victim)),
        "{}",
        refused.message
    );
    let thief = format!("User:pubsubkafka.{}.thief", t.attacker);
    t.assert_untouched(&topic, &before, &acls, &[&thief]).await;
}

#[tokio::test]
async fn grants_to_another_namespaces_principals_or_everyone_are_refused() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let topic = testenv::unique_name("orders");
    let victim = victim_consumer(&t, &topic, false).await;
    let victim_principal = victim.status.unwrap().principal.unwrap();
    let victim_acls = t.acls_of(&victim_principal).await;
    for (name, principal) in [("lend", victim_principal.as_str()), ("everyone", "User:*")] {
        let own = testenv::unique_name("bait");
        t.apply_ok(
            &t.attacker,
            &t.topic(
                name,
                &format!(
                    "  topicName: {own}\n  access:\n  - principal: '{principal}'\n    \
                     operations: [Write]\n"
                ),
            ),
        );
        let refused = t
            .wait_reason::<KafkaTopic>(&t.attacker, name, "PolicyViolation")
            .await;
        assert!(
            refused.message.contains("principals") && refused.message.contains("\"open\""),
            "{}",
            refused.message
        );
        assert!(t.acls_on(&own).await.is_empty(), "no ACL on {own}");
        assert!(
            t.admin.describe_topic(&own).await.unwrap().is_none(),
            "a refused topic is not created"
        );
    }
    assert_eq!(t.acls_of(&victim_principal).await, victim_acls);
}

/// Inside one namespace nothing changes: consumers of a domain share its dead-letter topic,
/// and a dead-letter topic the namespace declares as a KafkaTopic first stays that KafkaTopic's.
#[tokio::test]
async fn inside_one_namespace_consumers_share_dead_letter_topics_as_before() {
    let t = tenants(DefaultAccessPolicy::Open).await;
    let ns = &t.victim;
    let topic = testenv::unique_name("orders");
    victim_consumer(&t, &topic, false).await;
    t.apply_ok(ns, &t.consumer("notifier", &topic, ""));
    t.wait_reason::<OrderConsumer>(ns, "notifier", "Reconciled")
        .await;
    let dead_letter = format!("{topic}-dlq");
    let consumers: Api<OrderConsumer> = Api::namespaced(t.client.clone(), ns);
    for name in ["store", "notifier"] {
        let c = consumers.get(name).await.unwrap();
        let owned: Vec<String> = c.owned_topics().iter().map(|o| o.name.clone()).collect();
        assert_eq!(
            owned,
            std::slice::from_ref(&dead_letter),
            "{name} shares the domain's DLQ"
        );
        let principal = format!("User:pubsubkafka.{ns}.{name}");
        t.acls_when(
            &principal,
            &format!("{principal} writes dead letters"),
            |acls| {
                acls.iter().any(|a| {
                    a.name == dead_letter
                        && a.operation == pubsubkafka_controller::kafka::AclOperation::Write
                })
            },
        )
        .await;
    }

    // Declared first as a KafkaTopic of the namespace: the consumer writes to it, the
    // KafkaTopic keeps deciding its configs.
    let declared = testenv::unique_name("users");
    let declared_dlq = format!("{declared}-dlq");
    t.apply_ok(ns, &t.topic(&declared, ""));
    t.apply_ok(
        ns,
        &t.topic(
            "users-dlq",
            &format!("  topicName: {declared_dlq}\n  config: {{retention.ms: 1209600000}}\n"),
        ),
    );
    t.wait_reason::<KafkaTopic>(ns, "users-dlq", "Reconciled")
        .await;
    t.wait_reason::<KafkaTopic>(ns, &declared, "Reconciled")
        .await;
    t.apply_ok(ns, &t.consumer("welcomer", &declared, ""));
    t.wait_reason::<OrderConsumer>(ns, "welcomer", "Reconciled")
        .await;
    let welcomer = consumers.get("welcomer").await.unwrap();
    assert!(
        welcomer.owned_topics().is_empty(),
        "a KafkaTopic manages it: {:?}",
        welcomer.owned_topics()
    );
    t.wait_reason::<KafkaTopic>(ns, "users-dlq", "Reconciled")
        .await;
    assert_eq!(
        t.topic_state(&declared_dlq)
            .await
            .config
            .get("retention.ms")
            .map(String::as_str),
        Some("1209600000")
    );
}

#[tokio::test]
async fn the_namespaced_default_keeps_each_namespace_to_its_own_names() {
    let t = tenants(DefaultAccessPolicy::Namespaced).await;
    let ns = &t.attacker;
    // Names outside "<namespace>.": refused, naming the rule and the default policy.
    let outside = testenv::unique_name("orders");
    t.apply_ok(
        ns,
        &t.topic("outside", &format!("  topicName: {outside}\n")),
    );
    let refused = t
        .wait_reason::<KafkaTopic>(ns, "outside", "PolicyViolation")
        .await;
    assert!(
        refused.message.contains("topicPrefixes")
            && refused.message.contains("\"namespaced\"")
            && refused.message.contains(&format!("\"{ns}.\"")),
        "{}",
        refused.message
    );
    assert!(t.admin.describe_topic(&outside).await.unwrap().is_none());

    // Inside: created, and its own consumers may be granted.
    let inside = format!("{ns}.orders");
    t.apply_ok(
        ns,
        &t.topic(
            "inside",
            &format!(
                "  topicName: {inside}\n  access:\n  - principal: User:pubsubkafka.{ns}.reader\n    \
                 operations: [Read]\n"
            ),
        ),
    );
    t.wait_reason::<KafkaTopic>(ns, "inside", "Reconciled")
        .await;

    // A principal of no namespace needs a policy.
    let gateway = testenv::unique_name("User:gateway");
    t.apply_ok(
        ns,
        &t.topic(
            "granting",
            &format!(
                "  topicName: {ns}.users\n  access:\n  - principal: {gateway}\n    operations: [Write]\n"
            ),
        ),
    );
    let refused = t
        .wait_reason::<KafkaTopic>(ns, "granting", "PolicyViolation")
        .await;
    assert!(
        refused.message.contains("principals"),
        "{}",
        refused.message
    );
    assert!(t.acls_of(&gateway).await.is_empty());

    // The consumer's default group id ("<namespace>.<name>") complies; another does not.
    t.apply_ok(ns, &t.consumer("reader", "inside", ""));
    t.wait_reason::<OrderConsumer>(ns, "reader", "Reconciled")
        .await;
    t.apply_ok(
        ns,
        &t.consumer("stray", "inside", "  groupId: shared.orders\n"),
    );
    let refused = t
        .wait_reason::<OrderConsumer>(ns, "stray", "PolicyViolation")
        .await;
    assert!(
        refused.message.contains("groupIdPrefixes"),
        "{}",
        refused.message
    );
    assert!(
        t.acls_of(&format!("User:pubsubkafka.{ns}.stray"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_policy_allowing_a_prefix_lets_the_namespace_create_and_adopt_under_it() {
    let t = tenants(DefaultAccessPolicy::Namespaced).await;
    let ns = &t.attacker;
    let prefix = testenv::unique_name("billing");
    let gateway = format!("User:{}", testenv::unique_name("gateway"));
    let existing = format!("{prefix}.invoices");
    t.admin
        .create_topic(&existing, 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    eventually("the existing topic", WAIT, || async {
        t.admin
            .describe_topic(&existing)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_owned())
    })
    .await;
    let before = t.fill(&existing).await;

    // Refused before the policy exists...
    let created = format!("{prefix}.payments");
    t.apply_ok(
        ns,
        &t.topic(
            "payments",
            &format!(
                "  topicName: {created}\n  access:\n  - principal: {gateway}\n    operations: [Write]\n"
            ),
        ),
    );
    t.wait_reason::<KafkaTopic>(ns, "payments", "PolicyViolation")
        .await;

    // ...and created once a policy allows the prefix and the principal.
    let policy_name = testenv::unique_name("policy");
    let policy = format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaAccessPolicy\nmetadata:\n  name: \
         {policy_name}\nspec:\n  namespaceSelector:\n    matchLabels: \
         {{kubernetes.io/metadata.name: {ns}}}\n  topicPrefixes: ['{prefix}.']\n  principals: \
         ['{gateway}']\n  groupIdPrefixes: ['{prefix}.']\n"
    );
    t.kube
        .kubectl_with_stdin(&["apply", "-f", "-"], &policy)
        .unwrap_or_else(|e| panic!("{e}"));
    t.wait_reason::<KafkaTopic>(ns, "payments", "Reconciled")
        .await;
    t.acls_when(&gateway, "the allowed principal granted", |acls| {
        acls.iter().any(|a| a.name == created)
    })
    .await;

    // Adopting under the prefix works, with the opt-in; the records stay.
    t.apply_ok(
        ns,
        &t.topic(
            "invoices",
            &format!("  topicName: {existing}\n  adopt: true\n"),
        ),
    );
    t.wait_reason::<KafkaTopic>(ns, "invoices", "Reconciled")
        .await;
    let after = t.topic_state(&existing).await;
    assert_eq!((after.id, after.records), (before.id, before.records));

    // The policy replaced the default: "<namespace>." names now need it too.
    t.apply_ok(
        ns,
        &t.topic("own-prefix", &format!("  topicName: {ns}.orders\n")),
    );
    let refused = t
        .wait_reason::<KafkaTopic>(ns, "own-prefix", "PolicyViolation")
        .await;
    assert!(
        refused
            .message
            .contains(&format!("KafkaAccessPolicy {policy_name}")),
        "{}",
        refused.message
    );

    // The API server checks the policy itself.
    let bad = policy
        .replace(&format!("name: {policy_name}"), "name: bad-policy")
        .replace(
            &format!("['{prefix}.']\n  principals"),
            "['__internal']\n  principals",
        );
    let refused = t
        .kube
        .kubectl_with_stdin(&["apply", "-f", "-"], &bad)
        .expect_err("a policy allowing __ names must be refused");
    assert!(refused.contains("spec.topicPrefixes"), "{refused}");
    let policies: Api<KafkaAccessPolicy> = Api::all(t.client.clone());
    policies
        .delete(&policy_name, &DeleteParams::default())
        .await
        .unwrap();
}
