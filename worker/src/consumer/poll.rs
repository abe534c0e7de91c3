//! The poll thread: librdkafka's callbacks (rebalances, commits, statistics), the hand-over of
//! polled records to the partition tasks, and back-pressure (pausing full partitions at the
//! broker).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::record::{Record, RecordQueue};

use super::task::PartitionTask;
use super::{Gate, Input, PartitionHandle, Shared, WorkerConsumer};

/// Records the poll thread takes from librdkafka per pass (all already fetched: it waits only
/// for the first): each partition task gets them in one message and one wake-up, and flow
/// control looks at the tasks once per pass.
pub(super) const BURST: usize = 256;

/// Records of one topic-partition held in memory at which it is paused at the broker, and
/// resumed again. Retry partitions are read ahead less: their records mostly wait.
pub(super) const PAUSE_AT: usize = 5_000;

pub(super) const RESUME_AT: usize = 1_000;

pub(super) const RETRY_PAUSE_AT: usize = 1_000;

pub(super) const RETRY_RESUME_AT: usize = 200;

/// The consumer's context: revocation drains partition tasks and commits; assignment sets the
/// retry gates; statistics feed the lag gauge.
pub(super) struct WorkerContext {
    pub(super) shared: Arc<Shared>,
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

/// Partition tasks are per partition number: the task of p handles partition p of the source
/// and of every retry topic (the range assignor keeps them together). The classic protocol
/// revokes and assigns everything at each rebalance. The consumer protocol (KIP-848) moves only
/// the partitions that change owner, and could move p of one topic without p of another: then
/// the task of p stops whole, and the topics of p this member keeps are read again from their
/// committed offsets by the task that replaces it.
impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partition_numbers(list);
            info!(
                ?partitions,
                "partitions revoked: finishing in-flight records"
            );
            // Another member reports their lag from now on.
            for e in list.elements() {
                let _ = self
                    .shared
                    .metrics
                    .consumer_lag
                    .remove_label_values(&[e.topic(), &e.partition().to_string()]);
            }
            let kept = kept_of(consumer, &partitions, list);
            self.shared
                .restart_partitions(consumer, &partitions, "revocation");
            *self.shared.rewind.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(_) => {
                let kept = std::mem::take(
                    &mut *self.shared.rewind.lock().unwrap_or_else(|p| p.into_inner()),
                );
                rewind(consumer, &kept);
            }
            Rebalance::Assign(list) => self.assigned(consumer, list),
            Rebalance::Error(_) => {}
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

impl WorkerContext {
    /// `list` was just added to the assignment (all of it under the classic protocol).
    fn assigned(&self, consumer: &WorkerConsumer, list: &TopicPartitionList) {
        // Before their first fetch: the partitions' records go to the poll thread's batches.
        if let Some(records) = self.shared.record_queue() {
            for e in list.elements() {
                records.forward(e.topic(), e.partition());
            }
        }
        let numbers = partition_numbers(list);
        // Partition numbers of which this member already held another topic: their task
        // restarts, so that it starts with the whole partition's gate.
        let held = kept_of(consumer, &numbers, list);
        if held.count() > 0 {
            let restarted = partition_numbers(&held);
            info!(partitions = ?restarted, "partitions completed: restarting their tasks");
            self.shared
                .restart_partitions(consumer, &restarted, "assignment");
            rewind(consumer, &held);
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
            let whole = consumer.assignment().unwrap_or_else(|_| list.clone());
            for partition in numbers {
                if whole.find_partition(source, partition).is_some() {
                    let gate = retry_gate(consumer, &self.shared.topics, &whole, partition);
                    self.shared.set_gate(partition, gate);
                }
            }
        }
    }
}

/// The distinct partition numbers of `list`, sorted.
fn partition_numbers(list: &TopicPartitionList) -> Vec<i32> {
    let mut partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// The topic-partitions of the consumer's assignment numbered as one of `partitions` and not in
/// `changing`: what this member keeps of partition numbers whose ownership changes.
fn kept_of(
    consumer: &WorkerConsumer,
    partitions: &[i32],
    changing: &TopicPartitionList,
) -> TopicPartitionList {
    let mut kept = TopicPartitionList::new();
    if let Ok(assignment) = consumer.assignment() {
        for e in assignment.elements() {
            if partitions.contains(&e.partition())
                && changing.find_partition(e.topic(), e.partition()).is_none()
            {
                kept.add_partition(e.topic(), e.partition());
            }
        }
    }
    kept
}

/// Moves the fetch position of `list` back to its committed offsets (the earliest when none),
/// where the records its stopped task left unfinished start.
fn rewind(consumer: &WorkerConsumer, list: &TopicPartitionList) {
    if list.count() == 0 {
        return;
    }
    let timeout = Duration::from_secs(10);
    let committed = match consumer.committed_offsets(list.clone(), timeout) {
        Ok(committed) => committed,
        Err(e) => {
            warn!(error = %e, "could not read committed offsets to rewind to; the records in flight are read again by the next owner");
            return;
        }
    };
    let mut targets = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        let _ = targets.add_partition_offset(e.topic(), e.partition(), offset);
    }
    match consumer.seek_partitions(targets, timeout) {
        Ok(done) => {
            for e in done.elements() {
                if let Err(err) = e.error() {
                    warn!(topic = e.topic(), partition = e.partition(), error = %err, "could not rewind the partition");
                }
            }
        }
        Err(e) => warn!(error = %e, "could not rewind partitions"),
    }
}

/// The gate of source partition `partition`: retry topics are used only when this worker owns
/// the same partition of every retry topic; their unread records are read first.
pub(super) fn retry_gate(
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

pub(super) fn commit(consumer: &WorkerConsumer, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => debug!(why, "committed offsets"),
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Err(e) => warn!(why, error = %e, "offset commit failed"),
    }
}

impl Shared {
    /// Stops the tasks of `partitions` and commits what they finished; the records they
    /// polled and had not handed over are dropped.
    fn restart_partitions(&self, consumer: &WorkerConsumer, partitions: &[i32], why: &str) {
        self.stop_partitions(Some(partitions));
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(partitions);
        commit(consumer, why);
    }

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
        {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            match partitions {
                Some(list) => list.iter().for_each(|p| drop(gates.remove(p))),
                None => gates.clear(),
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

/// The poll thread: hands records to partition tasks until stopping, then drains, commits and
/// closes the consumer (leaving the group).
///
/// Each pass serves the consumer's events first (rebalance callbacks run there), then takes a
/// batch of records from `records`. A record still on the consumer's queue was fetched before
/// its partition was forwarded, so it comes before any of that partition's records in `records`.
pub(super) fn poll_loop(
    consumer: Arc<WorkerConsumer>,
    shared: Arc<Shared>,
    records: Arc<RecordQueue>,
) -> Ended {
    let mut burst: Vec<Record> = Vec::with_capacity(BURST);
    let mut ended = Ended::Stopped;
    while !shared.stopping.load(Ordering::Relaxed) {
        // A fatal error ends this consumer: no record it still hands over could be committed.
        if let Some((code, reason)) = consumer.client().fatal_error() {
            warn!(%code, %reason, "fatal consumer error");
            ended = Ended::Fatal { code, reason };
            break;
        }
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
    shared
        .revoked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    commit(&consumer, "shutdown");
    consumer.unsubscribe();
    // Every record is gone with the tasks; the queue goes before the consumer.
    drop(burst);
    drop(records);
    // The last reference: dropping closes the consumer and leaves the group.
    drop(consumer);
    ended
}

/// Why the poll thread returned.
#[derive(Debug)]
pub(super) enum Ended {
    /// A stop was requested.
    Stopped,
    /// librdkafka raised a fatal error: the consumer can do nothing more.
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
}

/// Serves what waits on the consumer's queue: rebalances, commit results, errors, and records
/// fetched before their partition was forwarded (copied: they are few).
pub(super) fn serve_events(
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
pub(super) fn drop_revoked(shared: &Shared, burst: &mut Vec<Record>) {
    let mut revoked = shared.revoked.lock().unwrap_or_else(|p| p.into_inner());
    if !revoked.is_empty() {
        burst.retain(|m| !revoked.contains(&m.partition()));
        revoked.clear();
    }
}

/// Hands each partition task its records of `burst` (emptied), in poll order.
pub(super) fn dispatch(
    consumer: &Arc<WorkerConsumer>,
    shared: &Arc<Shared>,
    burst: &mut Vec<Record>,
) {
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

pub(super) fn hand_over(
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

pub(super) fn pause_at(topic: usize) -> usize {
    if topic == 0 { PAUSE_AT } else { RETRY_PAUSE_AT }
}

pub(super) fn resume_at(topic: usize) -> usize {
    if topic == 0 {
        RESUME_AT
    } else {
        RETRY_RESUME_AT
    }
}

/// Topic-partitions holding too many records, as (partition, topic index).
pub(super) fn full(shared: &Shared) -> Vec<(i32, usize)> {
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
pub(super) fn throttle(consumer: &WorkerConsumer, shared: &Shared) {
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

pub(super) fn resume_drained(consumer: &WorkerConsumer, shared: &Shared) {
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

pub(super) fn set_paused(
    consumer: &WorkerConsumer,
    topic: &str,
    partition: i32,
    paused: bool,
) -> bool {
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
