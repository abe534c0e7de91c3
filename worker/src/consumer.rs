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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::{ErrorClass, WorkerConfig};
use crate::handler::{Delivery, Handler, HandlerError};
use crate::headers::{self, DeadLetter, RetryState};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::order::{self, DecodeError, OrderEvent};
use crate::record::{Record, RecordQueue};
use crate::retry::{self, Jitter};
use crate::schedule::{KeyQueue, OffsetWindow, key_hash};

/// Records one event store statement takes at most.
const MAX_BATCH: usize = 500;
/// Inputs (bursts of records) a task takes from its queue before it starts work again.
const MAX_INTAKE: usize = 16;
/// Records the poll thread takes from librdkafka per pass (all already fetched: it waits only
/// for the first): each partition task gets them in one message and one wake-up, and flow
/// control looks at the tasks once per pass.
const BURST: usize = 256;
/// Records of one topic-partition held in memory at which it is paused at the broker, and
/// resumed again. Retry partitions are read ahead less: their records mostly wait.
const PAUSE_AT: usize = 5_000;
const RESUME_AT: usize = 1_000;
const RETRY_PAUSE_AT: usize = 1_000;
const RETRY_RESUME_AT: usize = 200;
/// How long a task waits for its retry partitions before reading the source anyway.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Where assigned partitions forward their records. Owned by the poll thread, which drops it
    /// before the consumer (librdkafka's order).
    records: std::sync::OnceLock<std::sync::Weak<RecordQueue>>,
}

