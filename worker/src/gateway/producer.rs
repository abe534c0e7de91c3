//! The gateway's Kafka producer, replaced when it stops delivering.
//!
//! An idempotent producer can fail in two ways that no retry inside librdkafka mends: a fatal
//! error (its sequence numbers out of step with the broker's), or a wedge without any error.
//! The outbox relay met the second: its broker stopped while the producer was still asking for
//! its idempotence id, and after the broker came back the producer delivered nothing for two
//! minutes. In the gateway, such a producer would answer every order with a 503 while the pod
//! stayed live and ready.
//!
//! [`SharedProducer`] counts what each send came to. Once a whole delivery timeout has passed
//! with sends failing and none acknowledged, [`SharedProducer::watch`] starts a new producer
//! for later requests. That rule does not need to tell a wedged producer from a broker that
//! cannot acknowledge (down, or short of in-sync replicas): for the second, a new producer costs
//! one connection and the requests fail as they would have anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use tracing::{info, warn};

use crate::config::KafkaConnection;
use crate::kafka::{ProducerError, idempotent_producer};
use crate::metrics::{Metrics, ProducerReplacement as Replacement};

/// The producer requests publish with, and what their sends came to since it started.
pub struct SharedProducer {
    connection: KafkaConnection,
    delivery_timeout: Duration,
    current: RwLock<Arc<FutureProducer>>,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    metrics: Metrics,
}

/// What the sends of one window came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries {
    pub acknowledged: u64,
    pub failed: u64,
}

impl Deliveries {
    /// The sends counted since `earlier`.
    fn since(self, earlier: Deliveries) -> Deliveries {
        Deliveries {
            acknowledged: self.acknowledged - earlier.acknowledged,
            failed: self.failed - earlier.failed,
        }
    }
}

/// A send the broker never acknowledged.
fn unacknowledged(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
    )
}

/// Whether a producer whose window came to `window` should be replaced, and why.
pub fn verdict(fatal: bool, window: Deliveries) -> Option<Replacement> {
    if fatal {
        Some(Replacement::Fatal)
    } else if window.failed > 0 && window.acknowledged == 0 {
        Some(Replacement::Undelivered)
    } else {
        None
    }
}

impl SharedProducer {
    pub fn new(
        connection: KafkaConnection,
        delivery_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, ProducerError> {
        let producer = idempotent_producer(&connection, delivery_timeout)?;
        metrics.prime_producer_replacements();
        Ok(Self {
            connection,
            delivery_timeout,
            current: RwLock::new(Arc::new(producer)),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            metrics,
        })
    }

    /// The producer to send with now. A request keeps it until its send is answered, even if
    /// the producer is replaced meanwhile.
    pub fn current(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts one send's outcome: acknowledged, or never acknowledged (its delivery timeout
    /// passed, or the queue stayed full). A record refused for itself (too large, say) says
    /// nothing of the producer and is not counted.
    pub fn record(&self, sent: Result<(), &KafkaError>) {
        let counter = match sent {
            Ok(()) => &self.acknowledged,
            Err(e) if unacknowledged(e) => &self.failed,
            Err(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn deliveries(&self) -> Deliveries {
        Deliveries {
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Judges the producer every delivery timeout (5 s at least) and replaces it when
    /// [`verdict`] says so. A replaced producer is closed once the last request that holds it
    /// is answered, on a blocking thread: closing a client waits for its threads.
    pub async fn watch(self: Arc<Self>) -> ProducerError {
        let window = self.delivery_timeout.max(Duration::from_secs(5));
        let mut start = self.deliveries();
        let mut retired: Vec<Arc<FutureProducer>> = Vec::new();
        loop {
            tokio::time::sleep(window).await;
            let producer = self.current();
            let fatal = producer.client().fatal_error();
            let now = self.deliveries();
            let seen = now.since(start);
            start = now;
            if let Some(reason) = verdict(fatal.is_some(), seen) {
                match &fatal {
                    Some((code, message)) => warn!(
                        %code, %message,
                        "the Kafka producer failed for good: starting a new one"
                    ),
                    None => warn!(
                        failed = seen.failed,
                        window = ?window,
                        "the Kafka producer acknowledged none of its sends: starting a new one"
                    ),
                }
                let fresh = match idempotent_producer(&self.connection, self.delivery_timeout) {
                    Ok(fresh) => fresh,
                    Err(e) => return e,
                };
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
                    Arc::new(fresh),
                );
                retired.push(old);
                self.metrics.producer_replaced(reason);
                info!(
                    reason = reason.as_str(),
                    "a new Kafka producer serves requests"
                );
                // Sends since the replacement are the new producer's.
                start = self.deliveries();
            }
            drop(producer);
            let (idle, busy): (Vec<_>, Vec<_>) =
                retired.into_iter().partition(|p| Arc::strong_count(p) == 1);
            retired = busy;
            if !idle.is_empty() {
                tokio::task::spawn_blocking(move || drop(idle));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(acknowledged: u64, failed: u64) -> Deliveries {
        Deliveries {
            acknowledged,
            failed,
        }
    }

    #[test]
    fn a_window_without_an_acknowledgement_but_with_failures_replaces_the_producer() {
        assert_eq!(verdict(false, window(0, 3)), Some(Replacement::Undelivered));
    }

    #[test]
    fn an_acknowledgement_or_an_idle_window_keeps_the_producer() {
        assert_eq!(
            verdict(false, window(1, 500)),
            None,
            "one ack shows it works"
        );
        assert_eq!(
            verdict(false, window(0, 0)),
            None,
            "no traffic says nothing"
        );
        assert_eq!(verdict(false, window(20, 0)), None);
    }

    #[test]
    fn a_fatal_error_replaces_the_producer_whatever_it_delivered() {
        assert_eq!(verdict(true, window(9, 0)), Some(Replacement::Fatal));
        assert_eq!(verdict(true, window(0, 9)), Some(Replacement::Fatal));
    }

    #[test]
    fn only_sends_the_broker_never_acknowledged_count_as_failed() {
        let failed = |code| unacknowledged(&KafkaError::MessageProduction(code));
        assert!(failed(RDKafkaErrorCode::MessageTimedOut));
        assert!(failed(RDKafkaErrorCode::QueueFull));
        assert!(!failed(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!failed(RDKafkaErrorCode::TopicAuthorizationFailed));
    }

    #[test]
    fn a_window_counts_only_its_own_sends() {
        let earlier = window(10, 2);
        assert_eq!(window(10, 5).since(earlier), window(0, 3));
    }
}
