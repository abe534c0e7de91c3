//! The operator's life as a Deployment sees it, against the real API server and the real
//! secured Kafka: a standby replica is Ready, and a SIGTERMed leader hands the Lease over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use pubsubkafka_controller::crd::KafkaTopic;
use testenv::operator::{self, OperatorProcess};
use testenv::scenario::Scenario;
use testenv::{eventually, unique_name};

const WAIT: Duration = Duration::from_secs(60);

fn topic_yaml(name: &str) -> String {
    format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {name}\nspec:\n  \
         partitions: 2\n  replicationFactor: 1\n"
    )
}

async fn holder(leases: &Api<Lease>, name: &str) -> Result<Option<String>, String> {
    let lease = leases.get_opt(name).await.map_err(|e| e.to_string())?;
    Ok(lease.and_then(|l| l.spec?.holder_identity))
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

    // SIGTERM the leader: it releases the Lease as it exits, and the standby takes it at its
    // next try, long before the 15 s the Lease would take to expire.
    let sigterm = Instant::now();
    first.terminate(Duration::from_secs(20));
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
    let handover = sigterm.elapsed();
    assert!(
        handover < Duration::from_secs(9),
        "handed over {handover:?} after SIGTERM; the Lease lasts 15 s"
    );
    eprintln!("leader handed over {handover:?} after SIGTERM");

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

