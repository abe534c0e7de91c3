//! PubSubKafka's data plane: the retry/DLQ consumer runtime, its handlers, the gateway, the
//! outbox relay and dead-letter replay.
//!
//! What the operator and the workers share (the worker configuration, retry policy, durations,
//! Kafka settings, telemetry) lives in the `pubsubkafka-contract` crate; its modules are
//! re-exported here under their usual names.

pub use pubsubkafka_contract::{config, duration, kafka, retry, telemetry};

pub mod consumer;
pub mod gateway;
pub mod handler;
pub mod headers;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod order;
pub mod outbox;
pub mod pg;
pub mod record;
pub mod replay;
pub mod schedule;
pub mod tracing_ctx;
