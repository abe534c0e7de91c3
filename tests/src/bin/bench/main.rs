//! `make bench`: PubSubKafka against Apache Kafka's and PostgreSQL's own tools, each pair in the
//! same run on the same broker and database, written to docs/BENCHMARKS.md. No figure is typed
//! by hand.
//!
//! - Worker (no-op handler, 1 KiB orders, 3 partitions, at-least-once offsets) against
//!   `ConsumerPerformance` on the same topic: records/s while fetching.
//! - The same worker with 1% poison records retried 3 times before the dead-letter topic,
//!   against its clean run; the retry mode is a flag.
//! - Worker throughput at 1, 3 and 6 partitions.
//! - The event-store sink (idempotent on order id) against PostgreSQL `COPY` of the same rows.
//! - Gateway `POST /orders` (acks=all, 202 after the ack) against `ProducerPerformance` with the
//!   same record size and acks: records/s at full load, one order per request and arrays of
//!   100, and p99 latency at 2,000 requests/s.
//! - A worker group scaled 1 -> 3 -> 1 under load, classic against consumer group protocol:
//!   the longest time a partition went without progress.
//! - The controller: N KafkaTopic resources applied at once, time until all Ready, memory at
//!   rest, API requests per resource.
//!
//! `PSK_BENCH_TIMELINE=1` also prints each worker run's records/s per 100 ms to stderr, to tell a
//! stall from a run that is slower throughout.

mod controller;
mod ordering;
mod producer;
mod rebalance;
mod sink;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use pubsubkafka_worker::config::{HandlerConfig, RetryMode, RetryPolicy};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testenv::worker;
use testenv::{Kafka, KafkaInfo, Lifetime, tools};

use controller::ControllerResult;
use producer::ProducerResult;
use sink::SinkResult;

/// The controller's goals at the largest KafkaTopic count (10,000 by default): all Ready
/// within this, and resident memory at rest under this.
const READY_GOAL_S: f64 = 300.0;
const RSS_GOAL_MIB: f64 = 128.0;

#[derive(Parser)]
struct Args {
    /// Records per consumer benchmark (about 1.1 GB at 1 KiB: runs of a few seconds, long
    /// enough for ConsumerPerformance's JIT to warm up; 300,000 made both sides noisy).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Records per ProducerPerformance round (500,000: long enough for its JIT to warm up).
    #[arg(long, default_value_t = 500_000)]
    requests: usize,
    /// Seconds of load per gateway round (wrk).
    #[arg(long, default_value_t = 10)]
    gateway_seconds: u64,
    /// Distinct orders for the event-store sink benchmark.
    #[arg(long, default_value_t = 100_000)]
    sink_records: usize,
    /// KafkaTopic counts for the controller benchmark (the largest is held to the goals).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    topics: Vec<usize>,
    /// Autoscaled OrderConsumers held at rest by the controller benchmark (0: skip).
    #[arg(long, default_value_t = 1000)]
    consumers: usize,
    /// Records of the poison-record topic, as many as the clean run reads: the key-ordered
    /// runs read them all (300,000 made them short enough for their start to weigh on the
    /// ratio), the blocking run only the first tenth (it waits out every poison record's
    /// backoffs: 1,000,000 records took it 4 minutes a round).
    #[arg(long, default_value_t = 1_000_000)]
    poison_records: usize,
    /// First backoff of the poison-record runs, in milliseconds (doubling, 3 retries).
    #[arg(long, default_value_t = 10)]
    poison_backoff_ms: u64,
    /// Records of the slow-handler run (10 ms per record).
    #[arg(long, default_value_t = 3_000)]
    slow_records: usize,
    /// Seconds at each size of the rebalance benchmark's scale 1 -> 3 -> 1.
    #[arg(long, default_value_t = 15)]
    scale_seconds: u64,
    /// Benchmarks to run: consumer, poison, slow, scaling, rebalance, sink, producer,
    /// controller.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "consumer,poison,slow,scaling,rebalance,sink,producer,controller"
    )]
    only: Vec<String>,
    /// The worker binary to measure (a release build).
    #[arg(long, default_value = "target/release/pubsubkafka-worker")]
    worker: PathBuf,
    /// The controller binary to measure (a release build).
    #[arg(long, default_value = "target/release/pubsubkafka-controller")]
    controller: PathBuf,
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
}

