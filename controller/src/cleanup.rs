//! `pubsubkafka-controller cleanup`: the uninstall step. It runs when no operator reconciles
//! (the chart's pre-delete hook first scales the operator's Deployment to zero and takes its
//! Lease; run by hand, after the operator is gone) and leaves nothing of the operator behind:
//!
//! - every OrderConsumer, OrderGateway and DLQReplay: its ACLs and SCRAM user are deleted from Kafka (its
//!   pods lose access; a reinstalled operator recreates both from the credentials Secret), then
//!   its finalizer is removed;
//! - every KafkaTopic being deleted: what its deletion would have done (the ACLs it wrote, and
//!   the topic with `deletionPolicy: Delete`), then its finalizer;
//! - every other KafkaTopic with a finalizer: the finalizer only. Uninstalling the operator
//!   never deletes a topic that a resource still declares; deleting that resource later no
//!   longer waits for an operator that is gone.
//!
//! So no namespace hangs on a finalizer after uninstall, and no principal or ACL outlives the
//! consumer it was made for. Having stopped the operator's Deployment, it deletes the
//! leader-election Lease as well.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::context::scoped_api as api;
use crate::crd::{
    DLQReplay, KafkaTopic, OrderConsumer, OrderGateway, dlq_replay, kafka_topic, order_consumer,
    order_gateway,
};
use crate::kafka::{AdminError, KafkaAdmin};
use crate::settings::Args;
use crate::{consumer, leader, topic};

/// `pubsubkafka-controller cleanup [FLAGS]`: the operator's flags (Kafka connection, scope,
/// Lease) plus what to stop first.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "pubsubkafka-controller cleanup",
    about = "Before uninstalling: delete the principals and ACLs the operator created and \
             remove its finalizers, so no namespace hangs once the operator is gone"
)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub operator: Args,
    /// The operator's Deployment (in POD_NAMESPACE) to scale to zero first, so no replica
    /// reconciles (and recreates what this removes) meanwhile.
    #[arg(long, env = "PSK_CLEANUP_STOP_DEPLOYMENT")]
    pub stop_deployment: Option<String>,
    /// How long to wait for the operator's pods to stop and its Lease to be free.
    #[arg(long, env = "PSK_CLEANUP_TIMEOUT", default_value = "120s", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

/// Why the cleanup did not finish. Run it again: every step is idempotent.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("Kafka connection settings: {0}")]
    KafkaConfig(#[from] pubsubkafka_contract::config::ConfigError),
    #[error("Kafka admin client: {0}")]
    KafkaAdmin(#[from] AdminError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("{} objects were not cleaned up: {}", .0.len(), .0.join("; "))]
    Incomplete(Vec<String>),
}

/// What the cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// OrderConsumers whose principal and ACLs went, `namespace/name`.
    pub consumers: Vec<String>,
    /// OrderGateways whose principal and ACLs went, `namespace/name`.
    pub gateways: Vec<String>,
    /// DLQReplays whose principal and ACLs went, `namespace/name`.
    pub replays: Vec<String>,
    /// KafkaTopics whose finalizer went, `namespace/name`.
    pub topics: Vec<String>,
}

/// Runs the cleanup with `client`.
pub async fn run(args: CleanupArgs, client: kube::Client) -> Result<Summary, CleanupError> {
    let settings = &args.operator;
    let admin = KafkaAdmin::new(
        &settings.kafka.connection().client_config()?,
        settings.kafka_timeout,
    )?;
    if let Some(name) = &args.stop_deployment {
        stop_deployment(
            &client,
            &settings.leader_election_namespace,
            name,
            args.timeout,
        )
        .await?;
    }
    let lease = if settings.leader_elect {
        let election = leader::Election {
            namespace: settings.leader_election_namespace.clone(),
            name: settings.leader_election_lease.clone(),
            identity: format!("cleanup-{}", leader::Election::identity()),
            duration: leader::LEASE_DURATION,
            renew: CLEANUP_LEASE_RENEW,
        };
        let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
        info!(lease = %election.name, "taking the operator's Lease, so no replica reconciles meanwhile");
        tokio::time::timeout(args.timeout, leader::acquire(&leases, &election))
            .await
            .map_err(|_| {
                CleanupError::Timeout(format!(
                    "Lease {}/{} is still held by a running operator after {:?}; stop it \
                     first (scale its Deployment to 0)",
                    election.namespace, election.name, args.timeout
                ))
            })?;
        Some((leases, election))
    } else {
        None
    };

    let result = clean(&client, &admin, settings.watch_namespace.as_deref()).await;

    if let Some((leases, election)) = &lease {
        // With the operator stopped for good (the uninstall hook), the Lease goes too; an
        // operator brought back (rollback) creates it again. Otherwise it is handed back.
        let outcome = if args.stop_deployment.is_some() && result.is_ok() {
            leases
                .delete(&election.name, &Default::default())
                .await
                .map(drop)
        } else {
            leader::release(leases, election).await.map(drop)
        };
        if let Err(e) = outcome {
            warn!(error = %e, "could not give the Lease up; it expires on its own");
        }
    }
    result
}

