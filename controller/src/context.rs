//! What every reconciler shares: API and Kafka clients, the event recorder, metrics, settings
//! and per-object retry backoff.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use pubsubkafka_contract::config::SecurityProtocol;

use crate::crd::{KafkaAccessPolicy, KafkaTopic, OrderConsumer, OrderGateway};
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;
use crate::tenancy::{self, DefaultAccessPolicy, Rules};

/// Operator-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a converged resource is checked again (config drift, lost ACLs, lag).
    pub resync: Duration,
    /// Worker image when an OrderConsumer names none.
    pub worker_image: String,
    /// Image pull Secrets of every worker pod.
    pub worker_image_pull_secrets: Vec<String>,
    /// Bootstrap servers as worker pods reach them.
    pub worker_bootstrap_servers: String,
    pub worker_security_protocol: SecurityProtocol,
    /// The brokers' CA (PEM), handed to workers in their credentials Secret.
    pub kafka_ca_pem: Option<String>,
    /// OTLP endpoint rendered into worker.json (tracing off when none).
    pub worker_otlp_endpoint: Option<String>,
    /// The rules of a namespace that no KafkaAccessPolicy selects.
    pub default_access_policy: DefaultAccessPolicy,
}

/// A child object the operator server-side applies.
pub trait Applicable:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
{
}

impl<K> Applicable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
{
}

#[cfg(test)]
impl Settings {
    /// Settings for the pure functions' tests: the `pubsubkafka/worker:1` image, brokers at
    /// `kafka:9093` over SASL_SSL without a CA, no tracing, the open access policy.
    pub fn example() -> Self {
        Self {
            resync: Duration::from_secs(60),
            worker_image: "pubsubkafka/worker:1".into(),
            worker_image_pull_secrets: Vec::new(),
            worker_bootstrap_servers: "kafka:9093".into(),
            worker_security_protocol: SecurityProtocol::SaslSsl,
            kafka_ca_pem: None,
            worker_otlp_endpoint: None,
            default_access_policy: DefaultAccessPolicy::Open,
        }
    }
}

/// How long a reconcile waits for the caches' first list before it fails (and is retried).
pub const CACHES_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry delay after a transient failure, and the longest.
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Shared reconciler state.
pub struct Context {
    pub client: kube::Client,
    pub admin: KafkaAdmin,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    pub backoff: Backoff,
    /// Every KafkaTopic the operator sees (for conflicts and topic lookups).
    pub topics: Store<KafkaTopic>,
    /// Every OrderConsumer the operator sees (the topics and groups they own).
    pub consumers: Store<OrderConsumer>,
    /// Every OrderGateway in scope (an OrderConsumer of the same name may not share its
    /// principal).
    pub gateways: Store<OrderGateway>,
    /// Every KafkaAccessPolicy.
    pub policies: Store<KafkaAccessPolicy>,
    /// Every Namespace (their labels select policies).
    pub namespaces: Store<Namespace>,
    /// KafkaTopic versions whose status this process has replaced since.
    pub superseded: Superseded,
    /// Each autoscaled consumer's recent replica recommendations (scale-down stabilization).
    pub recommendations: Recommendations,
    /// What this process last applied to each child object.
    pub applied: Applied,
}

/// The child objects (Secret, ConfigMap, Deployment) this process applied, by
/// `kind/namespace/name`: the resourceVersion the apply left and a hash of what was applied.
/// A server-side apply that changes nothing is still an API write; with this, a pass at rest
/// applies only what changed since, on either side.
#[derive(Debug, Default)]
pub struct Applied(Mutex<HashMap<String, (String, String)>>);

impl Applied {
    /// True when `key` still has the `version` this process left, from applying `desired`.
    pub fn unchanged(&self, key: &str, version: Option<&str>, desired: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        version.is_some_and(|v| {
            map.get(key)
                .is_some_and(|(kept, hash)| kept == v && hash == desired)
        })
    }

    pub fn record(&self, key: &str, version: Option<String>, desired: String) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match version {
            Some(version) => map.insert(key.to_owned(), (version, desired)),
            None => map.remove(key),
        };
    }

    /// Forgets every object in `namespace` whose name is one of `names`.
    pub fn forget(&self, namespace: &str, names: &[&str]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|key, _| {
            let mut parts = key.splitn(3, '/');
            let (_, ns, name) = (parts.next(), parts.next(), parts.next());
            !(ns == Some(namespace) && name.is_some_and(|n| names.contains(&n)))
        });
    }
}

/// Lag-based replica recommendations by consumer (`namespace/name`), kept in memory like the
/// HPA's: in the status they would make every pass a write.
#[derive(Debug, Default)]
pub struct Recommendations(Mutex<HashMap<String, Vec<crate::consumer::plan::Recommendation>>>);

