//! Rotating a workload's SCRAM credential without stopping it (OrderConsumer, OrderGateway).
//!
//! A workload alternates between two usernames, `pubsubkafka.<namespace>.<name>` and the same
//! with [`SECOND_SUFFIX`]; `~` is in no Kubernetes name, so the second never collides with
//! another workload's first. A rotation goes, one reconcile pass or more per step:
//!
//! 1. **Start.** status.credentials records the switch (`activeUser` the new username,
//!    `retiringUser` the old one) before anything changes, so an operator killed at any later
//!    step resumes the same rotation.
//! 2. **Issue.** While the credentials Secret names another username, the new one gets a fresh
//!    password in Kafka, the same ACLs as the old, and only then the Secret
//!    ([`crate::principal::ensure`]): no pod can start with a credential Kafka does not know.
//! 3. **Roll.** The username is in the pods' configuration and the Secret's version in their
//!    template hash, so the Deployments roll onto the new credential.
//! 4. **Retire.** When every pod runs the new template and is ready, and no member of the
//!    consumer group still uses the old username (the workers' client id is their username),
//!    the old username's ACLs and credential are deleted; `lastRotation` is recorded.
//!
//! Until step 4 the old credential keeps its ACLs, so old pods work to the end.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::consumer::plan::{CONFIG_HASH_ANNOTATION, config_hash_of};
use crate::context::Context;
use crate::crd::conditions::{self, reason};
use crate::crd::credentials::ROTATE_ANNOTATION;
use crate::crd::{CredentialsSpec, CredentialsStatus};
use crate::error::{Error, SpecError};
use crate::kafka::Acl;
use crate::principal::{self, AclDiff, Principal};

/// What the second username of a workload ends with.
pub const SECOND_SUFFIX: &str = "~2";

/// A workload whose SCRAM credential the operator rotates.
pub trait Credentialed: Resource<DynamicType = ()> + Clone {
    fn credentials_spec(&self) -> Option<&CredentialsSpec>;
    fn credentials_status(&self) -> Option<&CredentialsStatus>;
    fn set_credentials_status(&mut self, credentials: CredentialsStatus);
    /// The status, as JSON.
    fn status_value(&self) -> serde_json::Value;
}

/// Implements [`Credentialed`] for a kind with `spec.credentials` and `status.credentials`.
macro_rules! credentialed {
    ($($kind:ty),* $(,)?) => {$(
        impl Credentialed for $kind {
            fn credentials_spec(&self) -> Option<&CredentialsSpec> {
                self.spec.credentials.as_ref()
            }
            fn credentials_status(&self) -> Option<&CredentialsStatus> {
                self.status.as_ref()?.credentials.as_ref()
            }
            fn set_credentials_status(&mut self, credentials: CredentialsStatus) {
                self.status.get_or_insert_with(Default::default).credentials = Some(credentials);
            }
            fn status_value(&self) -> serde_json::Value {
                serde_json::to_value(&self.status).unwrap_or_default()
            }
        }
    )*};
}

credentialed!(crate::crd::OrderConsumer, crate::crd::OrderGateway);

/// The workload's other username: the second after the first, the first after the second.
pub fn other_user(base: &str, current: &str) -> String {
    if current == base {
        format!("{base}{SECOND_SUFFIX}")
    } else {
        base.to_owned()
    }
}

/// Whether `user` is one of the two usernames of the workload whose first is `base`.
pub fn is_own(base: &str, user: &str) -> bool {
    user == base || user.strip_prefix(base) == Some(SECOND_SUFFIX)
}

/// What this pass does about the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No rotation: the workers use `active`.
    Steady { active: String },
    /// A rotation starts now, from `from` to `to`: record it before anything else.
    Start { from: String, to: String },
    /// A rotation is under way: the workers move to `to`; `from` keeps its ACLs until retired.
    Rolling { from: String, to: String },
}

impl Step {
    /// The username the workers are to use.
    pub fn active(&self) -> &str {
        match self {
            Self::Steady { active } => active,
            Self::Start { to, .. } | Self::Rolling { to, .. } => to,
        }
    }

