//! The OrderGateway reconciler: gather from the API server and the caches (the KafkaTopic, a
//! consumer sharing the name, the outbox Secret's version, the current objects), decide whether
//! it may proceed ([`plan::admit`], pure), read the principal's ACLs from Kafka, decide the
//! rest ([`plan::plan`], pure), apply in order (the credentials Secret and SCRAM principal, its
//! ACL changes, the gateway Deployment, Service and PodDisruptionBudget, the outbox relay
//! Deployment or its removal), then status ([`plan::status`], pure).
//!
//! Deleting a gateway removes its principal and ACLs (finalizer); its Secret, Deployments,
//! Service and PodDisruptionBudget go with it through their owner references.

pub mod plan;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::info;

use crate::context::{Context, object_key, resource_version};
use crate::crd::conditions;
use crate::crd::order_gateway::FINALIZER;
use crate::crd::{KafkaTopic, OrderGateway, OrderGatewayStatus};
use crate::error::Error;
use crate::principal;
use crate::rotation;
use crate::workload;
use plan::Names;

const KIND: &str = "OrderGateway";

/// A controller over OrderGateways, woken by their KafkaTopic, the Secrets they use and the
/// objects they own.
pub fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> (Controller<OrderGateway>, Store<OrderGateway>) {
    use crate::context::scoped_api as api;
    let config = watcher::Config::default().any_semantic();
    let mut own_config = config.clone();
    if let Some(selector) = selector {
        own_config = own_config.labels(selector);
    }
    let controller =
        crate::workload::lean_controller(api::<OrderGateway>(client, namespace), own_config);
    let store = controller.store();
    let by_topic = store.clone();
    let by_secret = store.clone();
    let controller = controller
        .owns(api::<Deployment>(client, namespace), config.clone())
        // A Secret wakes the gateway that owns it (its credentials) and every gateway whose
        // pods mount it (the outbox database), so a change rolls the pods.
        .watches_stream(
            crate::workload::metadata_of(
                api::<PartialObjectMeta<Secret>>(client, namespace),
                config.clone(),
            ),
            move |secret| {
                let namespace = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                let owner = secret
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == KIND && o.api_version == OrderGateway::api_version(&()))
                    .map(|o| o.name.clone());
                workload::users(&by_secret, &namespace, |g| {
                    owner.as_deref() == Some(g.name_any().as_str())
                        || g.spec
                            .outbox
                            .as_ref()
                            .is_some_and(|o| o.connection_secret.name == name)
                })
            },
        )
        // A gateway or relay pod that turns ready, crash-loops or loses the broker changes
        // Ready; the Deployment's status does not always move with it.
        .watches_stream(
            crate::workload::metadata_of(
                api::<PartialObjectMeta<Pod>>(client, namespace),
                config.clone().labels(plan::GATEWAY_LABEL),
            ),
            |pod| {
                let namespace = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(plan::GATEWAY_LABEL)
                    .map(|name| ObjectRef::new(name).within(&namespace))
            },
        )
        .watches(api::<KafkaTopic>(client, namespace), config, move |topic| {
            workload::users(&by_topic, &topic.namespace().unwrap_or_default(), |g| {
                g.spec.topic_ref.name == topic.name_any()
            })
        });
    (controller, store)
}

/// Runs the reconciler until `shutdown`, once the KafkaTopic cache has listed (a gateway reads
/// its topic from it).
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<OrderGateway>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    crate::workload::run(KIND, ctx, controller, reconcile, shutdown).await;
}

async fn reconcile(gateway: Arc<OrderGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let context = Arc::clone(&ctx);
    ctx.under_finalizer(KIND, FINALIZER, gateway, move |event, _api| async move {
        match event {
            Finalizer::Apply(g) => apply(&g, &context).await,
            Finalizer::Cleanup(g) => cleanup(&g, &context).await,
        }
    })
    .await
}

