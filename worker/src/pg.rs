//! PostgreSQL plumbing shared by the event store and the outbox: a connection pool and an
//! ordered, idempotent schema migration under an advisory lock (replicas starting together
//! do not race).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Why a pool could not be set up (nothing is connected yet: these are configuration errors).
#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    #[error("the database URL is invalid: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    #[error("building the database pool: {0}")]
    Build(#[source] deadpool_postgres::BuildError),
}

/// A pool of at most `size` connections on `url`; connects lazily.
pub fn pool(url: &str, size: usize) -> Result<Pool, PoolSetupError> {
    let config: tokio_postgres::Config = url.parse().map_err(PoolSetupError::InvalidUrl)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(PoolSetupError::Build)
}

/// Applies the `migrations` not yet recorded in table `ledger` (version = index + 1), in one
/// transaction holding advisory lock `lock`.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    ledger: &str,
    lock: i64,
    migrations: &[&str],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {ledger}"),
            &[],
        )
        .await?
        .get(0);
    for (index, sql) in migrations.iter().enumerate().skip(current as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!("INSERT INTO {ledger} (version) VALUES ($1)"),
            &[&version],
        )
        .await?;
        tracing::info!(ledger, version, "applied a schema migration");
    }
    tx.commit().await
}
