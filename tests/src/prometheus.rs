//! A real Prometheus (Debian's `prometheus` package) for the local stack: it loads the rules
//! PubSubKafka ships (`deploy/prometheus/rules.yml`, the chart's PrometheusRule) and scrapes
//! whatever the tests, the demo or a person register as a target, every 2 seconds.
//!
//! Processes the tests start on the host are file-based targets: [`PrometheusInfo::add_target`]
//! writes `targets/<job>-<name>.json` and Prometheus picks it up within seconds. Pods on the
//! stack's Kubernetes node are discovered through the Kubernetes API, as a cluster's Prometheus
//! finds them: every Running pod annotated `prometheus.io/scrape: "true"` whose
//! `app.kubernetes.io/name` is `pubsubkafka-<job>`, at its `prometheus.io/port`, labelled with
//! its namespace and pod name. Three jobs exist: `controller`, `gateway` and `worker`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{Lifetime, Proc, wait_until};
use crate::{Error, free_port, tools, worker};

/// The rules the chart ships, as Prometheus loads them.
pub const RULES: &str = include_str!("../../deploy/prometheus/rules.yml");

/// The scrape jobs; a target belongs to one.
pub const JOBS: [&str; 3] = ["controller", "gateway", "worker"];

/// How to reach a running Prometheus and register targets with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrometheusInfo {
    pub url: String,
    pub port: u16,
    /// Directory of the file-based service discovery.
    pub targets_dir: PathBuf,
}

/// A Prometheus server owned by this value (or detached).
#[derive(Debug)]
pub struct Prometheus {
    pub info: PrometheusInfo,
    proc_: Option<Proc>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn config(targets_dir: &Path, rules: &Path, kubeconfig: Option<&Path>) -> String {
    let mut text = format!(
        "# Written by the PubSubKafka test harness.\n\
         global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n",
        rules.display()
    );
    for job in JOBS {
        text.push_str(&format!(
            "  - job_name: {job}\n    file_sd_configs:\n      - files: ['{}/{job}-*.json']\n        refresh_interval: 2s\n",
            targets_dir.display()
        ));
    }
    // Pods in jobs of their own (relabelling applies to every target of a job), named back to
    // the component's job so that queries and dashboards see one job per component.
    if let Some(kubeconfig) = kubeconfig {
        for job in JOBS {
            text.push_str(&format!(
                "  - job_name: {job}-pods\n    kubernetes_sd_configs:\n      - role: pod\n        kubeconfig_file: '{kubeconfig}'\n\
                 \x20   relabel_configs:\n\
                 \x20     - {{source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name], regex: 'pubsubkafka-{job}', action: keep}}\n\
                 \x20     - {{source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape], regex: 'true', action: keep}}\n\
                 \x20     - {{source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}}\n\
                 \x20     - {{source_labels: [__meta_kubernetes_pod_ip, __meta_kubernetes_pod_annotation_prometheus_io_port], regex: '(.+);(.+)', target_label: __address__, replacement: '$1:$2'}}\n\
                 \x20     - {{target_label: job, replacement: {job}}}\n\
                 \x20     - {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}\n\
                 \x20     - {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}\n",
                kubeconfig = kubeconfig.display(),
            ));
        }
    }
    text
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with its data and targets under `dir`; with
    /// `kubeconfig`, it also discovers pods through that cluster's API.
    pub fn start(dir: &Path, lifetime: Lifetime, kubeconfig: Option<&Path>) -> Result<Self, Error> {
        crate::process::retry_port_clash(|| Self::start_once(dir, lifetime, kubeconfig))
    }

    fn start_once(
        dir: &Path,
        lifetime: Lifetime,
        kubeconfig: Option<&Path>,
    ) -> Result<Self, Error> {
        let bin = tools::prometheus()?;
        let targets_dir = dir.join("targets");
        std::fs::create_dir_all(&targets_dir)
            .map_err(|e| Error::io("creating the prometheus dir", e))?;
        let rules = dir.join("rules.yml");
        std::fs::write(&rules, RULES).map_err(|e| Error::io("writing the rules file", e))?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config(&targets_dir, &rules, kubeconfig))
            .map_err(|e| Error::io("writing prometheus.yml", e))?;
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn");
        let mut proc_ = Proc::spawn(
            "prometheus",
            cmd,
            &dir.join("prometheus.log"),
            lifetime,
            None,
        )?;
        wait_until(
            &mut proc_,
            "/-/ready",
            READY_TIMEOUT,
            || match worker::http_get(port, "/-/ready") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )?;
        Ok(Self {
            info: PrometheusInfo {
                url: format!("http://127.0.0.1:{port}"),
                port,
                targets_dir,
            },
            proc_: Some(proc_),
        })
    }

