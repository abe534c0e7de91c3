//! A real Kubernetes control plane for tests: etcd and kube-apiserver built from the Go module
//! proxy, with RBAC authorization.
//!
//! Two shapes. [`KubeMode::Node`] is the API server of the stack's real node (`crate::node`): it
//! listens on the node's address, where pods reach it through the `kubernetes` Service, with
//! the ServiceAccount admission plugin and Node authorization on. [`KubeMode::ApiOnly`] is an
//! API server alone on loopback, as controller-runtime's envtest runs it, for tests that stop
//! and restart their own API server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::pki::{self, Ca};
use crate::process::{Lifetime, Proc, wait_until};
use crate::{Error, free_port, tools};

/// How to reach a running API server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeInfo {
    /// An admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    pub server: String,
    pub kubectl: PathBuf,
}

impl KubeInfo {
    /// A `kube::Client` built from the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `kubectl <args>` with `stdin` as its input: Ok(stdout) or Err(stderr).
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing to kubectl");
        let out = child.wait_with_output().expect("kubectl finishes");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Deletes namespace `ns` without waiting. When the calling thread is panicking (a failed
    /// test), first prints what happened in it: its pods, its events, and every container's
    /// log (the previous run's too), which go with the namespace otherwise.
    pub fn drop_namespace(&self, ns: &str) {
        if std::thread::panicking() {
            eprintln!("{}", self.namespace_report(ns));
        }
        let _ = self.kubectl_with_stdin(&["delete", "namespace", ns, "--wait=false"], "");
    }

    /// Pods, events and container logs of namespace `ns`, as text.
    pub fn namespace_report(&self, ns: &str) -> String {
        let run = |args: &[&str]| match self.kubectl_with_stdin(args, "") {
            Ok(out) => out,
            Err(err) => format!("(kubectl {}: {})\n", args.join(" "), err.trim()),
        };
        let mut report = format!("==== namespace {ns} at the failure ====\n");
        report += &run(&["get", "pods", "-n", ns, "-o", "wide"]);
        report += &run(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]);
        let pods = run(&["get", "pods", "-n", ns, "-o", "name"]);
        for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
            for previous in ["--previous=true", "--previous=false"] {
                let log = self.kubectl_with_stdin(
                    &[
                        "logs",
                        "-n",
                        ns,
                        pod,
                        "--all-containers",
                        "--tail=300",
                        previous,
                    ],
                    "",
                );
                if let Some(log) = log.ok().filter(|l| !l.is_empty()) {
                    report += &format!("---- {pod} {previous} ----\n{log}");
                }
            }
        }
        report
    }
}

