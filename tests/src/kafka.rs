//! Apache Kafka in KRaft mode, from the jars in the tool cache: one combined broker/controller
//! node for most tests, three for failure tests.
//!
//! Every node has three listeners on loopback: `CONTROLLER` (PLAINTEXT, KRaft quorum),
//! `PLAINTEXT` (tests that do not exercise security) and `SASL_SSL` (SCRAM-SHA-512 over TLS with
//! a CA made per stack). The stack's cluster has a fourth, `NODE`, SASL_SSL as well, on the
//! local Kubernetes node's address, where pods reach it as they would a managed Kafka. The StandardAuthorizer denies whatever no ACL allows; `admin` is a super
//! user, `guest` has no ACLs at all and exists so tests can prove that denial.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

use crate::pki::Ca;
use crate::process::{Lifetime, Proc, wait_until};
use crate::{Error, free_port, random_token, tools, write_private};

/// A SCRAM-SHA-512 user known to the cluster.
#[derive(Clone, Serialize, Deserialize)]
pub struct ScramUser {
    pub username: String,
    pub password: String,
}

/// Never prints the password (a panic message or a log line may show a `StackInfo`).
impl std::fmt::Debug for ScramUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where a running cluster is and how to log in to it; what tests and `stack up` hand around.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaInfo {
    /// PLAINTEXT bootstrap servers (no authentication, no authorization for tests of behaviour).
    pub bootstrap: String,
    /// SASL_SSL bootstrap servers (SCRAM-SHA-512, the authorizer applies).
    pub sasl_bootstrap: String,
    /// The CA that signed the brokers' certificates.
    pub ca_file: PathBuf,
    /// A super user.
    pub admin: ScramUser,
    /// A user with no ACLs.
    pub guest: ScramUser,
    /// librdkafka client properties for `admin` over SASL_SSL (mode 0600).
    pub admin_properties: PathBuf,
    /// `admin`'s password alone, as a mounted Secret key would hold it (mode 0600).
    pub admin_password_file: PathBuf,
    pub nodes: usize,
    /// SASL_SSL bootstrap servers on the Kubernetes node's address, for pods (the stack's
    /// cluster only).
    #[serde(default)]
    pub node_bootstrap: Option<String>,
}

impl KafkaInfo {
    /// A client configuration for the PLAINTEXT listener.
    pub fn plaintext_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// A client configuration for the SASL_SSL listener as `user`.
    pub fn sasl_config(&self, username: &str, password: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.sasl_bootstrap)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", username)
            .set("sasl.password", password)
            .set("ssl.ca.location", self.ca_file.to_string_lossy())
            // Certificates name 127.0.0.1 and localhost; check them.
            .set("ssl.endpoint.identification.algorithm", "https");
        config
    }

    pub fn admin_config(&self) -> ClientConfig {
        self.sasl_config(&self.admin.username, &self.admin.password)
    }

    /// Produces one record to `topic` as SASL user `user`: `Ok` once the broker acknowledged
    /// it, the client's error otherwise (authorization tests look for
    /// `TopicAuthorizationFailed`).
    pub async fn produce_as(
        &self,
        user: &str,
        password: &str,
        topic: &str,
    ) -> Result<(), rdkafka::error::KafkaError> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self
            .sasl_config(user, password)
            .set("message.timeout.ms", "8000")
            .create()?;
        producer
            .send(
                FutureRecord::to(topic).key("k").payload("v"),
                Duration::from_secs(10),
            )
            .await
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// The operator's Kafka adapter, connected as `admin`.
    pub fn kafka_admin(&self) -> pubsubkafka_controller::kafka::KafkaAdmin {
        let config = self
            .admin_connection()
            .client_config()
            .expect("the admin's connection settings");
        pubsubkafka_controller::kafka::KafkaAdmin::new(&config, std::time::Duration::from_secs(10))
            .expect("an admin client")
    }

    /// The operator's connection settings: `admin` over SASL_SSL.
    pub fn admin_connection(&self) -> pubsubkafka_worker::config::KafkaConnection {
        pubsubkafka_worker::config::KafkaConnection {
            bootstrap_servers: self.sasl_bootstrap.clone(),
            security_protocol: pubsubkafka_worker::config::SecurityProtocol::SaslSsl,
            username: Some(self.admin.username.clone()),
            password_file: Some(self.admin_password_file.clone()),
            ca_file: Some(self.ca_file.clone()),
        }
    }
}

