//! Dead-letter replay (ADR-003): reads a dead-letter topic up to where it ended when the replay
//! started, and republishes the matching records to the topic named in their headers, with
//! their key, value and original headers, and a replay count. A record replayed too often goes
//! to a parking topic instead of looping. Progress is committed under the replay's own group,
//! so an interrupted replay resumes where it stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::ConfigError;
use crate::config::ErrorClass;
use crate::headers;
use crate::kafka::{KafkaArgs, ProducerError, idempotent_producer};
use tracing::Instrument;

/// `pubsubkafka-worker replay` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The dead-letter topic to read.
    #[arg(long)]
    pub dead_letter_topic: String,
    /// Consumer group that records progress (default: pubsubkafka-replay.<topic>).
    #[arg(long)]
    pub group: Option<String>,
    /// Only records of these error classes (repeatable).
    #[arg(long = "error-class")]
    pub error_classes: Vec<ErrorClass>,
    /// Only records that failed at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<jiff::Timestamp>,
    /// Only records that failed before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<jiff::Timestamp>,
    /// Only these dead-letter partitions (repeatable).
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Only offsets at or after this one (in the dead-letter topic).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Only offsets at or before this one.
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Republish at most this many records per second (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Print what would be replayed; publish and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Records already replayed this many times go to the parking topic.
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
    /// Where over-replayed records go (default: <dead-letter topic>-parking).
    #[arg(long)]
    pub parking_topic: Option<String>,
    /// Only records carrying this header with exactly this value, as NAME=VALUE (repeatable:
    /// every one must match).
    #[arg(long = "header", value_parser = parse_header_match)]
    pub headers: Vec<(String, String)>,
    /// Only records with one of these keys (repeatable).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Republish every matching record to this topic instead of the one its headers name.
    #[arg(long)]
    pub target: Option<String>,
    /// Also write the summary (JSON) to this file, such as /dev/termination-log in a Job's pod.
    #[arg(long)]
    pub summary_file: Option<std::path::PathBuf>,
}

/// A `--header` that is not `NAME=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("expected NAME=VALUE, got {0:?}")]
pub struct HeaderMatchError(String);

/// `NAME=VALUE`, for `--header`.
fn parse_header_match(text: &str) -> Result<(String, String), HeaderMatchError> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(HeaderMatchError(text.to_owned())),
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records the filters selected: replayed and parked (or, in a dry run, that would be).
    pub matched: u64,
    pub replayed: u64,
    pub parked: u64,
    pub skipped: u64,
    /// Replayed records by target topic.
    pub targets: BTreeMap<String, u64>,
    pub dry_run: bool,
    /// Per dead-letter partition, the next offset after the last record read.
    pub offsets: BTreeMap<i32, i64>,
    /// Per dead-letter partition, where the topic ended when the replay started.
    pub ends: BTreeMap<i32, i64>,
}

/// One record a dry run would replay.
#[derive(Debug, Serialize)]
struct Planned<'a> {
    partition: i32,
    offset: i64,
    key: String,
    error_class: Option<&'a str>,
    target: &'a str,
    replay_count: u32,
}

