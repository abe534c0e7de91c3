//! The controller's command line (each flag also reads an environment variable, as the Helm
//! chart sets them).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use pubsubkafka_contract::kafka::KafkaArgs;
use pubsubkafka_contract::telemetry::TraceArgs;

/// PubSubKafka operator: reconciles KafkaTopic, DLQPolicy and OrderConsumer resources.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pubsubkafka-controller",
    version,
    after_help = "`pubsubkafka-controller cleanup [OPTIONS]` (the same options) runs the uninstall \
                  step instead: see `pubsubkafka-controller cleanup --help`."
)]
pub struct Args {
    /// The operator's Kafka connection: its user needs to manage topics, ACLs and SCRAM
    /// credentials (see the README's "Kafka permissions").
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Give up on one Kafka admin request after this long (e.g. 15s).
    #[arg(long, env = "PSK_KAFKA_TIMEOUT", default_value = "15s", value_parser = crate::duration::parse)]
    pub kafka_timeout: Duration,
    /// Check converged resources again this often: reverts config drift (e.g. 2m).
    #[arg(long, env = "PSK_RESYNC_INTERVAL", default_value = "2m", value_parser = crate::duration::parse)]
    pub resync_interval: Duration,
    /// Worker image for OrderConsumers that name none.
    #[arg(long, env = "PSK_WORKER_IMAGE", default_value = concat!("pubsubkafka/worker:", env!("CARGO_PKG_VERSION")))]
    pub worker_image: String,
    /// Image pull Secrets for every worker pod the operator creates (names, comma-separated).
    /// Each must exist in every namespace with OrderConsumers.
    #[arg(long, env = "PSK_WORKER_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub worker_image_pull_secrets: Vec<String>,
    /// Bootstrap servers as worker pods reach them (the operator's own when absent).
    #[arg(long, env = "PSK_WORKER_BOOTSTRAP_SERVERS")]
    pub worker_bootstrap_servers: Option<String>,
    /// Watch only this namespace (all namespaces when absent).
    #[arg(long, env = "PSK_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Reconcile only the KafkaTopics and OrderConsumers whose labels match this selector
    /// (e.g. "environment=staging"); all when absent. Ownership is decided among the resources
    /// the operator sees, so one operator should see every resource on one Kafka cluster.
    #[arg(long, env = "PSK_WATCH_SELECTOR")]
    pub watch_selector: Option<String>,
    /// What a namespace that no KafkaAccessPolicy selects may do: `namespaced` (topic names and
    /// group ids start with "<namespace>.", grants only to its own principals) or `open` (any
    /// name, except what others own and Kafka's internal topics).
    #[arg(
        long,
        env = "PSK_DEFAULT_ACCESS_POLICY",
        value_enum,
        default_value = "namespaced"
    )]
    pub default_access_policy: crate::tenancy::DefaultAccessPolicy,
    /// Elect a leader among replicas on a Lease; only the leader reconciles.
    #[arg(long, env = "PSK_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "PSK_LEADER_ELECTION_LEASE",
        default_value = "pubsubkafka-controller"
    )]
    pub leader_election_lease: String,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "PSK_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format: json, text, or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "PSK_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,
    /// The operator's own trace export (OTLP/HTTP).
    #[command(flatten)]
    pub trace: TraceArgs,
    /// OTLP/HTTP endpoint written into the workers' worker.json (the operator's own when
    /// absent; tracing is off in the workers when neither is set).
    #[arg(long, env = "PSK_WORKER_OTLP_ENDPOINT")]
    pub worker_otlp_endpoint: Option<String>,
}
