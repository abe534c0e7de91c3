#!/usr/bin/env bash
# Builds the Kubernetes v$KUBERNETES_VERSION binaries of the local node (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl), etcd, helm and CoreDNS
# from the Go module proxy, and the pause image from Kubernetes' own pause.c, into the tool
# cache. Each result is keyed by its version, so a second run does nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mkdir -p "$PSK_BIN"
work="$PSK_CACHE/go-src"
export GOFLAGS="-buildvcs=false -trimpath"

KUBE_COMMANDS=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy)

# k8s.io/kubernetes requires its staging modules at v0.0.0; a module of ours replaces each with
# the published v0.X.Y that matches the release. The version is stamped at link time (a plain
# `go build` reports v0.0.0-master).
build_kubernetes() {
  local missing=() c
  for c in "${KUBE_COMMANDS[@]}"; do
    [[ -x $PSK_BIN/$c-$KUBERNETES_VERSION ]] || missing+=("$c")
  done
  ((${#missing[@]})) || return 0
  log "building ${missing[*]} v$KUBERNETES_VERSION (first run only, several minutes)"
  local dir="$work/kubernetes-$KUBERNETES_VERSION" staging="v0.${KUBERNETES_VERSION#1.}"
  if ! grep -q cmd/kubelet "$dir/tools.go" 2>/dev/null; then
    rm -rf "$dir" && mkdir -p "$dir"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for c in "${KUBE_COMMANDS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
      printf ')\n'
    } > "$dir/tools.go"
    (
      cd "$dir"
      go mod init pubsubkafka.local/kubetools >/dev/null 2>&1
      go mod edit -require="k8s.io/kubernetes@v$KUBERNETES_VERSION"
      local gomod replaces=()
      gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
      [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@v$KUBERNETES_VERSION from the Go module proxy"
      while read -r mod; do replaces+=("-replace=$mod=$mod@$staging"); done \
        < <(awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u)
      go mod edit "${replaces[@]}"
      go mod tidy >/dev/null 2>&1 || go mod tidy
    )
  fi
  local v=k8s.io/component-base/version minor
  minor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION")
  local ldflags="-s -w -X $v.gitVersion=v$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  for c in "${missing[@]}"; do
    local want="$PSK_BIN/$c-$KUBERNETES_VERSION" started=$SECONDS
    (cd "$dir" && go build -ldflags "$ldflags" -o "$want.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$want.tmp" "$want"
    log "$c built in $((SECONDS - started))s"
  done
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
  require_go_module helm.sh/helm/v3 "$HELM_VERSION"
  go build -o "$want.tmp" helm.sh/helm/v3/cmd/helm && mv "$want.tmp" "$want"
}

# CoreDNS with only the plugins a single-node cluster needs (the full plugin set pulls in every
# cloud SDK): Service and pod names from the Kubernetes API, the rest forwarded.
build_coredns() {
  local want="$PSK_BIN/coredns-$COREDNS_VERSION"
  [[ -x $want ]] && return
  log "building CoreDNS v$COREDNS_VERSION"
  local dir="$work/coredns-$COREDNS_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  cat > main.go <<'GO'
// CoreDNS for the local node: cluster names from the Kubernetes API, everything else forwarded.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
  go mod init pubsubkafka.local/coredns >/dev/null 2>&1
  go mod edit -require="github.com/coredns/coredns@v$COREDNS_VERSION"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -ldflags "-s -w" -o "$want.tmp" . && mv "$want.tmp" "$want"
}

# The pod sandbox image, from the pause.c in k8s.io/kubernetes' own source, statically linked
# as its Makefile does, packed with umoci and written as a docker-archive for `ctr import`.
build_pause() {
  local want="$PSK_CACHE/images/pause-$KUBERNETES_VERSION.tar"
  [[ -f $want ]] && return
  log "building the pause image from k8s.io/kubernetes@v$KUBERNETES_VERSION"
  local dir="$work/pause-$KUBERNETES_VERSION" src
  rm -rf "$dir" && mkdir -p "$dir" "$PSK_CACHE/images" && cd "$dir"
  src=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
  [[ -f $src ]] || die "no pause.c in k8s.io/kubernetes@v$KUBERNETES_VERSION"
  mkdir rootfs
  gcc -Os -Wall -Werror -static -DVERSION="v$KUBERNETES_VERSION-pubsubkafka" -o rootfs/pause "$src"
  umoci init --layout layout
  umoci new --image layout:pause
  umoci insert --image layout:pause rootfs/pause /pause
  umoci config --image layout:pause --os linux --architecture amd64 \
    --config.entrypoint /pause --config.user 65535:65535
  skopeo copy --quiet oci:layout:pause "docker-archive:$want.tmp:$PAUSE_IMAGE"
  mv "$want.tmp" "$want"
}

case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  node) build_kubernetes; build_coredns; build_pause ;;
  all) build_etcd; build_kubernetes; build_helm; build_coredns; build_pause ;;
  *) die "usage: $0 [kubernetes|etcd|helm|node|all]" ;;
esac