/// Why a replay stopped. Run it again: it resumes from its committed progress.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// Creating or assigning the consumer.
    #[error(transparent)]
    Consumer(#[from] KafkaError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    #[error("describing {topic}: {source}")]
    Describe { topic: String, source: KafkaError },
    #[error("topic {0} does not exist or has no partitions")]
    NoPartitions(String),
    #[error("reading the end of {topic}/{partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("reading {topic}: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("no records arrived for 60 s before reaching the end")]
    Stalled,
    #[error("republishing: {0}")]
    Republish(#[source] KafkaError),
    #[error("committing progress: {0}")]
    Commit(#[source] KafkaError),
}

/// Runs the replay to the end of the topic as it was at the start.
pub async fn run(args: ReplayArgs) -> Result<Summary, ReplayError> {
    let connection = args.kafka.connection();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("pubsubkafka-replay.{}", args.dead_letter_topic));
    let consumer: BaseConsumer = connection
        .client_config()?
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let producer = idempotent_producer(&connection, Duration::from_secs(30))?;
    let parking = args
        .parking_topic
        .clone()
        .unwrap_or_else(|| format!("{}-parking", args.dead_letter_topic));

    // Where the topic ends now: the replay stops there, so it terminates even while new dead
    // letters arrive.
    let topic = args.dead_letter_topic.clone();
    let (consumer, ends) = tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|source| ReplayError::Describe {
                topic: topic.clone(),
                source,
            })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(ReplayError::NoPartitions(topic));
        }
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .map_err(|source| ReplayError::Watermarks {
                    topic: topic.clone(),
                    partition: p,
                    source,
                })?;
            ends.insert(p, high);
            assignment.add_partition_offset(&topic, p, Offset::Stored)?;
        }
        consumer.assign(&assignment)?;
        Ok((consumer, ends))
    })
    .await??;

    let mut summary = Summary {
        dry_run: args.dry_run,
        ends: ends.clone(),
        ..Summary::default()
    };
    let mut remaining: BTreeMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut next_send = Instant::now();
    let mut idle_polls = 0;
    while !remaining.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            idle_polls += 1;
            // Nothing more arrives for partitions already consumed up to their end by an
            // earlier run: check their committed positions.
            if idle_polls % 10 == 0 {
                prune_finished(&consumer, &args.dead_letter_topic, &mut remaining);
            }
            if idle_polls > 300 {
                return Err(ReplayError::Stalled);
            }
            continue;
        };
        idle_polls = 0;
        let message = result.map_err(|source| ReplayError::Read {
            topic: args.dead_letter_topic.clone(),
            source,
        })?;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(end) = remaining.get(&partition).copied() else {
            continue;
        };
        if offset >= end {
            remaining.remove(&partition);
            continue;
        }
        let hs = message.headers();
        let replays: u32 = headers::get(hs, headers::DLQ_REPLAY_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        summary.offsets.insert(partition, offset + 1);
        if !matches(&args, hs, message.key(), partition, offset) {
            summary.skipped += 1;
        } else {
            let original = args
                .target
                .as_deref()
                .or_else(|| headers::get(hs, headers::DLQ_ORIGINAL_TOPIC));
            let target = match original {
                Some(t) if replays < args.max_replays => t.to_owned(),
                _ => parking.clone(),
            };
            let parked = target == parking;
            if args.dry_run {
                let planned = Planned {
                    partition,
                    offset,
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    error_class: headers::get(hs, headers::DLQ_ERROR_CLASS),
                    target: &target,
                    replay_count: replays,
                };
                println!("{}", serde_json::to_string(&planned).expect("serializes"));
            } else {
                if let Some(interval) = interval {
                    let now = Instant::now();
                    if next_send > now {
                        tokio::time::sleep(next_send - now).await;
                    }
                    next_send = next_send.max(now) + interval;
                }
                let out_headers = if parked {
                    copy_headers(hs, None)
                } else {
                    copy_headers(hs, Some(replays + 1))
                };
                // The republish continues the record's trace (gateway, worker, dead letter),
                // and the republished record names this span: its next processing nests here.
                let span = tracing::info_span!(
                    "replay",
                    otel.name = %format_args!("{target} publish"),
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.operation.type = "send",
                    messaging.destination.name = target.as_str(),
                    dead_letter.partition = partition,
                    dead_letter.offset = offset,
                    replay_count = replays + 1,
                    correlation_id = headers::get(hs, headers::CORRELATION_ID)
                        .or_else(|| headers::get(hs, headers::DLQ_CORRELATION_ID))
                        .unwrap_or_default(),
                );
                crate::tracing_ctx::set_parent_from_headers(&span, hs);
                let out_headers = crate::tracing_ctx::with_span_context(out_headers, &span);
                let mut record = FutureRecord::<[u8], [u8]>::to(&target).headers(out_headers);
                if let Some(k) = message.key() {
                    record = record.key(k);
                }
                if let Some(v) = message.payload() {
                    record = record.payload(v);
                }
                send(&producer, record).instrument(span).await?;
            }
            summary.matched += 1;
            if parked {
                summary.parked += 1;
            } else {
                summary.replayed += 1;
                *summary.targets.entry(target).or_default() += 1;
            }
        }
        if !args.dry_run {
            let mut progress = TopicPartitionList::new();
            progress.add_partition_offset(
                &args.dead_letter_topic,
                partition,
                Offset::Offset(offset + 1),
            )?;
            consumer
                .commit(&progress, CommitMode::Async)
                .map_err(ReplayError::Commit)?;
        }
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
    }
    if !args.dry_run {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => return Err(ReplayError::Commit(e)),
        }
    }
    Ok(summary)
}

