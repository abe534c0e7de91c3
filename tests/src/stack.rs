//! The whole local stack in one directory: a real single-node Kubernetes (its API server and
//! etcd, containerd, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS),
//! and beside it as host processes Kafka, PostgreSQL, Prometheus and Jaeger, which pods reach
//! at the node's address. Its description (`stack.json`, `stack.env`) lets other processes
//! attach to it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::jaeger::{Jaeger, JaegerInfo};
use crate::kafka::{Kafka, KafkaInfo};
use crate::kube_api::{KubeApi, KubeInfo, KubeMode};
use crate::node::{self, Node, NodeInfo, Runtime};
use crate::postgres::{Postgres, PostgresInfo};
use crate::process::{self, Lifetime};
use crate::prometheus::{Prometheus, PrometheusInfo};

/// Everything a test or a person needs to reach a running stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackInfo {
    pub dir: PathBuf,
    pub kafka: KafkaInfo,
    pub kube: KubeInfo,
    pub postgres: PostgresInfo,
    /// Scrapes the targets registered with it; loads the shipped alert rules.
    pub prometheus: PrometheusInfo,
    /// Receives spans over OTLP; serves them back on its query API.
    pub jaeger: JaegerInfo,
    /// The Kubernetes node: where its state and logs are.
    #[serde(default)]
    pub node: Option<NodeInfo>,
    /// Processes to stop, in order (`stack down`); empty while this process owns them.
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// A running stack whose processes this value owns.
#[derive(Debug)]
pub struct Stack {
    pub info: StackInfo,
    pub kafka: Kafka,
    pub kube: KubeApi,
    pub postgres: Postgres,
    pub prometheus: Prometheus,
    pub jaeger: Jaeger,
    /// Declared last: dropped after the processes above, it then undoes its host changes.
    pub node: Node,
}

impl Stack {
    /// Starts the components in parallel under `dir`, then the node's Kubernetes components.
    pub fn start(dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the stack dir", e))?;
        // The node's bridge first: Kafka, PostgreSQL and the API server listen on its address.
        node::claim_host(dir)?;
        if lifetime == Lifetime::Owned {
            node::watch_owner(dir);
        }
        let started = std::thread::scope(|s| {
            let kafka = s.spawn(|| Kafka::start_with(&dir.join("kafka"), 1, lifetime, true));
            let kube = s.spawn(|| KubeApi::start_as(&dir.join("kube"), lifetime, KubeMode::Node));
            let postgres = s.spawn(|| Postgres::start_with(&dir.join("postgres"), lifetime, true));
            // Prometheus reads the kubeconfig once, when it loads its config: wait for the API
            // server's start to write it (its errors are the API server thread's to report).
            let kubeconfig = dir.join("kube/kubeconfig");
            let prometheus = s.spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while !kubeconfig.is_file() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Prometheus::start(&dir.join("prometheus"), lifetime, Some(&kubeconfig))
            });
            let jaeger = s.spawn(|| Jaeger::start(&dir.join("jaeger"), lifetime, node::NODE_IP));
            let runtime = s.spawn(|| Runtime::start(&dir.join("node"), lifetime));
            (
                kafka.join().expect("kafka start panicked"),
                kube.join().expect("kube start panicked"),
                postgres.join().expect("postgres start panicked"),
                prometheus.join().expect("prometheus start panicked"),
                jaeger.join().expect("jaeger start panicked"),
                runtime.join().expect("containerd start panicked"),
            )
        });
        let (kafka, kube, postgres, prometheus, jaeger, runtime) = started;
        // Any failure stops the components that did start (their handles drop here) and
        // undoes the host changes.
        let outcome = (|| {
            let (kafka, kube, postgres, prometheus, jaeger, runtime) =
                (kafka?, kube?, postgres?, prometheus?, jaeger?, runtime?);
            let node = Node::start(runtime, &kube, lifetime)?;
            Ok((kafka, kube, postgres, prometheus, jaeger, node))
        })();
        let (kafka, kube, postgres, prometheus, jaeger, node) = match outcome {
            Ok(parts) => parts,
            Err(e) => {
                node::clean_host(dir);
                return Err(e);
            }
        };
        let info = StackInfo {
            dir: dir.to_owned(),
            kafka: kafka.info.clone(),
            kube: kube.info.clone(),
            postgres: postgres.info.clone(),
            prometheus: prometheus.info.clone(),
            jaeger: jaeger.info.clone(),
            node: Some(node.info.clone()),
            pids: Vec::new(),
        };
        Ok(Self {
            info,
            kafka,
            kube,
            postgres,
            prometheus,
            jaeger,
            node,
        })
    }

    /// Lets the processes outlive this process and writes the description files.
    pub fn detach(self) -> Result<StackInfo, Error> {
        let mut info = self.info;
        // Stop order for `stack down`: the node's components (pods first), Prometheus and
        // Jaeger, API server and etcd, then Kafka, then PostgreSQL.
        info.pids.extend(self.node.detach());
        info.pids.extend(self.prometheus.detach());
        info.pids.extend(self.jaeger.detach());
        info.pids.extend(self.kube.detach());
        info.pids.extend(self.kafka.detach());
        info.pids.extend(self.postgres.detach());
        info.write()?;
        Ok(info)
    }
}

