//! The consumer runtime: at-least-once consumption with retries and a dead-letter topic.
//!
//! One thread polls Kafka and hands each record to the task of its partition. Within a
//! partition, records of different keys are processed concurrently (up to `concurrency`), the
//! records of one key strictly in order: while a key's record is retrying, in place or away in
//! a retry topic, the key's later records wait (parked) and other keys go on. Offsets are stored
//! only up to the oldest record whose outcome is not final (handled, acknowledged by the
//! dead-letter topic, or acknowledged by a retry topic), and librdkafka commits stored offsets
//! every second, on partition revocation and at shutdown: a crash loses nothing.
//!
//! In mode RetryTopics a failed record is published to the retry topic of its attempt, on the
//! same partition number, with its due time in a header. The group uses the range assignor, so
//! partition p of the source and of every retry topic belong to the same worker, whose task for
//! p consumes the copy when it is due. After an assignment, a task reads its retry partitions up
//! to their end before any source record, so the keys that were away resume their turn first.
//!
//! A partition that holds too many records in memory (a slow handler, retries, an outage) is
//! paused at the broker, so memory stays bounded and other partitions keep going. A sink outage
//! does not spend the retry budget: the work waits, the worker reports not ready, and
//! consumption resumes when the sink answers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{GroupProtocol, WorkerConfig};
use crate::handler::Handler;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::record::{Record, RecordQueue};
use crate::retry::{self};

use poll::{Ended, WorkerContext, poll_loop};

/// Logs an event at `$level` that names the record's coordinates (topic, partition, offset)
/// before the given fields and message: every log line about a record locates it the same way.
macro_rules! record_event {
    ($level:ident, $record:expr, $($rest:tt)+) => {
        tracing::$level!(
            topic = $record.topic(),
            partition = $record.partition(),
            offset = $record.offset(),
            $($rest)+
        )
    };
}

mod decide;
mod job;
mod poll;
mod task;

type WorkerConsumer = BaseConsumer<WorkerContext>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Kafka connection settings: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What every partition task and the poll thread share.
struct Shared {
    config: WorkerConfig,
    handler: Handler,
    metrics: Metrics,
    /// The source topic's series, resolved once: the hot path does no label lookups.
    handled: prometheus::IntCounter,
    dead_lettered: prometheus::IntCounter,
    duration: prometheus::Histogram,
    health: Arc<Health>,
    producer: FutureProducer,
    /// Partitions of the dead-letter topic (0 until known).
    dead_letter_partitions: AtomicI32,
    /// The topics consumed: the source first, then the retry topics in order.
    topics: Vec<String>,
    runtime: tokio::runtime::Handle,
    partitions: Mutex<HashMap<i32, PartitionHandle>>,
    /// Gates computed at assignment for partitions whose task does not exist yet.
    gates: Mutex<HashMap<i32, Gate>>,
    stopping: AtomicBool,
    /// Partition numbers revoked since the poll thread last looked: records of theirs it
    /// polled before the revocation and has not handed over are dropped (the new owner reads
    /// them again from the committed offset).
    revoked: Mutex<Vec<i32>>,
    /// Where assigned partitions forward their records. Owned by the poll thread of the current
    /// consumer, which drops it before the consumer (librdkafka's order).
    records: Mutex<Weak<RecordQueue>>,
    /// Topic-partitions kept while their partition number's task stopped for a revocation:
    /// read again from their committed offsets once the revocation is done.
    rewind: Mutex<TopicPartitionList>,
}

impl Shared {
    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    fn record_queue(&self) -> Option<Arc<RecordQueue>> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
    }
}

/// What the poll thread sends a partition task.
enum Input {
    /// Records of the task's partition number, in the order they were polled, each with its
    /// topic's index in `Shared::topics` (looked up once, by the poll thread).
    Records(Vec<(usize, Record)>),
    Gate(Gate),
}

/// Set at assignment: whether failed records of this partition may go to the retry topics
/// (the worker owns partition p of every retry topic), and how far each retry partition must
/// be read before the source (topic index, offset of its last record).
#[derive(Debug, Default)]
struct Gate {
    via_topics: bool,
    waits: Vec<(usize, i64)>,
}

struct PartitionHandle {
    queue: mpsc::UnboundedSender<Input>,
    /// Records in memory and not final, per topic index.
    held: Arc<[AtomicUsize]>,
    paused: Vec<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long the retry and dead-letter producer waits to fill a batch. With several records in
/// flight per partition, a record waiting for this ack lends its concurrency slot and waits
/// alone (a copy, out of its batch), so batching costs only that record's latency and saves the
/// broker a small produce request per copy: at 1% poison in mode RetryTopics (4 copies per
/// poison record), 25 ms rather than 5 took valid records from 0.59-0.69x to 0.75-0.85x of the
/// clean run (`make bench`, poison section, two runs each). One record at a time per partition
/// waits out every ack with the whole partition: there Kafka's own default of 5 ms, which kept
/// that run at 3,570 valid records/s against 2,850 at 25 ms.
fn retry_linger_ms(concurrency: usize) -> &'static str {
    if concurrency > 1 { "25" } else { "5" }
}

