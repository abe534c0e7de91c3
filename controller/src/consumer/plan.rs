//! The OrderConsumer reconciler's decisions, as pure functions: whether it may proceed
//! ([`admission`]), then one [`plan`] of a pass (names, the principal's ACL changes, its
//! dead-letter and retry topics, the replica arithmetic: partition cap, lag autoscaling,
//! scale-down stabilization; the rendered worker configuration and the Deployment that runs
//! it), and the [`status`] it leads to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use pubsubkafka_contract::config::{
    GroupProtocol, HandlerConfig, KafkaConnection, RetryPolicy, RetryTopic, SecurityProtocol,
    TracingConfig, WorkerConfig,
};

use crate::context::Settings;
use crate::crd::conditions::{CAPPED, RECONCILED, merge, new, reason};
use crate::crd::dlq_policy::DLQPolicySpec;
use crate::crd::order_consumer::{Autoscaling, OwnedTopic, OwnedTopicKind};
use crate::crd::{KafkaTopic, OrderConsumer, OrderConsumerStatus};
use crate::duration;
use crate::error::{Error, SpecError};
use crate::kafka::{Acl, AclOperation, ResourceKind};
use crate::ownership::{self, Companion};
use crate::pods;
use crate::principal::{AclDiff, Principal, held_by};
use crate::tenancy::{self, Rules};
use crate::workload::{replicas_of, scaled_note};

/// Where the worker pod mounts what the operator gives it.
pub const CONFIG_DIR: &str = "/etc/pubsubkafka/config";
pub const KAFKA_DIR: &str = "/etc/pubsubkafka/kafka";
pub const DATABASE_DIR: &str = "/etc/pubsubkafka/database";
pub const CONFIG_KEY: &str = "worker.json";
/// Annotation on the pod template whose change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "pubsubkafka.io/config-hash";
pub const CONSUMER_LABEL: &str = "pubsubkafka.io/consumer";
/// The port of a worker's /metrics, /healthz and /readyz.
pub const WORKER_HTTP_PORT: u16 = 9090;
/// How long a stopping worker finishes its in-flight records and commits before it exits.
pub const WORKER_SHUTDOWN_GRACE_SECONDS: u64 = 25;
/// What the kubelet allows a worker pod to stop in: the worker's own grace and a margin.
pub const WORKER_TERMINATION_GRACE_SECONDS: i64 = WORKER_SHUTDOWN_GRACE_SECONDS as i64 + 5;
/// The consumer group session timeout of the workers: a crashed worker's partitions move on
/// after this long.
pub const WORKER_SESSION_TIMEOUT_MS: u64 = 30_000;
/// How often the kubelet asks a worker's `/readyz`.
pub const WORKER_READINESS_PERIOD_SECONDS: i32 = 5;
/// Kafka's longest topic name.
pub const KAFKA_TOPIC_NAME_MAX: usize = 249;
/// The bounds the DLQPolicy and OrderConsumer schemas put on retries and on records in
/// flight per partition, enforced again on what the workers get.
pub const MAX_RETRIES: i32 = 100;
pub const MAX_CONCURRENCY_PER_PARTITION: i32 = 1000;
/// The worker container of each pod.
pub const WORKER_CONTAINER: &str = "worker";

/// Names of everything the operator creates for one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Its Kafka principal and credentials Secret.
    pub kafka: Principal,
    pub config_map: String,
    pub deployment: String,
}

impl Names {
    pub fn of(consumer: &OrderConsumer) -> Self {
        let name = consumer.name_any();
        Self {
            kafka: Principal::of(consumer),
            config_map: format!("{name}-worker"),
            deployment: format!("{name}-worker"),
        }
    }
}

/// The dead-letter topic: the policy's, else `<source>-dlq`.
pub fn dead_letter_topic(source: &str, policy: Option<&DLQPolicySpec>) -> String {
    policy
        .and_then(|p| p.dead_letter_topic.clone())
        .unwrap_or_else(|| format!("{source}-dlq"))
}

/// Partitions the dead-letter topic needs: at least the source's, so a record can keep its
/// partition number.
pub fn dead_letter_partitions(source_partitions: i32, policy: Option<&DLQPolicySpec>) -> i32 {
    policy
        .and_then(|p| p.dead_letter.partitions)
        .unwrap_or(1)
        .max(source_partitions)
}

/// Exactly the seed architecture's ACLs: READ and DESCRIBE on the source topic, WRITE and
/// DESCRIBE on the dead-letter topic, READ on the consumer group; and READ, WRITE and DESCRIBE
/// on each retry topic (the worker both feeds and consumes them).
pub fn consumer_acls(
    principal: &str,
    source: &str,
    dead_letter: &str,
    retry_topics: &[RetryTopic],
    group: &str,
) -> BTreeSet<Acl> {
    let acl = |resource, name: &str, operation| Acl {
        resource,
        name: name.to_owned(),
        principal: principal.to_owned(),
        operation,
    };
    let mut acls = BTreeSet::from([
        acl(ResourceKind::Topic, source, AclOperation::Read),
        acl(ResourceKind::Topic, source, AclOperation::Describe),
        acl(ResourceKind::Topic, dead_letter, AclOperation::Write),
        acl(ResourceKind::Topic, dead_letter, AclOperation::Describe),
        acl(ResourceKind::Group, group, AclOperation::Read),
    ]);
    for topic in retry_topics {
        for operation in [
            AclOperation::Read,
            AclOperation::Write,
            AclOperation::Describe,
        ] {
            acls.insert(acl(ResourceKind::Topic, &topic.name, operation));
        }
    }
    acls
}

/// The tenancy checks before the operator touches anything for a consumer: its group id is
/// allowed and not another consumer's, and each topic it would create (dead-letter, retry) is
/// not internal, is allowed, and is not owned by another namespace. Returns how each topic is
/// used; a refusal means no topic, principal or ACL is created.
pub fn admit(
    consumer: &OrderConsumer,
    rules: &Rules,
    companions: &[OwnedTopic],
    topics: &[&KafkaTopic],
    consumers: &[&OrderConsumer],
) -> Result<Vec<(OwnedTopic, Companion)>, Error> {
    let refused = |v: tenancy::Violation| Error::Refused {
        reason: reason::POLICY_VIOLATION,
        message: v.message,
    };
    let group = consumer.group_id();
    rules.check_group(&group).map_err(refused)?;
    if let Some(owner) = ownership::group_conflict(consumer, consumers.iter().copied()) {
        return Err(Error::Conflict {
            message: format!(
                "consumer group {group:?} belongs to {owner}; this consumer gets no ACL until it \
                 uses another group id"
            ),
        });
    }
    companions
        .iter()
        .map(|topic| {
            let kind = match topic.kind {
                OwnedTopicKind::DeadLetter => "dead-letter",
                OwnedTopicKind::Retry => "retry",
                OwnedTopicKind::Parking => "parking",
            };
            if tenancy::is_internal_topic(&topic.name) {
                return Err(Error::Refused {
                    reason: reason::RESERVED_TOPIC_NAME,
                    message: format!(
                        "{kind} topic {} is a Kafka internal topic (names starting with '__')",
                        topic.name
                    ),
                });
            }
            rules.check_topic(&topic.name).map_err(refused)?;
            let used = ownership::companion_topic(
                consumer,
                &topic.name,
                topics.iter().copied(),
                consumers.iter().copied(),
            )
            .map_err(|owner| Error::Conflict {
                message: format!(
                    "{kind} topic {:?} is owned by {owner}; this consumer changes nothing until \
                     its DLQPolicy names another topic",
                    topic.name
                ),
            })?;
            Ok((topic.clone(), used))
        })
        .collect()
}

/// The topics the consumer owns after this pass: what it owned before (their records are
/// still there) and the admitted ones it owns now.
pub fn owned_topics(
    before: &[OwnedTopic],
    admitted: &[(OwnedTopic, Companion)],
) -> Vec<OwnedTopic> {
    let mut owned: Vec<OwnedTopic> = before.to_vec();
    owned.extend(
        admitted
            .iter()
            .filter(|(_, used)| *used == Companion::Owned)
            .map(|(topic, _)| topic.clone()),
    );
    owned.sort();
    owned.dedup_by(|a, b| a.name == b.name);
    owned
}

/// Replicas after the partition cap, and whether the cap applied.
pub fn partition_cap(desired: i32, partitions: i32) -> (i32, bool) {
    let cap = partitions.max(0);
    (desired.min(cap).max(0), desired > cap)
}

/// Replicas for `lag`: ceil(lag / target), clamped to [min, max].
pub fn lag_replicas(lag: i64, autoscaling: &Autoscaling) -> i32 {
    let target = autoscaling.target_lag_per_replica.max(1);
    let wanted = (lag.max(0) + target - 1) / target;
    let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
    wanted.clamp(
        autoscaling.min_replicas,
        autoscaling.max_replicas.max(autoscaling.min_replicas),
    )
}

/// One lag-based replica recommendation and when it started to hold. The history lives in the
/// controller's memory (as the HPA's does), never in the status: a status that changed on
/// every pass would wake its own reconcile and write again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    pub since: jiff::Timestamp,
    pub replicas: i32,
}