    /// The username being retired, during a rotation.
    pub fn retiring(&self) -> Option<&str> {
        match self {
            Self::Steady { .. } => None,
            Self::Start { from, .. } | Self::Rolling { from, .. } => Some(from),
        }
    }
}

/// What [`decide`] reads.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The workload's first username.
    pub base: &'a str,
    /// The username in the credentials Secret, if it exists.
    pub secret_user: Option<&'a str>,
    pub spec: Option<&'a CredentialsSpec>,
    pub status: Option<&'a CredentialsStatus>,
    /// The value of the rotate annotation, if set.
    pub request: Option<&'a str>,
    pub now: jiff::Timestamp,
}

/// This pass's step, and status.credentials as it stands once the step is taken (for a
/// rotation that starts, the record to write before anything changes).
pub fn decide(observed: &Observed<'_>) -> Result<(Step, CredentialsStatus), SpecError> {
    let Observed {
        base,
        secret_user,
        spec,
        status,
        request,
        now,
    } = observed;
    let interval = match spec.and_then(|s| s.rotation.as_deref()) {
        None => None,
        Some(text) => Some(
            pubsubkafka_contract::duration::parse(text).map_err(|source| {
                SpecError::FieldDuration {
                    field: "credentials.rotation",
                    source,
                }
            })?,
        ),
    };
    let next = |since: &Time| {
        interval.map(|i| {
            Time(since.0 + jiff::SignedDuration::try_from(i).unwrap_or(jiff::SignedDuration::MAX))
        })
    };
    let own = |user: Option<&str>| user.filter(|u| is_own(base, u)).map(str::to_owned);
    let recorded = status.cloned().unwrap_or_default();
    // Under way: the record says so (it is written before any other step).
    if let (Some(from), Some(to)) = (
        own(recorded.retiring_user.as_deref()),
        own(Some(recorded.active_user.as_str())),
    ) && from != to
    {
        let mut status = recorded.clone();
        status.next_rotation = None;
        return Ok((Step::Rolling { from, to }, status));
    }
    // The workers' username: the Secret's (what they read), else the record's, else the first.
    let active = own(*secret_user)
        .or_else(|| own(Some(recorded.active_user.as_str())))
        .unwrap_or_else(|| (*base).to_owned());
    let since = match (&recorded.active_since, recorded.active_user == active) {
        (Some(since), true) => since.clone(),
        _ => Time(*now),
    };
    let requested = request.filter(|r| recorded.rotation_request.as_deref() != Some(*r));
    let due = next(&since).is_some_and(|at| at.0 <= *now);
    // Without a Secret nothing was issued yet: the credential about to be is new anyway.
    if secret_user.is_some() && (requested.is_some() || due) {
        let to = other_user(base, &active);
        let status = CredentialsStatus {
            active_user: to.clone(),
            active_since: Some(Time(*now)),
            retiring_user: Some(active.clone()),
            last_rotation: recorded.last_rotation.clone(),
            next_rotation: None,
            rotation_request: request
                .map(|r| (*r).to_owned())
                .or(recorded.rotation_request.clone()),
        };
        return Ok((Step::Start { from: active, to }, status));
    }
    let status = CredentialsStatus {
        next_rotation: next(&since),
        active_since: Some(since),
        active_user: active.clone(),
        retiring_user: None,
        last_rotation: recorded.last_rotation.clone(),
        rotation_request: request
            .map(|r| (*r).to_owned())
            .or(recorded.rotation_request.clone()),
    };
    Ok((Step::Steady { active }, status))
}

/// status.credentials once the rotation that issued `status.activeUser` is over.
pub fn finished(
    status: &CredentialsStatus,
    spec: Option<&CredentialsSpec>,
    now: jiff::Timestamp,
) -> CredentialsStatus {
    let next_rotation = spec
        .and_then(|s| s.rotation.as_deref())
        .and_then(|t| pubsubkafka_contract::duration::parse(t).ok())
        .and_then(|i| jiff::SignedDuration::try_from(i).ok())
        .map(|i| Time(now + i));
    CredentialsStatus {
        retiring_user: None,
        last_rotation: Some(Time(now)),
        active_since: status.active_since.clone().or(Some(Time(now))),
        next_rotation,
        ..status.clone()
    }
}

