//! The contract between the PubSubKafka operator and its workers: everything both sides must
//! agree on, with light dependencies (no Kubernetes client, no PostgreSQL, no HTTP server).
//!
//! - [`config`]: the worker configuration the operator renders into each OrderConsumer's
//!   ConfigMap and the worker reads (`worker.json`), with its parts (Kafka connection, retry
//!   policy, handler, error classes);
//! - [`retry`]: backoff schedules and the retry-topic names both sides compute;
//! - [`duration`]: the `30s` / `5m` / `24h` durations of CRDs and flags;
//! - [`kafka`]: the Kafka connection flags and the idempotent producer settings;
//! - [`telemetry`]: logging and OTLP trace export set-up;
//! - [`metrics`]: the Prometheus text encoding of `/metrics`.
//!
//! The CRD types stay in the operator: the workers never read them, only the configuration the
//! operator renders from them.

pub mod config;
pub mod duration;
pub mod kafka;
pub mod metrics;
pub mod retry;
pub mod telemetry;
