//! OrderGateway on the stack's real node: the operator (in-process, watching one namespace)
//! gives each gateway a principal, a Deployment of the worker image, a Service and a
//! PodDisruptionBudget; the kubelet runs and probes the pods, kube-proxy routes the Service.
//! Every check reads the real system: pods from the API, ACLs and logins from Kafka, orders from
//! PostgreSQL.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pubsubkafka_controller::crd::OrderGateway;
use pubsubkafka_controller::crd::conditions;
use pubsubkafka_controller::kafka::AclFilter;
use pubsubkafka_controller::rotation::Credentialed;
use testenv::cluster;
use testenv::operator::{self, Operator};
use testenv::{KafkaInfo, StackInfo, eventually, worker};

mod argocd;

const PODS: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(120);

/// A namespace with the operator watching it, as pods would see Kafka `kafka`.
struct Shop {
    stack: &'static StackInfo,
    client: kube::Client,
    ns: String,
    topic: String,
    /// The operator watching the namespace; `None` while a test has it killed.
    operator: Option<Operator>,
}

impl Shop {
    async fn new(prefix: &str, kafka: &KafkaInfo) -> Self {
        let stack = testenv::shared();
        cluster::require_images(stack);
        let client = stack.kube.client().await.expect("client");
        operator::install_crds(&client).await;
        let ns = testenv::unique_name(prefix);
        operator::create_namespace(&client, &ns).await;
        let operator = Operator::start(
            &stack.kube,
            operator::node_args(kafka, &ns, Duration::from_secs(3)),
        )
        .await;
        Self {
            stack,
            client,
            topic: format!("{ns}.orders"),
            ns,
            operator: Some(operator),
        }
    }

    fn apply(&self, yaml: &str) {
        self.stack
            .kube
            .kubectl_with_stdin(&["apply", "-n", &self.ns, "-f", "-"], yaml)
            .unwrap_or_else(|e| panic!("kubectl apply failed: {e}\n{yaml}"));
    }

    fn gateways(&self) -> Api<OrderGateway> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// KafkaTopic `orders` (topic `<ns>.orders`, 3 partitions) and OrderGateway
    /// `orders-gateway` with `spec`.
    fn apply_gateway(&self, spec: &str) {
        self.apply(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
             spec:\n  topicName: {topic}\n  partitions: 3\n  replicationFactor: 1\n---\n\
             apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderGateway\nmetadata: {{name: orders-gateway}}\n\
             spec:\n  topicRef: {{name: orders}}\n{spec}",
            topic = self.topic,
        ));
    }

    /// Waits until the gateway reports Ready with `replicas` and exactly that many of its pods
    /// are Running and Ready on the node.
    async fn ready_gateway(&self, replicas: usize) -> OrderGateway {
        let gateway = eventually("the gateway Ready", PODS, || async {
            let g = self
                .gateways()
                .get("orders-gateway")
                .await
                .map_err(|e| e.to_string())?;
            let status = g.status.clone().ok_or("no status yet")?;
            (conditions::is_ready(&status.conditions)
                && status.ready_replicas == Some(replicas as i32)
                && status.observed_generation == g.metadata.generation)
                .then_some(g)
                .ok_or_else(|| format!("{:?}", status.conditions))
        })
        .await;
        let selector = gateway.status.as_ref().unwrap().selector.clone().unwrap();
        cluster::wait_pods_ready(&self.client, &self.ns, &selector, replicas, PODS).await;
        gateway
    }

    /// The Service's ClusterIP and port, answering /readyz.
    async fn service_address(&self, name: &str) -> String {
        let spec = Api::<Service>::namespaced(self.client.clone(), &self.ns)
            .get(name)
            .await
            .expect("the gateway Service")
            .spec
            .unwrap();
        let address = format!(
            "{}:{}",
            spec.cluster_ip.unwrap(),
            spec.ports.unwrap()[0].port
        );
        eventually("the Service answering", WAIT, || async {
            match worker::http_request_at(&address, "GET", "/readyz", &[], b"") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        address
    }

    /// A fresh PostgreSQL database and the Secret `secret` holding its URL (key `url`) as pods
    /// reach it; returns the database's name.
    async fn database_secret(&self, secret: &str, prefix: &str) -> String {
        let postgres = &self.stack.postgres;
        let database = postgres.fresh_database(prefix).await.unwrap();
        let url = postgres.database_url_for_pods(&database).unwrap();
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}}}\nstringData:\n  url: {url}\n"
        ));
        database
    }

    /// Starts the operator again (after a test killed it).
    async fn restart_operator(&mut self, kafka: &KafkaInfo) {
        self.operator = Some(
            Operator::start(
                &self.stack.kube,
                operator::node_args(kafka, &self.ns, Duration::from_secs(3)),
            )
            .await,
        );
    }

    /// The gateway's password, from the credentials Secret the operator wrote.
    async fn password(&self, secret: &str) -> String {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get(secret)
            .await
            .expect("the credentials Secret");
        String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stack.kube.drop_namespace(&self.ns);
    }
}

