//! What a DLQReplay needs, decided without I/O: its names, its principal's ACLs, the worker's
//! arguments, its Job, whether it waits for another replay, and its status from what the Job
//! and Kafka show.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::consumer::plan::{KAFKA_DIR, WorkerImage};
use crate::crd::conditions::{self, reason};
use crate::crd::dlq_replay::{
    DLQReplay, DLQReplayStatus, PartitionProgress, ReplayFilter, ReplayPhase,
};
use crate::kafka::{Acl, AclOperation, ResourceKind};
use crate::pods;

/// The label on a replay's Job and pods: the DLQReplay's name.
pub const REPLAY_LABEL: &str = "pubsubkafka.io/dlqreplay";
/// Where the worker writes its summary: the container's termination message, which the
/// kubelet keeps in the pod's status.
pub const SUMMARY_PATH: &str = "/dev/termination-log";
/// Pod retries of a failed replay; it resumes from its committed progress each time.
pub const JOB_BACKOFF_LIMIT: i32 = 3;
/// The `x-dlq-consumer-group` header: the group whose handler dead-lettered the record.
pub const CONSUMER_GROUP_HEADER: &str = "x-dlq-consumer-group";

/// The names of everything one replay makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// SCRAM user: `pubsubkafka.<namespace>.dlqreplay.<name>`.
    pub user: String,
    /// `User:<user>`.
    pub principal: String,
    pub credentials_secret: String,
    pub job: String,
    /// The consumer group its progress is committed under, its own so that an interrupted
    /// replay resumes and no other replay moves it.
    pub group: String,
}

impl Names {
    pub fn of(replay: &DLQReplay) -> Self {
        let name = replay.name_any();
        let namespace = replay.namespace().unwrap_or_default();
        let user = format!("pubsubkafka.{namespace}.dlqreplay.{name}");
        Self {
            principal: format!("User:{user}"),
            user,
            credentials_secret: format!("{name}-replay-credentials"),
            job: format!("{name}-replay"),
            group: format!("pubsubkafka-replay.{namespace}.{name}"),
        }
    }

    /// The principal with its credentials Secret.
    pub fn kafka_principal(&self) -> crate::principal::Principal {
        crate::principal::Principal {
            user: self.user.clone(),
            principal: self.principal.clone(),
            secret: self.credentials_secret.clone(),
        }
    }
}

/// The topics one replay reads and writes, as resolved from its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub dead_letter: String,
    pub target: String,
    pub parking: String,
    /// The consumer's group id: only its dead letters are selected.
    pub consumer_group: String,
}

/// The parking topic of a dead-letter topic.
pub fn parking_topic(dead_letter: &str) -> String {
    format!("{dead_letter}-parking")
}

/// Exactly what the replay needs: READ and DESCRIBE on the dead-letter topic, READ on its own
/// group, and (unless a dry run, which writes nothing) WRITE and DESCRIBE on the target and
/// parking topics.
pub fn acls(principal: &str, names: &Names, topics: &Topics, dry_run: bool) -> BTreeSet<Acl> {
    let acl = |resource, name: &str, operation| Acl {
        resource,
        name: name.to_owned(),
        principal: principal.to_owned(),
        operation,
    };
    let mut out = BTreeSet::from([
        acl(ResourceKind::Topic, &topics.dead_letter, AclOperation::Read),
        acl(
            ResourceKind::Topic,
            &topics.dead_letter,
            AclOperation::Describe,
        ),
        acl(ResourceKind::Group, &names.group, AclOperation::Read),
    ]);
    if !dry_run {
        for topic in [&topics.target, &topics.parking] {
            out.insert(acl(ResourceKind::Topic, topic, AclOperation::Write));
            out.insert(acl(ResourceKind::Topic, topic, AclOperation::Describe));
        }
    }
    out
}

