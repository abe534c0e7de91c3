//! The transactional outbox: the gateway writes an accepted event and its outbox row in one
//! PostgreSQL transaction; `outbox-relay` publishes pending rows, marks them sent, and deletes
//! sent rows once they are older than its retention (`--retention`, 24 hours by default).
//!
//! Several relays can run at once. Each claims rows with `FOR UPDATE SKIP LOCKED`, and takes a
//! transaction-scoped advisory lock per key, so all pending events of one key (one order) are
//! published by a single relay, in id order. A relay killed mid-batch loses nothing: its
//! transaction rolls back and the rows are published again (duplicates, which the idempotent
//! consumer absorbs).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::{info, warn};

use crate::http::Health;
use crate::kafka::{KafkaArgs, ProducerError, idempotent_producer};
use crate::metrics::{Metrics, ProducerReplacement};
use crate::pg::PoolSetupError;
use crate::{duration, retry};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE gateway_events (
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        content_type TEXT NOT NULL,
        event BYTEA NOT NULL,
        accepted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (topic, key)
    );
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        payload BYTEA NOT NULL,
        content_type TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        traceparent TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        sent_at TIMESTAMPTZ
    );
    CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;",
    // The relay purges published rows by age.
    "CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;",
];

const MIGRATION_LOCK: i64 = 0x5053_4b5f_4f55_5442;

