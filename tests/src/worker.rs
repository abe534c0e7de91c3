//! The worker binary as a process, as a pod would run it, plus helpers to feed it orders and
//! read what it produced (the event store, the dead-letter topic, its metrics).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use pubsubkafka_worker::config::{
    GroupProtocol, HandlerConfig, KafkaConnection, RetryPolicy, WorkerConfig,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::process::{Lifetime, Proc};
use crate::{Error, KafkaInfo};

/// Serves `app` on a free loopback port in the background (a test's HTTP receiver); returns
/// the port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The worker binary next to this test executable (`target/<profile>/pubsubkafka-worker`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("pubsubkafka-worker");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A worker configuration for tests: SASL_SSL as the stack's admin.
pub fn config(kafka: &KafkaInfo, topic: &str, group: &str, handler: HandlerConfig) -> WorkerConfig {
    WorkerConfig {
        kafka: kafka.admin_connection(),
        source_topic: topic.to_owned(),
        group_id: group.to_owned(),
        dead_letter_topic: format!("{topic}-dlq"),
        retry: RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 2000,
            ..RetryPolicy::default()
        },
        handler,
        http_port: 0,
        shutdown_grace_seconds: 10,
        // The broker's minimum: a killed worker's partitions move on quickly.
        session_timeout_ms: 6_000,
        // The product's default; the stack's broker holds consumer-protocol sessions as short.
        group_protocol: pubsubkafka_worker::config::GroupProtocol::default(),
        concurrency: pubsubkafka_worker::config::DEFAULT_CONCURRENCY,
        retry_topics: Vec::new(),
        tracing: None,
    }
}

/// An event store handler whose URL file is written into `dir`.
pub fn event_store(dir: &Path, database_url: &str) -> HandlerConfig {
    let file = dir.join("database-url");
    crate::write_private(&file, database_url).expect("writing the database URL file");
    HandlerConfig::EventStore {
        database_url_file: file,
    }
}

/// `pubsubkafka-worker` flags that connect to `kafka` as its admin over SASL_SSL.
pub fn kafka_args(kafka: &KafkaInfo) -> Vec<String> {
    let c = kafka.admin_connection();
    vec![
        "--kafka-bootstrap-servers".into(),
        c.bootstrap_servers,
        "--kafka-security-protocol".into(),
        "SASL_SSL".into(),
        "--kafka-username".into(),
        c.username.expect("the admin has a name"),
        "--kafka-password-file".into(),
        c.password_file
            .expect("the admin has a password file")
            .display()
            .to_string(),
        "--kafka-ca-file".into(),
        c.ca_file.expect("the stack has a CA").display().to_string(),
    ]
}