/// The worker's `replay` arguments.
pub fn args(replay: &DLQReplay, names: &Names, topics: &Topics) -> Vec<String> {
    let spec = &replay.spec;
    let mut args: Vec<String> = vec![
        "replay".into(),
        "--dead-letter-topic".into(),
        topics.dead_letter.clone(),
        "--group".into(),
        names.group.clone(),
        "--target".into(),
        topics.target.clone(),
        "--parking-topic".into(),
        topics.parking.clone(),
        "--max-replays".into(),
        spec.max_replays.to_string(),
        "--header".into(),
        format!("{CONSUMER_GROUP_HEADER}={}", topics.consumer_group),
        "--summary-file".into(),
        SUMMARY_PATH.into(),
    ];
    let ReplayFilter {
        error_classes,
        since,
        until,
        headers,
        keys,
    } = &spec.filter;
    for class in error_classes {
        args.extend(["--error-class".into(), class.as_str().to_owned()]);
    }
    if let Some(since) = since {
        args.extend(["--since".into(), since.0.to_string()]);
    }
    if let Some(until) = until {
        args.extend(["--until".into(), until.0.to_string()]);
    }
    for (name, value) in headers {
        args.extend(["--header".into(), format!("{name}={value}")]);
    }
    for key in keys {
        args.extend(["--key".into(), key.clone()]);
    }
    if spec.rate > 0 {
        args.extend(["--rate".into(), spec.rate.to_string()]);
    }
    if spec.dry_run {
        args.push("--dry-run".into());
    }
    args
}

/// Labels of a replay's objects.
pub fn labels(replay: &DLQReplay) -> BTreeMap<String, String> {
    BTreeMap::from([
        (REPLAY_LABEL.to_owned(), replay.name_any()),
        (
            "app.kubernetes.io/name".to_owned(),
            "pubsubkafka-replay".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), replay.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "pubsubkafka-controller".to_owned(),
        ),
    ])
}

/// Metadata of a child object named `name`, owned by the replay: deleting the replay deletes
/// it (and a Job its pods, which stops the replay).
pub fn child_meta(replay: &DLQReplay, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: replay.namespace(),
        labels: Some(labels(replay)),
        owner_references: Some(vec![
            replay
                .controller_owner_ref(&())
                .expect("a stored DLQReplay has a name and uid"),
        ]),
        ..ObjectMeta::default()
    }
}

/// How the Job's pod reaches Kafka.
#[derive(Debug, Clone, Copy)]
pub struct PodInput<'a> {
    pub image: WorkerImage<'a>,
    pub kafka: pods::KafkaAccess<'a>,
    pub otlp_endpoint: Option<&'a str>,
}

/// The Job that runs the replay once: pods that fail are retried (each resumes from the
/// committed progress), a pod that succeeds ends it.
pub fn job(replay: &DLQReplay, names: &Names, input: &PodInput<'_>, args: Vec<String>) -> Job {
    let (volume, mount) =
        pods::secret_mount("kafka-credentials", &names.credentials_secret, KAFKA_DIR);
    let mut env = pods::kafka_env(&names.user, input.kafka);
    if let Some(endpoint) = input.otlp_endpoint {
        env.push(EnvVar {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            value: Some(endpoint.to_owned()),
            ..Default::default()
        });
    }
    let quantity = |q: &str| Quantity(q.to_owned());
    Job {
        metadata: child_meta(replay, &names.job),
        spec: Some(JobSpec {
            backoff_limit: Some(JOB_BACKOFF_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(replay)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: pods::pull_secrets(input.image.pull_secrets),
                    security_context: Some(pods::pod_security()),
                    containers: vec![Container {
                        name: "replay".into(),
                        image: Some(input.image.image.to_owned()),
                        args: Some(args),
                        env: Some(env),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_owned(), quantity("50m")),
                                ("memory".to_owned(), quantity("32Mi")),
                            ])),
                            limits: Some(BTreeMap::from([(
                                "memory".to_owned(),
                                quantity("256Mi"),
                            )])),
                            ..Default::default()
                        }),
                        security_context: Some(pods::container_security()),
                        volume_mounts: Some(vec![mount]),
                        termination_message_path: Some(SUMMARY_PATH.into()),
                        // A replay that fails leaves no summary: its last log lines say why.
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        ..Default::default()
                    }],
                    volumes: Some(vec![volume]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The replay that must finish before `me` starts: one of the same dead-letter topic that runs
/// already (whatever its age: two never interleave), else the oldest unfinished one created
/// before it (by creation time, then name). `others` are the namespace's replays with the
/// dead-letter topic each reads (None while unknown).
pub fn waiting_for<'a>(
    me: &DLQReplay,
    dead_letter: &str,
    others: impl IntoIterator<Item = (&'a DLQReplay, Option<&'a str>)>,
) -> Option<String> {
    let rank = |r: &DLQReplay| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        )
    };
    let mine = rank(me);
    others
        .into_iter()
        .filter(|(other, topic)| {
            other.name_any() != me.name_any()
                && *topic == Some(dead_letter)
                && !other.phase().is_final()
                && other.metadata.deletion_timestamp.is_none()
                && (other.phase() == ReplayPhase::Running || rank(other) < mine)
        })
        .min_by_key(|(other, _)| (other.phase() != ReplayPhase::Running, rank(other)))
        .map(|(other, _)| other.name_any())
}

