//! The DLQReplay reconciler: resolve the replay's topics from its OrderConsumer, wait for any
//! older replay of the same dead-letter topic, then make the parking topic, the principal and
//! its ACLs, and the Job, in that order (an operator killed halfway leaves no Job without a
//! credential); then follow the Job to its end ([`plan::status`], pure) and remove the
//! principal. A finished replay is left as it is: the record of what was replayed.
//!
//! Deleting a replay deletes its Job (which stops it) and removes its principal (finalizer).

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::warn;

use crate::consumer::plan::{WorkerImage, dead_letter_topic};
use crate::context::Context;
use crate::crd::conditions::reason;
use crate::crd::dlq_replay::{DLQReplay, FINALIZER, ReplayPhase};
use crate::crd::order_consumer::{OwnedTopic, OwnedTopicKind};
use crate::crd::{DLQPolicy, OrderConsumer};
use crate::error::Error;
use crate::ownership::Companion;
use crate::principal;
use plan::{JobState, Names, Observed, Summary, Topics};

const KIND: &str = "DLQReplay";
/// How often a running replay's progress is read (the replay group's committed offsets).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a pending replay looks again at what it waits for.
const PENDING_INTERVAL: Duration = Duration::from_secs(10);
/// The Kubernetes label on a Job's pods naming the Job.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// A controller over DLQReplays, woken by the Jobs they own.
pub fn controller(
    client: &kube::Client,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Controller<DLQReplay> {
    use crate::context::scoped_api as api;
    let config = watcher::Config::default().any_semantic();
    let mut own_config = config.clone();
    if let Some(selector) = selector {
        own_config = own_config.labels(selector);
    }
    crate::workload::lean_controller(api::<DLQReplay>(client, namespace), own_config)
        .owns(api::<Job>(client, namespace), config)
}

/// Runs the reconciler until `shutdown`, once the KafkaTopic cache has listed (a replay reads
/// its consumer's topics from it).
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<DLQReplay>,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    crate::workload::run(KIND, ctx, controller, reconcile, shutdown).await;
}

async fn reconcile(replay: Arc<DLQReplay>, ctx: Arc<Context>) -> Result<Action, Error> {
    let context = Arc::clone(&ctx);
    ctx.under_finalizer(KIND, FINALIZER, replay, move |event, _api| async move {
        match event {
            Finalizer::Apply(r) => apply(&r, &context).await,
            Finalizer::Cleanup(r) => cleanup(&r, &context).await,
        }
    })
    .await
}

async fn apply(replay: &DLQReplay, ctx: &Context) -> Result<Action, Error> {
    if replay.phase().is_final() {
        // Ended: its principal went with its end, and the resource stays as the record.
        return Ok(Action::await_change());
    }
    let names = Names::of(replay);
    let observed = match converge(replay, ctx, &names).await {
        Ok(observed) => observed,
        Err(error) => {
            // Nothing started: Pending, saying why.
            let observed = Observed {
                topics: None,
                waiting_for: None,
                blocked: Some((error.reason(), error.to_string())),
                job: JobState::Absent,
                committed: BTreeMap::new(),
                now: Time(jiff::Timestamp::now()),
            };
            let status = plan::status(replay, &names, &observed);
            ctx.write_status(replay, replay.status.as_ref(), &status, &[])
                .await?;
            return Err(error);
        }
    };
    let status = plan::status(replay, &names, &observed);
    let phase = status.phase.unwrap_or(ReplayPhase::Pending);
    if phase.is_final() {
        // The Job is done with the credential: no principal outlives its replay.
        principal::remove(&ctx.admin, &names.user, &names.principal).await?;
        let (kind, note) = match phase {
            ReplayPhase::Succeeded => (EventType::Normal, "ReplaySucceeded"),
            _ => (EventType::Warning, "ReplayFailed"),
        };
        let message = crate::crd::conditions::ready(&status.conditions)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(replay, kind, note, message).await;
    }
    ctx.write_status(replay, replay.status.as_ref(), &status, &[])
        .await?;
    Ok(match phase {
        ReplayPhase::Running => Action::requeue(PROGRESS_INTERVAL),
        ReplayPhase::Pending => Action::requeue(PENDING_INTERVAL),
        ReplayPhase::Succeeded | ReplayPhase::Failed => Action::await_change(),
    })
}

