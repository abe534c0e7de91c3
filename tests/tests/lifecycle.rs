//! The operator's life as a Deployment sees it, against the real API server and the real
//! secured Kafka: a standby replica is Ready, a SIGTERMed leader hands the Lease over at once,
//! restarts never flip consumers to `TopicNotReady`, and a changed Secret the workers mount
//! rolls them.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use pubsubkafka_controller::consumer::plan::CONFIG_HASH_ANNOTATION;
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer, conditions};
use testenv::operator::{self, OperatorProcess};
use testenv::scenario::Scenario;
use testenv::worker::metric_value;
use testenv::{eventually, unique_name};

const WAIT: Duration = Duration::from_secs(60);

fn topic_yaml(name: &str) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\nspec:\n  \
         partitions: 2\n  replicationFactor: 1\n"
    )
}

fn consumer_yaml(name: &str, topic: &str, db_secret: &str) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: {name}\nspec:\n  \
         topicRef: {{name: {topic}}}\n  handler:\n    eventStore:\n      connectionSecret: {{name: {db_secret}, key: url}}\n"
    )
}

fn secret_yaml(name: &str, url: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  url: {url}\n")
}

async fn holder(leases: &Api<Lease>, name: &str) -> Result<Option<String>, String> {
    let lease = leases.get_opt(name).await.map_err(|e| e.to_string())?;
    Ok(lease.and_then(|l| l.spec?.holder_identity))
}

/// The consumer once the operator did its part (Reconciled; Ready needs worker pods, which
/// this API server does not run).
async fn consumer_ready(scenario: &Scenario, name: &str) -> OrderConsumer {
    let consumers: Api<OrderConsumer> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    eventually(
        &format!("OrderConsumer {name} Reconciled"),
        WAIT,
        || async {
            let c = consumers.get(name).await.map_err(|e| e.to_string())?;
            c.status
                .as_ref()
                .is_some_and(|s| conditions::is_reconciled(&s.conditions))
                .then(|| c.clone())
                .ok_or(format!("{:?}", c.status))
        },
    )
    .await
}

/// The Warning events in the namespace with `reason`.
async fn events_with_reason(scenario: &Scenario, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(scenario.client.clone(), &scenario.ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| format!("{:?}: {:?}", e.regarding.and_then(|r| r.name), e.note))
        .collect()
}

