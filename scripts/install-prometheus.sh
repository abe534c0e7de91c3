#!/usr/bin/env bash
# Builds the Prometheus server (module github.com/prometheus/prometheus v$PROMETHEUS_VERSION,
# Prometheus 2.54) from the Go module proxy into the tool cache, keyed by version. Debian's
# package (2.42) is built without Kubernetes service discovery, which the stack's Prometheus
# uses to find pods; promtool still comes from Debian.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

want="$PSK_BIN/prometheus-$PROMETHEUS_VERSION"
[[ -x $want ]] && exit 0
mkdir -p "$PSK_BIN"
export GOFLAGS="-buildvcs=false -trimpath"
log "building Prometheus (module v$PROMETHEUS_VERSION) from the Go module proxy (first run only, several minutes)"
dir="$PSK_CACHE/go-src/prometheus-$PROMETHEUS_VERSION"
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
GO
go mod init pubsubkafka.local/prometheus >/dev/null 2>&1
# Prometheus replaces klog with a go-kit adapter: its replace lines come along.
require_go_module github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
go build -ldflags "-s -w" -o "$want.tmp" github.com/prometheus/prometheus/cmd/prometheus
mv "$want.tmp" "$want"
