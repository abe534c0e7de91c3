# Shared settings for the project's scripts: versions and the tool cache.
# Sourced, never run. Every version the local stack uses is pinned here.

KAFKA_VERSION=4.3.1
KUBERNETES_VERSION=1.36.3
ETCD_VERSION=3.6.16
HELM_VERSION=3.22.0
COREDNS_VERSION=1.14.7
# Prometheus 2.54.1 is published as Go module github.com/prometheus/prometheus v0.54.1.
PROMETHEUS_VERSION=0.54.1
CARGO_FUZZ_VERSION=0.13.2
CARGO_MACHETE_VERSION=0.9.2
# Jaeger v2 (2.0.0) is published as Go module github.com/jaegertracing/jaeger v1.62.0; later
# module versions need OpenTelemetry Collector modules the Go module proxy here does not serve.
JAEGER_VERSION=1.62.0

PSK_CACHE="${PSK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pubsubkafka}"
PSK_BIN="$PSK_CACHE/bin"
# The pod sandbox image the node's containerd uses, built from Kubernetes' own pause.c.
PAUSE_IMAGE=localhost/pubsubkafka/pause:$KUBERNETES_VERSION

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Commands the calling script runs when it exits (`at_exit CMD`), the last added first, as
# teardown undoes setup; each runs whether or not the one before it failed.
psk_at_exit=()
at_exit() {
  psk_at_exit+=("$1")
  trap 'for ((psk_i = ${#psk_at_exit[@]} - 1; psk_i >= 0; psk_i--)); do eval "${psk_at_exit[psk_i]}" || true; done' EXIT
}

# Starts a fresh local stack in a temporary directory for the calling script's tests, exports
# PSK_STACK_DIR, and stops the stack when the script exits (whether its tests pass or not).
start_stack() {
  stack_dir="$(mktemp -d "${TMPDIR:-/tmp}/pubsubkafka-stack.XXXXXX")"
  at_exit 'cargo run -q --locked -p pubsubkafka-tests --bin stack -- down --dir "$stack_dir"'
  log "starting the local stack in $stack_dir"
  cargo run -q --locked -p pubsubkafka-tests --bin stack -- up --quiet --dir "$stack_dir" >/dev/null
  export PSK_STACK_DIR="$stack_dir"
}

# In the Go module of ours in the current directory, requires MODULE@vVERSION and carries over
# that module's own replace directives (which Go applies only in the main module), then tidies.
require_go_module() {
  local module=$1 version=$2 gomod from to ver
  go mod edit -require="$module@v$version"
  gomod=$(go mod download -json "$module@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || die "could not download $module@v$version from the Go module proxy"
  while read -r from to ver; do
    go mod edit -replace="$from=$to@$ver"
  done < <(awk '/^replace[ \t]+[^ (]/ {print $2, $4, $5} /^replace[ \t]*\(/ {r=1; next} r && /^\)/ {r=0} r && NF>=4 {print $1, $3, $4}' "$gomod")
  go mod tidy >/dev/null 2>&1 || go mod tidy
}
