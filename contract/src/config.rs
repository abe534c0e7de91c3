//! Configuration shared by the control plane and the data plane. The controller renders these
//! types into what it deploys and the worker reads them back: one definition, no drift.

use std::path::PathBuf;

use rdkafka::ClientConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a client reaches and authenticates to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL user name (SASL protocols only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the SASL password (a mounted Secret key), never the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the brokers' certificates (TLS protocols only); the
    /// system trust store when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    #[default]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// A `--kafka-security-protocol` that Kafka does not know (as written, upper-cased).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown security protocol {0:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)")]
pub struct UnknownSecurityProtocol(pub String);

impl std::str::FromStr for SecurityProtocol {
    type Err = UnknownSecurityProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            other => Err(UnknownSecurityProtocol(other.to_owned())),
        }
    }
}

/// A connection setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{protocol} needs a SASL {what}")]
    MissingCredential {
        protocol: &'static str,
        what: &'static str,
    },
    #[error("reading the Kafka password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Kafka password file {0} is empty")]
    EmptyPassword(PathBuf),
}

impl KafkaConnection {
    /// A librdkafka configuration for this connection (SCRAM-SHA-512 for SASL).
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_kafka());
        let protocol = self.security_protocol.as_kafka();
        if self.security_protocol.uses_sasl() {
            let username = self
                .username
                .as_deref()
                .ok_or(ConfigError::MissingCredential {
                    protocol,
                    what: "username",
                })?;
            let path = self
                .password_file
                .as_ref()
                .ok_or(ConfigError::MissingCredential {
                    protocol,
                    what: "password file",
                })?;
            let password =
                std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(ConfigError::EmptyPassword(path.clone()));
            }
            // The client id is the username: the operator tells from a group's members
            // whether any still connects with a credential it is retiring.
            config
                .set("client.id", username)
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", username)
                .set("sasl.password", password);
        }
        if self.security_protocol.uses_tls()
            && let Some(ca) = &self.ca_file
        {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(protocol: SecurityProtocol) -> KafkaConnection {
        KafkaConnection {
            bootstrap_servers: "broker:9093".into(),
            security_protocol: protocol,
            username: None,
            password_file: None,
            ca_file: Some("/etc/kafka/ca.crt".into()),
        }
    }

    #[test]
    fn plaintext_needs_no_credentials_and_sets_no_tls() {
        let config = connection(SecurityProtocol::Plaintext)
            .client_config()
            .unwrap();
        assert_eq!(config.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(config.get("ssl.ca.location"), None);
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn sasl_without_a_username_is_refused_with_the_reason() {
        let err = connection(SecurityProtocol::SaslSsl)
            .client_config()
            .unwrap_err();
        assert_eq!(err.to_string(), "SASL_SSL needs a SASL username");
    }

    #[test]
    fn sasl_ssl_reads_the_password_from_its_file() {
        let dir = std::env::temp_dir().join(format!("psk-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut conn = connection(SecurityProtocol::SaslSsl);
        conn.username = Some("orders".into());
        conn.password_file = Some(file.clone());
        let config = conn.client_config().unwrap();
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(
            config.get("client.id"),
            Some("orders"),
            "group members name their user"
        );
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/kafka/ca.crt"));
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            conn.client_config(),
            Err(ConfigError::EmptyPassword(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Everything one worker process needs, as the controller renders it into the worker's
/// ConfigMap (`worker.json`) and the worker reads it back. Paths refer to files mounted in the
/// pod (credentials, CA, database URL), never to secret values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfig {
    /// The consumer's own principal.
    pub kafka: KafkaConnection,
    pub source_topic: String,
    pub group_id: String,
    pub dead_letter_topic: String,
    pub retry: RetryPolicy,
    pub handler: HandlerConfig,
    /// Port of /metrics, /healthz and /readyz.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Seconds to finish in-flight records after SIGTERM (below the pod's grace period).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
    /// How long the group waits for a silent member (a killed pod) before moving its
    /// partitions, under the classic protocol.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u64,
    /// The group protocol to join with (the session timeout applies to Classic only).
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// Records of one partition processed at once, across different keys; records of one key
    /// are always processed one at a time, in order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The retry topics, in order of attempts (mode RetryTopics only): a record that failed
    /// n times waits in the n-th (or the last) for its backoff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_topics: Vec<RetryTopic>,
    /// Trace export; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

/// Where the worker sends its spans (OpenTelemetry, OTLP over HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://otel-collector.monitoring:4318`
    /// (`/v1/traces` is appended).
    pub otlp_endpoint: String,
}

/// A delay topic of mode RetryTopics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryTopic {
    pub name: String,
    /// The backoff of the attempts it holds (before jitter).
    pub delay_ms: u64,
}

/// Default records in flight per partition.
/// Most orders one `POST /orders` may carry as a JSON array (the gateway's default and limit,
/// and the OrderGateway's `limits.maxOrdersPerRequest` bound).
pub const MAX_ORDERS_PER_REQUEST: usize = 1000;

pub const DEFAULT_CONCURRENCY: usize = 8;

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

fn default_session_timeout() -> u64 {
    30_000
}

fn default_http_port() -> u16 {
    9090
}

fn default_shutdown_grace() -> u64 {
    25
}

/// How failures are retried and when a record goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt; a record is attempted at most `maxRetries + 1` times.
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub multiplier: f64,
    pub max_backoff_ms: u64,
    /// Each delay is spread uniformly by +/- this fraction.
    pub jitter: f64,
    /// Error classes that go to the dead-letter topic without retries.
    pub permanent_errors: Vec<ErrorClass>,
    pub mode: RetryMode,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff_ms: 1000,
            multiplier: 2.0,
            max_backoff_ms: 30_000,
            jitter: 0.2,
            permanent_errors: ErrorClass::DEFAULT_PERMANENT.to_vec(),
            mode: RetryMode::Blocking,
        }
    }
}

/// Why handling a record failed; the dead-letter header `x-dlq-error-class` carries it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ErrorClass {
    /// The record is not a decodable message (bad JSON, invalid UTF-8, unknown content type).
    Deserialization,
    /// The message decodes but breaks the order contract (missing or invalid fields, too big).
    Validation,
    /// The handler refused the record (an HTTP handler's 4xx answer).
    Rejected,
    /// The event store already holds a different event with the record's order_id: not a
    /// redelivery (that is a no-op), so never dropped.
    Conflict,
    /// The handler failed in a way that may pass on retry (HTTP 5xx, a timeout, a database
    /// error other than an outage).
    Transient,
}

impl ErrorClass {
    /// Permanent unless a policy says otherwise.
    pub const DEFAULT_PERMANENT: [ErrorClass; 4] = [
        ErrorClass::Deserialization,
        ErrorClass::Validation,
        ErrorClass::Rejected,
        ErrorClass::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deserialization => "Deserialization",
            Self::Validation => "Validation",
            Self::Rejected => "Rejected",
            Self::Conflict => "Conflict",
            Self::Transient => "Transient",
        }
    }
}

/// An error class name that is none of the five (as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error class {0:?} (Deserialization, Validation, Rejected, Conflict, Transient)")]
pub struct UnknownErrorClass(pub String);

impl std::str::FromStr for ErrorClass {
    type Err = UnknownErrorClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Deserialization,
            Self::Validation,
            Self::Rejected,
            Self::Conflict,
            Self::Transient,
        ]
        .into_iter()
        .find(|c| c.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| UnknownErrorClass(s.to_owned()))
    }
}

