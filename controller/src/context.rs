//! What every reconciler shares: API and Kafka clients, the event recorder, metrics, settings
//! and per-object retry backoff.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use pubsubkafka_worker::config::SecurityProtocol;

use crate::crd::KafkaTopic;
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;

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
}

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
}

impl Context {
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
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
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