/// What the worker writes as its pod's termination message when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Summary {
    pub matched: u64,
    pub replayed: u64,
    pub skipped: u64,
    pub parked: u64,
    #[serde(default)]
    pub offsets: BTreeMap<i32, i64>,
    #[serde(default)]
    pub ends: BTreeMap<i32, i64>,
}

impl Summary {
    /// The summary in a termination message; None if it is not one (a crash's last words).
    pub fn parse(message: &str) -> Option<Self> {
        serde_json::from_str(message.trim()).ok()
    }
}

/// Where the Job is, as its status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Not created yet (or gone).
    Absent,
    Running,
    /// A pod succeeded, with the summary its container left.
    Succeeded(Option<Summary>),
    /// Out of retries (or past a deadline): why, from the Job and its last pod.
    Failed(String),
}

/// What one pass saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub topics: Option<Topics>,
    /// A replay of the same dead-letter topic that must finish first.
    pub waiting_for: Option<String>,
    /// Why the replay cannot start (missing consumer, topic not Ready), if it cannot.
    pub blocked: Option<(&'static str, String)>,
    pub job: JobState,
    /// The replay group's committed offsets (Running only).
    pub committed: BTreeMap<i32, i64>,
    pub now: Time,
}

/// The status after this pass: phase, counts and progress, and the Ready / Reconciled /
/// Complete conditions.
pub fn status(replay: &DLQReplay, names: &Names, observed: &Observed) -> DLQReplayStatus {
    let generation = replay.metadata.generation;
    let old = replay.status.clone().unwrap_or_default();
    let mut status = DLQReplayStatus {
        observed_generation: generation,
        conditions: Vec::new(),
        ..old.clone()
    };
    if let Some(topics) = &observed.topics {
        status.dead_letter_topic = Some(topics.dead_letter.clone());
        status.target_topic = Some(topics.target.clone());
        status.parking_topic = Some(topics.parking.clone());
    }
    let (phase, ok, why, message) = match (&observed.job, &observed.blocked, &observed.waiting_for)
    {
        (JobState::Absent, Some((why, message)), _) => {
            (ReplayPhase::Pending, false, *why, message.clone())
        }
        (JobState::Absent, None, Some(other)) => (
            ReplayPhase::Pending,
            false,
            reason::WAITING_FOR_REPLAY,
            format!(
                "waiting for DLQReplay {other}, which replays {} now",
                status
                    .dead_letter_topic
                    .as_deref()
                    .unwrap_or("the same dead-letter topic")
            ),
        ),
        (JobState::Absent, None, None) => (
            ReplayPhase::Pending,
            false,
            reason::REPLAY_STARTING,
            "creating the replay's Job".to_owned(),
        ),
        (JobState::Running, _, _) => (
            ReplayPhase::Running,
            false,
            reason::REPLAY_RUNNING,
            format!("Job {} is replaying", names.job),
        ),
        (JobState::Succeeded(summary), _, _) => {
            let note = if replay.spec.dry_run {
                "dry run: counted, nothing written"
            } else {
                "replayed"
            };
            let message = match summary {
                Some(s) => format!(
                    "{note}: {} matched, {} replayed, {} parked, {} skipped",
                    s.matched, s.replayed, s.parked, s.skipped
                ),
                None => format!("{note}; the Job left no summary"),
            };
            (
                ReplayPhase::Succeeded,
                true,
                reason::REPLAY_SUCCEEDED,
                message,
            )
        }
        (JobState::Failed(why), _, _) => (
            ReplayPhase::Failed,
            false,
            reason::REPLAY_FAILED,
            why.clone(),
        ),
    };
    status.phase = Some(phase);
    if phase != ReplayPhase::Pending && status.start_time.is_none() {
        status.start_time = Some(observed.now.clone());
    }
    if phase.is_final() && status.completion_time.is_none() {
        status.completion_time = Some(observed.now.clone());
    }
    status.job = (phase != ReplayPhase::Pending).then(|| names.job.clone());
    // The principal exists while the Job may still use it.
    status.principal =
        (!phase.is_final() && observed.blocked.is_none() && observed.waiting_for.is_none())
            .then(|| names.principal.clone());
    match &observed.job {
        JobState::Succeeded(Some(summary)) => {
            status.matched = Some(summary.matched);
            status.replayed = Some(summary.replayed);
            status.skipped = Some(summary.skipped);
            status.parked = Some(summary.parked);
            status.dead_letter_offsets = summary
                .ends
                .iter()
                .map(|(&partition, &end)| PartitionProgress {
                    partition,
                    offset: summary.offsets.get(&partition).copied().unwrap_or(end),
                    end: Some(end),
                })
                .collect();
        }
        JobState::Running if !observed.committed.is_empty() => {
            status.dead_letter_offsets = observed
                .committed
                .iter()
                .map(|(&partition, &offset)| PartitionProgress {
                    partition,
                    offset,
                    end: None,
                })
                .collect();
        }
        _ => {}
    }
    // Reconciled says whether the operator did its part: a Job that runs or ran is that;
    // before it, Reconciled says what Ready says (what the replay waits for).
    let reconciled = if matches!(
        phase,
        ReplayPhase::Running | ReplayPhase::Succeeded | ReplayPhase::Failed
    ) {
        conditions::new(
            conditions::RECONCILED,
            true,
            reason::RECONCILED,
            format!("Job {} created", names.job),
            generation,
        )
    } else {
        conditions::new(conditions::RECONCILED, ok, why, message.clone(), generation)
    };
    let complete = if phase.is_final() {
        conditions::new(conditions::COMPLETE, true, why, message.clone(), generation)
    } else {
        conditions::new(
            conditions::COMPLETE,
            false,
            reason::REPLAY_NOT_FINISHED,
            "not finished",
            generation,
        )
    };
    let ready = conditions::new(conditions::READY, ok, why, message, generation);
    // Merged into the old ones: a condition whose status holds keeps its transition time, so
    // an unchanged pass writes an identical status.
    status.conditions = [reconciled, ready, complete]
        .into_iter()
        .fold(old.conditions.clone(), |all, c| conditions::merge(&all, c));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use pubsubkafka_contract::config::SecurityProtocol;

    fn replay(yaml: &str) -> DLQReplay {
        let mut r: DLQReplay = serde_yaml::from_str(yaml).expect("a DLQReplay");
        r.metadata.uid = Some("uid-1".into());
        r.metadata.generation = Some(1);
        r
    }

    const BASIC: &str = "
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQReplay
metadata: {name: fix-1, namespace: shop, creationTimestamp: '2026-12-01T10:00:00Z'}
spec:
  consumerRef: {name: order-store}
";

    fn topics() -> Topics {
        Topics {
            dead_letter: "orders-dlq".into(),
            target: "orders".into(),
            parking: parking_topic("orders-dlq"),
            consumer_group: "shop.order-store".into(),
        }
    }

    #[test]
    fn names_and_defaults() {
        let r = replay(BASIC);
        let names = Names::of(&r);
        assert_eq!(names.user, "pubsubkafka.shop.dlqreplay.fix-1");
        assert_eq!(names.principal, "User:pubsubkafka.shop.dlqreplay.fix-1");
        assert_eq!(names.job, "fix-1-replay");
        assert_eq!(names.group, "pubsubkafka-replay.shop.fix-1");
        assert_eq!(r.spec.max_replays, 3);
        assert_eq!(r.spec.rate, 0);
        assert!(!r.spec.dry_run);
        assert_eq!(r.phase(), ReplayPhase::Pending);
        assert_eq!(parking_topic("orders-dlq"), "orders-dlq-parking");
    }

    #[test]
    fn the_principal_reads_the_dead_letters_and_writes_only_target_and_parking() {
        let r = replay(BASIC);
        let names = Names::of(&r);
        let show = |acls: BTreeSet<Acl>| -> Vec<String> {
            acls.iter()
                .map(|a| format!("{:?} {} {:?}", a.resource, a.name, a.operation))
                .collect()
        };
        let mut got = show(acls(&names.principal, &names, &topics(), false));
        got.sort();
        let mut want = vec![
            "Topic orders Write",
            "Topic orders Describe",
            "Topic orders-dlq Read",
            "Topic orders-dlq Describe",
            "Topic orders-dlq-parking Write",
            "Topic orders-dlq-parking Describe",
            "Group pubsubkafka-replay.shop.fix-1 Read",
        ];
        want.sort();
        assert_eq!(got, want);
        let all = acls(&names.principal, &names, &topics(), false);
        assert_eq!(all.len(), 7);
        assert!(all.iter().all(|a| a.principal == names.principal));
        let dry = show(acls(&names.principal, &names, &topics(), true));
        assert_eq!(dry.len(), 3, "a dry run writes nothing: {dry:?}");
        assert!(dry.iter().all(|a| !a.contains("Write")), "{dry:?}");
    }

    #[test]
    fn arguments_carry_every_filter_and_the_consumer_group() {
        let r = replay(
            "
apiVersion: pubsubkafka.io/v1alpha1
kind: DLQReplay
metadata: {name: fix-2, namespace: shop}
spec:
  consumerRef: {name: order-store}
  filter:
    errorClasses: [Validation, Conflict]
    since: '2026-12-01T09:00:00Z'
    until: '2026-12-01T10:00:00Z'
    headers: {x-tenant: acme}
    keys: [o-1, o-2]
  rate: 50
  dryRun: true
  maxReplays: 2
",
        );
        let names = Names::of(&r);
        assert_eq!(
            args(&r, &names, &topics()).join(" "),
            "replay --dead-letter-topic orders-dlq --group pubsubkafka-replay.shop.fix-2 \
             --target orders --parking-topic orders-dlq-parking --max-replays 2 \
             --header x-dlq-consumer-group=shop.order-store --summary-file /dev/termination-log \
             --error-class Validation --error-class Conflict --since 2026-12-01T09:00:00Z \
             --until 2026-12-01T10:00:00Z --header x-tenant=acme --key o-1 --key o-2 --rate 50 \
             --dry-run"
        );
        let plain = replay(BASIC);
        let line = args(&plain, &Names::of(&plain), &topics()).join(" ");
        assert!(
            !line.contains("--rate") && !line.contains("--dry-run"),
            "{line}"
        );
    }

    #[test]
    fn the_job_runs_once_with_the_credentials_and_reports_in_its_termination_message() {
        let r = replay(BASIC);
        let names = Names::of(&r);
        let pull = vec!["regcred".to_owned()];
        let input = PodInput {
            image: WorkerImage {
                image: "pubsubkafka/worker:dev",
                pull_secrets: &pull,
            },
            kafka: pods::KafkaAccess {
                bootstrap_servers: "kafka:9092",
                security_protocol: SecurityProtocol::SaslPlaintext,
                with_ca: false,
            },
            otlp_endpoint: None,
        };
        let job = job(&r, &names, &input, args(&r, &names, &topics()));
        assert_eq!(job.metadata.name.as_deref(), Some("fix-1-replay"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DLQReplay", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(JOB_BACKOFF_LIMIT));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        assert_eq!(
            container.termination_message_path.as_deref(),
            Some(SUMMARY_PATH)
        );
        let env: BTreeMap<_, _> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env["PSK_KAFKA_USERNAME"],
            "pubsubkafka.shop.dlqreplay.fix-1"
        );
        assert_eq!(
            env["PSK_KAFKA_PASSWORD_FILE"],
            "/etc/pubsubkafka/kafka/password"
        );
        assert!(
            !env.values().any(|v| v.contains("secret")),
            "no secret in the env"
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
    }

    fn at(name: &str, created: &str, phase: Option<ReplayPhase>) -> DLQReplay {
        let mut r = replay(
            &BASIC
                .replace("fix-1", name)
                .replace("2026-12-01T10:00:00Z", created),
        );
        r.status = phase.map(|phase| DLQReplayStatus {
            phase: Some(phase),
            ..Default::default()
        });
        r
    }

    #[test]
    fn replays_of_one_dead_letter_topic_run_one_at_a_time_oldest_first() {
        let me = at("b", "2026-12-01T10:00:00Z", None);
        let older = at("a", "2026-12-01T09:00:00Z", Some(ReplayPhase::Running));
        let older_done = at("c", "2026-12-01T08:00:00Z", Some(ReplayPhase::Succeeded));
        let older_failed = at("d", "2026-12-01T08:30:00Z", Some(ReplayPhase::Failed));
        let same_time_before = at("a2", "2026-12-01T10:00:00Z", None);
        let newer = at("z", "2026-12-01T11:00:00Z", Some(ReplayPhase::Running));
        let newer_pending = at("y", "2026-12-01T11:00:00Z", Some(ReplayPhase::Pending));
        let same_time_after_running = at("c2", "2026-12-01T10:00:00Z", Some(ReplayPhase::Running));
        let dlq = Some("orders-dlq");
        type Case<'a> = (
            &'a str,
            Vec<(&'a DLQReplay, Option<&'a str>)>,
            Option<&'a str>,
        );
        let table: Vec<Case<'_>> = vec![
            ("alone", vec![(&me, dlq)], None),
            (
                "an older running one",
                vec![(&me, dlq), (&older, dlq)],
                Some("a"),
            ),
            (
                "older ones finished",
                vec![(&older_done, dlq), (&older_failed, dlq)],
                None,
            ),
            ("another topic", vec![(&older, Some("users-dlq"))], None),
            ("topic not known yet", vec![(&older, None)], None),
            (
                "same time, name first",
                vec![(&same_time_before, dlq)],
                Some("a2"),
            ),
            (
                "a newer one running already",
                vec![(&newer, dlq)],
                Some("z"),
            ),
            (
                "a newer one pending waits for me",
                vec![(&newer_pending, dlq)],
                None,
            ),
            (
                "same second, running, name after",
                vec![(&same_time_after_running, dlq)],
                Some("c2"),
            ),
            (
                "the running one before an older pending",
                vec![(&same_time_before, dlq), (&newer, dlq)],
                Some("z"),
            ),
            (
                "the oldest of two",
                vec![(&same_time_before, dlq), (&older, dlq)],
                Some("a"),
            ),
        ];
        for (case, others, want) in table {
            assert_eq!(
                waiting_for(&me, "orders-dlq", others).as_deref(),
                want,
                "{case}"
            );
        }
    }

    fn observed(job: JobState) -> Observed {
        Observed {
            topics: Some(topics()),
            waiting_for: None,
            blocked: None,
            job,
            committed: BTreeMap::new(),
            now: Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()),
        }
    }

    fn condition<'a>(s: &'a DLQReplayStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn status_follows_the_job_through_every_phase() {
        let r = replay(BASIC);
        let names = Names::of(&r);
        let summary = Summary {
            matched: 5,
            replayed: 4,
            skipped: 7,
            parked: 1,
            offsets: BTreeMap::from([(0, 6), (1, 6)]),
            ends: BTreeMap::from([(0, 6), (1, 6), (2, 0)]),
        };
        let mut blocked = observed(JobState::Absent);
        blocked.blocked = Some((
            reason::CONSUMER_NOT_FOUND,
            "waiting for OrderConsumer x".into(),
        ));
        blocked.topics = None;
        let mut queued = observed(JobState::Absent);
        queued.waiting_for = Some("older".into());
        let mut running = observed(JobState::Running);
        running.committed = BTreeMap::from([(0, 3)]);
        type Case<'a> = (
            &'a str,
            Observed,
            ReplayPhase,
            (&'a str, &'a str),
            (&'a str, &'a str),
        );
        let table: Vec<Case<'_>> = vec![
            (
                "no consumer",
                blocked,
                ReplayPhase::Pending,
                ("False", reason::CONSUMER_NOT_FOUND),
                ("False", reason::REPLAY_NOT_FINISHED),
            ),
            (
                "queued",
                queued,
                ReplayPhase::Pending,
                ("False", reason::WAITING_FOR_REPLAY),
                ("False", reason::REPLAY_NOT_FINISHED),
            ),
            (
                "starting",
                observed(JobState::Absent),
                ReplayPhase::Pending,
                ("False", reason::REPLAY_STARTING),
                ("False", reason::REPLAY_NOT_FINISHED),
            ),
            (
                "running",
                running,
                ReplayPhase::Running,
                ("False", reason::REPLAY_RUNNING),
                ("False", reason::REPLAY_NOT_FINISHED),
            ),
            (
                "succeeded",
                observed(JobState::Succeeded(Some(summary.clone()))),
                ReplayPhase::Succeeded,
                ("True", reason::REPLAY_SUCCEEDED),
                ("True", reason::REPLAY_SUCCEEDED),
            ),
            (
                "failed",
                observed(JobState::Failed("BackoffLimitExceeded: no route".into())),
                ReplayPhase::Failed,
                ("False", reason::REPLAY_FAILED),
                ("True", reason::REPLAY_FAILED),
            ),
        ];
        for (case, seen, phase, ready, complete) in table {
            let s = status(&r, &names, &seen);
            assert_eq!(s.phase, Some(phase), "{case}");
            assert_eq!(condition(&s, conditions::READY), ready, "{case}");
            assert_eq!(condition(&s, conditions::COMPLETE), complete, "{case}");
            assert_eq!(
                s.principal.is_some(),
                matches!(phase, ReplayPhase::Running) || case == "starting",
                "{case}"
            );
            match case {
                "succeeded" => {
                    assert_eq!(
                        (s.matched, s.replayed, s.skipped, s.parked),
                        (Some(5), Some(4), Some(7), Some(1))
                    );
                    assert_eq!(s.dead_letter_offsets.len(), 3);
                    assert_eq!(
                        s.dead_letter_offsets[2],
                        PartitionProgress {
                            partition: 2,
                            offset: 0,
                            end: Some(0)
                        }
                    );
                    assert!(s.completion_time.is_some() && s.start_time.is_some());
                }
                "running" => {
                    assert_eq!(
                        s.dead_letter_offsets,
                        [PartitionProgress {
                            partition: 0,
                            offset: 3,
                            end: None
                        }]
                    );
                    assert_eq!(s.job.as_deref(), Some("fix-1-replay"));
                }
                "no consumer" => assert_eq!(s.dead_letter_topic, None),
                _ => {}
            }
        }
    }

    #[test]
    fn a_dry_run_says_so_and_an_unchanged_pass_writes_the_same_status() {
        let mut r = replay(&format!("{BASIC}  dryRun: true\n"));
        let names = Names::of(&r);
        let seen = observed(JobState::Succeeded(Some(Summary {
            matched: 2,
            ..Default::default()
        })));
        let first = status(&r, &names, &seen);
        assert!(
            conditions::ready(&first.conditions)
                .unwrap()
                .message
                .starts_with("dry run"),
            "{first:?}"
        );
        r.status = Some(first.clone());
        let mut later = seen.clone();
        later.now = Time(jiff::Timestamp::from_second(1_900_000_000).unwrap());
        assert_eq!(status(&r, &names, &later), first);
    }

    #[test]
    fn the_summary_is_read_from_the_termination_message() {
        let s = Summary::parse(
            r#"{"matched":3,"replayed":2,"parked":1,"skipped":9,"targets":{"orders":2},"dry_run":false,"offsets":{"0":12},"ends":{"0":12,"1":0}}"#,
        )
        .unwrap();
        assert_eq!((s.matched, s.replayed, s.parked, s.skipped), (3, 2, 1, 9));
        assert_eq!(s.ends, BTreeMap::from([(0, 12), (1, 0)]));
        assert_eq!(Summary::parse("thread 'main' panicked"), None);
    }
}
