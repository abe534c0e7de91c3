//! Scaling under load: one worker group scaled from 1 member to 3 and back to 1 while orders
//! keep arriving at a steady rate, under the classic protocol and under the consumer protocol
//! (KIP-848). Every record reaches an HTTP handler that notes, per partition, when a new offset
//! arrived: the longest time any partition went without progress is the pause users feel.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pubsubkafka_worker::config::{GroupProtocol, HandlerConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testenv::KafkaInfo;
use testenv::worker;

use super::{ROUNDS, create_topic, listed, median, spawn_worker, verdict};

/// Partitions of the scaled topic: two per member at 3 members.
const PARTITIONS: i32 = 6;
/// Orders produced per second, spread evenly over the partitions.
const RATE: u64 = 1_000;
/// Members at the start, at the top of the scale, and again at the end.
const SCALE: [usize; 3] = [1, 3, 1];

/// One scale 1 -> 3 -> 1 under one protocol.
struct Round {
    /// The longest time one partition went without a new offset handled, and that partition.
    longest_gap: Duration,
    partition: i32,
    /// Whether it began after the scale-down (else after the scale-up).
    on_scale_down: bool,
    /// Seconds without progress summed over the partitions, counting gaps over `PAUSE`.
    paused: f64,
    /// New offsets handled per second from the scale-up to the end.
    rate: f64,
}

/// A gap at least this long counts as a pause: the steady load brings a partition a new
/// record every 6 ms.
const PAUSE: Duration = Duration::from_millis(250);

pub struct RebalanceResult {
    phase: Duration,
    /// (protocol, rounds)
    protocols: Vec<(GroupProtocol, Vec<Round>)>,
}

/// When each partition's offsets first reached the handler.
#[derive(Default)]
struct Arrivals {
    /// partition -> (offsets seen, times a new one arrived)
    progress: HashMap<i32, (HashSet<i64>, Vec<Instant>)>,
}

impl Arrivals {
    /// Distinct records handled.
    fn handled(&self) -> usize {
        self.progress.values().map(|(seen, _)| seen.len()).sum()
    }
}

async fn arrived(State(arrivals): State<Arc<Mutex<Arrivals>>>, headers: HeaderMap) -> StatusCode {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let (Some(partition), Some(offset)) = (number("x-kafka-partition"), number("x-kafka-offset"))
    else {
        return StatusCode::BAD_REQUEST;
    };
    let now = Instant::now();
    let mut arrivals = arrivals.lock().unwrap();
    let (seen, times) = arrivals.progress.entry(partition as i32).or_default();
    // Progress is a record handled for the first time: one read again after a rebalance is
    // not (records of a partition are handled several at a time, so offsets arrive out of
    // order).
    if seen.insert(offset) {
        times.push(now);
    }
    StatusCode::OK
}

/// Scales a group 1 -> 3 -> 1 under each protocol, `phase` at each size, in alternating
/// rounds.
pub async fn rebalance_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    phase: Duration,
) -> RebalanceResult {
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let port = worker::serve(
        axum::Router::new()
            .route("/arrived", axum::routing::post(arrived))
            .with_state(Arc::clone(&arrivals)),
    )
    .await;
    let mut protocols = vec![
        (GroupProtocol::Classic, Vec::new()),
        (GroupProtocol::Consumer, Vec::new()),
    ];
    for round in 0..ROUNDS {
        for (protocol, rounds) in &mut protocols {
            eprintln!(
                "==> round {}: scaling 1 -> 3 -> 1 under load, {} protocol",
                round + 1,
                protocol.as_str()
            );
            let label = format!("scale-{}-{round}", protocol.as_str());
            *arrivals.lock().unwrap() = Arrivals::default();
            rounds.push(
                scale_round(
                    kafka, worker_bin, dir, &label, *protocol, port, &arrivals, phase,
                )
                .await,
            );
        }
    }
    RebalanceResult { phase, protocols }
}

