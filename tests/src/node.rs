//! A real single-node Kubernetes around the stack's API server: containerd and runc with a bridge
//! CNI network, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS, built
//! from the Go module proxy and Debian's packages (`make tools`).
//!
//! The node's address is [`NODE_IP`] on a bridge of its own ([`BRIDGE`]): the kubelet refuses a
//! loopback node IP, and the bridge keeps every packet on this machine (pods get no default
//! route; eth0 is never touched). Pods reach the stack's host processes (Kafka, PostgreSQL,
//! Prometheus, Jaeger) at that address, the way a cluster reaches a managed Kafka outside it.
//!
//! The host changes a node makes (the bridge and its route, forwarding on the bridge only,
//! cgroups under [`CGROUP_PARENT`], mounts under the stack directory, kube-proxy's and the
//! kubelet's iptables chains, a few fixed paths of the kubelet and containerd) are undone by
//! [`clean_host`]: at `stack down`, when an owned stack is dropped, by a janitor process when a
//! test process dies, and at the next start if none of those ran. Names are fixed, so one node
//! runs per machine; a second start is refused while the first one's processes live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kube_api::{KubeApi, KubePki};
use crate::process::{self, Lifetime, Proc, wait_until};
use crate::{Error, tools};

/// The node's name in the API.
pub const NODE_NAME: &str = "pubsubkafka-node";
/// The node's address: its kubelet, its API server and the host processes pods talk to.
pub const NODE_IP: &str = "10.88.0.1";
/// The bridge carrying [`NODE_IP`] and the pods' network.
pub const BRIDGE: &str = "psk0";
/// Pod addresses (host-local IPAM on the bridge).
pub const POD_SUBNET: &str = "10.88.0.0/24";
/// ClusterIP Services (the API server's `--service-cluster-ip-range`).
pub const SERVICE_SUBNET: &str = "10.0.0.0/24";
/// The cgroup (in every v1 hierarchy) the kubelet puts pods under.
pub const CGROUP_PARENT: &str = "pubsubkafka";
/// Where the directory of the node running on this machine is recorded.
const CLAIM: &str = "/run/pubsubkafka-node.json";

const KUBELET_PORT: u16 = 20250;
const KUBELET_HEALTHZ_PORT: u16 = 20248;
const PROXY_HEALTHZ_PORT: u16 = 20256;
const PROXY_METRICS_PORT: u16 = 20249;
const CONTROLLER_MANAGER_PORT: u16 = 20257;
const SCHEDULER_PORT: u16 = 20259;
const DNS_READY_PORT: u16 = 20181;
const DNS_HEALTH_PORT: u16 = 20180;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The cgroup v1 hierarchies a pod's cgroups are made in (libcontainer mirrors them in
/// `unified/` on a hybrid host).
const CGROUP_HIERARCHIES: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "systemd",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
    "unified",
];

/// How to reach the node and where its logs are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ip: String,
    /// The node's state: containerd's root, the kubelet's root, CNI, configs.
    pub dir: PathBuf,
    /// One log file per component (`kubelet.log`, `containerd.log`, ...).
    pub logs: PathBuf,
    /// Container logs, as `kubectl logs` reads them.
    pub pod_logs: PathBuf,
    pub containerd_socket: PathBuf,
    /// Cluster DNS (CoreDNS): Services resolve as `<svc>.<namespace>.svc.cluster.local`.
    pub cluster_dns: String,
    /// Images imported into containerd's `k8s.io` namespace at start.
    pub images: Vec<String>,
}

/// The image of pod sandboxes, built from Kubernetes' own `pause.c` by `make tools`.
pub fn pause_image() -> String {
    format!(
        "localhost/pubsubkafka/pause:{}",
        tools::version("KUBERNETES_VERSION")
    )
}

/// Where `make images` writes the product's images (`<name>.tar`, docker archives).
pub fn images_dir() -> PathBuf {
    std::env::var_os("PSK_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"))
}

