//! Fault injection against the real stack: a broker lost under gateway load on a 3-node
//! cluster, an API server restart under the operator, and a sweep of malformed records and
//! manifests. Each test asserts that nothing acknowledged is lost and prints its counts.
//! `make test-faults` runs these with the other fault tests (SIGKILLed workers, a PostgreSQL
//! outage, a Kafka outage under the operator) and the fuzz targets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use pubsubkafka_controller::crd::KafkaTopic;
use pubsubkafka_controller::kafka::KafkaAdmin;
use pubsubkafka_worker::headers as h;
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testenv::eventually;
use testenv::operator::{self, Operator};
use testenv::worker::{self, WorkerProcess};

const WAIT: Duration = Duration::from_secs(90);

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// One client thread of the load: posts orders `<prefix>-<n>` until told to stop and records
/// each answer.
fn post_until(
    gateway_port: u16,
    prefix: String,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(String, u16)>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}-{n}");
        n += 1;
        let status = worker::http_request(
            gateway_port,
            "POST",
            "/orders",
            &[JSON],
            &worker::order_request(&id),
        )
        .map(|(status, _)| status)
        .unwrap_or(0);
        answers.lock().unwrap().push((id, status));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn fault_three_brokers_lose_one_under_gateway_load_and_refuse_with_two_down() {
    let stack = testenv::shared();
    let kafka_dir = tempfile::tempdir().unwrap();
    let mut kafka =
        testenv::Kafka::start(kafka_dir.path(), 3, testenv::Lifetime::Owned).expect("3 nodes");
    let orders = testenv::unique_name("ha-orders");
    let isr2 = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    let kafka_admin = kafka.info.kafka_admin();
    kafka_admin
        .create_topic(&orders, 3, 3, &isr2)
        .await
        .unwrap();
    kafka_admin
        .create_topic(&format!("{orders}-dlq"), 3, 3, &isr2)
        .await
        .unwrap();
    // The broker that answers can trail the commit of the topic it just created.
    let described = eventually("the topic", Duration::from_secs(30), || async {
        kafka_admin
            .describe_topic(&orders)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not yet".to_owned())
    })
    .await;
    assert_eq!(described.partition_count(), 3);

    let dir = tempfile::tempdir().unwrap();
    let gateway = worker::start_gateway(
        dir.path(),
        "gateway",
        &kafka.info,
        &orders,
        "users",
        &["--delivery-timeout", "10s"],
    );
    gateway.wait_ready().await;

    // Load from 6 clients; one broker is SIGKILLed while it runs.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (stop, answers) = (Arc::clone(&stop), Arc::clone(&answers));
            let port = gateway.http_port;
            std::thread::spawn(move || post_until(port, format!("ha-{c}"), stop, answers))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_kill = answers.lock().unwrap().len();
    kafka.kill_node(0);
    // Long enough for the controller to fence the dead broker and move its leaders.
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let accepted: BTreeSet<String> = answers
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(id, _)| id.clone())
        .collect();
    let refused = answers.iter().filter(|(_, s)| *s == 503).count();
    let other: Vec<&(String, u16)> = answers
        .iter()
        .filter(|(_, s)| *s != 202 && *s != 503)
        .collect();
    assert!(other.is_empty(), "only 202 or 503: {other:?}");
    let accepted_after_kill = answers[before_kill..]
        .iter()
        .filter(|(_, s)| *s == 202)
        .count();
    assert!(
        accepted_after_kill > 0,
        "the gateway kept accepting with two of three brokers"
    );

    // Every 202 order is stored by a worker reading the two surviving brokers.
    let pg = &stack.postgres;
    let db_name = pg.fresh_database("ha").await.unwrap();
    let db = pg.connect(&db_name).await.unwrap();
    let config = worker::config(
        &kafka.info,
        &orders,
        &testenv::unique_name("ha"),
        worker::event_store(dir.path(), &pg.database_url(&db_name)),
    );
    let store = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let ids = eventually("every accepted order stored", WAIT, || async {
        store.check_alive()?;
        let rows = db
            .query("SELECT order_id FROM orders", &[])
            .await
            .map_err(|e| e.to_string())?;
        let ids: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing = accepted.difference(&ids).count();
        (missing == 0).then_some(ids).ok_or(format!(
            "{missing} of {} accepted orders missing",
            accepted.len()
        ))
    })
    .await;
    let (rows, distinct) = worker::stored(&db).await;
    assert_eq!(rows, distinct, "an order stored twice");
    println!(
        "one broker of 3 SIGKILLed under load: {} requests, {} accepted (202; {accepted_after_kill} \
         after the kill), {refused} refused (503); {} of {} accepted orders stored, {} stored \
         orders were answered 503 (written after the delivery timeout)",
        answers.len(),
        accepted.len(),
        accepted.intersection(&ids).count(),
        accepted.len(),
        ids.difference(&accepted).count(),
    );

    // Two brokers down: below min ISR 2 nothing may be acknowledged.
    kafka.kill_node(1);
    let posts: Vec<_> = (0..6)
        .map(|i| {
            let port = gateway.http_port;
            std::thread::spawn(move || {
                let id = format!("down-{i}");
                let answer = worker::http_request(
                    port,
                    "POST",
                    "/orders",
                    &[JSON],
                    &worker::order_request(&id),
                );
                (id, answer)
            })
        })
        .collect();
    let mut refused_down = 0;
    for p in posts {
        let (id, answer) = p.join().unwrap();
        match answer {
            Ok((503, _)) => refused_down += 1,
            other => panic!("{id} with two brokers down: {other:?}, expected 503"),
        }
    }
    println!("two brokers of 3 down: {refused_down} of 6 orders refused with 503, 0 accepted");
    drop(store);
    drop(gateway);
}