#[derive(Debug)]
struct Node {
    id: usize,
    dir: PathBuf,
    properties: PathBuf,
    log: PathBuf,
    proc_: Option<Proc>,
}

/// A Kafka cluster whose processes this value owns (or has detached).
#[derive(Debug)]
pub struct Kafka {
    pub info: KafkaInfo,
    nodes: Vec<Node>,
    lifetime: Lifetime,
}

const READY_TIMEOUT: Duration = Duration::from_secs(90);

impl Kafka {
    /// Formats and starts a cluster of `nodes` (1 or 3) combined nodes under `dir`.
    pub fn start(dir: &Path, nodes: usize, lifetime: Lifetime) -> Result<Self, Error> {
        Self::start_with(dir, nodes, lifetime, false)
    }

    /// As [`Kafka::start`]; with `for_pods`, each node also listens on the Kubernetes node's
    /// address (the bridge must exist).
    pub fn start_with(
        dir: &Path,
        nodes: usize,
        lifetime: Lifetime,
        for_pods: bool,
    ) -> Result<Self, Error> {
        Self::start_configured(dir, nodes, lifetime, for_pods, "")
    }

    /// As [`Kafka::start_with`], with `extra` appended to every node's server.properties (a
    /// later line wins over the stack's own).
    pub fn start_configured(
        dir: &Path,
        nodes: usize,
        lifetime: Lifetime,
        for_pods: bool,
        extra: &str,
    ) -> Result<Self, Error> {
        assert!(nodes >= 1, "a cluster needs a node");
        let lib = tools::kafka_lib()?;
        let java = tools::java()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the Kafka dir", e))?;

        let ca = Ca::create(dir, "kafka-ca")?;
        let server = ca.issue(
            dir,
            "kafka-server",
            "/CN=localhost",
            &[
                "IP:127.0.0.1",
                "DNS:localhost",
                &format!("IP:{}", crate::node::NODE_IP),
            ],
        )?;
        // Kafka's PEM key store reads the key and its chain from one file.
        let keystore = dir.join("kafka-server.pem");
        let pem = [
            std::fs::read_to_string(&server.key),
            std::fs::read_to_string(&server.cert),
            std::fs::read_to_string(&ca.cert),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io("reading the Kafka server certificate", e))?
        .concat();
        write_private(&keystore, &pem)?;

        let admin = ScramUser {
            username: "admin".into(),
            password: random_token(24),
        };
        let guest = ScramUser {
            username: "guest".into(),
            password: random_token(24),
        };

        let ports: Vec<[u16; 4]> = (0..nodes)
            .map(|_| Ok([free_port()?, free_port()?, free_port()?, free_port()?]))
            .collect::<Result<_, Error>>()?;
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, [controller, ..])| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let log4j = dir.join("log4j2.properties");
        std::fs::write(&log4j, LOG4J2).map_err(|e| Error::io("writing log4j2.properties", e))?;

        let cluster_id = cluster_id();
        let internal_rf = nodes.min(3);
        let min_isr = if nodes >= 3 { 2 } else { 1 };
        let mut cluster_nodes = Vec::new();
        for (i, [controller, plain, sasl, node_port]) in ports.iter().enumerate() {
            let id = i + 1;
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(node_dir.join("data"))
                .map_err(|e| Error::io("creating a Kafka node dir", e))?;
            let properties = node_dir.join("server.properties");
            let text = format!(
                include_str!("kafka-server.properties.in"),
                node_id = id,
                voters = voters,
                controller = controller,
                plain = plain,
                sasl = sasl,
                node_listener = if for_pods {
                    format!(",NODE://{}:{node_port}", crate::node::NODE_IP)
                } else {
                    String::new()
                },
                node_advertised = if for_pods {
                    format!(",NODE://{}:{node_port}", crate::node::NODE_IP)
                } else {
                    String::new()
                },
                data = node_dir.join("data").display(),
                keystore = keystore.display(),
                internal_rf = internal_rf,
                min_isr = min_isr,
            );
            std::fs::write(&properties, text + extra)
                .map_err(|e| Error::io("writing server.properties", e))?;
            let log = node_dir.join("kafka.log");
            format_storage(
                &java,
                &lib,
                &properties,
                &cluster_id,
                &[&admin, &guest],
                &log,
            )?;
            cluster_nodes.push(Node {
                id,
                dir: node_dir,
                properties,
                log,
                proc_: None,
            });
        }

