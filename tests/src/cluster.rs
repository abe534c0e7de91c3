//! The product as a cluster admin installs it, on the stack's real node: the images `make images`
//! built (imported into the node's containerd), the Kafka connection Secrets the README asks
//! for, and `helm install` of `charts/pubsubkafka`. The operator then runs as a pod under the
//! chart's RBAC, and its workers as pods of the Deployments it owns.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::{StackInfo, eventually, node, tools};

/// The chart in this repository.
pub fn chart_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/pubsubkafka"
    ))
}

/// Panics, saying how to get them, unless the node holds the product's images.
pub fn require_images(stack: &StackInfo) {
    let node = stack
        .node
        .as_ref()
        .expect("the stack has a Kubernetes node");
    for name in ["controller", "worker"] {
        let image = node::product_image(name);
        assert!(
            node.images.contains(&image),
            "the node has no {image}: run `make images` before starting the stack (make test \
             does); images found: {:?}",
            node.images
        );
    }
}

/// A Helm release of the chart.
#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub namespace: String,
}

/// `helm` with the stack's admin kubeconfig.
pub fn helm(stack: &StackInfo) -> Command {
    let mut cmd = Command::new(tools::helm().unwrap_or_else(|e| panic!("{e}")));
    cmd.env("KUBECONFIG", &stack.kube.kubeconfig)
        .env("HELM_CACHE_HOME", stack.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", stack.dir.join("helm/config"))
        .env("HELM_DATA_HOME", stack.dir.join("helm/data"));
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The Secrets the chart reads its Kafka connection from, in `namespace`: the operator's SCRAM
/// user (the stack's `admin`) and the brokers' CA.
pub fn create_kafka_secrets(stack: &StackInfo, namespace: &str) -> Result<(), String> {
    let kafka = &stack.kafka;
    let kubectl = |args: &[&str]| {
        let mut cmd = stack.kube.kubectl();
        cmd.args(args).args(["-n", namespace]);
        run(cmd, "kubectl create secret").map(drop)
    };
    kubectl(&[
        "create",
        "secret",
        "generic",
        "pubsubkafka-kafka-admin",
        &format!("--from-literal=username={}", kafka.admin.username),
        &format!(
            "--from-file=password={}",
            kafka.admin_password_file.display()
        ),
    ])?;
    kubectl(&[
        "create",
        "secret",
        "generic",
        "pubsubkafka-kafka-ca",
        &format!("--from-file=ca.crt={}", kafka.ca_file.display()),
    ])
}

/// Installs the chart as release `name` in `namespace` (created if missing), with the Kafka
/// Secrets and the node's Kafka address, waiting (`--wait`) until the operator is Ready. `set`
/// adds `--set` values.
pub fn install(stack: &StackInfo, namespace: &str, name: &str, set: &[&str]) -> Release {
    require_images(stack);
    try_install(stack, namespace, name, set).unwrap_or_else(|e| panic!("{e}"))
}

/// [`install`], with its failure (and what the namespace shows) as the error.
pub fn try_install(
    stack: &StackInfo,
    namespace: &str,
    name: &str,
    set: &[&str],
) -> Result<Release, String> {
    let bootstrap = stack
        .kafka
        .node_bootstrap
        .clone()
        .ok_or("the stack's Kafka does not listen for pods")?;
    let mut create = stack.kube.kubectl();
    create.args(["create", "namespace", namespace]);
    let _ = run(create, "kubectl create namespace");
    create_kafka_secrets(stack, namespace)?;
    let mut cmd = helm(stack);
    cmd.args(["install", name])
        .arg(chart_dir())
        .args(["--namespace", namespace, "--wait", "--timeout", "180s"])
        .args(["--set", &format!("kafka.bootstrapServers={bootstrap}")])
        .args(["--set", "resyncInterval=20s", "--set", "logFormat=text"]);
    for value in set {
        cmd.args(["--set", value]);
    }
    if let Err(e) = run(cmd, "helm install") {
        return Err(format!("{e}\n{}", describe_namespace(stack, namespace)));
    }
    Ok(Release {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    })
}

impl Release {
    /// `helm uninstall`, waiting for its resources (and hooks) to finish.
    pub fn uninstall(&self, stack: &StackInfo) -> Result<String, String> {
        let mut cmd = helm(stack);
        cmd.args(["uninstall", &self.name, "--namespace", &self.namespace])
            .args(["--wait", "--timeout", "180s"]);
        run(cmd, "helm uninstall")
    }

    /// The operator's pods (by the chart's selector labels).
    pub fn operator_selector(&self) -> String {
        format!(
            "app.kubernetes.io/name=pubsubkafka-controller,app.kubernetes.io/instance={}",
            self.name
        )
    }
}

/// What a person would look at when an install hangs: pods, events, the operator's log.
pub fn describe_namespace(stack: &StackInfo, namespace: &str) -> String {
    let mut text = String::new();
    for args in [
        vec!["get", "pods,deployments", "-o", "wide"],
        vec!["get", "events", "--sort-by=.lastTimestamp"],
        vec![
            "logs",
            "-l",
            "app.kubernetes.io/name=pubsubkafka-controller",
            "--tail=60",
        ],
    ] {
        let mut cmd = stack.kube.kubectl();
        cmd.args(&args).args(["-n", namespace]);
        text.push_str(&format!("--- kubectl {}\n", args.join(" ")));
        text.push_str(&run(cmd, "kubectl").unwrap_or_else(|e| e));
    }
    text
}

/// True when the pod's `Ready` condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until exactly `count` pods match `selector` in `namespace`, none terminating, all
/// Running and Ready; returns them.
pub async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("{count} Ready pods matching {selector} in {namespace}"),
        timeout,
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?;
            let summary: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    format!(
                        "{} {} ready={} deleting={}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .unwrap_or("?"),
                        pod_ready(p),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect();
            let settled = list.items.len() == count
                && list.items.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && pod_ready(p)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            if settled {
                Ok(list.items)
            } else {
                Err(format!("{summary:?}"))
            }
        },
    )
    .await
}
