#!/usr/bin/env bash
# Builds Jaeger v2 (the local stack's trace backend) from the Go module proxy into the tool
# cache, keyed by version: a second run does nothing.
#
# Jaeger's go.mod has a replace directive, so `go install ...@version` refuses it; a module of
# ours requires it and carries the replace lines over (as for helm).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

want="$PSK_BIN/jaeger-$JAEGER_VERSION"
[[ -x $want ]] && exit 0
mkdir -p "$PSK_BIN"
export GOFLAGS="-buildvcs=false -trimpath"
log "building Jaeger (module v$JAEGER_VERSION) from the Go module proxy (first run only, several minutes)"
dir="$PSK_CACHE/go-src/jaeger-$JAEGER_VERSION"
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
GO
go mod init pubsubkafka.local/jaeger >/dev/null 2>&1
require_go_module github.com/jaegertracing/jaeger "$JAEGER_VERSION"
go build -o "$want.tmp" github.com/jaegertracing/jaeger/cmd/jaeger && mv "$want.tmp" "$want"
