//! The task of one partition number: admits records in key order, lends concurrency slots,
//! schedules retries and stores offsets once every earlier record is final.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::headers::RetryState;
use crate::record::Record;
use crate::retry::Jitter;
use crate::schedule::{KeyQueue, OffsetWindow, key_hash};

use super::decide::Mode;
use super::job::{Job, run_jobs};
use super::{BoxFuture, Input, Shared, WorkerConsumer};

/// Records one event store statement takes at most.
pub(super) const MAX_BATCH: usize = 500;

/// Inputs (bursts of records) a task takes from its queue before it starts work again.
pub(super) const MAX_INTAKE: usize = 16;

/// How long a task waits for its retry partitions before reading the source anyway.
pub(super) const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a record's processing ended.
pub(super) enum Outcome {
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

pub(super) type Done = (Job, Outcome);

/// The task of one partition number: its source partition and the same partition of every
/// retry topic.
pub(super) struct PartitionTask {
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
    pub(super) fn new(
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

    pub(super) async fn run(
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

/// Records of a partition task waiting only for a broker's acknowledgement (a retry or a
/// dead letter on its way): they lend their concurrency slot meanwhile, so a slow publish does
/// not hold back the records behind it.
#[derive(Debug, Default)]
pub(super) struct Slots {
    lent: AtomicUsize,
    wake: tokio::sync::Notify,
}

/// A slot lent while it lives.
pub(super) struct Lent<'a>(Option<&'a Slots>);

impl Slots {
    /// Lends the caller's slot (unless the partition runs one record at a time, in strict
    /// order) until the returned value is dropped.
    pub(super) fn lend(&self, mode: Mode) -> Lent<'_> {
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