async fn send(
    producer: &FutureProducer,
    record: FutureRecord<'_, [u8], [u8]>,
) -> Result<(), ReplayError> {
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(drop)
        .map_err(|(e, _)| ReplayError::Republish(e))
}

/// Drops partitions whose committed position already reached their end.
fn prune_finished(consumer: &BaseConsumer, topic: &str, remaining: &mut BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for p in remaining.keys() {
        list.add_partition(topic, *p);
    }
    if let Ok(positions) = consumer.position() {
        for e in positions.elements() {
            if let (Offset::Offset(o), Some(end)) = (e.offset(), remaining.get(&e.partition()))
                && o >= *end
            {
                remaining.remove(&e.partition());
            }
        }
    }
    if let Ok(committed) = consumer.committed_offsets(list, Duration::from_secs(5)) {
        for e in committed.elements() {
            if let (Offset::Offset(o), Some(end)) = (e.offset(), remaining.get(&e.partition()))
                && o >= *end
            {
                remaining.remove(&e.partition());
            }
        }
    }
}

fn matches<H: Headers>(
    args: &ReplayArgs,
    hs: Option<&H>,
    key: Option<&[u8]>,
    partition: i32,
    offset: i64,
) -> bool {
    if !args.partitions.is_empty() && !args.partitions.contains(&partition) {
        return false;
    }
    if args.from_offset.is_some_and(|from| offset < from)
        || args.to_offset.is_some_and(|to| offset > to)
    {
        return false;
    }
    if !args.keys.is_empty() && !args.keys.iter().any(|k| Some(k.as_bytes()) == key) {
        return false;
    }
    if !args
        .headers
        .iter()
        .all(|(name, value)| headers::get(hs, name) == Some(value.as_str()))
    {
        return false;
    }
    if !args.error_classes.is_empty() {
        let class = headers::get(hs, headers::DLQ_ERROR_CLASS);
        if !args.error_classes.iter().any(|c| Some(c.as_str()) == class) {
            return false;
        }
    }
    if args.since.is_some() || args.until.is_some() {
        let Some(failed_at) = headers::get(hs, headers::DLQ_FAILED_AT)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            return false;
        };
        if args.since.is_some_and(|s| failed_at < s) || args.until.is_some_and(|u| failed_at >= u) {
            return false;
        }
    }
    true
}

/// The original headers without the dead-letter ones; with `replay_count`, the count is set.
fn copy_headers<H: Headers>(hs: Option<&H>, replay_count: Option<u32>) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(hs) = hs {
        for h in hs.iter() {
            let dead_letter = h.key.starts_with("x-dlq-");
            if replay_count.is_none() || !dead_letter {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    if let Some(n) = replay_count {
        let n = n.to_string();
        out = out.insert(Header {
            key: headers::DLQ_REPLAY_COUNT,
            value: Some(&n),
        });
    }
    out
}