/// One pass: what the replay's Job and Kafka show, after starting the Job if it may start.
async fn converge(replay: &DLQReplay, ctx: &Context, names: &Names) -> Result<Observed, Error> {
    let ns = replay.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut observed = Observed {
        topics: None,
        waiting_for: None,
        blocked: None,
        job: JobState::Absent,
        committed: BTreeMap::new(),
        now: Time(jiff::Timestamp::now()),
    };
    let resolved = resolve(replay, ctx).await?;
    match jobs.get_opt(&names.job).await? {
        Some(job) => {
            observed.topics = resolved.ok().map(|(topics, _)| topics);
            observed.job = job_state(ctx, &ns, names, &job).await?;
            if observed.job == JobState::Running && !replay.spec.dry_run {
                observed.committed = progress(ctx, replay, names).await;
            }
        }
        None => match resolved {
            Err(blocked) => observed.blocked = Some(blocked),
            Ok((topics, consumer)) => {
                observed.waiting_for = waiting_for(replay, ctx, &topics.dead_letter).await?;
                if observed.waiting_for.is_none() {
                    prepare(replay, ctx, names, &topics, &consumer).await?;
                    start(replay, ctx, names, &topics, &jobs).await?;
                    observed.job = JobState::Running;
                }
                observed.topics = Some(topics);
            }
        },
    }
    Ok(observed)
}

/// The replay's topics from its consumer, or why it cannot start yet.
async fn resolve(
    replay: &DLQReplay,
    ctx: &Context,
) -> Result<Result<(Topics, Arc<OrderConsumer>), (&'static str, String)>, Error> {
    let ns = replay.namespace().unwrap_or_default();
    let name = &replay.spec.consumer_ref.name;
    let Some(consumer) = ctx.consumers.get(&ObjectRef::new(name).within(&ns)) else {
        return Ok(Err((
            reason::CONSUMER_NOT_FOUND,
            format!("waiting for OrderConsumer {name} to exist"),
        )));
    };
    let ready_topic = |topic: &str| {
        ctx.topics
            .get(&ObjectRef::new(topic).within(&ns))
            .filter(|t| t.is_ready())
            .map(|t| t.topic_name().to_owned())
            .ok_or((
                reason::TOPIC_NOT_READY,
                format!("waiting for KafkaTopic {topic} to exist and be Ready"),
            ))
    };
    let source = match ready_topic(&consumer.spec.topic_ref.name) {
        Ok(source) => source,
        Err(blocked) => return Ok(Err(blocked)),
    };
    let target = match &replay.spec.target_ref {
        None => source.clone(),
        Some(target) => match ready_topic(&target.name) {
            Ok(target) => target,
            Err(blocked) => return Ok(Err(blocked)),
        },
    };
    let policy = match &consumer.spec.dlq_policy_ref {
        None => None,
        Some(r) => {
            let policies: Api<DLQPolicy> = Api::namespaced(ctx.client.clone(), &ns);
            match policies.get_opt(&r.name).await? {
                Some(policy) => Some(policy.spec),
                None => {
                    return Ok(Err((
                        reason::POLICY_NOT_FOUND,
                        format!("waiting for DLQPolicy {} to exist", r.name),
                    )));
                }
            }
        }
    };
    let dead_letter = dead_letter_topic(&source, policy.as_ref());
    // Only a dead-letter topic this namespace holds: the consumer's own (recorded in its
    // status once admitted), or one a KafkaTopic of the namespace manages.
    let held = consumer
        .owned_topics()
        .iter()
        .any(|t| t.name == dead_letter)
        || ctx.topics.state().iter().any(|t| {
            t.namespace().as_deref() == Some(ns.as_str()) && t.topic_name() == dead_letter
        });
    if !held {
        return Ok(Err((
            reason::CONSUMER_NOT_FOUND,
            format!(
                "waiting for OrderConsumer {name} to hold its dead-letter topic {dead_letter} \
                 (see its Reconciled condition)"
            ),
        )));
    }
    Ok(Ok((
        Topics {
            parking: plan::parking_topic(&dead_letter),
            dead_letter,
            target,
            consumer_group: consumer.group_id(),
        },
        consumer,
    )))
}