    /// Lets the process outlive this value; returns its pid.
    pub fn detach(mut self) -> Vec<u32> {
        self.proc_.take().map(Proc::detach).into_iter().collect()
    }
}

/// One series of an instant query.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub metric: std::collections::BTreeMap<String, String>,
    pub value: (f64, String),
}

impl Sample {
    pub fn value(&self) -> f64 {
        self.value.1.parse().unwrap_or(f64::NAN)
    }
}

/// A scrape target as Prometheus reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub labels: std::collections::BTreeMap<String, String>,
    pub health: String,
    #[serde(rename = "lastError", default)]
    pub last_error: String,
    #[serde(rename = "scrapeUrl", default)]
    pub scrape_url: String,
}

impl PrometheusInfo {
    /// Registers `127.0.0.1:<port>` as target `name` of `job` (one of [`JOBS`]), with extra
    /// labels. Prometheus scrapes it within a few seconds.
    pub fn add_target(
        &self,
        job: &str,
        name: &str,
        port: u16,
        labels: &[(&str, &str)],
    ) -> Result<(), Error> {
        assert!(JOBS.contains(&job), "unknown job {job}");
        let mut all: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
        all.insert("target", name);
        let entry = serde_json::json!([{
            "targets": [format!("127.0.0.1:{port}")],
            "labels": all,
        }]);
        let file = self.targets_dir.join(format!("{job}-{name}.json"));
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, entry.to_string())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| Error::io(format!("writing {}", file.display()), e))
    }

    /// Stops scraping target `name` of `job`.
    pub fn remove_target(&self, job: &str, name: &str) {
        let _ = std::fs::remove_file(self.targets_dir.join(format!("{job}-{name}.json")));
    }

    /// GET `path_and_query` on the API; the `data` member of a successful answer.
    fn api(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let (status, body) = worker::http_get(self.port, path_and_query)?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body:.200}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {status}: {} {}",
                json["errorType"].as_str().unwrap_or_default(),
                json["error"].as_str().unwrap_or_default()
            ));
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `promql` now; an error carries Prometheus's own message (a parse error names the
    /// position).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        if data["resultType"] != "vector" {
            return Err(format!("not an instant vector: {}", data["resultType"]));
        }
        serde_json::from_value(data["result"].clone()).map_err(|e| e.to_string())
    }

    /// The sum of every series `promql` returns (0 when it returns none).
    pub fn query_sum(&self, promql: &str) -> Result<f64, String> {
        Ok(self.query(promql)?.iter().map(Sample::value).sum())
    }

    /// The active scrape targets.
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        let data = self.api("/api/v1/targets?state=active")?;
        serde_json::from_value(data["activeTargets"].clone()).map_err(|e| e.to_string())
    }

    /// The alerts Prometheus currently holds (pending or firing) as `(name, state, labels)`.
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Names of the alerting rules Prometheus loaded.
    pub fn alerting_rules(&self) -> Result<Vec<String>, String> {
        let data = self.api("/api/v1/rules?type=alert")?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect())
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("sum by (le) (rate(x{a=\"b\"}[1m]))"),
            "sum%20by%20%28le%29%20%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn the_config_scrapes_every_job_from_its_target_files() {
        let text = config(
            Path::new("/s/targets"),
            Path::new("/s/rules.yml"),
            Some(Path::new("/s/kubeconfig")),
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(yaml["rule_files"][0], "/s/rules.yml");
        let jobs: Vec<&str> = yaml["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|j| j["job_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            jobs,
            [
                "controller",
                "gateway",
                "worker",
                "controller-pods",
                "gateway-pods",
                "worker-pods"
            ]
        );
        assert!(yaml["scrape_configs"][2]["relabel_configs"].is_null());
        assert_eq!(
            yaml["scrape_configs"][2]["file_sd_configs"][0]["files"][0],
            "/s/targets/worker-*.json"
        );
        let pods = &yaml["scrape_configs"][5];
        assert_eq!(pods["kubernetes_sd_configs"][0]["role"], "pod");
        assert_eq!(
            pods["kubernetes_sd_configs"][0]["kubeconfig_file"],
            "/s/kubeconfig"
        );
        assert_eq!(pods["relabel_configs"][0]["regex"], "pubsubkafka-worker");
        assert_eq!(pods["relabel_configs"][4]["replacement"], "worker");
    }
}