/// The CredentialsRotating condition: True while `step` rotates (with `waiting`, what the
/// retirement waits for), False once a rotation ended; none before the first rotation.
pub fn condition(
    step: &Step,
    credentials: &CredentialsStatus,
    waiting: Option<&str>,
    generation: Option<i64>,
) -> Option<Condition> {
    match step {
        Step::Start { from, to } | Step::Rolling { from, to } => Some(conditions::new(
            conditions::CREDENTIALS_ROTATING,
            true,
            reason::ROTATING,
            format!(
                "moving the workers from Kafka user {from} to {to}{}",
                waiting
                    .map(|w| format!("; waiting for {w}"))
                    .unwrap_or_default()
            ),
            generation,
        )),
        Step::Steady { active } => credentials.last_rotation.as_ref().map(|at| {
            conditions::new(
                conditions::CREDENTIALS_ROTATING,
                false,
                reason::ROTATED,
                format!("the workers use Kafka user {active} since {}", at.0),
                generation,
            )
        }),
    }
}

/// The credentials Secret's username, if the Secret exists.
async fn secret_user(
    ctx: &Context,
    namespace: &str,
    secret: &str,
) -> Result<Option<String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(secrets
        .get_opt(secret)
        .await?
        .and_then(|s| s.data?.get("username").cloned())
        .and_then(|u| String::from_utf8(u.0).ok()))
}

/// Decides this pass's step ([`decide`]) and, for a rotation that starts, records it in
/// status.credentials before anything else changes. Returns the step and the workload as the
/// rest of the pass sees it: its status.credentials names the username the workers are to use.
pub async fn begin<K>(owner: &K, ctx: &Context) -> Result<(Step, K), Error>
where
    K: Credentialed<Scope = k8s_openapi::NamespaceResourceScope>
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let namespace = owner.namespace().unwrap_or_default();
    let base = Principal::base(owner);
    let in_secret = secret_user(ctx, &namespace, &base.secret).await?;
    let observe = |workload: &K| {
        decide(&Observed {
            base: &base.user,
            secret_user: in_secret.as_deref(),
            spec: workload.credentials_spec(),
            status: workload.credentials_status(),
            request: workload
                .annotations()
                .get(ROTATE_ANNOTATION)
                .map(String::as_str),
            now: jiff::Timestamp::now(),
        })
    };
    let mut seen = owner.clone();
    let (mut step, mut credentials) = observe(owner)?;
    let recorded = owner.credentials_status().map(|c| c.active_user.as_str());
    if !matches!(step, Step::Steady { .. })
        || in_secret.is_some() && in_secret.as_deref() != recorded
    {
        // The cache may not hold this operator's last status write yet (the Secret above is
        // read fresh): a request taken a moment ago would look new and rotate the credential
        // again, a rotation recorded a moment ago would look over (its old username never
        // retired), a rotation just over would look under way. Whatever is not steady, and a
        // Secret ahead of the record, is decided again on a fresh read.
        seen = Api::<K>::namespaced(ctx.client.clone(), &namespace)
            .get(&owner.name_any())
            .await?;
        (step, credentials) = observe(&seen)?;
    }
    seen.set_credentials_status(credentials);
    let step = match step {
        Step::Start { from, to } => {
            // The whole status, applied by the operator's field manager as at the end of a
            // pass: a field this record sets and a later status leaves out (retiringUser) is
            // then removed, not kept as another manager's.
            Api::<K>::namespaced(ctx.client.clone(), &namespace)
                .patch_status(
                    &owner.name_any(),
                    &PatchParams::apply(crate::FIELD_MANAGER).force(),
                    &Patch::Apply(json!({
                        "apiVersion": K::api_version(&()),
                        "kind": K::kind(&()),
                        "status": seen.status_value(),
                    })),
                )
                .await?;
            info!(%from, %to, "started a credential rotation");
            ctx.event(
                owner,
                EventType::Normal,
                "CredentialRotationStarted",
                format!("rotating the Kafka credential: from user {from} to {to}"),
            )
            .await;
            Step::Rolling { from, to }
        }
        step => step,
    };
    Ok((step, seen))
}

