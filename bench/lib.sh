# Shared by the bench scripts: builds benchmark images once, starts a registry and a private
# containerd on 127.0.0.1, and times commands (median of N runs, peak RSS).
# Source it; needs root and `scripts/install-deps --bench`.

set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
CACHE=${FERRY_BENCH_CACHE:-$REPO/target/bench-cache}
RUNS=${RUNS:-3}
FERRY=${FERRY:-$REPO/target/release/ferry}
WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount -R "$WORK"/ctr-root* 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# build_images: OCI layout in $CACHE/layout with tags busybox, deb (debootstrap minbase in
# 3 layers, ~50 MB compressed), big (deb + 4 incompressible layers, ~1 GB), deb4 (the
# minbase tree in 4 layers, the last a whiteout) and large (5 layers built like real images,
# 1 GB uncompressed, 0.6 GB gzip: bench/layers.py). Each is built once and kept.
has_image() { [ -f "$CACHE/layout/index.json" ] && grep -q "\"$1\"" "$CACHE/layout/index.json"; }
build_images() {
  has_image big || build_base_images
  has_image deb4 || build_deb4
  has_image large || build_large
}

# build_deb4: the deb image's tree in 4 layers, as a Dockerfile would stack them: /usr/lib,
# the rest of /usr, the rest, and `rm -rf /usr/share/doc` plus a file (~51 MB compressed).
build_deb4() {
  local L="$CACHE/layout" B="$CACHE/deb4-bundle" tars="$CACHE/deb4-tars"
  rm -rf "$B" "$tars"; mkdir -p "$tars"
  umoci unpack --image "$L:deb" "$B" >/dev/null
  local T="$B/rootfs"
  tar -C "$T" --numeric-owner -cf "$tars/1.tar" usr/lib
  tar -C "$T" --numeric-owner --exclude=./usr/lib -cf "$tars/2.tar" ./usr
  tar -C "$T" --numeric-owner --exclude=./usr -cf "$tars/3.tar" .
  mkdir -p "$tars/4/usr/share" "$tars/4/etc"
  touch "$tars/4/usr/share/.wh.doc"; echo deb4 > "$tars/4/etc/bench-release"
  tar -C "$tars/4" --numeric-owner -cf "$tars/4.tar" usr etc
  umoci new --image "$L:deb4"
  for i in 1 2 3 4; do umoci raw add-layer --image "$L:deb4" "$tars/$i.tar"; done
  umoci config --image "$L:deb4" --config.cmd /bin/bash
  rm -rf "$B" "$tars"
}

# build_large: five layers written and gzipped by bench/layers.py.
build_large() {
  python3 "$BENCH_DIR/layers.py" "$CACHE/layout" large
}

build_base_images() {
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  local L="$CACHE/layout" B="$CACHE/bundle"
  umoci init --layout "$L"
  umoci new --image "$L:busybox"
  umoci unpack --image "$L:busybox" "$B" >/dev/null
  mkdir -p "$B/rootfs/bin"; cp /bin/busybox "$B/rootfs/bin/"
  for a in sh true echo; do ln -s busybox "$B/rootfs/bin/$a"; done
  umoci repack --image "$L:busybox" "$B"; rm -rf "$B"
  umoci config --image "$L:busybox" --config.cmd /bin/sh

  echo "bench: debootstrap --variant=minbase (needs Debian's package mirror)" >&2
  local T="$CACHE/deb-tree" tars="$CACHE/tars"
  debootstrap --variant=minbase bookworm "$T" >/dev/null
  rm -rf "$T/var/cache/apt"/* "$T/var/lib/apt/lists"/*
  mkdir -p "$tars"
  # Three layers, as real images stack: /usr, the rest, a small change.
  tar -C "$T" -cf "$tars/usr.tar" usr
  tar -C "$T" --exclude=./usr -cf "$tars/rest.tar" .
  mkdir -p "$CACHE/small/etc" && echo bench > "$CACHE/small/etc/bench-release"
  tar -C "$CACHE/small" -cf "$tars/small.tar" etc
  umoci new --image "$L:deb"
  for t in usr rest small; do umoci raw add-layer --image "$L:deb" "$tars/$t.tar"; done
  umoci config --image "$L:deb" --config.cmd /bin/bash
  # big: deb plus four incompressible 230 MiB layers (~1 GB).
  skopeo copy --quiet "oci:$L:deb" "oci:$L:big"
  for i in 1 2 3 4; do
    mkdir -p "$CACHE/data/data$i"
    head -c $((230 * 1024 * 1024)) /dev/urandom > "$CACHE/data/data$i/blob.bin"
    tar -C "$CACHE/data" -cf "$tars/data$i.tar" "data$i"
    rm -rf "$CACHE/data/data$i"
    umoci raw add-layer --image "$L:big" "$tars/data$i.tar"
    rm -f "$tars/data$i.tar"
  done
  umoci gc --layout "$L"
  rm -rf "$T" "$tars" "$CACHE/small" "$CACHE/data"
}

# start_registry: a plain-HTTP registry on 127.0.0.1; sets REGISTRY=127.0.0.1:PORT.
start_registry() {
  local port; port=$(free_port)
  cat > "$WORK/registry.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $WORK/registry }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
YML
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  PIDS+=($!)
  REGISTRY=127.0.0.1:$port
  for _ in $(seq 100); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "registry did not start" >&2; exit 1
}

# push TAG: pushes a bench image to the registry as bench/TAG:latest, digests kept.
push() {
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$CACHE/layout:$1" "docker://$REGISTRY/bench/$1:latest"
}

# start_containerd: a private containerd with a fresh root, listening on $CTR_SOCK
# ($WORK/ctr-root/sock); stops the previous one.
CTR_SOCK=$WORK/ctr-root/sock
start_containerd() {
  [ -n "${CTR_PID:-}" ] && { kill "$CTR_PID"; wait "$CTR_PID" 2>/dev/null || true; }
  local d="$WORK/ctr-root"
  umount -R "$d" 2>/dev/null || true; rm -rf "$d"; mkdir -p "$d"
  cat > "$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/sock"
TOML
  CONTAINERD_DISABLE_PIGZ=1 containerd --config "$d/config.toml" >"$d/log" 2>&1 &
  CTR_PID=$!; PIDS+=($CTR_PID)
  for _ in $(seq 100); do ctr --address "$CTR_SOCK" version >/dev/null 2>&1 && return; sleep 0.1; done
  echo "containerd did not start" >&2; exit 1
}

# measure NAME PREP CMD...: runs PREP then CMD $RUNS times; prints the median wall time (s)
# and the peak RSS (MiB) of the median run; sets LAST_MEDIAN.
measure() {
  local name=$1 prep=$2; shift 2
  local times=() rss=()
  for i in $(seq "$RUNS"); do
    eval "$prep"
    # Wall time from the nanosecond clock (time(1)'s %e has 10 ms steps); peak RSS from time(1).
    local t0 t1; t0=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    t1=$(date +%s%N)
    local t; t=$(echo "scale=3; ($t1 - $t0) / 1000000000" | bc -l)
    read -r m < "$WORK/time"
    times+=("$t"); rss+=("$m")
  done
  LAST_MEDIAN=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  local peak; peak=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
  printf '%-28s median %7.3fs  (runs: %s)  peak RSS %6.1f MiB\n' "$name" "$LAST_MEDIAN" "${times[*]}" "$(echo "$peak/1024" | bc -l)"
}

ratio() { echo "scale=2; $1 / $2" | bc -l; }