/// The product image `name` (`controller`, `worker`) as `make images` tags it.
pub fn product_image(name: &str) -> String {
    format!("docker.io/pubsubkafka/{name}:{}", chart_app_version())
}

/// The chart's appVersion, which the chart's default image tags follow.
pub fn chart_app_version() -> String {
    const CHART: &str = include_str!("../../charts/pubsubkafka/Chart.yaml");
    CHART
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("Chart.yaml has an appVersion")
}

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    dir: PathBuf,
    /// Processes whose life means the node is in use: the starter, then the node's components.
    pids: Vec<u32>,
}

/// Takes this machine's node for the stack in `dir`: refuses while another node's processes
/// live, undoes what a dead one left behind, then makes the bridge and the cgroup parent.
pub fn claim_host(dir: &Path) -> Result<(), Error> {
    if let Some(old) = read_claim() {
        if old.dir != dir && old.pids.iter().any(|p| process::pid_alive(*p)) {
            return Err(Error::Component {
                component: "kubernetes node".into(),
                reason: format!(
                    "a node already runs on this machine (stack in {}); one node per machine: \
                     stop it first (`make down`, or `stack down --dir {}`)",
                    old.dir.display(),
                    old.dir.display()
                ),
                log_tail: String::new(),
            });
        }
        clean_host(&old.dir);
    }
    // Leftovers nobody recorded (a claim file lost with /run): same fixed names.
    clean_host(dir);
    write_claim(&Claim {
        dir: dir.to_owned(),
        pids: vec![std::process::id()],
    })?;
    setup_host()
}

/// Starts a janitor that undoes the node's host changes once this process has died: a test
/// binary's stack lives in a static that is never dropped, and containerd's shims and the
/// containers outlive their parent on purpose. The janitor is `stack janitor`, next to the
/// test binaries; without it, the next start cleans up instead.
pub fn watch_owner(dir: &Path) {
    let Some(stack) = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("stack"))
            .find(|candidate| candidate.is_file())
    }) else {
        return;
    };
    let mut cmd = Command::new(stack);
    cmd.arg("janitor")
        .arg("--dir")
        .arg(dir)
        .arg("--pid")
        .arg(std::process::id().to_string());
    let _ = Proc::spawn(
        "node janitor",
        cmd,
        &dir.join("janitor.log"),
        Lifetime::Detached,
        None,
    )
    .map(Proc::detach);
}

/// The janitor's loop: waits for `owner` to exit, then cleans up after the stack in `dir`.
pub fn janitor(dir: &Path, owner: u32) {
    while process::pid_alive(owner) {
        std::thread::sleep(Duration::from_millis(500));
    }
    // The owner's components die with it (parent-death signal); give them a moment.
    std::thread::sleep(Duration::from_secs(1));
    clean_host(dir);
    let _ = std::fs::remove_dir_all(dir);
}

fn read_claim() -> Option<Claim> {
    serde_json::from_str(&std::fs::read_to_string(CLAIM).ok()?).ok()
}