#[allow(clippy::too_many_arguments)]
async fn scale_round(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    label: &str,
    protocol: GroupProtocol,
    port: u16,
    arrivals: &Arc<Mutex<Arrivals>>,
    phase: Duration,
) -> Round {
    let topic = format!("bench-{label}");
    create_topic(kafka, &topic, PARTITIONS).await;
    create_topic(kafka, &format!("{topic}-dlq"), PARTITIONS).await;
    let mut config = worker::config(
        kafka,
        &topic,
        &format!("bench-{label}"),
        HandlerConfig::Http {
            url: format!("http://127.0.0.1:{port}/arrived"),
            timeout_ms: 5_000,
        },
    );
    config.group_protocol = protocol;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = tokio::spawn(produce_steadily(
        kafka.clone(),
        topic.clone(),
        Arc::clone(&stop),
    ));
    let start = |i: usize| {
        spawn_worker(
            kafka,
            worker_bin,
            dir,
            &format!("{label}-{i}"),
            config.clone(),
        )
        .0
    };
    let mut members = vec![start(0)];
    // The first member owns every partition and handles the load before the scale.
    wait_all_progressing(arrivals).await;
    tokio::time::sleep(phase).await;
    let scaled_up = Instant::now();
    for i in 1..SCALE[1] {
        members.push(start(i));
    }
    tokio::time::sleep(phase).await;
    let scaled_down = Instant::now();
    // Scaled down as a Deployment is: every leaving member gets SIGTERM at once.
    let leaving: Vec<_> = members.drain(SCALE[2]..).collect();
    let stopped = tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for mut member in leaving {
                s.spawn(move || member.stop(Duration::from_secs(40)));
            }
        })
    });
    tokio::time::sleep(phase).await;
    stopped.await.unwrap();
    let end = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = producing.await.unwrap();
    // Every record produced is handled (at least once) before the round ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let handled = arrivals.lock().unwrap().handled();
        if handled as u64 >= produced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handled} of {produced} records handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut member in members {
        member.stop(Duration::from_secs(40));
    }
    measure(&arrivals.lock().unwrap(), scaled_up, scaled_down, end)
}

/// Produces `RATE` orders per second over the topic's partitions in turn until `stop`: the
/// number produced.
async fn produce_steadily(
    kafka: KafkaInfo,
    topic: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let producer: FutureProducer = kafka
        .plaintext_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let tick = Duration::from_millis(10);
    let per_tick = RATE * tick.as_millis() as u64 / 1000;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut pending = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        interval.tick().await;
        for _ in 0..per_tick {
            let key = format!("scale-{sent}");
            let value = serde_json::to_vec(&pubsubkafka_worker::order::sample(&key, 512)).unwrap();
            let partition = (sent % PARTITIONS as u64) as i32;
            pending.push(
                producer
                    .send_result(
                        FutureRecord::to(&topic)
                            .partition(partition)
                            .key(&key)
                            .payload(&value),
                    )
                    .expect("queued"),
            );
            sent += 1;
        }
        if pending.len() >= 1_000 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    sent
}