/// Why an outbox write, a relay pass or the relay's start failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("reading {}: {source}", path.display())]
    DatabaseUrlFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setup(#[from] PoolSetupError),
    /// No connection from the pool: the database is unreachable or saturated.
    #[error("PostgreSQL: {0}")]
    Unavailable(#[source] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// The broker did not acknowledge part of a batch: all of it stays pending.
    #[error("{failed} of {total} records were not acknowledged ({reason})")]
    NotAcknowledged {
        failed: usize,
        total: usize,
        /// The first failure's error.
        reason: String,
    },
}

pub struct Outbox {
    pool: Pool,
}

impl Outbox {
    pub fn new(url: &str) -> Result<Self, OutboxError> {
        Ok(Self {
            pool: crate::pg::pool(url, 32)?,
        })
    }

    /// The outbox on the database whose URL `file` holds (a mounted Secret key).
    pub fn open(file: &Path) -> Result<Self, OutboxError> {
        let url = std::fs::read_to_string(file).map_err(|source| OutboxError::DatabaseUrlFile {
            path: file.to_owned(),
            source,
        })?;
        Self::new(url.trim())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, OutboxError> {
        self.pool.get().await.map_err(OutboxError::Unavailable)
    }

    /// Creates or migrates the outbox schema.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let mut client = self.client().await?;
        crate::pg::migrate(
            &mut client,
            "pubsubkafka_outbox_migrations",
            MIGRATION_LOCK,
            MIGRATIONS,
        )
        .await?;
        Ok(())
    }

    /// Deletes the rows published more than `retention` ago, a chunk per statement. Returns
    /// how many went.
    pub async fn purge(&self, retention: Duration) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        let mut deleted = 0;
        loop {
            let n = client
                .execute(PURGE, &[&retention.as_secs_f64(), &PURGE_CHUNK])
                .await?;
            deleted += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Stores the event (the record value in its encoding) and its outbox row in one
    /// transaction.
    pub async fn append(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        content_type: &str,
        correlation_id: &str,
        traceparent: &str,
    ) -> Result<(), OutboxError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO gateway_events (topic, key, content_type, event) VALUES ($1, $2, $3, $4)
             ON CONFLICT (topic, key) DO NOTHING",
            &[&topic, &key, &content_type, &value],
        )
        .await?;
        tx.execute(
            "INSERT INTO outbox (topic, key, payload, content_type, correlation_id, traceparent)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &topic,
                &key,
                &value,
                &content_type,
                &correlation_id,
                &traceparent,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `pubsubkafka-worker outbox-relay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// File holding the PostgreSQL URL of the gateway's database.
    #[arg(long, env = "PSK_DATABASE_URL_FILE")]
    pub database_url_file: PathBuf,
    /// Publish only the rows of these topics (comma-separated; all when absent), so that
    /// gateways sharing one database each relay their own events with their own principal.
    #[arg(long, env = "PSK_RELAY_TOPICS", value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Rows published per transaction.
    #[arg(long, env = "PSK_RELAY_BATCH", default_value_t = 500)]
    pub batch: i64,
    /// Wait between polls when nothing is pending.
    #[arg(long, env = "PSK_RELAY_IDLE", default_value = "200ms", value_parser = duration::parse)]
    pub idle: Duration,
    /// How long published rows stay in the outbox (to look into) before the relay deletes
    /// them. The accepted events themselves stay in `gateway_events`.
    #[arg(long, env = "PSK_OUTBOX_RETENTION", default_value = "24h", value_parser = duration::parse)]
    pub retention: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PSK_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: std::net::SocketAddr,
}

/// How often the relay deletes published rows older than the retention.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per statement: short transactions that never hold the table for long.
const PURGE_CHUNK: i64 = 10_000;
const PURGE: &str = "DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1)
    ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

const CLAIM: &str =
    "SELECT id, topic, key, payload, content_type, correlation_id, traceparent FROM outbox
    WHERE sent_at IS NULL AND (cardinality($2::text[]) = 0 OR topic = ANY($2))
    AND pg_try_advisory_xact_lock(hashtext(key))
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Passes in a row that deliver none of their records after which the relay replaces its
/// producer. One is 30 s (the delivery timeout) without a single acknowledgement; replacing a
/// producer whose broker is really down costs only a new connection, and its rows stay pending.
const REPLACE_AFTER_UNACKNOWLEDGED_PASSES: u32 = 1;

/// Publishes pending outbox rows until `shutdown`.
pub async fn relay(
    args: RelayArgs,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), OutboxError> {
    let outbox = Outbox::open(&args.database_url_file)?;
    let connection = args.kafka.connection();
    let mut producer = idempotent_producer(&connection, Duration::from_secs(30))?;
    metrics.prime_producer_replacements();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0;
    // The relay may start before the gateway created the schema.
    while let Err(e) = outbox.migrate().await {
        warn!(error = %e, "the outbox database is not reachable yet");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(retry::outage_delay(failures)) => failures += 1,
        }
    }
    failures = 0;
    // Passes in a row whose records the producer all failed to deliver.
    let mut unacknowledged = 0;
    let mut next_purge = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_purge {
            next_purge += PURGE_EVERY;
            match outbox.purge(args.retention).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(deleted = n, retention = ?args.retention, "purged published outbox rows")
                }
                // Only housekeeping: the next purge tries again.
                Err(e) => warn!(error = %e, "could not purge published outbox rows"),
            }
        }
        // A fatal error (the idempotent producer's sequence out of step with the broker's,
        // after a broker restart for instance) fails every later send: the rows are published
        // again by a new producer.
        if let Some((code, reason)) = producer.client().fatal_error() {
            warn!(%code, %reason, "the Kafka producer failed for good: starting a new one");
            producer = idempotent_producer(&connection, Duration::from_secs(30))?;
            metrics.producer_replaced(ProducerReplacement::Fatal);
        }
        // A producer can also stay wedged without a fatal error. One whose broker stopped while
        // it was still asking for its idempotence id delivered nothing for the two minutes
        // after the broker was back (the outbox gateway's broker fault test in `make test`;
        // reproduced in 1 of 8 rounds of stopping a fresh broker at that moment, where a new
        // producer published every row 0.8 s after it started). A new one connects and asks
        // afresh; the rows the old one did not publish are still pending.
        if unacknowledged >= REPLACE_AFTER_UNACKNOWLEDGED_PASSES {
            warn!(
                passes = unacknowledged,
                "the Kafka producer delivered none of its last pass: starting a new one"
            );
            producer = idempotent_producer(&connection, Duration::from_secs(30))?;
            unacknowledged = 0;
            metrics.producer_replaced(ProducerReplacement::Undelivered);
        }
        let published = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            result = relay_once(&outbox, &producer, &metrics, args.batch, &args.topics) => result,
        };
        match published {
            Ok(0) => {
                health.set_started(true);
                failures = 0;
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(args.idle) => {}
                }
            }
            Ok(n) => {
                health.set_started(true);
                failures = 0;
                unacknowledged = 0;
                info!(published = n, "relayed outbox rows");
            }
            Err(e) => {
                health.set_started(false);
                match &e {
                    OutboxError::NotAcknowledged { failed, total, .. } if failed == total => {
                        unacknowledged += 1
                    }
                    OutboxError::NotAcknowledged { .. } => unacknowledged = 0,
                    // The database failed: says nothing of the producer.
                    _ => {}
                }
                warn!(error = %e, "relay pass failed; its rows stay pending");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(retry::outage_delay(failures)) => failures += 1,
                }
            }
        }
    }
}

/// One transaction: claim, publish, mark sent. Returns how many rows were published.
async fn relay_once(
    outbox: &Outbox,
    producer: &FutureProducer,
    metrics: &Metrics,
    batch: i64,
    topics: &[String],
) -> Result<usize, OutboxError> {
    let mut client = outbox.client().await?;
    let tx = client.transaction().await?;
    let rows = tx.query(CLAIM, &[&batch, &topics]).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut sends = Vec::with_capacity(rows.len());
    let mut spans = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.get(0);
        let topic: &str = row.get(1);
        let key: &str = row.get(2);
        let payload: &[u8] = row.get(3);
        let content_type: &str = row.get(4);
        let correlation: &str = row.get(5);
        let traceparent: &str = row.get(6);
        ids.push(id);
        // The relay's publish continues the trace the gateway stored with the row; the record
        // names the relay's span, so the consumer's span nests under it.
        let span = tracing::info_span!(
            "relay",
            otel.name = %format_args!("{topic} publish"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.kafka.message.key = key,
            outbox.id = id,
            correlation_id = correlation,
            otel.status_code = tracing::field::Empty,
        );
        let stored = traceparent.to_owned();
        let mut carrier = rdkafka::message::OwnedHeaders::new();
        carrier = carrier.insert(rdkafka::message::Header {
            key: crate::headers::TRACEPARENT,
            value: Some(stored.as_str()),
        });
        crate::tracing_ctx::set_parent_from_headers(&span, Some(&carrier));
        let traceparent = crate::tracing_ctx::traceparent(&span).unwrap_or(stored);
        spans.push(span);
        let record_headers = crate::gateway::event_headers(content_type, correlation, &traceparent);
        // Sent in id order on one idempotent producer: one key's events stay in order.
        sends.push(
            producer.send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(record_headers),
                Duration::from_secs(30),
            ),
        );
    }
    let results = futures::future::join_all(sends).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    for ((row, result), span) in rows.iter().zip(&results).zip(&spans) {
        let topic: &str = row.get(1);
        let outcome = if result.is_ok() { "acked" } else { "failed" };
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        metrics
            .producer_messages
            .with_label_values(&[topic, outcome])
            .inc();
    }
    if let Some(Err((e, _))) = results.iter().find(|r| r.is_err()) {
        // Rolled back on drop: every row of the batch stays pending and is published again.
        return Err(OutboxError::NotAcknowledged {
            failed,
            total: rows.len(),
            reason: e.to_string(),
        });
    }
    tx.execute(
        "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.commit().await?;
    Ok(ids.len())
}