/// Gives the retiring username the ACLs the active one is to have (`active`, the active
/// principal's diff), so pods still on it keep working until it is retired.
pub async fn keep_retiring_acls<K>(
    owner: &K,
    ctx: &Context,
    step: &Step,
    active: &AclDiff,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let Some(retiring) = step.retiring() else {
        return Ok(());
    };
    let principal = format!("User:{retiring}");
    let wanted: BTreeSet<Acl> = active
        .desired
        .iter()
        .map(|acl| Acl {
            principal: principal.clone(),
            ..acl.clone()
        })
        .collect();
    let actual = principal::acls(&ctx.admin, &principal).await?;
    principal::apply_acls(owner, ctx, &AclDiff::between(&principal, &wanted, &actual)).await
}

/// What the retirement of the old username still waits for, if anything: pods of
/// `deployments` not yet on their current template or not ready, or members of `group` that
/// connect as `retiring`.
pub async fn waiting_for(
    ctx: &Context,
    namespace: &str,
    deployments: &[&Deployment],
    group: Option<&str>,
    retiring: &str,
) -> Result<Option<String>, Error> {
    for deployment in deployments {
        if let Some(waiting) = rollout_pending(ctx, namespace, deployment).await? {
            return Ok(Some(waiting));
        }
    }
    if let Some(group) = group {
        let members = ctx.admin.group_client_ids(group).await?;
        let old = members.iter().filter(|m| *m == retiring).count();
        if old > 0 {
            return Ok(Some(format!(
                "{old} member(s) of group {group} still connected as {retiring}"
            )));
        }
    }
    Ok(None)
}