/// HPA-style stabilization: scale up at once, scale down only to the highest recommendation of
/// the last `window`. Returns the replicas to use and the history to keep.
///
/// The history holds one entry per change of recommendation (an entry holds until the next),
/// so a recommendation that stays the same adds nothing, however fast the resync. An empty
/// history (a consumer new to this controller, or a controller restart) starts from
/// `previous`, the replicas last published in the status, so a restart never scales down
/// before a full window has passed.
pub fn stabilize(
    now: jiff::Timestamp,
    history: &[Recommendation],
    previous: Option<i32>,
    recommended: i32,
    window: Duration,
) -> (i32, Vec<Recommendation>) {
    let since = now - jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::ZERO);
    let mut kept: Vec<Recommendation> =
        history.iter().filter(|r| r.since <= now).copied().collect();
    if kept.is_empty()
        && let Some(previous) = previous
    {
        kept.push(Recommendation {
            since: now,
            replicas: previous,
        });
    }
    if kept.last().is_none_or(|r| r.replicas != recommended) {
        kept.push(Recommendation {
            since: now,
            replicas: recommended,
        });
    }
    // Drop what ended before the window: every entry older than the one in force at `since`.
    let in_force = kept.iter().rposition(|r| r.since <= since).unwrap_or(0);
    kept.drain(..in_force);
    let replicas = kept.iter().map(|r| r.replicas).max().unwrap_or(recommended);
    (replicas, kept)
}

/// What the controller sees of one worker pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerPod {
    pub name: String,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// Why the worker container waits (CrashLoopBackOff, ImagePullBackOff, ...), if it does.
    pub waiting: Option<String>,
    /// Seconds the worker container has been running, when it runs.
    pub running_for: Option<i64>,
    /// Times the kubelet restarted the worker container.
    pub restarts: i32,
    /// Being deleted (a rollout or a scale-down): not counted.
    pub terminating: bool,
}

impl WorkerPod {
    pub fn of(pod: &Pod, now: jiff::Timestamp) -> Self {
        let status = pod.status.as_ref();
        let container = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.name == WORKER_CONTAINER)
                    .or(cs.first())
            });
        let state = container.and_then(|c| c.state.as_ref());
        Self {
            name: pod.name_any(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            waiting: state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone()),
            running_for: state
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .map(|t| (now - t.0).get_seconds().max(0)),
            restarts: container.map_or(0, |c| c.restart_count),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// The worker Deployment as the controller last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Workload {
    /// Replicas wanted, after the partition cap.
    pub replicas: i32,
    /// Ready pods (of any template while a rollout is under way).
    pub ready: i32,
    /// The rollout of the latest spec is complete: only pods of the current template run.
    pub rolled_out: bool,
}

impl Workload {
    pub fn of(replicas: i32, deployment: &Deployment) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        let updated = status.updated_replicas.unwrap_or(0);
        Self {
            replicas,
            ready: status.ready_replicas.unwrap_or(0),
            // As `kubectl rollout status` has it: the latest spec seen, every pod of the
            // current template, none of an older one left.
            rolled_out: status.observed_generation.is_some()
                && status.observed_generation >= deployment.metadata.generation
                && updated >= replicas
                && status.replicas.unwrap_or(0) <= updated,
        }
    }

    /// Every wanted worker is available.
    pub fn is_ready(&self) -> bool {
        self.replicas == 0 || (self.rolled_out && self.ready >= self.replicas)
    }
}

/// How long a running worker may stay unready before the controller calls it a sink outage
/// rather than a start-up (the worker connects to its sink before it reports ready).
pub const UNREADY_GRACE_SECONDS: i64 = 30;

/// How the conditions of a workload name its pods and explain a running but unready one.
#[derive(Debug, Clone, Copy)]
pub struct PodsNoun {
    /// "worker", "gateway", "outbox relay".
    pub pods: &'static str,
    /// Why such a pod runs but reports not ready, and what that means for the user.
    pub unready_because: &'static str,
}

/// An OrderConsumer's worker pods.
pub const WORKERS: PodsNoun = PodsNoun {
    pods: "worker",
    unready_because: "as workers do while their sink (PostgreSQL or the HTTP endpoint) or Kafka \
                      is unreachable; consumption is paused, see the worker logs",
};

/// The `Ready` and `Degraded` conditions of a workload whose reconcile succeeded, from its
/// Deployment and (when not all are ready) its pods. Messages name no counter that moves
/// without a change of state (restart counts, ages), so a status at rest stays unchanged.
pub fn workload_conditions(
    workload: &Workload,
    pods: &[WorkerPod],
    generation: Option<i64>,
    noun: PodsNoun,
) -> (Condition, Condition) {
    let what = noun.pods;
    use crate::crd::conditions::{DEGRADED, READY, new};
    let Workload {
        replicas, ready, ..
    } = *workload;
    if workload.is_ready() {
        let message = if replicas == 0 {
            format!("no {what} replica is wanted (scaled to zero)")
        } else {
            format!("{replicas} of {replicas} {what} pods ready")
        };
        return (
            new(READY, true, reason::WORKERS_READY, message, generation),
            new(
                DEGRADED,
                false,
                reason::AS_DECLARED,
                format!("the {what} pods run as declared"),
                generation,
            ),
        );
    }
    let live: Vec<&WorkerPod> = pods.iter().filter(|p| !p.terminating).collect();
    let names = |pick: &dyn Fn(&WorkerPod) -> bool| {
        let mut names: Vec<&str> = live
            .iter()
            .filter(|p| pick(p))
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        names.join(", ")
    };
    // Restarted and not ready: between two crashes the container is briefly terminated or
    // running, not only waiting in CrashLoopBackOff; all three are the same crash loop.
    let crash_looping = names(&|p| {
        p.waiting.as_deref() == Some("CrashLoopBackOff")
            || (!p.ready
                && p.restarts > 0
                && p.running_for.is_none_or(|s| s < UNREADY_GRACE_SECONDS))
    });
    let failing = live
        .iter()
        .filter_map(|p| {
            p.waiting
                .as_deref()
                .filter(|w| {
                    !matches!(
                        *w,
                        "CrashLoopBackOff" | "ContainerCreating" | "PodInitializing"
                    )
                })
                .map(|w| format!("{} ({w})", p.name))
        })
        .min();
    let unready_running =
        names(&|p| !p.ready && p.running_for.is_some_and(|s| s >= UNREADY_GRACE_SECONDS));
    let summary = format!("{ready} of {replicas} {what} pods ready");
    let (why, degraded_message) = if !crash_looping.is_empty() {
        (
            reason::WORKER_CRASH_LOOPING,
            format!(
                "{summary}: {what} container keeps exiting (CrashLoopBackOff) in {crash_looping}; \
                 see kubectl logs --previous"
            ),
        )
    } else if let Some(pod) = failing {
        (
            reason::WORKER_FAILING,
            format!(
                "{summary}: {what} pod {pod} cannot start its container; see kubectl describe pod"
            ),
        )
    } else if !unready_running.is_empty() {
        (
            reason::SINK_UNAVAILABLE,
            format!(
                "{summary}: {unready_running} run but report not ready, {}",
                noun.unready_because
            ),
        )
    } else {
        let why = if !workload.rolled_out || !live.is_empty() {
            reason::WORKERS_STARTING
        } else {
            reason::WORKERS_NOT_READY
        };
        return (
            new(READY, false, why, summary, generation),
            new(
                DEGRADED,
                false,
                reason::AS_DECLARED,
                format!("no {what} problem seen yet"),
                generation,
            ),
        );
    };
    (
        new(READY, false, why, degraded_message.clone(), generation),
        new(DEGRADED, true, why, degraded_message, generation),
    )
}

/// When to look again at a workload on its way to ready: a running but unready worker turns
/// into a sink outage once its grace has passed, and nothing else would wake the reconcile.
pub fn recheck_after(pods: &[WorkerPod]) -> Option<Duration> {
    pods.iter()
        .filter(|p| !p.ready && !p.terminating)
        .filter_map(|p| p.running_for)
        .filter(|s| *s < UNREADY_GRACE_SECONDS)
        .map(|s| Duration::from_secs((UNREADY_GRACE_SECONDS - s + 1) as u64))
        .min()
}

/// The retry topics of mode RetryTopics, `<source>-<consumer>-retry-<n>`, checked against
/// Kafka's name limit.
pub fn retry_topics(
    source: &str,
    consumer: &str,
    retry: &RetryPolicy,
) -> Result<Vec<RetryTopic>, SpecError> {
    let topics = pubsubkafka_contract::retry::retry_topics(&format!("{source}-{consumer}"), retry);
    match topics.iter().find(|t| t.name.len() > KAFKA_TOPIC_NAME_MAX) {
        Some(t) => Err(SpecError::RetryTopicTooLong(t.name.clone())),
        None => Ok(topics),
    }
}

/// The retry policy the workers get: the DLQPolicy's, or the defaults.
pub fn retry_policy(policy: Option<&DLQPolicySpec>) -> Result<RetryPolicy, SpecError> {
    let Some(policy) = policy else {
        return Ok(RetryPolicy::default());
    };
    let ms = |text: &str, field| {
        duration::parse(text)
            .map(|d| d.as_millis() as u64)
            .map_err(|source| SpecError::FieldDuration { field, source })
    };
    Ok(RetryPolicy {
        max_retries: policy.max_retries.clamp(0, MAX_RETRIES) as u32,
        initial_backoff_ms: ms(&policy.backoff.initial, "backoff.initial")?,
        multiplier: policy.backoff.multiplier.max(1.0),
        max_backoff_ms: ms(&policy.backoff.max, "backoff.max")?,
        jitter: policy.backoff.jitter.clamp(0.0, 1.0),
        permanent_errors: policy.permanent_errors.clone(),
        mode: policy.mode,
    })
}

