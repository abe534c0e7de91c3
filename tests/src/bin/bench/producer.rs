//! The gateway's `POST /orders` against Kafka's `ProducerPerformance`: the same record size and
//! acks, on the same broker, in alternating rounds. Full load comes from `wrk` (a C load
//! generator: it shares the two cores with the gateway and the broker, so it must cost little),
//! one order per request and arrays of [`BATCH`] orders; the paced run at 2,000 requests/s uses
//! a client of our own that records every request's latency.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use testenv::{KafkaInfo, Lifetime, worker};

use crate::{ROUNDS, create_topic, java_tool, listed, median, raw, verdict};

/// Orders per request in the array runs.
const BATCH: usize = 100;
/// Connections kept busy by wrk: one order per request, and arrays.
const CONNECTIONS: usize = 256;
const BATCH_CONNECTIONS: usize = 16;

pub struct ProducerResult {
    perf_records: usize,
    seconds: u64,
    command: String,
    perf_output: String,
    perf_rates: Vec<f64>,
    perf_p99: f64,
    /// Orders/s, one order per request.
    single_rates: Vec<f64>,
    single_p99: f64,
    /// The gateway's CPU-µs per request, one order per request.
    single_cpu_us: Vec<f64>,
    /// Orders/s in arrays of BATCH.
    batch_rates: Vec<f64>,
    batch_p99: f64,
    /// The gateway's CPU-µs per order, in arrays.
    batch_cpu_us: Vec<f64>,
    p99_at_2k: f64,
    achieved_at_2k: f64,
    record_bytes: usize,
    wrk_commands: [String; 2],
}

/// One wrk run: requests/s and p99 in ms.
struct Wrk {
    rate: f64,
    p99_ms: f64,
    /// The gateway's CPU time (user and system) per request, in microseconds: what a request
    /// costs whatever share of the cores wrk and the broker leave it.
    cpu_us: f64,
    command: String,
}

/// The CPU time `pid` has used (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the gateway's stat");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's tick.
    (ticks(14) + ticks(15)) / 100.0
}

pub async fn producer_bench(
    kafka: &KafkaInfo,
    worker_bin: &Path,
    dir: &Path,
    perf_records: usize,
    duration: Duration,
) -> ProducerResult {
    let event = pubsubkafka_worker::order::sample("bench", 900);
    let order = serde_json::json!({
        "customer_info": event.customer_info,
        "items": event.items,
        "inventory_status": event.inventory_status,
    });
    let single = serde_json::to_string(&order).unwrap();
    let batch = serde_json::to_string(&vec![order; BATCH]).unwrap();
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
    .args(["--orders-topic", "bench-gateway"])
    // Traces are not exported in the benchmark, as in a deployment without a collector.
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let gateway = testenv::process::Proc::spawn(
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
    let url = format!("http://127.0.0.1:{port}/orders");
    let single_script = wrk_script(dir, "single", &single);
    let batch_script = wrk_script(dir, "batch", &batch);
    // Warm up connections, the producer and the allocator.
    let pid = gateway.pid();
    wrk(
        pid,
        &url,
        &single_script,
        CONNECTIONS,
        Duration::from_secs(2),
    );
    wrk(
        pid,
        &url,
        &batch_script,
        BATCH_CONNECTIONS,
        Duration::from_secs(2),
    );

    let mut perf_rates = Vec::new();
    let mut single_rates = Vec::new();
    let mut batch_rates = Vec::new();
    let (mut single_cpu_us, mut batch_cpu_us) = (Vec::new(), Vec::new());
    let (mut perf_output, mut command, mut perf_p99) = (String::new(), String::new(), f64::NAN);
    let (mut single_p99, mut batch_p99) = (f64::NAN, f64::NAN);
    let mut wrk_commands = [String::new(), String::new()];
    for round in 0..ROUNDS {
        eprintln!(
            "==> round {}: ProducerPerformance, then the gateway (one order per request, then arrays of {BATCH})",
            round + 1
        );
        let (output, args, rate, p99) = producer_performance(kafka, perf_records, record_bytes);
        perf_output = output;
        command = format!("ProducerPerformance {}", args.join(" "));
        perf_rates.push(rate);
        perf_p99 = p99;
        let one = wrk(pid, &url, &single_script, CONNECTIONS, duration);
        single_rates.push(one.rate);
        single_p99 = one.p99_ms;
        single_cpu_us.push(one.cpu_us);
        let many = wrk(pid, &url, &batch_script, BATCH_CONNECTIONS, duration);
        batch_rates.push(many.rate * BATCH as f64);
        batch_p99 = many.p99_ms;
        batch_cpu_us.push(many.cpu_us / BATCH as f64);
        wrk_commands = [one.command, many.command];
    }
    let (achieved_at_2k, mut at_2k) =
        load(port, Bytes::from(single), 20_000, 64, Some(2000.0)).await;
    ProducerResult {
        perf_records,
        seconds: duration.as_secs(),
        command,
        perf_output,
        perf_rates,
        perf_p99,
        single_rates,
        single_p99,
        single_cpu_us,
        batch_rates,
        batch_p99,
        batch_cpu_us,
        p99_at_2k: percentile(&mut at_2k, 0.99),
        achieved_at_2k,
        record_bytes,
        wrk_commands,
    }
}

/// A wrk script posting `body` as JSON.
fn wrk_script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    assert!(!body.contains("]==]"), "the body ends the Lua string");
    let path = dir.join(format!("wrk-{name}.lua"));
    std::fs::write(
        &path,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
        ),
    )
    .unwrap();
    path
}

