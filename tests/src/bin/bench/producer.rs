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
/// Connections kept busy by wrk with one order per request. Each waits for its broker ack, so
/// a run is bound by connections / latency until the cores are busy: at 256 connections and
/// linger.ms 5 the machine sat 25-30% idle (49,000 orders/s at 512 against 36,700 at 256). Every
/// round runs each count and keeps the best, as full load; the idle share is reported beside it.
const CONNECTIONS: [usize; 2] = [256, 512];
/// Connections with arrays of BATCH orders.
const BATCH_CONNECTIONS: usize = 16;
/// Requests of the paced run at 2,000 requests/s.
const PACED_REQUESTS: usize = 20_000;

pub struct ProducerResult {
    perf_records: usize,
    seconds: u64,
    command: String,
    perf_output: String,
    perf_rates: Vec<f64>,
    perf_p99: f64,
    /// Orders/s, one order per request: the best connection count of each round.
    single_rates: Vec<f64>,
    /// The connection count of each round's best run, and the machine's idle share during it.
    single_best: Vec<(usize, f64)>,
    /// Orders/s of every run, per connection count (in CONNECTIONS' order).
    single_by_connections: Vec<Vec<f64>>,
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
    /// The gateway's CPU-µs per request in the paced run.
    cpu_us_at_2k: f64,
    /// Requests/s of the gateway's liveness route (answered at once) at full load.
    http_ceiling: f64,
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
    /// The share of the machine's CPU time that was idle during the run: near 0 when the run
    /// was bound by the cores, not by the connections' latency.
    idle: f64,
    command: String,
}