/// Everything the rendered configuration depends on besides the consumer itself.
#[derive(Debug, Clone)]
pub struct RenderInput<'a> {
    pub consumer: &'a OrderConsumer,
    pub names: &'a Names,
    pub source_topic: &'a str,
    pub dead_letter_topic: &'a str,
    pub retry: RetryPolicy,
    pub retry_topics: &'a [RetryTopic],
    pub group_protocol: GroupProtocol,
    /// Bootstrap servers as the workers reach them.
    pub bootstrap_servers: &'a str,
    pub security_protocol: SecurityProtocol,
    /// Whether the credentials Secret carries the brokers' CA (`ca.crt`).
    pub with_ca: bool,
    /// OTLP endpoint the workers export traces to (none: tracing off).
    pub otlp_endpoint: Option<&'a str>,
}

/// The worker configuration, with paths of the pod's mounts.
pub fn worker_config(input: &RenderInput<'_>) -> Result<WorkerConfig, SpecError> {
    let spec = &input.consumer.spec;
    let handler = match (&spec.handler.event_store, &spec.handler.http) {
        (Some(store), None) => HandlerConfig::EventStore {
            database_url_file: format!("{DATABASE_DIR}/{}", store.connection_secret.key).into(),
        },
        (None, Some(http)) => HandlerConfig::Http {
            url: http.url.clone(),
            timeout_ms: duration::parse(&http.timeout)
                .map_err(|source| SpecError::FieldDuration {
                    field: "handler.http.timeout",
                    source,
                })?
                .as_millis() as u64,
        },
        _ => return Err(SpecError::Handler),
    };
    Ok(WorkerConfig {
        kafka: KafkaConnection {
            bootstrap_servers: input.bootstrap_servers.to_owned(),
            security_protocol: input.security_protocol,
            username: Some(input.names.kafka.user.clone()),
            password_file: Some(format!("{KAFKA_DIR}/password").into()),
            ca_file: input.with_ca.then(|| format!("{KAFKA_DIR}/ca.crt").into()),
        },
        source_topic: input.source_topic.to_owned(),
        group_id: input.consumer.group_id(),
        dead_letter_topic: input.dead_letter_topic.to_owned(),
        retry: input.retry.clone(),
        handler,
        http_port: WORKER_HTTP_PORT,
        shutdown_grace_seconds: WORKER_SHUTDOWN_GRACE_SECONDS,
        session_timeout_ms: WORKER_SESSION_TIMEOUT_MS,
        group_protocol: input.group_protocol,
        concurrency: spec
            .concurrency_per_partition
            .clamp(1, MAX_CONCURRENCY_PER_PARTITION) as usize,
        retry_topics: input.retry_topics.to_vec(),
        tracing: input.otlp_endpoint.map(|endpoint| TracingConfig {
            otlp_endpoint: endpoint.to_owned(),
        }),
    })
}

/// The pod template's hash: the rendered config and the version of every Secret the pods mount
/// (`(name, resourceVersion)`, `None` while it does not exist). A corrected database URL or a
/// new CA in the credentials Secret therefore rolls the workers, which read both only at
/// start. Versions, not contents, go in: no value derived from a secret lands in an annotation
/// anyone who can read Deployments can see.
pub fn pod_template_hash(config: &str, mounted_secrets: &[(String, Option<String>)]) -> String {
    let mut text = config.to_owned();
    let mut secrets: Vec<_> = mounted_secrets.iter().collect();
    secrets.sort();
    for (name, version) in secrets {
        text.push_str(&format!(
            "\nsecret/{name}@{}",
            version.as_deref().unwrap_or("-")
        ));
    }
    config_hash(&text)
}

/// The pod template's config hash of a Deployment the operator rendered.
pub fn config_hash_of(deployment: &Deployment) -> Option<&str> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .map(String::as_str)
}

/// A stable 64-bit FNV-1a hash, hex: the same config gives the same hash across releases.
pub fn config_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Labels of every object of one consumer; the first two select its pods.
pub fn labels(consumer: &OrderConsumer) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CONSUMER_LABEL.to_owned(), consumer.name_any()),
        (
            "app.kubernetes.io/name".to_owned(),
            "pubsubkafka-worker".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), consumer.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "pubsubkafka-controller".to_owned(),
        ),
    ])
}

/// The pod selector as a label query string (status.selector).
pub fn selector(consumer: &OrderConsumer) -> String {
    format!(
        "{CONSUMER_LABEL}={},app.kubernetes.io/name=pubsubkafka-worker",
        consumer.name_any()
    )
}

fn selector_labels(consumer: &OrderConsumer) -> BTreeMap<String, String> {
    labels(consumer)
        .into_iter()
        .filter(|(k, _)| k == CONSUMER_LABEL || k == "app.kubernetes.io/name")
        .collect()
}

pub fn owner_reference(consumer: &OrderConsumer) -> OwnerReference {
    consumer
        .controller_owner_ref(&())
        .expect("a stored OrderConsumer has a name and uid")
}

/// Metadata of a child object named `name`, owned by the consumer.
pub fn child_meta(consumer: &OrderConsumer, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: consumer.namespace(),
        labels: Some(labels(consumer)),
        owner_references: Some(vec![owner_reference(consumer)]),
        ..ObjectMeta::default()
    }
}

/// At most one worker pod down at a time for a voluntary disruption (a node drain): the group
/// rebalances once per pod rather than losing every consumer at once.
pub fn disruption_budget(
    consumer: &OrderConsumer,
    names: &Names,
) -> k8s_openapi::api::policy::v1::PodDisruptionBudget {
    use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
    PodDisruptionBudget {
        metadata: child_meta(consumer, &names.deployment),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(pods::MAX_UNAVAILABLE_PODS)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(consumer)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What the worker pods run: image and the pull Secrets to fetch it with.
#[derive(Debug, Clone, Copy)]
pub struct WorkerImage<'a> {
    pub image: &'a str,
    pub pull_secrets: &'a [String],
}

/// The worker Deployment running `replicas` pods of `image` with the rendered config.
pub fn deployment(
    consumer: &OrderConsumer,
    names: &Names,
    replicas: i32,
    image: WorkerImage<'_>,
    config_hash: &str,
) -> Deployment {
    let spec = &consumer.spec;
    let (credentials, credentials_mount) =
        pods::secret_mount("kafka-credentials", &names.kafka.secret, KAFKA_DIR);
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        credentials,
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        credentials_mount,
    ];
    if let Some(store) = &spec.handler.event_store {
        let (volume, mount) =
            pods::secret_mount("database", &store.connection_secret.name, DATABASE_DIR);
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut template_annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned())]);
    template_annotations.insert("prometheus.io/scrape".into(), "true".into());
    template_annotations.insert("prometheus.io/port".into(), WORKER_HTTP_PORT.to_string());
    Deployment {
        metadata: child_meta(consumer, &names.deployment),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(consumer)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(consumer)),
                    annotations: Some(template_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    termination_grace_period_seconds: Some(WORKER_TERMINATION_GRACE_SECONDS),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: pods::pull_secrets(image.pull_secrets),
                    security_context: Some(pods::pod_security()),
                    containers: vec![Container {
                        name: WORKER_CONTAINER.into(),
                        image: Some(image.image.to_owned()),
                        args: Some(vec![
                            "consume".into(),
                            "--config".into(),
                            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                        ]),
                        env: Some(vec![EnvVar {
                            name: "POD_NAME".into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.name".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: i32::from(WORKER_HTTP_PORT),
                            ..Default::default()
                        }]),
                        liveness_probe: Some(pods::http_probe(
                            "/healthz",
                            pods::LIVENESS_PERIOD_SECONDS,
                        )),
                        readiness_probe: Some(pods::http_probe(
                            "/readyz",
                            WORKER_READINESS_PERIOD_SECONDS,
                        )),
                        resources: spec.resources.clone(),
                        security_context: Some(pods::container_security()),
                        volume_mounts: Some(mounts),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// What the reconciler read from the API server and its caches before deciding (no Kafka).
#[derive(Debug, Clone)]
pub struct Gathered {
    /// The consumer's KafkaTopic, when it exists and is Ready.
    pub topic: Option<Arc<KafkaTopic>>,
    /// The DLQPolicy the consumer names, when it exists.
    pub policy: Option<DLQPolicySpec>,
    /// The OrderGateway of the same name that holds the principal both would use, if any.
    pub principal_holder: Option<String>,
    /// The tenancy rules of the namespace.
    pub rules: Rules,
    /// Every KafkaTopic and OrderConsumer the operator sees (for ownership).
    pub topics: Vec<Arc<KafkaTopic>>,
    pub consumers: Vec<Arc<OrderConsumer>>,
    /// The resourceVersion of the event store's connection Secret (the pods mount it).
    pub event_store_secret: Option<String>,
    /// The worker Deployment as it is, and the resourceVersions of the ConfigMap and the
    /// PodDisruptionBudget.
    pub deployment: Option<Deployment>,
    pub config_map_version: Option<String>,
    pub budget_version: Option<String>,
}

/// A consumer the tenancy and ownership checks let through, with the topics it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The consumer's KafkaTopic, its Kafka topic and partitions.
    pub topic: Arc<KafkaTopic>,
    pub source: String,
    pub partitions: i32,
    pub dead_letter: String,
    pub retry: RetryPolicy,
    pub retry_topics: Vec<RetryTopic>,
    pub group: String,
    /// The consumer's own protocol, else its policy's, else the default.
    pub group_protocol: GroupProtocol,
    /// Its dead-letter and retry topics, and how it uses each.
    pub companions: Vec<(OwnedTopic, Companion)>,
}

/// The verdict of [`admission`].
#[derive(Debug)]
pub enum Admission {
    Admitted(Admitted),
    /// Refused by tenancy or ownership: the principal keeps no ACL.
    Refused(Error),
}

/// The checks before the operator touches anything for a consumer, in order: its KafkaTopic
/// is Ready and its DLQPolicy exists (waited for), no older OrderGateway holds its principal,
/// its retry policy is valid, and [`admit`] lets it use its group and topics. An `Err` changes
/// nothing; a refusal takes the principal's ACLs away.
pub fn admission(consumer: &OrderConsumer, gathered: &Gathered) -> Result<Admission, Error> {
    let topic_name = &consumer.spec.topic_ref.name;
    let topic = gathered.topic.clone().ok_or_else(|| Error::Waiting {
        reason: reason::TOPIC_NOT_READY,
        message: format!("waiting for KafkaTopic {topic_name} to exist and be Ready"),
    })?;
    if let Some(named) = &consumer.spec.dlq_policy_ref
        && gathered.policy.is_none()
    {
        return Err(Error::Waiting {
            reason: reason::POLICY_NOT_FOUND,
            message: format!("waiting for DLQPolicy {} to exist", named.name),
        });
    }
    let source = topic.topic_name().to_owned();
    let partitions = topic
        .status
        .as_ref()
        .and_then(|s| s.partitions)
        .unwrap_or(topic.spec.partitions);
    let policy = gathered.policy.as_ref();
    if let Some(gateway) = &gathered.principal_holder {
        let holder = format!(
            "OrderGateway {}/{gateway}",
            consumer.namespace().unwrap_or_default()
        );
        return Err(held_by(&Principal::base(consumer), &holder, "consumer"));
    }
    let dead_letter = dead_letter_topic(&source, policy);
    let retry = retry_policy(policy)?;
    let retry_topics = retry_topics(&source, &consumer.name_any(), &retry)?;
    let companions: Vec<OwnedTopic> = std::iter::once(OwnedTopic {
        name: dead_letter.clone(),
        kind: OwnedTopicKind::DeadLetter,
    })
    .chain(retry_topics.iter().map(|t| OwnedTopic {
        name: t.name.clone(),
        kind: OwnedTopicKind::Retry,
    }))
    .collect();
    let topics: Vec<&KafkaTopic> = gathered.topics.iter().map(Arc::as_ref).collect();
    let consumers: Vec<&OrderConsumer> = gathered.consumers.iter().map(Arc::as_ref).collect();
    Ok(
        match admit(consumer, &gathered.rules, &companions, &topics, &consumers) {
            Ok(companions) => Admission::Admitted(Admitted {
                topic,
                source,
                partitions,
                dead_letter,
                retry,
                retry_topics,
                group: consumer.group_id(),
                group_protocol: consumer
                    .spec
                    .group_protocol
                    .or(policy.and_then(|p| p.group_protocol))
                    .unwrap_or_default(),
                companions,
            }),
            Err(refusal) => Admission::Refused(refusal),
        },
    )
}

/// What Kafka holds for an admitted consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaState {
    /// The principal's ACLs.
    pub acls: BTreeSet<Acl>,
    /// Records the group has not committed, summed over the source's partitions.
    pub lag: i64,
    /// Partitions of each topic the consumer owns (dead-letter, retry), `None` when missing.
    pub companion_partitions: BTreeMap<String, Option<i32>>,
}

/// A dead-letter or retry topic to create or grow. Both take whatever record size the source
/// takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanionChange {
    pub topic: String,
    pub dead_letter: bool,
    pub partitions: i32,
    /// To create, with its replication factor and configs; otherwise grown to `partitions`.
    pub create: Option<(i32, BTreeMap<String, String>)>,
}