/// Runs wrk for `duration`; any answer but 2xx, or any socket error, aborts the benchmark.
fn wrk(pid: u32, url: &str, script: &Path, connections: usize, duration: Duration) -> Wrk {
    let args = [
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs()),
        "--latency".to_owned(),
        "-s".to_owned(),
        script.display().to_string(),
        url.to_owned(),
    ];
    let cpu_before = cpu_seconds(pid);
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .expect("running wrk (scripts/install-tools.sh installs it)");
    let cpu = cpu_seconds(pid) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "the gateway refused or dropped benchmark requests:\n{text}"
    );
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wrk's Requests/sec");
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| wrk_duration_ms(v.trim()))
        .expect("wrk's 99th percentile");
    // "  123456 requests in 10.00s, ..."
    let requests: f64 = text
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .expect("wrk's request count");
    Wrk {
        rate,
        p99_ms,
        cpu_us: cpu * 1e6 / requests.max(1.0),
        command: format!("wrk {}", args[..4].join(" ")),
    }
}

/// wrk's latency figures: `812.00us`, `12.34ms`, `1.02s`.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

/// One ProducerPerformance run: (output, arguments, records/s, p99 ms).
fn producer_performance(
    kafka: &KafkaInfo,
    records: usize,
    record_bytes: usize,
) -> (String, Vec<String>, f64, f64) {
    let perf_args: Vec<String> = [
        "--topic",
        "bench-producer",
        "--num-records",
        &records.to_string(),
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
    (perf_output, perf_args, perf_rate, field("99th"))
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

/// The producer rows of the summary table and the section's text.
pub fn render(p: &ProducerResult, summary: &mut String, body: &mut String) {
    let perf = median(&p.perf_rates);
    let single = median(&p.single_rates);
    let batch = median(&p.batch_rates);
    let _ = writeln!(
        summary,
        "| producer, acks=all, ~1 KiB records, arrays of {BATCH} orders per POST /orders (records/s) | {batch:.0} (gateway, 202 after every ack) | {perf:.0} (ProducerPerformance) | {:.2}x | >= 0.7x | {} |",
        batch / perf,
        verdict(batch / perf >= 0.7),
    );
    let _ = writeln!(
        summary,
        "| producer, acks=all, ~1 KiB records, one order per POST /orders (records/s, {CONNECTIONS} connections) | {single:.0} | {perf:.0} (ProducerPerformance) | {:.2}x | >= 0.7x | {} |",
        single / perf,
        verdict(single / perf >= 0.7),
    );
    let _ = writeln!(
        summary,
        "| gateway CPU time per order (user + system): one order per POST / arrays of {BATCH} | {:.1} µs / {:.1} µs | | | | |",
        median(&p.single_cpu_us),
        median(&p.batch_cpu_us),
    );
    let _ = writeln!(
        summary,
        "| gateway p99 latency at 2,000 requests/s | {:.1} ms (achieved {:.0} req/s) | | | < 25 ms | {} |",
        p.p99_at_2k,
        p.achieved_at_2k,
        verdict(p.p99_at_2k < 25.0),
    );
    let _ = writeln!(
        summary,
        "| gateway p99 latency at full load (one order / arrays of {BATCH}) | {:.1} ms / {:.1} ms | {:.1} ms (ProducerPerformance p99) | | | |",
        p.single_p99, p.batch_p99, p.perf_p99,
    );
    let _ = write!(
        body,
        "## Producer\n\nRecords of {bytes} bytes with acks=all. The gateway validates each JSON order, \
         enriches it (ids, timestamps, trace context), publishes it with an idempotent producer and answers \
         202 only after the broker's acknowledgement (for an array, after every order's). Load: wrk for {secs} s \
         per run, {CONNECTIONS} connections with one order per request, {BATCH_CONNECTIONS} with arrays of \
         {BATCH}; ProducerPerformance sends {records} records per round. {ROUNDS} alternating rounds; medians \
         in the table. Raw records/s: gateway one order per request {sraw}; arrays {braw}; \
         ProducerPerformance {ppraw}. The gateway's CPU-µs per order (from /proc, user and system, over \
         each wrk run): one order per request {scpu}; arrays {bcpu}.\n\n\
         ```\n{wrk1}\n{wrk2}\n{pcmd}\n{pout}```\n\n",
        bytes = p.record_bytes,
        secs = p.seconds,
        records = p.perf_records,
        sraw = raw(&p.single_rates),
        braw = raw(&p.batch_rates),
        ppraw = raw(&p.perf_rates),
        scpu = listed(&p.single_cpu_us, 1),
        bcpu = listed(&p.batch_cpu_us, 1),
        wrk1 = p.wrk_commands[0],
        wrk2 = p.wrk_commands[1],
        pcmd = p.command,
        pout = p.perf_output.lines().last().unwrap_or_default().to_owned() + "\n",
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_latencies_read_in_milliseconds() {
        assert_eq!(super::wrk_duration_ms("812.00us"), Some(0.812));
        assert_eq!(super::wrk_duration_ms("12.34ms"), Some(12.34));
        assert_eq!(super::wrk_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(super::wrk_duration_ms("fast"), None);
    }
}