impl Recommendations {
    pub fn get(&self, key: &str) -> Vec<crate::consumer::plan::Recommendation> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set(&self, key: &str, history: Vec<crate::consumer::plan::Recommendation>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if history.is_empty() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), history);
        }
    }
}

/// Versions of objects whose status this process has replaced since: a reconcile handed such a
/// version (the cache not yet caught up with the write that followed) waits for the newer one
/// instead of acting on a status it already changed. Used by the KafkaTopic reconciler, whose
/// creation mark is followed by the status that records the topic: without this, the pass the
/// mark's own watch event starts wrote that status a second time (2.86 status writes per
/// resource at 10,000 KafkaTopics, against 2).
#[derive(Debug, Default)]
pub struct Superseded(Mutex<HashMap<String, String>>);

impl Superseded {
    /// Records that `uid`'s object at `version` has a status this process since replaced.
    pub fn record(&self, uid: &str, version: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_owned(), version);
    }

    /// True when `object` is a version whose status this process has replaced; forgets the
    /// record once the cache has moved past it.
    pub fn is_stale<K: Resource>(&self, object: &K) -> bool {
        let meta = object.meta();
        let Some(uid) = meta.uid.as_deref() else {
            return false;
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(uid) {
            Some(version) if Some(version) == meta.resource_version.as_ref() => true,
            Some(_) => {
                map.remove(uid);
                false
            }
            None => false,
        }
    }
}