/// Everything one `make bench` measured; `None` for a benchmark left out with `--only`.
struct Results {
    consumer: Option<ConsumerResult>,
    poison: Option<ordering::PoisonResult>,
    slow: Option<ordering::SlowResult>,
    scaling: Option<ScalingResult>,
    rebalance: Option<rebalance::RebalanceResult>,
    sink: Option<SinkResult>,
    producer: Option<ProducerResult>,
    controller: Vec<ControllerResult>,
    consumers_at_rest: Option<controller::ConsumersAtRest>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let run = |name: &str| args.only.iter().any(|o| o == name);
    let worker_bin = std::path::absolute(&args.worker).expect("path");
    assert!(
        worker_bin.is_file(),
        "{} is missing: cargo build --release --bins",
        worker_bin.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!("==> starting Kafka {}", tools::version("KAFKA_VERSION"));
    let kafka = Kafka::start(&dir.path().join("kafka"), 1, Lifetime::Owned).expect("Kafka");

    let needs_clean = run("consumer") || run("poison") || run("scaling");
    let consumer = if needs_clean {
        Some(consumer_bench(&kafka.info, &worker_bin, dir.path(), args.records).await)
    } else {
        None
    };
    let poison = if run("poison") {
        let clean = consumer.as_ref().expect("the clean topic");
        Some(
            ordering::poison_bench(
                &kafka.info,
                &worker_bin,
                dir.path(),
                args.poison_records,
                args.poison_backoff_ms,
                (clean.topic, clean.records),
            )
            .await,
        )
    } else {
        None
    };
    let slow = if run("slow") {
        Some(ordering::slow_bench(&kafka.info, &worker_bin, dir.path(), args.slow_records).await)
    } else {
        None
    };
    let scaling = if run("scaling") {
        let three = consumer
            .as_ref()
            .expect("the clean run")
            .worker_rates
            .clone();
        Some(scaling_bench(&kafka.info, &worker_bin, dir.path(), args.records, three).await)
    } else {
        None
    };
    let rebalance = if run("rebalance") {
        Some(
            rebalance::rebalance_bench(
                &kafka.info,
                &worker_bin,
                dir.path(),
                Duration::from_secs(args.scale_seconds),
            )
            .await,
        )
    } else {
        None
    };
    let sink = if run("sink") {
        Some(sink::sink_bench(&kafka.info, &worker_bin, dir.path(), args.sink_records).await)
    } else {
        None
    };
    let producer = if run("producer") {
        Some(
            producer::producer_bench(
                &kafka.info,
                &worker_bin,
                dir.path(),
                args.requests,
                Duration::from_secs(args.gateway_seconds),
            )
            .await,
        )
    } else {
        None
    };
    let (controller, consumers_at_rest) = if run("controller") {
        let bin = std::path::absolute(&args.controller).expect("path");
        assert!(
            bin.is_file(),
            "{} is missing: cargo build --release --bins",
            bin.display()
        );
        controller::controller_bench(&kafka.info, &bin, dir.path(), &args.topics, args.consumers)
            .await
    } else {
        (Vec::new(), None)
    };
    let results = Results {
        consumer: consumer.filter(|_| run("consumer")),
        poison,
        slow,
        scaling,
        rebalance,
        sink,
        producer,
        controller,
        consumers_at_rest,
    };
    let report = render(&args, &results);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).expect("docs dir");
    }
    std::fs::write(&args.out, &report).expect("writing the report");
    println!("{report}");
}