fn write_claim(claim: &Claim) -> Result<(), Error> {
    let text = serde_json::to_string(claim).expect("a claim serializes");
    std::fs::write(CLAIM, text).map_err(|e| Error::io(format!("writing {CLAIM}"), e))
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Component {
            component: "kubernetes node host set-up".into(),
            reason: format!("`{program} {}` failed with {}", args.join(" "), out.status),
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs a clean-up command whose failure only means there was nothing to undo.
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn setup_host() -> Result<(), Error> {
    let address = format!("{NODE_IP}/24");
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &address, "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    // Host processes' traffic to ClusterIPs goes to the bridge, never to eth0's default route,
    // even before kube-proxy has written its rules.
    run("ip", &["route", "replace", SERVICE_SUBNET, "dev", BRIDGE])?;
    // A pod -> ClusterIP -> pod packet leaves the bridge again: forwarding on this bridge only
    // (net.ipv4.ip_forward and every other interface stay as they are; gone with the bridge).
    let forwarding = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding");
    std::fs::write(&forwarding, "1").map_err(|e| Error::io(format!("writing {forwarding}"), e))?;
    for hierarchy in CGROUP_HIERARCHIES {
        let root = Path::new("/sys/fs/cgroup").join(hierarchy);
        if root.is_dir() {
            let _ = std::fs::create_dir_all(root.join(CGROUP_PARENT));
        }
    }
    // A new cpuset cgroup starts with no CPUs and no memory nodes.
    let cpuset = Path::new("/sys/fs/cgroup/cpuset");
    if cpuset.is_dir() {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(cpuset.join(file)) {
                let _ = std::fs::write(cpuset.join(CGROUP_PARENT).join(file), value.trim());
            }
        }
    }
    Ok(())
}

/// Undoes every host change of the node whose stack directory is `dir`, whether its processes
/// stopped cleanly or died: kills its containers and shims, unmounts what the kubelet and
/// containerd mounted, removes its cgroups, iptables chains, bridge and fixed paths. Safe to
/// run twice, and on a machine where nothing ran.
pub fn clean_host(dir: &Path) {
    let node_dir = dir.join("node");
    let socket = node_dir.join("run/containerd.sock");
    let socket_arg = format!("-address {}", socket.display());
    // containerd's shims outlive containerd on purpose; they are ours when their command line
    // names our socket.
    for pid in all_pids() {
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&socket_arg) {
                kill9(pid);
            }
        }
    }
    // Container processes whose shim is gone: whatever still runs in our cgroups.
    for _ in 0..3 {
        let pids = cgroup_pids(&Path::new("/sys/fs/cgroup/pids").join(CGROUP_PARENT));
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            kill9(pid);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // kube-proxy's chains, then those the kubelet makes on its own.
    if let Ok(proxy) = tools::kube_binary("kube-proxy") {
        quietly(&proxy.to_string_lossy(), &["--cleanup"]);
    }
    for ipt in ["iptables", "ip6tables"] {
        quietly(ipt, &["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"]);
        quietly(
            ipt,
            &["-t", "filter", "-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
        );
        quietly(ipt, &["-t", "filter", "-F", "KUBE-FIREWALL"]);
        quietly(ipt, &["-t", "filter", "-X", "KUBE-FIREWALL"]);
        for table in ["mangle", "filter", "nat"] {
            quietly(ipt, &["-t", table, "-F", "KUBE-KUBELET-CANARY"]);
            quietly(ipt, &["-t", table, "-X", "KUBE-KUBELET-CANARY"]);
        }
        quietly(ipt, &["-t", "mangle", "-X", "KUBE-IPTABLES-HINT"]);
    }
    unmount_under(dir);
    for hierarchy in CGROUP_HIERARCHIES {
        let parent = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(CGROUP_PARENT);
        for _ in 0..10 {
            if !parent.exists() {
                break;
            }
            remove_cgroup_tree(&parent);
            if parent.exists() {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    quietly("ip", &["link", "del", BRIDGE]);
    // Paths the kubelet and containerd use whatever their configured directories.
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for entry in entries.flatten() {
            if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(dir)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file("/var/lib/kubelet/device-plugins/kubelet.sock");
    for empty in [
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet",
        "/var/log/containers",
        "/run/containerd/s",
        "/run/containerd",
    ] {
        let _ = std::fs::remove_dir(empty);
    }
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("pubsubkafka-") || name.starts_with("cni-loopback-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir("/var/lib/cni/results");
    let _ = std::fs::remove_dir("/var/lib/cni");
    if read_claim().is_some_and(|c| c.dir == dir) {
        let _ = std::fs::remove_file(CLAIM);
    }
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn kill9(pid: u32) {
    // SAFETY: plain signal delivery; a stale pid yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&entry.path()));
        }
    }
    pids
}

fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|target| PathBuf::from(unescape_mount_path(target)))
        .filter(|target| target.starts_with(dir) && target != dir)
        .collect();
    targets.sort();
    targets.dedup();
    for target in targets.iter().rev() {
        let Ok(path) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// containerd with its CRI plugin, its state under the stack directory, and the images the
/// node runs imported into its `k8s.io` namespace.
#[derive(Debug)]
pub struct Runtime {
    dir: PathBuf,
    socket: PathBuf,
    images: Vec<String>,
    proc_: Option<Proc>,
}

impl Runtime {
    pub fn start(dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        let containerd = tools::on_path("containerd").ok_or_else(|| Error::Missing {
            tool: "containerd".into(),
            detail:
                "run `make tools` (apt-get install containerd runc containernetworking-plugins)"
                    .into(),
        })?;
        let pause = tools::cache_dir().join("images").join(format!(
            "pause-{}.tar",
            tools::version("KUBERNETES_VERSION")
        ));
        if !pause.is_file() {
            return Err(Error::Missing {
                tool: "the pause image".into(),
                detail: format!("{} does not exist; run `make tools`", pause.display()),
            });
        }
        for sub in [
            "logs",
            "run",
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io("creating the node dir", e))?;
        }
        let socket = dir.join("run/containerd.sock");
        let config = dir.join("containerd/config.toml");
        std::fs::write(&config, containerd_config(dir))
            .map_err(|e| Error::io("writing containerd's config", e))?;
        std::fs::write(
            dir.join("cni/net.d/10-pubsubkafka.conflist"),
            cni_config(dir),
        )
        .map_err(|e| Error::io("writing the CNI config", e))?;
        let mut cmd = Command::new(containerd);
        cmd.arg("--config").arg(&config);
        let mut proc_ = Proc::spawn(
            "containerd",
            cmd,
            &dir.join("logs/containerd.log"),
            lifetime,
            None,
        )?;
        wait_until(&mut proc_, "containerd's socket", READY_TIMEOUT, || {
            std::os::unix::net::UnixStream::connect(&socket)
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
        let mut runtime = Self {
            dir: dir.to_owned(),
            socket,
            images: Vec::new(),
            proc_: Some(proc_),
        };
        runtime.import(&pause, &pause_image())?;
        for name in ["controller", "worker"] {
            let archive = images_dir().join(format!("{name}.tar"));
            if archive.is_file() {
                runtime.import(&archive, &product_image(name))?;
            }
        }
        Ok(runtime)
    }

    /// Imports a docker archive into containerd's `k8s.io` namespace (the kubelet's).
    pub fn import(&mut self, archive: &Path, name: &str) -> Result<(), Error> {
        import_image(&self.socket, archive)?;
        self.images.push(name.to_owned());
        Ok(())
    }
}

/// Imports the docker archive `archive` into the `k8s.io` namespace of the containerd at
/// `socket`, replacing an image of the same name.
pub fn import_image(socket: &Path, archive: &Path) -> Result<(), Error> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .map_err(|e| Error::io("running ctr images import", e))?;
    if !out.status.success() {
        return Err(Error::Component {
            component: "containerd".into(),
            reason: format!("importing {} failed", archive.display()),
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{d}/run/containerd.sock"
[ttrpc]
  address = "{d}/run/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Root may lack CAP_SYS_RESOURCE here: runc then cannot lower oom_score_adj as the kubelet
  # asks ("can't get final child's PID from pipe: EOF"); clamp it to containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#,
        pause = pause_image(),
    )
}

/// Pods on the bridge with addresses from .10 to .250, no default route, no masquerading and
/// no `isGateway` (which would turn on the host's ip_forward): a pod reaches the node's address
/// (on-link) and the Service range (routed to the node, where kube-proxy rewrites it), nothing
/// beyond this machine.
fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pubsubkafka",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join("cni/ipam"),
                "ranges": [[{
                    "subnet": POD_SUBNET,
                    "rangeStart": "10.88.0.10",
                    "rangeEnd": "10.88.0.250",
                    "gateway": NODE_IP,
                }]],
                "routes": [{"dst": SERVICE_SUBNET, "gw": NODE_IP}],
            },
        }],
    })
    .to_string()
}

/// The node's Kubernetes components, running against `kube` with `runtime`.
#[derive(Debug)]
pub struct Node {
    pub info: NodeInfo,
    runtime: Runtime,
    /// In stop order: kube-proxy, kubelet, CoreDNS, scheduler, controller manager.
    procs: Vec<Proc>,
}

impl Node {
    pub fn start(runtime: Runtime, kube: &KubeApi, lifetime: Lifetime) -> Result<Self, Error> {
        let pki = &kube.pki;
        let dir = runtime.dir.clone();
        let logs = dir.join("logs");
        let server = kube.info.server.clone();
        let certs = dir.join("pki");
        std::fs::create_dir_all(&certs).map_err(|e| Error::io("creating the node pki dir", e))?;
        let kubeconfig = |user: &str, subject: &str| -> Result<PathBuf, Error> {
            let pair = pki.client_ca.issue(&certs, user, subject, &[])?;
            let path = certs.join(format!("{user}.kubeconfig"));
            crate::write_private(
                &path,
                &format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    \
                     server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  \
                     user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n\
                     - name: local\n  context: {{cluster: local, user: {user}}}\n\
                     current-context: local\n",
                    ca = pki.serving_ca.cert.display(),
                    cert = pair.cert.display(),
                    key = pair.key.display(),
                ),
            )?;
            Ok(path)
        };
        let controller_manager = kubeconfig(
            "kube-controller-manager",
            "/CN=system:kube-controller-manager",
        )?;
        let scheduler = kubeconfig("kube-scheduler", "/CN=system:kube-scheduler")?;
        let kubelet = kubeconfig(
            "kubelet",
            &format!("/CN=system:node:{NODE_NAME}/O=system:nodes"),
        )?;
        let proxy = kubeconfig("kube-proxy", "/CN=system:kube-proxy")?;
        let coredns = kubeconfig("coredns", "/CN=pubsubkafka:coredns")?;
        let serving = pki.serving_ca.issue(
            &certs,
            "kubelet-serving",
            &format!("/CN=system:node:{NODE_NAME}"),
            &[&format!("IP:{NODE_IP}"), &format!("DNS:{NODE_NAME}")],
        )?;
        grant_coredns(kube)?;

        let p = |path: &Path| path.display().to_string();
        let mut procs = Vec::new();
        let spawn = |name: &str, args: Vec<String>| -> Result<Proc, Error> {
            let binary = if name == "coredns" {
                tools::coredns()?
            } else {
                tools::kube_binary(name)?
            };
            let mut cmd = Command::new(binary);
            cmd.args(args).current_dir(&dir);
            Proc::spawn(name, cmd, &logs.join(format!("{name}.log")), lifetime, None)
        };

        let volume_plugins = dir.join("volume-plugins");
        procs.push(spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", p(&controller_manager)),
                format!("--authentication-kubeconfig={}", p(&controller_manager)),
                format!("--authorization-kubeconfig={}", p(&controller_manager)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={CONTROLLER_MANAGER_PORT}"),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", p(&pki.serving_ca.cert)),
                format!(
                    "--service-account-private-key-file={}",
                    p(&pki.service_account.key)
                ),
                "--use-service-account-credentials=true".into(),
                format!("--flex-volume-plugin-dir={}", p(&volume_plugins)),
                // Deleted pods' objects go at once; a test deletes and re-creates namespaces.
                "--terminated-pod-gc-threshold=50".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?);
        procs.push(spawn(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={}", p(&scheduler)),
                format!("--authentication-kubeconfig={}", p(&scheduler)),
                format!("--authorization-kubeconfig={}", p(&scheduler)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={SCHEDULER_PORT}"),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?);

        let kubelet_config = dir.join("kubelet/config.yaml");
        std::fs::write(&kubelet_config, kubelet_config_yaml(&dir, pki, &serving))
            .map_err(|e| Error::io("writing the kubelet config", e))?;
        let kubelet_started = jiff::Timestamp::now();
        procs.push(spawn(
            "kubelet",
            vec![
                format!("--config={}", p(&kubelet_config)),
                format!("--kubeconfig={}", p(&kubelet)),
                format!("--root-dir={}", p(&dir.join("kubelet/root"))),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ],
        )?);

        let proxy_config = dir.join("kube-proxy.yaml");
        std::fs::write(&proxy_config, proxy_config_yaml(&proxy))
            .map_err(|e| Error::io("writing the kube-proxy config", e))?;
        procs.push(spawn(
            "kube-proxy",
            vec![format!("--config={}", p(&proxy_config)), "--v=1".into()],
        )?);

        let corefile = dir.join("Corefile");
        std::fs::write(&corefile, corefile_text(&coredns))
            .map_err(|e| Error::io("writing the Corefile", e))?;
        procs.push(spawn("coredns", vec!["-conf".into(), p(&corefile)])?);

        // Stop order: what serves pods first, the control-plane loops last.
        procs.reverse();
        let mut node = Self {
            info: NodeInfo {
                name: NODE_NAME.into(),
                ip: NODE_IP.into(),
                logs: logs.clone(),
                pod_logs: dir.join("kubelet/pod-logs"),
                containerd_socket: runtime.socket.clone(),
                cluster_dns: NODE_IP.into(),
                images: runtime.images.clone(),
                dir,
            },
            runtime,
            procs,
        };
        node.wait_ready(kube, kubelet_started)?;
        let mut claim = read_claim().unwrap_or(Claim {
            dir: node.info.dir.parent().unwrap_or(&node.info.dir).to_owned(),
            pids: Vec::new(),
        });
        claim.pids.extend(node.pids());
        write_claim(&claim)?;
        Ok(node)
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.procs.iter().map(Proc::pid).collect();
        pids.extend(self.runtime.proc_.as_ref().map(Proc::pid));
        pids
    }

    fn wait_ready(
        &mut self,
        kube: &KubeApi,
        kubelet_started: jiff::Timestamp,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let check =
            |what: &str, procs: &mut Vec<Proc>, probe: &mut dyn FnMut() -> Result<(), String>| {
                loop {
                    for p in procs.iter_mut() {
                        p.check_alive()?;
                    }
                    let last = match probe() {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    };
                    if Instant::now() >= deadline {
                        return Err(Error::Component {
                            component: "kubernetes node".into(),
                            reason: format!(
                                "not ready after {READY_TIMEOUT:?} waiting for {what}: {last}"
                            ),
                            log_tail: String::new(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            };
        let kubectl = |args: &[&str]| -> Result<String, String> {
            let out = kube
                .info
                .kubectl()
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        };
        // Ready as posted by this kubelet: the heartbeat is newer than its start.
        check("the node to be Ready", &mut self.procs, &mut || {
            let out = kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                r#"jsonpath={range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}"#,
            ])?;
            let (status, heartbeat) = out.split_once(' ').ok_or("no Ready condition yet")?;
            let heartbeat: jiff::Timestamp =
                heartbeat.trim().parse().map_err(|e| format!("{e}"))?;
            if status == "True"
                && heartbeat
                    >= kubelet_started
                        .saturating_sub(jiff::SignedDuration::from_secs(1))
                        .unwrap_or(kubelet_started)
            {
                Ok(())
            } else {
                Err(format!("Ready={status} at {heartbeat}"))
            }
        })?;
        // Pods are admitted only once their namespace's default ServiceAccount exists.
        check("the default ServiceAccount", &mut self.procs, &mut || {
            kubectl(&["-n", "default", "get", "serviceaccount", "default"]).map(drop)
        })?;
        let http_ok = |url: &str| -> Result<(), String> {
            let (host, path) = url.split_once('/').unwrap_or((url, ""));
            let mut stream = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
            use std::io::{Read, Write};
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).map_err(|e| e.to_string())?;
            if head.ends_with(b"200") {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&head).into_owned())
            }
        };
        check(
            "CoreDNS to have synced with the API",
            &mut self.procs,
            &mut || http_ok(&format!("127.0.0.1:{DNS_READY_PORT}/ready")),
        )?;
        check("kube-proxy's first sync", &mut self.procs, &mut || {
            http_ok(&format!("127.0.0.1:{PROXY_HEALTHZ_PORT}/healthz"))
        })?;
        Ok(())
    }

    /// Gives up ownership of the processes (for `stack up`), returning their pids in stop order.
    pub fn detach(mut self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.procs.drain(..).map(Proc::detach).collect();
        pids.extend(self.runtime.proc_.take().map(Proc::detach));
        pids
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.procs.is_empty() && self.runtime.proc_.is_none() {
            return;
        }
        for mut p in self.procs.drain(..) {
            p.stop(Duration::from_secs(10));
        }
        if let Some(mut p) = self.runtime.proc_.take() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(stack_dir) = self.info.dir.parent() {
            clean_host(stack_dir);
        }
    }
}

/// CoreDNS reads Services, EndpointSlices, pods and namespaces, and nothing else.
fn grant_coredns(kube: &KubeApi) -> Result<(), Error> {
    const RBAC: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "pubsubkafka:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces, endpoints]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "pubsubkafka:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "pubsubkafka:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "pubsubkafka:coredns"}
"#;
    kube.info
        .kubectl_with_stdin(&["apply", "-f", "-"], RBAC)
        .map(drop)
        .map_err(|e| Error::Kube(format!("granting CoreDNS its reads: {e}")))
}

fn kubelet_config_yaml(dir: &Path, pki: &KubePki, serving: &crate::pki::Pair) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines mount cgroup v1 hierarchies; since 1.35 the kubelet refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_PARENT}
containerRuntimeEndpoint: unix://{d}/run/containerd.sock
imageServiceEndpoint: unix://{d}/run/containerd.sock
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {KUBELET_HEALTHZ_PORT}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {client_ca}}}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [{NODE_IP}]
podLogsDir: {d}/kubelet/pod-logs
volumePluginDir: {d}/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
failSwapOn: false
maxPods: 110
serializeImagePulls: false
nodeStatusUpdateFrequency: 5s
# Test machines' disks may be fuller than the defaults allow: never evict, never drop images.
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        cert = serving.cert.display(),
        key = serving.key.display(),
        client_ca = pki.client_ca.cert.display(),
    )
}

/// Services through iptables rules; host sysctls left alone (no conntrack sizing or timeouts,
/// no route_localnet), NodePorts on the node's address only.
fn proxy_config_yaml(kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_SUBNET}
healthzBindAddress: 127.0.0.1:{PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:{PROXY_METRICS_PORT}
nodePortAddresses: ["{NODE_IP}/32"]
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
    )
}

fn corefile_text(kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{DNS_HEALTH_PORT}
    ready 127.0.0.1:{DNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"#,
        kubeconfig = kubeconfig.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path(r"/tab\011x"), "/tab\tx");
    }

    #[test]
    fn the_product_images_follow_the_charts_app_version() {
        assert_eq!(
            product_image("worker"),
            format!("docker.io/pubsubkafka/worker:{}", chart_app_version())
        );
        assert!(!chart_app_version().is_empty());
    }
}