impl Shared {
    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
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

/// The consumer's context: revocation drains partition tasks and commits; assignment sets the
/// retry gates; statistics feed the lag gauge.
struct WorkerContext {
    shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let lag = &self.shared.metrics.consumer_lag;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                // librdkafka keeps reporting a revoked partition with its last values: only
                // the partitions this member fetches have a series.
                if p.consumer_lag >= 0 && p.fetch_state == "active" {
                    lag.with_label_values(&labels).set(p.consumer_lag);
                } else {
                    let _ = lag.remove_label_values(&labels);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            partitions.sort_unstable();
            partitions.dedup();
            info!(
                ?partitions,
                "partitions revoked: finishing in-flight records"
            );
            self.shared.stop_partitions(Some(&partitions));
            // Another member reports their lag from now on.
            for e in list.elements() {
                let _ = self
                    .shared
                    .metrics
                    .consumer_lag
                    .remove_label_values(&[e.topic(), &e.partition().to_string()]);
            }
            self.shared
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(&partitions);
            commit(consumer, "revocation");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // Before their first fetch: the partitions' records go to the poll thread's batches.
            if let Some(records) = self.shared.records.get().and_then(std::sync::Weak::upgrade) {
                for e in list.elements() {
                    records.forward(e.topic(), e.partition());
                }
            }
            let source = &self.shared.topics[0];
            let partitions: Vec<i32> = list
                .elements()
                .iter()
                .filter(|e| e.topic() == source)
                .map(|e| e.partition())
                .collect();
            info!(?partitions, "partitions assigned");
            if self.shared.topics.len() > 1 {
                for partition in partitions {
                    let gate = retry_gate(consumer, &self.shared.topics, list, partition);
                    self.shared.set_gate(partition, gate);
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result
            && e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset)
        {
            warn!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

/// The gate of source partition `partition`: retry topics are used only when this worker owns
/// the same partition of every retry topic; their unread records are read first.
fn retry_gate(
    consumer: &WorkerConsumer,
    topics: &[String],
    assigned: &TopicPartitionList,
    partition: i32,
) -> Gate {
    let retries = &topics[1..];
    let owned = retries
        .iter()
        .all(|t| assigned.find_partition(t, partition).is_some());
    if !owned {
        warn!(
            partition,
            "this worker does not own the same partition of every retry topic (are the retry \
             topics' partitions fewer than the source's?): retrying in place for this partition"
        );
        return Gate::default();
    }
    let mut list = TopicPartitionList::new();
    for topic in retries {
        list.add_partition(topic, partition);
    }
    let timeout = Duration::from_secs(10);
    let committed = match consumer.committed_offsets(list, timeout) {
        Ok(c) => c,
        Err(e) => {
            warn!(partition, error = %e, "could not read the retry topics' committed offsets; not waiting for them");
            return Gate {
                via_topics: true,
                waits: Vec::new(),
            };
        }
    };
    let mut waits = Vec::new();
    for (i, topic) in retries.iter().enumerate() {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, timeout) else {
            continue;
        };
        let from = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if high > from {
            waits.push((i + 1, high - 1));
        }
    }
    Gate {
        via_topics: true,
        waits,
    }
}

fn commit(consumer: &WorkerConsumer, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => debug!(why, "committed offsets"),
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Err(e) => warn!(why, error = %e, "offset commit failed"),
    }
}

impl Shared {
    /// Hands `gate` to the partition's task, or keeps it for the task's creation.
    fn set_gate(&self, partition: i32, gate: Gate) {
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&partition) {
            Some(handle) => {
                let _ = handle.queue.send(Input::Gate(gate));
            }
            None => {
                drop(map);
                self.gates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(partition, gate);
            }
        }
    }

    /// Stops the tasks of `partitions` (all when `None`): handler calls in progress finish,
    /// waits and parked records are abandoned (their offsets stay unstored, so they are
    /// redelivered). Waits up to the shutdown grace period. Called from the poll thread.
    fn stop_partitions(&self, partitions: Option<&[i32]>) {
        let handles: Vec<PartitionHandle> = {
            let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<i32> = match partitions {
                Some(list) => list.to_vec(),
                None => map.keys().copied().collect(),
            };
            keys.iter().filter_map(|p| map.remove(p)).collect()
        };
        if let Some(list) = partitions {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            for p in list {
                gates.remove(p);
            }
        }
        if handles.is_empty() {
            return;
        }
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let _ = h.stop.send(true);
                h.task
            })
            .collect();
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        let waited = self.runtime.block_on(async {
            tokio::time::timeout(grace, futures::future::join_all(tasks)).await
        });
        if waited.is_err() {
            warn!(
                ?grace,
                "in-flight records did not finish within the grace period"
            );
        }
    }
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
        // A record waiting for this ack lends its concurrency slot and waits alone (a copy,
        // out of its batch), so batching retries and dead letters costs only latency: 5 ms
        // (Kafka's own default) rather than 1 took the broker's CPU for 1% poison in mode
        // RetryTopics from about 0.8 s to 0.55 s per run, valid records 370k/s -> 430k-520k/s.
        .set("linger.ms", "5")
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
        records: std::sync::OnceLock::new(),
    });
    let consumer: Arc<WorkerConsumer> = Arc::new(
        client
            .clone()
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false")
            // librdkafka prefetches up to this much per consumer; the partition tasks hold their
            // own 5,000 records each, so 16 MiB keeps fetching ahead without doubling memory.
            .set("queued.max.messages.kbytes", "16384")
            // With a full prefetch queue librdkafka waits this long before fetching again. Its
            // default (1 s) left the worker idle between bursts: the tasks drain 16 MiB in
            // about 40 ms (measured 110k records/s at 45% CPU before, 490k at 170% after).
            .set("fetch.queue.backoff.ms", "10")
            // Partition p of the source and of each retry topic go to the same member.
            .set("partition.assignment.strategy", "range")
            .create_with_context(WorkerContext {
                shared: Arc::clone(&shared),
            })?,
    );
    // SAFETY: the queue goes before the consumer. The poll thread drops it before the
    // consumer's last reference (see `poll_loop`); on an early return, `records` is declared
    // after `consumer` and dropped first. The `Weak` in `shared` is upgraded only by the
    // consumer's callbacks, and fails once the queue is gone.
    let records = Arc::new(unsafe { RecordQueue::new(consumer.client()) });
    let _ = shared.records.set(Arc::downgrade(&records));
    let subscribed: Vec<&str> = shared.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&subscribed)?;
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

    info!(
        topics = ?shared.topics,
        group = %config.group_id,
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
    tokio::select! {
        _ = &mut shutdown => {
            info!("shutting down: finishing in-flight records");
            shared.stopping.store(true, Ordering::Relaxed);
            let _ = poller_done.await;
        }
        result = &mut poller_done => {
            error!(?result, "the poll thread ended on its own");
        }
    }
    health.set_started(false);
    refresher.abort();
    info!("stopped");
    Ok(())
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

/// The poll thread: hands records to partition tasks until stopping, then drains, commits and
/// closes the consumer (leaving the group).
///
/// Each pass serves the consumer's events first (rebalance callbacks run there), then takes a
/// batch of records from `records`. A record still on the consumer's queue was fetched before
/// its partition was forwarded, so it comes before any of that partition's records in `records`.
fn poll_loop(consumer: Arc<WorkerConsumer>, shared: Arc<Shared>, records: Arc<RecordQueue>) {
    let mut burst: Vec<Record> = Vec::with_capacity(BURST);
    while !shared.stopping.load(Ordering::Relaxed) {
        throttle(&consumer, &shared);
        serve_events(&consumer, &shared, &records, &mut burst);
        // Events are looked at again after this wait at the latest.
        let wait = if burst.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        for e in records.consume(wait, BURST.saturating_sub(burst.len()), &mut burst) {
            warn!(topic = %e.topic, partition = e.partition, error = %e.message, "consumer error");
        }
        dispatch(&consumer, &shared, &mut burst);
        resume_drained(&consumer, &shared);
    }
    shared.stop_partitions(None);
    commit(&consumer, "shutdown");
    consumer.unsubscribe();
    // Every record is gone with the tasks; the queue goes before the consumer.
    drop(burst);
    drop(records);
    // The last reference: dropping closes the consumer and leaves the group.
    drop(consumer);
}

/// Serves what waits on the consumer's queue: rebalances, commit results, errors, and records
/// fetched before their partition was forwarded (copied: they are few).
fn serve_events(
    consumer: &WorkerConsumer,
    shared: &Shared,
    records: &RecordQueue,
    burst: &mut Vec<Record>,
) {
    // Bounded, in case events keep arriving; the next pass serves the rest.
    for _ in 0..1_000 {
        if records.events_waiting() == 0 {
            break;
        }
        // Rebalance callbacks run inside poll.
        let polled = consumer.poll(Duration::ZERO);
        drop_revoked(shared, burst);
        match polled {
            None => {}
            Some(Err(e)) => warn!(error = %e, "consumer error"),
            Some(Ok(message)) => burst.push(Record::copy_of(&message)),
        }
    }
}

/// Forgets the records of partitions revoked during the last poll: they were polled for the
/// previous assignment, their tasks are gone, and their offsets were not stored.
fn drop_revoked(shared: &Shared, burst: &mut Vec<Record>) {
    let mut revoked = shared.revoked.lock().unwrap_or_else(|p| p.into_inner());
    if !revoked.is_empty() {
        burst.retain(|m| !revoked.contains(&m.partition()));
        revoked.clear();
    }
}

/// Hands each partition task its records of `burst` (emptied), in poll order.
fn dispatch(consumer: &Arc<WorkerConsumer>, shared: &Arc<Shared>, burst: &mut Vec<Record>) {
    if burst.is_empty() {
        return;
    }
    let mut by_partition: Vec<(i32, Vec<(usize, Record)>)> = Vec::new();
    for message in burst.drain(..) {
        // Only the subscribed topics are consumed; anything else is not ours to handle.
        let Some(topic) = shared.topic_index(message.topic()) else {
            continue;
        };
        let partition = message.partition();
        match by_partition.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, records)) => records.push((topic, message)),
            None => by_partition.push((partition, vec![(topic, message)])),
        }
    }
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    for (partition, records) in by_partition {
        hand_over(consumer, shared, &mut map, partition, records);
    }
}