/// Runs the consumer until `shutdown` resolves: finishes in-flight records, commits and leaves
/// the group before returning.
pub async fn run(
    config: WorkerConfig,
    handler: Handler,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let client = config.kafka.client_config()?;

    // The sink first: without it, consuming would only fill the retry budget.
    let mut failures = 0;
    loop {
        match handler.prepare().await {
            Ok(()) => break,
            Err(e) => {
                metrics.sink_up.set(0);
                warn!(error = %e, "the sink is not reachable yet");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(retry::outage_delay(failures)) => failures += 1,
                }
            }
        }
    }
    metrics.sink_up.set(1);

    let producer: FutureProducer = client
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", retry_linger_ms(config.concurrency))
        .set("message.timeout.ms", "30000")
        // The broker's topic limit decides; a dead letter can be as large as its source.
        .set("message.max.bytes", "16777216")
        .create()?;
    let topic = config.source_topic.as_str();
    let topics: Vec<String> = std::iter::once(config.source_topic.clone())
        .chain(config.retry_topics.iter().map(|t| t.name.clone()))
        .collect();
    let shared = Arc::new(Shared {
        handled: metrics.records.with_label_values(&[topic, "handled"]),
        dead_lettered: metrics.records.with_label_values(&[topic, "dead_lettered"]),
        duration: metrics.processing_duration.with_label_values(&[topic]),
        config: config.clone(),
        handler,
        metrics,
        health: Arc::clone(&health),
        producer,
        dead_letter_partitions: AtomicI32::new(0),
        topics,
        runtime: tokio::runtime::Handle::current(),
        partitions: Mutex::default(),
        gates: Mutex::default(),
        stopping: AtomicBool::new(false),
        revoked: Mutex::default(),
        records: Mutex::default(),
        rewind: Mutex::new(TopicPartitionList::new()),
    });
    refresh_dead_letter_partitions(&shared).await;
    let refresher = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                refresh_dead_letter_partitions(&shared).await;
            }
        }
    });
    let subscribed: Vec<&str> = shared.topics.iter().map(String::as_str).collect();
    let mut protocol = config.group_protocol;
    let mut failures = 0;
    loop {
        let consumer: Arc<WorkerConsumer> = Arc::new(
            group_consumer(&client, &config, protocol).create_with_context(WorkerContext {
                shared: Arc::clone(&shared),
            })?,
        );
        // SAFETY: the queue goes before the consumer. The poll thread drops it before the
        // consumer's last reference (see `poll_loop`); on an early return, `records` is
        // declared after `consumer` and dropped first. The `Weak` in `shared` is upgraded only
        // by the consumer's callbacks, and fails once the queue is gone.
        let records = Arc::new(unsafe { RecordQueue::new(consumer.client()) });
        *shared.records.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&records);
        consumer.subscribe(&subscribed)?;
        info!(
            topics = ?shared.topics,
            group = %config.group_id,
            protocol = protocol.as_str(),
            concurrency = config.concurrency,
            "consuming"
        );
        health.set_started(true);
        let poller = {
            let shared = Arc::clone(&shared);
            let consumer = Arc::clone(&consumer);
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poll_loop(consumer, shared, records))
                .expect("spawning the poll thread")
        };
        drop(consumer);
        let poller_done = tokio::task::spawn_blocking(move || poller.join());
        tokio::pin!(poller_done);
        let ended = tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down: finishing in-flight records");
                shared.stopping.store(true, Ordering::Relaxed);
                let _ = poller_done.await;
                break;
            }
            result = &mut poller_done => result,
        };
        let Ok(Ok(Ended::Fatal { code, reason })) = ended else {
            error!(result = ?ended, "the poll thread ended on its own");
            break;
        };
        health.set_started(false);
        if protocol == GroupProtocol::Consumer && refuses_protocol(code) {
            warn!(
                %reason,
                "the brokers refuse the consumer group protocol (KIP-848): joining with the \
                 classic protocol"
            );
            protocol = GroupProtocol::Classic;
            continue;
        }
        // A fatal error ends a consumer for good (the consumer protocol raises one for a lost
        // group authorization, for instance): a new one joins again from the committed offsets.
        warn!(%reason, "the consumer failed for good: joining again with a new one");
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(retry::outage_delay(failures)) => failures += 1,
        }
    }
    health.set_started(false);
    refresher.abort();
    info!("stopped");
    Ok(())
}

