#!/usr/bin/env bash
# Installs everything the tests, the demo and the local stack need on a fresh machine:
# Debian packages (only those missing, Prometheus and promtool among them), Apache Kafka's jars
# from Maven Central, and the Kubernetes node binaries, kubectl, etcd, helm, CoreDNS and Jaeger
# built from the Go module proxy. Results are cached in
# $PSK_CACHE (default ~/.cache/pubsubkafka), so a second run takes a second.
#
# `install-tools.sh packages` installs only the Debian packages (the Rust build needs some of
# them: cmake, libssl-dev); `install-tools.sh built` only the rest, which takes minutes on a
# fresh machine, so `make test` builds it while cargo builds the workspace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
part="${1:-all}"
case $part in all | packages | built) ;; *) die "usage: install-tools.sh [packages|built]" ;; esac

# Debian package -> a file or command that shows it is installed.
apt_wanted=(
  "openjdk-17-jre-headless:java"
  "maven:mvn"
  "postgresql:/usr/lib/postgresql"
  "postgresql-client:psql"
  "openssl:openssl"
  "libssl-dev:/usr/include/openssl/ssl.h"
  "pkg-config:pkg-config"
  "build-essential:cc"
  "cmake:cmake"
  "unzip:unzip"
  "curl:curl"
  "jq:jq"
  "procps:pgrep"
  "prometheus:/usr/bin/prometheus"
  "wrk:wrk"
  # The local Kubernetes node: container runtime, CNI plugins, kube-proxy's iptables, and the
  # tools that build OCI images without a Docker engine.
  "containerd:containerd"
  "runc:/usr/sbin/runc"
  "containernetworking-plugins:/usr/lib/cni/bridge"
  "iptables:/usr/sbin/iptables"
  "conntrack:/usr/sbin/conntrack"
  "umoci:umoci"
  "skopeo:skopeo"
)
missing=()
[[ $part == built ]] && apt_wanted=()
for entry in "${apt_wanted[@]}"; do
  pkg="${entry%%:*}" probe="${entry#*:}"
  if [[ $probe == /* ]]; then [[ -e $probe ]] && continue; else command -v "$probe" >/dev/null && continue; fi
  missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ $part == packages ]] && exit 0

command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || die "Go is required to build kube-apiserver, etcd and helm (this machine kind ships it in /usr/local/go)"
command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
command -v cargo >/dev/null || die "Rust (cargo) is required"

"$here/install-kafka.sh"
"$here/install-kube.sh" all
"$here/install-fuzz.sh"
"$here/install-machete.sh"
"$here/install-jaeger.sh"
"$here/install-prometheus.sh"
log "tools ready in $PSK_CACHE"
