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
go mod edit -require="github.com/jaegertracing/jaeger@v$JAEGER_VERSION"
gomod=$(go mod download -json "github.com/jaegertracing/jaeger@v$JAEGER_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f $gomod ]] || die "could not download github.com/jaegertracing/jaeger@v$JAEGER_VERSION from the Go module proxy"
while read -r from to ver; do
  go mod edit -replace="$from=$to@$ver"
done < <(awk '/^replace[ \t]+[^ (]/ {print $2, $4, $5} /^replace[ \t]*\(/ {r=1; next} r && /^\)/ {r=0} r && NF>=4 {print $1, $3, $4}' "$gomod")
go mod tidy >/dev/null 2>&1 || go mod tidy
go build -o "$want.tmp" github.com/jaegertracing/jaeger/cmd/jaeger && mv "$want.tmp" "$want"