#[tokio::test]
async fn a_standby_is_ready_and_takes_over_within_seconds_of_the_leaders_sigterm() {
    let scenario = Scenario::with("handover", &testenv::shared().kafka, false).await;
    let dir = tempfile::tempdir().unwrap();
    let kafka = &testenv::shared().kafka;
    let replica = |identity: &str| {
        let mut flags = operator::process_args(kafka, &scenario.ns, Duration::from_secs(3));
        flags.extend(
            [
                "--leader-elect",
                "--leader-election-namespace",
                &scenario.ns,
                "--leader-election-lease",
                "handover",
                "--leader-election-identity",
                identity,
            ]
            .map(String::from),
        );
        flags
    };
    let leases: Api<Lease> = Api::namespaced(scenario.client.clone(), &scenario.ns);

    let mut first = OperatorProcess::start(
        &scenario.kube,
        &replica("replica-a"),
        &dir.path().join("a.log"),
    );
    eventually("replica-a to lead", WAIT, || async {
        match holder(&leases, "handover").await? {
            Some(h) if h == "replica-a" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    first.wait_ready().await;

    // The standby is Ready while the leader renews: a rolling update can complete.
    let mut second = OperatorProcess::start(
        &scenario.kube,
        &replica("replica-b"),
        &dir.path().join("b.log"),
    );
    second.wait_ready().await;
    assert_eq!(
        holder(&leases, "handover").await.unwrap().as_deref(),
        Some("replica-a"),
        "the standby answers /readyz 200 without holding the Lease"
    );

    // SIGTERM the leader: its passes in flight get at most 10 s, then it releases the Lease as
    // it exits, and the standby, watching the Lease, takes it at once. Without the release it
    // would wait for the expiry, 15 s after the last renewal; without the watch, for its next
    // try, up to 4 s later.
    let sigterm = Instant::now();
    first.terminate(Duration::from_secs(20));
    let exited = Instant::now();
    let after_exit = holder(&leases, "handover").await.unwrap();
    assert_ne!(
        after_exit.as_deref(),
        Some("replica-a"),
        "the leader cleared its hold before exiting ({:?} after SIGTERM)\n{}",
        sigterm.elapsed(),
        first.log_tail()
    );
    eventually("replica-b to take over", WAIT, || async {
        match holder(&leases, "handover").await? {
            Some(h) if h == "replica-b" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (handover, after_release) = (sigterm.elapsed(), exited.elapsed());
    eprintln!(
        "leader exited {:?} after SIGTERM; handed over {after_release:?} later",
        exited - sigterm
    );
    assert!(
        after_release < Duration::from_secs(3),
        "the standby took the released Lease {after_release:?} after the leader exited"
    );
    assert!(
        handover < Duration::from_secs(15),
        "handed over {handover:?} after SIGTERM; the Lease lasts 15 s"
    );

    // The new leader reconciles.
    let topic = unique_name("after-handover");
    scenario.apply_ok(&topic_yaml(&topic));
    let topics: Api<KafkaTopic> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    eventually("the new leader to reconcile", WAIT, || async {
        let t = topics.get(&topic).await.map_err(|e| e.to_string())?;
        t.is_ready().then_some(()).ok_or(format!("{:?}", t.status))
    })
    .await;
    second.check_alive().unwrap();
}

#[tokio::test]
async fn restarts_never_flip_a_ready_consumer_to_topic_not_ready() {
    let scenario = Scenario::with("restarts", &testenv::shared().kafka, false).await;
    let dir = tempfile::tempdir().unwrap();
    let kafka = &testenv::shared().kafka;
    // A long resync: a consumer flipped by a cold cache would stay flipped for the whole test.
    let flags = operator::process_args(kafka, &scenario.ns, Duration::from_secs(600));
    let topic = unique_name("orders");
    let mut operator = OperatorProcess::start(&scenario.kube, &flags, &dir.path().join("0.log"));
    scenario.apply_ok(&topic_yaml(&topic));
    let topics: Api<KafkaTopic> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    eventually("the topic Ready", WAIT, || async {
        let t = topics.get(&topic).await.map_err(|e| e.to_string())?;
        t.is_ready().then_some(()).ok_or(format!("{:?}", t.status))
    })
    .await;
    for name in ["store-a", "store-b", "store-c"] {
        scenario.apply_ok(&consumer_yaml(name, &topic, "orders-db"));
    }
    for name in ["store-a", "store-b", "store-c"] {
        consumer_ready(&scenario, name).await;
    }
    assert_eq!(
        events_with_reason(&scenario, conditions::reason::TOPIC_NOT_READY).await,
        Vec::<String>::new(),
        "the topic was Ready before any consumer existed"
    );
    let restarts = 10;
    for round in 1..=restarts {
        operator.terminate(Duration::from_secs(20));
        operator = OperatorProcess::start(
            &scenario.kube,
            &flags,
            &dir.path().join(format!("{round}.log")),
        );
        // Every consumer has been reconciled once by the new process (the initial list).
        let metrics = eventually("the restarted operator's first passes", WAIT, || async {
            let (_, text) = operator.get("/metrics")?;
            let passes = metric_value(
                &text,
                "pubsubkafka_controller_reconciliations_total",
                &[("kind", "OrderConsumer")],
            );
            (passes >= 3.0).then_some(text).ok_or(format!("{passes}"))
        })
        .await;
        let not_ready = metric_value(
            &metrics,
            "pubsubkafka_controller_reconcile_errors_total",
            &[("kind", "OrderConsumer"), ("reason", "TopicNotReady")],
        );
        assert_eq!(
            not_ready,
            0.0,
            "restart {round}: a consumer found no Ready topic in a cold cache\n{}",
            operator.log_tail()
        );
        for name in ["store-a", "store-b", "store-c"] {
            let c = consumer_ready(&scenario, name).await;
            let status = c.status.unwrap();
            let reconciled = status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::RECONCILED)
                .unwrap();
            assert_eq!(reconciled.reason, conditions::reason::RECONCILED, "{name}");
        }
    }
    let flips = events_with_reason(&scenario, conditions::reason::TOPIC_NOT_READY).await;
    assert!(flips.is_empty(), "TopicNotReady after a restart: {flips:?}");
}

#[tokio::test]
async fn a_changed_database_secret_rolls_the_workers_and_an_unrelated_one_does_not() {
    let scenario = Scenario::with("secret-roll", &testenv::shared().kafka, false).await;
    let dir = tempfile::tempdir().unwrap();
    // Resync far beyond the test: only the Secret watch can roll the workers in time.
    let flags = operator::process_args(
        &testenv::shared().kafka,
        &scenario.ns,
        Duration::from_secs(600),
    );
    let operator = OperatorProcess::start(&scenario.kube, &flags, &dir.path().join("op.log"));
    let topic = unique_name("orders");
    scenario.apply_ok(&secret_yaml("orders-db", "postgres://wrong-host/orders"));
    scenario.apply_ok(&secret_yaml("unrelated", "postgres://a/b"));
    scenario.apply_ok(&topic_yaml(&topic));
    scenario.apply_ok(&consumer_yaml("store", &topic, "orders-db"));
    consumer_ready(&scenario, "store").await;

    let deployments: Api<Deployment> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    let template_hash = |d: &Deployment| -> Option<String> {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
    };
    let before = deployments.get("store-worker").await.unwrap();
    let hash_before = template_hash(&before).expect("a config hash on the pod template");
    let generation_before = before.metadata.generation.unwrap();

    let secrets: Api<Secret> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    let set_url = |name: &'static str, url: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"stringData": {"url": url}})),
                )
                .await
                .unwrap();
        }
    };
    // First a Secret no consumer mounts, then the corrected database URL.
    set_url("unrelated", "postgres://c/d").await;
    set_url("orders-db", "postgres://orders-db.shop.svc/orders").await;
    let after = eventually(
        "the corrected database Secret to roll the workers",
        Duration::from_secs(30),
        || async {
            let d = deployments
                .get("store-worker")
                .await
                .map_err(|e| e.to_string())?;
            (template_hash(&d).as_deref() != Some(hash_before.as_str()))
                .then_some(d)
                .ok_or_else(|| "same hash".to_owned())
        },
    )
    .await;
    assert_eq!(
        after.metadata.generation.unwrap(),
        generation_before + 1,
        "exactly one rollout: the unrelated Secret changed nothing"
    );

    // Passes that find every Secret unchanged roll nothing: re-applying the credentials Secret
    // is a no-op that keeps its version. Each of three metadata changes wakes a pass.
    let consumers: Api<OrderConsumer> = Api::namespaced(scenario.client.clone(), &scenario.ns);
    let passes = || {
        let (_, text) = operator.get("/metrics").unwrap();
        metric_value(
            &text,
            "pubsubkafka_controller_reconciliations_total",
            &[("kind", "OrderConsumer")],
        )
    };
    for round in 0..3 {
        let passes_before = passes();
        consumers
            .patch(
                "store",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"annotations": {"example.com/touched": round.to_string()}}
                })),
            )
            .await
            .unwrap();
        eventually(
            "a pass after the change",
            Duration::from_secs(30),
            || async {
                let now = passes();
                (now > passes_before)
                    .then_some(())
                    .ok_or(format!("{now} after {passes_before}"))
            },
        )
        .await;
    }
    let settled = deployments.get("store-worker").await.unwrap();
    assert_eq!(template_hash(&settled), template_hash(&after));
    assert_eq!(
        settled.metadata.generation, after.metadata.generation,
        "no rollout from passes that changed nothing"
    );
}
