//! The OrderConsumer reconciler: gather from the API server and the caches (the KafkaTopic,
//! the DLQPolicy, the tenancy rules, the event store Secret's version, the current objects),
//! decide whether it may proceed ([`plan::admission`], pure: its dependencies, its principal,
//! the tenancy and ownership checks of its group and topics), gather from Kafka (the
//! principal's ACLs, the lag, the companion topics), decide everything else ([`plan::plan`],
//! pure), apply in order (the claim on its topics in status.ownedTopics, dead-letter and retry
//! topics, credentials Secret, SCRAM principal, ACL changes, worker ConfigMap, Deployment and
//! PodDisruptionBudget), then status ([`plan::status`], pure). A refused consumer creates
//! nothing and its principal keeps no ACL.
//!
//! Deleting a consumer removes its principal and ACLs (finalizer); its Secret, ConfigMap and
//! Deployment go with it through their owner references.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::context::{Context, object_key, resource_version};
use crate::crd::conditions;
use crate::crd::order_consumer::{FINALIZER, OwnedTopic};
use crate::crd::{DLQPolicy, KafkaTopic, OrderConsumer, OrderConsumerStatus};
use crate::error::Error;
use crate::kafka::AdminError;
use crate::ownership::Companion;
use crate::principal::{self, AclDiff};
use crate::rotation;
use crate::workload;
use plan::Names;

const KIND: &str = "OrderConsumer";

/// A controller over OrderConsumers, woken by their KafkaTopic, their DLQPolicy and the objects
/// they own.
pub fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> (Controller<OrderConsumer>, Store<OrderConsumer>) {
    use crate::context::scoped_api as api;
    let config = watcher::Config::default().any_semantic();
    let mut own_config = config.clone();
    if let Some(selector) = selector {
        own_config = own_config.labels(selector);
    }
    let controller = workload::lean_controller(api::<OrderConsumer>(client, namespace), own_config);
    let store = controller.store();
    let by_topic = store.clone();
    let by_policy = store.clone();
    let by_secret = store.clone();
    let controller = controller
        .owns(api::<Deployment>(client, namespace), config.clone())
        .owns(api::<ConfigMap>(client, namespace), config.clone())
        // A Secret wakes the consumer that owns it (its credentials) and every consumer whose
        // pods mount it (an event store's connection Secret), so a change rolls the workers.
        // Trigger streams keep no cache, and this one reads no Secret's data: only names and
        // owners are used.
        .watches_stream(
            workload::metadata_of(
                api::<PartialObjectMeta<Secret>>(client, namespace),
                config.clone(),
            ),
            move |secret| secret_users(&by_secret, &secret),
        )
        .watches(
            api::<KafkaTopic>(client, namespace),
            config.clone(),
            move |topic| {
                workload::users(&by_topic, &topic.namespace().unwrap_or_default(), |c| {
                    c.spec.topic_ref.name == topic.name_any()
                })
            },
        )
        // A worker pod that turns ready, crash-loops or loses its sink changes Ready; the
        // Deployment's status does not always move with it (a restart keeps it unavailable).
        .watches_stream(
            workload::metadata_of(
                api::<PartialObjectMeta<Pod>>(client, namespace),
                config.clone().labels(plan::CONSUMER_LABEL),
            ),
            |pod| {
                let namespace = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(plan::CONSUMER_LABEL)
                    .map(|name| ObjectRef::new(name).within(&namespace))
            },
        )
        .watches(api::<DLQPolicy>(client, namespace), config, move |policy| {
            workload::users(&by_policy, &policy.namespace().unwrap_or_default(), |c| {
                c.spec
                    .dlq_policy_ref
                    .as_ref()
                    .is_some_and(|r| r.name == policy.name_any())
            })
        });
    (controller, store)
}

/// The consumers that own `secret` or mount it.
fn secret_users(
    store: &Store<OrderConsumer>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<OrderConsumer>> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let owners: BTreeSet<String> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == KIND && o.api_version == OrderConsumer::api_version(&()))
        .map(|o| o.name.clone())
        .collect();
    workload::users(store, &namespace, |c| {
        owners.contains(&c.name_any())
            || c.spec
                .handler
                .event_store
                .as_ref()
                .is_some_and(|s| s.connection_secret.name == name)
    })
}