impl CompanionChange {
    /// The event's reason and note once the change is made.
    pub fn event(&self) -> (&'static str, String) {
        let (kind, created, grown) = if self.dead_letter {
            (
                "dead-letter",
                "DeadLetterTopicCreated",
                "DeadLetterTopicGrown",
            )
        } else {
            ("retry", "RetryTopicCreated", "RetryTopicGrown")
        };
        let (topic, partitions) = (&self.topic, self.partitions);
        match self.create {
            Some(_) => (
                created,
                format!("created {kind} topic {topic} with {partitions} partitions"),
            ),
            None => (
                grown,
                format!("grew {kind} topic {topic} to {partitions} partitions"),
            ),
        }
    }
}

/// What one pass applies, in this order: the claim on its topics (`record_owned_topics`), the
/// topic changes, the principal and its ACL changes, the worker ConfigMap, the Deployment
/// ([`Plan::deployment`]) and its PodDisruptionBudget.
#[derive(Debug, Clone)]
pub struct Plan {
    pub names: Names,
    pub admitted: Admitted,
    pub partitions: i32,
    pub lag: i64,
    /// Every topic the consumer owns after this pass; written first when it changed.
    pub owned_topics: Vec<OwnedTopic>,
    pub record_owned_topics: bool,
    pub topic_changes: Vec<CompanionChange>,
    pub acls: AclDiff,
    /// Replicas wanted before the cap, after it, and whether the cap applied.
    pub desired: i32,
    pub replicas: i32,
    pub capped: bool,
    /// The lag recommendations to keep for the next pass (none without autoscaling).
    pub recommendations: Vec<Recommendation>,
    /// The worker configuration (worker.json) and the ConfigMap holding it.
    pub config: String,
    pub config_map: ConfigMap,
    pub budget: k8s_openapi::api::policy::v1::PodDisruptionBudget,
    /// The event note when the worker replicas change.
    pub scaled: Option<String>,
    image: String,
}

/// Decides an admitted consumer's pass from what was gathered; `history` is the consumer's
/// recent lag recommendations, `now` the time of the pass.
pub fn plan(
    consumer: &OrderConsumer,
    gathered: &Gathered,
    admitted: Admitted,
    kafka: &KafkaState,
    history: &[Recommendation],
    now: jiff::Timestamp,
    settings: &Settings,
) -> Result<Plan, Error> {
    let names = Names::of(consumer);
    let policy = gathered.policy.as_ref();
    let partitions = admitted.partitions;
    let owned = owned_topics(consumer.owned_topics(), &admitted.companions);

    let dead_letter_partitions = dead_letter_partitions(partitions, policy);
    let mut topic_changes = Vec::new();
    for (topic, used) in &admitted.companions {
        if *used != Companion::Owned {
            // A KafkaTopic of this namespace manages it.
            continue;
        }
        let (wanted, dead_letter) = match topic.kind {
            OwnedTopicKind::DeadLetter => (dead_letter_partitions, true),
            // Partition p of every retry topic goes with partition p of the source.
            OwnedTopicKind::Retry => (partitions, false),
            // Its DLQReplay creates it.
            OwnedTopicKind::Parking => continue,
        };
        let create = match kafka
            .companion_partitions
            .get(&topic.name)
            .copied()
            .flatten()
        {
            None => Some(companion_topic_settings(
                &admitted.topic,
                gathered.policy.as_ref(),
                dead_letter,
            )?),
            Some(existing) if existing < wanted => None,
            Some(_) => continue,
        };
        topic_changes.push(CompanionChange {
            topic: topic.name.clone(),
            dead_letter,
            partitions: wanted,
            create,
        });
    }

    let desired_acls = consumer_acls(
        &names.kafka.principal,
        &admitted.source,
        &admitted.dead_letter,
        &admitted.retry_topics,
        &admitted.group,
    );
    let (desired, recommendations) = match &consumer.spec.autoscaling {
        None => (consumer.spec.replicas, Vec::new()),
        Some(autoscaling) => {
            let window = crate::duration::parse(&autoscaling.scale_down_stabilization)
                .map_err(SpecError::from)?;
            stabilize(
                now,
                history,
                consumer.status.as_ref().and_then(|s| s.desired_replicas),
                lag_replicas(kafka.lag, autoscaling),
                window,
            )
        }
    };
    let (replicas, capped) = partition_cap(desired, partitions);

    let config = worker_config(&RenderInput {
        consumer,
        names: &names,
        source_topic: &admitted.source,
        dead_letter_topic: &admitted.dead_letter,
        retry: admitted.retry.clone(),
        retry_topics: &admitted.retry_topics,
        group_protocol: admitted.group_protocol,
        bootstrap_servers: &settings.worker_bootstrap_servers,
        security_protocol: settings.worker_security_protocol,
        with_ca: settings.kafka_ca_pem.is_some(),
        otlp_endpoint: settings.worker_otlp_endpoint.as_deref(),
    })?
    .to_json();
    let config_map = ConfigMap {
        metadata: child_meta(consumer, &names.config_map),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config.clone())])),
        ..Default::default()
    };
    Ok(Plan {
        acls: AclDiff::between(&names.kafka.principal, &desired_acls, &kafka.acls),
        budget: disruption_budget(consumer, &names),
        scaled: scaled_note(
            replicas_of(gathered.deployment.as_ref()),
            replicas,
            "worker replicas",
            "workers",
        ),
        image: consumer
            .spec
            .image
            .clone()
            .unwrap_or_else(|| settings.worker_image.clone()),
        record_owned_topics: owned != consumer.owned_topics(),
        owned_topics: owned,
        partitions,
        lag: kafka.lag,
        topic_changes,
        desired,
        replicas,
        capped,
        recommendations,
        config,
        config_map,
        names,
        admitted,
    })
}

/// The replication factor and configs of a dead-letter or retry topic to create: the policy's
/// replication factor, else the source's; the source's record size limit; the policy's
/// retention for dead letters.
fn companion_topic_settings(
    source: &KafkaTopic,
    policy: Option<&DLQPolicySpec>,
    dead_letter: bool,
) -> Result<(i32, BTreeMap<String, String>), Error> {
    let replication = policy
        .and_then(|p| p.dead_letter.replication_factor)
        .or_else(|| source.status.as_ref()?.replication_factor)
        .unwrap_or(source.spec.replication_factor);
    let mut configs = BTreeMap::new();
    // Whatever fits the source must fit its dead letters and retries.
    if let Some(limit) = source.config_strings().get("max.message.bytes") {
        configs.insert("max.message.bytes".to_owned(), limit.clone());
    }
    if let Some(retention) = policy
        .filter(|_| dead_letter)
        .and_then(|p| p.dead_letter.retention.as_deref())
    {
        let ms = duration::parse(retention).map_err(SpecError::from)?;
        configs.insert("retention.ms".to_owned(), ms.as_millis().to_string());
    }
    Ok((replication, configs))
}

