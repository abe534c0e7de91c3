//! One record, or one batch of records, taken to a final outcome: the handler, retries in
//! place, the retry topics and the dead-letter topic.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{ErrorClass, RetryTopic};
use crate::handler::{Delivery, HandlerError};
use crate::headers::{self, DeadLetter, RetryState};
use crate::order::{self, DecodeError, OrderEvent};
use crate::record::Record;
use crate::retry::{self, Jitter};

use super::decide::{Decision, Mode, Wait, decide};
use super::task::{Done, Outcome, Slots};
use super::{Shared, count_duplicates, pause, stopping};

/// One record on its way to a final outcome.
pub(super) struct Job {
    pub(super) message: Record,
    /// Index into `Shared::topics`: 0 for the source, n for the n-th retry topic.
    pub(super) topic: usize,
    pub(super) key: Option<u64>,
    /// Failed attempts so far (in this worker, or as the retry headers say).
    pub(super) attempts: u32,
    /// When this worker first tried it (the processing duration counts from there).
    pub(super) first_try: Option<Instant>,
    /// Its batch did not decide it: it runs by itself.
    pub(super) alone: bool,
}

impl Job {
    /// The job with its record copied out of librdkafka's fetch buffer, for a long wait.
    pub(super) fn detach(self) -> Self {
        Self {
            message: self.message.detach(),
            ..self
        }
    }
}

/// Takes records to a final outcome: several first attempts in one handler call when the
/// handler batches, one by one otherwise (and whenever the batch fails).
pub(super) async fn run_jobs(
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

pub(super) fn delivery<'a>(message: &'a Record, event: Option<&'a OrderEvent>) -> Delivery<'a> {
    let [content_type, correlation_id, traceparent] = headers::get_all(
        message.headers(),
        [
            headers::CONTENT_TYPE,
            headers::CORRELATION_ID,
            headers::TRACEPARENT,
        ],
    );
    Delivery {
        event,
        value: message.payload().unwrap_or_default(),
        key: message.key(),
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        content_type: content_type.unwrap_or(order::CONTENT_TYPE_JSON),
        correlation_id,
        traceparent,
    }
}

/// A record ready for the handler: an order event, or (for handlers that forward any domain's
/// records) a record whose encoding checked out.
pub(super) type Decoded = Result<Option<OrderEvent>, DecodeError>;

pub(super) fn decode(message: &Record, orders: bool) -> Decoded {
    let content_type = headers::get(message.headers(), headers::CONTENT_TYPE);
    if orders {
        order::decode(content_type, message.payload()).map(Some)
    } else {
        order::check_encoding(content_type, message.payload()).map(|()| None)
    }
}

/// Tracks one sink outage: reported once, backing off while it lasts.
#[derive(Default)]
pub(super) struct Outage {
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

/// Takes one record to an outcome: handled, dead-lettered, forwarded to the retry topic of its
/// attempt, or handed back to its task to wait (see [`decide`]).
pub(super) async fn process_record(
    shared: &Arc<Shared>,
    slots: &Slots,
    job: &Job,
    decoded: &Decoded,
    stop: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
    mode: Mode,
) -> Outcome {
    let started = job.first_try.unwrap_or_else(Instant::now);
    let record = InFlight::of(shared, job, decoded);
    let message = record.message;
    let retry = &shared.config.retry;
    let source = shared.topics[0].as_str();
    let mut attempts: u32 = job.attempts;
    let mut outage = Outage::default();
    loop {
        attempts += 1;
        let attempt = info_span!(
            target: crate::telemetry::TRACE_ONLY,
            parent: &record.span,
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
        let failure = match result {
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
                continue;
            }
            Err(HandlerError::Conflict {
                message,
                stored_sha256,
                incoming_sha256,
            }) => Failure {
                class: ErrorClass::Conflict,
                message,
                conflict: Some((stored_sha256, incoming_sha256)),
            },
            Err(HandlerError::Failed { class, message }) => Failure {
                class,
                message,
                conflict: None,
            },
        };
        attempt.record("error_class", failure.class.as_str());
        attempt.record("otel.status_code", "ERROR");
        outage.end(shared);
        let class = failure.class;
        let next = decide(
            attempts,
            class,
            retry,
            &shared.config.retry_topics,
            mode,
            || jitter.next_unit(),
        );
        if !matches!(next, Decision::DeadLetter) {
            shared
                .metrics
                .retries
                .with_label_values(&[source, class.as_str()])
                .inc();
        }
        let wait = match next {
            Decision::DeadLetter => {
                return give_up(
                    shared, slots, &record, &failure, attempts, started, stop, mode,
                )
                .await;
            }
            Decision::Forward { topic, delay } => {
                record_event!(debug, message, correlation_id = record.correlation_id, attempt = attempts, error_class = class.as_str(), error = %failure.message, retry_in = ?delay, retry_topic = %topic.name, "record failed, sending it to the retry topic");
                let lent = slots.lend(mode);
                let published =
                    forward(shared, &record, &failure, attempts, topic, delay, stop).await;
                drop(lent);
                match published {
                    Published::Acked => {
                        return Outcome::Forwarded {
                            attempts,
                            origin_offset: record.origin.offset,
                        };
                    }
                    Published::Stopped => return Outcome::Stopped,
                    Published::TooLarge(_) => {
                        record_event!(warn, message, correlation_id = record.correlation_id, retry_topic = %topic.name, "the record is too large for the retry topic: retrying in place");
                        Wait::of(mode, delay)
                    }
                }
            }
            Decision::Wait(wait) => {
                record_event!(debug, message, correlation_id = record.correlation_id, attempt = attempts, error_class = class.as_str(), error = %failure.message, retry_in = ?wait.delay(), "record failed, retrying");
                wait
            }
        };
        match wait {
            Wait::Park(delay) => {
                return Outcome::Retry {
                    attempts,
                    delay,
                    tried: started,
                };
            }
            Wait::InPlace(delay) => {
                if !pause(stop, delay).await {
                    return Outcome::Stopped;
                }
            }
        }
    }
}

/// A record being processed: where it came from, the ids that name it in logs and traces, and
/// its span.
struct InFlight<'a> {
    message: &'a Record,
    origin: Origin<'a>,
    correlation_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    span: tracing::Span,
}

impl<'a> InFlight<'a> {
    fn of(shared: &'a Shared, job: &'a Job, decoded: &'a Decoded) -> Self {
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
        // One walk of the headers for both (they are read through FFI).
        let [correlation_id, traceparent] =
            headers::get_all(headers, [headers::CORRELATION_ID, headers::TRACEPARENT]);
        let correlation_id =
            correlation_id.or_else(|| order.map(|e| e.metadata.correlation_id.as_str()));
        let trace_id = traceparent
            .and_then(headers::parse_traceparent)
            .map(|t| t.trace_id)
            .or_else(|| order.map(|e| e.metadata.trace_id.as_str()));
        // Spans for trace export only (see telemetry::TRACE_ONLY): the log lines name the
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
            earlier_attempts = job.attempts,
            correlation_id = correlation_id.unwrap_or_default(),
            trace_id = trace_id.unwrap_or_default(),
        );
        // A child of the producer's span (the gateway, or the retry-topic hop that sent it here).
        crate::tracing_ctx::set_parent_from_headers(&span, headers);
        Self {
            message,
            origin,
            correlation_id,
            trace_id,
            span,
        }
    }
}

