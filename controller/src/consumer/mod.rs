//! The OrderConsumer reconciler: gather (the KafkaTopic, the DLQPolicy, the credentials, the
//! principal's ACLs, the lag), decide ([`plan`], pure: first [`plan::admit`], the tenancy and
//! ownership checks of its group and topics), apply in order (the claim on its topics in
//! status.ownedTopics, dead-letter and retry topics, credentials Secret, SCRAM principal, ACLs,
//! worker ConfigMap and Deployment), then status. A refused consumer creates nothing and its
//! principal keeps no ACL.
//!
//! Deleting a consumer removes its principal and ACLs (finalizer); its Secret, ConfigMap and
//! Deployment go with it through their owner references.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::context::{Context, object_key};
use crate::crd::conditions::{self, reason};
use crate::crd::dlq_policy::DLQPolicySpec;
use crate::crd::order_consumer::{FINALIZER, OwnedTopic, OwnedTopicKind};
use crate::crd::{DLQPolicy, KafkaTopic, OrderConsumer, OrderConsumerStatus};
use crate::error::{Error, SpecError};
use crate::kafka::AdminError;
use crate::ownership::Companion;
use crate::principal;
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
    let controller = Controller::new(api::<OrderConsumer>(client, namespace), own_config);
    let store = controller.store();
    let by_topic = store.clone();
    let by_policy = store.clone();
    let by_secret = store.clone();
    let controller = controller
        .owns(api::<Deployment>(client, namespace), config.clone())
        .owns(api::<ConfigMap>(client, namespace), config.clone())
        // A Secret wakes the consumer that owns it (its credentials) and every consumer whose
        // pods mount it (an event store's connection Secret), so a change rolls the workers.
        // Trigger streams keep no cache: Secrets pass through, only their names are used.
        .watches(
            api::<Secret>(client, namespace),
            config.clone(),
            move |secret| secret_users(&by_secret, &secret),
        )
        .watches(
            api::<KafkaTopic>(client, namespace),
            config.clone(),
            move |topic| {
                users(&by_topic, &topic.namespace().unwrap_or_default(), |c| {
                    c.spec.topic_ref.name == topic.name_any()
                })
            },
        )
        // A worker pod that turns ready, crash-loops or loses its sink changes Ready; the
        // Deployment's status does not always move with it (a restart keeps it unavailable).
        .watches(
            api::<Pod>(client, namespace),
            config.clone().labels(plan::CONSUMER_LABEL),
            |pod| {
                let namespace = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(plan::CONSUMER_LABEL)
                    .map(|name| ObjectRef::new(name).within(&namespace))
            },
        )
        .watches(api::<DLQPolicy>(client, namespace), config, move |policy| {
            users(&by_policy, &policy.namespace().unwrap_or_default(), |c| {
                c.spec
                    .dlq_policy_ref
                    .as_ref()
                    .is_some_and(|r| r.name == policy.name_any())
            })
        });
    (controller, store)
}

/// The consumers that own `secret` or mount it.
fn secret_users(store: &Store<OrderConsumer>, secret: &Secret) -> Vec<ObjectRef<OrderConsumer>> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let owners: BTreeSet<String> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == KIND && o.api_version == OrderConsumer::api_version(&()))
        .map(|o| o.name.clone())
        .collect();
    users(store, &namespace, |c| {
        owners.contains(&c.name_any())
            || c.spec
                .handler
                .event_store
                .as_ref()
                .is_some_and(|s| s.connection_secret.name == name)
    })
}

/// The consumers in `namespace` matching `uses`.
fn users(
    store: &Store<OrderConsumer>,
    namespace: &str,
    uses: impl Fn(&OrderConsumer) -> bool,
) -> Vec<ObjectRef<OrderConsumer>> {
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace) && uses(c))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Runs the reconciler until `shutdown`, once the KafkaTopic cache has listed.
///
/// A consumer reads its topic from that cache (`ctx.topics`, filled by the KafkaTopic
/// controller started beside this one). Reconciled before the first list completes, every
/// consumer would find no topic and go `Ready=False TopicNotReady` until the next resync.
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<OrderConsumer>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    tokio::select! {
        synced = ctx.topics.wait_until_ready() => {
            if synced.is_err() {
                warn!("the KafkaTopic cache was dropped before it listed; not reconciling OrderConsumers");
                return;
            }
        }
        _ = shutdown.clone() => return,
    }
    info!("the KafkaTopic cache has listed; reconciling OrderConsumers");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "OrderConsumer reconcile failed");
            }
        })
        .await;
}