/// Runs the reconciler until `shutdown`, once the KafkaTopic cache has listed (a consumer
/// reads its topic from it).
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<OrderConsumer>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    workload::run(KIND, ctx, controller, reconcile, shutdown).await;
}

async fn reconcile(consumer: Arc<OrderConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let context = Arc::clone(&ctx);
    ctx.under_finalizer(KIND, FINALIZER, consumer, move |event, _api| async move {
        match event {
            Finalizer::Apply(c) => apply(&c, &context).await,
            Finalizer::Cleanup(c) => cleanup(&c, &context).await,
        }
    })
    .await
}

/// Reads what the plan needs from the API server and the caches (no Kafka).
async fn gather(consumer: &OrderConsumer, ctx: &Context) -> Result<plan::Gathered, Error> {
    let ns = consumer.namespace().unwrap_or_default();
    let names = Names::of(consumer);
    let topic = ctx
        .topics
        .get(&ObjectRef::new(&consumer.spec.topic_ref.name).within(&ns))
        .filter(|t| t.is_ready());
    let policy = match &consumer.spec.dlq_policy_ref {
        None => None,
        Some(r) => Api::<DLQPolicy>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&r.name)
            .await?
            .map(|p| p.spec),
    };
    let event_store_secret = match &consumer.spec.handler.event_store {
        None => None,
        Some(store) => {
            resource_version(
                &Api::<Secret>::namespaced(ctx.client.clone(), &ns),
                &store.connection_secret.name,
            )
            .await?
        }
    };
    Ok(plan::Gathered {
        topic,
        policy,
        principal_holder: principal_holder(consumer, ctx).await?,
        rules: ctx.access_rules(&ns).await?,
        topics: ctx.topics.state(),
        consumers: ctx.consumers.state(),
        event_store_secret,
        deployment: Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&names.deployment)
            .await?,
        config_map_version: resource_version(
            &Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns),
            &names.config_map,
        )
        .await?,
        budget_version: resource_version(
            &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
            &names.deployment,
        )
        .await?,
    })
}

/// Reads what Kafka holds for an admitted consumer: its principal's ACLs, the lag of its
/// group, the partitions of the topics it owns.
async fn gather_kafka(
    ctx: &Context,
    names: &Names,
    admitted: &plan::Admitted,
) -> Result<plan::KafkaState, Error> {
    let mut companion_partitions = BTreeMap::new();
    for (topic, used) in &admitted.companions {
        if *used == Companion::Owned {
            let existing = ctx.admin.describe_topic(&topic.name).await?;
            companion_partitions.insert(topic.name.clone(), existing.map(|t| t.partition_count()));
        }
    }
    Ok(plan::KafkaState {
        acls: principal::acls(&ctx.admin, &names.kafka.principal).await?,
        lag: measure_lag(ctx, &admitted.group, &admitted.source, admitted.partitions).await?,
        companion_partitions,
    })
}

async fn apply(consumer: &OrderConsumer, ctx: &Context) -> Result<Action, Error> {
    // The rotation step first: the rest of the pass sees the consumer as it records it (the
    // username its workers are to use), and so does a failed pass's status.
    let (consumer, outcome) = match rotation::begin(consumer, ctx).await {
        Ok((step, seen)) => {
            let outcome = converge(&seen, &step, ctx).await;
            (seen, outcome)
        }
        Err(error) => (consumer.clone(), Err(error)),
    };
    let consumer = &consumer;
    match outcome {
        Ok(Converged { status, recheck }) => {
            ctx.backoff.reset(&object_key(consumer));
            ctx.metrics.set_kafka_up(true);
            write_status(consumer, ctx, status).await?;
            let resync = ctx.settings.resync;
            Ok(Action::requeue(recheck.map_or(resync, |r| r.min(resync))))
        }
        Err(error) => {
            if matches!(&error, Error::Kafka(e) if e.is_unavailable()) {
                ctx.metrics.set_kafka_up(false);
            }
            let mut status = consumer.status.clone().unwrap_or_default();
            status.observed_generation = consumer.metadata.generation;
            status.conditions = workload::failed_conditions(
                &status.conditions,
                &error,
                consumer.metadata.generation,
            );
            write_status(consumer, ctx, status).await?;
            Err(error)
        }
    }
}

