//! PubSubKafka's data plane: the retry/DLQ consumer runtime, its handlers, the gateway, the
//! outbox relay and dead-letter replay.

pub mod config;
pub mod consumer;
pub mod duration;
pub mod gateway;
pub mod handler;
pub mod headers;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod order;
pub mod outbox;
pub mod pg;
pub mod proto;
pub mod record;
pub mod replay;
pub mod retry;
pub mod schedule;
pub mod telemetry;
pub mod tracing_ctx;