async fn reconcile(consumer: Arc<OrderConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let context = Arc::clone(&ctx);
    ctx.under_finalizer(KIND, FINALIZER, consumer, move |event, api| async move {
        match event {
            Finalizer::Apply(c) => apply(&c, &context, &api).await,
            Finalizer::Cleanup(c) => cleanup(&c, &context).await,
        }
    })
    .await
}

fn error_policy(consumer: Arc<OrderConsumer>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry_after(consumer.as_ref(), error)
}

/// Everything gathered before deciding.
struct Gathered {
    topic: Arc<KafkaTopic>,
    partitions: i32,
    policy: Option<DLQPolicySpec>,
}

async fn gather(consumer: &OrderConsumer, ctx: &Context) -> Result<Gathered, Error> {
    let ns = consumer.namespace().unwrap_or_default();
    let topic_name = &consumer.spec.topic_ref.name;
    let topic = ctx
        .topics
        .get(&ObjectRef::new(topic_name).within(&ns))
        .filter(|t| t.is_ready())
        .ok_or_else(|| Error::Waiting {
            reason: reason::TOPIC_NOT_READY,
            message: format!("waiting for KafkaTopic {topic_name} to exist and be Ready"),
        })?;
    let partitions = topic
        .status
        .as_ref()
        .and_then(|s| s.partitions)
        .unwrap_or(topic.spec.partitions);
    let policy = match &consumer.spec.dlq_policy_ref {
        None => None,
        Some(r) => {
            let policies: Api<DLQPolicy> = Api::namespaced(ctx.client.clone(), &ns);
            let policy = policies
                .get_opt(&r.name)
                .await?
                .ok_or_else(|| Error::Waiting {
                    reason: reason::POLICY_NOT_FOUND,
                    message: format!("waiting for DLQPolicy {} to exist", r.name),
                })?;
            Some(policy.spec)
        }
    };
    Ok(Gathered {
        topic,
        partitions,
        policy,
    })
}

