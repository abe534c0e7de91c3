#!/usr/bin/env bash
# `make images`: the operator and worker images as OCI images, built from the release binaries
# without a Docker engine or a registry. Each image holds what docker/*.Dockerfile puts in it:
# the binary at /usr/local/bin, the shared libraries it links (as Debian 12 lays them out, which
# is what debian:bookworm-slim with libssl3 gives), CA certificates and openssl.cnf, an `app`
# user 65532:65532 that it runs as, and the binary as its entrypoint. umoci packs the layer and
# the config; skopeo writes a docker-archive named like the chart's default image, which the
# local node's containerd imports (`ctr images import`).
#
# Output: target/images/{controller,worker}.tar tagged docker.io/pubsubkafka/<name>:<appVersion>,
# rebuilt only when a binary is newer than its image.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/lib.sh"
cd "$root"

command -v umoci >/dev/null && command -v skopeo >/dev/null || "$here/install-tools.sh"

tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/pubsubkafka/Chart.yaml)
[[ -n $tag ]] || die "no appVersion in charts/pubsubkafka/Chart.yaml"
out="$root/target/images"
mkdir -p "$out"

log "building the release binaries"
cargo build --release --locked -p pubsubkafka-controller --bin pubsubkafka-controller \
  -p pubsubkafka-worker --bin pubsubkafka-worker

# image NAME BINARY PORTS...: builds target/images/NAME.tar from target/release/BINARY.
image() {
  local name=$1 bin=$2; shift 2
  local binary="target/release/$bin" archive="$out/$name.tar"
  if [[ -f $archive && $archive -nt $binary ]]; then
    log "image $name is current ($archive)"
    return
  fi
  local work="$out/$name.build"
  rm -rf "$work" && mkdir -p "$work"
  local rootfs="$work/rootfs"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/usr/lib/ssl" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  install -m 0755 "$binary" "$rootfs/usr/local/bin/$bin"
  # The shared libraries the binary links, at the paths the loader looks them up by.
  local lib
  for lib in $(ldd "$binary" | awk '/=>/ && $3 ~ /^\// {print $3} /^\t\/lib/ {print $1}'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\napp:x:65532:65532::/nonexistent:/usr/sbin/nologin\n' \
    > "$rootfs/etc/passwd"
  printf 'root:x:0:\napp:x:65532:\n' > "$rootfs/etc/group"
  cp /etc/nsswitch.conf "$rootfs/etc/nsswitch.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  cp -L /etc/ssl/openssl.cnf "$rootfs/etc/ssl/openssl.cnf"
  ln -s /etc/ssl/openssl.cnf "$rootfs/usr/lib/ssl/openssl.cnf"
  ln -s /etc/ssl/certs "$rootfs/usr/lib/ssl/certs"

  local exposed=() port
  for port in "$@"; do exposed+=(--config.exposedports "$port/tcp"); done
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$name"
  umoci insert --image "$work/layout:$name" "$rootfs" / >/dev/null
  umoci config --image "$work/layout:$name" --os linux --architecture amd64 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.user 65532:65532 --config.entrypoint "/usr/local/bin/$bin" \
    --config.label "org.opencontainers.image.version=$tag" "${exposed[@]}"
  rm -f "$archive.tmp"
  skopeo copy --quiet "oci:$work/layout:$name" "docker-archive:$archive.tmp:docker.io/pubsubkafka/$name:$tag"
  mv "$archive.tmp" "$archive"
  rm -rf "$work"
  log "image docker.io/pubsubkafka/$name:$tag: $archive ($(du -h "$archive" | cut -f1))"
}

image controller pubsubkafka-controller 8080
image worker pubsubkafka-worker 8080 9090