/// Where a failed record waits for its next attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetryMode {
    /// Retry in place: the record's key waits (the whole partition with concurrency 1);
    /// per-key order is kept.
    #[default]
    Blocking,
    /// Retry through delay topics: the partition moves on, the key's later records wait.
    RetryTopics,
}

/// The consumer group protocol the workers speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GroupProtocol {
    /// Kafka's consumer group protocol (KIP-848, Kafka 4.0 and later): the broker assigns
    /// partitions and moves only those that change owner, so a scale event pauses just the
    /// partitions that move. The session timeout is the broker's
    /// (`group.consumer.session.timeout.ms`, 45 s by default). A broker that refuses it makes
    /// the worker fall back to Classic.
    #[default]
    Consumer,
    /// The classic rebalance protocol: every member gives up all its partitions at each
    /// rebalance (range assignor), with the worker's own session timeout.
    Classic,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumer => "consumer",
            Self::Classic => "classic",
        }
    }
}

/// What the worker does with each record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HandlerConfig {
    /// Persist orders in PostgreSQL, idempotently on `order_id`.
    EventStore {
        /// File holding the PostgreSQL connection URL (a mounted Secret key).
        database_url_file: PathBuf,
    },
    /// POST each record to a URL: 2xx done, 4xx rejected, 5xx or timeout retried.
    Http { url: String, timeout_ms: u64 },
    /// Accept every valid record and do nothing (benchmarks).
    Noop,
}

impl WorkerConfig {
    /// The canonical JSON the controller writes and hashes (stable key order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("worker config serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