        let bootstrap = ports
            .iter()
            .map(|[_, plain, ..]| format!("127.0.0.1:{plain}"))
            .collect::<Vec<_>>()
            .join(",");
        let sasl_bootstrap = ports
            .iter()
            .map(|[_, _, sasl, _]| format!("localhost:{sasl}"))
            .collect::<Vec<_>>()
            .join(",");
        let node_bootstrap = for_pods.then(|| {
            ports
                .iter()
                .map(|[.., node_port]| format!("{}:{node_port}", crate::node::NODE_IP))
                .collect::<Vec<_>>()
                .join(",")
        });
        let admin_properties = dir.join("admin.properties");
        write_private(
            &admin_properties,
            &format!(
                "bootstrap.servers={sasl_bootstrap}\nsecurity.protocol=SASL_SSL\n\
                 sasl.mechanisms=SCRAM-SHA-512\nsasl.username={}\nsasl.password={}\n\
                 ssl.ca.location={}\n",
                admin.username,
                admin.password,
                ca.cert.display()
            ),
        )?;

        let admin_password_file = dir.join("admin.password");
        write_private(&admin_password_file, &admin.password)?;

        let mut kafka = Self {
            info: KafkaInfo {
                bootstrap,
                sasl_bootstrap,
                ca_file: ca.cert,
                admin,
                guest,
                admin_properties,
                admin_password_file,
                nodes,
                node_bootstrap,
            },
            nodes: cluster_nodes,
            lifetime,
        };
        for i in 0..nodes {
            kafka.spawn_node(i, &java, &lib, &log4j)?;
        }
        kafka.wait_ready()?;
        Ok(kafka)
    }

    fn spawn_node(
        &mut self,
        index: usize,
        java: &Path,
        lib: &Path,
        log4j: &Path,
    ) -> Result<(), Error> {
        let node = &mut self.nodes[index];
        let mut cmd = Command::new(java);
        cmd.args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg(format!("-Dkafka.logs.dir={}", node.dir.display()))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("kafka.Kafka")
        .arg(&node.properties)
        .current_dir(&node.dir);
        let name = format!("kafka node {}", node.id);
        node.proc_ = Some(Proc::spawn(&name, cmd, &node.log, self.lifetime, None)?);
        Ok(())
    }

    /// Waits until every running node answers a metadata request on both client listeners.
    pub fn wait_ready(&mut self) -> Result<(), Error> {
        let expected = self.nodes.iter().filter(|n| n.proc_.is_some()).count();
        let plain = self.info.plaintext_config();
        let sasl = self.info.admin_config();
        let Some(first) = self.nodes.iter_mut().find_map(|n| n.proc_.as_mut()) else {
            return Ok(());
        };
        wait_until(
            first,
            "a metadata request listing every broker",
            READY_TIMEOUT,
            || {
                for (listener, config) in [("PLAINTEXT", &plain), ("SASL_SSL", &sasl)] {
                    let brokers =
                        metadata_brokers(config).map_err(|e| format!("{listener}: {e}"))?;
                    if brokers < expected {
                        return Err(format!(
                            "{listener}: {brokers} of {expected} brokers registered"
                        ));
                    }
                }
                Ok(())
            },
        )?;
        for node in self.nodes.iter_mut() {
            if let Some(p) = node.proc_.as_mut() {
                p.check_alive()?;
            }
        }
        Ok(())
    }

    /// Stops node `index` (0-based) cleanly.
    pub fn stop_node(&mut self, index: usize) {
        if let Some(mut p) = self.nodes[index].proc_.take() {
            p.stop(Duration::from_secs(30));
        }
    }

    /// SIGKILLs node `index`, as a crash would.
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut p) = self.nodes[index].proc_.take() {
            p.kill();
        }
    }

    /// Starts node `index` again with its data; does not wait.
    pub fn start_node(&mut self, index: usize) -> Result<(), Error> {
        if self.nodes[index].proc_.is_some() {
            return Ok(());
        }
        let lib = tools::kafka_lib()?;
        let java = tools::java()?;
        let log4j = self.nodes[index]
            .dir
            .parent()
            .expect("node dirs sit in the cluster dir")
            .join("log4j2.properties");
        self.spawn_node(index, &java, &lib, &log4j)
    }

    /// Stops every node.
    pub fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }

    /// Starts every stopped node and waits for the cluster.
    pub fn restart(&mut self) -> Result<(), Error> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        self.wait_ready()
    }

    /// Gives up ownership of the processes (for `stack up`), returning their pids.
    pub fn detach(mut self) -> Vec<u32> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.proc_.take())
            .map(Proc::detach)
            .collect()
    }
}