fn hand_over(
    consumer: &Arc<WorkerConsumer>,
    shared: &Arc<Shared>,
    map: &mut HashMap<i32, PartitionHandle>,
    partition: i32,
    records: Vec<(usize, Record)>,
) {
    let handle = map.entry(partition).or_insert_with(|| {
        let (queue, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let held: Arc<[AtomicUsize]> = shared.topics.iter().map(|_| AtomicUsize::new(0)).collect();
        let gate = shared
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
        if let Some(gate) = gate {
            let _ = queue.send(Input::Gate(gate));
        }
        let task = PartitionTask::new(
            Arc::clone(shared),
            Arc::clone(consumer),
            partition,
            Arc::clone(&held),
        );
        let task = shared.runtime.spawn(task.run(rx, stop_rx));
        PartitionHandle {
            queue,
            held,
            paused: vec![false; shared.topics.len()],
            stop,
            task,
        }
    });
    let counts = |records: &[(usize, Record)]| {
        let mut counts = vec![0; shared.topics.len()];
        for (topic, _) in records {
            counts[*topic] += 1;
        }
        counts
    };
    for (topic, n) in counts(&records).into_iter().enumerate() {
        handle.held[topic].fetch_add(n, Ordering::Relaxed);
    }
    if let Err(mpsc::error::SendError(Input::Records(records))) =
        handle.queue.send(Input::Records(records))
    {
        for (topic, n) in counts(&records).into_iter().enumerate() {
            handle.held[topic].fetch_sub(n, Ordering::Relaxed);
        }
    }
}

fn pause_at(topic: usize) -> usize {
    if topic == 0 { PAUSE_AT } else { RETRY_PAUSE_AT }
}

fn resume_at(topic: usize) -> usize {
    if topic == 0 {
        RESUME_AT
    } else {
        RETRY_RESUME_AT
    }
}

/// Topic-partitions holding too many records, as (partition, topic index).
fn full(shared: &Shared) -> Vec<(i32, usize)> {
    let map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (p, h) in map.iter() {
        for (t, held) in h.held.iter().enumerate() {
            if !h.paused[t] && held.load(Ordering::Relaxed) >= pause_at(t) {
                out.push((*p, t));
            }
        }
    }
    out
}

/// Flow control. A full source partition first gets a few milliseconds to drain (the usual
/// case: every partition is just busy); one still full after that is stuck (retries, parked
/// keys, an outage) and is paused at the broker, so the others keep flowing. Pausing throws
/// away the records librdkafka prefetched for that partition, so it is kept for real stalls.
fn throttle(consumer: &WorkerConsumer, shared: &Shared) {
    // The common case costs one uncontended lock and no allocation.
    let any_full = {
        let map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.values().any(|h| {
            h.held
                .iter()
                .enumerate()
                .any(|(t, held)| !h.paused[t] && held.load(Ordering::Relaxed) >= pause_at(t))
        })
    };
    if !any_full {
        return;
    }
    for _ in 0..50 {
        if full(shared).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let stuck = full(shared);
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    for (partition, topic) in stuck {
        if let Some(handle) = map.get_mut(&partition)
            && set_paused(consumer, &shared.topics[topic], partition, true)
        {
            handle.paused[topic] = true;
        }
    }
}

fn resume_drained(consumer: &WorkerConsumer, shared: &Shared) {
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    if !map.values().any(|h| h.paused.iter().any(|p| *p)) {
        return;
    }
    for (partition, handle) in map.iter_mut() {
        for topic in 0..handle.paused.len() {
            if handle.paused[topic]
                && handle.held[topic].load(Ordering::Relaxed) <= resume_at(topic)
                && set_paused(consumer, &shared.topics[topic], *partition, false)
            {
                handle.paused[topic] = false;
            }
        }
    }
}

fn set_paused(consumer: &WorkerConsumer, topic: &str, partition: i32, paused: bool) -> bool {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    match result {
        Ok(()) => {
            debug!(topic, partition, paused, "flow control");
            true
        }
        Err(e) => {
            warn!(topic, partition, paused, error = %e, "could not change the partition's flow");
            false
        }
    }
}

/// One record on its way to a final outcome.
struct Job {
    message: Record,
    /// Index into `Shared::topics`: 0 for the source, n for the n-th retry topic.
    topic: usize,
    key: Option<u64>,
    /// Failed attempts so far (in this worker, or as the retry headers say).
    attempts: u32,
    /// When this worker first tried it (the processing duration counts from there).
    first_try: Option<Instant>,
    /// Its batch did not decide it: it runs by itself.
    alone: bool,
}

impl Job {
    /// The job with its record copied out of librdkafka's fetch buffer, for a long wait.
    fn detach(self) -> Self {
        Self {
            message: self.message.detach(),
            ..self
        }
    }
}

/// How a record's processing ended.
enum Outcome {
    /// Handled, or acknowledged by the dead-letter topic.
    Final,
    /// Acknowledged by a retry topic: final for this copy, the key waits for the next.
    Forwarded { attempts: u32, origin_offset: i64 },
    /// Failed; to be tried again after `delay` without holding a concurrency slot meanwhile.
    Retry {
        attempts: u32,
        delay: Duration,
        tried: Instant,
    },
    /// Its batch did not decide it (not an order, or the batch failed): it runs again by
    /// itself, so the batch's other records are final without waiting for it.
    Alone { tried: Instant },
    /// Stopped first: the offset stays unstored.
    Stopped,
}

type Done = (Job, Outcome);

/// The task of one partition number: its source partition and the same partition of every
/// retry topic.
struct PartitionTask {
    shared: Arc<Shared>,
    partition: i32,
    held: Arc<[AtomicUsize]>,
    windows: Vec<OffsetWindow>,
    keys: KeyQueue<Job>,
    /// Retry partitions to read up to the given offset before the source.
    gate: Vec<(usize, i64)>,
    gate_deadline: Option<tokio::time::Instant>,
    /// Source records received while the gate is closed.
    gated: VecDeque<Record>,
    via_topics: bool,
    slots: Arc<Slots>,
    parked_gauge: prometheus::IntGauge,
    seed: u64,
    /// Last: fields drop in order, and librdkafka wants every record (`keys`, `gated`) gone
    /// before the consumer.
    consumer: Arc<WorkerConsumer>,
}

impl PartitionTask {
    fn new(
        shared: Arc<Shared>,
        consumer: Arc<WorkerConsumer>,
        partition: i32,
        held: Arc<[AtomicUsize]>,
    ) -> Self {
        let parked_gauge = shared
            .metrics
            .parked_records
            .with_label_values(&[shared.topics[0].as_str(), &partition.to_string()]);
        Self {
            windows: shared
                .topics
                .iter()
                .map(|_| OffsetWindow::default())
                .collect(),
            shared,
            consumer,
            partition,
            held,
            keys: KeyQueue::default(),
            gate: Vec::new(),
            gate_deadline: None,
            gated: VecDeque::new(),
            via_topics: false,
            slots: Arc::default(),
            parked_gauge,
            seed: Jitter::seeded().next_unit().to_bits(),
        }
    }

    async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut running: FuturesUnordered<BoxFuture<Vec<Done>>> = FuturesUnordered::new();
        let mut delayed: FuturesUnordered<BoxFuture<Job>> = FuturesUnordered::new();
        let concurrency = self.shared.config.concurrency.max(1);
        loop {
            self.start(&mut running, &stop, concurrency);
            self.parked_gauge.set(self.keys.parked() as i64);
            let gate_deadline = self.gate_deadline;
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                Some(done) = running.next(), if !running.is_empty() => self.complete(done, &mut delayed),
                Some(job) = delayed.next(), if !delayed.is_empty() => self.keys.push_ready(job),
                // A record lent its slot: start the next.
                _ = self.slots.wake.notified() => {}
                input = queue.recv() => {
                    let Some(input) = input else { break };
                    self.intake(input, &mut delayed);
                    for _ in 0..MAX_INTAKE {
                        match queue.try_recv() {
                            Ok(input) => self.intake(input, &mut delayed),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(gate_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if gate_deadline.is_some() => {
                    warn!(partition = self.partition, waiting_for = ?self.gate, "the retry partitions were not read to their end in time; reading the source anyway");
                    self.open_gate(&mut delayed);
                }
            }
        }
        // Stopping: records in progress finish or give up at their next wait.
        while let Some(done) = running.next().await {
            self.complete(done, &mut delayed);
        }
        self.parked_gauge.set(0);
        // Records go before the consumer reference (`self.consumer`, dropped last).
        drop(delayed);
        drop(queue);
    }

    /// Starts ready records while there is room.
    fn start(
        &mut self,
        running: &mut FuturesUnordered<BoxFuture<Vec<Done>>>,
        stop: &watch::Receiver<bool>,
        concurrency: usize,
    ) {
        let batches = self.shared.handler.batches();
        let lent = |slots: &Slots| slots.lent.load(Ordering::Relaxed);
        while running.len().saturating_sub(lent(&self.slots)) < concurrency && self.keys.ready() > 0
        {
            let mut jobs = if batches {
                // Only first attempts share a statement; a retried record runs alone.
                self.keys
                    .pop_batch(MAX_BATCH, |j| j.topic == 0 && j.attempts == 0 && !j.alone)
            } else {
                Vec::new()
            };
            if jobs.is_empty() {
                jobs.extend(self.keys.pop_ready());
            }
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            running.push(Box::pin(run_jobs(
                Arc::clone(&self.shared),
                Arc::clone(&self.slots),
                jobs,
                stop.clone(),
                Jitter::from_seed(self.seed),
                Mode {
                    via_topics: self.via_topics,
                    // One at a time is the classic blocking consumer: strict offset order, the
                    // partition waits out each backoff.
                    wait_in_place: concurrency == 1,
                },
            )));
        }
    }

    fn intake(&mut self, input: Input, delayed: &mut FuturesUnordered<BoxFuture<Job>>) {
        match input {
            Input::Gate(gate) => {
                self.via_topics = gate.via_topics;
                self.gate = gate.waits;
                self.gate_deadline =
                    (!self.gate.is_empty()).then(|| tokio::time::Instant::now() + GATE_TIMEOUT);
                if !self.gate.is_empty() {
                    debug!(partition = self.partition, waits = ?self.gate, "reading the retry partitions first");
                }
            }
            Input::Records(records) => {
                for (topic, message) in records {
                    self.intake_record(topic, message, delayed);
                }
            }
        }
    }

    fn intake_record(
        &mut self,
        topic: usize,
        message: Record,
        delayed: &mut FuturesUnordered<BoxFuture<Job>>,
    ) {
        if topic == 0 && !self.gate.is_empty() {
            self.gated.push_back(message);
            return;
        }
        if topic > 0 && !self.gate.is_empty() {
            let offset = message.offset();
            self.gate
                .retain(|(t, last)| !(*t == topic && offset >= *last));
        }
        self.admit(topic, message, delayed);
        if self.gate.is_empty() && !self.gated.is_empty() {
            self.open_gate(delayed);
        }
    }

    fn open_gate(&mut self, delayed: &mut FuturesUnordered<BoxFuture<Job>>) {
        self.gate.clear();
        self.gate_deadline = None;
        while let Some(message) = self.gated.pop_front() {
            self.admit(0, message, delayed);
        }
    }

    /// Tracks a received record and queues it behind its key (source) or resumes its key's
    /// turn when due (retry topic).
    fn admit(
        &mut self,
        topic: usize,
        message: Record,
        delayed: &mut FuturesUnordered<BoxFuture<Job>>,
    ) {
        if !self.windows[topic].receive(message.offset()) {
            // A second copy of an offset already tracked (after a seek).
            self.held[topic].fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let key = key_hash(message.key());
        let state = (topic > 0)
            .then(|| RetryState::parse(message.headers()))
            .flatten()
            .map(|s| (s.offset, s.attempts, s.due_at_ms));
        let job = Job {
            message,
            topic,
            key,
            attempts: state.map_or(0, |(_, attempts, _)| attempts),
            first_try: None,
            alone: false,
        };
        match state {
            // Parked behind its key: it waits as a copy, not holding its fetch response.
            None => self.keys.push_or_park(key, job, Job::detach),
            Some((origin_offset, attempts, due_at_ms)) => {
                self.keys.resume(key, (origin_offset, attempts));
                let wait = due_at_ms - jiff::Timestamp::now().as_millisecond();
                if wait > 0 {
                    let job = job.detach();
                    let due = tokio::time::Instant::now() + Duration::from_millis(wait as u64);
                    delayed.push(Box::pin(async move {
                        tokio::time::sleep_until(due).await;
                        job
                    }));
                } else {
                    self.keys.push_ready(job);
                }
            }
        }
    }

    fn complete(&mut self, done: Vec<Done>, delayed: &mut FuturesUnordered<BoxFuture<Job>>) {
        let mut moved = vec![None; self.windows.len()];
        // One update per topic, not per record: the poll thread reads these counters.
        let mut finished = vec![0; self.windows.len()];
        for (job, outcome) in done {
            match outcome {
                Outcome::Stopped => continue,
                Outcome::Retry {
                    attempts,
                    delay,
                    tried,
                } => {
                    // The key stays taken and the offset unfinished; the slot is free. The
                    // record waits as a copy, not holding its fetch response.
                    let mut job = job.detach();
                    job.attempts = attempts;
                    job.first_try.get_or_insert(tried);
                    delayed.push(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        job
                    }));
                    continue;
                }
                Outcome::Alone { tried } => {
                    // Its key stays taken. It waits behind the ready records and then, most
                    // likely, for a dead letter's acknowledgement: as a copy, not holding its
                    // fetch response (measured: 1% of records dead-lettered at once took the
                    // peak memory from 100 MiB to 340 MiB).
                    let mut job = job.detach();
                    job.alone = true;
                    job.first_try.get_or_insert(tried);
                    self.keys.push_ready(job);
                    continue;
                }
                Outcome::Final => self.keys.finish(job.key),
                Outcome::Forwarded {
                    attempts,
                    origin_offset,
                } => self.keys.forwarded(job.key, (origin_offset, attempts)),
            }
            finished[job.topic] += 1;
            if let Some(position) = self.windows[job.topic].finish(job.message.offset()) {
                moved[job.topic] = Some(position);
            }
        }
        for (topic, n) in finished.into_iter().enumerate() {
            if n > 0 {
                self.held[topic].fetch_sub(n, Ordering::Relaxed);
            }
        }
        let mut list = TopicPartitionList::new();
        for (topic, position) in moved.iter().enumerate() {
            if let Some(position) = position {
                let _ = list.add_partition_offset(
                    &self.shared.topics[topic],
                    self.partition,
                    Offset::Offset(*position),
                );
            }
        }
        if list.count() > 0
            && let Err(e) = self.consumer.store_offsets(&list)
        {
            // The partition was revoked meanwhile: its new owner redelivers.
            debug!(partition = self.partition, error = %e, "could not store an offset");
        }
    }
}

/// Takes records to a final outcome: several first attempts in one handler call when the
/// handler batches, one by one otherwise (and whenever the batch fails).
/// Records of a partition task waiting only for a broker's acknowledgement (a retry or a
/// dead letter on its way): they lend their concurrency slot meanwhile, so a slow publish does
/// not hold back the records behind it.
#[derive(Debug, Default)]
struct Slots {
    lent: AtomicUsize,
    wake: tokio::sync::Notify,
}

/// A slot lent while it lives.
struct Lent<'a>(Option<&'a Slots>);

impl Slots {
    /// Lends the caller's slot (unless the partition runs one record at a time, in strict
    /// order) until the returned value is dropped.
    fn lend(&self, mode: Mode) -> Lent<'_> {
        if mode.wait_in_place {
            return Lent(None);
        }
        self.lent.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Lent(Some(self))
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.0 {
            slots.lent.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where a failed record waits for its next attempt.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// In the retry topic of its attempt (mode RetryTopics, when this worker owns them).
    via_topics: bool,
    /// In place, holding the partition (concurrency 1); otherwise the task schedules it again.
    wait_in_place: bool,
}

async fn run_jobs(
    shared: Arc<Shared>,
    slots: Arc<Slots>,
    jobs: Vec<Job>,
    mut stop: watch::Receiver<bool>,
    mut jitter: Jitter,
    mode: Mode,
) -> Vec<Done> {
    let started = Instant::now();
    let orders = shared.handler.needs_orders();
    let decoded: Vec<Decoded> = jobs.iter().map(|j| decode(&j.message, orders)).collect();
    let mut outcomes: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();

    // The fast path: every valid first attempt in one handler call.
    if jobs.len() > 1 && decoded.iter().filter(|d| d.is_ok()).count() > 1 {
        // The job behind each delivery of the batch.
        let batched: Vec<usize> = (0..jobs.len()).filter(|i| decoded[*i].is_ok()).collect();
        let deliveries: Vec<Delivery<'_>> = batched
            .iter()
            .map(|&i| {
                let event = decoded[i].as_ref().ok().and_then(Option::as_ref);
                delivery(&jobs[i].message, event)
            })
            .collect();
        let span = info_span!(
            target: crate::telemetry::TRACE_ONLY,
            "batch",
            otel.name = %format_args!("{} process", jobs[0].message.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.batch.message_count = deliveries.len(),
            partition = jobs[0].message.partition(),
            records = deliveries.len()
        );
        // One span for many records: linked to each record's producer span.
        for job in jobs.iter().filter(|_| !span.is_disabled()) {
            crate::tracing_ctx::link_from_headers(&span, job.message.headers());
        }
        let mut outage = Outage::default();
        loop {
            match shared
                .handler
                .handle_batch(&deliveries)
                .instrument(span.clone())
                .await
            {
                Ok(handled) => {
                    outage.end(&shared);
                    let elapsed = started.elapsed().as_secs_f64();
                    // A record the batch left (a conflicting order_id) runs by itself below,
                    // which reports it.
                    for (n, &i) in batched.iter().enumerate() {
                        if !handled.left.contains(&n) {
                            outcomes[i] = Some(Outcome::Final);
                            shared.duration.observe(elapsed);
                        }
                    }
                    shared
                        .handled
                        .inc_by((deliveries.len() - handled.left.len()) as u64);
                    count_duplicates(&shared, handled.duplicates);
                    break;
                }
                Err(HandlerError::Unavailable(message)) => {
                    if !outage.wait(&shared, &mut stop, &message).await {
                        outage.end(&shared);
                        break;
                    }
                }
                // One record may be at fault: fall back to one at a time.
                Err(HandlerError::Failed { .. } | HandlerError::Conflict { .. }) => {
                    outage.end(&shared);
                    break;
                }
            }
        }
    }

    // What the batch did not decide runs by itself: a dead letter's acknowledgement or a
    // retry's backoff then holds up only its own record. One record at a time per partition
    // (strict offset order) takes them here, in order.
    let separately = jobs.len() > 1 && !mode.wait_in_place;
    for (i, job) in jobs.iter().enumerate() {
        if outcomes[i].is_none() {
            outcomes[i] = Some(if stopping(&stop) {
                Outcome::Stopped
            } else if separately {
                Outcome::Alone { tried: started }
            } else {
                process_record(
                    &shared,
                    &slots,
                    job,
                    &decoded[i],
                    &mut stop,
                    &mut jitter,
                    mode,
                )
                .await
            });
        }
    }
    jobs.into_iter()
        .zip(outcomes)
        .map(|(job, outcome)| (job, outcome.unwrap_or(Outcome::Stopped)))
        .collect()
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

fn delivery<'a>(message: &'a Record, event: Option<&'a OrderEvent>) -> Delivery<'a> {
    let headers = message.headers();
    Delivery {
        event,
        value: message.payload().unwrap_or_default(),
        key: message.key(),
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        content_type: headers::get(headers, headers::CONTENT_TYPE)
            .unwrap_or(order::CONTENT_TYPE_JSON),
        correlation_id: headers::get(headers, headers::CORRELATION_ID),
        traceparent: headers::get(headers, headers::TRACEPARENT),
    }
}

/// A record ready for the handler: an order event, or (for handlers that forward any domain's
/// records) a record whose encoding checked out.
type Decoded = Result<Option<OrderEvent>, DecodeError>;

fn decode(message: &Record, orders: bool) -> Decoded {
    let content_type = headers::get(message.headers(), headers::CONTENT_TYPE);
    if orders {
        order::decode(content_type, message.payload()).map(Some)
    } else {
        order::check_encoding(content_type, message.payload()).map(|()| None)
    }
}

/// Tracks one sink outage: reported once, backing off while it lasts.
#[derive(Default)]
struct Outage {
    failures: u32,
}

impl Outage {
    /// Records a failed attempt and waits before the next; false when stopped meanwhile.
    async fn wait(
        &mut self,
        shared: &Shared,
        stop: &mut watch::Receiver<bool>,
        message: &str,
    ) -> bool {
        if self.failures == 0 {
            warn!(error = %message, "sink unavailable: pausing this partition until it answers");
            shared.health.sink_blocked();
            shared.metrics.sink_up.set(0);
        }
        let delay = retry::outage_delay(self.failures);
        self.failures += 1;
        pause(stop, delay).await
    }

    fn end(&mut self, shared: &Shared) {
        if self.failures > 0 {
            info!(failed_attempts = self.failures, "sink reachable again");
            shared.health.sink_unblocked();
            shared.metrics.sink_up.set(1);
            self.failures = 0;
        }
    }
}

/// Takes one record to an outcome: handled, dead-lettered, or (mode RetryTopics) forwarded to
/// the retry topic of its attempt. Retries in place otherwise.
#[allow(clippy::too_many_arguments)]
async fn process_record(
    shared: &Arc<Shared>,
    slots: &Slots,
    job: &Job,
    decoded: &Decoded,
    stop: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
    mode: Mode,
) -> Outcome {
    let started = job.first_try.unwrap_or_else(Instant::now);
    let message = &job.message;
    let headers = message.headers();
    let order = decoded.as_ref().ok().and_then(Option::as_ref);
    // Where the record was first consumed, and how often it failed before this copy.
    let retried = (job.topic > 0)
        .then(|| RetryState::parse(headers))
        .flatten();
    let origin = match &retried {
        Some(r) => Origin {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
        },
        None => Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
        },
    };
    let earlier = job.attempts;
    let correlation_id = headers::get(headers, headers::CORRELATION_ID)
        .or_else(|| order.map(|e| e.metadata.correlation_id.as_str()));
    let trace_id = headers::get(headers, headers::TRACEPARENT)
        .and_then(headers::parse_traceparent)
        .map(|t| t.trace_id)
        .or_else(|| order.map(|e| e.metadata.trace_id.as_str()));
    // Spans for trace export only (see telemetry::TRACE_ONLY): the log lines below name the
    // record themselves.
    let span = info_span!(
        target: crate::telemetry::TRACE_ONLY,
        "record",
        otel.name = %format_args!("{} process", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
        messaging.consumer.group.name = shared.config.group_id.as_str(),
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        earlier_attempts = earlier,
        correlation_id = correlation_id.unwrap_or_default(),
        trace_id = trace_id.unwrap_or_default(),
    );
    // A child of the producer's span (the gateway, or the retry-topic hop that sent it here).
    crate::tracing_ctx::set_parent_from_headers(&span, headers);
    let retry = &shared.config.retry;
    let source = shared.topics[0].as_str();
    let mut attempts: u32 = earlier;
    let mut outage = Outage::default();
    // The content hashes of the last failure when it was a conflict.
    let mut conflict: Option<(String, String)>;
    let (class, last_error) = loop {
        attempts += 1;
        let attempt = info_span!(
            target: crate::telemetry::TRACE_ONLY,
            parent: &span,
            "handle",
            attempt = attempts,
            error_class = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = match decoded {
            Ok(event) => {
                shared
                    .handler
                    .handle(&delivery(message, event.as_ref()))
                    .instrument(attempt.clone())
                    .await
            }
            Err(DecodeError::Deserialization(m)) => Err(HandlerError::Failed {
                class: ErrorClass::Deserialization,
                message: m.clone(),
            }),
            Err(e @ DecodeError::Validation(_)) => Err(HandlerError::Failed {
                class: ErrorClass::Validation,
                message: e.to_string(),
            }),
        };
        match result {
            Ok(handled) => {
                outage.end(shared);
                count_duplicates(shared, handled.duplicates);
                shared.handled.inc();
                shared.duration.observe(started.elapsed().as_secs_f64());
                return Outcome::Final;
            }
            Err(HandlerError::Unavailable(m)) => {
                // An outage is not the record's fault: it spends no attempt.
                attempts -= 1;
                if !outage.wait(shared, stop, &m).await {
                    outage.end(shared);
                    return Outcome::Stopped;
                }
            }
            Err(failure @ (HandlerError::Failed { .. } | HandlerError::Conflict { .. })) => {
                let (class, m) = match failure {
                    HandlerError::Conflict {
                        message,
                        stored_sha256,
                        incoming_sha256,
                    } => {
                        conflict = Some((stored_sha256, incoming_sha256));
                        (ErrorClass::Conflict, message)
                    }
                    HandlerError::Failed { class, message } => {
                        conflict = None;
                        (class, message)
                    }
                    HandlerError::Unavailable(_) => unreachable!("matched above"),
                };
                attempt.record("error_class", class.as_str());
                attempt.record("otel.status_code", "ERROR");
                outage.end(shared);
                let permanent = retry.permanent_errors.contains(&class);
                if permanent || attempts > retry.max_retries {
                    break (class, m);
                }
                shared
                    .metrics
                    .retries
                    .with_label_values(&[source, class.as_str()])
                    .inc();
                let delay = retry::delay(retry, attempts, jitter.next_unit());
                let topic = mode
                    .via_topics
                    .then(|| retry::retry_topic(&shared.config.retry_topics, attempts))
                    .flatten();
                if let Some(topic) = topic {
                    let state = RetryState {
                        topic: origin.topic,
                        partition: origin.partition,
                        offset: origin.offset,
                        timestamp_ms: origin.timestamp_ms,
                        attempts,
                        due_at_ms: jiff::Timestamp::now().as_millisecond()
                            + delay.as_millis() as i64,
                    };
                    debug!(topic = message.topic(), partition = message.partition(), offset = message.offset(), correlation_id, attempt = attempts, error_class = class.as_str(), error = %m, retry_in = ?delay, retry_topic = %topic.name, "record failed, sending it to the retry topic");
                    let hop = info_span!(
                        target: crate::telemetry::TRACE_ONLY,
                        parent: &span,
                        "retry",
                        otel.name = %format_args!("{} publish", topic.name),
                        otel.kind = "producer",
                        messaging.system = "kafka",
                        messaging.operation.type = "send",
                        messaging.destination.name = topic.name.as_str(),
                        attempt = attempts,
                        correlation_id = correlation_id.unwrap_or_default(),
                    );
                    // The next attempt's span continues from this hop.
                    let record_headers = crate::tracing_ctx::with_span_context(
                        Some(&headers::retry_headers(headers, &state, class.as_str(), &m)),
                        &hop,
                    );
                    let lent = slots.lend(mode);
                    let published =
                        publish(shared, &topic.name, message, record_headers, true, stop)
                            .instrument(hop)
                            .await;
                    drop(lent);
                    match published {
                        Published::Acked => {
                            return Outcome::Forwarded {
                                attempts,
                                origin_offset: origin.offset,
                            };
                        }
                        Published::Stopped => return Outcome::Stopped,
                        Published::TooLarge(_) => {
                            warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), correlation_id, retry_topic = %topic.name, "the record is too large for the retry topic: retrying in place")
                        }
                    }
                } else {
                    debug!(topic = message.topic(), partition = message.partition(), offset = message.offset(), correlation_id, attempt = attempts, error_class = class.as_str(), error = %m, retry_in = ?delay, "record failed, retrying");
                }
                if !mode.wait_in_place {
                    return Outcome::Retry {
                        attempts,
                        delay,
                        tried: started,
                    };
                }
                if !pause(stop, delay).await {
                    return Outcome::Stopped;
                }
            }
        }
    };
    warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), correlation_id, trace_id, attempts, error_class = class.as_str(), error = %last_error, "giving up: sending the record to the dead-letter topic");
    let dead_letter_span = info_span!(
        target: crate::telemetry::TRACE_ONLY,
        parent: &span,
        "dead_letter",
        otel.name = %format_args!("{} publish", shared.config.dead_letter_topic),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = shared.config.dead_letter_topic.as_str(),
        error_class = class.as_str(),
        attempts,
        correlation_id = correlation_id.unwrap_or_default(),
    );
    let lent = slots.lend(mode);
    let published = dead_letter(
        shared,
        message,
        &DeadLetter {
            topic: origin.topic,
            partition: origin.partition,
            offset: origin.offset,
            timestamp_ms: origin.timestamp_ms,
            group: &shared.config.group_id,
            error_class: class.as_str(),
            error_message: &last_error,
            attempts,
            failed_at: jiff::Timestamp::now().to_string(),
            correlation_id,
            trace_id,
            conflict: conflict
                .as_ref()
                .filter(|_| class == ErrorClass::Conflict)
                .map(|(stored, incoming)| (stored.as_str(), incoming.as_str())),
        },
        stop,
    )
    .instrument(dead_letter_span)
    .await;
    drop(lent);
    if published {
        shared.dead_lettered.inc();
        shared.duration.observe(started.elapsed().as_secs_f64());
        Outcome::Final
    } else {
        Outcome::Stopped
    }
}

/// Where a record was first consumed.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
}

/// How a publish of the worker's own ended.
enum Published {
    Acked,
    /// Stopped before the broker acknowledged it.
    Stopped,
    /// The topic refuses records this large; the headers come back for another try.
    TooLarge(OwnedHeaders),
}

/// Publishes `message`'s key (and value, when `with_value`) with `record_headers` to `topic`,
/// retrying until the broker acknowledges: nothing is dropped. Keeps the source partition
/// number when the topic has it (retry topics always do).
async fn publish(
    shared: &Shared,
    topic: &str,
    message: &Record,
    mut record_headers: OwnedHeaders,
    with_value: bool,
    stop: &mut watch::Receiver<bool>,
) -> Published {
    let keep_partition = topic != shared.config.dead_letter_topic
        || message.partition() < shared.dead_letter_partitions.load(Ordering::Relaxed);
    let mut failures = 0;
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(record_headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload().filter(|_| with_value) {
            record = record.payload(value);
        }
        if keep_partition {
            record = record.partition(message.partition());
        }
        match shared.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => {
                shared
                    .metrics
                    .producer_messages
                    .with_label_values(&[topic, "acked"])
                    .inc();
                return Published::Acked;
            }
            Err((e, mut returned)) => {
                // A refused record comes back with its headers: they go out again unchanged.
                record_headers = returned.detach_headers().unwrap_or_default();
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                    return Published::TooLarge(record_headers);
                }
                shared
                    .metrics
                    .producer_messages
                    .with_label_values(&[topic, "failed"])
                    .inc();
                error!(error = %e, %topic, source_topic = message.topic(), partition = message.partition(), offset = message.offset(), "could not publish; retrying, the offset stays uncommitted");
                if !pause(stop, retry::outage_delay(failures)).await {
                    return Published::Stopped;
                }
                failures += 1;
            }
        }
    }
}

