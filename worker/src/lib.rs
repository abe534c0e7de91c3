//! PubSubKafka's data plane: the retry/DLQ consumer runtime, its handlers, the gateway, the
//! outbox relay and dead-letter replay.

pub mod config;
