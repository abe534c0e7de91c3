//! `make bench`: PubSubKafka's data plane against Apache Kafka's own perf tools, each pair in the
//! same run on the same broker, written to docs/BENCHMARKS.md. No figure is typed by hand.
//!
//! - Worker (no-op handler, 1 KiB orders, 3 partitions, at-least-once offsets) against
//!   `ConsumerPerformance` on the same topic: records/s while fetching.
//! - Gateway `POST /orders` (acks=all, 202 after the ack) against `ProducerPerformance` with the
//!   same record size and acks: records/s at full load, and p99 latency at 2,000 requests/s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pubsubkafka_worker::config::HandlerConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use testenv::worker;
use testenv::{Kafka, KafkaInfo, Lifetime, tools};

#[derive(Parser)]
struct Args {
    /// Records per consumer benchmark.
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    /// Requests per producer benchmark.
    #[arg(long, default_value_t = 60_000)]
    requests: usize,
    /// The worker binary to measure (a release build).
    #[arg(long, default_value = "target/release/pubsubkafka-worker")]
    worker: PathBuf,
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let worker_bin = std::path::absolute(&args.worker).expect("path");
    assert!(
        worker_bin.is_file(),
        "{} is missing: cargo build --release --bins",
        worker_bin.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!("==> starting Kafka {}", tools::version("KAFKA_VERSION"));
    let kafka = Kafka::start(&dir.path().join("kafka"), 1, Lifetime::Owned).expect("Kafka");

    let consumer = consumer_bench(&kafka.info, &worker_bin, dir.path(), args.records).await;
    let producer = producer_bench(&kafka.info, &worker_bin, dir.path(), args.requests).await;
    let report = render(&args, &consumer, &producer);
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn raw(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct ConsumerResult {
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
    let producer: FutureProducer = kafka
        .plaintext_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let value = serde_json::to_vec(&pubsubkafka_worker::order::sample("bench-0", 1024)).unwrap();
    let mut pending = Vec::new();
    for i in 0..records {
        let key = format!("bench-{i}");
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

    let mut perf_rates = Vec::new();
    let mut worker_rates = Vec::new();
    let mut perf_output = String::new();
    let mut command = String::new();
    for round in 0..ROUNDS {
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
        worker_rates.push(worker_rate(kafka, worker_bin, dir, topic, records, round).await);
    }
    ConsumerResult {
        records,
        command,
        perf_output,
        perf_rates,
        worker_rates,
    }
}

/// The worker (no-op handler) in a group of its own: records/s from its first handled record to
/// its last, the same measure as fetch.nMsg.sec.
async fn worker_rate(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    topic: &str,
    records: usize,
    round: usize,
) -> f64 {
    let mut config = worker::config(
        kafka,
        topic,
        &format!("bench-worker-{round}"),
        HandlerConfig::Noop,
    );
    config.kafka = pubsubkafka_worker::config::KafkaConnection {
        bootstrap_servers: kafka.bootstrap.clone(),
        security_protocol: pubsubkafka_worker::config::SecurityProtocol::Plaintext,
        username: None,
        password_file: None,
        ca_file: None,
    };
    let port = testenv::free_port().unwrap();
    let config_path = dir.join(format!("bench-worker-{round}.json"));
    std::fs::write(&config_path, config.to_json()).unwrap();
    let mut cmd = Command::new(worker_bin);
    cmd.args(["--log-format", "json", "consume", "--config"])
        .arg(&config_path)
        .args(["--http-addr", &format!("127.0.0.1:{port}")]);
    let _proc = testenv::process::Proc::spawn(
        "bench-worker",
        cmd,
        &dir.join(format!("bench-worker-{round}.log")),
        Lifetime::Owned,
        None,
    )
    .unwrap();
    let mut first: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the worker did not finish");
        let body = worker::http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let done = worker::metric_value(
            &body,
            "kafka_consumer_records_total",
            &[("outcome", "handled")],
        );
        let now = Instant::now();
        if done > 0.0 && first.is_none() {
            first = Some((now, done));
        }
        if done >= records as f64 {
            let (t0, n0) = first.expect("seen");
            return (done - n0) / (now - t0).as_secs_f64().max(1e-6);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct ProducerResult {
    requests: usize,
    command: String,
    perf_output: String,
    perf_rates: Vec<f64>,
    perf_p99: f64,
    gateway_rates: Vec<f64>,
    gateway_p99_full: f64,
    gateway_p99_at_2k: f64,
    gateway_achieved_at_2k: f64,
    record_bytes: usize,
}

async fn producer_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    requests: usize,
) -> ProducerResult {
    let event = pubsubkafka_worker::order::sample("bench", 900);
    let body = serde_json::to_vec(&serde_json::json!({
        "customer_info": event.customer_info,
        "items": event.items,
        "inventory_status": event.inventory_status,
    }))
    .unwrap();
    create_topic(kafka, "bench-gateway", 3).await;
    create_topic(kafka, "bench-producer", 3).await;
    let record_bytes = 1024;

    eprintln!("==> the gateway");
    let port = testenv::free_port().unwrap();
    let mut cmd = Command::new(worker_bin);
    cmd.args([
        "--log-format",
        "json",
        "gateway",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args([
        "--kafka-bootstrap-servers",
        &kafka.bootstrap,
        "--kafka-security-protocol",
        "PLAINTEXT",
    ])
    .args(["--orders-topic", "bench-gateway"]);
    let _proc = testenv::process::Proc::spawn(
        "bench-gateway",
        cmd,
        &dir.join("bench-gateway.log"),
        Lifetime::Owned,
        None,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(worker::http_get(port, "/readyz"), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = Bytes::from(body);
    // Warm up connections and the producer.
    load(port, body.clone(), 2_000, 64, None).await;
    let mut perf_rates = Vec::new();
    let mut gateway_rates = Vec::new();
    let mut perf_output = String::new();
    let mut perf_args: Vec<String> = Vec::new();
    let mut perf_p99 = f64::NAN;
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        eprintln!(
            "==> round {}: ProducerPerformance, then the gateway",
            round + 1
        );
        let (output, args, rate, p99) = producer_performance(kafka, requests, record_bytes);
        perf_output = output;
        perf_args = args;
        perf_rates.push(rate);
        perf_p99 = p99;
        let (rate, round_latencies) = load(port, body.clone(), requests, 256, None).await;
        gateway_rates.push(rate);
        latencies = round_latencies;
    }
    let p99_full = percentile(&mut latencies, 0.99);
    let (achieved, mut at_2k) = load(port, body, 20_000, 64, Some(2000.0)).await;
    let p99_2k = percentile(&mut at_2k, 0.99);
    ProducerResult {
        requests,
        command: format!("ProducerPerformance {}", perf_args.join(" ")),
        perf_output,
        perf_rates,
        perf_p99,
        gateway_rates,
        gateway_p99_full: p99_full,
        gateway_p99_at_2k: p99_2k,
        gateway_achieved_at_2k: achieved,
        record_bytes,
    }
}

/// One ProducerPerformance run: (output, arguments, records/s, p99 ms).
fn producer_performance(
    kafka: &KafkaInfo,
    requests: usize,
    record_bytes: usize,
) -> (String, Vec<String>, f64, f64) {
    let perf_args: Vec<String> = [
        "--topic",
        "bench-producer",
        "--num-records",
        &requests.to_string(),
        "--record-size",
        &record_bytes.to_string(),
        "--throughput",
        "-1",
        "--producer-props",
        &format!("bootstrap.servers={}", kafka.bootstrap),
        "acks=all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let perf_output = java_tool("org.apache.kafka.tools.ProducerPerformance", &perf_args);
    let summary_line = perf_output.lines().last().unwrap_or_default().to_owned();
    let field = |suffix: &str| -> f64 {
        summary_line
            .split(',')
            .find(|p| p.contains(suffix))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let perf_rate = summary_line
        .split(',')
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let perf_p99 = field("99th");

    (perf_output, perf_args, perf_rate, perf_p99)
}

/// Posts `total` orders over `concurrency` connections, optionally paced to `rate` per second;
/// returns requests/s and each request's latency in ms. Anything but 202 aborts the benchmark.
async fn load(
    port: u16,
    body: Bytes,
    total: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> (f64, Vec<f64>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            let body = body.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break latencies;
                    }
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let request = http::Request::post(format!("http://127.0.0.1:{port}/orders"))
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let t0 = Instant::now();
                    let response = client.request(request).await.expect("request");
                    let status = response.status();
                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    assert_eq!(
                        status.as_u16(),
                        202,
                        "the gateway refused a benchmark order"
                    );
                    latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (total as f64 / started.elapsed().as_secs_f64(), all)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 - 1.0) * q).round() as usize]
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

fn render(args: &Args, c: &ConsumerResult, p: &ProducerResult) -> String {
    let when = jiff::Timestamp::now();
    format!(
        "# Benchmarks\n\nGenerated by `make bench` on {when}; every figure below comes from that run.\n\n\
         ## Machine\n\n{machine}\n\
         ## Summary\n\n\
         | benchmark | PubSubKafka | Kafka's tool | ratio | goal |\n|---|---|---|---|---|\n\
         | consumer, no-op handler, 1 KiB orders, 3 partitions (records/s while fetching) | {wr:.0} | {pr:.0} (ConsumerPerformance fetch.nMsg.sec) | {cratio:.2}x | >= 1.0x |\n\
         | producer, acks=all, ~1 KiB records (records/s, 256 concurrent requests) | {gr:.0} (gateway POST /orders, 202 after ack) | {ppr:.0} (ProducerPerformance) | {pratio:.2}x | >= 0.7x |\n\
         | gateway p99 latency at 2,000 requests/s | {g2k:.1} ms (achieved {ach:.0} req/s) | | | < 25 ms |\n\
         | gateway p99 latency at full load | {gfull:.1} ms | {pp99:.1} ms (ProducerPerformance p99) | | |\n\n\
         ## Consumer\n\n{records} orders of about 1 KiB (valid ECST JSON, decoded and validated by the worker) in a \
         3-partition topic. The worker commits offsets only after each record's outcome is final; it is \
         measured from its first handled record to its last, as ConsumerPerformance's \
         fetch.nMsg.sec excludes the group join. {rounds} alternating rounds, each in a new group; \
         the table shows medians. Raw records/s: worker {wraw}; ConsumerPerformance {praw}.\n\n```\n{ccmd}\n{cout}```\n\n\
         ## Producer\n\n{requests} records of {bytes} bytes with acks=all. The gateway validates each JSON order, \
         enriches it (ids, timestamps, trace context), publishes it with an idempotent producer and answers \
         202 only after the broker's acknowledgement; the load generator keeps 256 requests in flight (64 for the paced run). {rounds} alternating \
         rounds; medians in the table. Raw records/s: gateway {graw}; ProducerPerformance {ppraw}.\n\n\
         ```\n{pcmd}\n{pout}```\n\n\
         Worker binary: `{worker}` (release build).\n",
        machine = machine(),
        wr = median(&c.worker_rates),
        pr = median(&c.perf_rates),
        cratio = median(&c.worker_rates) / median(&c.perf_rates),
        gr = median(&p.gateway_rates),
        ppr = median(&p.perf_rates),
        pratio = median(&p.gateway_rates) / median(&p.perf_rates),
        wraw = raw(&c.worker_rates),
        praw = raw(&c.perf_rates),
        graw = raw(&p.gateway_rates),
        ppraw = raw(&p.perf_rates),
        g2k = p.gateway_p99_at_2k,
        ach = p.gateway_achieved_at_2k,
        gfull = p.gateway_p99_full,
        pp99 = p.perf_p99,
        records = c.records,
        ccmd = c.command,
        cout = c.perf_output,
        requests = p.requests,
        bytes = p.record_bytes,
        pcmd = p.command,
        pout = p.perf_output.lines().last().unwrap_or_default().to_owned() + "\n",
        worker = args.worker.display(),
        rounds = ROUNDS,
    )
}
