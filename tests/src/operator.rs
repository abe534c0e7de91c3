//! The operator under test: its CRDs installed in the stack's API server, and the operator
//! itself run in-process against the stack's Kafka (SASL_SSL as `admin`), scoped to one
//! namespace so tests running side by side do not reconcile each other's resources.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use pubsubkafka_controller::settings::Args;
use pubsubkafka_worker::kafka::KafkaArgs;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{KafkaInfo, KubeInfo};

/// Applies every CRD the operator serves and waits until the API server serves them.
pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in pubsubkafka_controller::crd::all() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        crds.patch(
            &name,
            &PatchParams::apply("pubsubkafka-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        crate::eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established
                        .then_some(())
                        .ok_or_else(|| "not established".to_owned())
                }
            },
        )
        .await;
    }
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// A running operator; stopped when dropped.
pub struct Operator {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

/// The operator's settings for a test whose workers run on the stack's node: [`args`] with the
/// worker image the node holds and Kafka as pods reach it (with its CA).
pub fn node_args(kafka: &KafkaInfo, namespace: &str, resync: Duration) -> Args {
    let mut args = args(kafka, namespace, resync);
    args.worker_image = crate::node::product_image("worker");
    args.worker_bootstrap_servers = kafka.node_bootstrap.clone();
    args.kafka.kafka_ca_file = Some(kafka.ca_file.clone());
    args
}

/// The operator's settings for a test: admin over SASL_SSL, one namespace, a short resync.
pub fn args(kafka: &KafkaInfo, namespace: &str, resync: Duration) -> Args {
    let conn = kafka.admin_connection();
    Args {
        kafka: KafkaArgs {
            kafka_bootstrap_servers: conn.bootstrap_servers,
            kafka_security_protocol: conn.security_protocol,
            kafka_username: conn.username,
            kafka_password_file: conn.password_file,
            kafka_ca_file: conn.ca_file,
        },
        kafka_timeout: Duration::from_secs(5),
        resync_interval: resync,
        watch_namespace: Some(namespace.to_owned()),
        watch_selector: None,
        // Today's behaviour for the tests that do not test tenancy; the chart's default is
        // `namespaced` and tests/tenancy.rs sets it where it matters.
        default_access_policy: pubsubkafka_controller::tenancy::DefaultAccessPolicy::Open,
        worker_image: "pubsubkafka/worker:test".into(),
        worker_image_pull_secrets: Vec::new(),
        leader_elect: false,
        leader_election_namespace: namespace.to_owned(),
        leader_election_lease: "pubsubkafka-controller".into(),
        leader_election_identity: None,
        worker_bootstrap_servers: None,
        metrics_addr: "127.0.0.1:0".parse().expect("address"),
        log_format: "text".into(),
        trace: Default::default(),
        worker_otlp_endpoint: None,
    }
}

impl Operator {
    /// Starts the operator with `args` against the API server of `kube`, as its admin.
    pub async fn start(kube: &KubeInfo, args: Args) -> Self {
        let client = kube.client().await.expect("kube client");
        Self::start_with_client(client, args).await
    }

    /// Starts the operator with `args`, acting as `client`'s identity (e.g. a ServiceAccount).
    pub async fn start_with_client(client: kube::Client, args: Args) -> Self {
        init_test_logging();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pubsubkafka_controller::operator::run(args, client, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        Self {
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the operator and returns how its run ended.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .map_err(|_| "the operator did not stop within 30s".to_owned())?
                .map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }

    /// Waits for the operator to end on its own (a start-up failure).
    pub async fn finished(mut self) -> Result<(), String> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| "the operator is still running".to_owned())?
            .map_err(|e| e.to_string())?
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Shows the code under test's logs in failing tests' output.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The operator's binary run as a process, as in a pod: it stops on SIGTERM, and its
/// `/metrics`, `/healthz` and `/readyz` answer on `metrics_port`.
pub struct OperatorProcess {
    proc_: crate::process::Proc,
    pub metrics_port: u16,
}

/// The binary next to this test executable (`target/<profile>/pubsubkafka-controller`).
pub fn binary() -> std::path::PathBuf {
    crate::worker::binary().with_file_name("pubsubkafka-controller")
}

/// Flags that connect the operator to `kafka` as its admin over SASL_SSL, scoped to
/// `namespace`, with a short resync and the `open` access policy (tests of other rules use
/// free topic names): the binary's counterpart of [`args`].
pub fn process_args(kafka: &KafkaInfo, namespace: &str, resync: Duration) -> Vec<String> {
    let mut flags = crate::worker::kafka_args(kafka);
    flags.extend([
        "--watch-namespace".into(),
        namespace.to_owned(),
        "--resync-interval".into(),
        format!("{}s", resync.as_secs().max(1)),
        "--kafka-timeout".into(),
        "5s".into(),
        "--worker-image".into(),
        "pubsubkafka/worker:test".into(),
        "--log-format".into(),
        "text".into(),
        "--default-access-policy".into(),
        "open".into(),
    ]);
    flags
}

impl OperatorProcess {
    /// Starts the binary with `flags` against `kube`'s API server, logging to `log`.
    pub fn start(kube: &KubeInfo, flags: &[String], log: &std::path::Path) -> Self {
        let metrics_port = crate::free_port().expect("a free port");
        let mut cmd = std::process::Command::new(binary());
        cmd.env("KUBECONFIG", &kube.kubeconfig)
            .env("RUST_LOG", "info,kube_runtime=warn")
            .args(flags)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
        let proc_ = crate::process::Proc::spawn(
            "pubsubkafka-controller",
            cmd,
            log,
            crate::Lifetime::Owned,
            None,
        )
        .expect("starting the operator binary");
        Self {
            proc_,
            metrics_port,
        }
    }

    /// `GET path` on the metrics port: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        crate::worker::http_get(self.metrics_port, path)
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.proc_.check_alive().map_err(|e| e.to_string())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive().unwrap_or_else(|e| panic!("{e}"));
            if matches!(self.get("/readyz"), Ok((200, _))) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                self.proc_.failure("/readyz not 200 within 60s")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, and waits up to `grace` for the process to exit (SIGKILL after that).
    pub fn terminate(&mut self, grace: Duration) {
        self.proc_.stop(grace);
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.proc_.failure("log").to_string()
    }
}
