//! The consumer runtime: at-least-once consumption with retries and a dead-letter topic.
//!
//! One thread polls Kafka and hands each record to the task of its partition; partitions run
//! in parallel, the records of one partition strictly in order. A partition task stores a
//! record's offset only when its outcome is final (handled, or acknowledged by the dead-letter
//! topic), and librdkafka commits stored offsets every second, on partition revocation and at
//! shutdown. A partition whose queue grows (a slow handler, retries, a sink outage) is paused at
//! the broker, so memory stays bounded and other partitions keep going.
//!
//! A sink outage does not spend the retry budget: the partition waits, the worker reports not
//! ready, and consumption resumes when the sink answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::{ErrorClass, WorkerConfig};
use crate::handler::{Delivery, Handler, HandlerError};
use crate::headers::{self, DeadLetter};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::order::{self, DecodeError, OrderEvent};
use crate::retry::{self, Jitter};

/// Records a partition task takes from its queue at once (one event store statement).
const MAX_BATCH: usize = 500;
/// Queue length at which a partition is paused at the broker, and resumed again.
const PAUSE_AT: usize = 5_000;
const RESUME_AT: usize = 1_000;

type WorkerConsumer = BaseConsumer<WorkerContext>;

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
    runtime: tokio::runtime::Handle,
    partitions: Mutex<HashMap<i32, PartitionHandle>>,
    stopping: AtomicBool,
}

struct PartitionHandle {
    queue: mpsc::UnboundedSender<OwnedMessage>,
    queued: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    paused: bool,
}

/// The consumer's context: revocation drains partition tasks and commits; statistics feed
/// the lag gauge.
struct WorkerContext {
    shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.shared
                        .metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            info!(
                ?partitions,
                "partitions revoked: finishing in-flight records"
            );
            self.shared.stop_partitions(Some(&partitions));
            commit(consumer, "revocation");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            info!(?partitions, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result
            && e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
        {
            warn!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

fn commit(consumer: &WorkerConsumer, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => debug!(why, "committed offsets"),
        Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
        Err(e) => warn!(why, error = %e, "offset commit failed"),
    }
}

impl Shared {
    /// Stops the tasks of `partitions` (all when `None`): a handler call in progress finishes,
    /// sleeps and queued records are abandoned (their offsets stay unstored, so they are
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
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        // The broker's topic limit decides; a dead letter can be as large as its source.
        .set("message.max.bytes", "16777216")
        .create()?;
    let topic = config.source_topic.as_str();
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
        runtime: tokio::runtime::Handle::current(),
        partitions: Mutex::default(),
        stopping: AtomicBool::new(false),
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
            .create_with_context(WorkerContext {
                shared: Arc::clone(&shared),
            })?,
    );
    consumer.subscribe(&[&config.source_topic])?;
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

    info!(topic = %config.source_topic, group = %config.group_id, "consuming");
    health.set_started(true);
    let poller = {
        let shared = Arc::clone(&shared);
        let consumer = Arc::clone(&consumer);
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(consumer, shared))
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
fn poll_loop(consumer: Arc<WorkerConsumer>, shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::Relaxed) {
        throttle(&consumer, &shared);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => warn!(error = %e, "consumer error"),
            Some(Ok(message)) => dispatch(&consumer, &shared, message.detach()),
        }
        resume_drained(&consumer, &shared);
    }
    shared.stop_partitions(None);
    commit(&consumer, "shutdown");
    consumer.unsubscribe();
    // The last reference: dropping closes the consumer and leaves the group.
    drop(consumer);
}