impl StackInfo {
    pub fn json_path(dir: &Path) -> PathBuf {
        dir.join("stack.json")
    }

    /// Reads the description of the stack in `dir`.
    pub fn read(dir: &Path) -> Result<Self, Error> {
        let path = Self::json_path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Description {
            path: path.display().to_string(),
            reason: format!("{e} (is a stack running there? `make up` starts one)"),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Description {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes `stack.json` and `stack.env` (shell exports) into the stack dir.
    pub fn write(&self) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(self).expect("stack info serializes");
        crate::write_private(&Self::json_path(&self.dir), &json)?;
        crate::write_private(&self.dir.join("stack.env"), &self.env_exports())
    }

    /// `export NAME=value` lines for a shell (no secrets: those stay in the files they name).
    pub fn env_exports(&self) -> String {
        let vars = [
            ("PSK_STACK_DIR", self.dir.display().to_string()),
            ("KUBECONFIG", self.kube.kubeconfig.display().to_string()),
            ("PSK_KAFKA_BOOTSTRAP", self.kafka.bootstrap.clone()),
            (
                "PSK_KAFKA_SASL_BOOTSTRAP",
                self.kafka.sasl_bootstrap.clone(),
            ),
            (
                "PSK_KAFKA_CA_FILE",
                self.kafka.ca_file.display().to_string(),
            ),
            (
                "PSK_KAFKA_ADMIN_PROPERTIES",
                self.kafka.admin_properties.display().to_string(),
            ),
            ("DATABASE_URL", self.postgres.url.clone()),
            ("PSK_PROMETHEUS_URL", self.prometheus.url.clone()),
            ("PSK_JAEGER_URL", self.jaeger.query_url.clone()),
            ("PSK_NODE_IP", node::NODE_IP.to_owned()),
            // Processes started from this shell export their spans to the stack's Jaeger.
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                self.jaeger.otlp_endpoint.clone(),
            ),
        ];
        vars.iter()
            .map(|(k, v)| format!("export {k}='{v}'\n"))
            .collect()
    }

    /// Stops the processes of a detached stack, in order, undoes the node's host changes and
    /// removes its directory.
    pub fn stop_detached(&self) {
        for pid in &self.pids {
            process::terminate_pid(*pid, Duration::from_secs(20));
        }
        if self.node.is_some() {
            node::clean_host(&self.dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stack shared by every test of this process.
///
/// With `PSK_STACK_DIR` set (as `make test` does), attaches to that stack. Otherwise starts one
/// in a temporary directory; its processes die with this process, and the directories of dead
/// runs are swept at the next start.
pub fn shared() -> &'static StackInfo {
    static SHARED: OnceLock<StackInfo> = OnceLock::new();
    static OWNED: OnceLock<Stack> = OnceLock::new();
    SHARED.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PSK_STACK_DIR") {
            return StackInfo::read(Path::new(&dir)).unwrap_or_else(|e| panic!("{e}"));
        }
        sweep_dead_runs();
        let dir = std::env::temp_dir().join(format!("pubsubkafka-test-{}", std::process::id()));
        let stack = Stack::start(&dir, Lifetime::Owned).unwrap_or_else(|e| panic!("{e}"));
        let info = stack.info.clone();
        let _ = OWNED.set(stack);
        info
    })
}

fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pubsubkafka-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process::pid_alive(pid) {
            node::clean_host(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
