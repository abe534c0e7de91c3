//! The demo's scripted path, as `make demo` runs it (on the suite's stack and its node), with
//! its summary numbers checked against the system; and every example manifest accepted by the
//! real API server.

use std::path::PathBuf;
use std::time::Duration;

use testenv::Lifetime;
use testenv::demo::{self, Options};
use tokio::sync::Mutex;

/// Both tests use the examples' namespace.
static SHOP: Mutex<()> = Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_demo_accounts_for_every_order() {
    let _shop = SHOP.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        dir: dir.path().join("demo"),
        repo: repo(),
        orders: 300,
        users: 20,
        bad_requests: 9,
        poison: 6,
        progress: false,
    };
    let stack = testenv::shared();
    // The examples' topic names are shared with the chart test on the suite's Kafka; a topic
    // left there would be one no resource manages (TopicExists until adopted), unlike on the
    // fresh stack `make demo` starts.
    let kafka_admin = stack.kafka.kafka_admin();
    for topic in ["orders", "users", "orders-dlq", "users-dlq"] {
        if kafka_admin.describe_topic(topic).await.unwrap().is_some() {
            kafka_admin.delete_topic(topic).await.unwrap();
        }
    }
    let (summary, running) = demo::run_on(&options, stack, Lifetime::Owned)
        .await
        .expect("the demo runs");
    println!("{}", demo::render(&summary));
    assert_eq!(summary.orders_accepted, 300, "every valid order accepted");
    assert_eq!(
        summary.orders_stored, 300,
        "orders sent = stored + dead-lettered"
    );
    let dead: usize = summary.dead_letters.values().sum();
    assert_eq!(dead, 6, "dead letters only for the bad records");
    assert_eq!(summary.dead_letters.get("Deserialization"), Some(&3));
    assert_eq!(summary.dead_letters.get("Validation"), Some(&3));
    assert_eq!(summary.rejected.values().sum::<usize>(), 9);
    assert!(
        summary
            .rejected
            .keys()
            .all(|code| (400..500).contains(code))
    );
    assert_eq!(summary.users_delivered, 20);
    assert_eq!(summary.lag, 0);
    let store = summary
        .consumers
        .iter()
        .find(|c| c.name == "order-store")
        .unwrap();
    assert_eq!(
        (store.replicas, store.wanted, store.max, store.ready),
        (3, 5, 3, 3),
        "capped at the partitions"
    );
    assert!(summary.topics.contains(&("orders".to_owned(), 3)));
    assert!(summary.topics.contains(&("orders-dlq".to_owned(), 3)));
    // Every pod was started by Kubernetes and is Running and Ready, none restarted: the
    // operator, 3 + 1 workers and the two OrderGateways' pods.
    assert_eq!(summary.pods.len(), 7, "{:?}", summary.pods);
    for gateway in ["shop/orders-gateway-", "shop/users-gateway-"] {
        assert!(
            summary.pods.iter().any(|p| p.name.starts_with(gateway)),
            "a pod of {gateway}: {:?}",
            summary.pods
        );
    }
    for pod in &summary.pods {
        assert_eq!(
            (pod.phase.as_str(), pod.ready, pod.restarts),
            ("Running", true, 0),
            "{pod:?}"
        );
    }

    // Prometheus finds the operator, the gateways and every worker pod through the Kubernetes
    // API, and counts the dead letters the workers published; Jaeger holds the trace the
    // summary names.
    testenv::eventually(
        "every demo pod scraped",
        Duration::from_secs(60),
        || async {
            let targets: Vec<_> = stack
                .prometheus
                .targets()?
                .into_iter()
                .filter(|t| {
                    ["shop", "pubsubkafka-system"]
                        .contains(&t.labels.get("namespace").map(String::as_str).unwrap_or(""))
                })
                .collect();
            let up = targets.iter().filter(|t| t.health == "up").count();
            (targets.len() == summary.pods.len() && up == targets.len())
                .then_some(())
                .ok_or(format!("{up} of {} up: {targets:?}", targets.len()))
        },
    )
    .await;
    testenv::eventually(
        "the dead letters counted",
        Duration::from_secs(60),
        || async {
            let n = stack
                .prometheus
                .query_sum("sum(kafka_dlq_messages_total{topic=\"orders-dlq\"})")?;
            (n == 6.0).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;
    let trace = summary
        .dead_letter_trace
        .clone()
        .expect("a dead letter's trace id");
    assert_eq!(trace.len(), 32);
    assert!(summary.urls["dead-lettered order trace"].ends_with(&trace));
    testenv::eventually(
        "the dead-lettered order's trace in Jaeger",
        Duration::from_secs(60),
        || async {
            let stored = stack.jaeger.trace(&trace)?.ok_or("not stored yet")?;
            stored
                .spans
                .iter()
                .any(|s| s.service == "legacy-order-system" && s.operation == "orders publish")
                .then_some(())
                .ok_or(stored.outline())
        },
    )
    .await;
    drop(running);
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let _shop = SHOP.lock().await;
    let stack = testenv::shared();
    let client = stack.kube.client().await.unwrap();
    testenv::operator::install_crds(&client).await;
    for profile in ["dev", "prod", "replay"] {
        let dir = repo().join("examples").join(profile);
        let out = stack
            .kube
            .kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A dry run cannot place objects in a namespace it did not create.
        let only_missing_namespace = stderr
            .lines()
            .all(|l| l.trim().is_empty() || l.contains("namespaces \"shop\" not found"));
        assert!(
            out.status.success() || only_missing_namespace,
            "{profile}: {stderr}"
        );
    }
    // With the namespace in place, everything applies for real.
    let _ = stack
        .kube
        .kubectl()
        .args(["create", "namespace", "shop"])
        .output();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for profile in ["dev", "prod", "replay"] {
        let out = stack
            .kube
            .kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(repo().join("examples").join(profile))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{profile}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
