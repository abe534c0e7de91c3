//! Where the stack's programs are. `scripts/install-tools.sh` puts them in the tool cache; this
//! module finds them and, when one is missing, says which and how to get it.
//!
//! The pinned versions are read from `scripts/lib.sh`, the one place that names them.

use std::path::{Path, PathBuf};

use crate::Error;

const VERSIONS: &str = include_str!("../../scripts/lib.sh");

/// A version pinned in `scripts/lib.sh`, e.g. `version("KAFKA_VERSION")`.
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .unwrap_or_else(|| panic!("scripts/lib.sh does not pin {key}"))
}

/// The tool cache: `$PSK_CACHE`, else `$XDG_CACHE_HOME/pubsubkafka`, else `~/.cache/pubsubkafka`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PSK_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("pubsubkafka")
}

fn missing(tool: &str, path: &Path) -> Error {
    Error::Missing {
        tool: tool.to_owned(),
        detail: format!(
            "{} does not exist; run `make tools` (scripts/install-tools.sh) to install it",
            path.display()
        ),
    }
}

fn cached_binary(name: &str, version_key: &str) -> Result<PathBuf, Error> {
    let path = cache_dir()
        .join("bin")
        .join(format!("{name}-{}", version(version_key)));
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(name, &path))
    }
}

pub fn kube_apiserver() -> Result<PathBuf, Error> {
    cached_binary("kube-apiserver", "KUBERNETES_VERSION")
}

/// A Kubernetes component of the local node (`kubelet`, `kube-proxy`, ...).
pub fn kube_binary(name: &str) -> Result<PathBuf, Error> {
    cached_binary(name, "KUBERNETES_VERSION")
}

/// CoreDNS, the node's cluster DNS.
pub fn coredns() -> Result<PathBuf, Error> {
    cached_binary("coredns", "COREDNS_VERSION")
}

pub fn kubectl() -> Result<PathBuf, Error> {
    cached_binary("kubectl", "KUBERNETES_VERSION")
}

pub fn etcd() -> Result<PathBuf, Error> {
    cached_binary("etcd", "ETCD_VERSION")
}

pub fn helm() -> Result<PathBuf, Error> {
    cached_binary("helm", "HELM_VERSION")
}

/// Jaeger v2 (OTLP receiver, in-memory storage, query API), built from the Go module proxy.
pub fn jaeger() -> Result<PathBuf, Error> {
    cached_binary("jaeger", "JAEGER_VERSION")
}

/// The Prometheus server, built from the Go module proxy (Debian's lacks Kubernetes service
/// discovery).
pub fn prometheus() -> Result<PathBuf, Error> {
    cached_binary("prometheus", "PROMETHEUS_VERSION")
}

/// The directory of Kafka's jars (a classpath of `<dir>/*`).
pub fn kafka_lib() -> Result<PathBuf, Error> {
    let dir = cache_dir().join(format!("kafka-{}", version("KAFKA_VERSION")));
    if dir.join(".complete").is_file() {
        Ok(dir.join("lib"))
    } else {
        Err(missing("Apache Kafka", &dir))
    }
}

/// The `java` launcher: `$JAVA_HOME/bin/java` or the one on PATH.
pub fn java() -> Result<PathBuf, Error> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let java = PathBuf::from(home).join("bin/java");
        if java.is_file() {
            return Ok(java);
        }
    }
    on_path("java").ok_or_else(|| Error::Missing {
        tool: "java".into(),
        detail: "no java on PATH; Kafka needs Java 17 (apt-get install openjdk-17-jre-headless)"
            .into(),
    })
}

/// PostgreSQL's server programs directory, the newest installed major version.
pub fn postgres_bindir() -> Result<PathBuf, Error> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| Error::Missing {
        tool: "PostgreSQL".into(),
        detail: "no /usr/lib/postgresql/*/bin/postgres; run `make tools` (apt-get install postgresql)"
            .into(),
    })
}

/// `name` resolved on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_one_pin_file() {
        assert_eq!(version("KAFKA_VERSION"), "4.3.1");
        assert!(version("KUBERNETES_VERSION").starts_with("1.36."));
    }
}