/// The older replay of the same dead-letter topic this one waits for, if any.
async fn waiting_for(
    replay: &DLQReplay,
    ctx: &Context,
    dead_letter: &str,
) -> Result<Option<String>, Error> {
    let api: Api<DLQReplay> =
        Api::namespaced(ctx.client.clone(), &replay.namespace().unwrap_or_default());
    let all = api.list(&ListParams::default()).await?.items;
    let topic_of = |other: &DLQReplay| -> Option<String> {
        other
            .status
            .as_ref()
            .and_then(|s| s.dead_letter_topic.clone())
            .or_else(|| {
                (other.spec.consumer_ref == replay.spec.consumer_ref)
                    .then(|| dead_letter.to_owned())
            })
    };
    let topics: Vec<Option<String>> = all.iter().map(topic_of).collect();
    Ok(plan::waiting_for(
        replay,
        dead_letter,
        all.iter().zip(topics.iter().map(Option::as_deref)),
    ))
}

/// The parking topic (claimed for the consumer, created like its dead-letter topic), the
/// principal and its ACLs.
async fn prepare(
    replay: &DLQReplay,
    ctx: &Context,
    names: &Names,
    topics: &Topics,
    consumer: &OrderConsumer,
) -> Result<(), Error> {
    let ns = replay.namespace().unwrap_or_default();
    let parking = OwnedTopic {
        name: topics.parking.clone(),
        kind: OwnedTopicKind::Parking,
    };
    let rules = ctx.access_rules(&ns).await?;
    let all_topics = ctx.topics.state();
    let all_consumers = ctx.consumers.state();
    let admitted = crate::consumer::plan::admit(
        consumer,
        &rules,
        std::slice::from_ref(&parking),
        &all_topics.iter().map(Arc::as_ref).collect::<Vec<_>>(),
        &all_consumers.iter().map(Arc::as_ref).collect::<Vec<_>>(),
    )?;
    let owned = crate::consumer::plan::owned_topics(consumer.owned_topics(), &admitted);
    if owned != consumer.owned_topics() {
        crate::consumer::record_owned_topics(consumer, ctx, &owned).await?;
    }
    if admitted.iter().any(|(_, used)| *used == Companion::Owned)
        && ctx.admin.describe_topic(&topics.parking).await?.is_none()
    {
        let dead_letter = ctx
            .admin
            .describe_topic(&topics.dead_letter)
            .await?
            .ok_or_else(|| Error::Waiting {
                reason: reason::TOPIC_NOT_READY,
                message: format!("waiting for dead-letter topic {}", topics.dead_letter),
            })?;
        match ctx
            .admin
            .create_topic(
                &topics.parking,
                dead_letter.partition_count(),
                dead_letter.replication_factor(),
                &BTreeMap::new(),
            )
            .await
        {
            Err(e) if e.code() == Some(rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists) => {}
            other => other?,
        }
        ctx.event(
            replay,
            EventType::Normal,
            "ParkingTopicCreated",
            format!(
                "created parking topic {} for OrderConsumer {}",
                topics.parking,
                consumer.name_any()
            ),
        )
        .await;
    }
    principal::ensure(
        replay,
        ctx,
        &names.kafka_principal(),
        plan::child_meta(replay, &names.credentials_secret),
    )
    .await?;
    let desired = plan::acls(&names.principal, names, topics, replay.spec.dry_run);
    let actual = principal::acls(&ctx.admin, &names.principal).await?;
    principal::apply_acls(
        replay,
        ctx,
        &principal::AclDiff::between(&names.principal, &desired, &actual),
    )
    .await?;
    Ok(())
}

