# Shared settings for the project's scripts: versions and the tool cache.
# Sourced, never run. Every version the local stack uses is pinned here.

KAFKA_VERSION=4.3.1
KUBERNETES_VERSION=1.36.3
ETCD_VERSION=3.6.16
HELM_VERSION=3.22.0
CARGO_FUZZ_VERSION=0.13.2
# Jaeger v2 (2.0.0) is published as Go module github.com/jaegertracing/jaeger v1.62.0; later
# module versions need OpenTelemetry Collector modules the Go module proxy here does not serve.
JAEGER_VERSION=1.62.0

PSK_CACHE="${PSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pubsubkafka}"
PSK_BIN="$PSK_CACHE/bin"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