async fn apply(gateway: &OrderGateway, ctx: &Context) -> Result<Action, Error> {
    // As for a consumer: the rotation step first, and the rest of the pass sees its record.
    let (gateway, outcome) = match rotation::begin(gateway, ctx).await {
        Ok((step, seen)) => {
            let outcome = converge(&seen, &step, ctx).await;
            (seen, outcome)
        }
        Err(error) => (gateway.clone(), Err(error)),
    };
    let gateway = &gateway;
    match outcome {
        Ok((status, recheck)) => {
            ctx.backoff.reset(&object_key(gateway));
            write_status(gateway, ctx, status).await?;
            let resync = ctx.settings.resync;
            Ok(Action::requeue(recheck.map_or(resync, |r| r.min(resync))))
        }
        Err(error) => {
            let mut status = gateway.status.clone().unwrap_or_default();
            status.observed_generation = gateway.metadata.generation;
            status.conditions = crate::workload::failed_conditions(
                &status.conditions,
                &error,
                gateway.metadata.generation,
            );
            write_status(gateway, ctx, status).await?;
            Err(error)
        }
    }
}

/// The OrderConsumer of the same name that holds the principal both would use, if any
/// ([`crate::ownership::consumer_keeps_principal`]).
async fn principal_holder(gateway: &OrderGateway, ctx: &Context) -> Result<Option<String>, Error> {
    let ns = gateway.namespace().unwrap_or_default();
    let Some(consumer) = ctx
        .consumers
        .get(&ObjectRef::new(&gateway.name_any()).within(&ns))
    else {
        return Ok(None);
    };
    Ok(principal::consumer_holds(ctx, &consumer, gateway)
        .await?
        .then(|| consumer.name_any()))
}