fn metadata_brokers(config: &ClientConfig) -> Result<usize, String> {
    let consumer: BaseConsumer = config
        .clone()
        .set("log_level", "0")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    Ok(metadata.brokers().len())
}

fn format_storage(
    java: &Path,
    lib: &Path,
    properties: &Path,
    cluster_id: &str,
    users: &[&ScramUser],
    log: &Path,
) -> Result<(), Error> {
    let mut cmd = Command::new(java);
    cmd.args(["-Xmx256m", "-cp"])
        .arg(format!("{}/*", lib.display()))
        .args([
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
        ])
        .arg(properties);
    for user in users {
        cmd.arg("--add-scram").arg(format!(
            "SCRAM-SHA-512=[name={},password={}]",
            user.username, user.password
        ));
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io("running Kafka's StorageTool", e))?;
    // The command line carries passwords: keep only the tool's own output.
    let _ = std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat());
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Component {
            component: "kafka storage format".into(),
            reason: format!("StorageTool exited with {}", out.status),
            log_tail: String::from_utf8_lossy(&[&out.stdout[..], &out.stderr[..]].concat())
                .into_owned(),
        })
    }
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, not starting with '-'
/// (which the storage tool's argument parser would take for a flag).
fn cluster_id() -> String {
    loop {
        let mut bytes = [0u8; 16];
        crate::fill_random(&mut bytes);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

const LOG4J2: &str = "\
status = error
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
";

/// Waits until Kafka no longer knows `user`: no SCRAM credential and no ACL for `User:<user>`.
/// A broker answers both from its metadata image, which follows the controller's commit: while
/// the broker applies a burst of other changes (hundreds of topics created by a test beside
/// this one), a user deleted a moment ago was measured to read as present for up to 1.5 s. A
/// principal still there after 30 s fails the test.
pub async fn principal_gone(admin: &pubsubkafka_controller::kafka::KafkaAdmin, user: &str) {
    let principal = format!("User:{user}");
    crate::eventually(
        &format!("{principal} gone from Kafka"),
        Duration::from_secs(30),
        || async {
            let exists = admin
                .scram_user_exists(user)
                .await
                .map_err(|e| e.to_string())?;
            let acls = admin
                .describe_acls(&pubsubkafka_controller::kafka::AclFilter {
                    principal: Some(principal.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            (!exists && acls.is_empty())
                .then_some(())
                .ok_or(format!("SCRAM user exists: {exists}, ACLs: {acls:?}"))
        },
    )
    .await
}

/// Waits until `topic` shows in Kafka's metadata, and returns it: a topic created a moment ago
/// may not show yet, as [`principal_gone`] explains for deletions. Absent after 30 s fails the
/// test.
pub async fn topic_shown(
    admin: &pubsubkafka_controller::kafka::KafkaAdmin,
    topic: &str,
) -> pubsubkafka_controller::kafka::TopicDescription {
    crate::eventually(
        &format!("topic {topic} in Kafka"),
        Duration::from_secs(30),
        || async {
            admin
                .describe_topic(topic)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "absent".to_owned())
        },
    )
    .await
}

/// Waits until `topic` is gone from Kafka: a deletion shows in the broker's metadata a moment
/// after it returns, as [`principal_gone`] explains. A topic still there after 30 s fails the
/// test.
pub async fn topic_gone(admin: &pubsubkafka_controller::kafka::KafkaAdmin, topic: &str) {
    crate::eventually(
        &format!("topic {topic} gone from Kafka"),
        Duration::from_secs(30),
        || async {
            match admin.describe_topic(topic).await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_password() {
        let user = ScramUser {
            username: "admin".into(),
            password: "hunter2-secret".into(),
        };
        let shown = format!("{user:?}");
        assert!(
            shown.contains("admin") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