async fn apply(
    consumer: &OrderConsumer,
    ctx: &Context,
    _api: &Api<OrderConsumer>,
) -> Result<Action, Error> {
    match converge(consumer, ctx).await {
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
            // The operator could not do its part: not Reconciled, and not Ready either (the
            // workers may run, but not as the current spec declares).
            let failed = conditions::new(
                conditions::READY,
                false,
                error.reason(),
                error.to_string(),
                consumer.metadata.generation,
            );
            status.conditions = conditions::merge_ready_and_reconciled(&status.conditions, failed);
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

/// Applies the consumer's desired state and returns the status to write.
async fn converge(consumer: &OrderConsumer, ctx: &Context) -> Result<Converged, Error> {
    let gathered = gather(consumer, ctx).await?;
    let ns = consumer.namespace().unwrap_or_default();
    let names = Names::of(consumer);
    let source = gathered.topic.topic_name();
    let policy = gathered.policy.as_ref();
    let dead_letter = plan::dead_letter_topic(&source, policy);
    let group = consumer.group_id();

    if let Some(gateway) = principal_holder(consumer, ctx) {
        return Err(Error::Conflict {
            message: format!(
                "Kafka principal {} belongs to OrderGateway {ns}/{gateway}, which is older; \
                 rename this consumer",
                names.principal
            ),
        });
    }

    let retry = plan::retry_policy(policy).map_err(Error::InvalidSpec)?;
    let retry_topics =
        plan::retry_topics(&source, &consumer.name_any(), &retry).map_err(Error::InvalidSpec)?;

    // Tenancy first: a refused consumer creates no topic and keeps no ACL.
    let companions: Vec<OwnedTopic> = std::iter::once(OwnedTopic {
        name: dead_letter.clone(),
        kind: OwnedTopicKind::DeadLetter,
    })
    .chain(retry_topics.iter().map(|t| OwnedTopic {
        name: t.name.clone(),
        kind: OwnedTopicKind::Retry,
    }))
    .collect();
    let rules = ctx.access_rules(&ns).await?;
    let topics = ctx.topics.state();
    let consumers = ctx.consumers.state();
    let admitted = match plan::admit(
        consumer,
        &rules,
        &companions,
        &topics.iter().map(Arc::as_ref).collect::<Vec<_>>(),
        &consumers.iter().map(Arc::as_ref).collect::<Vec<_>>(),
    ) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            principal::ensure_acls(consumer, ctx, &names.principal, &BTreeSet::new()).await?;
            return Err(refusal);
        }
    };
    // Recorded before the topics are created, so no one else can claim them meanwhile.
    let owned_topics = plan::owned_topics(consumer.owned_topics(), &admitted);
    if owned_topics != consumer.owned_topics() {
        record_owned_topics(consumer, ctx, &owned_topics).await?;
    }

    let dead_letter_partitions = plan::dead_letter_partitions(gathered.partitions, policy);
    for (topic, used) in &admitted {
        if *used != Companion::Owned {
            // A KafkaTopic of this namespace manages it.
            continue;
        }
        let (partitions, is_dead_letter) = match topic.kind {
            OwnedTopicKind::DeadLetter => (dead_letter_partitions, true),
            // Partition p of every retry topic goes with partition p of the source.
            OwnedTopicKind::Retry => (gathered.partitions, false),
            // Its DLQReplay creates it.
            OwnedTopicKind::Parking => continue,
        };
        ensure_companion_topic(
            consumer,
            ctx,
            &gathered,
            &topic.name,
            partitions,
            is_dead_letter,
        )
        .await?;
    }
    let credentials_version = principal::ensure(
        consumer,
        ctx,
        &names.kafka_principal(),
        plan::child_meta(consumer, &names.credentials_secret),
    )
    .await?;
    let desired_acls = plan::consumer_acls(
        &names.principal,
        &source,
        &dead_letter,
        &retry_topics,
        &group,
    );
    principal::ensure_acls(consumer, ctx, &names.principal, &desired_acls).await?;

    let lag = measure_lag(ctx, &group, &source, gathered.partitions).await?;
    let old = consumer.status.clone().unwrap_or_default();
    let key = object_key(consumer);
    let desired = match &consumer.spec.autoscaling {
        None => {
            ctx.recommendations.set(&key, Vec::new());
            consumer.spec.replicas
        }
        Some(autoscaling) => {
            let window = crate::duration::parse(&autoscaling.scale_down_stabilization)
                .map_err(SpecError::from)?;
            let (desired, history) = plan::stabilize(
                jiff::Timestamp::now(),
                &ctx.recommendations.get(&key),
                old.desired_replicas,
                plan::lag_replicas(lag, autoscaling),
                window,
            );
            ctx.recommendations.set(&key, history);
            desired
        }
    };
    let (replicas, capped) = plan::partition_cap(desired, gathered.partitions);

    let config = plan::worker_config(&plan::RenderInput {
        consumer,
        names: &names,
        source_topic: &source,
        dead_letter_topic: &dead_letter,
        retry,
        retry_topics: &retry_topics,
        bootstrap_servers: &ctx.settings.worker_bootstrap_servers,
        security_protocol: ctx.settings.worker_security_protocol,
        with_ca: ctx.settings.kafka_ca_pem.is_some(),
        otlp_endpoint: ctx.settings.worker_otlp_endpoint.as_deref(),
    })
    .map_err(Error::InvalidSpec)?
    .to_json();
    // The pods read the database URL and their Kafka credentials (with the CA) only at start:
    // a new version of either Secret must roll them.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut mounted = vec![(names.credentials_secret.clone(), credentials_version)];
    if let Some(store) = &consumer.spec.handler.event_store {
        let name = &store.connection_secret.name;
        let version = secrets
            .get_metadata_opt(name)
            .await?
            .and_then(|s| s.metadata.resource_version);
        mounted.push((name.clone(), version));
    }
    let hash = plan::pod_template_hash(&config, &mounted);

    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let config_map = ConfigMap {
        metadata: plan::child_meta(consumer, &names.config_map),
        data: Some(BTreeMap::from([(plan::CONFIG_KEY.to_owned(), config)])),
        ..Default::default()
    };
    let current = config_maps
        .get_metadata_opt(&names.config_map)
        .await?
        .and_then(|m| m.metadata.resource_version);
    ctx.apply_if_changed(&config_maps, &names.config_map, current, &config_map)
        .await?;

    let image = consumer
        .spec
        .image
        .clone()
        .unwrap_or_else(|| ctx.settings.worker_image.clone());
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let before = deployments.get_opt(&names.deployment).await?;
    let deployment = plan::deployment(
        consumer,
        &names,
        replicas,
        plan::WorkerImage {
            image: &image,
            pull_secrets: &ctx.settings.worker_image_pull_secrets,
        },
        &hash,
    );
    let current = before
        .as_ref()
        .and_then(|d| d.metadata.resource_version.clone());
    let applied = match ctx
        .apply_if_changed(&deployments, &names.deployment, current, &deployment)
        .await?
    {
        Some(applied) => applied,
        None => before.clone().expect("unchanged means it exists"),
    };
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(ctx.client.clone(), &ns);
    let budget_version = budgets
        .get_metadata_opt(&names.deployment)
        .await?
        .and_then(|b| b.metadata.resource_version);
    ctx.apply_if_changed(
        &budgets,
        &names.deployment,
        budget_version,
        &plan::disruption_budget(consumer, &names),
    )
    .await?;
    let before_replicas = before.as_ref().and_then(|d| d.spec.as_ref()?.replicas);
    if before_replicas != Some(replicas) {
        info!(replicas, capped, "scaled the worker Deployment");
        let note = match before_replicas {
            None => format!("deployed {replicas} worker replicas"),
            Some(b) => format!("scaled workers from {b} to {replicas}"),
        };
        ctx.event(consumer, EventType::Normal, "Scaled", note).await;
    }

    let generation = consumer.metadata.generation;
    let reconciled = conditions::new(
        conditions::RECONCILED,
        true,
        reason::RECONCILED,
        format!(
            "{replicas} worker replicas deployed to consume {source} as {}; {}dead letters go to \
             {dead_letter}",
            names.principal,
            match retry_topics.as_slice() {
                [] => String::new(),
                [only] => format!("retries wait in {}; ", only.name),
                [first, .., last] => format!("retries wait in {} to {}; ", first.name, last.name),
            }
        ),
        generation,
    );
    // Ready is the workers', not the operator's: the wanted pods must be available. The pods
    // are read only when the Deployment says some are missing, so a healthy consumer at rest
    // costs no list.
    let workload = plan::Workload::of(replicas, &applied);
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
    let (ready, degraded) = plan::workload_conditions(&workload, &pods, generation, plan::WORKERS);
    let capped_condition = if capped {
        conditions::new(
            conditions::CAPPED,
            true,
            reason::PARTITION_CAP,
            format!(
                "{desired} replicas wanted, capped at the {} partitions of topic {source}: \
                 an extra consumer would sit idle",
                gathered.partitions
            ),
            generation,
        )
    } else {
        conditions::new(
            conditions::CAPPED,
            false,
            reason::WITHIN_PARTITIONS,
            format!(
                "{desired} replicas fit in the {} partitions",
                gathered.partitions
            ),
            generation,
        )
    };
    let merged = [reconciled, ready, degraded, capped_condition]
        .into_iter()
        .fold(old.conditions, |all, c| conditions::merge(&all, c));
    let status = OrderConsumerStatus {
        observed_generation: generation,
        replicas: Some(replicas),
        desired_replicas: Some(desired),
        ready_replicas: Some(
            applied
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        ),
        partitions: Some(gathered.partitions),
        max_replicas: Some(gathered.partitions),
        lag: Some(lag),
        group_id: Some(group),
        dead_letter_topic: Some(dead_letter),
        retry_topics: retry_topics.into_iter().map(|t| t.name).collect(),
        owned_topics,
        principal: Some(names.principal.clone()),
        credentials_secret: Some(names.credentials_secret.clone()),
        selector: Some(plan::selector(consumer)),
        conditions: merged,
    };
    Ok(Converged {
        status,
        recheck: plan::recheck_after(&pods),
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

/// Creates the dead-letter topic or a retry topic, or grows it to the partitions it needs.
/// Both take whatever record size the source takes.
async fn ensure_companion_topic(
    consumer: &OrderConsumer,
    ctx: &Context,
    gathered: &Gathered,
    topic: &str,
    partitions: i32,
    dead_letter: bool,
) -> Result<(), Error> {
    let policy = gathered.policy.as_ref();
    let (kind, created, grown) = if dead_letter {
        (
            "dead-letter",
            "DeadLetterTopicCreated",
            "DeadLetterTopicGrown",
        )
    } else {
        ("retry", "RetryTopicCreated", "RetryTopicGrown")
    };
    match ctx.admin.describe_topic(topic).await? {
        None => {
            let replication = policy
                .and_then(|p| p.dead_letter.replication_factor)
                .or_else(|| gathered.topic.status.as_ref()?.replication_factor)
                .unwrap_or(gathered.topic.spec.replication_factor);
            let mut configs = BTreeMap::new();
            // Whatever fits the source must fit its dead letters and retries.
            if let Some(limit) = gathered.topic.config_strings().get("max.message.bytes") {
                configs.insert("max.message.bytes".to_owned(), limit.clone());
            }
            if let Some(retention) = policy
                .filter(|_| dead_letter)
                .and_then(|p| p.dead_letter.retention.as_deref())
            {
                let ms = crate::duration::parse(retention).map_err(SpecError::from)?;
                configs.insert("retention.ms".to_owned(), ms.as_millis().to_string());
            }
            match ctx
                .admin
                .create_topic(topic, partitions, replication, &configs)
                .await
            {
                Err(e)
                    if e.code() == Some(rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists) => {}
                other => other?,
            }
            ctx.event(
                consumer,
                EventType::Normal,
                created,
                format!("created {kind} topic {topic} with {partitions} partitions"),
            )
            .await;
        }
        Some(existing) if existing.partition_count() < partitions => {
            ctx.admin.create_partitions(topic, partitions).await?;
            ctx.event(
                consumer,
                EventType::Normal,
                grown,
                format!("grew {kind} topic {topic} to {partitions} partitions"),
            )
            .await;
        }
        Some(_) => {}
    }
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
}

/// Removes the consumer's ACLs and SCRAM credential from Kafka, unless an OrderGateway of the
/// same name holds that principal.
async fn cleanup(consumer: &OrderConsumer, ctx: &Context) -> Result<Action, Error> {
    if principal_holder(consumer, ctx).is_none() {
        remove_principal(consumer, &ctx.admin).await?;
    }
    ctx.recommendations.set(&object_key(consumer), Vec::new());
    let names = Names::of(consumer);
    ctx.applied.forget(
        &consumer.namespace().unwrap_or_default(),
        &[
            &names.credentials_secret,
            &names.config_map,
            &names.deployment,
        ],
    );
    Ok(Action::await_change())
}

/// The OrderGateway of the same name that holds the principal both would use, if any
/// ([`crate::ownership::consumer_keeps_principal`]).
fn principal_holder(consumer: &OrderConsumer, ctx: &Context) -> Option<String> {
    let ns = consumer.namespace().unwrap_or_default();
    let gateway = ctx
        .gateways
        .get(&ObjectRef::new(&consumer.name_any()).within(&ns))?;
    (!crate::ownership::consumer_keeps_principal(consumer, &gateway)).then(|| gateway.name_any())
}

/// Deletes the consumer's ACLs and its SCRAM credential (both idempotent).
pub async fn remove_principal(
    consumer: &OrderConsumer,
    admin: &crate::kafka::KafkaAdmin,
) -> Result<(), AdminError> {
    let names = Names::of(consumer);
    principal::remove(admin, &names.user, &names.principal).await
}