/// Creates the Job.
async fn start(
    replay: &DLQReplay,
    ctx: &Context,
    names: &Names,
    topics: &Topics,
    jobs: &Api<Job>,
) -> Result<(), Error> {
    let settings = &ctx.settings;
    let input = plan::PodInput {
        image: WorkerImage {
            image: &settings.worker_image,
            pull_secrets: &settings.worker_image_pull_secrets,
        },
        kafka: crate::pods::KafkaAccess {
            bootstrap_servers: &settings.worker_bootstrap_servers,
            security_protocol: settings.worker_security_protocol,
            with_ca: settings.kafka_ca_pem.is_some(),
        },
        otlp_endpoint: settings.worker_otlp_endpoint.as_deref(),
    };
    let job = plan::job(replay, names, &input, plan::args(replay, names, topics));
    ctx.apply_if_changed(jobs, &names.job, None, &job).await?;
    ctx.event(
        replay,
        EventType::Normal,
        "ReplayStarted",
        format!(
            "Job {} replays {} to {}",
            names.job, topics.dead_letter, topics.target
        ),
    )
    .await;
    Ok(())
}

/// Where the Job is, with the summary its succeeded pod left or why it failed.
async fn job_state(ctx: &Context, ns: &str, names: &Names, job: &Job) -> Result<JobState, Error> {
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
            .cloned()
    };
    let complete = condition("Complete");
    let failed = condition("Failed");
    if complete.is_none() && failed.is_none() {
        return Ok(JobState::Running);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={}", names.job)))
        .await?
        .items;
    // The termination message of each pod's container, newest pod first.
    let mut messages: Vec<(Option<Time>, String, String)> = pods
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let terminated = status
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.terminated.clone())?;
            Some((
                pod.metadata.creation_timestamp.clone(),
                status.phase.clone().unwrap_or_default(),
                terminated.message.unwrap_or_default(),
            ))
        })
        .collect();
    messages.sort_by(|a, b| b.0.as_ref().map(|t| t.0).cmp(&a.0.as_ref().map(|t| t.0)));
    if complete.is_some() {
        let summary = messages
            .iter()
            .filter(|(_, phase, _)| phase == "Succeeded")
            .find_map(|(_, _, message)| Summary::parse(message));
        return Ok(JobState::Succeeded(summary));
    }
    let failed = failed.expect("checked above");
    let last_words = messages
        .first()
        .map(|(_, _, m)| last_line(m))
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Ok(JobState::Failed(format!(
        "{}: {}{last_words}",
        failed.reason.unwrap_or_default(),
        failed.message.unwrap_or_default()
    )))
}

/// The last non-empty line of a pod's last words (its logs' tail when it left no message).
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// The replay group's committed offsets on the dead-letter topic, as far as Kafka answers
/// (progress is a view: an unanswered read leaves the last one).
async fn progress(ctx: &Context, replay: &DLQReplay, names: &Names) -> BTreeMap<i32, i64> {
    let Some(topic) = replay
        .status
        .as_ref()
        .and_then(|s| s.dead_letter_topic.clone())
    else {
        return BTreeMap::new();
    };
    let partitions = match ctx.admin.describe_topic(&topic).await {
        Ok(Some(t)) => t.partition_count(),
        _ => return BTreeMap::new(),
    };
    match ctx
        .admin
        .group_offsets(&names.group, &topic, partitions)
        .await
    {
        Ok(offsets) => offsets
            .into_iter()
            .filter_map(|(p, o)| Some((p, o?)))
            .collect(),
        Err(e) => {
            warn!(error = %e, group = %names.group, "could not read the replay's progress");
            BTreeMap::new()
        }
    }
}

/// Stops the replay (its Job and pods go) and removes its principal and ACLs.
async fn cleanup(replay: &DLQReplay, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(replay);
    let jobs: Api<Job> =
        Api::namespaced(ctx.client.clone(), &replay.namespace().unwrap_or_default());
    if jobs.get_metadata_opt(&names.job).await?.is_some() {
        jobs.delete(&names.job, &DeleteParams::background()).await?;
    }
    principal::remove(&ctx.admin, &names.user, &names.principal).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_pods_last_words() {
        assert_eq!(
            last_line("starting\nerror: topic orders-dlq does not exist\n\n"),
            "error: topic orders-dlq does not exist"
        );
        assert_eq!(last_line(""), "");
        assert_eq!(last_line(&"x".repeat(500)).len(), 300);
    }
}