/// The group consumer's settings for `protocol`.
fn group_consumer(
    client: &ClientConfig,
    config: &WorkerConfig,
    protocol: GroupProtocol,
) -> ClientConfig {
    let mut settings = client.clone();
    settings
        .set("group.id", &config.group_id)
        .set("group.protocol", protocol.as_str())
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to this much per consumer; the partition tasks hold their
        // own 5,000 records each, so 16 MiB keeps fetching ahead without doubling memory.
        .set("queued.max.messages.kbytes", "16384")
        // With a full prefetch queue librdkafka waits this long before fetching again. Its
        // default (1 s) left the worker idle between bursts: the tasks drain 16 MiB in about
        // 40 ms (measured 110k records/s at 45% CPU before, 490k at 170% after).
        .set("fetch.queue.backoff.ms", "10");
    // Partition p of the source and of each retry topic go to the same member. Under the
    // consumer protocol the broker assigns and owns the session timeout: librdkafka refuses
    // the classic settings there.
    match protocol {
        GroupProtocol::Consumer => settings.set("group.remote.assignor", "range"),
        GroupProtocol::Classic => settings
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", config.session_timeout_ms.to_string()),
    };
    settings
}

/// Whether fatal error `code` means the brokers do not speak the consumer group protocol (a
/// Kafka 4 cluster with it disabled answers its heartbeats UNSUPPORTED_VERSION).
fn refuses_protocol(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature
    )
}

async fn refresh_dead_letter_partitions(shared: &Arc<Shared>) {
    let shared2 = Arc::clone(shared);
    let found = tokio::task::spawn_blocking(move || {
        let topic = &shared2.config.dead_letter_topic;
        shared2
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
    })
    .await
    .ok()
    .flatten();
    if let Some(count) = found {
        shared
            .dead_letter_partitions
            .store(count, Ordering::Relaxed);
    }
}

/// Counts redeliveries the sink already held: a no-op, but one an operator wants to see.
fn count_duplicates(shared: &Shared, duplicates: u64) {
    if duplicates > 0 {
        shared
            .metrics
            .duplicates
            .with_label_values(&[shared.topics[0].as_str()])
            .inc_by(duplicates);
    }
}

/// A stop was requested.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Sleeps `delay` unless a stop comes first; false when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HandlerConfig, KafkaConnection, RetryPolicy, SecurityProtocol};

    fn config() -> WorkerConfig {
        WorkerConfig {
            kafka: KafkaConnection {
                bootstrap_servers: "kafka:9092".into(),
                security_protocol: SecurityProtocol::Plaintext,
                username: None,
                password_file: None,
                ca_file: None,
            },
            source_topic: "orders".into(),
            group_id: "shop.store".into(),
            dead_letter_topic: "orders-dlq".into(),
            retry: RetryPolicy::default(),
            handler: HandlerConfig::Noop,
            http_port: 9090,
            shutdown_grace_seconds: 25,
            session_timeout_ms: 30_000,
            group_protocol: GroupProtocol::Consumer,
            concurrency: 8,
            retry_topics: Vec::new(),
            tracing: None,
        }
    }

    #[test]
    fn the_consumer_protocol_leaves_the_session_and_assignment_to_the_broker() {
        let base = ClientConfig::new();
        let settings = group_consumer(&base, &config(), GroupProtocol::Consumer);
        assert_eq!(settings.get("group.protocol"), Some("consumer"));
        assert_eq!(settings.get("group.remote.assignor"), Some("range"));
        // librdkafka refuses to create a consumer-protocol member with any of these set.
        for refused in [
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "partition.assignment.strategy",
            "group.protocol.type",
        ] {
            assert_eq!(settings.get(refused), None, "{refused}");
        }
        // And accepts what is left.
        let created: Result<BaseConsumer, _> = settings.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn the_classic_protocol_keeps_its_range_assignor_and_session() {
        let settings = group_consumer(&ClientConfig::new(), &config(), GroupProtocol::Classic);
        assert_eq!(settings.get("group.protocol"), Some("classic"));
        assert_eq!(settings.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(settings.get("session.timeout.ms"), Some("30000"));
        assert_eq!(settings.get("group.remote.assignor"), None);
    }

    #[test]
    fn only_an_unsupported_protocol_falls_back() {
        assert!(refuses_protocol(RDKafkaErrorCode::UnsupportedVersion));
        assert!(refuses_protocol(RDKafkaErrorCode::UnsupportedFeature));
        assert!(!refuses_protocol(
            RDKafkaErrorCode::GroupAuthorizationFailed
        ));
    }
}
