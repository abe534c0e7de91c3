//! Smoke tests of the local stack: each real component does what later tests rely on.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn create_topic(admin: &AdminClient<DefaultClientContext>, name: &str, partitions: i32) {
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
    }
}

#[tokio::test]
async fn kafka_round_trips_a_record_over_sasl_ssl_with_scram() {
    let kafka = &testenv::shared().kafka;
    let topic = testenv::unique_name("smoke-roundtrip");
    let admin: AdminClient<DefaultClientContext> =
        kafka.admin_config().create().expect("admin client");
    create_topic(&admin, &topic, 3).await;

    let producer: FutureProducer = kafka
        .admin_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/json"),
    });
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("order-1")
                .payload(r#"{"order_id":"order-1"}"#)
                .headers(headers),
            TIMEOUT,
        )
        .await
        .expect("delivery acknowledged by the broker");

    let consumer: StreamConsumer = kafka
        .admin_config()
        .set("group.id", testenv::unique_name("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(TIMEOUT, consumer.stream().next())
        .await
        .expect("a record within the timeout")
        .expect("stream open")
        .expect("no consume error");
    assert_eq!(message.partition(), delivery.partition);
    assert_eq!(message.offset(), delivery.offset);
    assert_eq!(message.key(), Some(&b"order-1"[..]));
    assert_eq!(message.payload(), Some(&br#"{"order_id":"order-1"}"#[..]));
    let header = message.headers().expect("headers").get(0);
    assert_eq!(header.key, "content-type");
    assert_eq!(header.value, Some(&b"application/json"[..]));
}

#[tokio::test]
async fn kafka_authorizer_denies_a_principal_without_acls() {
    let kafka = &testenv::shared().kafka;
    let topic = testenv::unique_name("smoke-denied");
    let admin: AdminClient<DefaultClientContext> =
        kafka.admin_config().create().expect("admin client");
    create_topic(&admin, &topic, 1).await;

    // `guest` authenticates fine but has no ACL: the authorizer must refuse the write.
    let producer: FutureProducer = kafka
        .sasl_config(&kafka.guest.username, &kafka.guest.password)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let denied = producer
        .send(FutureRecord::to(&topic).key("k").payload("v"), TIMEOUT)
        .await
        .expect_err("a principal without ACLs must not write");
    assert!(
        matches!(
            denied.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)
        ),
        "expected TopicAuthorizationFailed, got {:?}",
        denied.0
    );

    // A wrong password does not even authenticate.
    let consumer: StreamConsumer = kafka
        .sasl_config(&kafka.admin.username, "not-the-password")
        .set("group.id", "smoke-bad-password")
        .create()
        .expect("consumer");
    let err = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(5))
        .expect_err("a wrong password must not log in");
    assert!(
        !format!("{err:?}").is_empty(),
        "the login failure carries a reason"
    );
}

#[tokio::test]
async fn kube_client_from_the_harness_kubeconfig_writes_and_reads_objects() {
    let kube = &testenv::shared().kube;
    let client = kube.client().await.expect("client from kubeconfig");
    let ns = testenv::unique_name("smoke");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("smoke".into()),
            ..Default::default()
        },
        data: Some([("answer".to_owned(), "42".to_owned())].into()),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let read = config_maps.get("smoke").await.expect("read configmap");
    assert_eq!(read.data.unwrap()["answer"], "42");

    // kubectl sees the same object.
    let out = kube
        .kubectl()
        .args([
            "get",
            "configmap",
            "smoke",
            "-n",
            &ns,
            "-o=jsonpath={.data.answer}",
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42");
}

#[tokio::test]
async fn kube_rbac_is_enforced_for_a_service_account_token() {
    let kube = &testenv::shared().kube;
    let admin = kube.client().await.expect("client from kubeconfig");
    let ns = testenv::unique_name("smoke-rbac");
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("create service account");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = accounts
        .create_subresource("token", "nobody", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = token
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");

    // The admin's cluster settings with the token instead of the admin's client certificate.
    let kubeconfig = kube::config::Kubeconfig::read_from(&kube.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let as_nobody = kube::Client::try_from(config).expect("token client");
    let err = Api::<ConfigMap>::namespaced(as_nobody, &ns)
        .list(&ListParams::default())
        .await
        .expect_err("a service account without a role must be forbidden");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn postgres_inserts_and_reads_a_row() {
    let pg = &testenv::shared().postgres;
    let db = pg.fresh_database("smoke").await.expect("fresh database");
    let client = pg.connect(&db).await.expect("connect");
    client
        .batch_execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, total NUMERIC NOT NULL)")
        .await
        .expect("create table");
    client
        .execute(
            "INSERT INTO orders (order_id, total) VALUES ($1, $2::TEXT::NUMERIC)",
            &[&"order-1", &"99.90"],
        )
        .await
        .expect("insert");
    let row = client
        .query_one("SELECT order_id, total::TEXT FROM orders", &[])
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "order-1");
    assert_eq!(row.get::<_, String>(1), "99.90");
}