/// Reads what the plan needs from the API server and the caches (no Kafka).
async fn gather(gateway: &OrderGateway, ctx: &Context) -> Result<plan::Gathered, Error> {
    let ns = gateway.namespace().unwrap_or_default();
    let names = Names::of(gateway);
    let topic = ctx
        .topics
        .get(&ObjectRef::new(&gateway.spec.topic_ref.name).within(&ns))
        .filter(|t| t.is_ready())
        .map(|t| t.topic_name().to_owned());
    let outbox_secret = match &gateway.spec.outbox {
        None => None,
        Some(outbox) => {
            resource_version(
                &Api::<Secret>::namespaced(ctx.client.clone(), &ns),
                &outbox.connection_secret.name,
            )
            .await?
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(plan::Gathered {
        topic,
        principal_holder: principal_holder(gateway, ctx).await?,
        outbox_secret,
        deployment: deployments.get_opt(&names.gateway).await?,
        service_version: resource_version(
            &Api::<Service>::namespaced(ctx.client.clone(), &ns),
            &names.gateway,
        )
        .await?,
        budget_version: resource_version(
            &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
            &names.gateway,
        )
        .await?,
        relay: deployments.get_opt(&names.relay).await?,
    })
}

/// Gathers, decides ([`plan::admit`], then the principal's ACLs from Kafka and [`plan::plan`])
/// and applies the gateway's desired state; returns the status to write and when to look
/// again if sooner than the resync.
async fn converge(
    gateway: &OrderGateway,
    step: &rotation::Step,
    ctx: &Context,
) -> Result<(OrderGatewayStatus, Option<std::time::Duration>), Error> {
    let ns = gateway.namespace().unwrap_or_default();
    let gathered = gather(gateway, ctx).await?;
    let topic = plan::admit(gateway, &gathered)?;
    let names = Names::of(gateway);
    let acls = principal::acls(&ctx.admin, &names.kafka.principal).await?;
    let plan = plan::plan(gateway, &gathered, &topic, &acls, &ctx.settings);

    // Apply: the principal first, so the pods start with a credential that works.
    let credentials_version = principal::ensure(
        gateway,
        ctx,
        &plan.names.kafka,
        plan::child_meta(gateway, &plan.names.kafka.secret, "gateway"),
    )
    .await?;
    principal::apply_acls(gateway, ctx, &plan.acls).await?;
    rotation::keep_retiring_acls(gateway, ctx, step, &plan.acls).await?;

    let (desired, desired_relay) = plan.deployments(gateway, &ctx.settings, credentials_version);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let applied = ctx
        .apply_or_keep(&deployments, gathered.deployment, &desired)
        .await?
        .expect("the gateway Deployment was applied or is unchanged");
    if let Some(note) = plan.scaled.clone() {
        info!(
            replicas = gateway.spec.replicas,
            "scaled the gateway Deployment"
        );
        ctx.event(gateway, EventType::Normal, "Scaled", note).await;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply_if_changed(
        &services,
        &plan.names.gateway,
        gathered.service_version,
        &plan.service,
    )
    .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply_if_changed(
        &budgets,
        &plan.names.gateway,
        gathered.budget_version,
        &plan.budget,
    )
    .await?;
    let relay = match &desired_relay {
        Some(desired) => {
            ctx.apply_or_keep(&deployments, gathered.relay, desired)
                .await?
        }
        None => {
            if plan.delete_relay {
                deployments
                    .delete(&plan.names.relay, &DeleteParams::background())
                    .await?;
            }
            None
        }
    };

    // Status, from what the Deployments (and, when some are missing, their pods) show.
    let pods = observe(ctx, &ns, &applied, gateway.spec.replicas).await?;
    let relay_deployment = relay;
    let relay = match (&relay_deployment, &gateway.spec.outbox) {
        (Some(deployment), Some(outbox)) => {
            Some(observe(ctx, &ns, deployment, outbox.relay_replicas).await?)
        }
        _ => None,
    };
    let old = gateway
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let recheck = plan_recheck(&pods, relay.as_ref());
    let mut status = plan::status(
        gateway,
        &plan.names,
        &plan.topic,
        &pods,
        relay.as_ref(),
        old,
    );
    // The relay connects with the same credential: it must roll too before the old one goes.
    let rolled: Vec<&Deployment> = std::iter::once(&applied)
        .chain(relay_deployment.as_ref())
        .collect();
    let rotating = rotation::advance(
        gateway,
        ctx,
        step,
        &rolled,
        None,
        &mut status.credentials,
        &mut status.conditions,
    )
    .await?;
    Ok((status, rotation::recheck(rotating, recheck)))
}

/// When to look again at pods on their way to ready (see
/// [`crate::consumer::plan::recheck_after`]).
fn plan_recheck(
    pods: &plan::Observed,
    relay: Option<&plan::Observed>,
) -> Option<std::time::Duration> {
    let mut all = pods.pods.clone();
    all.extend(relay.iter().flat_map(|r| r.pods.iter().cloned()));
    crate::consumer::plan::recheck_after(&all)
}

/// A Deployment of the gateway and, when some of its pods are missing, what they show. A
/// gateway at rest costs no pod list.
async fn observe(
    ctx: &Context,
    namespace: &str,
    deployment: &Deployment,
    replicas: i32,
) -> Result<plan::Observed, kube::Error> {
    let workload = crate::consumer::plan::Workload::of(replicas, deployment);
    let pods = if workload.is_ready() {
        Vec::new()
    } else {
        let selector = deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        Api::<Pod>::namespaced(ctx.client.clone(), namespace)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .map(|p| crate::consumer::plan::WorkerPod::of(p, now))
            .collect()
    };
    Ok(plan::Observed { workload, pods })
}

/// Writes the status when a user would see a change; a Warning when the operator fails or the
/// pods degrade, once per change of reason.
async fn write_status(
    gateway: &OrderGateway,
    ctx: &Context,
    status: OrderGatewayStatus,
) -> Result<(), kube::Error> {
    ctx.write_status(
        gateway,
        gateway.status.as_ref(),
        &status,
        &[
            (conditions::RECONCILED, "False"),
            (conditions::DEGRADED, "True"),
        ],
    )
    .await
    .map(drop)
}

/// Removes the gateway's ACLs and SCRAM credential from Kafka, unless an OrderConsumer of the
/// same name holds that principal.
async fn cleanup(gateway: &OrderGateway, ctx: &Context) -> Result<Action, Error> {
    if principal_holder(gateway, ctx).await?.is_none() {
        remove_principal(gateway, &ctx.admin).await?;
    }
    let names = Names::of(gateway);
    ctx.applied.forget(
        &gateway.namespace().unwrap_or_default(),
        &[&names.kafka.secret, &names.gateway, &names.relay],
    );
    Ok(Action::await_change())
}

/// Deletes the gateway's ACLs and its SCRAM credential (both idempotent).
pub async fn remove_principal(
    gateway: &OrderGateway,
    admin: &crate::kafka::KafkaAdmin,
) -> Result<(), crate::kafka::AdminError> {
    principal::remove_both(admin, &principal::Principal::base(gateway)).await
}