/// `kubectl apply` of `yaml` in namespace `ns` of the API server `kube`.
fn kubectl_apply(kube: &testenv::KubeInfo, ns: &str, yaml: &str) -> Result<String, String> {
    kube.kubectl_with_stdin(&["apply", "-n", ns, "-f", "-"], yaml)
}

fn topic_yaml(name: &str, partitions: i32) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\nspec:\n  \
         partitions: {partitions}\n  replicationFactor: 1\n  deletionPolicy: Delete\n"
    )
}

/// Waits until KafkaTopic `name` is Ready for its generation with `partitions` in Kafka.
async fn wait_topic(topics: &Api<KafkaTopic>, kafka: &KafkaAdmin, name: &str, partitions: i32) {
    eventually(
        &format!("{name} Ready with {partitions} partitions"),
        WAIT,
        || async {
            let t = topics.get(name).await.map_err(|e| e.to_string())?;
            let status = t.status.clone().unwrap_or_default();
            let fresh = status.observed_generation == t.metadata.generation;
            let actual = kafka
                .describe_topic(name)
                .await
                .map_err(|e| e.to_string())?
                .map(|d| d.partition_count());
            (t.is_ready() && fresh && actual == Some(partitions))
                .then_some(())
                .ok_or(format!(
                    "ready {}, fresh {fresh}, {actual:?} partitions",
                    t.is_ready()
                ))
        },
    )
    .await;
}