/// A `kube::Client` from a kubeconfig file, as a user's tool would build it.
/// The API server's `apiserver_request_total`, summed by `verb resource/subresource` (such as
/// `PATCH orderconsumers/status`): what every client asked of it since it started.
pub async fn request_counts(client: &kube::Client) -> std::collections::BTreeMap<String, f64> {
    let text = client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("the API server's metrics");
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *counts.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// The counts that grew from `before` to `after`, largest first.
pub fn request_increase(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut grown: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    grown
}

/// Requests the API server makes of itself (its endpoint and lease reconcilers, OpenAPI
/// aggregation) or that are not API calls (the metrics scrapes): no client's.
pub fn api_server_own(key: &str) -> bool {
    let resource = key.split_whitespace().nth(1).unwrap_or_default();
    resource.starts_with('/')
        || ["endpoints", "endpointslices", "leases"]
            .iter()
            .any(|r| resource.split('/').next() == Some(*r))
}

/// A write verb of `apiserver_request_total` (`verb resource...` keys).
pub fn is_write(key: &str) -> bool {
    matches!(
        key.split_whitespace().next(),
        Some(
            "POST"
                | "PUT"
                | "PATCH"
                | "DELETE"
                | "DELETECOLLECTION"
                | "CREATE"
                | "UPDATE"
                | "APPLY"
        )
    )
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::Kube(format!("reading {}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| Error::Kube(format!("loading {}: {e}", path.display())))?;
    kube::Client::try_from(config).map_err(|e| Error::Kube(format!("building a client: {e}")))
}

/// Which API server to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeMode {
    /// On loopback, with no node: objects are stored and validated, nothing runs them.
    ApiOnly,
    /// On the node's address, ready for a kubelet and pods (see `crate::node`).
    Node,
}

/// The certificate authorities and keys of a control plane, for the node's components.
#[derive(Debug, Clone)]
pub struct KubePki {
    /// Signs the API server's and the kubelet's serving certificates; pods trust it.
    pub serving_ca: Ca,
    /// Signs client certificates (the admin, the node's components).
    pub client_ca: Ca,
    /// Signs and verifies service-account tokens.
    pub service_account: pki::Pair,
}

/// etcd and kube-apiserver owned by this value (or detached).
#[derive(Debug)]
pub struct KubeApi {
    pub info: KubeInfo,
    pub pki: KubePki,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    apiserver_cmd: Vec<String>,
    apiserver_log: PathBuf,
    lifetime: Lifetime,
}

const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl KubeApi {
    /// An API server alone on loopback.
    pub fn start(dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        Self::start_as(dir, lifetime, KubeMode::ApiOnly)
    }

    pub fn start_as(dir: &Path, lifetime: Lifetime, mode: KubeMode) -> Result<Self, Error> {
        let etcd_bin = tools::etcd()?;
        let apiserver_bin = tools::kube_apiserver()?;
        let kubectl = tools::kubectl()?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| Error::io("creating the pki dir", e))?;

        let serving_ca = Ca::create(&pki_dir, "serving-ca")?;
        let node_ip = format!("IP:{}", crate::node::NODE_IP);
        let serving = serving_ca.issue(
            &pki_dir,
            "apiserver",
            "/CN=kube-apiserver",
            &[
                "IP:127.0.0.1",
                &node_ip,
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                "IP:10.0.0.1",
            ],
        )?;
        let client_ca = Ca::create(&pki_dir, "client-ca")?;
        let admin = client_ca.issue(&pki_dir, "admin", "/CN=admin/O=system:masters", &[])?;
        let sa = pki::rsa_key_pair(&pki_dir, "service-account")?;

        let etcd_port = free_port()?;
        let etcd_dir = dir.join("etcd");
        let etcd_log = dir.join("etcd.log");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut cmd = Command::new(&etcd_bin);
        cmd.arg(format!("--data-dir={}", etcd_dir.display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg("--listen-peer-urls=http://127.0.0.1:0")
            .arg("--unsafe-no-fsync")
            .arg("--quota-backend-bytes=8589934592")
            .arg("--log-level=warn");
        let mut etcd = Proc::spawn("etcd", cmd, &etcd_log, lifetime, None)?;
        wait_until(&mut etcd, "etcd's client port", READY_TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_port))
                .map(drop)
                .map_err(|e| e.to_string())
        })?;

        let port = free_port()?;
        let address = match mode {
            KubeMode::ApiOnly => "127.0.0.1",
            KubeMode::Node => crate::node::NODE_IP,
        };
        let server = format!("https://{address}:{port}");
        let cert_dir = dir.join("apiserver");
        std::fs::create_dir_all(&cert_dir)
            .map_err(|e| Error::io("creating the apiserver dir", e))?;
        let p = |path: &Path| path.display().to_string();
        let mut apiserver_cmd = vec![
            p(&apiserver_bin),
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--tls-cert-file={}", p(&serving.cert)),
            format!("--tls-private-key-file={}", p(&serving.key)),
            format!("--client-ca-file={}", p(&client_ca.cert)),
            format!("--secure-port={port}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--service-cluster-ip-range={}", crate::node::SERVICE_SUBNET),
            "--allow-privileged=true".into(),
            format!("--service-account-key-file={}", p(&sa.cert)),
            format!("--service-account-signing-key-file={}", p(&sa.key)),
            "--api-audiences=https://kubernetes.default.svc".into(),
            "--enable-priority-and-fairness=false".into(),
            "--watch-cache=true".into(),
            "--v=1".into(),
        ];
        match mode {
            KubeMode::ApiOnly => apiserver_cmd.extend([
                "--disable-admission-plugins=ServiceAccount".into(),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer={server}/"),
            ]),
            KubeMode::Node => {
                // The API server's client identity towards kubelets (logs, exec, port-forward).
                let kubelet_client = client_ca.issue(
                    &pki_dir,
                    "apiserver-kubelet-client",
                    "/CN=kube-apiserver-kubelet-client/O=system:masters",
                    &[],
                )?;
                apiserver_cmd.extend([
                    "--enable-admission-plugins=NodeRestriction".into(),
                    "--authorization-mode=Node,RBAC".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--kubelet-client-certificate={}", p(&kubelet_client.cert)),
                    format!("--kubelet-client-key={}", p(&kubelet_client.key)),
                    format!("--kubelet-certificate-authority={}", p(&serving_ca.cert)),
                    "--kubelet-preferred-address-types=InternalIP".into(),
                ]);
            }
        }

        let kubeconfig = dir.join("kubeconfig");
        let b64 = |path: &Path| -> Result<String, Error> {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let kubeconfig_text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: pubsubkafka-local\n  cluster:\n    \
             server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  \
             user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n- name: pubsubkafka-local\n  context:\n    cluster: pubsubkafka-local\n    \
             user: admin\n    namespace: default\ncurrent-context: pubsubkafka-local\n",
            ca = b64(&serving_ca.cert)?,
            cert = b64(&admin.cert)?,
            key = b64(&admin.key)?,
        );
        crate::write_private(&kubeconfig, &kubeconfig_text)?;

        let mut api = Self {
            info: KubeInfo {
                kubeconfig,
                server,
                kubectl,
            },
            pki: KubePki {
                serving_ca: serving_ca.clone(),
                client_ca: client_ca.clone(),
                service_account: sa.clone(),
            },
            etcd: Some(etcd),
            apiserver: None,
            apiserver_cmd,
            apiserver_log: dir.join("kube-apiserver.log"),
            lifetime,
        };
        api.start_apiserver()?;
        api.wait_ready()?;
        Ok(api)
    }

    fn start_apiserver(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(&self.apiserver_cmd[0]);
        cmd.args(&self.apiserver_cmd[1..]);
        self.apiserver = Some(Proc::spawn(
            "kube-apiserver",
            cmd,
            &self.apiserver_log,
            self.lifetime,
            None,
        )?);
        Ok(())
    }

    /// Waits for `/readyz`, asked with the admin kubeconfig through kubectl.
    pub fn wait_ready(&mut self) -> Result<(), Error> {
        let info = self.info.clone();
        let Some(apiserver) = self.apiserver.as_mut() else {
            return Ok(());
        };
        wait_until(apiserver, "GET /readyz", READY_TIMEOUT, || {
            let out = info
                .kubectl()
                .args(["get", "--raw=/readyz", "--request-timeout=5s"])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        })
    }

    /// Stops the API server (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// Starts the API server again and waits for it.
    pub fn restart_apiserver(&mut self) -> Result<(), Error> {
        if self.apiserver.is_none() {
            self.start_apiserver()?;
        }
        self.wait_ready()
    }

    /// Gives up ownership of the processes (for `stack up`), returning their pids.
    pub fn detach(mut self) -> Vec<u32> {
        // The API server first, so `stack down` stops it before etcd.
        [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
            .map(Proc::detach)
            .collect()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // The API server before its storage.
        self.stop_apiserver();
        if let Some(mut p) = self.etcd.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}