/// Why an attempt failed.
struct Failure {
    class: ErrorClass,
    message: String,
    /// The stored and incoming content hashes, when the failure is a conflict.
    conflict: Option<(String, String)>,
}

/// Publishes the record to `topic`, the retry topic of its `attempts`-th failure, due after
/// `delay`.
async fn forward(
    shared: &Shared,
    record: &InFlight<'_>,
    failure: &Failure,
    attempts: u32,
    topic: &RetryTopic,
    delay: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Published {
    let origin = &record.origin;
    let state = RetryState {
        topic: origin.topic,
        partition: origin.partition,
        offset: origin.offset,
        timestamp_ms: origin.timestamp_ms,
        attempts,
        due_at_ms: jiff::Timestamp::now().as_millisecond() + delay.as_millis() as i64,
    };
    let hop = info_span!(
        target: crate::telemetry::TRACE_ONLY,
        parent: &record.span,
        "retry",
        otel.name = %format_args!("{} publish", topic.name),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic.name.as_str(),
        attempt = attempts,
        correlation_id = record.correlation_id.unwrap_or_default(),
    );
    // The next attempt's span continues from this hop.
    let record_headers = crate::tracing_ctx::with_span_context(
        headers::retry_headers(
            record.message.headers(),
            &state,
            failure.class.as_str(),
            &failure.message,
        ),
        &hop,
    );
    publish(
        shared,
        &topic.name,
        record.message,
        record_headers,
        true,
        stop,
    )
    .instrument(hop)
    .await
}

/// Sends the record to the dead-letter topic after its last failed attempt.
#[allow(clippy::too_many_arguments)]
async fn give_up(
    shared: &Shared,
    slots: &Slots,
    record: &InFlight<'_>,
    failure: &Failure,
    attempts: u32,
    started: Instant,
    stop: &mut watch::Receiver<bool>,
    mode: Mode,
) -> Outcome {
    let class = failure.class;
    record_event!(warn, record.message, correlation_id = record.correlation_id, trace_id = record.trace_id, attempts, error_class = class.as_str(), error = %failure.message, "giving up: sending the record to the dead-letter topic");
    let dead_letter_span = info_span!(
        target: crate::telemetry::TRACE_ONLY,
        parent: &record.span,
        "dead_letter",
        otel.name = %format_args!("{} publish", shared.config.dead_letter_topic),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = shared.config.dead_letter_topic.as_str(),
        error_class = class.as_str(),
        attempts,
        correlation_id = record.correlation_id.unwrap_or_default(),
    );
    let origin = &record.origin;
    let lent = slots.lend(mode);
    let published = dead_letter(
        shared,
        record.message,
        &DeadLetter {
            topic: origin.topic,
            partition: origin.partition,
            offset: origin.offset,
            timestamp_ms: origin.timestamp_ms,
            group: &shared.config.group_id,
            error_class: class.as_str(),
            error_message: &failure.message,
            attempts,
            failed_at: jiff::Timestamp::now().to_string(),
            correlation_id: record.correlation_id,
            trace_id: record.trace_id,
            conflict: failure
                .conflict
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
pub(super) struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
}

/// How a publish of the worker's own ended.
pub(super) enum Published {
    Acked,
    /// Stopped before the broker acknowledged it.
    Stopped,
    /// The topic refuses records this large; the headers come back for another try.
    TooLarge(OwnedHeaders),
}

/// Publishes `message`'s key (and value, when `with_value`) with `record_headers` to `topic`,
/// retrying until the broker acknowledges: nothing is dropped. Keeps the source partition
/// number when the topic has it (retry topics always do).
pub(super) async fn publish(
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
                record_event!(error, message, error = %e, destination = %topic, "could not publish; retrying, the offset stays uncommitted");
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
pub(super) async fn dead_letter(
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
        record_event!(
            warn,
            message,
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
            record_event!(error, message, dead_letter_topic = %topic, "the dead-letter topic refuses even the headers of this record");
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
