//! The OrderGateway reconciler: gather (the KafkaTopic, a consumer sharing the name, the
//! versions of the Secrets the pods mount), decide ([`plan`], pure), apply in order (the
//! credentials Secret and SCRAM principal, its ACLs, the gateway Deployment, Service and
//! PodDisruptionBudget, the outbox relay Deployment), then status ([`plan::status`], pure).
//!
//! Deleting a gateway removes its principal and ACLs (finalizer); its Secret, Deployments,
//! Service and PodDisruptionBudget go with it through their owner references.

pub mod plan;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::consumer::plan::{WorkerImage, pod_template_hash};
use crate::context::{Context, object_key};
use crate::crd::conditions::{self, reason};
use crate::crd::order_gateway::FINALIZER;
use crate::crd::{KafkaTopic, OrderGateway, OrderGatewayStatus};
use crate::error::Error;
use crate::principal::{self, Principal};
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
    let controller = Controller::new(api::<OrderGateway>(client, namespace), own_config);
    let store = controller.store();
    let by_topic = store.clone();
    let by_secret = store.clone();
    let controller = controller
        .owns(api::<Deployment>(client, namespace), config.clone())
        // A Secret wakes the gateway that owns it (its credentials) and every gateway whose
        // pods mount it (the outbox database), so a change rolls the pods.
        .watches(
            api::<Secret>(client, namespace),
            config.clone(),
            move |secret| {
                let namespace = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                let owner = secret
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == KIND && o.api_version == OrderGateway::api_version(&()))
                    .map(|o| o.name.clone());
                users(&by_secret, &namespace, |g| {
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
        .watches(
            api::<Pod>(client, namespace),
            config.clone().labels(plan::GATEWAY_LABEL),
            |pod| {
                let namespace = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(plan::GATEWAY_LABEL)
                    .map(|name| ObjectRef::new(name).within(&namespace))
            },
        )
        .watches(api::<KafkaTopic>(client, namespace), config, move |topic| {
            users(&by_topic, &topic.namespace().unwrap_or_default(), |g| {
                g.spec.topic_ref.name == topic.name_any()
            })
        });
    (controller, store)
}

/// The gateways in `namespace` matching `uses`.
fn users(
    store: &Store<OrderGateway>,
    namespace: &str,
    uses: impl Fn(&OrderGateway) -> bool,
) -> Vec<ObjectRef<OrderGateway>> {
    store
        .state()
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(namespace) && uses(g))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Runs the reconciler until `shutdown`, once the KafkaTopic cache has listed (a gateway reads
/// its topic from it).
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<OrderGateway>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    tokio::select! {
        synced = ctx.topics.wait_until_ready() => {
            if synced.is_err() {
                warn!("the KafkaTopic cache was dropped before it listed; not reconciling OrderGateways");
                return;
            }
        }
        _ = shutdown.clone() => return,
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "OrderGateway reconcile failed");
            }
        })
        .await;
}

async fn reconcile(gateway: Arc<OrderGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let context = Arc::clone(&ctx);
    ctx.under_finalizer(KIND, FINALIZER, gateway, move |event, api| async move {
        match event {
            Finalizer::Apply(g) => apply(&g, &context, &api).await,
            Finalizer::Cleanup(g) => cleanup(&g, &context).await,
        }
    })
    .await
}

fn error_policy(gateway: Arc<OrderGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after(gateway.as_ref(), error)
}

async fn apply(
    gateway: &OrderGateway,
    ctx: &Context,
    _api: &Api<OrderGateway>,
) -> Result<Action, Error> {
    match converge(gateway, ctx).await {
        Ok((status, recheck)) => {
            ctx.backoff.reset(&object_key(gateway));
            write_status(gateway, ctx, status).await?;
            let resync = ctx.settings.resync;
            Ok(Action::requeue(recheck.map_or(resync, |r| r.min(resync))))
        }
        Err(error) => {
            let mut status = gateway.status.clone().unwrap_or_default();
            status.observed_generation = gateway.metadata.generation;
            // The operator could not do its part: not Reconciled, and not Ready either (the
            // pods may run, but not as the current spec declares).
            let failed = conditions::new(
                conditions::READY,
                false,
                error.reason(),
                error.to_string(),
                gateway.metadata.generation,
            );
            status.conditions = conditions::merge_ready_and_reconciled(&status.conditions, failed);
            write_status(gateway, ctx, status).await?;
            Err(error)
        }
    }
}

