//! The worker runtime as a process against real Kafka (SASL_SSL) and real PostgreSQL:
//! at-least-once with idempotent storage, retries, dead letters with the documented headers,
//! crashes, a database outage and a rebalance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pubsubkafka_controller::kafka::KafkaAdmin;
use pubsubkafka_worker::config::{ErrorClass, GroupProtocol, HandlerConfig, RetryPolicy};
use pubsubkafka_worker::headers as h;
use rdkafka::Message;
use testenv::worker::{self, WorkerProcess};
use testenv::{KafkaInfo, PostgresInfo, eventually};

const WAIT: Duration = Duration::from_secs(90);

fn admin(kafka: &KafkaInfo) -> KafkaAdmin {
    KafkaAdmin::new(
        &kafka.admin_connection().client_config().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap()
}

/// A source topic and its dead-letter topic (both taking records up to 4 MiB).
async fn topics(kafka: &KafkaInfo, prefix: &str, partitions: i32) -> String {
    let admin = admin(kafka);
    let topic = testenv::unique_name(prefix);
    let big = BTreeMap::from([("max.message.bytes".to_owned(), "4194304".to_owned())]);
    admin
        .create_topic(&topic, partitions, 1, &big)
        .await
        .unwrap();
    admin
        .create_topic(&format!("{topic}-dlq"), partitions, 1, &big)
        .await
        .unwrap();
    topic
}

async fn database(pg: &PostgresInfo) -> (String, tokio_postgres::Client) {
    let db = pg.fresh_database("worker").await.unwrap();
    let client = pg.connect(&db).await.unwrap();
    (pg.database_url(&db), client)
}

async fn wait_stored(db: &tokio_postgres::Client, expected: i64, worker: &WorkerProcess) {
    eventually(&format!("{expected} orders stored"), WAIT, || async {
        worker.check_alive()?;
        let (rows, distinct) = worker::stored(db).await;
        assert_eq!(rows, distinct, "an order stored twice");
        (rows == expected)
            .then_some(())
            .ok_or(format!("{rows} stored"))
    })
    .await;
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as a person reads it.
fn without_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn valid_orders_are_stored_once_and_poison_records_are_dead_lettered() {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "orders", 3).await;
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let group = testenv::unique_name("store");
    let config = worker::config(
        &stack.kafka,
        &topic,
        &group,
        worker::event_store(dir.path(), &url),
    );
    let mut worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();

    let producer = worker::producer(&stack.kafka);
    let mut records = worker::orders("order", 200);
    // The same order twice is stored once.
    records.push(records[7].clone());
    let mut missing_id = serde_json::to_value(pubsubkafka_worker::order::sample("x", 0)).unwrap();
    missing_id.as_object_mut().unwrap().remove("order_id");
    let mut wrong_type =
        serde_json::to_value(pubsubkafka_worker::order::sample("wrong-type", 0)).unwrap();
    wrong_type["items"][0]["quantity"] = serde_json::json!("two");
    let mut invalid = pubsubkafka_worker::order::sample("invalid-email", 0);
    invalid.customer_info.email = "nobody".into();
    let poison: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "poison-not-json".into(),
            b"this is not json".to_vec(),
            "Deserialization",
        ),
        (
            "poison-utf8".into(),
            vec![0xff, 0xfe, 0xfd],
            "Deserialization",
        ),
        (
            "poison-truncated".into(),
            br#"{"order_id": "t-1", "customer_info": {"#.to_vec(),
            "Deserialization",
        ),
        (
            "poison-missing-id".into(),
            serde_json::to_vec(&missing_id).unwrap(),
            "Deserialization",
        ),
        (
            "poison-wrong-type".into(),
            serde_json::to_vec(&wrong_type).unwrap(),
            "Deserialization",
        ),
        (
            "poison-invalid".into(),
            serde_json::to_vec(&invalid).unwrap(),
            "Validation",
        ),
        (
            "poison-oversized".into(),
            vec![b' '; 2 * 1024 * 1024],
            "Validation",
        ),
    ];
    // Poison in the middle of the stream: later records must still be processed.
    worker::produce(&producer, &topic, &records[..100]).await;
    let poison_records: Vec<(String, Vec<u8>)> = poison
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    worker::produce(&producer, &topic, &poison_records).await;
    worker::produce(&producer, &topic, &records[100..]).await;

    wait_stored(&db, 200, &worker).await;
    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), poison.len(), WAIT).await;
    assert_eq!(
        dead.len(),
        poison.len(),
        "every poison record dead-lettered"
    );
    for (key, value, class) in &poison {
        let m = dead
            .iter()
            .find(|m| worker::key_of(m) == *key)
            .unwrap_or_else(|| panic!("{key} missing"));
        let headers = m.headers();
        assert_eq!(
            m.payload(),
            Some(value.as_slice()),
            "{key}: value unchanged"
        );
        assert_eq!(h::get(headers, h::DLQ_ERROR_CLASS), Some(*class), "{key}");
        assert_eq!(h::get(headers, h::DLQ_ORIGINAL_TOPIC), Some(topic.as_str()));
        assert_eq!(h::get(headers, h::DLQ_CONSUMER_GROUP), Some(group.as_str()));
        assert_eq!(
            h::get(headers, h::DLQ_ATTEMPTS),
            Some("1"),
            "permanent: no retries"
        );
        assert_eq!(
            h::get(headers, h::CONTENT_TYPE),
            Some("application/json"),
            "original headers kept"
        );
        assert_eq!(
            h::get(headers, h::DLQ_CORRELATION_ID),
            Some(format!("corr-{key}").as_str())
        );
        let original_partition: i32 = h::get(headers, h::DLQ_ORIGINAL_PARTITION)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            m.partition(),
            original_partition,
            "kept on its source partition"
        );
        assert!(
            h::get(headers, h::DLQ_ORIGINAL_OFFSET)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert!(
            h::get(headers, h::DLQ_ORIGINAL_TIMESTAMP)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert!(
            h::get(headers, h::DLQ_FAILED_AT)
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
        assert!(!h::get(headers, h::DLQ_ERROR_MESSAGE).unwrap().is_empty());
        // The operator's log names the record without any span around it.
        let offset = h::get(headers, h::DLQ_ORIGINAL_OFFSET).unwrap();
        let log = without_colors(&worker.log_text());
        assert!(
            log.lines().any(|l| l.contains("giving up")
                && l.contains(&format!("topic=\"{topic}\""))
                && l.contains(&format!("partition={original_partition}"))
                && l.contains(&format!("offset={offset}"))
                && l.contains(&format!("corr-{key}"))),
            "{key}: no dead-letter log line naming topic, partition {original_partition}, offset {offset} and its correlation id in:\n{}",
            log.lines()
                .filter(|l| l.contains("giving up"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    eventually("the metrics to count them", WAIT, || async {
        let dlq = worker.metric("kafka_dlq_messages_total", &[]);
        let handled = worker.metric("kafka_consumer_records_total", &[("outcome", "handled")]);
        (dlq == poison.len() as f64 && handled == 201.0)
            .then_some(())
            .ok_or(format!("dlq {dlq}, handled {handled}"))
    })
    .await;
    assert_eq!(worker.get("/readyz").unwrap().0, 200);
    let body = worker.get("/metrics").unwrap().1;
    assert!(
        body.contains("kafka_processing_duration_seconds_bucket"),
        "histogram exported"
    );
    worker
        .terminate(Duration::from_secs(30))
        .expect("clean shutdown");
}

/// A receiver whose answers are scripted per order id: a list of statuses, the last repeating.
/// One request the receiver saw: order id, arrival, correlation id.
type Seen = (String, Instant, Option<String>);

#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<BTreeMap<String, Vec<u16>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    let order = headers
        .get("x-kafka-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let correlation = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let attempt = {
        let mut seen = r.seen.lock().unwrap();
        seen.push((order.clone(), Instant::now(), correlation));
        seen.iter().filter(|(o, _, _)| *o == order).count()
    };
    let script = r.script.lock().unwrap();
    let statuses = script.get(&order).cloned().unwrap_or_else(|| vec![200]);
    let status = statuses
        .get(attempt - 1)
        .or(statuses.last())
        .copied()
        .unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

#[tokio::test]
async fn retries_follow_the_policy_and_exhausted_records_are_dead_lettered() {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "users", 1).await;
    let receiver = Receiver::default();
    receiver.script.lock().unwrap().extend([
        ("flaky".to_owned(), vec![500, 503, 200]),
        ("broken".to_owned(), vec![500]),
        ("refused".to_owned(), vec![422]),
    ]);
    let port = worker::serve(
        axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(receiver.clone()),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("http"),
        HandlerConfig::Http {
            url: format!("http://127.0.0.1:{port}/events"),
            timeout_ms: 2000,
        },
    );
    config.retry = RetryPolicy {
        max_retries: 3,
        initial_backoff_ms: 200,
        multiplier: 2.0,
        max_backoff_ms: 10_000,
        jitter: 0.0,
        permanent_errors: ErrorClass::DEFAULT_PERMANENT.to_vec(),
        ..RetryPolicy::default()
    };
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    let records: Vec<(String, Vec<u8>)> = ["flaky", "broken", "refused", "fine"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                serde_json::to_vec(&pubsubkafka_worker::order::sample(id, 0)).unwrap(),
            )
        })
        .collect();
    worker::produce(&producer, &topic, &records).await;

    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), 2, WAIT).await;
    let classes: BTreeMap<String, (String, String)> = dead
        .iter()
        .map(|m| {
            let hs = m.headers();
            (
                worker::key_of(m),
                (
                    h::get(hs, h::DLQ_ERROR_CLASS).unwrap().to_owned(),
                    h::get(hs, h::DLQ_ATTEMPTS).unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(
        classes,
        BTreeMap::from([
            (
                "broken".to_owned(),
                ("Transient".to_owned(), "4".to_owned())
            ),
            (
                "refused".to_owned(),
                ("Rejected".to_owned(), "1".to_owned())
            ),
        ])
    );
    eventually("every record handled or dead-lettered", WAIT, || async {
        worker.check_alive()?;
        let handled = worker.metric("kafka_consumer_records_total", &[("outcome", "handled")]);
        (handled == 2.0)
            .then_some(())
            .ok_or(format!("{handled} handled"))
    })
    .await;

    let seen = receiver.seen.lock().unwrap().clone();
    let attempts = |id: &str| {
        seen.iter()
            .filter(|(o, _, _)| o == id)
            .map(|(_, t, _)| *t)
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts("flaky").len(), 3, "failed twice, then stored");
    assert_eq!(attempts("broken").len(), 4, "maxRetries + 1 attempts");
    assert_eq!(attempts("refused").len(), 1, "4xx is permanent");
    let gaps: Vec<u128> = attempts("broken")
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    for (gap, expected) in gaps.iter().zip([200u128, 400, 800]) {
        assert!(
            *gap >= expected && *gap < expected + 400,
            "backoff gaps {gaps:?} should be about 200, 400, 800 ms"
        );
    }
    assert!(
        seen.iter().all(|(_, _, c)| c.is_some()),
        "the correlation id is forwarded"
    );
    assert_eq!(
        worker.metric(
            "kafka_consumer_retries_total",
            &[("error_class", "Transient")]
        ),
        5.0,
        "2 retries of flaky + 3 of broken"
    );
}

#[tokio::test]
async fn fault_sigkill_three_times_mid_stream_loses_nothing_and_stores_each_order_once() {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "crash", 3).await;
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("crash"),
        worker::event_store(dir.path(), &url),
    );
    let producer = worker::producer(&stack.kafka);
    let total = 6000;
    let stages = 4;
    let records = worker::orders("crash", total);
    // Orders arrive in paced stages; each kill lands while a stage is still being produced and
    // consumed, and more orders follow it.
    let (go, mut stage_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let feeder = tokio::spawn({
        let topic = topic.clone();
        async move {
            while let Some(stage) = stage_rx.recv().await {
                let size = total / stages;
                for chunk in records[stage * size..(stage + 1) * size].chunks(100) {
                    worker::produce(&producer, &topic, chunk).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    let mut worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    for kill in 0..3 {
        go.send(kill).unwrap();
        let target = (kill * total / stages + 300) as i64;
        let now = eventually("progress before the kill", WAIT, || async {
            worker.check_alive()?;
            let (rows, _) = worker::stored(&db).await;
            (rows >= target)
                .then_some(rows)
                .ok_or(format!("{rows} stored"))
        })
        .await;
        assert!(
            now < total as i64,
            "kill {} must land mid-stream ({now} stored)",
            kill + 1
        );
        worker.kill();
        println!("SIGKILL {}: {now} of {total} orders stored", kill + 1);
        worker.restart().unwrap();
    }
    go.send(stages - 1).unwrap();
    drop(go);
    feeder.await.unwrap();
    wait_stored(&db, total as i64, &worker).await;
    let dead = worker::read_all(
        &stack.kafka,
        &format!("{topic}-dlq"),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(dead.is_empty(), "valid orders are never dead-lettered");
    println!("after 3 SIGKILLs: {total} produced, {total} stored exactly once, 0 dead letters");
}

#[tokio::test]
async fn fault_a_database_outage_pauses_consumption_without_dead_letters() {
    let stack = testenv::shared();
    let pg_dir = tempfile::tempdir().unwrap();
    let mut pg =
        testenv::Postgres::start(pg_dir.path(), testenv::Lifetime::Owned).expect("own PostgreSQL");
    let topic = topics(&stack.kafka, "outage", 2).await;
    let (url, _) = database(&pg.info).await;
    let dir = tempfile::tempdir().unwrap();
    let group = testenv::unique_name("outage");
    let config = worker::config(
        &stack.kafka,
        &topic,
        &group,
        worker::event_store(dir.path(), &url),
    );
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    let records = worker::orders("outage", 600);
    worker::produce(&producer, &topic, &records[..200]).await;
    {
        let db = pg
            .info
            .connect(url.rsplit('/').next().unwrap())
            .await
            .unwrap();
        wait_stored(&db, 200, &worker).await;
    }

    pg.stop();
    worker::produce(&producer, &topic, &records[200..400]).await;
    eventually("the worker to report not ready", WAIT, || async {
        match worker.get("/readyz") {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(worker.metric("pubsubkafka_worker_sink_up", &[]), 0.0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    worker::produce(&producer, &topic, &records[400..]).await;
    pg.restart().expect("PostgreSQL restarts");

    let db = pg
        .info
        .connect(url.rsplit('/').next().unwrap())
        .await
        .unwrap();
    wait_stored(&db, 600, &worker).await;
    eventually("ready again", WAIT, || async {
        match worker.get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let dead = worker::read_all(
        &stack.kafka,
        &format!("{topic}-dlq"),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(
        dead.is_empty(),
        "an outage must not dead-letter valid orders: {} found",
        dead.len()
    );
    assert_eq!(
        worker.metric("kafka_consumer_retries_total", &[]),
        0.0,
        "no retry budget spent"
    );
    // The lag drains: every offset is committed.
    wait_all_committed(&stack.kafka, &group, &topic, 2).await;
    println!(
        "PostgreSQL down 30 s: 600 produced, 600 stored, 0 dead letters, 0 retries, lag 0 after"
    );
}

#[tokio::test]
async fn two_workers_rebalance_without_loss_and_sigterm_commits() {
    two_workers_rebalance(GroupProtocol::Consumer).await;
}

#[tokio::test]
async fn two_classic_workers_rebalance_without_loss_and_sigterm_commits() {
    two_workers_rebalance(GroupProtocol::Classic).await;
}

/// Two workers share a group under `protocol`: a join, a SIGTERM, nothing lost, everything
/// committed, and each reports the lag of its own partitions only.
async fn two_workers_rebalance(protocol: GroupProtocol) {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "rebalance", 4).await;
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let group = testenv::unique_name("pair");
    let mut config = worker::config(
        &stack.kafka,
        &topic,
        &group,
        worker::event_store(dir.path(), &url),
    );
    config.group_protocol = protocol;
    let producer = worker::producer(&stack.kafka);
    let records = worker::orders("pair", 2000);

    let mut first = WorkerProcess::start(dir.path(), "first", &config).unwrap();
    worker::produce(&producer, &topic, &records[..700]).await;
    // The first reports the lag of all four partitions...
    eventually("the first worker's lag series", WAIT, || async {
        let lagging = lag_partitions(&first, &topic);
        (lagging.len() == 4)
            .then_some(())
            .ok_or(format!("{lagging:?}"))
    })
    .await;
    let mut second = WorkerProcess::start(dir.path(), "second", &config).unwrap();
    worker::produce(&producer, &topic, &records[700..1400]).await;
    // ...and after the rebalance, each worker only those of its own partitions: a revoked
    // partition's series goes rather than keep its last value.
    eventually("lag series of disjoint partitions", WAIT, || async {
        let (a, b) = (
            lag_partitions(&first, &topic),
            lag_partitions(&second, &topic),
        );
        let disjoint =
            a.is_disjoint(&b) && a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty();
        disjoint.then_some(()).ok_or(format!("{a:?} and {b:?}"))
    })
    .await;
    // The first leaves cleanly: its partitions move to the second.
    first
        .terminate(Duration::from_secs(40))
        .expect("the first worker stops cleanly on SIGTERM");
    worker::produce(&producer, &topic, &records[1400..]).await;
    wait_stored(&db, 2000, &second).await;
    second
        .terminate(Duration::from_secs(40))
        .expect("clean stop");

    // Everything was committed: the group has no lag left.
    let admin = admin(&stack.kafka);
    let ends = admin.end_offsets(&topic, 4).await.unwrap();
    let committed = admin.group_offsets(&group, &topic, 4).await.unwrap();
    for (partition, end) in ends {
        assert_eq!(
            committed[&partition],
            Some(end),
            "partition {partition} fully committed"
        );
    }
    assert!(
        first.log_text().contains("partitions revoked")
            || second.log_text().contains("partitions revoked"),
        "a rebalance happened"
    );
    worker::assert_protocol(&[&first, &second], protocol);
}

/// A Kafka 4 cluster with the consumer group protocol disabled answers its heartbeats
/// UNSUPPORTED_VERSION: the worker, asked for the consumer protocol, joins with the classic
/// one instead and consumes everything.
#[tokio::test]
async fn a_worker_falls_back_to_classic_when_the_brokers_refuse_the_consumer_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = testenv::Kafka::start_configured(
        &dir.path().join("kafka"),
        1,
        testenv::Lifetime::Owned,
        false,
        "group.coordinator.rebalance.protocols=classic\n",
    )
    .unwrap();
    let topic = topics(&kafka.info, "refused", 2).await;
    let group = testenv::unique_name("refused");
    let mut config = worker::config(&kafka.info, &topic, &group, HandlerConfig::Noop);
    config.group_protocol = GroupProtocol::Consumer;
    let producer = worker::producer(&kafka.info);
    worker::produce(&producer, &topic, &worker::orders("refused", 200)).await;
    let mut consumer = WorkerProcess::start(dir.path(), "worker", &config).unwrap();

    wait_all_committed(&kafka.info, &group, &topic, 2).await;
    consumer
        .terminate(Duration::from_secs(40))
        .expect("clean stop");
    let log = consumer.log_text();
    assert!(
        log.contains("refuse the consumer group protocol"),
        "the fallback is logged: {log}"
    );
    let joins: Vec<&str> = log.lines().filter(|l| l.contains(" consuming")).collect();
    assert!(
        joins.len() == 2
            && joins[0].contains("protocol=\"consumer\"")
            && joins[1].contains("protocol=\"classic\""),
        "asked for consumer, then joined as classic: {joins:?}"
    );
}

/// Waits until `group` has committed every record of `topic`'s `partitions` (its lag is 0).
async fn wait_all_committed(kafka: &KafkaInfo, group: &str, topic: &str, partitions: i32) {
    let admin = admin(kafka);
    let ends = admin.end_offsets(topic, partitions).await.unwrap();
    eventually("the group's lag to drain to 0", WAIT, || async {
        let committed = admin
            .group_offsets(group, topic, partitions)
            .await
            .map_err(|e| e.to_string())?;
        ends.iter()
            .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
            .then_some(())
            .ok_or(format!("committed {committed:?} of {ends:?}"))
    })
    .await;
}

/// The partitions of `topic` whose `kafka_consumer_lag` the worker exports.
fn lag_partitions(worker: &WorkerProcess, topic: &str) -> std::collections::BTreeSet<String> {
    let body = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("kafka_consumer_lag{"))
        .filter(|l| l.contains(&format!("topic=\"{topic}\"")))
        .filter_map(|l| {
            let start = l.find("partition=\"")? + "partition=\"".len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
        .collect()
}

/// A record that must go to the dead-letter topic holds back only itself: while the
/// dead-letter topic does not exist yet (an outage of that topic), the valid records around
/// 20 poison records are all stored, as the poison records leave their batches to wait alone.
/// Once the topic exists, the 20 dead letters arrive.
#[tokio::test]
async fn a_dead_letter_that_waits_holds_back_only_its_own_record() {
    let stack = testenv::shared();
    let admin = admin(&stack.kafka);
    let topic = testenv::unique_name("dlq-wait");
    admin
        .create_topic(&topic, 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("dlq-wait"),
        worker::event_store(dir.path(), &url),
    );
    let valid = 20_000;
    let mut records = worker::orders("order", valid);
    // One poison record in every 1,000: each in a different batch of the one partition, 20
    // batches of up to 500 records, more than the 5,000 records a partition may hold.
    for i in (0..20).rev() {
        records.insert(
            i * 1_000 + 500,
            (format!("poison-{i}"), b"not an order".to_vec()),
        );
    }
    let producer = worker::producer(&stack.kafka);
    worker::produce(&producer, &topic, &records).await;
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    wait_stored(&db, valid as i64, &worker).await;

    admin
        .create_topic(&format!("{topic}-dlq"), 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), 20, WAIT).await;
    let mut keys: Vec<String> = dead
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect();
    keys.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("poison-{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
}

/// A dead letter larger than its topic takes (the source allows 4 MiB, the dead-letter topic
/// the broker's default of 1 MiB) goes without its value, with every header and the size of the
/// value it left out; the records after it are handled.
#[tokio::test]
async fn a_dead_letter_too_large_for_its_topic_goes_without_its_value() {
    let stack = testenv::shared();
    let admin = admin(&stack.kafka);
    let topic = testenv::unique_name("dlq-large");
    let big = BTreeMap::from([("max.message.bytes".to_owned(), "4194304".to_owned())]);
    admin.create_topic(&topic, 1, 1, &big).await.unwrap();
    admin
        .create_topic(&format!("{topic}-dlq"), 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("dlq-large"),
        HandlerConfig::Noop,
    );
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    let size = 2 * 1024 * 1024;
    // Incompressible: the worker's producer compresses (lz4), and the limit is on the batch.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let mut records = vec![("oversized".to_owned(), noise)];
    records.extend(worker::orders("after", 10));
    worker::produce(&producer, &topic, &records).await;

    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), 1, WAIT).await;
    let d = &dead[0];
    assert_eq!(d.key(), Some(&b"oversized"[..]));
    assert!(
        d.payload().is_none_or(<[u8]>::is_empty),
        "the value is left out"
    );
    let header = |name| h::get(d.headers(), name).map(str::to_owned);
    assert_eq!(header(h::DLQ_VALUE_OMITTED), Some(size.to_string()));
    assert_eq!(header(h::DLQ_ERROR_CLASS).as_deref(), Some("Validation"));
    assert_eq!(header(h::DLQ_ORIGINAL_TOPIC), Some(topic.clone()));
    assert_eq!(header(h::DLQ_ORIGINAL_OFFSET).as_deref(), Some("0"));
    eventually("the records after it handled", WAIT, || async {
        worker.check_alive()?;
        let handled = worker.metric(
            "kafka_consumer_records_total",
            &[("topic", topic.as_str()), ("outcome", "handled")],
        );
        (handled == 10.0)
            .then_some(())
            .ok_or(format!("{handled} handled"))
    })
    .await;
}

/// What a test compares of a consumed record.
type Fields = (
    String,
    i32,
    i64,
    rdkafka::Timestamp,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn fields(r: &impl Message) -> Fields {
    use rdkafka::message::Headers;
    (
        r.topic().to_owned(),
        r.partition(),
        r.offset(),
        r.timestamp(),
        r.key().map(<[u8]>::to_vec),
        r.payload().map(<[u8]>::to_vec),
        r.headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// The runtime reads records where librdkafka fetched them (`record::Record`, no copy). Every
/// field reads back as produced (keys or none, empty and absent values, repeated and null
/// headers, timestamps), and so do the copies a waiting record keeps (`detach`) and those made
/// of records polled from the consumer itself (`copy_of`).
#[tokio::test]
async fn records_read_in_place_and_their_copies_keep_every_field() {
    use pubsubkafka_worker::record::{Record, RecordQueue};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "records", 2).await;
    let producer: FutureProducer = stack.kafka.plaintext_config().create().unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..40i64 {
        let key = format!("key-{i}");
        let value = format!("value {i} ").repeat(i as usize % 7).into_bytes();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "repeated",
                value: Some(&format!("first {i}")),
            })
            .insert(Header {
                key: "repeated",
                value: Some("second"),
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            })
            .insert(Header::<&str> {
                key: "null",
                value: None,
            });
        let timestamp = 1_700_000_000_000 + i;
        let mut record = FutureRecord::<String, [u8]>::to(&topic)
            .partition((i % 2) as i32)
            .timestamp(timestamp);
        if i % 5 != 0 {
            record = record.key(&key);
        }
        if i % 3 != 0 {
            record = record.payload(&value);
        }
        if i % 4 != 0 {
            record = record.headers(headers);
        }
        let delivered = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap();
        let (partition, offset) = (delivered.partition, delivered.offset);
        let header_fields: Vec<(String, Option<Vec<u8>>)> = if i % 4 != 0 {
            vec![
                ("content-type".into(), Some(b"application/json".to_vec())),
                ("repeated".into(), Some(format!("first {i}").into_bytes())),
                ("repeated".into(), Some(b"second".to_vec())),
                ("empty".into(), Some(Vec::new())),
                ("null".into(), None),
            ]
        } else {
            Vec::new()
        };
        expected.insert(
            (partition, offset),
            (
                topic.clone(),
                partition,
                offset,
                rdkafka::Timestamp::CreateTime(timestamp),
                (i % 5 != 0).then(|| key.into_bytes()),
                (i % 3 != 0).then_some(value),
                header_fields,
            ),
        );
    }

    let consumer: BaseConsumer = stack
        .kafka
        .plaintext_config()
        .set("group.id", testenv::unique_name("records"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // SAFETY: declared after the consumer, so dropped before it (librdkafka's order).
    let queue = unsafe { RecordQueue::new(consumer.client()) };
    let mut assignment = TopicPartitionList::new();
    for p in 0..2 {
        assignment
            .add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    for p in 0..2 {
        queue.forward(&topic, p);
    }
    let mut records: Vec<Record> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while records.len() < expected.len() {
        assert!(Instant::now() < deadline, "{} records read", records.len());
        // A record fetched before its partition was forwarded comes from the consumer.
        if let Some(polled) = consumer.poll(Duration::ZERO) {
            records.push(Record::copy_of(&polled.unwrap()));
        }
        let errors = queue.consume(Duration::from_millis(100), 16, &mut records);
        assert!(errors.is_empty(), "{errors:?}");
    }
    assert!(
        records.iter().any(Record::is_fetched),
        "no record was read in place"
    );
    for record in records {
        let want = &expected[&(record.partition(), record.offset())];
        assert_eq!(&fields(&record), want, "read in place");
        let copy = record.detach();
        assert!(!copy.is_fetched());
        assert_eq!(&fields(&copy), want, "detached");
    }

    // Every record polled from the consumer itself, copied.
    let polled: BaseConsumer = stack
        .kafka
        .plaintext_config()
        .set("group.id", testenv::unique_name("records"))
        .create()
        .unwrap();
    polled.assign(&assignment).unwrap();
    let mut seen = 0;
    while seen < expected.len() {
        assert!(Instant::now() < deadline + WAIT, "{seen} records polled");
        if let Some(message) = polled.poll(Duration::from_millis(100)) {
            let copy = Record::copy_of(&message.unwrap());
            assert_eq!(
                &fields(&copy),
                &expected[&(copy.partition(), copy.offset())],
                "copied"
            );
            seen += 1;
        }
    }
}

/// An order as JSON with `quantity` of its one item.
fn order_with_quantity(id: &str, quantity: u32) -> Vec<u8> {
    let mut event = pubsubkafka_worker::order::sample(id, 0);
    event.items[0].quantity = quantity;
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test]
async fn the_event_store_tells_a_redelivery_from_a_conflict_within_one_batch() {
    use pubsubkafka_worker::handler::Delivery;
    use pubsubkafka_worker::handler::event_store::{EventStore, Stored};
    let stack = testenv::shared();
    let (url, db) = database(&stack.postgres).await;
    let store = EventStore::new(&url).unwrap();
    store.migrate().await.unwrap();
    let events: Vec<pubsubkafka_worker::order::OrderEvent> = [2, 99, 2, 5]
        .iter()
        .map(|q| serde_json::from_slice(&order_with_quantity("same-id", *q)).unwrap())
        .collect();
    let delivery = |i: usize| Delivery {
        event: Some(&events[i]),
        value: b"",
        key: None,
        topic: "orders",
        partition: 0,
        offset: i as i64,
        content_type: "application/json",
        correlation_id: None,
        traceparent: None,
    };
    // One statement: the first takes the order_id, the second differs, the third repeats it.
    let first = store
        .store(&[delivery(0), delivery(1), delivery(2)])
        .await
        .unwrap();
    assert_eq!(first[0], Stored::New);
    let Stored::Conflict {
        stored_sha256,
        incoming_sha256,
    } = &first[1]
    else {
        panic!("{first:?}");
    };
    assert_ne!(stored_sha256, incoming_sha256);
    assert!(stored_sha256.len() == 64 && incoming_sha256.len() == 64);
    assert_eq!(first[2], Stored::Duplicate);
    // A later batch against what is stored: the same hash of what is kept.
    let second = store.store(&[delivery(2), delivery(3)]).await.unwrap();
    assert_eq!(second[0], Stored::Duplicate);
    assert!(
        matches!(&second[1], Stored::Conflict { stored_sha256: s, .. } if s == stored_sha256),
        "{second:?}"
    );
    let row = db
        .query_one(
            "SELECT (event->'items'->0->>'quantity')::INT, source_offset FROM orders WHERE order_id = 'same-id'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "the first event is kept");
    assert_eq!(row.get::<_, i64>(1), 0);
}

#[tokio::test]
async fn a_conflicting_order_is_dead_lettered_and_a_redelivery_is_counted() {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "conflict", 1).await;
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("conflict"),
        worker::event_store(dir.path(), &url),
    );
    let producer = worker::producer(&stack.kafka);
    // Before the worker starts, so the first poll hands them over together: under other record
    // keys (the worker takes one record per key at a time) the same order_id, in one batch.
    worker::produce(
        &producer,
        &topic,
        &[
            ("k-a".into(), order_with_quantity("o-batch", 2)),
            ("k-b".into(), order_with_quantity("o-batch", 99)),
            ("k-c".into(), order_with_quantity("o-batch", 2)),
        ],
    )
    .await;
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    // Then one at a time: stored, redelivered, and a different event under its order_id.
    worker::produce(
        &producer,
        &topic,
        &[("o-1".into(), order_with_quantity("o-1", 2))],
    )
    .await;
    wait_stored(&db, 2, &worker).await;
    worker::produce(
        &producer,
        &topic,
        &[
            ("o-1".into(), order_with_quantity("o-1", 2)),
            ("o-1".into(), order_with_quantity("o-1", 99)),
        ],
    )
    .await;

    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), 2, WAIT).await;
    assert_eq!(dead.len(), 2, "both conflicting events dead-lettered");
    for m in &dead {
        let headers = m.headers();
        assert_eq!(h::get(headers, h::DLQ_ERROR_CLASS), Some("Conflict"));
        assert_eq!(
            h::get(headers, h::DLQ_ATTEMPTS),
            Some("1"),
            "permanent by default"
        );
        let stored = h::get(headers, h::DLQ_STORED_CONTENT_SHA256).expect("stored hash");
        let incoming = h::get(headers, h::DLQ_INCOMING_CONTENT_SHA256).expect("incoming hash");
        assert_eq!(stored.len(), 64);
        assert_ne!(stored, incoming);
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(
            value["items"][0]["quantity"], 99,
            "the refused event, unchanged"
        );
        assert!(
            h::get(headers, h::DLQ_ERROR_MESSAGE)
                .unwrap()
                .contains("already stored with different content")
        );
    }
    let keys: std::collections::BTreeSet<String> = dead.iter().map(worker::key_of).collect();
    assert_eq!(keys, ["k-b".to_owned(), "o-1".to_owned()].into());
    eventually("the redeliveries counted", WAIT, || async {
        let duplicates = worker.metric("kafka_consumer_duplicates_total", &[("topic", &topic)]);
        let conflicts = worker.metric("kafka_dlq_messages_total", &[("error_class", "Conflict")]);
        (duplicates == 2.0 && conflicts == 2.0)
            .then_some(())
            .ok_or(format!("{duplicates} duplicates, {conflicts} conflicts"))
    })
    .await;
    let kept: Vec<i32> = db
        .query(
            "SELECT (event->'items'->0->>'quantity')::INT FROM orders ORDER BY order_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, [2, 2], "the first event of each order_id is kept");
}

#[tokio::test]
async fn a_policy_may_retry_conflicts() {
    let stack = testenv::shared();
    let topic = topics(&stack.kafka, "conflict-retry", 1).await;
    let (url, db) = database(&stack.postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = worker::config(
        &stack.kafka,
        &topic,
        &testenv::unique_name("conflict-retry"),
        worker::event_store(dir.path(), &url),
    );
    config.retry = RetryPolicy {
        max_retries: 2,
        initial_backoff_ms: 50,
        max_backoff_ms: 100,
        permanent_errors: vec![ErrorClass::Deserialization, ErrorClass::Validation],
        ..RetryPolicy::default()
    };
    let worker = WorkerProcess::start(dir.path(), "worker", &config).unwrap();
    let producer = worker::producer(&stack.kafka);
    worker::produce(
        &producer,
        &topic,
        &[("r-1".into(), order_with_quantity("r-1", 2))],
    )
    .await;
    wait_stored(&db, 1, &worker).await;
    worker::produce(
        &producer,
        &topic,
        &[("r-1".into(), order_with_quantity("r-1", 7))],
    )
    .await;
    let dead = worker::read_all(&stack.kafka, &format!("{topic}-dlq"), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].headers();
    assert_eq!(h::get(headers, h::DLQ_ERROR_CLASS), Some("Conflict"));
    assert_eq!(
        h::get(headers, h::DLQ_ATTEMPTS),
        Some("3"),
        "retried twice, then dead-lettered"
    );
    assert!(h::get(headers, h::DLQ_STORED_CONTENT_SHA256).is_some());
}
