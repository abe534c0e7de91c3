//! The gateway, the outbox relay and dead-letter replay as processes, against real Kafka
//! (SASL_SSL) and real PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use pubsubkafka_controller::kafka::KafkaAdmin;
use pubsubkafka_worker::config::{HandlerConfig, RetryPolicy};
use pubsubkafka_worker::headers as h;
use pubsubkafka_worker::order::OrderEvent;
use rdkafka::Message;
use serde_json::{Value, json};
use testenv::worker::{self, WorkerProcess, kafka_args, start_gateway};
use testenv::{KafkaInfo, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn admin(kafka: &KafkaInfo) -> KafkaAdmin {
    KafkaAdmin::new(
        &kafka.admin_connection().client_config().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap()
}

async fn topic(kafka: &KafkaInfo, prefix: &str, partitions: i32) -> String {
    let name = testenv::unique_name(prefix);
    admin(kafka)
        .create_topic(&name, partitions, 1, &BTreeMap::new())
        .await
        .unwrap();
    name
}

async fn ready(process: &WorkerProcess) {
    process.wait_ready().await;
}

/// The database URL in a private file, as the worker reads it.
fn database_url_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let file = dir.join("database-url");
    testenv::write_private(&file, url).unwrap();
    file
}

/// `outbox-relay` on the database in `url_file`, with `extra` flags.
fn start_relay(
    dir: &std::path::Path,
    kafka: &KafkaInfo,
    url_file: &std::path::Path,
    extra: &[&str],
) -> WorkerProcess {
    let port = testenv::free_port().unwrap();
    let mut args = vec![
        "outbox-relay".to_owned(),
        "--database-url-file".into(),
        url_file.display().to_string(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(kafka_args(kafka));
    WorkerProcess::run(dir, "relay", args, port).unwrap()
}

fn order_body(order_id: &str) -> Vec<u8> {
    worker::order_request(order_id)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[tokio::test]
async fn an_accepted_order_is_already_in_kafka_with_its_key_and_headers() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-orders", 3).await;
    let users = topic(&stack.kafka, "gw-users", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path(), "gateway", &stack.kafka, &orders, &users, &[]);
    ready(&gateway).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, body) = gateway
        .post(
            "/orders",
            &[
                JSON,
                ("X-Correlation-ID", "req-42"),
                ("traceparent", traceparent),
            ],
            &order_body("gw-1"),
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["order_id"], "gw-1");
    assert_eq!(answer["correlation_id"], "req-42");
    let (partition, offset) = (
        answer["partition"].as_i64().unwrap() as i32,
        answer["offset"].as_i64().unwrap(),
    );

    // Readable at once: 202 came after the broker's acknowledgement.
    let records = worker::read_all(&stack.kafka, &orders, 1, Duration::from_secs(10)).await;
    let record = &records[0];
    assert_eq!((record.partition(), record.offset()), (partition, offset));
    assert_eq!(worker::key_of(record), "gw-1");
    let hs = record.headers();
    assert_eq!(h::get(hs, h::CONTENT_TYPE), Some("application/json"));
    assert_eq!(h::get(hs, h::CORRELATION_ID), Some("req-42"));
    let tp = h::parse_traceparent(h::get(hs, h::TRACEPARENT).unwrap()).unwrap();
    assert_eq!(
        tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace continues"
    );
    assert_ne!(
        tp.span_id, "00f067aa0ba902b7",
        "under the gateway's own span"
    );
    let event: OrderEvent = serde_json::from_slice(record.payload().unwrap()).unwrap();
    assert_eq!(event.metadata.correlation_id, "req-42");
    assert_eq!(event.metadata.span_id, tp.span_id);
    assert!(
        event.validate().is_empty(),
        "the enriched event is a complete ECST order"
    );

    // An order without an id gets one.
    let (status, body) = gateway
        .post("/orders", &[JSON], &order_body("x").replace_order_id())
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let minted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(minted["order_id"].as_str().unwrap().len(), 36);

    let (status, body) = gateway
        .post("/users", &[JSON], br#"{"user_id": "u-1", "name": "Grace", "email": "grace@example.com", "country": "US"}"#)
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let user = &worker::read_all(&stack.kafka, &users, 1, Duration::from_secs(10)).await[0];
    assert_eq!(worker::key_of(user), "u-1");

    let acked = gateway.metric(
        "kafka_producer_messages_total",
        &[("topic", orders.as_str()), ("outcome", "acked")],
    );
    assert_eq!(acked, 2.0);
    assert!(
        gateway.metric(
            "http_request_duration_seconds_count",
            &[("route", "/orders"), ("status", "202")]
        ) >= 2.0
    );
}

/// A JSON array of orders with these ids.
fn orders_array(ids: &[&str]) -> Vec<u8> {
    let orders: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::from_slice(&order_body(id)).unwrap())
        .collect();
    serde_json::to_vec(&orders).unwrap()
}

#[tokio::test]
async fn an_array_of_orders_is_accepted_once_every_order_is_in_kafka() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-array", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path(), "gateway", &stack.kafka, &orders, "users", &[]);
    ready(&gateway).await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("many-{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let (status, body) = gateway
        .post("/orders", &[JSON], &orders_array(&too_many))
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"field\":\"(body)\""), "{body}");

    let ids: Vec<String> = (0..50).map(|i| format!("arr-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (status, body) = gateway
        .post(
            "/orders",
            &[JSON, ("X-Correlation-ID", "bulk-7")],
            &orders_array(&ids),
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let placed = answer["orders"].as_array().unwrap();
    assert_eq!(placed.len(), ids.len());
    let mut expected = BTreeMap::new();
    for (item, id) in placed.iter().zip(&ids) {
        assert_eq!(item["order_id"], *id, "answers in request order");
        assert_eq!(item["correlation_id"], "bulk-7");
        let at = (
            item["partition"].as_i64().unwrap() as i32,
            item["offset"].as_i64().unwrap(),
        );
        expected.insert(at, id.to_string());
    }

    // Every order is readable at once, where the answer placed it, with its key and headers.
    let records = worker::read_all(&stack.kafka, &orders, ids.len(), Duration::from_secs(10)).await;
    assert_eq!(records.len(), ids.len());
    for record in &records {
        let key = worker::key_of(record);
        assert_eq!(
            expected.get(&(record.partition(), record.offset())),
            Some(&key),
            "{key} is where the answer said"
        );
        let hs = record.headers();
        assert_eq!(h::get(hs, h::CORRELATION_ID), Some("bulk-7"));
        assert_eq!(h::get(hs, h::CONTENT_TYPE), Some("application/json"));
        let event: OrderEvent = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(event.order_id, key);
        assert!(event.validate().is_empty());
    }
    assert_eq!(
        gateway.metric(
            "kafka_producer_messages_total",
            &[("topic", orders.as_str()), ("outcome", "acked")],
        ),
        ids.len() as f64,
        "the refused array produced nothing"
    );
}

/// Removes `order_id` from a JSON order body.
trait ReplaceOrderId {
    fn replace_order_id(self) -> Vec<u8>;
}

impl ReplaceOrderId for Vec<u8> {
    fn replace_order_id(self) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&self).unwrap();
        v.as_object_mut().unwrap().remove("order_id");
        serde_json::to_vec(&v).unwrap()
    }
}

#[tokio::test]
async fn bad_requests_get_a_4xx_naming_the_field_and_produce_nothing() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-bad", 1).await;
    let users = topic(&stack.kafka, "gw-bad-users", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(
        dir.path(),
        "gateway",
        &stack.kafka,
        &orders,
        &users,
        &["--max-body-bytes", "65536"],
    );
    ready(&gateway).await;

    let mut missing_email: Value = serde_json::from_slice(&order_body("o-1")).unwrap();
    missing_email["customer_info"]
        .as_object_mut()
        .unwrap()
        .remove("email");
    let mut zero_quantity: Value = serde_json::from_slice(&order_body("o-2")).unwrap();
    zero_quantity["items"][0]["quantity"] = json!(0);
    zero_quantity["customer_info"]["shipping_address"]["country"] = json!("France");
    // (path, headers, body, expected status, fields the answer must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            "/orders",
            vec![JSON],
            b"{\"customer_info\": ".to_vec(),
            400,
            vec![],
        ),
        (
            "/orders",
            vec![("Content-Type", "text/plain")],
            order_body("o-3"),
            415,
            vec![],
        ),
        ("/orders", vec![JSON], vec![b' '; 100_000], 413, vec![]),
        (
            "/orders",
            vec![JSON],
            serde_json::to_vec(&missing_email).unwrap(),
            422,
            vec!["customer_info"],
        ),
        (
            "/orders",
            vec![JSON],
            serde_json::to_vec(&zero_quantity).unwrap(),
            422,
            vec![
                "items[0].quantity",
                "customer_info.shipping_address.country",
            ],
        ),
        // An array is refused whole when one order is invalid, naming it by index.
        (
            "/orders",
            vec![JSON],
            serde_json::to_vec(&json!([
                serde_json::from_slice::<Value>(&order_body("a-1")).unwrap(),
                zero_quantity,
            ]))
            .unwrap(),
            422,
            vec!["[1].items[0].quantity"],
        ),
        (
            "/orders",
            vec![JSON],
            b" [ {\"items\": 3} ]".to_vec(),
            422,
            vec!["[0].items"],
        ),
        ("/orders", vec![JSON], b"[]".to_vec(), 422, vec!["(body)"]),
        (
            "/users",
            vec![JSON],
            br#"{"name": "x", "email": "nope", "country": "fr"}"#.to_vec(),
            422,
            vec!["email", "country"],
        ),
    ];
    for (path, headers, body, expected, fields) in cases {
        let (status, answer) = gateway.post(path, &headers, &body).unwrap();
        assert_eq!(status, expected, "{path}: {answer}");
        for field in fields {
            assert!(
                answer.contains(&format!("\"field\":\"{field}\"")),
                "{field} not named in {answer}"
            );
        }
    }
    let ends = admin(&stack.kafka).end_offsets(&orders, 1).await.unwrap();
    assert_eq!(ends[&0], 0, "nothing was produced");
    assert_eq!(
        admin(&stack.kafka).end_offsets(&users, 1).await.unwrap()[&0],
        0
    );
}