/// The OrderConsumer of the same name that holds the principal both would use, if any.
fn principal_holder(gateway: &OrderGateway, ctx: &Context) -> Option<String> {
    let ns = gateway.namespace().unwrap_or_default();
    let consumer = ctx
        .consumers
        .get(&ObjectRef::new(&gateway.name_any()).within(&ns))?;
    crate::ownership::consumer_keeps_principal(&consumer, gateway).then(|| consumer.name_any())
}

/// Applies the gateway's desired state; returns the status to write and when to look again if
/// sooner than the resync.
async fn converge(
    gateway: &OrderGateway,
    ctx: &Context,
) -> Result<(OrderGatewayStatus, Option<std::time::Duration>), Error> {
    let ns = gateway.namespace().unwrap_or_default();
    let names = Names::of(gateway);
    // Gather.
    let topic_name = &gateway.spec.topic_ref.name;
    let topic = ctx
        .topics
        .get(&ObjectRef::new(topic_name).within(&ns))
        .filter(|t| t.is_ready())
        .ok_or_else(|| Error::Waiting {
            reason: reason::TOPIC_NOT_READY,
            message: format!("waiting for KafkaTopic {topic_name} to exist and be Ready"),
        })?
        .topic_name();
    if let Some(consumer) = principal_holder(gateway, ctx) {
        return Err(Error::Conflict {
            message: format!(
                "Kafka principal {} belongs to OrderConsumer {ns}/{consumer}, which is older; \
                 rename this gateway",
                names.principal
            ),
        });
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let outbox_version = match &gateway.spec.outbox {
        None => None,
        Some(outbox) => {
            let name = &outbox.connection_secret.name;
            let secret = secrets
                .get_metadata_opt(name)
                .await?
                .ok_or_else(|| Error::Waiting {
                    reason: reason::SECRET_NOT_FOUND,
                    message: format!("waiting for the outbox connection Secret {name}"),
                })?;
            Some((name.clone(), secret.metadata.resource_version))
        }
    };

    // Apply: the principal first, so the pods start with a credential that works.
    let credentials_version = principal::ensure(
        gateway,
        ctx,
        &Principal {
            user: names.user.clone(),
            principal: names.principal.clone(),
            secret: names.credentials_secret.clone(),
        },
        plan::child_meta(gateway, &names.credentials_secret, "gateway"),
    )
    .await?;
    principal::ensure_acls(
        gateway,
        ctx,
        &names.principal,
        &plan::gateway_acls(&names.principal, &topic),
    )
    .await?;

    let settings = &ctx.settings;
    let image = gateway
        .spec
        .image
        .clone()
        .unwrap_or_else(|| settings.worker_image.clone());
    let otlp_endpoint = gateway
        .spec
        .tracing
        .as_ref()
        .map(|t| t.otlp_endpoint.as_str())
        .or(settings.worker_otlp_endpoint.as_deref());
    let gateway_args = plan::gateway_args(gateway, &topic);
    let relay_args = plan::relay_args(gateway, &topic);
    let mut mounted = vec![(names.credentials_secret.clone(), credentials_version)];
    mounted.extend(outbox_version);
    let hash_of = |args: &[String]| {
        let mut text = args.join("\n");
        text.push_str(&format!("\nimage={image}\notlp={otlp_endpoint:?}"));
        text.push_str(&format!(
            "\nbootstrap={}",
            settings.worker_bootstrap_servers
        ));
        pod_template_hash(&text, &mounted)
    };
    let image_ref = WorkerImage {
        image: &image,
        pull_secrets: &settings.worker_image_pull_secrets,
    };
    let kafka = plan::KafkaAccess {
        bootstrap_servers: &settings.worker_bootstrap_servers,
        security_protocol: settings.worker_security_protocol,
        with_ca: settings.kafka_ca_pem.is_some(),
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let before = deployments.get_opt(&names.gateway).await?;
    let gateway_hash = hash_of(&gateway_args);
    let desired = plan::deployment(
        gateway,
        &plan::PodInput {
            names: &names,
            image: image_ref,
            kafka,
            otlp_endpoint,
            config_hash: &gateway_hash,
        },
        gateway.spec.replicas,
        gateway_args,
        false,
    );
    let current = before
        .as_ref()
        .and_then(|d| d.metadata.resource_version.clone());
    let applied = match ctx
        .apply_if_changed(&deployments, &names.gateway, current, &desired)
        .await?
    {
        Some(applied) => applied,
        None => before.clone().expect("unchanged means it exists"),
    };
    let before_replicas = before.as_ref().and_then(|d| d.spec.as_ref()?.replicas);
    if before_replicas != Some(gateway.spec.replicas) {
        let replicas = gateway.spec.replicas;
        info!(replicas, "scaled the gateway Deployment");
        let note = match before_replicas {
            None => format!("deployed {replicas} gateway replicas"),
            Some(b) => format!("scaled the gateway from {b} to {replicas}"),
        };
        ctx.event(gateway, EventType::Normal, "Scaled", note).await;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let current = version_of(&services, &names.gateway).await?;
    ctx.apply_if_changed(
        &services,
        &names.gateway,
        current,
        &plan::service(gateway, &names),
    )
    .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let current = version_of(&budgets, &names.gateway).await?;
    ctx.apply_if_changed(
        &budgets,
        &names.gateway,
        current,
        &plan::disruption_budget(gateway, &names),
    )
    .await?;
    let relay = match relay_args {
        Some(args) => {
            let relay_hash = hash_of(&args);
            let desired = plan::deployment(
                gateway,
                &plan::PodInput {
                    names: &names,
                    image: image_ref,
                    kafka,
                    otlp_endpoint,
                    config_hash: &relay_hash,
                },
                gateway.spec.outbox.as_ref().map_or(1, |o| o.relay_replicas),
                args,
                true,
            );
            let before = deployments.get_opt(&names.relay).await?;
            let current = before
                .as_ref()
                .and_then(|d| d.metadata.resource_version.clone());
            match ctx
                .apply_if_changed(&deployments, &names.relay, current, &desired)
                .await?
            {
                Some(applied) => Some(applied),
                None => before,
            }
        }
        None => {
            // The outbox was turned off: the relay goes (the rows it left stay in PostgreSQL).
            if deployments.get_metadata_opt(&names.relay).await?.is_some() {
                deployments
                    .delete(&names.relay, &DeleteParams::background())
                    .await?;
            }
            None
        }
    };
    let pods = observe(ctx, &ns, &applied, gateway.spec.replicas).await?;
    let relay = match (&relay, &gateway.spec.outbox) {
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
    Ok((
        plan::status(gateway, &names, &topic, &pods, relay.as_ref(), old),
        recheck,
    ))
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

/// The resourceVersion of object `name`, if it exists.
async fn version_of<K>(api: &Api<K>, name: &str) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api
        .get_metadata_opt(name)
        .await?
        .and_then(|m| m.metadata.resource_version))
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
}

/// Removes the gateway's ACLs and SCRAM credential from Kafka, unless an OrderConsumer of the
/// same name holds that principal.
async fn cleanup(gateway: &OrderGateway, ctx: &Context) -> Result<Action, Error> {
    if principal_holder(gateway, ctx).is_none() {
        remove_principal(gateway, &ctx.admin).await?;
    }
    let names = Names::of(gateway);
    ctx.applied.forget(
        &gateway.namespace().unwrap_or_default(),
        &[&names.credentials_secret, &names.gateway, &names.relay],
    );
    Ok(Action::await_change())
}

/// Deletes the gateway's ACLs and its SCRAM credential (both idempotent).
pub async fn remove_principal(
    gateway: &OrderGateway,
    admin: &crate::kafka::KafkaAdmin,
) -> Result<(), crate::kafka::AdminError> {
    let names = Names::of(gateway);
    principal::remove(admin, &names.user, &names.principal).await
}