fn java_tool(class: &str, args: &[String]) -> String {
    let lib = tools::kafka_lib().expect("Kafka jars");
    let out = Command::new(tools::java().expect("java"))
        .args(["-Xmx1g", "-cp"])
        .arg(format!("{}/*", lib.display()))
        .arg(class)
        .args(args)
        .output()
        .expect("running a Kafka tool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{class} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn create_topic(kafka: &KafkaInfo, name: &str, partitions: i32) {
    let admin = pubsubkafka_controller::kafka::KafkaAdmin::new(
        &kafka.plaintext_config(),
        Duration::from_secs(10),
    )
    .unwrap();
    admin
        .create_topic(name, partitions, 1, &Default::default())
        .await
        .unwrap();
}

/// Rounds of each measurement: the medians are reported, with every raw figure.
const ROUNDS: usize = 3;
/// Rounds of the consumer comparison: ConsumerPerformance's rate moves the most between rounds
/// (530k to 830k records/s on this machine in one day), so its median needs more of them.
const CONSUMER_ROUNDS: usize = 5;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn raw(values: &[f64]) -> String {
    listed(values, 0)
}

/// `values` with `decimals` decimals, comma-separated.
fn listed(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct ConsumerResult {
    /// The topic read, kept for the poison benchmark's clean runs.
    topic: &'static str,
    records: usize,
    command: String,
    perf_output: String,
    perf_rates: Vec<f64>,
    worker_rates: Vec<f64>,
}

async fn consumer_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    records: usize,
) -> ConsumerResult {
    let topic = "bench-orders";
    create_topic(kafka, topic, 3).await;
    eprintln!("==> producing {records} orders of 1 KiB");
    produce_orders(kafka, topic, records, None, false).await;

    let mut perf_rates = Vec::new();
    let mut worker_rates = Vec::new();
    let mut perf_output = String::new();
    let mut command = String::new();
    for round in 0..CONSUMER_ROUNDS {
        eprintln!(
            "==> round {}: ConsumerPerformance, then the worker",
            round + 1
        );
        let group = format!("bench-perf-{round}");
        let perf_args: Vec<String> = [
            "--bootstrap-server",
            &kafka.bootstrap,
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--group",
            &group,
            "--timeout",
            "120000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        perf_output = java_tool("org.apache.kafka.tools.ConsumerPerformance", &perf_args);
        command = format!("ConsumerPerformance {}", perf_args.join(" "));
        // The CSV's last column is fetch.nMsg.sec: records/s while fetching, join time excluded.
        perf_rates.push(
            perf_output
                .lines()
                .last()
                .and_then(|l| l.split(',').next_back())
                .and_then(|v| v.trim().parse().ok())
                .expect("ConsumerPerformance's fetch.nMsg.sec"),
        );
        worker_rates.push(
            worker_rate(
                kafka,
                worker_bin,
                dir,
                &Measure::noop(topic, records, round),
            )
            .await,
        );
    }
    ConsumerResult {
        topic,
        records,
        command,
        perf_output,
        perf_rates,
        worker_rates,
    }
}

/// Produces `records` orders of about 1 KiB to `topic`; every `poison_every`th record is not
/// an order at all. With `distinct`, each record is a different order (its own order id).
async fn produce_orders(
    kafka: &KafkaInfo,
    topic: &str,
    records: usize,
    poison_every: Option<usize>,
    distinct: bool,
) {
    let producer: FutureProducer = kafka
        .plaintext_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let same = serde_json::to_vec(&pubsubkafka_worker::order::sample("bench-0", 1024)).unwrap();
    let poison = b"poison: not an order".to_vec();
    let mut pending = Vec::new();
    for i in 0..records {
        let key = format!("bench-{i}");
        let value = if poison_every.is_some_and(|every| i % every == every / 2) {
            poison.clone()
        } else if distinct {
            serde_json::to_vec(&pubsubkafka_worker::order::sample(&key, 1024)).unwrap()
        } else {
            same.clone()
        };
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .expect("queued"),
        );
        if pending.len() >= 20_000 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// One worker run: what it reads, with which handler, retry policy and concurrency, and which
/// outcomes it counts.
struct Measure<'a> {
    topic: &'a str,
    /// Records counted when the run is over.
    records: usize,
    /// Names its consumer group, config and log.
    label: String,
    handler: HandlerConfig,
    retry: RetryPolicy,
    concurrency: usize,
    /// Count only this outcome of `kafka_consumer_records_total` (all outcomes when `None`).
    outcome: Option<&'static str>,
}

impl<'a> Measure<'a> {
    fn noop(topic: &'a str, records: usize, round: usize) -> Self {
        Self {
            topic,
            records,
            label: format!("{topic}-{round}"),
            handler: HandlerConfig::Noop,
            retry: RetryPolicy::default(),
            concurrency: pubsubkafka_worker::config::DEFAULT_CONCURRENCY,
            outcome: None,
        }
    }
}

/// The worker in a group of its own: records/s from its first finished record to its last
/// (handled or dead-lettered), the same measure as fetch.nMsg.sec.
async fn worker_rate(kafka: &KafkaInfo, worker_bin: &Path, dir: &Path, m: &Measure<'_>) -> f64 {
    let mut config = worker::config(
        kafka,
        m.topic,
        &format!("bench-worker-{}", m.label),
        m.handler.clone(),
    );
    config.retry = m.retry.clone();
    config.concurrency = m.concurrency;
    if m.retry.mode == RetryMode::RetryTopics {
        // Retry topics of the run's own (see ordering.rs): no copies left by an earlier round.
        config.retry_topics = pubsubkafka_worker::retry::retry_topics(&m.label, &m.retry);
    }
    let (mut proc_, port) = spawn_worker(kafka, worker_bin, dir, &m.label, config);
    let mut first: Option<(Instant, f64)> = None;
    // PSK_BENCH_TIMELINE=1 prints each run's records/s per 100 ms to stderr (for diagnosis).
    let trace = std::env::var_os("PSK_BENCH_TIMELINE").is_some();
    let mut timeline = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "the worker did not finish");
        proc_.check_alive().expect("the worker runs");
        let body = worker::http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        // Every final outcome (handled or dead-lettered), or the one asked for.
        let labels: Vec<(&str, &str)> = m.outcome.map(|o| ("outcome", o)).into_iter().collect();
        let done = worker::metric_value(&body, "kafka_consumer_records_total", &labels);
        let now = Instant::now();
        if done > 0.0 && first.is_none() {
            first = Some((now, done));
        }
        if trace {
            timeline.push((now, done));
        }
        if done >= m.records as f64 {
            if trace {
                print_timeline(&m.label, &timeline);
            }
            let (t0, n0) = first.expect("seen");
            return (done - n0) / (now - t0).as_secs_f64().max(1e-6);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records/s per 100 ms of a run, from its (instant, records so far) samples.
fn print_timeline(label: &str, samples: &[(Instant, f64)]) {
    // From the first sample that saw records, as the measured rate starts: the records before
    // it belong to no interval.
    let Some(&(start, seen)) = samples.iter().find(|(_, n)| *n > 0.0) else {
        return;
    };
    let mut line = format!("timeline {label} (records/s per 100 ms):");
    let (mut t0, mut n0) = (start, seen);
    for &(t, n) in samples.iter().filter(|(t, _)| *t >= start) {
        if t - t0 >= Duration::from_millis(100) {
            let _ = write!(line, " {:.0}k", (n - n0) / (t - t0).as_secs_f64() / 1000.0);
            (t0, n0) = (t, n);
        }
    }
    eprintln!("{line}");
}

/// A worker process consuming over PLAINTEXT with `config`, its files named after `label`:
/// the process and the port of its /metrics.
fn spawn_worker(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    label: &str,
    mut config: pubsubkafka_worker::config::WorkerConfig,
) -> (testenv::process::Proc, u16) {
    config.kafka = pubsubkafka_worker::config::KafkaConnection {
        bootstrap_servers: kafka.bootstrap.clone(),
        security_protocol: pubsubkafka_worker::config::SecurityProtocol::Plaintext,
        username: None,
        password_file: None,
        ca_file: None,
    };
    let port = testenv::free_port().unwrap();
    let config_path = dir.join(format!("bench-worker-{label}.json"));
    std::fs::write(&config_path, config.to_json()).unwrap();
    let mut cmd = Command::new(worker_bin);
    cmd.args(["--log-format", "json", "consume", "--config"])
        .arg(&config_path)
        .args(["--http-addr", &format!("127.0.0.1:{port}")]);
    let proc_ = testenv::process::Proc::spawn(
        "bench-worker",
        cmd,
        &dir.join(format!("bench-worker-{label}.log")),
        Lifetime::Owned,
        None,
    )
    .unwrap();
    (proc_, port)
}

struct ScalingResult {
    records: usize,
    /// (partitions, records/s of each round)
    rates: Vec<(i32, Vec<f64>)>,
}

/// The same worker and records over 1, 3 and 6 partitions (3 is the consumer benchmark's run).
async fn scaling_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    records: usize,
    three: Vec<f64>,
) -> ScalingResult {
    let mut rates = Vec::new();
    for partitions in [1, 6] {
        let topic = format!("bench-p{partitions}");
        create_topic(kafka, &topic, partitions).await;
        eprintln!("==> producing {records} orders into {partitions} partition(s)");
        produce_orders(kafka, &topic, records, None, false).await;
        let mut r = Vec::new();
        for round in 0..ROUNDS {
            eprintln!(
                "==> round {}: the worker on {partitions} partition(s)",
                round + 1
            );
            r.push(
                worker_rate(
                    kafka,
                    worker_bin,
                    dir,
                    &Measure::noop(&topic, records, round),
                )
                .await,
            );
        }
        rates.push((partitions, r));
    }
    rates.insert(1, (3, three));
    ScalingResult { records, rates }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "- CPUs: {cpus}, memory: {mem}, kernel: {}\n- {}\n- {}\n- Apache Kafka {} (one KRaft node, PLAINTEXT listener on loopback)\n",
        run("uname", &["-r"]),
        run("rustc", &["--version"]),
        run("java", &["-version"]),
        tools::version("KAFKA_VERSION"),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

fn render(args: &Args, r: &Results) -> String {
    use std::fmt::Write;
    let when = jiff::Timestamp::now();
    let mut summary = String::from(
        "| benchmark | PubSubKafka | comparator | ratio | goal | |\n|---|---|---|---|---|---|\n",
    );
    let mut body = String::new();
    if let Some(c) = &r.consumer {
        let ratio = median(&c.worker_rates) / median(&c.perf_rates);
        let _ = writeln!(
            summary,
            "| consumer, no-op handler, 1 KiB orders, 3 partitions (records/s while fetching) | {:.0} | {:.0} (ConsumerPerformance fetch.nMsg.sec) | {ratio:.2}x | >= 1.2x | {} |",
            median(&c.worker_rates),
            median(&c.perf_rates),
            verdict(ratio >= 1.2),
        );
        let _ = write!(
            body,
            "## Consumer\n\n{records} orders of about 1 KiB (valid ECST JSON, decoded and validated by the worker) in a \
             3-partition topic. The worker commits offsets only after each record's outcome is final; it is \
             measured from its first handled record to its last, as ConsumerPerformance's \
             fetch.nMsg.sec excludes the group join. {CONSUMER_ROUNDS} alternating rounds, each in a new group; \
             the table shows medians. Raw records/s: worker {wraw}; ConsumerPerformance {praw}.\n\n```\n{ccmd}\n{cout}```\n\n",
            records = c.records,
            wraw = raw(&c.worker_rates),
            praw = raw(&c.perf_rates),
            ccmd = c.command,
            cout = c.perf_output,
        );
    }
    if let Some(p) = &r.poison {
        ordering::render_poison(p, &mut summary, &mut body);
    }
    if let Some(sl) = &r.slow {
        ordering::render_slow(sl, &mut summary, &mut body);
    }
    if let Some(rb) = &r.rebalance {
        rebalance::render(rb, &mut summary, &mut body);
    }
    if let Some(sk) = &r.sink {
        let worker = median(&sk.worker_rates);
        let copy = median(&sk.copy_rates);
        let ratio = worker / copy;
        let _ = writeln!(
            summary,
            "| event-store sink, idempotent on order_id (orders/s into PostgreSQL) | {worker:.0} | {copy:.0} (COPY of the same rows) | {ratio:.2}x | >= 0.5x and >= 10,000/s | {} |",
            verdict(ratio >= 0.5 && worker >= 10_000.0),
        );
        let _ = write!(
            body,
            "## Event-store sink\n\n{} distinct orders of about 1 KiB in a 3-partition topic, stored by the worker's \
             event-store handler into a fresh database per round (`INSERT ... ON CONFLICT (order_id) DO NOTHING`, \
             batched per partition, offsets committed after the rows), measured from the first stored order to \
             the last. The comparator copies the very rows the worker stored (`COPY orders TO STDOUT`) into \
             a table of the same definition (`CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)`, so the \
             same primary key and index) with `{}`, timed from the start of the COPY to its end. \
             PostgreSQL {}: the Debian package, its own cluster, default settings. {ROUNDS} rounds; \
             medians in the table. Raw orders/s: worker {}; COPY {}.\n\n",
            sk.records,
            sk.copy_command,
            postgres_version(),
            raw(&sk.worker_rates),
            raw(&sk.copy_rates),
        );
    }
    if let Some(p) = &r.producer {
        producer::render(p, &mut summary, &mut body);
    }
    if let Some(largest) = r.controller.iter().max_by_key(|c| c.topics) {
        let n = largest.topics;
        let _ = writeln!(
            summary,
            "| controller: {n} KafkaTopic resources applied at once, until all Ready | {:.1} s | | | < {READY_GOAL_S:.0} s | {} |",
            largest.seconds_to_ready,
            verdict(largest.seconds_to_ready < READY_GOAL_S),
        );
        let _ = writeln!(
            summary,
            "| controller RSS at rest with {n} resources | {:.1} MiB | | | < {RSS_GOAL_MIB:.0} MiB | {} |",
            largest.rss_mib,
            verdict(largest.rss_mib < RSS_GOAL_MIB),
        );
        let _ = writeln!(
            summary,
            "| controller API requests per resource ({n} resources) | {:.2} | | | | |",
            largest.controller_requests / n as f64,
        );
        let _ = write!(
            body,
            "## Controller\n\nA kube-apiserver {} with etcd, the controller's release binary watching one \
             namespace (reconciling against the benchmark's Kafka over PLAINTEXT), and N KafkaTopic resources \
             (1 partition, replication factor 1) created through the API with 64 requests in flight. Time \
             from the first create until every resource's Ready condition is True for its generation (the \
             topic exists in Kafka); then 20 s at rest and the controller's VmRSS. The controller's API requests are \
             the API server's `apiserver_request_total` (all clients) after minus before, less the \
             benchmark's own (its creates and the list its watch starts with) and the API server's own (endpoints, leases, \
             OpenAPI, metrics scrapes); a watch is counted when it ends, so the controller's open watches \
             are not in the figure. The breakdown lists every counter that moved.\n\n\
             | resources | until all Ready | RSS at rest | controller requests | per resource | benchmark's own |\n|---|---|---|---|---|---|\n",
            tools::version("KUBERNETES_VERSION"),
        );
        for c in &r.controller {
            let _ = writeln!(
                body,
                "| {} | {:.1} s | {:.1} MiB | {:.0} | {:.2} | {:.0} |",
                c.topics,
                c.seconds_to_ready,
                c.rss_mib,
                c.controller_requests,
                c.controller_requests / c.topics as f64,
                c.bench_requests,
            );
        }
        for c in &r.controller {
            let _ = write!(body, "\nRequests at {} resources: ", c.topics);
            let parts: Vec<String> = c
                .breakdown
                .iter()
                .map(|(k, v)| format!("`{k}` {v:.0}"))
                .collect();
            let _ = writeln!(body, "{}.", parts.join(", "));
        }
        body.push('\n');
    }
    if let Some(c) = &r.consumers_at_rest {
        let n = c.consumers as f64;
        let per_minute = c.requests / n / (c.window_s as f64 / 60.0);
        let _ = writeln!(
            summary,
            "| controller: {} autoscaled OrderConsumers applied at once, until all Reconciled (Deployment, Secret, ConfigMap, principal, ACLs) | {:.1} s, {:.1} MiB RSS, {:.2} API requests per consumer | | | | |",
            c.consumers,
            c.seconds_to_reconciled,
            c.rss_mib,
            c.apply_requests / n,
        );
        let _ = writeln!(
            summary,
            "| controller API requests per autoscaled OrderConsumer at rest ({} consumers) | {per_minute:.2} per minute, {:.0} writes | | | 0 writes | {} |",
            c.consumers,
            c.writes,
            verdict(c.writes == 0.0),
        );
        let _ = write!(
            body,
            "## OrderConsumers at rest

{} OrderConsumers with lag autoscaling (min 1, max 3) on one \
             3-partition topic, on the same API server, the controller binary with a {} s resync. \
             Time until all are Reconciled: {:.1} s, the controller's RSS then {:.1} MiB, its API \
             requests until then {:.0} ({:.2} per consumer). Then {} s at rest after one resync: the controller made \
             {:.0} API requests ({per_minute:.2} per consumer per minute), {:.0} of them writes. No worker pod \
             runs on this API server, so each pass also lists the consumer's pods to say why it is not Ready. \
             Requests: {}.\n\n",
            c.consumers,
            c.resync_s,
            c.seconds_to_reconciled,
            c.rss_mib,
            c.apply_requests,
            c.apply_requests / n,
            c.window_s,
            c.requests,
            c.writes,
            c.breakdown
                .iter()
                .map(|(k, v)| format!("`{k}` {v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(sc) = &r.scaling {
        let _ = write!(
            body,
            "## How the worker scales with partitions\n\nOne worker process, no-op handler, {} orders of \
             about 1 KiB, {ROUNDS} rounds per size (the 3-partition figures are the consumer benchmark's {CONSUMER_ROUNDS}).\n\n\
             | partitions | records/s (median) | raw |\n|---|---|---|\n",
            sc.records,
        );
        for (partitions, rates) in &sc.rates {
            let _ = writeln!(
                body,
                "| {partitions} | {:.0} | {} |",
                median(rates),
                raw(rates)
            );
        }
        body.push('\n');
    }
    if r.controller.len() > 1 {
        let _ = write!(
            body,
            "## How the controller scales with resources\n\n| resources | until all Ready | per resource | requests per resource |\n|---|---|---|---|\n"
        );
        for c in &r.controller {
            let _ = writeln!(
                body,
                "| {} | {:.1} s | {:.1} ms | {:.2} |",
                c.topics,
                c.seconds_to_ready,
                c.seconds_to_ready * 1000.0 / c.topics as f64,
                c.controller_requests / c.topics as f64,
            );
        }
        body.push('\n');
    }
    format!(
        "# Benchmarks\n\nGenerated by `make bench` on {when}; every figure below comes from that run.\n\n\
         ## Machine\n\n{machine}\n## Summary\n\n{summary}\n{body}\
         Command: `make bench` (`{command}`). Worker binary: `{worker}`, controller binary: `{controller}` \
         (release builds).\n",
        machine = machine(),
        command = std::env::args().collect::<Vec<_>>().join(" "),
        worker = args.worker.display(),
        controller = args.controller.display(),
    )
}

fn postgres_version() -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).max())
        .map(|p| p.join("bin/postgres"));
    bin.and_then(|b| Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "(unknown version)".into())
}