/// Scales the Deployment to zero and waits until it has no pods left.
async fn stop_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), CleanupError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    if deployments.get_opt(name).await?.is_none() {
        info!(deployment = %name, "the operator's Deployment is already gone");
        return Ok(());
    }
    deployments
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    info!(deployment = %name, "scaled the operator to zero; waiting for its pods to stop");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pods = deployments
            .get_opt(name)
            .await?
            .and_then(|d| d.status)
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        if pods == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CleanupError::Timeout(format!(
                "Deployment {namespace}/{name} still has {pods} pods after {timeout:?}"
            )));
        }
        tokio::time::sleep(POD_POLL_INTERVAL).await;
    }
}

/// How often the cleanup renews the Lease it holds while it works: more often than the
/// operator does, as it holds it only for a short job.
const CLEANUP_LEASE_RENEW: Duration = Duration::from_secs(2);
/// How often the cleanup looks whether a Deployment's pods are gone.
const POD_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `namespace/name` of an object.
fn key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

async fn clean(
    client: &kube::Client,
    admin: &KafkaAdmin,
    namespace: Option<&str>,
) -> Result<Summary, CleanupError> {
    let mut summary = Summary::default();
    let mut failed = Vec::new();

    let consumers = api::<OrderConsumer>(client, namespace)
        .list(&ListParams::default())
        .await?;
    for consumer in &consumers.items {
        if !consumer
            .finalizers()
            .iter()
            .any(|f| f == order_consumer::FINALIZER)
        {
            continue;
        }
        let outcome = async {
            consumer::remove_principal(consumer, admin).await?;
            remove_finalizer(client, consumer, order_consumer::FINALIZER).await?;
            Ok::<_, CleanupError>(())
        }
        .await;
        match outcome {
            Ok(()) => summary.consumers.push(key(consumer)),
            Err(e) => failed.push(format!("OrderConsumer {}: {e}", key(consumer))),
        }
    }

    let gateways = api::<OrderGateway>(client, namespace)
        .list(&ListParams::default())
        .await?;
    for gateway in &gateways.items {
        if !gateway
            .finalizers()
            .iter()
            .any(|f| f == order_gateway::FINALIZER)
        {
            continue;
        }
        let outcome = async {
            crate::gateway::remove_principal(gateway, admin).await?;
            remove_finalizer(client, gateway, order_gateway::FINALIZER).await?;
            Ok::<_, CleanupError>(())
        }
        .await;
        match outcome {
            Ok(()) => summary.gateways.push(key(gateway)),
            Err(e) => failed.push(format!("OrderGateway {}: {e}", key(gateway))),
        }
    }

    let replays = api::<DLQReplay>(client, namespace)
        .list(&ListParams::default())
        .await?;
    for replay in &replays.items {
        if !replay
            .finalizers()
            .iter()
            .any(|f| f == dlq_replay::FINALIZER)
        {
            continue;
        }
        let outcome = async {
            // Its Job goes with the resource (owner reference) or stays as a record; without
            // the principal it cannot write anything more.
            let names = crate::replay::plan::Names::of(replay);
            crate::principal::remove(admin, &names.user, &names.principal).await?;
            remove_finalizer(client, replay, dlq_replay::FINALIZER).await?;
            Ok::<_, CleanupError>(())
        }
        .await;
        match outcome {
            Ok(()) => summary.replays.push(key(replay)),
            Err(e) => failed.push(format!("DLQReplay {}: {e}", key(replay))),
        }
    }

    let topics = api::<KafkaTopic>(client, namespace)
        .list(&ListParams::default())
        .await?;
    // Ownership is decided as the operator decides it: among every KafkaTopic and the
    // OrderConsumers (whose dead-letter and retry topics are theirs).
    let all_consumers = api::<OrderConsumer>(client, namespace)
        .list(&ListParams::default())
        .await?;
    for kafka_topic in &topics.items {
        if !kafka_topic
            .finalizers()
            .iter()
            .any(|f| f == kafka_topic::FINALIZER)
        {
            continue;
        }
        let outcome = async {
            // Only a deletion someone asked for touches Kafka, and only by the resource that
            // owns the topic name.
            if kafka_topic.metadata.deletion_timestamp.is_some() {
                let owned_elsewhere = crate::ownership::topic_conflict(
                    kafka_topic,
                    &topics.items,
                    &all_consumers.items,
                )
                .is_some();
                topic::release_kafka(kafka_topic, admin, owned_elsewhere).await?;
            }
            remove_finalizer(client, kafka_topic, kafka_topic::FINALIZER).await?;
            Ok::<_, CleanupError>(())
        }
        .await;
        match outcome {
            Ok(()) => summary.topics.push(key(kafka_topic)),
            Err(e) => failed.push(format!("KafkaTopic {}: {e}", key(kafka_topic))),
        }
    }
    info!(
        consumers = summary.consumers.len(),
        gateways = summary.gateways.len(),
        replays = summary.replays.len(),
        topics = summary.topics.len(),
        "removed the operator's principals, ACLs and finalizers"
    );
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(CleanupError::Incomplete(failed))
    }
}

/// Removes `finalizer` from `object` (compare-and-swap on its resourceVersion).
async fn remove_finalizer<K>(
    client: &kube::Client,
    object: &K,
    finalizer: &str,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let kept: Vec<&String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({
        "metadata": {"finalizers": kept, "resourceVersion": object.resource_version()}
    });
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing holds it any more.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
