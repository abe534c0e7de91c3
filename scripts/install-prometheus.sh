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
go mod edit -require="github.com/prometheus/prometheus@v$PROMETHEUS_VERSION"
# Prometheus replaces klog with a go-kit adapter; a dependency's replace lines do not apply to
# the module that requires it, so carry them over (as for helm and Jaeger).
gomod=$(go mod download -json "github.com/prometheus/prometheus@v$PROMETHEUS_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f $gomod ]] || die "could not download github.com/prometheus/prometheus@v$PROMETHEUS_VERSION from the Go module proxy"
while read -r from to ver; do
  go mod edit -replace="$from=$to@$ver"
done < <(awk '/^replace[ \t]+[^ (]/ {print $2, $4, $5} /^replace[ \t]*\(/ {r=1; next} r && /^\)/ {r=0} r && NF>=4 {print $1, $3, $4}' "$gomod")
go mod tidy >/dev/null 2>&1 || go mod tidy
go build -ldflags "-s -w" -o "$want.tmp" github.com/prometheus/prometheus/cmd/prometheus
mv "$want.tmp" "$want"
