//! The event-store sink: orders/s the worker persists into PostgreSQL with idempotence (one row
//! per order id, `ON CONFLICT DO NOTHING`), against PostgreSQL's own `COPY` of the very rows the
//! worker stored, into a table of the same definition.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use testenv::{KafkaInfo, Lifetime, Postgres};

use crate::{Measure, ROUNDS, create_topic, produce_orders, worker_rate};

pub struct SinkResult {
    pub records: usize,
    pub worker_rates: Vec<f64>,
    pub copy_rates: Vec<f64>,
    pub copy_command: &'static str,
}

const COPY_IN: &str = "COPY orders_copy FROM STDIN";

pub async fn sink_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    records: usize,
) -> SinkResult {
    eprintln!("==> starting PostgreSQL");
    let pg = Postgres::start(&dir.join("postgres"), Lifetime::Owned).expect("PostgreSQL");
    let topic = "bench-sink";
    create_topic(kafka, topic, 3).await;
    eprintln!("==> producing {records} distinct orders");
    produce_orders(kafka, topic, records, None, true).await;

    let mut worker_rates = Vec::new();
    let mut copy_rates = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("==> round {}: the event store, then COPY", round + 1);
        let db = pg.info.fresh_database("sink").await.expect("database");
        let round_dir = dir.join(format!("sink-{round}"));
        std::fs::create_dir_all(&round_dir).expect("a directory for the round");
        let handler = testenv::worker::event_store(&round_dir, &pg.info.database_url(&db));
        worker_rates.push(
            worker_rate(
                kafka,
                worker_bin,
                dir,
                &Measure {
                    handler,
                    ..Measure::noop(topic, records, round)
                },
            )
            .await,
        );

        let client = pg.info.connect(&db).await.expect("connect");
        let stored: i64 = client
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(stored as usize, records, "every order stored once");
        // The rows exactly as the worker stored them, in COPY's text format.
        let rows: Vec<Bytes> = client
            .copy_out("COPY orders TO STDOUT")
            .await
            .expect("COPY TO")
            .try_collect()
            .await
            .expect("COPY TO data");
        client
            .batch_execute("CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)")
            .await
            .expect("a table like orders");
        let started = Instant::now();
        let sink = client
            .copy_in::<_, Bytes>(COPY_IN)
            .await
            .expect("COPY FROM");
        futures::pin_mut!(sink);
        for chunk in rows {
            sink.feed(chunk).await.expect("COPY data");
        }
        let copied = sink.finish().await.expect("COPY done");
        copy_rates.push(copied as f64 / started.elapsed().as_secs_f64());
        assert_eq!(copied as usize, records);
    }
    SinkResult {
        records,
        worker_rates,
        copy_rates,
        copy_command: COPY_IN,
    }
}