/// Publishes the dead letter until the broker acknowledges it; false only when stopped first
/// (the offset then stays unstored and the record is redelivered).
async fn dead_letter(
    shared: &Shared,
    message: &Record,
    dl: &DeadLetter<'_>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let topic = &shared.config.dead_letter_topic;
    let record_headers = headers::dead_letter_headers(message.headers(), dl);
    let mut outcome = publish(shared, topic, message, record_headers, true, stop).await;
    if let Published::TooLarge(record_headers) = outcome {
        // The dead-letter topic takes smaller records than the source: keep every header (the
        // original coordinates locate the value) and say the value was left out.
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "the dead letter is too large for its topic; publishing it without its value"
        );
        let size = message.payload().map_or(0, <[u8]>::len).to_string();
        let mut record_headers = record_headers.insert(rdkafka::message::Header {
            key: headers::DLQ_VALUE_OMITTED,
            value: Some(&size),
        });
        outcome = loop {
            match publish(shared, topic, message, record_headers, false, stop).await {
                Published::TooLarge(returned) => record_headers = returned,
                done => break done,
            }
            // Even the headers are refused: a broker misconfiguration. Keep trying rather
            // than drop the record.
            error!(dead_letter_topic = %topic, topic = message.topic(), partition = message.partition(), offset = message.offset(), "the dead-letter topic refuses even the headers of this record");
            if !pause(stop, Duration::from_secs(10)).await {
                return false;
            }
        };
    }
    if let Published::Acked = outcome {
        shared
            .metrics
            .dlq_messages
            .with_label_values(&[topic, dl.error_class])
            .inc();
        true
    } else {
        false
    }
}