/// A successful pass: the status to write, and when to look again if sooner than the resync.
struct Converged {
    status: OrderConsumerStatus,
    recheck: Option<std::time::Duration>,
}

/// Gathers, decides ([`plan::admission`], then what Kafka holds and [`plan::plan`]), applies
/// in order, and returns the status to write ([`plan::status`]).
async fn converge(
    consumer: &OrderConsumer,
    step: &rotation::Step,
    ctx: &Context,
) -> Result<Converged, Error> {
    let gathered = gather(consumer, ctx).await?;
    let names = Names::of(consumer);
    let admitted = match plan::admission(consumer, &gathered)? {
        plan::Admission::Admitted(admitted) => admitted,
        // Tenancy first: a refused consumer creates no topic and keeps no ACL.
        plan::Admission::Refused(refusal) => {
            for user in std::iter::once(names.kafka.user.as_str()).chain(step.retiring()) {
                let principal = format!("User:{user}");
                let actual = principal::acls(&ctx.admin, &principal).await?;
                let revoke = AclDiff::between(&principal, &BTreeSet::new(), &actual);
                principal::apply_acls(consumer, ctx, &revoke).await?;
            }
            return Err(refusal);
        }
    };
    let kafka = gather_kafka(ctx, &names, &admitted).await?;
    let key = object_key(consumer);
    let plan = plan::plan(
        consumer,
        &gathered,
        admitted,
        &kafka,
        &ctx.recommendations.get(&key),
        jiff::Timestamp::now(),
        &ctx.settings,
    )?;

    // Recorded before the topics are created, so no one else can claim them meanwhile.
    if plan.record_owned_topics {
        record_owned_topics(consumer, ctx, &plan.owned_topics).await?;
    }
    for change in &plan.topic_changes {
        change_companion_topic(consumer, ctx, change).await?;
    }
    let credentials_version = principal::ensure(
        consumer,
        ctx,
        &plan.names.kafka,
        plan::child_meta(consumer, &plan.names.kafka.secret),
    )
    .await?;
    principal::apply_acls(consumer, ctx, &plan.acls).await?;
    rotation::keep_retiring_acls(consumer, ctx, step, &plan.acls).await?;
    ctx.recommendations.set(&key, plan.recommendations.clone());

    let ns = consumer.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply_if_changed(
        &config_maps,
        &plan.names.config_map,
        gathered.config_map_version.clone(),
        &plan.config_map,
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let desired = plan.deployment(consumer, &gathered, &ctx.settings, credentials_version);
    let applied = ctx
        .apply_or_keep(&deployments, gathered.deployment.clone(), &desired)
        .await?
        .expect("the worker Deployment was applied or is unchanged");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply_if_changed(
        &budgets,
        &plan.names.deployment,
        gathered.budget_version.clone(),
        &plan.budget,
    )
    .await?;
    if let Some(note) = plan.scaled.clone() {
        let (replicas, capped) = (plan.replicas, plan.capped);
        info!(replicas, capped, "scaled the worker Deployment");
        ctx.event(consumer, EventType::Normal, "Scaled", note).await;
    }

    // Ready is the workers', not the operator's: the wanted pods must be available. The pods
    // are read only when the Deployment says some are missing, so a healthy consumer at rest
    // costs no list.
    let workload = plan::Workload::of(plan.replicas, &applied);
    let pods = if workload.is_ready() {
        Vec::new()
    } else {
        let now = jiff::Timestamp::now();
        Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&plan::selector(consumer)))
            .await?
            .items
            .iter()
            .map(|p| plan::WorkerPod::of(p, now))
            .collect()
    };
    let mut status = plan::status(consumer, &plan, &workload, &pods);
    let group = plan.admitted.group.as_str();
    let rotating = rotation::advance(
        consumer,
        ctx,
        step,
        &[&applied],
        Some(group),
        &mut status.credentials,
        &mut status.conditions,
    )
    .await?;
    Ok(Converged {
        status,
        recheck: rotation::recheck(rotating, plan::recheck_after(&pods)),
    })
}