impl Context {
    /// Waits until every store has listed its objects once: an ownership or policy decision
    /// made on a half-filled cache could hand out what another resource owns.
    pub async fn caches_ready(&self) -> Result<(), crate::error::Error> {
        let all = async {
            self.topics.wait_until_ready().await?;
            self.consumers.wait_until_ready().await?;
            self.gateways.wait_until_ready().await?;
            self.policies.wait_until_ready().await?;
            self.namespaces.wait_until_ready().await
        };
        match tokio::time::timeout(CACHES_READY_TIMEOUT, all).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(crate::error::Error::CachesNotReady),
        }
    }

    /// The tenancy rules of `namespace`, from its labels and the KafkaAccessPolicies.
    pub async fn access_rules(&self, namespace: &str) -> Result<Rules, crate::error::Error> {
        let labels = match self.namespaces.get(&ObjectRef::new(namespace)) {
            Some(ns) => ns.labels().clone(),
            // Just created: not in the cache yet.
            None => Api::<Namespace>::all(self.client.clone())
                .get(namespace)
                .await?
                .labels()
                .clone(),
        };
        let policies = self.policies.state();
        Ok(tenancy::rules(
            namespace,
            &labels,
            policies.iter().map(|p| p.as_ref()),
            self.settings.default_access_policy,
        ))
    }

    /// One reconcile of `object` of `kind` under its finalizer `name`, as the OrderConsumer and
    /// OrderGateway reconcilers run it: in a span naming the object, timed in the reconcile
    /// metrics, once the caches have listed; `reconcile` gets the finalizer's event (apply or
    /// clean up) and the object's namespaced API.
    pub async fn under_finalizer<K, F, Fut>(
        &self,
        kind: &'static str,
        name: &str,
        object: std::sync::Arc<K>,
        reconcile: F,
    ) -> Result<kube::runtime::controller::Action, crate::error::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        F: FnOnce(kube::runtime::finalizer::Event<K>, Api<K>) -> Fut,
        Fut: std::future::Future<
                Output = Result<kube::runtime::controller::Action, crate::error::Error>,
            >,
    {
        use crate::error::Error;
        use kube::runtime::finalizer;
        use tracing::Instrument;
        let namespace = object.namespace().unwrap_or_default();
        let span = tracing::info_span!(
            "reconcile",
            kind,
            namespace = %namespace,
            name = object.name_any()
        );
        async move {
            let timer = self.metrics.reconcile_timer(kind);
            if let Err(e) = self.caches_ready().await {
                timer.finish(Some(e.reason()));
                return Err(e);
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
            let result =
                finalizer::finalizer(&api, name, object, |event| reconcile(event, api.clone()))
                    .await
                    .map_err(|e| match e {
                        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
                        finalizer::Error::AddFinalizer(e)
                        | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
                        finalizer::Error::UnnamedObject => crate::error::SpecError::Unnamed.into(),
                        finalizer::Error::InvalidFinalizer => {
                            crate::error::SpecError::InvalidFinalizer.into()
                        }
                    });
            timer.finish(result.as_ref().err().map(Error::reason));
            result
        }
        .instrument(span)
        .await
    }

    /// Writes `status` to `object` with server-side apply when a user would see a change (the
    /// conditions compared without their times), and records a Warning event for each
    /// condition of `warn_when` that turns to the status given there or changes its reason
    /// while in it. A status that moves nothing writes nothing, whatever the resync. Returns
    /// the object's resourceVersion after the write (`None` when nothing needed writing).
    pub async fn write_status<K, S>(
        &self,
        object: &K,
        old: Option<&S>,
        status: &S,
        warn_when: &[(&str, &str)],
    ) -> Result<Option<String>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
        S: crate::crd::conditions::HasConditions + Default,
    {
        use crate::crd::conditions;
        let default = S::default();
        let old = old.unwrap_or(&default);
        if old.without_conditions() == status.without_conditions()
            && conditions::same(old.conditions(), status.conditions())
        {
            return Ok(None);
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let written = Api::<K>::namespaced(
            self.client.clone(),
            object.meta().namespace.as_deref().unwrap_or_default(),
        )
        .patch_status(
            &object.name_any(),
            &kube::api::PatchParams::apply(crate::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(patch),
        )
        .await?;
        for (type_, warning) in warn_when {
            let find = |all: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
                all.iter().find(|c| c.type_ == *type_).cloned()
            };
            let before = find(old.conditions());
            if let Some(now) = find(status.conditions())
                && now.status == *warning
                && before.is_none_or(|b| b.status != now.status || b.reason != now.reason)
            {
                self.event(
                    object,
                    kube::runtime::events::EventType::Warning,
                    &now.reason,
                    now.message.clone(),
                )
                .await;
            }
        }
        Ok(written.meta().resource_version.clone())
    }

    /// Server-side applies `object` as `name`, unless this process applied the same content
    /// last and nobody changed the object since (`current_version`, the resourceVersion read
    /// this pass, is still the one that apply left): an apply that changes nothing is still an
    /// API write, at every resync. Returns the applied object, or None when there was nothing
    /// to do.
    pub async fn apply_if_changed<K>(
        &self,
        api: &Api<K>,
        name: &str,
        current_version: Option<String>,
        object: &K,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Applicable,
    {
        let key = format!(
            "{}/{}/{}",
            K::kind(&()),
            object.meta().namespace.as_deref().unwrap_or_default(),
            name
        );
        let desired = crate::consumer::plan::config_hash(
            &serde_json::to_string(object).map_err(kube::Error::SerdeError)?,
        );
        if self
            .applied
            .unchanged(&key, current_version.as_deref(), &desired)
        {
            return Ok(None);
        }
        let applied = api
            .patch(
                name,
                &kube::api::PatchParams::apply(crate::FIELD_MANAGER).force(),
                &kube::api::Patch::Apply(object),
            )
            .await?;
        self.applied
            .record(&key, applied.meta().resource_version.clone(), desired);
        Ok(Some(applied))
    }

    /// Applies `desired` as [`Self::apply_if_changed`] does, over `before`, the object as this
    /// pass read it; returns the object as it now is (`before` when nothing was applied).
    pub async fn apply_or_keep<K>(
        &self,
        api: &Api<K>,
        before: Option<K>,
        desired: &K,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Applicable,
    {
        let current = before
            .as_ref()
            .and_then(|o| o.meta().resource_version.clone());
        let name = desired.meta().name.as_deref().unwrap_or_default();
        Ok(self
            .apply_if_changed(api, name, current, desired)
            .await?
            .or(before))
    }

    /// When to try `object` again after `error`: backing off on transient failures, at the
    /// resync otherwise (a spec that must change, or a dependency to wait for).
    pub fn retry_after<K>(&self, object: &K, error: &crate::error::Error) -> Action
    where
        K: Resource<DynamicType = ()>,
    {
        if error.is_transient() {
            let delay = self.backoff.next(&object_key(object));
            tracing::warn!(error = %error, retry_in = ?delay, "transient failure, backing off");
            Action::requeue(delay)
        } else {
            Action::requeue(self.settings.resync)
        }
    }
}

/// The resourceVersion of object `name`, `None` when it does not exist: what
/// [`Context::apply_if_changed`] compares, read without the object's content.
pub async fn resource_version<K>(api: &Api<K>, name: &str) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api
        .get_metadata_opt(name)
        .await?
        .and_then(|m| m.metadata.resource_version))
}

/// The API of a namespaced kind in the operator's scope: one namespace (`--watch-namespace`),
/// or all of them.
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `Kind/namespace/name`: the backoff key of an object.
pub fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Exponential retry delays per object: 1 s, 2 s, 4 s ... capped, reset on success.
#[derive(Debug)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX)
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: Mutex::default(),
            base,
            max,
        }
    }

    /// The delay before retrying `key` after one more failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        let delay = self.base.saturating_mul(1u32 << (*count).min(16));
        *count = count.saturating_add(1);
        delay.min(self.max)
    }

    /// Forgets `key`'s failures.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| backoff.next("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(
            backoff.next("b").as_secs(),
            1,
            "objects back off independently"
        );
        backoff.reset("a");
        assert_eq!(backoff.next("a").as_secs(), 1);
    }
}