#[tokio::test]
async fn fault_the_operator_converges_after_an_api_server_restart() {
    let stack = testenv::shared();
    let kube_dir = tempfile::tempdir().unwrap();
    let mut api =
        testenv::KubeApi::start(kube_dir.path(), testenv::Lifetime::Owned).expect("own API server");
    let client = api.info.client().await.unwrap();
    operator::install_crds(&client).await;
    let ns = testenv::unique_name("apirestart");
    operator::create_namespace(&client, &ns).await;
    let op = Operator::start(
        &api.info,
        operator::args(&stack.kafka, &ns, Duration::from_secs(3)),
    )
    .await;
    let topics: Api<KafkaTopic> = Api::namespaced(client.clone(), &ns);
    let kafka = stack.kafka.kafka_admin();
    let before = testenv::unique_name("before");
    kubectl_apply(&api.info, &ns, &topic_yaml(&before, 1)).unwrap();
    wait_topic(&topics, &kafka, &before, 1).await;

    api.stop_apiserver();
    // The operator's watches fail and retry meanwhile; Kafka changes out of band are noticed
    // once the API server is back.
    kafka
        .create_partitions(&before, 2)
        .await
        .expect("partitions added behind the operator's back");
    tokio::time::sleep(Duration::from_secs(15)).await;
    api.restart_apiserver().expect("the API server restarts");

    // Changes made after the restart reach Kafka: the operator reconnected by itself.
    let after = testenv::unique_name("after");
    kubectl_apply(&api.info, &ns, &topic_yaml(&after, 2)).unwrap();
    kubectl_apply(&api.info, &ns, &topic_yaml(&before, 3)).unwrap();
    wait_topic(&topics, &kafka, &after, 2).await;
    wait_topic(&topics, &kafka, &before, 3).await;
    let status = topics.get(&before).await.unwrap().status.unwrap();
    assert_eq!(status.partitions, Some(3));
    println!(
        "API server down 15 s under the operator: 2 of 2 topics converged after the restart \
         (one created, one grown 2 -> 3)"
    );
    op.stop().await.expect("the operator was still running");
    for name in [&before, &after] {
        let _ = kafka.delete_topic(name).await;
    }
}

/// A record value with the content type header `content_type` (none when `None`).
async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
    content_type: Option<&str>,
) {
    let mut headers = OwnedHeaders::new().insert(Header {
        key: h::CORRELATION_ID,
        value: Some(&format!("corr-{key}")),
    });
    if let Some(ct) = content_type {
        headers = headers.insert(Header {
            key: h::CONTENT_TYPE,
            value: Some(ct),
        });
    }
    let mut record = FutureRecord::to(topic).key(key).headers(headers);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("the broker acknowledged the record");
}

/// One malformed record of the sweep: key, value, content type, expected error class.
type Malformed = (String, Option<Vec<u8>>, Option<&'static str>, &'static str);