fn dispatch(consumer: &Arc<WorkerConsumer>, shared: &Arc<Shared>, message: OwnedMessage) {
    let partition = message.partition();
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    let handle = map.entry(partition).or_insert_with(|| {
        let (queue, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let queued = Arc::new(AtomicUsize::new(0));
        let task = shared.runtime.spawn(partition_task(
            Arc::clone(shared),
            Arc::clone(consumer),
            partition,
            rx,
            Arc::clone(&queued),
            stop_rx,
        ));
        PartitionHandle {
            queue,
            queued,
            stop,
            task,
            paused: false,
        }
    });
    handle.queued.fetch_add(1, Ordering::Relaxed);
    if handle.queue.send(message).is_err() {
        handle.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Flow control. A full partition queue first gets a few milliseconds to drain (the usual case:
/// every partition is just busy); one still full after that is stuck (retries, an outage) and is
/// paused at the broker, so the others keep flowing. Pausing throws away the records librdkafka
/// prefetched for that partition, so it is kept for real stalls.
fn throttle(consumer: &WorkerConsumer, shared: &Shared) {
    // The common case costs one uncontended lock and no allocation.
    let any_full = {
        let map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .any(|h| !h.paused && h.queued.load(Ordering::Relaxed) >= PAUSE_AT)
    };
    if !any_full {
        return;
    }
    let full = |shared: &Shared| {
        let map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, h)| !h.paused && h.queued.load(Ordering::Relaxed) >= PAUSE_AT)
            .map(|(p, _)| *p)
            .collect::<Vec<i32>>()
    };
    for _ in 0..50 {
        if full(shared).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let stuck = full(shared);
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    for partition in stuck {
        if let Some(handle) = map.get_mut(&partition)
            && set_paused(consumer, &shared.config.source_topic, partition, true)
        {
            handle.paused = true;
        }
    }
}

fn resume_drained(consumer: &WorkerConsumer, shared: &Shared) {
    let mut map = shared.partitions.lock().unwrap_or_else(|p| p.into_inner());
    if !map.values().any(|h| h.paused) {
        return;
    }
    for (partition, handle) in map.iter_mut() {
        if handle.paused
            && handle.queued.load(Ordering::Relaxed) <= RESUME_AT
            && set_paused(consumer, &shared.config.source_topic, *partition, false)
        {
            handle.paused = false;
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
            debug!(partition, paused, "flow control");
            true
        }
        Err(e) => {
            warn!(partition, paused, error = %e, "could not change the partition's flow");
            false
        }
    }
}

/// How far a batch got before a stop.
enum Progress {
    /// Every record is final.
    Complete,
    /// Only the first `n` records are final.
    Stopped(usize),
}

async fn partition_task(
    shared: Arc<Shared>,
    consumer: Arc<WorkerConsumer>,
    partition: i32,
    mut queue: mpsc::UnboundedReceiver<OwnedMessage>,
    queued: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = Jitter::seeded();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(64);
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            message = queue.recv() => match message {
                Some(m) => m,
                None => break,
            },
        };
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let finished = match process_batch(&shared, &batch, &mut stop, &mut jitter).await {
            Progress::Complete => batch.len(),
            Progress::Stopped(n) => n,
        };
        if let Some(last) = finished.checked_sub(1).map(|i| &batch[i]) {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition_offset(
                last.topic(),
                partition,
                Offset::Offset(last.offset() + 1),
            );
            if let Err(e) = consumer.store_offsets(&list) {
                // The partition was revoked meanwhile: its new owner redelivers.
                debug!(partition, error = %e, "could not store an offset");
            }
        }
        if finished < batch.len() {
            break;
        }
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

fn delivery<'a>(message: &'a OwnedMessage, event: Option<&'a OrderEvent>) -> Delivery<'a> {
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

fn decode(message: &OwnedMessage, orders: bool) -> Decoded {
    let content_type = headers::get(message.headers(), headers::CONTENT_TYPE);
    if orders {
        order::decode(content_type, message.payload()).map(Some)
    } else {
        order::check_encoding(content_type, message.payload()).map(|()| None)
    }
}

async fn process_batch(
    shared: &Arc<Shared>,
    batch: &[OwnedMessage],
    stop: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
) -> Progress {
    let started = Instant::now();
    let orders = shared.handler.needs_orders();
    let decoded: Vec<Decoded> = batch.iter().map(|m| decode(m, orders)).collect();
    let mut done = vec![false; batch.len()];

    // The fast path: every valid record of the batch in one handler call.
    if shared.handler.batches() && decoded.iter().filter(|d| d.is_ok()).count() > 1 {
        let deliveries: Vec<Delivery<'_>> = batch
            .iter()
            .zip(&decoded)
            .filter_map(|(m, d)| d.as_ref().ok().map(|event| delivery(m, event.as_ref())))
            .collect();
        let span = info_span!(
            "batch",
            partition = batch[0].partition(),
            records = deliveries.len()
        );
        let mut outage = Outage::default();
        loop {
            match shared
                .handler
                .handle_batch(&deliveries)
                .instrument(span.clone())
                .await
            {
                Ok(()) => {
                    outage.end(shared);
                    let elapsed = started.elapsed().as_secs_f64();
                    for (i, d) in decoded.iter().enumerate() {
                        if d.is_ok() {
                            done[i] = true;
                            shared.duration.observe(elapsed);
                        }
                    }
                    shared.handled.inc_by(deliveries.len() as u64);
                    break;
                }
                Err(HandlerError::Unavailable(message)) => {
                    if !outage.wait(shared, stop, &message).await {
                        outage.end(shared);
                        return Progress::Stopped(0);
                    }
                }
                // One record may be at fault: fall back to one at a time.
                Err(HandlerError::Failed { .. }) => {
                    outage.end(shared);
                    break;
                }
            }
        }
    }

    for (i, message) in batch.iter().enumerate() {
        if done[i] {
            continue;
        }
        if stopping(stop) {
            return Progress::Stopped(i);
        }
        if !process_record(shared, message, &decoded[i], stop, jitter).await {
            return Progress::Stopped(i);
        }
    }
    Progress::Complete
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

/// Takes one record to a final outcome; false when stopped before that.
async fn process_record(
    shared: &Arc<Shared>,
    message: &OwnedMessage,
    decoded: &Decoded,
    stop: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
) -> bool {
    let started = Instant::now();
    let headers = message.headers();
    let order = decoded.as_ref().ok().and_then(Option::as_ref);
    let correlation_id = headers::get(headers, headers::CORRELATION_ID)
        .or_else(|| order.map(|e| e.metadata.correlation_id.as_str()));
    let trace_id = headers::get(headers, headers::TRACEPARENT)
        .and_then(headers::parse_traceparent)
        .map(|t| t.trace_id)
        .or_else(|| {
            decoded
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(|e| e.metadata.trace_id.as_str())
        });
    let span = info_span!(
        "record",
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        correlation_id = correlation_id.unwrap_or_default(),
        trace_id = trace_id.unwrap_or_default(),
    );
    let retry = &shared.config.retry;
    let topic = message.topic();
    let mut attempts: u32 = 0;
    let mut outage = Outage::default();
    let (class, last_error) = loop {
        attempts += 1;
        let result = match decoded {
            Ok(event) => {
                shared
                    .handler
                    .handle(&delivery(message, event.as_ref()))
                    .instrument(span.clone())
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
            Ok(()) => {
                outage.end(shared);
                shared.handled.inc();
                shared.duration.observe(started.elapsed().as_secs_f64());
                return true;
            }
            Err(HandlerError::Unavailable(m)) => {
                // An outage is not the record's fault: it spends no attempt.
                attempts -= 1;
                if !outage.wait(shared, stop, &m).await {
                    outage.end(shared);
                    return false;
                }
            }
            Err(HandlerError::Failed { class, message: m }) => {
                outage.end(shared);
                let permanent = retry.permanent_errors.contains(&class);
                if permanent || attempts > retry.max_retries {
                    break (class, m);
                }
                shared
                    .metrics
                    .retries
                    .with_label_values(&[topic, class.as_str()])
                    .inc();
                let delay = retry::delay(retry, attempts, jitter.next_unit());
                span.in_scope(|| {
                    warn!(attempt = attempts, error_class = class.as_str(), error = %m, retry_in = ?delay, "record failed, retrying")
                });
                if !pause(stop, delay).await {
                    return false;
                }
            }
        }
    };
    span.in_scope(|| {
        warn!(attempts, error_class = class.as_str(), error = %last_error, "giving up: sending the record to the dead-letter topic")
    });
    let published = dead_letter(
        shared,
        message,
        &DeadLetter {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            group: &shared.config.group_id,
            error_class: class.as_str(),
            error_message: &last_error,
            attempts,
            failed_at: jiff::Timestamp::now().to_string(),
            correlation_id,
            trace_id,
        },
        stop,
    )
    .instrument(span)
    .await;
    if published {
        shared.dead_lettered.inc();
        shared.duration.observe(started.elapsed().as_secs_f64());
    }
    published
}

/// Publishes the dead letter until the broker acknowledges it; false only when stopped first
/// (the offset then stays unstored and the record is redelivered).
async fn dead_letter(
    shared: &Shared,
    message: &OwnedMessage,
    dl: &DeadLetter<'_>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let topic = &shared.config.dead_letter_topic;
    let mut record_headers = headers::dead_letter_headers(message.headers(), dl);
    let keep_partition =
        message.partition() < shared.dead_letter_partitions.load(Ordering::Relaxed);
    let mut failures = 0;
    let mut with_value = true;
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(record_headers.clone());
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
                shared
                    .metrics
                    .dlq_messages
                    .with_label_values(&[topic, dl.error_class])
                    .inc();
                return true;
            }
            Err((e, _))
                if with_value
                    && e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge) =>
            {
                // The dead-letter topic takes smaller records than the source: keep every header
                // (the original coordinates locate the value) and say the value was left out.
                warn!(error = %e, "the dead letter is too large for its topic; publishing it without its value");
                let size = message.payload().map_or(0, <[u8]>::len).to_string();
                record_headers = record_headers.insert(rdkafka::message::Header {
                    key: headers::DLQ_VALUE_OMITTED,
                    value: Some(&size),
                });
                with_value = false;
            }
            Err((e, _)) => {
                shared
                    .metrics
                    .producer_messages
                    .with_label_values(&[topic, "failed"])
                    .inc();
                error!(error = %e, dead_letter_topic = %topic, "could not publish a dead letter; retrying, the offset stays uncommitted");
                if !pause(stop, retry::outage_delay(failures)).await {
                    return false;
                }
                failures += 1;
            }
        }
    }
}