/// The machine's CPU time so far: (idle, all), in USER_HZ ticks, from /proc/stat's first line.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (idle, ticks.iter().take(8).sum())
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
        Some(&single_script),
        CONNECTIONS[0],
        Duration::from_secs(2),
    );
    wrk(
        pid,
        &url,
        Some(&batch_script),
        BATCH_CONNECTIONS,
        Duration::from_secs(2),
    );
    // Neither side's first round runs on a cold broker: its produce path was measured to go
    // from 52,000 to 93,000 records/s of ProducerPerformance over three rounds without this.
    eprintln!("==> ProducerPerformance, not measured (warms the broker)");
    producer_performance(kafka, perf_records, record_bytes);

    let mut perf_rates = Vec::new();
    let mut single_rates = Vec::new();
    let mut single_best = Vec::new();
    let mut single_by_connections = vec![Vec::new(); CONNECTIONS.len()];
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
        let mut best: Option<(usize, Wrk)> = None;
        for (i, &connections) in CONNECTIONS.iter().enumerate() {
            let run = wrk(pid, &url, Some(&single_script), connections, duration);
            single_by_connections[i].push(run.rate);
            if best.as_ref().is_none_or(|(_, b)| run.rate > b.rate) {
                best = Some((connections, run));
            }
        }
        let (connections, one) = best.expect("at least one connection count");
        single_rates.push(one.rate);
        single_best.push((connections, one.idle));
        single_p99 = one.p99_ms;
        single_cpu_us.push(one.cpu_us);
        let many = wrk(pid, &url, Some(&batch_script), BATCH_CONNECTIONS, duration);
        batch_rates.push(many.rate * BATCH as f64);
        batch_p99 = many.p99_ms;
        batch_cpu_us.push(many.cpu_us / BATCH as f64);
        wrk_commands = [one.command, many.command];
    }
    // The most requests/s HTTP/1.1 itself leaves on this machine, one request per order: the
    // gateway's liveness route answers at once, with the same server, connections and client.
    let ceiling = CONNECTIONS
        .iter()
        .map(|&c| {
            wrk(
                pid,
                &format!("http://127.0.0.1:{port}/healthz"),
                None,
                c,
                duration,
            )
            .rate
        })
        .fold(0.0, f64::max);
    let cpu_before = cpu_seconds(pid);
    let (achieved_at_2k, mut at_2k) =
        load(port, Bytes::from(single), PACED_REQUESTS, 64, Some(2000.0)).await;
    let cpu_us_at_2k = (cpu_seconds(pid) - cpu_before) * 1e6 / PACED_REQUESTS as f64;
    ProducerResult {
        perf_records,
        seconds: duration.as_secs(),
        command,
        perf_output,
        perf_rates,
        perf_p99,
        single_rates,
        single_best,
        single_by_connections,
        single_p99,
        single_cpu_us,
        batch_rates,
        batch_p99,
        batch_cpu_us,
        p99_at_2k: percentile(&mut at_2k, 0.99),
        achieved_at_2k,
        cpu_us_at_2k,
        http_ceiling: ceiling,
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
/// Without a script, wrk sends GETs.
fn wrk(pid: u32, url: &str, script: Option<&Path>, connections: usize, duration: Duration) -> Wrk {
    let mut args = vec![
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs()),
        "--latency".to_owned(),
    ];
    if let Some(script) = script {
        args.extend(["-s".to_owned(), script.display().to_string()]);
    }
    args.push(url.to_owned());
    let cpu_before = cpu_seconds(pid);
    let machine_before = machine_ticks();
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .expect("running wrk (scripts/install-tools.sh installs it)");
    let cpu = cpu_seconds(pid) - cpu_before;
    let machine_after = machine_ticks();
    let idle = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
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
        idle,
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

/// "256 and 512".
fn connection_counts() -> String {
    let counts: Vec<String> = CONNECTIONS.iter().map(usize::to_string).collect();
    match counts.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
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
        "| producer, acks=all, ~1 KiB records, one order per POST /orders (records/s, the best of {} connections) | {single:.0} | {perf:.0} (ProducerPerformance) | {:.2}x | >= 0.7x | {} |",
        connection_counts(),
        single / perf,
        verdict(single / perf >= 0.7),
    );
    let _ = writeln!(
        summary,
        "| HTTP/1.1 ceiling: the gateway's GET /healthz, answered at once (requests/s, the best of {} connections) | {:.0} | {perf:.0} (ProducerPerformance) | {:.2}x | | |",
        connection_counts(),
        p.http_ceiling,
        p.http_ceiling / perf,
    );
    let _ = writeln!(
        summary,
        "| gateway CPU time per order (user + system): one order per POST at full load / at 2,000 requests/s / arrays of {BATCH} | {:.1} µs / {:.1} µs / {:.1} µs | | | | |",
        median(&p.single_cpu_us),
        p.cpu_us_at_2k,
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
         per run, {BATCH_CONNECTIONS} connections with arrays of {BATCH}; with one order per request, \
         {counts} connections in turn, the best run of each round counting as full load (each connection \
         waits for its ack, so few connections leave the cores idle). ProducerPerformance sends {records} \
         records per round, after a round that is not measured (it warms the broker). The HTTP/1.1 \
         ceiling is wrk against the gateway's `GET /healthz`, which answers at once: the most requests \
         one order per request could reach here, wrk and the kernel's loopback sharing the two cores \
         with the gateway. {ROUNDS} alternating rounds; medians in the table. Raw records/s: gateway one order \
         per request {sraw} ({by_count}; the best runs' connections and the machine's idle CPU share: {best}); \
         arrays {braw}; ProducerPerformance {ppraw}. The gateway's CPU-µs per order (from /proc, user and \
         system, over each wrk run): one order per request {scpu}; arrays {bcpu}; {paced} requests paced \
         at 2,000/s {cpu2k:.1}.\n\n\
         ```\n{wrk1}\n{wrk2}\n{pcmd}\n{pout}```\n\n",
        bytes = p.record_bytes,
        secs = p.seconds,
        records = p.perf_records,
        sraw = raw(&p.single_rates),
        counts = connection_counts(),
        by_count = CONNECTIONS
            .iter()
            .zip(&p.single_by_connections)
            .map(|(c, rates)| format!("{c} connections: {}", raw(rates)))
            .collect::<Vec<_>>()
            .join("; "),
        best = p
            .single_best
            .iter()
            .map(|(c, idle)| format!("{c}, {:.0}%", idle * 100.0))
            .collect::<Vec<_>>()
            .join("; "),
        paced = PACED_REQUESTS,
        cpu2k = p.cpu_us_at_2k,
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