/// The malformed records of the sweep.
fn malformed_corpus() -> Vec<Malformed> {
    use serde_json::{Value, json};
    const JSON_CT: Option<&str> = Some("application/json");
    let valid = serde_json::to_vec(&pubsubkafka_worker::order::sample("valid", 0)).unwrap();
    let base: Value = serde_json::from_slice(&valid).unwrap();
    let mut corpus = Vec::new();
    let mut add = |key: String, value: Option<Vec<u8>>, ct, class| {
        corpus.push((key, value, ct, class));
    };
    // Truncated JSON at several cut points.
    for cut in [1, 10, valid.len() / 3, valid.len() / 2, valid.len() - 1] {
        add(
            format!("truncated-{cut}"),
            Some(valid[..cut].to_vec()),
            JSON_CT,
            "Deserialization",
        );
    }
    // Wrong types.
    let edit = |key: &str, f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        (key.to_owned(), serde_json::to_vec(&v).unwrap())
    };
    let wrong_types = [
        edit("quantity-string", &|v| {
            v["items"][0]["quantity"] = json!("two")
        }),
        edit("price-object", &|v| {
            v["items"][0]["unit_price"] = json!({"eur": 1})
        }),
        edit("items-object", &|v| v["items"] = json!({"sku": "x"})),
        edit("order-id-number", &|v| v["order_id"] = json!(12345)),
        edit("customer-null", &|v| v["customer_info"] = Value::Null),
        edit("event-array", &|v| *v = json!([1, 2, 3])),
        edit("unknown-field", &|v| v["surprise"] = json!(true)),
    ];
    // Missing fields, one at a time.
    let missing: Vec<(String, Vec<u8>)> = base
        .as_object()
        .unwrap()
        .keys()
        .map(|field| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            (format!("missing-{field}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    for (key, value) in wrong_types.into_iter().chain(missing) {
        add(key, Some(value), JSON_CT, "Deserialization");
    }
    // Huge values.
    let text = String::from_utf8(valid.clone()).unwrap();
    let at = text.find("\"quantity\":").expect("an item quantity") + "\"quantity\":".len();
    let end = at + text[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let huge_number = format!("{}99999999999999999999999999{}", &text[..at], &text[end..]);
    add(
        "quantity-overflow".into(),
        Some(huge_number.into_bytes()),
        JSON_CT,
        "Deserialization",
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    add(
        "nested-100k-deep".into(),
        Some(deep.into_bytes()),
        JSON_CT,
        "Deserialization",
    );
    let mut long_email = base.clone();
    long_email["customer_info"]["email"] = json!(format!("{}@example.com", "a".repeat(900_000)));
    add(
        "email-900k".into(),
        Some(serde_json::to_vec(&long_email).unwrap()),
        JSON_CT,
        "Validation",
    );
    let mut many_items = base.clone();
    let item = many_items["items"][0].clone();
    many_items["items"] = Value::Array(vec![item; 20_000]);
    add(
        "items-20k".into(),
        Some(serde_json::to_vec(&many_items).unwrap()),
        JSON_CT,
        "Validation",
    );
    // Invalid UTF-8 inside a string, and an unpaired surrogate escape.
    let mut bad_utf8 = valid.clone();
    let at = bad_utf8
        .windows(5)
        .position(|w| w == b"valid")
        .expect("the order id is in the value");
    bad_utf8[at] = 0xff;
    add(
        "utf8-in-string".into(),
        Some(bad_utf8),
        JSON_CT,
        "Deserialization",
    );
    add(
        "lone-surrogate".into(),
        Some(
            String::from_utf8(valid.clone())
                .unwrap()
                .replacen("valid", "\\ud800", 1)
                .into_bytes(),
        ),
        JSON_CT,
        "Deserialization",
    );
    // 2 MiB records: whitespace, and an order padded past the limit.
    add(
        "spaces-2mib".into(),
        Some(vec![b' '; 2 * 1024 * 1024]),
        JSON_CT,
        "Validation",
    );
    let mut padded = base.clone();
    padded["customer_info"]["name"] = json!("x".repeat(2 * 1024 * 1024));
    add(
        "order-2mib".into(),
        Some(serde_json::to_vec(&padded).unwrap()),
        JSON_CT,
        "Validation",
    );
    // Framing: no value at all, an empty value, an unknown content type, Protobuf garbage.
    add("tombstone".into(), None, JSON_CT, "Deserialization");
    add("empty".into(), Some(Vec::new()), JSON_CT, "Deserialization");
    add(
        "text-plain".into(),
        Some(valid.clone()),
        Some("text/plain"),
        "Deserialization",
    );
    add(
        "protobuf-garbage".into(),
        Some(vec![0xff; 64]),
        Some("application/x-protobuf"),
        "Deserialization",
    );
    add(
        "json-as-protobuf".into(),
        Some(valid),
        Some("application/x-protobuf"),
        "Deserialization",
    );
    corpus
}

#[tokio::test]
async fn fault_a_corpus_of_malformed_records_is_dead_lettered_without_a_crash_or_stall() {
    let stack = testenv::shared();
    let topic = testenv::unique_name("sweep");
    let big = BTreeMap::from([("max.message.bytes".to_owned(), "4194304".to_owned())]);
    let kafka = stack.kafka.kafka_admin();
    kafka.create_topic(&topic, 2, 1, &big).await.unwrap();
    kafka
        .create_topic(&format!("{topic}-dlq"), 2, 1, &big)
        .await
        .unwrap();
    let db_name = stack.postgres.fresh_database("sweep").await.unwrap();
    let db = stack.postgres.connect(&db_name).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("sweep"),
        worker::event_store(dir.path(), &stack.postgres.database_url(&db_name)),
    );
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    let corpus = malformed_corpus();
    let valid = worker::orders("sweep", 300);

    // Valid orders before, between and after the malformed ones: none may stall behind them.
    worker::produce(&producer, &topic, &valid[..100]).await;
    let (first, second) = corpus.split_at(corpus.len() / 2);
    for (key, value, ct, _) in first {
        produce_raw(&producer, &topic, key, value.as_deref(), *ct).await;
    }
    worker::produce(&producer, &topic, &valid[100..200]).await;
    for (key, value, ct, _) in second {
        produce_raw(&producer, &topic, key, value.as_deref(), *ct).await;
    }
    worker::produce(&producer, &topic, &valid[200..]).await;

    worker::wait_stored(&db, 300, &worker).await;
    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), corpus.len(), WAIT).await;
    let classes: BTreeMap<String, String> = dead
        .iter()
        .map(|m| {
            (
                worker::key_of(m),
                h::get(m.headers(), h::DLQ_ERROR_CLASS)
                    .unwrap_or("(none)")
                    .to_owned(),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (key, value, _, class) in &corpus {
        let Some(m) = dead.iter().find(|m| worker::key_of(m) == *key) else {
            wrong.push(format!("{key}: not dead-lettered"));
            continue;
        };
        if classes[key] != *class {
            wrong.push(format!("{key}: {} instead of {class}", classes[key]));
        }
        let kept =
            m.payload() == value.as_deref() || h::get(m.headers(), h::DLQ_VALUE_OMITTED).is_some();
        if !kept {
            wrong.push(format!("{key}: value changed in the dead letter"));
        }
        if h::get(m.headers(), h::DLQ_ATTEMPTS) != Some("1") {
            wrong.push(format!("{key}: retried although permanent"));
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed records not handled as the contract says:\n{}",
        wrong.join("\n")
    );
    assert_eq!(dead.len(), corpus.len(), "each dead-lettered once");
    worker.check_alive().expect("no crash");
    assert_eq!(worker.get("/readyz").unwrap().0, 200, "still ready");
    let by_class = classes.values().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.clone()).or_insert(0) += 1;
        m
    });
    println!(
        "bad input sweep: {} malformed records, {} dead-lettered ({by_class:?}); 300 valid \
         orders around them, 300 stored; worker alive and ready",
        corpus.len(),
        dead.len()
    );
}

#[tokio::test]
async fn fault_malformed_manifests_are_refused_naming_the_field_and_the_operator_carries_on() {
    let env = testenv::scenario::Scenario::new("badmanifests").await;
    let name = testenv::unique_name("fine");
    let header = "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: bad\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{header}spec:\n  partitions: many\n  replicationFactor: 1\n"),
            "spec.partitions",
        ),
        (
            format!("{header}spec:\n  partitions: 1000000000000\n  replicationFactor: 1\n"),
            "spec.partitions",
        ),
        (
            format!("{header}spec:\n  partitions: 1\n  replicationFactor: 1\n  surprise: 1\n"),
            "spec.surprise",
        ),
        (
            format!("{header}spec:\n  partitions: 1\n  replicationFactor: [1]\n"),
            "spec.replicationFactor",
        ),
        (
            format!(
                "{header}spec:\n  partitions: 1\n  replicationFactor: 1\n  config: \
                 {{retention.ms: {{nested: 1}}}}\n"
            ),
            "spec.config",
        ),
        (
            format!(
                "{header}spec:\n  partitions: 1\n  replicationFactor: 1\n  topicName: \"{}\"\n",
                "t".repeat(300)
            ),
            "spec.topicName",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             maxRetries: -1\n"
                .to_owned(),
            "spec.maxRetries",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: DLQPolicy\nmetadata:\n  name: bad\nspec:\n  \
             backoff:\n    multiplier: \"fast\"\n"
                .to_owned(),
            "spec.backoff.multiplier",
        ),
        (
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: bad\n\
             spec:\n  topicRef: {name: orders}\n  replicas: -3\n  handler:\n    http: {url: \
             ftp://example.com}\n"
                .to_owned(),
            "spec.",
        ),
    ];
    let mut refused = 0;
    for (yaml, field) in &cases {
        let err = env
            .kubectl_apply(yaml)
            .expect_err(&format!("refused: {yaml}"));
        assert!(err.contains(field), "expected {field} in: {err}");
        refused += 1;
    }
    // Nothing of it reached the operator: a good resource still reconciles.
    env.apply_ok(&topic_yaml(&name, 1));
    let topics: Api<KafkaTopic> = Api::namespaced(env.client.clone(), &env.ns);
    wait_topic(&topics, &env.admin, &name, 1).await;
    println!(
        "malformed manifests: {refused} of {} refused by the API server naming the field; the \
         operator reconciled the next good one",
        cases.len()
    );
    let _ = env.admin.delete_topic(&name).await;
}
