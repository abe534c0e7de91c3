//! The test environment: a real single-node Kubernetes (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd, CoreDNS), and real
//! Apache Kafka, PostgreSQL, Prometheus and a trace backend (Jaeger) beside it, started by this
//! harness in a directory of their own.
//!
//! `make test` starts one stack with the `stack` binary and exports `PSK_STACK_DIR`; every test
//! binary attaches to it through [`shared`]. Run alone (`cargo test -p pubsubkafka-tests`), a test
//! binary starts a stack of its own that dies with it. Tests that stop or break a component
//! (a broker outage, a database outage) start their own instance of it with [`Kafka::start`],
//! [`Postgres::start`] or [`KubeApi::start`].

pub mod cluster;
pub mod demo;
pub mod jaeger;
pub mod kafka;
pub mod kube_api;
pub mod node;
pub mod operator;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod scenario;
pub mod stack;
pub mod tools;
pub mod worker;

use std::path::Path;
use std::time::{Duration, Instant};

pub use jaeger::{Jaeger, JaegerInfo};
pub use kafka::{Kafka, KafkaInfo, ScramUser};
pub use kube_api::{KubeApi, KubeInfo};
pub use postgres::{Postgres, PostgresInfo};
pub use process::Lifetime;
pub use prometheus::{Prometheus, PrometheusInfo};
pub use stack::{Stack, StackInfo, shared};

/// What can go wrong bringing up or using the local stack. Every variant says which component
/// and why, so a failed run never ends in a bare timeout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} is not installed: {detail}")]
    Missing { tool: String, detail: String },
    #[error("{component} failed: {reason}\n--- last lines of its log ---\n{log_tail}")]
    Component {
        component: String,
        reason: String,
        log_tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("Kubernetes: {0}")]
    Kube(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("stack description {path}: {reason}")]
    Description { path: String, reason: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released). Never the same port twice in one process:
/// a stack starts its components in parallel while a test may start a broker of its own, and
/// the kernel may hand a just-released port out again.
pub fn free_port() -> Result<u16, Error> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("finding a free port", e))?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| Error::io("finding a free port", e))?;
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return Ok(port);
        }
    }
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("reading /dev/urandom");
}

/// A random lowercase hex string of `len` characters (passwords, name suffixes).
pub fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    fill_random(&mut bytes);
    let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(len);
    hex
}

/// `prefix` plus a random suffix: a fresh namespace, topic or database name for one test.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", random_token(8))
}

/// Writes a file readable by its owner only (credentials, kubeconfigs).
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Polls an async condition until it holds or `timeout` passes; the error names `what` and the
/// last reason it did not hold. For tests: wait on a condition, never a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(reason) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_asked_length_and_differ() {
        let a = random_token(24);
        let b = random_token(24);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(random_token(7).len(), 7);
    }

    #[test]
    fn unique_names_are_valid_kubernetes_names() {
        let name = unique_name("smoke");
        assert!(name.starts_with("smoke-"));
        assert!(name.len() <= 63);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