async fn wait_all_progressing(arrivals: &Mutex<Arrivals>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().progress.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the first member handles nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The longest time without a new offset of any partition between `from` and `to` (a partition
/// silent at `to` counts until `to`), whether it began after `down`, and the new offsets per
/// second in between.
fn measure(arrivals: &Arrivals, from: Instant, down: Instant, to: Instant) -> Round {
    let mut longest = (Duration::ZERO, -1, from);
    let mut new = 0usize;
    let mut paused = 0.0;
    for (partition, (_, times)) in &arrivals.progress {
        let mut last = from;
        for &t in times
            .iter()
            .filter(|&&t| t > from && t <= to)
            .chain(std::iter::once(&to))
        {
            if t - last > longest.0 {
                longest = (t - last, *partition, last);
            }
            if t - last >= PAUSE {
                paused += (t - last).as_secs_f64();
            }
            if t < to {
                new += 1;
            }
            last = t;
        }
    }
    Round {
        longest_gap: longest.0,
        partition: longest.1,
        on_scale_down: longest.2 >= down,
        paused,
        rate: new as f64 / (to - from).as_secs_f64(),
    }
}

pub fn render(r: &RebalanceResult, summary: &mut String, body: &mut String) {
    // The median of one figure of every round under `p`.
    let median_of = |p: GroupProtocol, figure: fn(&Round) -> f64| -> f64 {
        let values: Vec<f64> = r
            .protocols
            .iter()
            .filter(|(q, _)| *q == p)
            .flat_map(|(_, rounds)| rounds.iter().map(figure))
            .collect();
        median(&values)
    };
    let gap = |x: &Round| x.longest_gap.as_secs_f64();
    let paused = |x: &Round| x.paused;
    let rate = |x: &Round| x.rate;
    let (consumer, classic) = (
        median_of(GroupProtocol::Consumer, gap),
        median_of(GroupProtocol::Classic, gap),
    );
    let ratio = consumer / classic;
    let _ = writeln!(
        summary,
        "| consumer group scaled 1 -> 3 -> 1 under load ({RATE} orders/s, {PARTITIONS} partitions): longest time a partition went without progress | {consumer:.2} s (consumer protocol, KIP-848) | {classic:.2} s (classic protocol) | {ratio:.2}x | <= 0.5x | {} |",
        verdict(ratio <= 0.5),
    );
    let _ = writeln!(
        summary,
        "| the same scale: seconds without progress summed over the partitions (pauses of {} ms or more) | {:.2} s (consumer protocol) | {:.2} s (classic protocol) | {:.2}x | | |",
        PAUSE.as_millis(),
        median_of(GroupProtocol::Consumer, paused),
        median_of(GroupProtocol::Classic, paused),
        median_of(GroupProtocol::Consumer, paused) / median_of(GroupProtocol::Classic, paused),
    );
    let _ = writeln!(
        summary,
        "| the same scale: new records handled per second from the scale-up to the end | {:.0} (consumer protocol) | {:.0} (classic protocol) | {:.2}x | | |",
        median_of(GroupProtocol::Consumer, rate),
        median_of(GroupProtocol::Classic, rate),
        median_of(GroupProtocol::Consumer, rate) / median_of(GroupProtocol::Classic, rate),
    );
    let _ = write!(
        body,
        "## Scaling under load\n\nA {PARTITIONS}-partition topic receives {RATE} orders per \
         second (512-byte values, the partitions in turn) for the whole run. One worker handles \
         them (HTTP handler on loopback that answers at once) for {phase} s; two more workers \
         join (a scale to 3) for {phase} s; then both get SIGTERM at once, as a Deployment \
         scaled back to 1 does, and the run goes on {phase} s. The handler notes when each \
         partition's offsets first arrive; from the scale-up to the end, the figure is the \
         longest time one partition went without a new offset (a record read again after a \
         rebalance is not progress). Every produced record is handled before a round ends. \
         Under the classic protocol each join and leave revokes every partition of every \
         member, which rejoin together; a member learns of the rebalance at its next heartbeat \
         (librdkafka's `heartbeat.interval.ms`, 3 s by default, as the workers run). Under the \
         consumer protocol only the partitions that change owner stop, but their new owner \
         learns of them at its next heartbeat, at the broker's \
         `group.consumer.heartbeat.interval.ms` (1 s in the stack's broker, 5 s in Kafka's \
         defaults): a moving partition pauses for about one such interval. {ROUNDS} \
         alternating rounds; medians in the table.\n\n",
        phase = r.phase.as_secs(),
    );
    for (protocol, rounds) in &r.protocols {
        let listed_of = |figure: fn(&Round) -> f64, decimals| {
            listed(&rounds.iter().map(figure).collect::<Vec<_>>(), decimals)
        };
        let partitions: Vec<String> = rounds
            .iter()
            .map(|x| {
                let when = if x.on_scale_down { "down" } else { "up" };
                format!("{} at the scale-{when}", x.partition)
            })
            .collect();
        let _ = writeln!(
            body,
            "- {} protocol: longest gaps {} s (partitions {}); paused partition-seconds {}; new records/s {}",
            protocol.as_str(),
            listed_of(gap, 2),
            partitions.join(", "),
            listed_of(paused, 2),
            listed_of(rate, 0),
        );
    }
    body.push('\n');
}