/// Starts `pubsubkafka-worker gateway` on a free port, publishing to `orders` and `users` on
/// `kafka` as its admin, with `extra` flags; does not wait for it to be ready.
pub fn start_gateway(
    dir: &Path,
    name: &str,
    kafka: &KafkaInfo,
    orders: &str,
    users: &str,
    extra: &[&str],
) -> WorkerProcess {
    let port = crate::free_port().expect("a free port");
    let mut args = vec![
        "gateway".to_owned(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(kafka_args(kafka));
    args.extend([
        "--orders-topic".into(),
        orders.to_owned(),
        "--users-topic".into(),
        users.to_owned(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    WorkerProcess::run(dir, name, args, port).expect("the gateway starts")
}

/// An order request body as a client posts it to the gateway (no metadata: the gateway adds
/// it), with `order_id` as its id.
pub fn order_request(order_id: &str) -> Vec<u8> {
    let sample = pubsubkafka_worker::order::sample(order_id, 0);
    serde_json::to_vec(&serde_json::json!({
        "order_id": order_id,
        "customer_info": sample.customer_info,
        "items": sample.items,
        "inventory_status": sample.inventory_status,
    }))
    .expect("serializes")
}

/// A running worker process.
pub struct WorkerProcess {
    proc_: std::sync::Mutex<Option<Proc>>,
    pub http_port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    name: String,
}

impl WorkerProcess {
    /// Writes `config` into `dir` and starts `pubsubkafka-worker consume` on it.
    pub fn start(dir: &Path, name: &str, config: &WorkerConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the worker dir", e))?;
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, config.to_json())
            .map_err(|e| Error::io("writing the worker config", e))?;
        let port = crate::free_port()?;
        let args = vec![
            "consume".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--http-addr".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        Self::run(dir, name, args, port)
    }

    /// Starts `pubsubkafka-worker <args>`; `http_port` is where it serves HTTP.
    pub fn run(dir: &Path, name: &str, args: Vec<String>, http_port: u16) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the worker dir", e))?;
        let mut worker = Self {
            proc_: std::sync::Mutex::new(None),
            http_port,
            log: dir.join(format!("{name}.log")),
            args,
            name: name.to_owned(),
        };
        worker.spawn()?;
        Ok(worker)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(binary());
        cmd.args(["--log-format", "text"])
            .args(&self.args)
            .env("RUST_LOG", "info,rdkafka=warn");
        let proc_ = Proc::spawn(&self.name, cmd, &self.log, Lifetime::Owned, None)?;
        *self.lock() = Some(proc_);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Proc>> {
        self.proc_.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the same worker again after a kill or a stop.
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.lock().is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    /// SIGKILL, as an OOM kill or a node loss would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.lock().take() {
            p.kill();
        }
    }

    /// SIGTERM and wait for a clean exit; the error says how it ended otherwise.
    pub fn terminate(&mut self, within: Duration) -> Result<(), String> {
        let mut guard = self.lock();
        let Some(p) = guard.as_mut() else {
            return Ok(());
        };
        let pid = p.pid() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Err(e) = p.check_alive() {
                let text = e.to_string();
                *guard = None;
                return if text.contains("exit status: 0") {
                    Ok(())
                } else {
                    Err(text)
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{} did not exit within {within:?} of SIGTERM",
            self.name
        ))
    }

    /// Fails with the log tail if the process died.
    pub fn check_alive(&self) -> Result<(), String> {
        match self.lock().as_mut() {
            Some(p) => p.check_alive().map_err(|e| e.to_string()),
            None => Err(format!("{} is not running", self.name)),
        }
    }

    /// Waits until `/readyz` answers 200 (failing with the log tail if the process dies).
    pub async fn wait_ready(&self) {
        crate::eventually(
            &format!("{} to be ready", self.name),
            Duration::from_secs(90),
            || async {
                self.check_alive()?;
                match self.get("/readyz") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    /// GET `path` on the worker's HTTP port: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.http_port, path)
    }

    /// POST `body` to `path` with `headers`: (status, body).
    pub fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String), String> {
        http_request(self.http_port, "POST", path, headers, body)
    }

    /// The value of metric `name` with all of `labels` (summed over other labels).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.get("/metrics").unwrap_or_default();
        metric_value(&body, name, labels)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Each of `workers` joined its group with `protocol`, and none fell back to another.
pub fn assert_protocol(workers: &[&WorkerProcess], protocol: GroupProtocol) {
    let joined = format!("protocol=\"{}\"", protocol.as_str());
    for worker in workers {
        let log = worker.log_text();
        let consuming: Vec<&str> = log.lines().filter(|l| l.contains(" consuming")).collect();
        assert!(
            !consuming.is_empty() && consuming.iter().all(|l| l.contains(&joined)),
            "every join with {joined}: {consuming:?}"
        );
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    http_request(port, "GET", path, &[], b"")
}

/// A minimal HTTP/1.0 request on 127.0.0.1:`port`: (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    http_request_at(&format!("127.0.0.1:{port}"), method, path, headers, body)
}

/// A minimal HTTP/1.0 request on `address` (`host:port`): (status, body).
pub fn http_request_at(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    // A server may answer (413) before reading the whole body.
    let _ = stream.write_all(body);
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Produces `value` records keyed by `key` with JSON content type; waits for each ack.
pub async fn produce(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    produce_with(producer, topic, records, &[]).await;
}

/// Like [`produce`], each record also carrying the W3C `traceparent` at the same index.
pub async fn produce_traced(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
    traceparents: &[String],
) {
    assert_eq!(
        records.len(),
        traceparents.len(),
        "one traceparent a record"
    );
    produce_with(producer, topic, records, traceparents).await;
}

/// Records with the content type, a correlation id and, where `traceparents` has one, the
/// record's `traceparent`.
async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
    traceparents: &[String],
) {
    let sends = records.iter().enumerate().map(|(i, (key, value))| {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "x-correlation-id",
                value: Some(&format!("corr-{key}")),
            });
        if let Some(tp) = traceparents.get(i) {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(tp.as_str()),
            });
        }
        producer.send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("the broker acknowledged the record");
    }
}

/// `count` valid orders `<prefix>-0..count` of about 1 KiB, JSON-encoded.
pub fn orders(prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let event = pubsubkafka_worker::order::sample(&id, 1024);
            (id, serde_json::to_vec(&event).expect("serializes"))
        })
        .collect()
}

/// A producer for tests (admin over SASL_SSL, large records allowed).
pub fn producer(kafka: &KafkaInfo) -> FutureProducer {
    kafka
        .admin_config()
        .set("linger.ms", "5")
        .set("message.max.bytes", "4194304")
        .create()
        .expect("producer")
}

/// Reads every record of `topic` from the beginning until `expected` arrived (or `timeout`).
pub async fn read_all(
    kafka: &KafkaInfo,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = kafka
        .admin_config()
        .set("group.id", crate::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = consumer.stream();
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => out.push(m.detach()),
            Ok(Some(Err(e))) => panic!("reading {topic}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Waits until the event store holds `expected` orders, each once, while `worker` lives.
pub async fn wait_stored(db: &tokio_postgres::Client, expected: i64, worker: &WorkerProcess) {
    let rows = wait_progress(db, expected, worker).await;
    let (_, distinct) = stored(db).await;
    assert_eq!(rows, distinct, "an order stored twice");
    assert_eq!(rows, expected, "more orders stored than produced");
}

/// Waits until the event store holds at least `target` orders; returns how many it holds.
pub async fn wait_progress(
    db: &tokio_postgres::Client,
    target: i64,
    worker: &WorkerProcess,
) -> i64 {
    crate::eventually("progress", Duration::from_secs(90), || async {
        worker.check_alive()?;
        let (rows, _) = stored(db).await;
        (rows >= target)
            .then_some(rows)
            .ok_or(format!("{rows} stored"))
    })
    .await
}

/// Asserts that `topic` (a dead-letter topic) stays empty for a few seconds.
pub async fn assert_no_dead_letters(kafka: &KafkaInfo, topic: &str, why: &str) {
    use rdkafka::message::Headers;
    let dead = read_all(kafka, topic, 1, Duration::from_secs(3)).await;
    let first = dead.first().map(|m| {
        m.headers()
            .map(|h| {
                h.iter()
                    .filter(|h| h.key.starts_with("x-dlq-"))
                    .map(|h| {
                        format!(
                            "{}={}",
                            h.key,
                            String::from_utf8_lossy(h.value.unwrap_or_default())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    });
    assert!(
        dead.is_empty(),
        "{why}: {} dead letters in {topic}, the first with {}",
        dead.len(),
        first.unwrap_or_default()
    );
}

/// Waits until `worker`'s event store has created its schema.
pub async fn wait_schema(db: &tokio_postgres::Client, worker: &WorkerProcess) {
    crate::eventually(
        "the event store schema",
        Duration::from_secs(90),
        || async {
            worker.check_alive()?;
            db.query_one("SELECT to_regclass('orders')::text", &[])
                .await
                .ok()
                .and_then(|r| r.get::<_, Option<String>>(0))
                .ok_or("no orders table yet".to_owned())
        },
    )
    .await;
}

/// Count of stored orders (and of distinct order ids, which must be equal).
pub async fn stored(client: &tokio_postgres::Client) -> (i64, i64) {
    match client
        .query_one("SELECT count(*), count(DISTINCT order_id) FROM orders", &[])
        .await
    {
        Ok(row) => (row.get(0), row.get(1)),
        // Before the worker migrated the schema.
        Err(_) => (0, 0),
    }
}

/// Connection settings as the operator renders them for a consumer principal.
pub fn sasl(kafka: &KafkaInfo, user: &str, password_file: &Path) -> KafkaConnection {
    KafkaConnection {
        username: Some(user.to_owned()),
        password_file: Some(password_file.to_owned()),
        ..kafka.admin_connection()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut p) = self.lock().take() {
            p.kill();
        }
    }
}

/// Message key as text.
pub fn key_of(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()
}
