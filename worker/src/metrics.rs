//! The worker's Prometheus metrics, with the seed architecture's names so its dashboards and
//! alerts apply as they are.

use crate::config::ErrorClass;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// kafka_consumer_lag{topic,partition}: records behind the high watermark.
    pub consumer_lag: IntGaugeVec,
    /// kafka_dlq_messages_total{topic,error_class}: records published to a dead-letter topic.
    pub dlq_messages: IntCounterVec,
    /// kafka_processing_duration_seconds{topic}: from first attempt to final outcome.
    pub processing_duration: HistogramVec,
    /// kafka_producer_messages_total{topic,outcome}: this process's own produces.
    pub producer_messages: IntCounterVec,
    /// kafka_consumer_records_total{topic,outcome}: handled or dead_lettered.
    pub records: IntCounterVec,
    /// kafka_consumer_retries_total{topic,error_class}: handler attempts that will be retried.
    pub retries: IntCounterVec,
    /// kafka_consumer_duplicates_total{topic}: redelivered records the event store already
    /// held with the same content (a no-op by design, counted to be seen).
    pub duplicates: IntCounterVec,
    /// kafka_consumer_parked_records{topic,partition}: records waiting behind an earlier record
    /// of their key (retrying in place or in a retry topic).
    pub parked_records: IntGaugeVec,
    /// pubsubkafka_worker_sink_up: 0 while the handler's sink is unreachable.
    pub sink_up: IntGauge,
    /// http_request_duration_seconds{route,status}: the gateway's request latency.
    pub request_duration: HistogramVec,
    /// pubsubkafka_producer_replacements_total{reason}: producers the gateway or the outbox
    /// relay closed and started afresh (fatal, undelivered).
    pub producer_replacements: IntCounterVec,
}

/// Why a Kafka producer was closed and a new one started (the `reason` label of
/// `pubsubkafka_producer_replacements_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerReplacement {
    /// librdkafka raised a fatal error: every later send would fail.
    Fatal,
    /// A whole delivery timeout in which sends failed and none was acknowledged.
    Undelivered,
}

impl ProducerReplacement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Undelivered => "undelivered",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "kafka_consumer_lag",
                "Records behind the partition's high watermark.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let dlq_messages = IntCounterVec::new(
            Opts::new(
                "kafka_dlq_messages_total",
                "Records published to a dead-letter topic.",
            ),
            &["topic", "error_class"],
        )
        .expect("valid metric");
        let processing_duration = HistogramVec::new(
            HistogramOpts::new(
                "kafka_processing_duration_seconds",
                "Time from a record's first attempt to its final outcome (retries included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["topic"],
        )
        .expect("valid metric");
        let producer_messages = IntCounterVec::new(
            Opts::new(
                "kafka_producer_messages_total",
                "Records this process produced, by outcome.",
            ),
            &["topic", "outcome"],
        )
        .expect("valid metric");
        let records = IntCounterVec::new(
            Opts::new(
                "kafka_consumer_records_total",
                "Consumed records by final outcome.",
            ),
            &["topic", "outcome"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "kafka_consumer_retries_total",
                "Handler attempts that failed and will be retried.",
            ),
            &["topic", "error_class"],
        )
        .expect("valid metric");
        let duplicates = IntCounterVec::new(
            Opts::new(
                "kafka_consumer_duplicates_total",
                "Redelivered records already stored with the same content (a no-op).",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let parked_records = IntGaugeVec::new(
            Opts::new(
                "kafka_consumer_parked_records",
                "Records waiting behind an earlier record of their key that is retrying.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let sink_up = IntGauge::new(
            "pubsubkafka_worker_sink_up",
            "1 while the handler's sink answers, 0 during an outage.",
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Gateway request latency.")
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
            &["route", "status"],
        )
        .expect("valid metric");
        let producer_replacements = IntCounterVec::new(
            Opts::new(
                "pubsubkafka_producer_replacements_total",
                "Kafka producers replaced: fatal (a fatal librdkafka error) or undelivered (a \
                 delivery timeout without one acknowledgement).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        sink_up.set(1);
        for c in [
            Box::new(consumer_lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dlq_messages.clone()),
            Box::new(processing_duration.clone()),
            Box::new(producer_messages.clone()),
            Box::new(records.clone()),
            Box::new(retries.clone()),
            Box::new(duplicates.clone()),
            Box::new(parked_records.clone()),
            Box::new(sink_up.clone()),
            Box::new(request_duration.clone()),
            Box::new(producer_replacements.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            consumer_lag,
            dlq_messages,
            processing_duration,
            producer_messages,
            records,
            retries,
            duplicates,
            parked_records,
            sink_up,
            request_duration,
            producer_replacements,
        }
    }

    /// Creates both replacement series at 0, so that the first replacement shows as an increase.
    pub fn prime_producer_replacements(&self) {
        for reason in [ProducerReplacement::Fatal, ProducerReplacement::Undelivered] {
            self.producer_replacements
                .with_label_values(&[reason.as_str()])
                .inc_by(0);
        }
    }

    pub fn producer_replaced(&self, reason: ProducerReplacement) {
        self.producer_replacements
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Creates the consumer's counter series at 0 before anything happens. A counter series that
    /// first appears already at 1 shows no `increase()` in Prometheus, so without this the first
    /// dead letters of a worker would never fire `KafkaDeadLettersPublished`.
    pub fn prime_consumer(&self, source_topic: &str, dead_letter_topic: &str) {
        for class in [
            ErrorClass::Deserialization,
            ErrorClass::Validation,
            ErrorClass::Rejected,
            ErrorClass::Conflict,
            ErrorClass::Transient,
        ] {
            self.dlq_messages
                .with_label_values(&[dead_letter_topic, class.as_str()])
                .inc_by(0);
            self.retries
                .with_label_values(&[source_topic, class.as_str()])
                .inc_by(0);
        }
        self.duplicates.with_label_values(&[source_topic]).inc_by(0);
        for outcome in ["handled", "dead_lettered"] {
            self.records
                .with_label_values(&[source_topic, outcome])
                .inc_by(0);
        }
        self.producer_messages
            .with_label_values(&[dead_letter_topic, "acked"])
            .inc_by(0);
        // Observed only once a record finished; the histogram's series exist from the start.
        let _ = self.processing_duration.with_label_values(&[source_topic]);
    }

    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

pub use pubsubkafka_contract::metrics::encode;
