//! The event store: orders in PostgreSQL, keyed on `order_id` so a redelivered order is stored
//! once. A different event with a stored `order_id` is a conflict, reported (never dropped):
//! the consumer dead-letters it with class `Conflict`. The schema is created or migrated at start-up under an advisory lock, so replicas
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

/// Inserts a batch and says, for each record in batch order, whether it was stored, and the
/// SHA-256 of the stored and of the incoming event (as PostgreSQL's canonical JSONB text, so
/// a JSON and a Protobuf encoding of one order hash the same).
///
/// The INSERT's own rows are invisible to the rest of the statement: `stored` is what was
/// there before (a redelivery or a conflict), `winner` the record of this batch that took the
/// order_id (the first of the batch, by `ORDER BY i`). A record with neither lost to another
/// worker's insert of the same moment.
const INSERT: &str = "WITH u AS (
        SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::FLOAT8[], $4::TEXT[], $5::INT4[],
            $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::INT4[], $11::INT8[])
            WITH ORDINALITY
            AS u(order_id, customer_id, total, currency, item_count, event, correlation_id,
                 trace_id, source_topic, source_partition, source_offset, i)
    ), inserted AS (
        INSERT INTO orders (order_id, customer_id, total, currency, item_count, event,
            correlation_id, trace_id, source_topic, source_partition, source_offset)
        SELECT u.order_id, u.customer_id, u.total::NUMERIC, u.currency, u.item_count,
            u.event::JSONB, u.correlation_id, u.trace_id, u.source_topic, u.source_partition,
            u.source_offset
        FROM u ORDER BY u.i
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id, source_topic, source_partition, source_offset, event
    )
    SELECT mine.order_id IS NOT NULL,
        encode(sha256(convert_to(COALESCE(stored.event, winner.event)::TEXT, 'UTF8')), 'hex'),
        encode(sha256(convert_to(u.event::JSONB::TEXT, 'UTF8')), 'hex')
    FROM u
    LEFT JOIN inserted mine ON mine.order_id = u.order_id
        AND mine.source_topic = u.source_topic
        AND mine.source_partition = u.source_partition
        AND mine.source_offset = u.source_offset
    LEFT JOIN orders stored ON stored.order_id = u.order_id
    LEFT JOIN inserted winner ON winner.order_id = u.order_id
    ORDER BY u.i";

/// What became of one record handed to the event store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Inserted: the first event with its order_id.
    New,
    /// A redelivery: the same event is already stored; nothing changed.
    Duplicate,
    /// A different event is stored under the same order_id; nothing changed.
    Conflict {
        stored_sha256: String,
        incoming_sha256: String,
    },
    /// Another writer stored the order_id at the same moment: try again to learn which.
    Raced,
}

impl Stored {
    fn of(inserted: bool, stored: Option<String>, incoming: String) -> Self {
        match stored {
            _ if inserted => Self::New,
            None => Self::Raced,
            Some(stored) if stored == incoming => Self::Duplicate,
            Some(stored) => Self::Conflict {
                stored_sha256: stored,
                incoming_sha256: incoming,
            },
        }
    }
}

pub struct EventStore {
    pool: Pool,
}

impl EventStore {
    /// A pool on `url` (`postgres://...`); connects lazily.
    pub fn new(url: &str) -> Result<Self, crate::pg::PoolSetupError> {
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

    /// Stores `deliveries` in one statement; orders already stored are left as they are, and
    /// what became of each record comes back in order.
    pub async fn store(&self, deliveries: &[Delivery<'_>]) -> Result<Vec<Stored>, HandlerError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
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
        let rows = client
            .query(
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
        rows.iter()
            .map(|row| {
                Ok(Stored::of(
                    row.try_get(0).map_err(classify)?,
                    row.try_get(1).map_err(classify)?,
                    row.try_get(2).map_err(classify)?,
                ))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::Stored;

    #[test]
    fn a_record_is_new_a_redelivery_or_a_conflict() {
        let h = |s: &str| s.to_owned();
        assert_eq!(Stored::of(true, Some(h("a")), h("a")), Stored::New);
        assert_eq!(Stored::of(false, Some(h("a")), h("a")), Stored::Duplicate);
        assert_eq!(
            Stored::of(false, Some(h("a")), h("b")),
            Stored::Conflict {
                stored_sha256: h("a"),
                incoming_sha256: h("b")
            }
        );
        assert_eq!(Stored::of(false, None, h("b")), Stored::Raced);
    }
}