/// Writes status.ownedTopics, the consumer's claim on its topics (a merge patch: the rest of
/// the status is written at the end of the pass).
pub(crate) async fn record_owned_topics(
    consumer: &OrderConsumer,
    ctx: &Context,
    owned: &[OwnedTopic],
) -> Result<(), kube::Error> {
    let api: Api<OrderConsumer> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &consumer.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "ownedTopics": owned } })),
    )
    .await?;
    Ok(())
}

/// Creates the dead-letter topic or a retry topic, or grows it to the partitions it needs,
/// as [`plan::plan`] decided.
async fn change_companion_topic(
    consumer: &OrderConsumer,
    ctx: &Context,
    change: &plan::CompanionChange,
) -> Result<(), Error> {
    let (topic, partitions) = (&change.topic, change.partitions);
    match &change.create {
        Some((replication, configs)) => {
            match ctx
                .admin
                .create_topic(topic, partitions, *replication, configs)
                .await
            {
                Err(e)
                    if e.code() == Some(rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists) => {}
                other => other?,
            }
        }
        None => {
            // Already grown, by an earlier pass whose change this pass's metadata did not show.
            if !ctx.admin.grow_partitions(topic, partitions).await? {
                return Ok(());
            }
        }
    }
    // Reported only once the cluster's metadata shows it, as a KafkaTopic is: the status that
    // follows, and the workers started on it, find the topic as planned.
    if ctx.admin.describe_grown(topic, partitions).await?.is_none() {
        return Err(Error::Kafka(AdminError::Unavailable(format!(
            "topic {topic} does not show in the cluster's metadata yet"
        ))));
    }
    let (reason, note) = change.event();
    ctx.event(consumer, EventType::Normal, reason, note).await;
    Ok(())
}

/// Records the group has not committed, summed over the source's partitions.
async fn measure_lag(
    ctx: &Context,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<i64, AdminError> {
    let ends = ctx.admin.end_offsets(topic, partitions).await?;
    let committed = ctx.admin.group_offsets(group, topic, partitions).await?;
    Ok(ends
        .iter()
        .map(|(p, end)| {
            let done = committed.get(p).copied().flatten().unwrap_or(0);
            (end - done).max(0)
        })
        .sum())
}

/// Writes the status when a user would see a change; a Warning when the operator fails, the
/// workers degrade or the cap applies, once per change of reason (a consumer starting up is
/// not a warning).
async fn write_status(
    consumer: &OrderConsumer,
    ctx: &Context,
    status: OrderConsumerStatus,
) -> Result<(), kube::Error> {
    ctx.write_status(
        consumer,
        consumer.status.as_ref(),
        &status,
        &[
            (conditions::RECONCILED, "False"),
            (conditions::DEGRADED, "True"),
            (conditions::CAPPED, "True"),
        ],
    )
    .await
    .map(drop)
}

/// Removes the consumer's ACLs and SCRAM credential from Kafka, unless an OrderGateway of the
/// same name holds that principal.
async fn cleanup(consumer: &OrderConsumer, ctx: &Context) -> Result<Action, Error> {
    if principal_holder(consumer, ctx).await?.is_none() {
        remove_principal(consumer, &ctx.admin).await?;
    }
    ctx.recommendations.set(&object_key(consumer), Vec::new());
    let names = Names::of(consumer);
    ctx.applied.forget(
        &consumer.namespace().unwrap_or_default(),
        &[&names.kafka.secret, &names.config_map, &names.deployment],
    );
    Ok(Action::await_change())
}

/// The OrderGateway of the same name that holds the principal both would use, if any
/// ([`crate::ownership::consumer_keeps_principal`]).
async fn principal_holder(
    consumer: &OrderConsumer,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let ns = consumer.namespace().unwrap_or_default();
    let Some(gateway) = ctx
        .gateways
        .get(&ObjectRef::new(&consumer.name_any()).within(&ns))
    else {
        return Ok(None);
    };
    Ok((!principal::consumer_holds(ctx, consumer, &gateway).await?).then(|| gateway.name_any()))
}

/// Deletes the consumer's ACLs and its SCRAM credential (both idempotent).
pub async fn remove_principal(
    consumer: &OrderConsumer,
    admin: &crate::kafka::KafkaAdmin,
) -> Result<(), AdminError> {
    principal::remove_both(admin, &principal::Principal::base(consumer)).await
}