impl Plan {
    /// The worker Deployment, once the credentials Secret is applied: its
    /// `credentials_version`, and the event store Secret's, are in the pod template's hash,
    /// because the pods read both only at start.
    pub fn deployment(
        &self,
        consumer: &OrderConsumer,
        gathered: &Gathered,
        settings: &Settings,
        credentials_version: Option<String>,
    ) -> Deployment {
        let mut mounted = vec![(self.names.kafka.secret.clone(), credentials_version)];
        if let Some(store) = &consumer.spec.handler.event_store {
            mounted.push((
                store.connection_secret.name.clone(),
                gathered.event_store_secret.clone(),
            ));
        }
        deployment(
            consumer,
            &self.names,
            self.replicas,
            WorkerImage {
                image: &self.image,
                pull_secrets: &settings.worker_image_pull_secrets,
            },
            &pod_template_hash(&self.config, &mounted),
        )
    }
}

/// The status after a pass that applied everything: Reconciled, Ready and Degraded from the
/// workers (`workload`, and its `pods` when some are missing), Capped from the partition cap.
pub fn status(
    consumer: &OrderConsumer,
    plan: &Plan,
    workload: &Workload,
    pods: &[WorkerPod],
) -> OrderConsumerStatus {
    let Plan {
        names,
        admitted,
        replicas,
        desired,
        partitions,
        ..
    } = plan;
    let (source, dead_letter) = (&admitted.source, &admitted.dead_letter);
    let generation = consumer.metadata.generation;
    let reconciled = new(
        RECONCILED,
        true,
        reason::RECONCILED,
        format!(
            "{replicas} worker replicas deployed to consume {source} as {}; {}dead letters go to \
             {dead_letter}",
            names.kafka.principal,
            match admitted.retry_topics.as_slice() {
                [] => String::new(),
                [only] => format!("retries wait in {}; ", only.name),
                [first, .., last] => format!("retries wait in {} to {}; ", first.name, last.name),
            }
        ),
        generation,
    );
    let (ready, degraded) = workload_conditions(workload, pods, generation, WORKERS);
    let capped = if plan.capped {
        new(
            CAPPED,
            true,
            reason::PARTITION_CAP,
            format!(
                "{desired} replicas wanted, capped at the {partitions} partitions of topic \
                 {source}: an extra consumer would sit idle"
            ),
            generation,
        )
    } else {
        new(
            CAPPED,
            false,
            reason::WITHIN_PARTITIONS,
            format!("{desired} replicas fit in the {partitions} partitions"),
            generation,
        )
    };
    let old = consumer.status.clone().unwrap_or_default();
    OrderConsumerStatus {
        observed_generation: generation,
        replicas: Some(*replicas),
        desired_replicas: Some(*desired),
        ready_replicas: Some(workload.ready),
        partitions: Some(*partitions),
        max_replicas: Some(*partitions),
        lag: Some(plan.lag),
        group_id: Some(admitted.group.clone()),
        dead_letter_topic: Some(dead_letter.clone()),
        retry_topics: admitted
            .retry_topics
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        owned_topics: plan.owned_topics.clone(),
        principal: Some(names.kafka.principal.clone()),
        credentials_secret: Some(names.kafka.secret.clone()),
        credentials: old.credentials.clone(),
        selector: Some(selector(consumer)),
        conditions: [reconciled, ready, degraded, capped]
            .into_iter()
            .fold(old.conditions, |all, c| merge(&all, c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::order_consumer::OrderConsumerSpec;

    fn consumer(yaml: &str) -> OrderConsumer {
        let mut c: OrderConsumer = serde_yaml::from_str(yaml).expect("fixture parses");
        c.metadata.uid = Some("0b1c".into());
        c
    }

    const ORDERS: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderConsumer
metadata: {name: order-store, namespace: shop}
spec:
  topicRef: {name: orders}
  replicas: 10
  handler:
    eventStore:
      connectionSecret: {name: orders-db, key: url}
"#;

    fn autoscaling(min: i32, max: i32, target: i64) -> Autoscaling {
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_lag_per_replica: target,
            scale_down_stabilization: "5m".into(),
        }
    }

    #[test]
    fn replicas_never_exceed_the_partitions() {
        for (desired, partitions, expected) in [
            (10, 3, (3, true)),
            (3, 3, (3, false)),
            (2, 6, (2, false)),
            (0, 3, (0, false)),
            (5, 0, (0, true)),
        ] {
            assert_eq!(
                partition_cap(desired, partitions),
                expected,
                "{desired} on {partitions}"
            );
        }
    }

    #[test]
    fn lag_sets_replicas_within_bounds() {
        let a = autoscaling(1, 10, 1000);
        for (lag, expected) in [
            (0, 1),
            (1, 1),
            (1000, 1),
            (1001, 2),
            (5000, 5),
            (1_000_000, 10),
        ] {
            assert_eq!(lag_replicas(lag, &a), expected, "lag {lag}");
        }
        assert_eq!(lag_replicas(0, &autoscaling(2, 4, 100)), 2);
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let window = Duration::from_secs(300);
        let (up, history) = stabilize(t0, &[], None, 5, window);
        assert_eq!(up, 5);
        let (held, history) = stabilize(at(60), &history, Some(5), 2, window);
        assert_eq!(
            held, 5,
            "a lower recommendation inside the window does not scale down"
        );
        // 5 held until 2 replaced it at t60: it leaves the window 300 s after that.
        assert_eq!(stabilize(at(359), &history, Some(5), 2, window).0, 5);
        let (down, history) = stabilize(at(361), &history, Some(5), 2, window);
        assert_eq!(down, 2, "once the high recommendation leaves the window");
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn a_recommendation_held_until_recently_still_counts() {
        // 5 was recommended from t0 until t400, then 2: at t400 the window (t100..t400)
        // still saw 5, so no scale-down yet; at t701 it no longer does.
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let window = Duration::from_secs(300);
        let (_, mut history) = stabilize(t0, &[], None, 5, window);
        for s in (10..400).step_by(10) {
            (_, history) = stabilize(at(s), &history, Some(5), 5, window);
        }
        let (held, history) = stabilize(at(400), &history, Some(5), 2, window);
        assert_eq!(held, 5);
        let (down, _) = stabilize(at(701), &history, Some(5), 2, window);
        assert_eq!(down, 2);
    }

    #[test]
    fn an_unchanged_recommendation_adds_nothing_to_the_history() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let window = Duration::from_secs(300);
        let (_, mut history) = stabilize(t0, &[], None, 3, window);
        let first = history.clone();
        for s in 1..=1000 {
            let now = t0 + jiff::SignedDuration::from_secs(s);
            let replicas;
            (replicas, history) = stabilize(now, &history, Some(3), 3, window);
            assert_eq!(replicas, 3);
        }
        assert_eq!(history, first, "one entry, its start unchanged");
    }

    #[test]
    fn a_restarted_controller_waits_a_full_window_before_scaling_down() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let window = Duration::from_secs(300);
        let (held, history) = stabilize(t0, &[], Some(6), 1, window);
        assert_eq!(held, 6, "the published replicas hold for the window");
        let later = t0 + jiff::SignedDuration::from_secs(301);
        assert_eq!(stabilize(later, &history, Some(6), 1, window).0, 1);
    }

    fn pod(name: &str, ready: bool, waiting: Option<&str>, running_for: Option<i64>) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            ready,
            waiting: waiting.map(Into::into),
            running_for,
            restarts: 0,
            terminating: false,
        }
    }

    #[test]
    fn ready_means_the_wanted_workers_are_available() {
        let w = |replicas, ready, rolled_out| Workload {
            replicas,
            ready,
            rolled_out,
        };
        let running = |n: &str| pod(n, false, None, Some(5));
        // (case, workload, pods, Ready, reason, Degraded)
        type Case = (
            &'static str,
            Workload,
            Vec<WorkerPod>,
            bool,
            &'static str,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "all ready",
                w(3, 3, true),
                vec![],
                true,
                reason::WORKERS_READY,
                false,
            ),
            (
                "scaled to zero",
                w(0, 0, false),
                vec![],
                true,
                reason::WORKERS_READY,
                false,
            ),
            (
                "rollout not seen yet",
                w(3, 3, false),
                vec![],
                false,
                reason::WORKERS_STARTING,
                false,
            ),
            (
                "no pods at all",
                w(7, 0, true),
                vec![],
                false,
                reason::WORKERS_NOT_READY,
                false,
            ),
            (
                "starting",
                w(2, 0, true),
                vec![
                    running("a"),
                    pod("b", false, Some("ContainerCreating"), None),
                ],
                false,
                reason::WORKERS_STARTING,
                false,
            ),
            (
                "crash loop",
                w(2, 1, true),
                vec![
                    pod("a", true, None, Some(90)),
                    pod("b", false, Some("CrashLoopBackOff"), None),
                ],
                false,
                reason::WORKER_CRASH_LOOPING,
                true,
            ),
            (
                "image pull",
                w(1, 0, true),
                vec![pod("a", false, Some("ImagePullBackOff"), None)],
                false,
                reason::WORKER_FAILING,
                true,
            ),
            (
                "sink outage",
                w(2, 0, true),
                vec![
                    pod("a", false, None, Some(45)),
                    pod("b", false, None, Some(31)),
                ],
                false,
                reason::SINK_UNAVAILABLE,
                true,
            ),
            (
                "restarted, now between two crashes",
                w(1, 0, true),
                vec![WorkerPod {
                    restarts: 3,
                    ..pod("a", false, None, None)
                }],
                false,
                reason::WORKER_CRASH_LOOPING,
                true,
            ),
            (
                "restarted, running again briefly",
                w(1, 0, true),
                vec![WorkerPod {
                    restarts: 3,
                    ..pod("a", false, None, Some(4))
                }],
                false,
                reason::WORKER_CRASH_LOOPING,
                true,
            ),
            (
                "restarted once, long up, unready",
                w(1, 0, true),
                vec![WorkerPod {
                    restarts: 1,
                    ..pod("a", false, None, Some(600))
                }],
                false,
                reason::SINK_UNAVAILABLE,
                true,
            ),
            (
                "terminating pods do not count",
                w(1, 0, true),
                vec![WorkerPod {
                    terminating: true,
                    ..pod("old", false, Some("CrashLoopBackOff"), None)
                }],
                false,
                reason::WORKERS_NOT_READY,
                false,
            ),
        ];
        for (name, workload, pods, ready, why, degraded) in cases {
            let (r, d) = workload_conditions(&workload, &pods, Some(4), WORKERS);
            assert_eq!(r.status == "True", ready, "{name}: {r:?}");
            assert_eq!(r.reason, why, "{name}");
            assert_eq!(d.status == "True", degraded, "{name}: {d:?}");
            assert_eq!(r.observed_generation, Some(4), "{name}");
            if degraded {
                assert_eq!(d.reason, why, "{name}");
            }
        }
    }

    #[test]
    fn a_rollout_is_ready_only_once_no_old_pod_is_left() {
        let deployment = |generation, observed, replicas, updated, ready| Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Deployment::default()
        };
        for (name, d, ready) in [
            ("done", deployment(2, 2, 2, 2, 2), true),
            ("spec not seen yet", deployment(3, 2, 2, 2, 2), false),
            ("old pod still up", deployment(2, 2, 3, 2, 3), false),
            ("new pods not ready", deployment(2, 2, 2, 2, 1), false),
        ] {
            assert_eq!(Workload::of(2, &d).is_ready(), ready, "{name}");
        }
        assert!(
            Workload::of(0, &Deployment::default()).is_ready(),
            "zero wanted"
        );
    }

    #[test]
    fn an_unready_worker_is_looked_at_again_when_its_grace_ends() {
        assert_eq!(
            recheck_after(&[pod("a", false, None, Some(10))]),
            Some(Duration::from_secs(21))
        );
        assert_eq!(recheck_after(&[pod("a", true, None, Some(10))]), None);
        assert_eq!(recheck_after(&[pod("a", false, None, Some(40))]), None);
    }

    #[test]
    fn the_principal_gets_exactly_the_seed_acls() {
        let acls = consumer_acls("User:c", "orders", "orders-dlq", &[], "shop.c");
        let rendered: Vec<String> = acls
            .iter()
            .map(|a| format!("{:?} {} {:?}", a.resource, a.name, a.operation))
            .collect();
        assert_eq!(
            rendered,
            [
                "Topic orders Read",
                "Topic orders Describe",
                "Topic orders-dlq Write",
                "Topic orders-dlq Describe",
                "Group shop.c Read",
            ]
        );
    }

    #[test]
    fn retry_topics_get_read_write_and_describe() {
        let retry = RetryPolicy {
            max_retries: 2,
            mode: pubsubkafka_contract::config::RetryMode::RetryTopics,
            ..RetryPolicy::default()
        };
        let topics = retry_topics("orders", "store", &retry).unwrap();
        assert_eq!(topics.len(), 2);
        let acls = consumer_acls("User:c", "orders", "orders-dlq", &topics, "shop.c");
        let on_retry: Vec<String> = acls
            .iter()
            .filter(|a| a.name == "orders-store-retry-2")
            .map(|a| format!("{:?}", a.operation))
            .collect();
        assert_eq!(on_retry, ["Read", "Write", "Describe"]);
        assert_eq!(acls.len(), 5 + 6);
        let long = "o".repeat(245);
        assert!(
            retry_topics(&long, "store", &retry)
                .unwrap_err()
                .to_string()
                .contains("249")
        );
    }

    #[test]
    fn dead_letter_topic_defaults_per_domain_and_keeps_partitions() {
        assert_eq!(dead_letter_topic("orders", None), "orders-dlq");
        let policy: DLQPolicySpec =
            serde_yaml::from_str("deadLetterTopic: shop-dlq\ndeadLetter: {partitions: 12}")
                .unwrap();
        assert_eq!(dead_letter_topic("orders", Some(&policy)), "shop-dlq");
        assert_eq!(dead_letter_partitions(3, Some(&policy)), 12);
        assert_eq!(dead_letter_partitions(6, None), 6);
    }

    #[test]
    fn the_policy_becomes_the_workers_retry_settings() {
        let policy: DLQPolicySpec = serde_yaml::from_str(
            "maxRetries: 5\nbackoff: {initial: 250ms, multiplier: 3, max: 1m, jitter: 0.1}\n\
             permanentErrors: [Deserialization]\n",
        )
        .unwrap();
        let retry = retry_policy(Some(&policy)).unwrap();
        assert_eq!(retry.max_retries, 5);
        assert_eq!(retry.initial_backoff_ms, 250);
        assert_eq!(retry.max_backoff_ms, 60_000);
        assert_eq!(retry.multiplier, 3.0);
        assert_eq!(retry.permanent_errors.len(), 1);
        assert_eq!(retry_policy(None).unwrap(), RetryPolicy::default());
    }

    #[test]
    fn rendering_points_at_the_pods_mounts_and_hashes_stably() {
        let c = consumer(ORDERS);
        let names = Names::of(&c);
        assert_eq!(names.kafka.principal, "User:pubsubkafka.shop.order-store");
        let input = RenderInput {
            consumer: &c,
            names: &names,
            source_topic: "orders",
            dead_letter_topic: "orders-dlq",
            retry: RetryPolicy::default(),
            retry_topics: &[],
            group_protocol: GroupProtocol::default(),
            bootstrap_servers: "kafka:9093",
            security_protocol: SecurityProtocol::SaslSsl,
            with_ca: true,
            otlp_endpoint: None,
        };
        let config = worker_config(&input).unwrap();
        assert_eq!(config.group_id, "shop.order-store");
        assert_eq!(config.tracing, None);
        assert!(!config.to_json().contains("tracing"), "no key when off");
        let traced = worker_config(&RenderInput {
            otlp_endpoint: Some("http://otel:4318"),
            ..input.clone()
        })
        .unwrap();
        assert_eq!(
            traced.tracing.map(|t| t.otlp_endpoint).as_deref(),
            Some("http://otel:4318")
        );
        assert_eq!(
            config.concurrency, 8,
            "the default concurrency per partition"
        );
        assert_eq!(
            config.kafka.password_file.unwrap().to_str(),
            Some("/etc/pubsubkafka/kafka/password")
        );
        assert_eq!(
            config.handler,
            HandlerConfig::EventStore {
                database_url_file: "/etc/pubsubkafka/database/url".into()
            }
        );
        let json = worker_config(&input).unwrap().to_json();
        assert_eq!(config_hash(&json), config_hash(&json));
        assert_ne!(
            config_hash(&json),
            config_hash(&json.replace("orders-dlq", "x-dlq"))
        );
        assert_eq!(config_hash(""), "cbf29ce484222325");
    }

    #[test]
    fn the_deployment_is_locked_down_and_probed() {
        let c = consumer(ORDERS);
        let names = Names::of(&c);
        let d = deployment(
            &c,
            &names,
            3,
            WorkerImage {
                image: "pubsubkafka/worker:test",
                pull_secrets: &[],
            },
            "abc",
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
        assert_eq!(
            spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            "abc"
        );
        assert_eq!(
            d.metadata.owner_references.unwrap()[0].kind,
            "OrderConsumer"
        );
        assert_eq!(
            pod.volumes.unwrap().len(),
            3,
            "config, credentials and database"
        );
    }

    #[test]
    fn worker_pods_carry_the_image_pull_secrets() {
        let c = consumer(ORDERS);
        let names = Names::of(&c);
        let secrets = ["registry-a".to_owned(), "registry-b".to_owned()];
        for (pull_secrets, expected) in [
            (&secrets[..], Some(vec!["registry-a", "registry-b"])),
            (&[][..], None),
        ] {
            let d = deployment(
                &c,
                &names,
                1,
                WorkerImage {
                    image: "registry.example/worker:1",
                    pull_secrets,
                },
                "h",
            );
            let pod = d.spec.unwrap().template.spec.unwrap();
            let names: Option<Vec<String>> = pod
                .image_pull_secrets
                .map(|s| s.into_iter().map(|r| r.name).collect());
            assert_eq!(
                names,
                expected.map(|e| e.into_iter().map(String::from).collect())
            );
        }
    }

    #[test]
    fn the_pod_template_hash_follows_the_mounted_secrets_versions() {
        let secrets = |db: Option<&str>| {
            vec![
                ("c-kafka-credentials".to_owned(), Some("10".to_owned())),
                ("orders-db".to_owned(), db.map(str::to_owned)),
            ]
        };
        let base = pod_template_hash("{}", &secrets(Some("7")));
        assert_eq!(base, pod_template_hash("{}", &secrets(Some("7"))));
        let mut reordered = secrets(Some("7"));
        reordered.reverse();
        assert_eq!(base, pod_template_hash("{}", &reordered), "order-free");
        assert_ne!(base, pod_template_hash("{}", &secrets(Some("8"))));
        assert_ne!(base, pod_template_hash("{}", &secrets(None)));
        assert_ne!(base, pod_template_hash("{\"a\":1}", &secrets(Some("7"))));
        assert_ne!(base, config_hash("{}"), "the secrets count");
    }

    #[test]
    fn an_http_consumer_mounts_no_database() {
        let mut c = consumer(ORDERS);
        c.spec = OrderConsumerSpec {
            handler: serde_yaml::from_str("http: {url: 'http://users:8080/events', timeout: 2s}")
                .unwrap(),
            ..c.spec
        };
        let names = Names::of(&c);
        let d = deployment(
            &c,
            &names,
            1,
            WorkerImage {
                image: "img",
                pull_secrets: &[],
            },
            "h",
        );
        assert_eq!(
            d.spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .volumes
                .unwrap()
                .len(),
            2
        );
    }

    fn owned(name: &str, kind: OwnedTopicKind) -> OwnedTopic {
        OwnedTopic {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn a_consumer_is_admitted_only_with_its_own_group_and_topics() {
        use tenancy::DefaultAccessPolicy::{Namespaced, Open};
        let me = consumer(ORDERS);
        let victim_yaml = ORDERS.replace("namespace: shop", "namespace: victim");
        let mut victim = consumer(&format!("{victim_yaml}  groupId: shop.order-store\n"));
        victim.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        victim.status = Some(crate::crd::OrderConsumerStatus {
            group_id: Some("shop.order-store".into()),
            owned_topics: vec![owned("victim-dlq", OwnedTopicKind::DeadLetter)],
            ..Default::default()
        });
        let own_dlq = [owned("orders-dlq", OwnedTopicKind::DeadLetter)];
        let stolen_dlq = [owned("victim-dlq", OwnedTopicKind::DeadLetter)];
        let internal = [owned("__consumer_offsets", OwnedTopicKind::Retry)];
        let rules = |default| tenancy::rules("shop", &BTreeMap::new(), [], default);
        let refusal = |r: Result<Vec<(OwnedTopic, Companion)>, Error>| r.err().map(|e| e.reason());
        // Alone, under open: admitted, and owns its dead-letter topic.
        let admitted = admit(&me, &rules(Open), &own_dlq, &[], &[&me]).unwrap();
        assert_eq!(admitted, [(own_dlq[0].clone(), Companion::Owned)]);
        assert_eq!(owned_topics(&stolen_dlq, &admitted).len(), 2);
        // Namespaced: the topic must start with "shop."; the default group id does.
        assert_eq!(
            refusal(admit(&me, &rules(Namespaced), &own_dlq, &[], &[])),
            Some("PolicyViolation")
        );
        // Another namespace's consumer was granted the same group first.
        assert_eq!(
            refusal(admit(&me, &rules(Open), &own_dlq, &[], &[&me, &victim])),
            Some("ResourceConflict")
        );
        // Another namespace's dead-letter topic, and Kafka's internal topics.
        let mut other_group = me.clone();
        other_group.spec.group_id = Some("mine".into());
        assert_eq!(
            refusal(admit(
                &other_group,
                &rules(Open),
                &stolen_dlq,
                &[],
                &[&victim]
            )),
            Some("ResourceConflict")
        );
        assert_eq!(
            refusal(admit(&other_group, &rules(Open), &internal, &[], &[])),
            Some("ReservedTopicName")
        );
        // A DLQReplay's parking topic goes through the same checks: another namespace's parking
        // topic, or one a KafkaTopic of another namespace declares, is not this consumer's.
        let mut parked_victim = victim.clone();
        parked_victim.status.as_mut().unwrap().owned_topics =
            vec![owned("victim-dlq-parking", OwnedTopicKind::Parking)];
        let stolen_parking = [owned("victim-dlq-parking", OwnedTopicKind::Parking)];
        assert_eq!(
            refusal(admit(
                &other_group,
                &rules(Open),
                &stolen_parking,
                &[],
                &[&parked_victim]
            )),
            Some("ResourceConflict")
        );
        let declared: KafkaTopic = serde_yaml::from_str(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\n\
             metadata: {name: parking, namespace: victim}\n\
             spec: {topicName: orders-dlq-parking, partitions: 1, replicationFactor: 1}\n",
        )
        .unwrap();
        let own_parking = [owned("orders-dlq-parking", OwnedTopicKind::Parking)];
        assert_eq!(
            refusal(admit(&me, &rules(Open), &own_parking, &[&declared], &[&me])),
            Some("ResourceConflict")
        );
        assert_eq!(
            admit(&me, &rules(Open), &own_parking, &[], &[&me]).unwrap(),
            [(own_parking[0].clone(), Companion::Owned)]
        );
    }

    const TOPIC: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaTopic
metadata: {name: orders, namespace: shop, generation: 1}
spec:
  topicName: orders
  partitions: 3
  replicationFactor: 1
  config: {max.message.bytes: 2097152}
status:
  observedGeneration: 1
  partitions: 3
  replicationFactor: 2
  conditions:
  - {type: Ready, status: "True", reason: Created, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    /// What a consumer of ORDERS finds in namespace `shop` under the open policy: its topic
    /// Ready with 3 partitions, no DLQPolicy, nothing deployed yet.
    fn gathered() -> Gathered {
        let topic: KafkaTopic = serde_yaml::from_str(TOPIC).expect("topic fixture");
        Gathered {
            topic: Some(Arc::new(topic)),
            policy: None,
            principal_holder: None,
            rules: tenancy::rules(
                "shop",
                &BTreeMap::new(),
                [],
                tenancy::DefaultAccessPolicy::Open,
            ),
            topics: Vec::new(),
            consumers: Vec::new(),
            event_store_secret: Some("17".into()),
            deployment: None,
            config_map_version: None,
            budget_version: None,
        }
    }

    /// The admission's verdict as `admitted`, `refused <reason>` or `<reason>` (wait or stop).
    fn verdict(result: Result<Admission, Error>) -> String {
        match result {
            Ok(Admission::Admitted(_)) => "admitted".into(),
            Ok(Admission::Refused(e)) => format!("refused {}", e.reason()),
            Err(e) => e.reason().to_owned(),
        }
    }

    #[test]
    fn admission_waits_for_dependencies_and_refuses_what_is_not_the_consumers() {
        let me = consumer(ORDERS);
        let with_policy = consumer(&format!("{ORDERS}  dlqPolicyRef: {{name: strict}}\n"));
        let mut victim = consumer(&ORDERS.replace("namespace: shop", "namespace: victim"));
        victim.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        victim.status = Some(OrderConsumerStatus {
            group_id: Some("victim.order-store".into()),
            owned_topics: vec![owned("orders-dlq", OwnedTopicKind::DeadLetter)],
            ..Default::default()
        });
        let policy: DLQPolicySpec = serde_yaml::from_str("{}").unwrap();
        type Change = fn(&mut Gathered);
        let cases: [(&str, &OrderConsumer, Change, &str); 8] = [
            ("ready topic, open policy", &me, |_| {}, "admitted"),
            (
                "no Ready KafkaTopic",
                &me,
                |g| g.topic = None,
                "TopicNotReady",
            ),
            (
                "the named DLQPolicy is missing",
                &with_policy,
                |_| {},
                "PolicyNotFound",
            ),
            (
                "an older gateway holds the principal",
                &me,
                |g| g.principal_holder = Some("order-store".into()),
                "ResourceConflict",
            ),
            (
                "a topic that is not Ready comes first",
                &me,
                |g| {
                    g.topic = None;
                    g.principal_holder = Some("order-store".into());
                },
                "TopicNotReady",
            ),
            (
                "names outside the namespace under the namespaced policy",
                &me,
                |g| {
                    g.rules = tenancy::rules(
                        "shop",
                        &BTreeMap::new(),
                        [],
                        tenancy::DefaultAccessPolicy::Namespaced,
                    )
                },
                "refused PolicyViolation",
            ),
            (
                "another namespace's consumer owns the dead-letter topic",
                &me,
                |_| {},
                "refused ResourceConflict",
            ),
            ("the policy exists", &with_policy, |_| {}, "admitted"),
        ];
        for (case, consumer, change, expected) in cases {
            let mut g = gathered();
            change(&mut g);
            if case.starts_with("another namespace") {
                g.consumers = vec![Arc::new(victim.clone())];
            }
            if case == "the policy exists" {
                g.policy = Some(policy.clone());
            }
            assert_eq!(verdict(admission(consumer, &g)), expected, "{case}");
        }
        let Err(conflict) = admission(
            &me,
            &Gathered {
                principal_holder: Some("order-store".into()),
                ..gathered()
            },
        ) else {
            panic!("a held principal is a conflict")
        };
        assert_eq!(
            conflict.to_string(),
            "Kafka principal User:pubsubkafka.shop.order-store belongs to OrderGateway \
             shop/order-store, which claimed it first; rename this consumer"
        );
    }

    #[test]
    fn the_consumers_group_protocol_wins_over_its_policys() {
        let policy = |protocol: Option<&str>| -> DLQPolicySpec {
            let yaml = protocol.map_or("{}".to_owned(), |p| format!("{{groupProtocol: {p}}}"));
            serde_yaml::from_str(&yaml).expect("policy fixture")
        };
        let mine = |protocol: Option<&str>| {
            let extra = protocol.map_or(String::new(), |p| format!("  groupProtocol: {p}\n"));
            consumer(&format!("{ORDERS}  dlqPolicyRef: {{name: p}}\n{extra}"))
        };
        for (own, policy_says, expected) in [
            (None, None, GroupProtocol::Consumer),
            (None, Some("Classic"), GroupProtocol::Classic),
            (Some("Consumer"), Some("Classic"), GroupProtocol::Consumer),
            (Some("Classic"), None, GroupProtocol::Classic),
        ] {
            let g = Gathered {
                policy: Some(policy(policy_says)),
                ..gathered()
            };
            assert_eq!(
                admitted(&mine(own), &g).group_protocol,
                expected,
                "consumer {own:?}, policy {policy_says:?}"
            );
        }
    }

    fn admitted(consumer: &OrderConsumer, g: &Gathered) -> Admitted {
        match admission(consumer, g) {
            Ok(Admission::Admitted(a)) => a,
            other => panic!("not admitted: {}", verdict(other)),
        }
    }

    /// One line per thing the plan changes, for the table below.
    fn changes(plan: &Plan) -> Vec<String> {
        let mut lines: Vec<String> = plan
            .topic_changes
            .iter()
            .map(|c| match &c.create {
                Some((replication, configs)) => format!(
                    "create {} {}x{replication} {configs:?}",
                    c.topic, c.partitions
                ),
                None => format!("grow {} to {}", c.topic, c.partitions),
            })
            .collect();
        lines.push(format!(
            "acls +{} -{}",
            plan.acls.missing.len(),
            plan.acls.extra.len()
        ));
        lines.push(format!(
            "replicas {} of {} wanted{}",
            plan.replicas,
            plan.desired,
            if plan.capped { ", capped" } else { "" }
        ));
        if plan.record_owned_topics {
            lines.push("claim topics".into());
        }
        lines.extend(plan.scaled.clone());
        lines
    }

    #[test]
    fn the_plan_decides_topics_acls_and_replicas_from_what_was_gathered() {
        let me = consumer(ORDERS);
        let fresh = gathered();
        let all_acls = consumer_acls(
            "User:pubsubkafka.shop.order-store",
            "orders",
            "orders-dlq",
            &[],
            "shop.order-store",
        );
        let mut settled = me.clone();
        settled.status = Some(OrderConsumerStatus {
            owned_topics: vec![owned("orders-dlq", OwnedTopicKind::DeadLetter)],
            ..Default::default()
        });
        let deployed = |replicas: i32| Gathered {
            deployment: Some(deployment(
                &me,
                &Names::of(&me),
                replicas,
                WorkerImage {
                    image: "pubsubkafka/worker:1",
                    pull_secrets: &[],
                },
                "h",
            )),
            ..gathered()
        };
        let three = deployed(3);
        let dead_letter = |partitions: Option<i32>| KafkaState {
            acls: all_acls.clone(),
            lag: 0,
            companion_partitions: BTreeMap::from([("orders-dlq".to_owned(), partitions)]),
        };
        let stale = KafkaState {
            acls: all_acls
                .iter()
                .cloned()
                .chain([Acl {
                    resource: ResourceKind::Topic,
                    name: "payments".into(),
                    principal: "User:pubsubkafka.shop.order-store".into(),
                    operation: AclOperation::Read,
                }])
                .collect(),
            ..dead_letter(Some(3))
        };
        let mut two = settled.clone();
        two.spec.replicas = 2;
        let mut scaling = settled.clone();
        scaling.spec.autoscaling = Some(autoscaling(1, 10, 1000));
        let with_lag = |lag| KafkaState {
            lag,
            ..dead_letter(Some(3))
        };
        let mut retention = me.clone();
        retention.spec.dlq_policy_ref = Some(serde_yaml::from_str("{name: strict}").unwrap());
        let policy: DLQPolicySpec = serde_yaml::from_str(
            "deadLetter: {partitions: 6, retention: 10m, replicationFactor: 1}",
        )
        .unwrap();
        let with_policy = Gathered {
            policy: Some(policy),
            ..gathered()
        };
        let cases: Vec<(&str, &OrderConsumer, &Gathered, KafkaState, Vec<&str>)> = vec![
            (
                "first pass: everything to create, 10 replicas capped at 3 partitions",
                &me,
                &fresh,
                dead_letter(None),
                vec![
                    "create orders-dlq 3x2 {\"max.message.bytes\": \"2097152\"}",
                    "acls +0 -0",
                    "replicas 3 of 10 wanted, capped",
                    "claim topics",
                    "deployed 3 worker replicas",
                ],
            ),
            (
                "converged: nothing to change",
                &settled,
                &three,
                dead_letter(Some(3)),
                vec!["acls +0 -0", "replicas 3 of 10 wanted, capped"],
            ),
            (
                "the source grew: the dead-letter topic follows",
                &settled,
                &three,
                dead_letter(Some(1)),
                vec![
                    "grow orders-dlq to 3",
                    "acls +0 -0",
                    "replicas 3 of 10 wanted, capped",
                ],
            ),
            (
                "lost ACLs are written again",
                &settled,
                &three,
                KafkaState {
                    acls: BTreeSet::new(),
                    ..dead_letter(Some(3))
                },
                vec!["acls +5 -0", "replicas 3 of 10 wanted, capped"],
            ),
            (
                "a stale ACL is removed",
                &settled,
                &three,
                stale,
                vec!["acls +0 -1", "replicas 3 of 10 wanted, capped"],
            ),
            (
                "fewer replicas than partitions: no cap, scaled down",
                &two,
                &three,
                dead_letter(Some(3)),
                vec![
                    "acls +0 -0",
                    "replicas 2 of 2 wanted",
                    "scaled workers from 3 to 2",
                ],
            ),
            (
                "autoscaling: a lag of 1500 at 1000 per replica wants 2",
                &scaling,
                &three,
                with_lag(1500),
                vec![
                    "acls +0 -0",
                    "replicas 2 of 2 wanted",
                    "scaled workers from 3 to 2",
                ],
            ),
            (
                "autoscaling: a lag of 9000 wants 9, capped at 3",
                &scaling,
                &three,
                with_lag(9000),
                vec!["acls +0 -0", "replicas 3 of 9 wanted, capped"],
            ),
            (
                "the DLQPolicy sizes the dead-letter topic and its retention",
                &retention,
                &with_policy,
                dead_letter(None),
                vec![
                    "create orders-dlq 6x1 {\"max.message.bytes\": \"2097152\", \
                     \"retention.ms\": \"600000\"}",
                    "acls +0 -0",
                    "replicas 3 of 10 wanted, capped",
                    "claim topics",
                    "deployed 3 worker replicas",
                ],
            ),
        ];
        for (case, consumer, g, kafka, expected) in cases {
            let plan = plan(
                consumer,
                g,
                admitted(consumer, g),
                &kafka,
                &[],
                jiff::Timestamp::UNIX_EPOCH,
                &Settings::example(),
            )
            .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(changes(&plan), expected, "{case}");
        }
    }

    #[test]
    fn the_deployment_hash_follows_the_mounted_secrets_and_the_status_the_plan() {
        let me = consumer(ORDERS);
        let g = gathered();
        let kafka = KafkaState::default();
        let plan = plan(
            &me,
            &g,
            admitted(&me, &g),
            &kafka,
            &[],
            jiff::Timestamp::UNIX_EPOCH,
            &Settings::example(),
        )
        .unwrap();
        let hash = |d: &Deployment| config_hash_of(d).expect("a config hash").to_owned();
        let first = plan.deployment(&me, &g, &Settings::example(), Some("1".into()));
        assert_eq!(
            hash(&first),
            pod_template_hash(
                &plan.config,
                &[
                    ("order-store-kafka-credentials".into(), Some("1".into())),
                    ("orders-db".into(), Some("17".into())),
                ]
            ),
            "the hash of worker.json and both Secrets' versions"
        );
        let rotated = plan.deployment(&me, &g, &Settings::example(), Some("2".into()));
        assert_ne!(
            hash(&first),
            hash(&rotated),
            "new credentials roll the pods"
        );

        let at = |ready: i32, pods: &[WorkerPod]| {
            let workload = Workload {
                replicas: 3,
                ready,
                rolled_out: true,
            };
            let s = status(&me, &plan, &workload, pods);
            let find = |t: &str| {
                let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
                format!("{} {} {}", c.type_, c.status, c.reason)
            };
            (
                [
                    find(RECONCILED),
                    find(crate::crd::conditions::READY),
                    find(crate::crd::conditions::DEGRADED),
                    find(CAPPED),
                ],
                s,
            )
        };
        let (ready, s) = at(3, &[]);
        assert_eq!(
            ready,
            [
                "Reconciled True Reconciled",
                "Ready True WorkersReady",
                "Degraded False AsDeclared",
                "Capped True PartitionCap",
            ]
        );
        assert_eq!(
            (s.replicas, s.desired_replicas, s.max_replicas, s.lag),
            (Some(3), Some(10), Some(3), Some(0))
        );
        assert_eq!(s.dead_letter_topic.as_deref(), Some("orders-dlq"));
        assert_eq!(
            s.owned_topics,
            [owned("orders-dlq", OwnedTopicKind::DeadLetter)]
        );
        let reconciled = s.conditions.iter().find(|c| c.type_ == RECONCILED).unwrap();
        assert_eq!(
            reconciled.message,
            "3 worker replicas deployed to consume orders as \
             User:pubsubkafka.shop.order-store; dead letters go to orders-dlq"
        );
        let crashing = [pod(
            "order-store-worker-1",
            false,
            Some("CrashLoopBackOff"),
            None,
        )];
        let (crash_looping, _) = at(2, &crashing);
        assert_eq!(
            crash_looping[1..3],
            [
                "Ready False WorkerCrashLooping".to_owned(),
                "Degraded True WorkerCrashLooping".to_owned(),
            ]
        );
    }
}
