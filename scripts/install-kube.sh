#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, etcd and helm from the Go module proxy into the tool cache.
# Each binary is keyed by its version, so a second run does nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mkdir -p "$PSK_BIN"
work="$PSK_CACHE/go-src"
export GOFLAGS="-buildvcs=false -trimpath"

# k8s.io/kubernetes requires its staging modules at v0.0.0; a module of ours replaces each with
# the published v0.X.Y that matches the release.
build_kubernetes() {
  local want="$PSK_BIN/kube-apiserver-$KUBERNETES_VERSION" kctl="$PSK_BIN/kubectl-$KUBERNETES_VERSION"
  if [[ -x $want && -x $kctl ]]; then return; fi
  log "building kube-apiserver and kubectl v$KUBERNETES_VERSION (first run only, several minutes)"
  local dir="$work/kubernetes-$KUBERNETES_VERSION" staging="v0.${KUBERNETES_VERSION#1.}"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod init pubsubkafka.local/kubetools >/dev/null 2>&1
  go mod edit -require="k8s.io/kubernetes@v$KUBERNETES_VERSION"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@v$KUBERNETES_VERSION from the Go module proxy"
  local replaces=()
  while read -r mod; do replaces+=("-replace=$mod=$mod@$staging"); done \
    < <(awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u)
  go mod edit "${replaces[@]}"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -o "$want.tmp" k8s.io/kubernetes/cmd/kube-apiserver && mv "$want.tmp" "$want"
  go build -o "$kctl.tmp" k8s.io/kubernetes/cmd/kubectl && mv "$kctl.tmp" "$kctl"
}

build_etcd() {
  local want="$PSK_BIN/etcd-$ETCD_VERSION"
  [[ -x $want ]] && return
  log "building etcd v$ETCD_VERSION"
  local dir="$work/etcd-$ETCD_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > main.go <<'GO'
// The etcd server, as the etcd binary runs it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod init pubsubkafka.local/etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -o "$want.tmp" . && mv "$want.tmp" "$want"
}

build_helm() {
  local want="$PSK_BIN/helm-$HELM_VERSION"
  [[ -x $want ]] && return
  log "building helm v$HELM_VERSION"
  local dir="$work/helm-$HELM_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  go mod init pubsubkafka.local/helm >/dev/null 2>&1
  go mod edit -require="helm.sh/helm/v3@v$HELM_VERSION"
  # Carry over helm's own replace directives, if it has any.
  local gomod
  gomod=$(go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  while read -r from to ver; do
    go mod edit -replace="$from=$to@$ver"
  done < <(awk '/^replace[ \t]+[^ (]/ {print $2, $4, $5} /^replace[ \t]*\(/ {r=1; next} r && /^\)/ {r=0} r && NF>=4 {print $1, $3, $4}' "$gomod")
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -o "$want.tmp" helm.sh/helm/v3/cmd/helm && mv "$want.tmp" "$want"
}

case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  all) build_etcd; build_kubernetes; build_helm ;;
  *) die "usage: $0 [kubernetes|etcd|helm|all]" ;;
esac