/// Why `deployment` has not rolled out its current template yet, if it has not: every pod it
/// selects (terminating ones included, they may still use the old credential) must carry the
/// template's hash and be ready.
async fn rollout_pending(
    ctx: &Context,
    namespace: &str,
    deployment: &Deployment,
) -> Result<Option<String>, Error> {
    let name = deployment.name_any();
    let (Some(spec), status) = (deployment.spec.as_ref(), deployment.status.as_ref()) else {
        return Ok(Some(format!("Deployment {name}")));
    };
    let observed = status.and_then(|s| s.observed_generation);
    if observed < deployment.metadata.generation {
        return Ok(Some(format!("Deployment {name} to see its new template")));
    }
    let hash = config_hash_of(deployment).unwrap_or_default();
    let selector = spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let old = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some()
                || p.annotations()
                    .get(CONFIG_HASH_ANNOTATION)
                    .map(String::as_str)
                    != Some(hash)
        })
        .count();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
    if old > 0 {
        Ok(Some(format!(
            "{old} pod(s) of Deployment {name} on the old credential to stop"
        )))
    } else if ready < wanted {
        Ok(Some(format!(
            "{ready} of {wanted} pod(s) of Deployment {name} ready"
        )))
    } else {
        Ok(None)
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How soon a pass looks again while a rotation waits.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// When to look again: `recheck` as the pass decided, and within [`RECHECK`] while `rotating`.
pub fn recheck(
    rotating: bool,
    recheck: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    match (rotating, recheck) {
        (false, recheck) => recheck,
        (true, Some(r)) => Some(r.min(RECHECK)),
        (true, None) => Some(RECHECK),
    }
}

/// The end of a pass that applied everything: during a rotation, retires the old username
/// once nothing uses it ([`waiting_for`] the pods of `deployments` and the members of
/// `group`). Sets `credentials` and the CredentialsRotating condition in the status to write;
/// returns whether the rotation still waits.
pub async fn advance<K>(
    owner: &K,
    ctx: &Context,
    step: &Step,
    deployments: &[&Deployment],
    group: Option<&str>,
    credentials: &mut Option<CredentialsStatus>,
    conditions: &mut Vec<Condition>,
) -> Result<bool, Error>
where
    K: Credentialed,
{
    let mut current = owner.credentials_status().cloned().unwrap_or_default();
    let (step, waiting) = match step {
        Step::Rolling { from, to } | Step::Start { from, to } => {
            let namespace = owner.meta().namespace.clone().unwrap_or_default();
            match waiting_for(ctx, &namespace, deployments, group, from).await? {
                Some(waiting) => (step.clone(), Some(waiting)),
                None => {
                    current = retire(owner, ctx, from, &current).await?;
                    (Step::Steady { active: to.clone() }, None)
                }
            }
        }
        Step::Steady { .. } => (step.clone(), None),
    };
    if let Some(condition) = condition(&step, &current, waiting.as_deref(), owner.meta().generation)
    {
        *conditions = conditions::merge(conditions, condition);
    }
    *credentials = Some(current);
    Ok(waiting.is_some())
}

/// Deletes the retired username's ACLs and credential, with an event; returns status.credentials
/// as it stands after.
pub async fn retire<K>(
    owner: &K,
    ctx: &Context,
    retiring: &str,
    credentials: &CredentialsStatus,
) -> Result<CredentialsStatus, Error>
where
    K: Credentialed,
{
    principal::remove(&ctx.admin, retiring, &format!("User:{retiring}")).await?;
    let done = finished(
        credentials,
        owner.credentials_spec(),
        jiff::Timestamp::now(),
    );
    info!(retired = %retiring, active = %done.active_user, "finished a credential rotation");
    ctx.event(
        owner,
        EventType::Normal,
        "CredentialRotated",
        format!(
            "the workers use Kafka user {}; user {retiring} and its ACLs are deleted",
            done.active_user
        ),
    )
    .await;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "pubsubkafka.shop.orders";
    const SECOND: &str = "pubsubkafka.shop.orders~2";

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn observed<'a>(
        secret_user: Option<&'a str>,
        spec: Option<&'a CredentialsSpec>,
        status: Option<&'a CredentialsStatus>,
        request: Option<&'a str>,
    ) -> Observed<'a> {
        Observed {
            base: BASE,
            secret_user,
            spec,
            status,
            request,
            now: at("2026-12-01T12:00:00Z"),
        }
    }

    #[test]
    fn the_two_usernames_alternate_and_no_other_is_taken_for_ours() {
        assert_eq!(other_user(BASE, BASE), SECOND);
        assert_eq!(other_user(BASE, SECOND), BASE);
        assert!(is_own(BASE, BASE) && is_own(BASE, SECOND));
        assert!(!is_own(BASE, "pubsubkafka.shop.orders-2"));
        assert!(!is_own(BASE, "pubsubkafka.shop.orders~3"));
        assert!(!is_own(BASE, "pubsubkafka.shop.other"));
    }

    #[test]
    fn without_rotation_the_workers_keep_the_username_of_their_secret() {
        let (step, status) = decide(&observed(None, None, None, None)).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: BASE.into()
            }
        );
        assert_eq!(status.active_user, BASE);
        assert_eq!(status.active_since, Some(Time(at("2026-12-01T12:00:00Z"))));
        assert_eq!(status.next_rotation, None);

        let (step, _) = decide(&observed(Some(SECOND), None, None, None)).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: SECOND.into()
            }
        );
        let (step, _) = decide(&observed(Some("someone-else"), None, None, None)).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: BASE.into()
            },
            "not ours: ignored"
        );
    }

    #[test]
    fn an_interval_rotates_when_it_has_passed_since_the_credential_was_issued() {
        let spec = CredentialsSpec {
            rotation: Some("720h".into()),
        };
        let recent = CredentialsStatus {
            active_user: BASE.into(),
            active_since: Some(Time(at("2026-11-20T12:00:00Z"))),
            ..Default::default()
        };
        let (step, status) =
            decide(&observed(Some(BASE), Some(&spec), Some(&recent), None)).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: BASE.into()
            }
        );
        assert_eq!(status.next_rotation, Some(Time(at("2026-12-20T12:00:00Z"))));

        let old = CredentialsStatus {
            active_since: Some(Time(at("2026-10-01T12:00:00Z"))),
            ..recent
        };
        let (step, status) = decide(&observed(Some(BASE), Some(&spec), Some(&old), None)).unwrap();
        assert_eq!(
            step,
            Step::Start {
                from: BASE.into(),
                to: SECOND.into()
            }
        );
        assert_eq!(status.active_user, SECOND);
        assert_eq!(status.retiring_user.as_deref(), Some(BASE));
    }

    #[test]
    fn a_workload_created_with_the_annotation_starts_on_a_fresh_credential_without_rotating() {
        let (step, status) = decide(&observed(None, None, None, Some("1"))).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: BASE.into()
            }
        );
        assert_eq!(
            status.rotation_request.as_deref(),
            Some("1"),
            "taken as done"
        );
    }

    #[test]
    fn a_new_annotation_value_rotates_once() {
        let (step, status) = decide(&observed(Some(BASE), None, None, Some("1"))).unwrap();
        assert!(matches!(step, Step::Start { .. }), "{step:?}");
        assert_eq!(status.rotation_request.as_deref(), Some("1"));

        // The same value once the rotation is over: nothing more.
        let done = finished(&status, None, at("2026-12-01T12:05:00Z"));
        let (step, _) = decide(&observed(Some(SECOND), None, Some(&done), Some("1"))).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: SECOND.into()
            }
        );
        // A new value: back to the first username.
        let (step, _) = decide(&observed(Some(SECOND), None, Some(&done), Some("2"))).unwrap();
        assert_eq!(
            step,
            Step::Start {
                from: SECOND.into(),
                to: BASE.into()
            }
        );
    }

    #[test]
    fn a_recorded_rotation_resumes_whatever_the_secret_holds() {
        let (_, started) = decide(&observed(Some(BASE), None, None, Some("1"))).unwrap();
        // Killed before the Secret was written, or after: the same rotation either way.
        for secret in [Some(BASE), Some(SECOND), None] {
            let (step, status) =
                decide(&observed(secret, None, Some(&started), Some("1"))).unwrap();
            assert_eq!(
                step,
                Step::Rolling {
                    from: BASE.into(),
                    to: SECOND.into()
                },
                "{secret:?}"
            );
            assert_eq!(status, started);
        }
        // A new request meanwhile waits for the rotation under way.
        let (step, _) = decide(&observed(Some(SECOND), None, Some(&started), Some("2"))).unwrap();
        assert!(matches!(step, Step::Rolling { .. }));
    }

    #[test]
    fn a_record_naming_foreign_users_is_not_trusted() {
        let forged = CredentialsStatus {
            active_user: "admin".into(),
            retiring_user: Some(BASE.into()),
            ..Default::default()
        };
        let (step, status) = decide(&observed(Some(BASE), None, Some(&forged), None)).unwrap();
        assert_eq!(
            step,
            Step::Steady {
                active: BASE.into()
            }
        );
        assert_eq!(status.active_user, BASE);
    }

    #[test]
    fn the_condition_says_what_the_rotation_waits_for_and_how_it_ended() {
        let rolling = Step::Rolling {
            from: BASE.into(),
            to: SECOND.into(),
        };
        let c = condition(&rolling, &Default::default(), Some("1 pod(s)"), Some(3)).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Rotating"));
        assert!(c.message.ends_with("waiting for 1 pod(s)"), "{}", c.message);

        let steady = Step::Steady {
            active: SECOND.into(),
        };
        assert_eq!(condition(&steady, &Default::default(), None, Some(3)), None);
        let done = finished(&Default::default(), None, at("2026-12-01T12:05:00Z"));
        let c = condition(&steady, &done, None, Some(3)).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Rotated"));
    }
}