/// The ACLs of `principal` in Kafka, as `Resource name Operation` lines.
async fn acls_of(kafka: &KafkaInfo, principal: &str) -> Vec<String> {
    let mut acls: Vec<String> = kafka
        .kafka_admin()
        .describe_acls(&AclFilter {
            principal: Some(principal.to_owned()),
            ..AclFilter::default()
        })
        .await
        .expect("describe ACLs")
        .into_iter()
        .map(|a| format!("{:?} {} {:?}", a.resource, a.name, a.operation))
        .collect();
    acls.sort();
    acls
}

/// Posts `count` orders to `address`; returns their ids, all answered 202.
fn post_orders(address: &str, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let (status, body) = worker::http_request_at(
                address,
                "POST",
                "/orders",
                &[("Content-Type", "application/json")],
                &worker::order_request(&id),
            )
            .expect("the gateway answers");
            assert_eq!(status, 202, "order {id}: {body}");
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_runs_as_pods_behind_its_service_with_a_write_only_principal() {
    let stack = testenv::shared();
    let shop = Shop::new("gateway", &stack.kafka).await;
    // Its orders are stored by an OrderConsumer, as in the seed architecture.
    let database = shop.database_secret("orders-db", "gw").await;
    shop.apply_gateway("  replicas: 2\n");
    shop.apply(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {name: order-store}\n\
         spec:\n  topicRef: {name: orders}\n  replicas: 1\n  handler:\n    eventStore:\n      \
         connectionSecret: {name: orders-db, key: url}\n",
    );
    // What a person or a pipeline would run.
    shop.stack
        .kube
        .kubectl_with_stdin(
            &[
                "wait",
                "--for=condition=Ready",
                "ordergateway/orders-gateway",
                "-n",
                &shop.ns,
                "--timeout=180s",
            ],
            "",
        )
        .expect("kubectl wait for the gateway Ready");
    let gateway = shop.ready_gateway(2).await;
    // Argo CD's health check (docs/argocd-health.lua) on the real object.
    let (health, message) = argocd::health(&gateway);
    assert_eq!(health, "Healthy", "{message}");
    let status = gateway.status.unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::DEGRADED)
        .expect("a Degraded condition");
    assert_eq!(degraded.status, "False");
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://orders-gateway.{}.svc/orders", shop.ns).as_str())
    );
    let principal = format!("User:pubsubkafka.{}.orders-gateway", shop.ns);
    assert_eq!(status.principal.as_deref(), Some(principal.as_str()));

    // A POST through the Service is stored by the consumer, once.
    let address = shop.service_address("orders-gateway").await;
    let ids = post_orders(&address, "gw", 20);
    let db = stack.postgres.connect(&database).await.unwrap();
    eventually("the orders stored", WAIT, || async {
        let (rows, distinct) = worker::stored(&db).await;
        (rows == ids.len() as i64 && distinct == rows)
            .then_some(())
            .ok_or(format!("{rows} rows, {distinct} distinct"))
    })
    .await;
    // The route of the other domain is not served.
    let (status_code, body) = worker::http_request_at(
        &address,
        "POST",
        "/users",
        &[("Content-Type", "application/json")],
        br#"{"name": "n", "email": "n@example.com", "country": "FR"}"#,
    )
    .unwrap();
    assert_eq!(status_code, 404, "{body}");
    assert!(body.contains("/orders"), "{body}");

    // Exactly WRITE and DESCRIBE on its topic; the broker refuses anything else.
    assert_eq!(
        acls_of(&stack.kafka, &principal).await,
        [
            format!("Topic {} Describe", shop.topic),
            format!("Topic {} Write", shop.topic)
        ]
    );
    let user = principal.trim_start_matches("User:");
    let password = shop.password("orders-gateway-kafka-credentials").await;
    stack
        .kafka
        .produce_as(user, &password, &shop.topic)
        .await
        .expect("the gateway's principal writes its topic");
    let other = format!("{}.other", shop.ns);
    stack
        .kafka
        .kafka_admin()
        .create_topic(&other, 1, 1, &Default::default())
        .await
        .unwrap();
    let refused = stack
        .kafka
        .produce_as(user, &password, &other)
        .await
        .expect_err("writing another topic is denied");
    assert!(
        format!("{refused:?}").contains("Authorization"),
        "{refused:?}"
    );
    let reader: rdkafka::consumer::BaseConsumer = stack
        .kafka
        .sasl_config(user, &password)
        .set("group.id", format!("{}.thief", shop.ns))
        .create()
        .unwrap();
    let topic = shop.topic.clone();
    let read = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        reader.assign(&assignment).unwrap();
        match reader.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => "read a record".to_owned(),
            Some(Err(e)) => format!("{e:?}"),
            None => "nothing".to_owned(),
        }
    })
    .await
    .unwrap();
    assert!(read.contains("Authorization"), "reading its topic: {read}");
    stack
        .kafka
        .kafka_admin()
        .delete_topic(&other)
        .await
        .unwrap();

    // Scale to 3 and back through the scale subresource, as an HPA does.
    for replicas in [3, 1] {
        shop.gateways()
            .patch_scale(
                "orders-gateway",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        shop.ready_gateway(replicas as usize).await;
    }

    // Deleted: the principal and its ACLs leave Kafka; its objects go with it (GC).
    shop.gateways()
        .delete("orders-gateway", &DeleteParams::default())
        .await
        .unwrap();
    let admin = stack.kafka.kafka_admin();
    testenv::kafka::principal_gone(&admin, user).await;
    let deployments: Api<Deployment> = Api::namespaced(shop.client.clone(), &shop.ns);
    eventually("the Deployment collected", WAIT, || async {
        match deployments.get_opt("orders-gateway").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|d| d.is_some()))),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_an_outbox_gateway_publishes_what_it_accepted_while_the_broker_was_down() {
    // A broker of its own, to stop: the shared one serves every other test.
    let dir = tempfile::tempdir().unwrap();
    let mut kafka =
        testenv::Kafka::start_with(dir.path(), 1, testenv::Lifetime::Owned, true).unwrap();
    let shop = Shop::new("gw-outbox", &kafka.info).await;
    shop.database_secret("gateway-db", "outbox").await;
    shop.apply_gateway(
        "  replicas: 1\n  outbox:\n    connectionSecret: {name: gateway-db, key: url}\n",
    );
    let gateway = shop.ready_gateway(1).await;
    assert_eq!(gateway.status.unwrap().relay_ready_replicas, Some(1));
    let address = shop.service_address("orders-gateway").await;
    let before = post_orders(&address, "before", 5);

    kafka.stop();
    // Accepted: the gateway writes to PostgreSQL, not to the broker.
    let during = post_orders(&address, "during", 10);
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.restart().unwrap();

    let expected = before.len() + during.len();
    let records = worker::read_all(&kafka.info, &shop.topic, expected, WAIT).await;
    let mut keys: Vec<String> = records.iter().map(worker::key_of).collect();
    keys.sort();
    let mut wanted: Vec<String> = before.into_iter().chain(during).collect();
    wanted.sort();
    assert_eq!(keys, wanted, "every accepted order published once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_and_a_gateway_of_one_name_never_share_a_principal() {
    let stack = testenv::shared();
    let shop = Shop::new("gw-clash", &stack.kafka).await;
    shop.apply_gateway("  replicas: 0\n");
    eventually("the gateway reconciled", WAIT, || async {
        let g = shop
            .gateways()
            .get("orders-gateway")
            .await
            .map_err(|e| e.to_string())?;
        g.status
            .as_ref()
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == conditions::RECONCILED && c.status == "True")
            })
            .then_some(())
            .ok_or(format!("{:?}", g.status))
    })
    .await;
    let principal = format!("User:pubsubkafka.{}.orders-gateway", shop.ns);
    // Kafka answers ACL describes from the broker's metadata, which can trail the write.
    let gateway_acls = eventually("the gateway's 2 ACLs", WAIT, || async {
        let acls = acls_of(&stack.kafka, &principal).await;
        (acls.len() == 2)
            .then_some(acls.clone())
            .ok_or(format!("{acls:?}"))
    })
    .await;

    // A consumer named like the gateway, created later: it is refused and touches nothing.
    shop.apply(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {name: orders-gateway}\n\
         spec:\n  topicRef: {name: orders}\n  replicas: 0\n  handler:\n    http:\n      url: http://x.example/\n",
    );
    let consumers: Api<pubsubkafka_controller::crd::OrderConsumer> =
        Api::namespaced(shop.client.clone(), &shop.ns);
    eventually("the consumer refused", WAIT, || async {
        let c = consumers
            .get("orders-gateway")
            .await
            .map_err(|e| e.to_string())?;
        let ready = c
            .status
            .as_ref()
            .and_then(|s| conditions::ready(&s.conditions).cloned());
        ready
            .filter(|r| r.status == "False" && r.reason == "ResourceConflict")
            .map(|r| assert!(r.message.contains("OrderGateway"), "{}", r.message))
            .ok_or(format!("{:?}", c.status))
    })
    .await;
    // Several passes later the gateway's ACLs are still exactly its own.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(acls_of(&stack.kafka, &principal).await, gateway_acls);
    // Deleting the refused consumer leaves the gateway's principal alone.
    consumers
        .delete("orders-gateway", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the consumer gone", WAIT, || async {
        match consumers.get_opt("orders-gateway").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|c| c.is_some()))),
        }
    })
    .await;
    assert_eq!(acls_of(&stack.kafka, &principal).await, gateway_acls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_and_a_gateway_applied_together_leave_one_holder() {
    let stack = testenv::shared();
    let shop = Shop::new("gw-race", &stack.kafka).await;
    // One manifest, so both are usually created within the same second (creation timestamps
    // count whole seconds) and reconciled side by side.
    shop.apply(&format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata: {{name: orders}}\n\
         spec:\n  topicName: {topic}\n  partitions: 3\n  replicationFactor: 1\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderGateway\nmetadata: {{name: orders-twin}}\n\
         spec:\n  topicRef: {{name: orders}}\n  replicas: 0\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {{name: orders-twin}}\n\
         spec:\n  topicRef: {{name: orders}}\n  replicas: 0\n  handler:\n    http:\n      url: http://x.example/\n",
        topic = shop.topic,
    ));
    let consumers: Api<pubsubkafka_controller::crd::OrderConsumer> =
        Api::namespaced(shop.client.clone(), &shop.ns);
    let secrets: Api<Secret> = Api::namespaced(shop.client.clone(), &shop.ns);
    let refused = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions::ready(c).is_some_and(|r| r.status == "False" && r.reason == "ResourceConflict")
    };
    // Exactly one is refused, naming the other, and the credentials Secret is the other's.
    let (holder, loser) = eventually("one holder, one refused", WAIT, || async {
        let gateway = shop
            .gateways()
            .get("orders-twin")
            .await
            .map_err(|e| e.to_string())?;
        let consumer = consumers
            .get("orders-twin")
            .await
            .map_err(|e| e.to_string())?;
        let gateway_refused = gateway
            .status
            .as_ref()
            .is_some_and(|s| refused(&s.conditions));
        let consumer_refused = consumer
            .status
            .as_ref()
            .is_some_and(|s| refused(&s.conditions));
        let secret = secrets
            .get_opt("orders-twin-kafka-credentials")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no credentials Secret yet")?;
        let controller = secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.controller == Some(true))
            .ok_or("the Secret has no controller")?;
        match (gateway_refused, consumer_refused, controller.kind.as_str()) {
            (true, false, "OrderConsumer") => Ok(("OrderConsumer", "OrderGateway")),
            (false, true, "OrderGateway") => Ok(("OrderGateway", "OrderConsumer")),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let principal = format!("User:pubsubkafka.{}.orders-twin", shop.ns);
    let acls = eventually("the holder's ACLs", WAIT, || async {
        let acls = acls_of(&stack.kafka, &principal).await;
        // A gateway writes and describes its topic; a consumer reads it, writes and describes
        // its dead-letter topic and reads its group.
        let wanted = if holder == "OrderGateway" { 2 } else { 5 };
        (acls.len() == wanted)
            .then_some(acls.clone())
            .ok_or(format!("{acls:?}"))
    })
    .await;
    let reads_a_group = acls.iter().any(|a| a.starts_with("Group"));
    assert_eq!(
        reads_a_group,
        holder == "OrderConsumer",
        "{holder}: {acls:?}"
    );
    // Several passes later nothing changed hands.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        acls_of(&stack.kafka, &principal).await,
        acls,
        "{holder} kept"
    );
    // Deleting the refused one leaves the holder's principal alone.
    match loser {
        "OrderGateway" => {
            shop.gateways()
                .delete("orders-twin", &DeleteParams::default())
                .await
                .unwrap();
        }
        _ => {
            consumers
                .delete("orders-twin", &DeleteParams::default())
                .await
                .unwrap();
        }
    }
    eventually("the refused one gone", WAIT, || async {
        let gone = match loser {
            "OrderGateway" => shop
                .gateways()
                .get_opt("orders-twin")
                .await
                .map(|g| g.is_none()),
            _ => consumers.get_opt("orders-twin").await.map(|c| c.is_none()),
        };
        gone.map_err(|e| e.to_string())?
            .then_some(())
            .ok_or_else(|| format!("{loser} still there"))
    })
    .await;
    assert_eq!(acls_of(&stack.kafka, &principal).await, acls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_bad_gateways_naming_the_field() {
    let stack = testenv::shared();
    let shop = Shop::new("gw-bad", &stack.kafka).await;
    let gateway = |spec: &str| {
        format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderGateway\nmetadata: {{name: bad}}\n\
             spec:\n  topicRef: {{name: orders}}\n{spec}"
        )
    };
    for (spec, field) in [
        ("  domain: Payments\n", "spec.domain"),
        ("  replicas: -1\n", "spec.replicas"),
        ("  service: {type: ExternalName}\n", "spec.service.type"),
        ("  service: {port: 70000}\n", "spec.service.port"),
        ("  limits: {maxBodyBytes: 10}\n", "spec.limits.maxBodyBytes"),
        (
            "  limits: {maxOrdersPerRequest: 5000}\n",
            "spec.limits.maxOrdersPerRequest",
        ),
        (
            "  outbox: {connectionSecret: {name: db}, relayReplicas: 0}\n",
            "spec.outbox.relayReplicas",
        ),
        (
            "  tracing: {otlpEndpoint: 'collector:4318'}\n",
            "spec.tracing.otlpEndpoint",
        ),
        ("", ""),
    ] {
        let yaml = gateway(spec);
        let result = shop
            .stack
            .kube
            .kubectl_with_stdin(&["apply", "-n", &shop.ns, "-f", "-"], &yaml);
        if field.is_empty() {
            result.unwrap_or_else(|e| panic!("the plain gateway is accepted: {e}"));
            continue;
        }
        let err = result.expect_err(&format!("refused: {yaml}"));
        assert!(err.contains(field), "expected {field} in: {err}");
    }
    // The API server fills in the defaults, so GitOps tools see no drift.
    let stored = shop.gateways().get("bad").await.unwrap();
    assert_eq!(stored.spec.replicas, 2);
    assert_eq!(stored.spec.service.port, 80);
    assert_eq!(stored.spec.limits.max_orders_per_request, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_pods_crash_is_degraded_and_argo_cd_says_so() {
    let stack = testenv::shared();
    let shop = Shop::new("gw-crash", &stack.kafka).await;
    // An outbox database nobody listens on: the gateway exits at start, again and again.
    shop.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: gateway-db}\nstringData:\n  \
         url: postgres://nobody:x@127.0.0.1:1/none?connect_timeout=2\n",
    );
    shop.apply_gateway(
        "  replicas: 1\n  outbox:\n    connectionSecret: {name: gateway-db, key: url}\n",
    );
    let gateway = eventually("the gateway Degraded", PODS, || async {
        let g = shop
            .gateways()
            .get("orders-gateway")
            .await
            .map_err(|e| e.to_string())?;
        let conditions = g
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        conditions
            .iter()
            .any(|c| {
                c.type_ == conditions::DEGRADED
                    && c.status == "True"
                    && c.reason == "WorkerCrashLooping"
            })
            .then_some(g)
            .ok_or(format!("{conditions:?}"))
    })
    .await;
    let ready = conditions::ready(&gateway.status.as_ref().unwrap().conditions)
        .unwrap()
        .clone();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("gateway"), "{}", ready.message);
    let (health, message) = argocd::health(&gateway);
    assert_eq!(health, "Degraded", "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_operator_killed_while_creating_a_gateway_converges_after_a_restart() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let stack = testenv::shared();
    let mut shop = Shop::new("gw-killed", &stack.kafka).await;
    shop.database_secret("gateway-db", "killed").await;
    shop.apply_gateway(
        "  replicas: 1\n  outbox:\n    connectionSecret: {name: gateway-db, key: url}\n",
    );
    let principal = format!("User:pubsubkafka.{}.orders-gateway", shop.ns);
    let user = principal.trim_start_matches("User:").to_owned();
    let admin = stack.kafka.kafka_admin();
    let secrets: Api<Secret> = Api::namespaced(shop.client.clone(), &shop.ns);
    let deployments: Api<Deployment> = Api::namespaced(shop.client.clone(), &shop.ns);
    let services: Api<Service> = Api::namespaced(shop.client.clone(), &shop.ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(shop.client.clone(), &shop.ns);

    // Killed (its task aborted, as a SIGKILL would end it) as soon as the first of the
    // gateway's objects, its credentials Secret, appears: the SCRAM user, ACLs, Deployments,
    // Service and budget come after it in the pass.
    let deadline = std::time::Instant::now() + WAIT;
    while secrets
        .get_opt("orders-gateway-kafka-credentials")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no credentials Secret within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(shop.operator.take());
    let exists = |found: bool| if found { "present" } else { "absent" };
    let at_kill = [
        ("SCRAM user", admin.scram_user_exists(&user).await.unwrap()),
        ("ACLs", !acls_of(&stack.kafka, &principal).await.is_empty()),
        (
            "gateway Deployment",
            deployments
                .get_opt("orders-gateway")
                .await
                .unwrap()
                .is_some(),
        ),
        (
            "Service",
            services.get_opt("orders-gateway").await.unwrap().is_some(),
        ),
        (
            "PodDisruptionBudget",
            budgets.get_opt("orders-gateway").await.unwrap().is_some(),
        ),
        (
            "relay Deployment",
            deployments
                .get_opt("orders-gateway-relay")
                .await
                .unwrap()
                .is_some(),
        ),
    ];
    println!(
        "killed with: {}",
        at_kill
            .iter()
            .map(|(what, found)| format!("{what} {}", exists(*found)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Started again: it finishes what the first one left.
    shop.restart_operator(&stack.kafka).await;
    let gateway = shop.ready_gateway(1).await;
    let status = gateway.status.unwrap();
    assert_eq!(status.relay_ready_replicas, Some(1));
    assert_eq!(status.principal.as_deref(), Some(principal.as_str()));

    // One principal, with exactly its ACLs, and the only one on the topic.
    assert_eq!(
        acls_of(&stack.kafka, &principal).await,
        [
            format!("Topic {} Describe", shop.topic),
            format!("Topic {} Write", shop.topic)
        ]
    );
    let on_topic: std::collections::BTreeSet<String> = admin
        .describe_acls(&AclFilter {
            resource: Some((
                pubsubkafka_controller::kafka::ResourceKind::Topic,
                shop.topic.clone(),
            )),
            ..AclFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.principal)
        .collect();
    assert_eq!(on_topic, [principal.clone()].into());
    assert!(admin.scram_user_exists(&user).await.unwrap());
    // The credential in Kafka is the one in the Secret: the principal writes its topic.
    let password = shop.password("orders-gateway-kafka-credentials").await;
    stack
        .kafka
        .produce_as(&user, &password, &shop.topic)
        .await
        .expect("the Secret's password logs in and may write the topic");

    // One set of objects, each once.
    let selector = "pubsubkafka.io/gateway=orders-gateway";
    let listed = kube::api::ListParams::default().labels(selector);
    let names = |items: Vec<String>| {
        let mut items = items;
        items.sort();
        items
    };
    assert_eq!(
        names(
            deployments
                .list(&listed)
                .await
                .unwrap()
                .items
                .iter()
                .map(|d| d.metadata.name.clone().unwrap())
                .collect()
        ),
        ["orders-gateway", "orders-gateway-relay"]
    );
    for (kind, found) in [
        (
            "Service",
            services
                .list(&listed)
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| o.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
        ),
        (
            "PodDisruptionBudget",
            budgets
                .list(&listed)
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| o.metadata.name.clone().unwrap())
                .collect(),
        ),
    ] {
        assert_eq!(found, ["orders-gateway"], "{kind}");
    }
    assert_eq!(
        secrets
            .list(&listed)
            .await
            .unwrap()
            .items
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["orders-gateway-kafka-credentials"]
    );
    // Exactly the wanted pods run: one gateway pod (ready_gateway counted it) and one relay.
    cluster::wait_pods_ready(
        &shop.client,
        &shop.ns,
        "pubsubkafka.io/gateway=orders-gateway,app.kubernetes.io/name=pubsubkafka-relay",
        1,
        PODS,
    )
    .await;

    // Deleted: the principal and its ACLs leave Kafka.
    shop.gateways()
        .delete("orders-gateway", &DeleteParams::default())
        .await
        .unwrap();
    testenv::kafka::principal_gone(&admin, &user).await;
    eventually("the Deployments collected", WAIT, || async {
        let left = deployments
            .list(&listed)
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        (left == 0).then_some(()).ok_or(format!("{left} left"))
    })
    .await;
    println!(
        "restarted: one principal with its 2 ACLs, one set of objects, Ready; removed on delete"
    );
}

/// Whether `user` with `password` passes SASL authentication (a metadata request needs nothing
/// more).
async fn logs_in(kafka: &KafkaInfo, user: &str, password: &str) -> Result<(), String> {
    let client: rdkafka::producer::BaseProducer = kafka
        .sasl_config(user, password)
        .create()
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        client
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

/// An OrderConsumer or an OrderGateway, read from the API server.
trait Workload:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Credentialed
{
}

impl<K> Workload for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Credentialed
{
}

/// The username, password and rotation record of a workload, as its Secret and status say.
async fn credential_of<K: Workload>(
    shop: &Shop,
    name: &str,
    secret: &str,
) -> (String, String, Option<String>) {
    let object = Api::<K>::namespaced(shop.client.clone(), &shop.ns)
        .get(name)
        .await
        .expect("the workload");
    let data = Api::<Secret>::namespaced(shop.client.clone(), &shop.ns)
        .get(secret)
        .await
        .expect("the credentials Secret")
        .data
        .unwrap();
    let field = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    let request = object
        .credentials_status()
        .and_then(|c| c.rotation_request.clone());
    (field("username"), field("password"), request)
}

/// Waits until workload `name` of kind `K` has finished rotating for annotation value
/// `request`: a new username in use, the old one retired, CredentialsRotating False.
async fn rotated<K: Workload>(shop: &Shop, name: &str, request: &str, from: &str) -> String {
    let api = Api::<K>::namespaced(shop.client.clone(), &shop.ns);
    eventually(
        "the rotation to finish",
        Duration::from_secs(300),
        || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            let credentials = object
                .credentials_status()
                .cloned()
                .ok_or("no status.credentials")?;
            (credentials.rotation_request.as_deref() == Some(request)
                && credentials.retiring_user.is_none()
                && credentials.last_rotation.is_some()
                && credentials.active_user != from)
                .then(|| credentials.active_user.clone())
                .ok_or(format!("{credentials:?}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_twice_under_load_without_losing_an_order() {
    use pubsubkafka_controller::crd::OrderConsumer;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let stack = testenv::shared();
    let mut shop = Shop::new("rotate", &stack.kafka).await;
    let database = shop.database_secret("orders-db", "rot").await;
    shop.apply_gateway("  replicas: 2\n  credentials: {rotation: 720h}\n");
    shop.apply(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata: {name: order-store}\n\
         spec:\n  topicRef: {name: orders}\n  replicas: 2\n  credentials: {rotation: 720h}\n  \
         handler:\n    eventStore:\n      connectionSecret: {name: orders-db, key: url}\n",
    );
    shop.ready_gateway(2).await;
    shop.stack
        .kube
        .kubectl_with_stdin(
            &[
                "wait",
                "--for=condition=Ready",
                "orderconsumer/order-store",
                "-n",
                &shop.ns,
                "--timeout=180s",
            ],
            "",
        )
        .expect("kubectl wait for the consumer Ready");
    let address = shop.service_address("orders-gateway").await;

    // Steady load through the Service for the whole test: every 202 is remembered.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let load = {
        let (stop, acknowledged, refused) = (stop.clone(), acknowledged.clone(), refused.clone());
        let address = address.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("rot-{i}");
                i += 1;
                match worker::http_request_at(
                    &address,
                    "POST",
                    "/orders",
                    &[("Content-Type", "application/json")],
                    &worker::order_request(&id),
                ) {
                    Ok((202, _)) => acknowledged.lock().unwrap().push(id),
                    // A pod going away may drop a request; it is not acknowledged.
                    other => {
                        eprintln!(
                            "{} order {id} not acknowledged: {other:?}",
                            jiff::Timestamp::now()
                        );
                        *refused.lock().unwrap() += 1
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let admin = stack.kafka.kafka_admin();
    for round in ["1", "2"] {
        let (gateway_user, gateway_password, _) = credential_of::<OrderGateway>(
            &shop,
            "orders-gateway",
            "orders-gateway-kafka-credentials",
        )
        .await;
        let (consumer_user, consumer_password, _) =
            credential_of::<OrderConsumer>(&shop, "order-store", "order-store-kafka-credentials")
                .await;
        let before = acknowledged.lock().unwrap().len();
        eprintln!("{} round {round} starts", jiff::Timestamp::now());
        for kind in ["ordergateway/orders-gateway", "orderconsumer/order-store"] {
            shop.stack
                .kube
                .kubectl_with_stdin(
                    &[
                        "annotate",
                        "--overwrite",
                        "-n",
                        &shop.ns,
                        kind,
                        &format!("pubsubkafka.io/rotate-credentials={round}"),
                    ],
                    "",
                )
                .expect("kubectl annotate");
        }
        if round == "2" {
            // The operator killed mid-rotation, once the rotation is recorded: a new one
            // resumes it.
            let gateways = shop.gateways();
            eventually("the rotation recorded", WAIT, || async {
                let g = gateways
                    .get("orders-gateway")
                    .await
                    .map_err(|e| e.to_string())?;
                g.credentials_status()
                    .and_then(|c| c.retiring_user.clone())
                    .ok_or_else(|| format!("{:?}", g.credentials_status()))
            })
            .await;
            drop(shop.operator.take());
            tokio::time::sleep(Duration::from_secs(2)).await;
            shop.restart_operator(&stack.kafka).await;
        }
        let new_gateway =
            rotated::<OrderGateway>(&shop, "orders-gateway", round, &gateway_user).await;
        let new_consumer =
            rotated::<OrderConsumer>(&shop, "order-store", round, &consumer_user).await;
        eprintln!(
            "round {round}: gateway {gateway_user} -> {new_gateway}, consumer {consumer_user} -> \
             {new_consumer}; {} orders acknowledged meanwhile",
            acknowledged.lock().unwrap().len() - before
        );
        // The new credentials work and the Secrets name them; the old ones are gone.
        let (user, password, request) = credential_of::<OrderGateway>(
            &shop,
            "orders-gateway",
            "orders-gateway-kafka-credentials",
        )
        .await;
        assert_eq!(
            (user.as_str(), request.as_deref()),
            (new_gateway.as_str(), Some(round))
        );
        assert_ne!(password, gateway_password);
        logs_in(&stack.kafka, &user, &password)
            .await
            .expect("the new gateway credential logs in");
        for (old, old_password) in [
            (&gateway_user, &gateway_password),
            (&consumer_user, &consumer_password),
        ] {
            // Retired before the status said so; the broker's copy of the metadata may take
            // a moment to drop it.
            eventually(
                "the old credential retired",
                Duration::from_secs(15),
                || async {
                    let exists = admin
                        .scram_user_exists(old)
                        .await
                        .map_err(|e| e.to_string())?;
                    let acls = acls_of(&stack.kafka, &format!("User:{old}")).await;
                    let login = logs_in(&stack.kafka, old, old_password).await;
                    (!exists && acls.is_empty() && login.is_err())
                        .then_some(())
                        .ok_or(format!(
                            "{old}: exists {exists}, ACLs {acls:?}, login {login:?}"
                        ))
                },
            )
            .await;
        }
        // The consumer's new username holds what the old one held.
        assert_eq!(
            acls_of(&stack.kafka, &format!("User:{new_consumer}"))
                .await
                .len(),
            5
        );
        let consumer = Api::<OrderConsumer>::namespaced(shop.client.clone(), &shop.ns)
            .get("order-store")
            .await
            .unwrap();
        let status = consumer.status.unwrap();
        assert_eq!(
            status.principal.as_deref(),
            Some(format!("User:{new_consumer}").as_str())
        );
        let rotating = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::CREDENTIALS_ROTATING)
            .expect("a CredentialsRotating condition");
        assert_eq!(
            (rotating.status.as_str(), rotating.reason.as_str()),
            ("False", "Rotated")
        );
        assert!(
            status.credentials.unwrap().next_rotation.is_some(),
            "720h ahead"
        );
        // Orders go on being acknowledged through the new pods.
        let acked = || acknowledged.lock().unwrap().len();
        eventually("orders acknowledged after the rotation", WAIT, || async {
            (acked() > before)
                .then_some(())
                .ok_or("no order acknowledged since the round began".to_owned())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    // Every acknowledged order is stored, once; nothing was dead-lettered.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let db = stack.postgres.connect(&database).await.unwrap();
    eventually("every acknowledged order stored", WAIT, || async {
        let rows = db
            .query("SELECT order_id FROM orders", &[])
            .await
            .map_err(|e| e.to_string())?;
        let stored: std::collections::BTreeSet<String> =
            rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let missing = acknowledged
            .iter()
            .filter(|id| !stored.contains(*id))
            .count();
        (missing == 0).then_some(()).ok_or(format!(
            "{missing} of {} acknowledged orders not stored",
            acknowledged.len()
        ))
    })
    .await;
    let (rows, distinct) = worker::stored(&db).await;
    assert_eq!(rows, distinct);
    eprintln!(
        "{} orders acknowledged, {rows} stored, {} requests not acknowledged",
        acknowledged.len(),
        refused.lock().unwrap()
    );
    worker::assert_no_dead_letters(&stack.kafka, &format!("{}-dlq", shop.topic), "rotation").await;
}
