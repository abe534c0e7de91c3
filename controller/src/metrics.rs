//! The controller's Prometheus metrics, served on `/metrics`.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Metrics of every reconciler, labelled by kind.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciliations: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    kafka_up: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "pubsubkafka_controller_reconciliations_total",
                "Reconcile passes by kind and result (ok or error).",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "pubsubkafka_controller_reconcile_errors_total",
                "Failed reconcile passes by kind and condition reason.",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "pubsubkafka_controller_reconcile_duration_seconds",
                "Duration of a reconcile pass.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let kafka_up = IntGauge::new(
            "pubsubkafka_controller_kafka_up",
            "1 when the last Kafka admin request succeeded, 0 when Kafka was unavailable.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(kafka_up.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            kafka_up,
        }
    }

    /// Starts timing a reconcile pass of `kind`; record the result with [`ReconcileTimer::finish`].
    pub fn reconcile_timer(&self, kind: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn set_kafka_up(&self, up: bool) {
        self.kafka_up.set(i64::from(up));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        pubsubkafka_contract::metrics::encode(&self.registry)
    }
}

/// Records a reconcile pass's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Counts the pass as failed for `reason` (`None`: succeeded).
    pub fn finish(&self, failure: Option<&str>) {
        let result = if failure.is_some() { "error" } else { "ok" };
        self.metrics
            .reconciliations
            .with_label_values(&[self.kind, result])
            .inc();
        if let Some(reason) = failure {
            self.metrics
                .failures
                .with_label_values(&[self.kind, reason])
                .inc();
        }
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .with_label_values(&[self.kind])
            .observe(self.start.elapsed().as_secs_f64());
    }
}
