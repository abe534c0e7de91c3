//! Leader election on a `coordination.k8s.io/v1` Lease, so two or more operator replicas are
//! safe: only the holder reconciles. A replica takes the Lease when it is free or expired, renews
//! it every few seconds, and stops (the process exits and Kubernetes restarts it as a candidate)
//! if it cannot renew before the Lease expires. On a clean shutdown the holder releases the
//! Lease ([`release`]); a standby watches the Lease and takes it as soon as it is free, instead
//! of at its next try or after the expiry.
//!
//! Leadership decides who reconciles, never readiness: a standby is Ready too (the
//! controller-runtime convention), so a rolling update or `replicas: 2` can become available.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{debug, info, warn};

/// How long a Lease holds without renewal: a replica that died is replaced after this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the operator's leader renews its Lease: well within [`LEASE_DURATION`], so a
/// slow API server call or two do not lose it.
pub const LEASE_RENEW: Duration = Duration::from_secs(4);

/// Lease timing: held for `duration`, renewed every `renew`.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

impl Election {
    /// An identity when no pod name is given: host and process id.
    pub fn identity() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}-{}", std::process::id())
    }
}

/// Whether a lease held by `holder`, last renewed at `renewed`, can be taken by `me` at `now`.
pub fn can_take(
    holder: Option<&str>,
    renewed: Option<jiff::Timestamp>,
    duration: Duration,
    me: &str,
    now: jiff::Timestamp,
) -> bool {
    match (holder, renewed) {
        (None, _) | (Some(""), _) => true,
        (Some(h), _) if h == me => true,
        (Some(_), None) => true,
        (Some(_), Some(renewed)) => {
            let expiry = renewed + jiff::SignedDuration::try_from(duration).unwrap_or_default();
            expiry < now
        }
    }
}

/// Blocks until this replica holds the Lease: it tries every `renew`, and at once when a watch
/// on the Lease shows it released or deleted (a leader's clean shutdown hands over in
/// milliseconds). Without permission to watch, the timer alone still gets there.
pub async fn acquire(api: &Api<Lease>, election: &Election) {
    let changes = watcher::watch_object(api.clone(), &election.name).default_backoff();
    let mut changes = std::pin::pin!(changes);
    loop {
        match try_take(api, election).await {
            Ok(true) => {
                info!(lease = %election.name, identity = %election.identity, "became the leader");
                return;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election: could not read or write the Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(election.renew) => {}
            _ = freed(&mut changes) => debug!(lease = %election.name, "the Lease was released"),
        }
    }
}

/// Resolves when the watched Lease is seen without a holder, or gone. Never resolves once the
/// watch has ended.
async fn freed<S>(changes: &mut S)
where
    S: Stream<Item = Result<Option<Lease>, watcher::Error>> + Unpin,
{
    while let Some(change) = changes.next().await {
        match change {
            Ok(lease) if is_free(lease.as_ref()) => return,
            Ok(_) => {}
            Err(e) => debug!(error = %e, "leader election: watching the Lease failed"),
        }
    }
    std::future::pending().await
}

/// Whether a Lease as read has no holder (released, never held, or deleted).
fn is_free(lease: Option<&Lease>) -> bool {
    let holder = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.as_deref());
    holder.is_none_or(str::is_empty)
}

/// Renews the Lease until renewing fails for longer than the lease lasts; then returns (the
/// caller stops reconciling).
pub async fn hold(api: &Api<Lease>, election: &Election) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(election.renew).await;
        match try_take(api, election).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                warn!("leader election: another replica holds the Lease");
                return;
            }
            Err(e) => {
                warn!(error = %e, "leader election: renewing the Lease failed");
                if last_renewed.elapsed() > election.duration {
                    return;
                }
            }
        }
    }
}

/// Gives the Lease up if this replica holds it: no holder, a one-second duration (as
/// client-go's `ReleaseOnCancel` leaves it). Returns whether it was ours to release.
pub async fn release(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        return Ok(false);
    };
    let current = lease.spec.clone().unwrap_or_default();
    if current.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return Ok(false);
    }
    lease.spec = Some(LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(jiff::Timestamp::now())),
        ..current
    });
    // Compare-and-swap on the resourceVersion: never clear a successor's hold.
    match api
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            info!(lease = %election.name, identity = %election.identity, "released the Lease");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes or renews the Lease if allowed; false when another live holder has it.
async fn try_take(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let spec = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(election.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&election.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(election.name.clone()),
                    namespace: Some(election.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(None, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let holder = current.holder_identity.as_deref();
            let renewed = current.renew_time.as_ref().map(|t| t.0);
            if !can_take(holder, renewed, election.duration, &election.identity, now) {
                return Ok(false);
            }
            let ours = holder == Some(election.identity.as_str());
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
            let acquired = if ours {
                current.acquire_time.clone()
            } else {
                None
            };
            lease.spec = Some(spec(acquired, transitions));
            // The resourceVersion in `lease` makes this a compare-and-swap.
            match api
                .replace(&election.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_when_free_ours_or_expired() {
        let now: jiff::Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let d = Duration::from_secs(15);
        let at = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        assert!(can_take(None, None, d, "a", now));
        assert!(can_take(Some(""), None, d, "a", now));
        assert!(
            can_take(Some("a"), at("2026-01-01T00:00:29Z"), d, "a", now),
            "renewing our own"
        );
        assert!(
            !can_take(Some("b"), at("2026-01-01T00:00:20Z"), d, "a", now),
            "b is alive"
        );
        assert!(
            can_take(Some("b"), at("2026-01-01T00:00:10Z"), d, "a", now),
            "b expired"
        );
    }

    #[test]
    fn a_lease_is_free_without_a_holder_or_when_gone() {
        let held = |holder: Option<&str>| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert!(is_free(None), "deleted");
        assert!(is_free(Some(&Lease::default())), "no spec");
        assert!(is_free(Some(&held(None))), "released");
        assert!(is_free(Some(&held(Some("")))), "released by an old client");
        assert!(!is_free(Some(&held(Some("b")))));
    }
}