/// A broker outage answers 503 within the delivery timeout and accepts nothing. A producer that
/// acknowledged none of its sends for a whole delivery timeout is replaced (with the broker down
/// every send fails, so the rule must fire); after the restart the new producer accepts orders,
/// and every order answered 202 is in Kafka.
#[tokio::test]
async fn fault_a_broker_outage_answers_503_replaces_the_producer_and_recovers() {
    let kafka_dir = tempfile::tempdir().unwrap();
    let mut kafka = testenv::Kafka::start(kafka_dir.path(), 1, testenv::Lifetime::Owned).unwrap();
    let orders = topic(&kafka.info, "gw-outage", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(
        dir.path(),
        "gateway",
        &kafka.info,
        &orders,
        "users",
        &["--delivery-timeout", "3s"],
    );
    ready(&gateway).await;
    let replacements = |gateway: &WorkerProcess| {
        gateway.metric(
            "pubsubkafka_producer_replacements_total",
            &[("reason", "undelivered")],
        )
    };
    let (status, _) = gateway
        .post("/orders", &[JSON], &order_body("before"))
        .unwrap();
    assert_eq!(status, 202);
    assert_eq!(replacements(&gateway), 0.0, "a working producer is kept");

    kafka.stop();
    let started = std::time::Instant::now();
    let array = orders_array(&["during-a", "during-b"]);
    let ((status, body), (array_status, array_body)) = std::thread::scope(|s| {
        let one = s.spawn(|| {
            gateway
                .post("/orders", &[JSON], &order_body("during"))
                .unwrap()
        });
        let many = s.spawn(|| gateway.post("/orders", &[JSON], &array).unwrap());
        (one.join().unwrap(), many.join().unwrap())
    });
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered after the delivery timeout"
    );
    assert!(body.contains("nothing was accepted"));
    assert_eq!(array_status, 503, "{array_body}");
    let answer: Value = serde_json::from_str(&array_body).unwrap();
    for (i, id) in ["during-a", "during-b"].iter().enumerate() {
        let item = &answer["orders"][i];
        assert_eq!(item["order_id"], *id, "{array_body}");
        assert!(
            item["error"]
                .as_str()
                .unwrap()
                .contains("nothing was accepted"),
            "each order says it was not accepted: {array_body}"
        );
    }

    let mut refused = 0;
    eventually("a new producer", WAIT, || {
        let (status, body) = gateway
            .post(
                "/orders",
                &[JSON],
                &order_body(&format!("during-{refused}")),
            )
            .unwrap();
        refused += 1;
        let replaced = replacements(&gateway);
        async move {
            assert_eq!(
                status, 503,
                "nothing is accepted while the broker is down: {body}"
            );
            (replaced >= 1.0)
                .then_some(())
                .ok_or(format!("{replaced} replacements"))
        }
    })
    .await;
    assert!(
        gateway
            .log_text()
            .contains("acknowledged none of its sends: starting a new one"),
        "the replacement is logged"
    );

    kafka.restart().unwrap();
    eventually("202 from the new producer", WAIT, || async {
        match gateway.post("/orders", &[JSON], &order_body("after-0")) {
            Ok((202, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut accepted: BTreeSet<String> = ["before".to_owned(), "after-0".to_owned()].into();
    for i in 1..20 {
        let id = format!("after-{i}");
        let (status, body) = gateway.post("/orders", &[JSON], &order_body(&id)).unwrap();
        assert_eq!(status, 202, "{body}");
        accepted.insert(id);
    }
    let records = worker::read_all(&kafka.info, &orders, accepted.len(), WAIT).await;
    let keys: BTreeSet<String> = records.iter().map(worker::key_of).collect();
    assert!(
        accepted.is_subset(&keys),
        "every 202 order is in Kafka: missing {:?}",
        accepted.difference(&keys).collect::<Vec<_>>()
    );
    gateway.check_alive().unwrap();
}

/// The case the relay met, in the gateway: the broker stops while the producer still asks for
/// its idempotence id, and comes back 3 s later. Whether or not the producer wedges (rare), the
/// gateway must accept orders again within a minute of the restart.
#[tokio::test]
async fn fault_a_gateway_whose_broker_stopped_while_it_asked_for_its_id_recovers() {
    for round in 0..2u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut kafka = testenv::Kafka::start_with(
            &dir.path().join("kafka"),
            1,
            testenv::Lifetime::Owned,
            false,
        )
        .unwrap();
        let orders = topic(&kafka.info, "gw-getpid-stop", 1).await;
        let gateway = start_gateway(
            dir.path(),
            "gateway",
            &kafka.info,
            &orders,
            "users",
            &["--delivery-timeout", "5s"],
        );
        eventually("the producer asking for its id", WAIT, || async {
            gateway
                .log_text()
                .contains("GETPID")
                .then_some(())
                .ok_or("not yet".to_owned())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(round * 100)).await;
        kafka.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        kafka.restart().unwrap();
        let id = format!("after-{round}");
        eventually(
            &format!("round {round}: 202 again"),
            Duration::from_secs(60),
            || async {
                match gateway.post("/orders", &[JSON], &order_body(&id)) {
                    Ok((202, _)) => Ok(()),
                    other => Err(format!("{other:?}; log:\n{}", gateway.log_text())),
                }
            },
        )
        .await;
        let records = worker::read_all(&kafka.info, &orders, 1, WAIT).await;
        assert!(
            records.iter().any(|r| worker::key_of(r) == id),
            "round {round}: the accepted order is in Kafka"
        );
    }
}

#[tokio::test]
async fn fault_the_outbox_relay_delivers_every_order_despite_being_killed_twice() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-outbox", 3).await;
    let db = stack.postgres.fresh_database("outbox").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url_file = database_url_file(dir.path(), &stack.postgres.database_url(&db));
    let url_arg = url_file.display().to_string();
    let gateway = start_gateway(
        dir.path(),
        "gateway",
        &stack.kafka,
        &orders,
        "users",
        &["--outbox", "--database-url-file", &url_arg],
    );
    ready(&gateway).await;

    let total = 1000;
    let port = gateway.http_port;
    let posts: Vec<_> = (0..4)
        .map(|lane| {
            tokio::task::spawn_blocking(move || {
                for i in (lane..total).step_by(4) {
                    let (status, body) = worker::http_request(
                        port,
                        "POST",
                        "/orders",
                        &[JSON],
                        &order_body(&format!("ob-{i}")),
                    )
                    .unwrap();
                    assert_eq!(status, 202, "{body}");
                }
            })
        })
        .collect();
    let mut relay = start_relay(dir.path(), &stack.kafka, &url_file, &["--batch", "50"]);
    let pg = stack.postgres.connect(&db).await.unwrap();
    for kill in 1..=2 {
        let target = kill * 250;
        eventually("the relay to make progress", WAIT, || async {
            relay.check_alive()?;
            let sent: i64 = pg
                .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            (sent >= target).then_some(()).ok_or(format!("{sent} sent"))
        })
        .await;
        relay.kill();
        relay.restart().unwrap();
    }
    for p in posts {
        p.await.unwrap();
    }
    eventually("every outbox row sent", WAIT, || async {
        let pending: i64 = pg
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        (pending == 0)
            .then_some(())
            .ok_or(format!("{pending} pending"))
    })
    .await;
    // Every record published, duplicates included.
    let ends = admin(&stack.kafka).end_offsets(&orders, 3).await.unwrap();
    let published: i64 = ends.values().sum();
    let records = worker::read_all(&stack.kafka, &orders, published as usize, WAIT).await;
    let keys: BTreeSet<String> = records.iter().map(worker::key_of).collect();
    assert_eq!(
        keys.len(),
        total,
        "all {total} orders delivered ({} records with duplicates)",
        records.len()
    );
    println!(
        "outbox: {total} accepted, {} records published (duplicates allowed), {} distinct",
        records.len(),
        keys.len()
    );
}

/// The relay deletes published outbox rows once they are older than its retention; rows
/// published recently and rows still pending stay (the pending one is then published).
#[tokio::test]
async fn the_outbox_relay_purges_published_rows_after_their_retention() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-purge", 1).await;
    let db = stack.postgres.fresh_database("purge").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url_file = database_url_file(dir.path(), &stack.postgres.database_url(&db));
    // A first run creates the schema.
    let mut relay = start_relay(dir.path(), &stack.kafka, &url_file, &["--retention", "1h"]);
    ready(&relay).await;
    relay.terminate(Duration::from_secs(20)).unwrap();

    let pg = stack.postgres.connect(&db).await.unwrap();
    let rows: [(&str, Option<i32>); 6] = [
        ("old-0", Some(120)),
        ("old-1", Some(120)),
        ("old-2", Some(61)),
        ("recent-0", Some(59)),
        ("recent-1", Some(1)),
        ("pending", None),
    ];
    for (key, sent_minutes_ago) in rows {
        pg.execute(
            "INSERT INTO outbox (topic, key, payload, content_type, correlation_id, traceparent, sent_at)
             VALUES ($1, $2, $3, 'application/json', 'purge-test',
                     '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
                     CASE WHEN $4::int IS NULL THEN NULL ELSE now() - make_interval(mins => $4::int) END)",
            &[&orders, &key, &order_body(key), &sent_minutes_ago],
        )
        .await
        .unwrap();
    }
    relay.restart().unwrap();
    eventually("rows published over an hour ago deleted", WAIT, || async {
        relay.check_alive()?;
        let left: Vec<(String, bool)> = pg
            .query(
                "SELECT key, sent_at IS NOT NULL FROM outbox ORDER BY key",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want = vec![
            ("pending".to_owned(), true),
            ("recent-0".to_owned(), true),
            ("recent-1".to_owned(), true),
        ];
        (left == want).then_some(()).ok_or(format!("{left:?}"))
    })
    .await;
    assert!(
        relay.log_text().contains("purged published outbox rows"),
        "the purge is logged"
    );
}

/// A receiver that fails every request until switched on.
#[derive(Clone, Default)]
struct Switch {
    on: Arc<Mutex<bool>>,
    received: Arc<Mutex<Vec<String>>>,
}

async fn switched(
    axum::extract::State(s): axum::extract::State<Switch>,
    headers: HeaderMap,
) -> StatusCode {
    if !*s.on.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let order = headers
        .get("x-kafka-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    s.received.lock().unwrap().push(order);
    StatusCode::OK
}

#[tokio::test]
async fn a_filtered_replay_sends_back_exactly_the_matching_dead_letters() {
    let stack = testenv::shared();
    let source = topic(&stack.kafka, "replay", 2).await;
    admin(&stack.kafka)
        .create_topic(&format!("{source}-dlq"), 2, 1, &BTreeMap::new())
        .await
        .unwrap();
    let switch = Switch::default();
    let port = worker::serve(
        axum::Router::new()
            .route("/", axum::routing::post(switched))
            .with_state(switch.clone()),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = worker::config(
        &stack.kafka,
        &source,
        &testenv::unique_name("replayed"),
        HandlerConfig::Http {
            url: format!("http://127.0.0.1:{port}/"),
            timeout_ms: 2000,
        },
    );
    config.retry = RetryPolicy {
        max_retries: 0,
        ..config.retry
    };
    let worker_process = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    let mut records = worker::orders("transient", 20);
    // Not JSON: a permanent Deserialization failure, which the replay must leave alone.
    records.push(("invalid".into(), b"<not json/>".to_vec()));
    worker::produce(&producer, &source, &records).await;
    let dead = worker::read_all(&stack.kafka, &format!("{source}-dlq"), 21, WAIT).await;
    assert_eq!(dead.len(), 21);

    // The receiver is fixed; replay only the transient failures.
    *switch.on.lock().unwrap() = true;
    let mut args = vec![
        "replay".to_owned(),
        "--dead-letter-topic".into(),
        format!("{source}-dlq"),
        "--error-class".into(),
        "Transient".into(),
    ];
    args.extend(kafka_args(&stack.kafka));
    let dry = std::process::Command::new(worker::binary())
        .args(&args)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let planned = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .filter(|l| l.contains("\"target\""))
        .count();
    assert_eq!(planned, 20, "the dry run lists the 20 transient failures");
    assert!(
        switch.received.lock().unwrap().is_empty(),
        "a dry run publishes nothing"
    );

    let out = std::process::Command::new(worker::binary())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["replayed"], 20);
    assert_eq!(summary["skipped"], 1);

    eventually(
        "the consumer to handle the replayed orders",
        WAIT,
        || async {
            worker_process.check_alive()?;
            let n = switch.received.lock().unwrap().len();
            (n == 20).then_some(()).ok_or(format!("{n} received"))
        },
    )
    .await;
    let received: BTreeSet<String> = switch.received.lock().unwrap().iter().cloned().collect();
    assert!(
        received.iter().all(|o| o.starts_with("transient-")),
        "{received:?}"
    );
    let back = worker::read_all(&stack.kafka, &source, 41, Duration::from_secs(10)).await;
    let replayed: Vec<_> = back
        .iter()
        .filter(|m| h::get(m.headers(), h::DLQ_REPLAY_COUNT) == Some("1"))
        .collect();
    assert_eq!(
        replayed.len(),
        20,
        "replayed records carry their replay count"
    );
    assert!(
        replayed
            .iter()
            .all(|m| h::get(m.headers(), h::DLQ_ERROR_CLASS).is_none()),
        "dead-letter headers are not sent back"
    );
    assert!(
        replayed
            .iter()
            .all(|m| h::get(m.headers(), h::CORRELATION_ID).is_some()),
        "original headers are"
    );

    // Progress was committed: a second run finds nothing left.
    let again = std::process::Command::new(worker::binary())
        .args(&args)
        .output()
        .unwrap();
    let summary: Value = serde_json::from_str(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["replayed"], 0, "{summary}");
}

#[tokio::test]
async fn a_json_and_a_protobuf_order_both_reach_the_event_store() {
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-formats", 1).await;
    admin(&stack.kafka)
        .create_topic(&format!("{orders}-dlq"), 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path(), "gateway", &stack.kafka, &orders, "users", &[]);
    let db = stack.postgres.fresh_database("formats").await.unwrap();
    let config = worker::config(
        &stack.kafka,
        &orders,
        &testenv::unique_name("formats"),
        worker::event_store(dir.path(), &stack.postgres.database_url(&db)),
    );
    let consumer = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    ready(&gateway).await;

    let (status, body) = gateway
        .post("/orders", &[JSON], &order_body("as-json"))
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let protobuf = pubsubkafka_worker::order::proto::encode_request(
        &pubsubkafka_worker::order::sample("as-protobuf", 0),
    );
    let (status, body) = gateway
        .post(
            "/orders",
            &[("Content-Type", "application/x-protobuf")],
            &protobuf,
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let (status, _) = gateway
        .post(
            "/orders",
            &[("Content-Type", "application/x-protobuf")],
            b"\xff\xff\xff",
        )
        .unwrap();
    assert_eq!(status, 400, "malformed Protobuf");

    let records = worker::read_all(&stack.kafka, &orders, 2, Duration::from_secs(10)).await;
    let content_types: BTreeMap<String, String> = records
        .iter()
        .map(|m| {
            (
                worker::key_of(m),
                h::get(m.headers(), h::CONTENT_TYPE).unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(content_types["as-json"], "application/json");
    assert_eq!(content_types["as-protobuf"], "application/x-protobuf");

    let pg = stack.postgres.connect(&db).await.unwrap();
    eventually("both orders stored", WAIT, || async {
        consumer.check_alive()?;
        let ids: Vec<String> = pg
            .query("SELECT order_id FROM orders ORDER BY order_id", &[])
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| r.get(0))
            .collect();
        (ids == ["as-json", "as-protobuf"])
            .then_some(())
            .ok_or(format!("{ids:?}"))
    })
    .await;
}

#[tokio::test]
async fn every_refusal_is_json_of_one_shape_even_from_the_http_stack() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let stack = testenv::shared();
    let orders = topic(&stack.kafka, "gw-json", 1).await;
    let users = topic(&stack.kafka, "gw-json-users", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(
        dir.path(),
        "gateway",
        &stack.kafka,
        &orders,
        &users,
        &["--max-body-bytes", "65536"],
    );
    ready(&gateway).await;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{}", gateway.http_port);
    // (method, path, content type, body, expected status)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/orders",
            Some("application/json"),
            vec![b' '; 100_000],
            413,
        ),
        (
            "POST",
            "/orders",
            Some("application/json"),
            b"{\"order".to_vec(),
            400,
        ),
        ("POST", "/orders", Some("text/csv"), order_body("j-1"), 415),
        (
            "POST",
            "/orders",
            Some("application/json"),
            b"{}".to_vec(),
            422,
        ),
        ("GET", "/orders", None, Vec::new(), 405),
        (
            "PUT",
            "/users",
            Some("application/json"),
            b"{}".to_vec(),
            405,
        ),
        (
            "POST",
            "/nowhere",
            Some("application/json"),
            b"{}".to_vec(),
            404,
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = client
            .request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let allow = response.headers().get("allow").cloned();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let what = format!(
            "{method} {path}: {status} {content} {}",
            String::from_utf8_lossy(&text)
        );
        assert_eq!(status, expected, "{what}");
        assert_eq!(content, "application/json", "{what}");
        let body: Value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {what}"));
        assert!(!error.is_empty(), "{what}");
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| *k == "error" || *k == "errors"),
            "one shape: {what}"
        );
        if status == 413 {
            assert!(error.contains("65536"), "says the limit: {what}");
        }
        if status == 405 {
            assert!(allow.is_some(), "405 keeps its Allow header: {what}");
        }
    }
}

/// A broker that stops while the relay's new producer is still asking it for its idempotence id
/// (a fresh broker answers "coordinator load in progress" for a moment) can leave that producer
/// delivering nothing after the broker is back: 1 round of 16 without the fix on this machine,
/// and the CI run that found it waited 2 minutes in vain. The relay replaces a producer whose
/// whole pass went unacknowledged, so each round asserts what must always hold: every row is
/// published within a minute of the restart (the stuck round's rows went out 0.8 s after the
/// new producer started). Being rare, a regression shows here only now and then.
#[tokio::test]
async fn fault_the_relay_replaces_a_producer_left_stuck_by_a_broker_stop() {
    let stack = testenv::shared();
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut kafka = testenv::Kafka::start_with(
            &dir.path().join("kafka"),
            1,
            testenv::Lifetime::Owned,
            false,
        )
        .unwrap();
        let orders = topic(&kafka.info, "gw-relay-stop", 3).await;
        let db = stack.postgres.fresh_database("relay-stop").await.unwrap();
        let url_file = database_url_file(dir.path(), &stack.postgres.database_url(&db));
        let relay = start_relay(dir.path(), &kafka.info, &url_file, &[]);
        let pg = stack.postgres.connect(&db).await.unwrap();
        eventually("the relay's schema", WAIT, || async {
            pg.query("SELECT 1 FROM outbox LIMIT 1", &[])
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        let insert = |key: String| {
            let (pg, orders) = (&pg, &orders);
            async move {
                pg.execute(
                    "INSERT INTO outbox (topic, key, payload, content_type, correlation_id, \
                     traceparent) VALUES ($1, $2, $3, 'application/json', $2, \
                     '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')",
                    &[orders, &key, &order_body(&key)],
                )
                .await
                .unwrap();
            }
        };
        for i in 0..5 {
            insert(format!("before-{round}-{i}")).await;
        }
        // Stopped while the producer asks for its id, a little later each round.
        eventually("the producer asking for its id", WAIT, || async {
            relay
                .log_text()
                .contains("GETPID")
                .then_some(())
                .ok_or("not yet".to_owned())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(round * 100)).await;
        kafka.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        kafka.restart().unwrap();
        for i in 0..10 {
            insert(format!("during-{round}-{i}")).await;
        }
        eventually(
            &format!("round {round}: every row published"),
            Duration::from_secs(60),
            || async {
                let sent: i64 = pg
                    .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                (sent == 15).then_some(()).ok_or(format!(
                    "{sent} of 15 sent; relay log:\n{}",
                    relay.log_text()
                ))
            },
        )
        .await;
        // Every row in Kafka (the relay publishes at least once: a copy may repeat).
        let records = worker::read_all(&kafka.info, &orders, 15, WAIT).await;
        let keys: std::collections::BTreeSet<String> = records.iter().map(worker::key_of).collect();
        let wanted: std::collections::BTreeSet<String> = (0..5)
            .map(|i| format!("before-{round}-{i}"))
            .chain((0..10).map(|i| format!("during-{round}-{i}")))
            .collect();
        assert_eq!(keys, wanted, "round {round}");
    }
}
