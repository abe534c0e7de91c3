//! The event store: orders in PostgreSQL, keyed on `order_id` so a redelivered order is stored
//! once. The schema is created or migrated at start-up under an advisory lock, so replicas
//! starting together do not race.

use deadpool_postgres::Pool;

use super::{Delivery, HandlerError, with_causes};
use crate::config::ErrorClass;

/// Ordered schema migrations; the index + 1 is the version.
const MIGRATIONS: &[&str] = &["CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        total NUMERIC(18, 4) NOT NULL,
        currency TEXT NOT NULL,
        item_count INTEGER NOT NULL,
        event JSONB NOT NULL,
        correlation_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        source_topic TEXT NOT NULL,
        source_partition INTEGER NOT NULL,
        source_offset BIGINT NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX orders_customer_id ON orders (customer_id);"];

/// Arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x5053_4b5f_4d49_4752;

const INSERT: &str =
    "INSERT INTO orders (order_id, customer_id, total, currency, item_count, event,
        correlation_id, trace_id, source_topic, source_partition, source_offset)
    SELECT u.order_id, u.customer_id, u.total::NUMERIC, u.currency, u.item_count, u.event::JSONB,
        u.correlation_id, u.trace_id, u.source_topic, u.source_partition, u.source_offset
    FROM UNNEST($1::TEXT[], $2::TEXT[], $3::FLOAT8[], $4::TEXT[], $5::INT4[], $6::TEXT[],
        $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::INT4[], $11::INT8[])
        AS u(order_id, customer_id, total, currency, item_count, event, correlation_id,
             trace_id, source_topic, source_partition, source_offset)
    ON CONFLICT (order_id) DO NOTHING";

pub struct EventStore {
    pool: Pool,
}

impl EventStore {
    /// A pool on `url` (`postgres://...`); connects lazily.
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            pool: crate::pg::pool(url, 16)?,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, HandlerError> {
        self.pool
            .get()
            .await
            .map_err(|e| HandlerError::Unavailable(format!("PostgreSQL: {}", with_causes(&e))))
    }

    /// Brings the schema to the latest version.
    pub async fn migrate(&self) -> Result<(), HandlerError> {
        let mut client = self.client().await?;
        crate::pg::migrate(
            &mut client,
            "pubsubkafka_schema_migrations",
            MIGRATION_LOCK,
            MIGRATIONS,
        )
        .await
        .map_err(classify)
    }

    /// Stores `deliveries` in one statement; orders already stored are left as they are.
    pub async fn store(&self, deliveries: &[Delivery<'_>]) -> Result<(), HandlerError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let n = deliveries.len();
        let mut order_ids = Vec::with_capacity(n);
        let mut customers = Vec::with_capacity(n);
        let mut totals = Vec::with_capacity(n);
        let mut currencies = Vec::with_capacity(n);
        let mut item_counts = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut correlations = Vec::with_capacity(n);
        let mut traces = Vec::with_capacity(n);
        let mut topics = Vec::with_capacity(n);
        let mut partitions = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n);
        for d in deliveries {
            let Some(e) = d.event else {
                return Err(HandlerError::Failed {
                    class: ErrorClass::Deserialization,
                    message: "the event store takes order events only".into(),
                });
            };
            order_ids.push(e.order_id.as_str());
            customers.push(e.customer_info.customer_id.as_str());
            totals.push(e.total());
            currencies.push(e.items.first().map_or("", |i| i.currency.as_str()));
            item_counts.push(e.items.len() as i32);
            events.push(serde_json::to_string(e).expect("an order event serializes"));
            correlations.push(e.metadata.correlation_id.as_str());
            traces.push(e.metadata.trace_id.as_str());
            topics.push(d.topic);
            partitions.push(d.partition);
            offsets.push(d.offset);
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(INSERT).await.map_err(classify)?;
        client
            .execute(
                &statement,
                &[
                    &order_ids,
                    &customers,
                    &totals,
                    &currencies,
                    &item_counts,
                    &events,
                    &correlations,
                    &traces,
                    &topics,
                    &partitions,
                    &offsets,
                ],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Connection trouble is an outage; anything the server refuses is a record failure.
fn classify(e: tokio_postgres::Error) -> HandlerError {
    let outage = e.is_closed()
        || e.as_db_error().is_none_or(|db| {
            let code = db.code().code();
            // 08: connection exception; 57P0x: shutdown in progress; 53300: too many
            // connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        });
    if outage {
        HandlerError::Unavailable(format!("PostgreSQL: {}", with_causes(&e)))
    } else {
        HandlerError::Failed {
            class: ErrorClass::Transient,
            message: format!("PostgreSQL refused the insert: {}", with_causes(&e)),
        }
    }
}
