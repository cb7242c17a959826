#!/usr/bin/env bash
# Pull-through mirrors under load: `ferry serve --mirror` (specs/mirror.md) beside CNCF
# distribution in proxy mode (`docker-registry` with `proxy: { remoteurl }`), both in front of
# the same upstream registry holding the ~1 GB `big` image. For each N, N clients pull the
# image at the same moment through a COLD mirror (a fresh ferry store, a fresh proxy storage
# directory and process each round). Prints one row per N:
#   total   wall time from the round's start until all N clients finished (s);
#   ratio   ferry total / proxy total (target: <= 0.7);
#   TTFB    time from the round's start until a client holds the first body byte of the
#           image's first layer, asked for right after its manifest (median over the N
#           clients; for N=1 the cold-mirror first byte);
#   egress  body bytes the upstream sent during the round (its access log, as bench/peers.sh
#           counts the origin), as a multiple of the image (config + layers; target: 1.0x);
#   RSS     the mirror process's peak RSS (VmHWM in /proc/PID/status at the end of the round,
#           a fresh process each round; target for ferry: <= 128 MiB).
#
# The clients. CLIENT=curl (default): each client GETs the manifest (its digest checked), then
# the config and every layer at once (as skopeo and containerd fetch layers in parallel), each
# piped through `openssl dgst -sha256` and checked against its digest, the bytes then
# discarded (openssl uses the CPU's SHA instructions: coreutils' sha256sum here costs 5x the
# CPU, and with 32 clients on 2 cores the clients' hashing, not the mirror, set the time). The same
# client for both mirrors; it keeps 32 x 1 GB off the disk (32 GB would not fit in tmpfs here,
# and writing it to disk makes the disk, not the mirror, the limit), and it lets the first
# body byte be timed. CLIENT=skopeo: `skopeo copy docker://… dir:WORK/cI` per client (a real
# registry client; each target deleted as soon as its client finishes, the TTFB column is
# then "-"); with N=32 that writes up to 32 GB under $TMPDIR.
#
# The machine's cores are shared by the upstream, the mirror and the N clients, all on
# 127.0.0.1: the times measure CPU and page cache more than a network. Run it on a quiet
# machine; on a shared one expect noise of tens of percent between runs.
#
# Usage: bench/mirror.sh [N...]   (default 1 8 32; needs root and `scripts/install-deps --bench`)
#   CLIENT=curl|skopeo (see above)    KEEP_LOGS=DIR: keep the mirrors' and upstream's logs
#   MIRRORS="ferry proxy" (default): which mirrors to run ("-" in the table for the other)
# After each round a note gives the CPU seconds the mirror and the upstream used and how busy
# the machine's cores were: at 100% the cores, shared with the clients, set the time.
source "$(dirname "$0")/lib.sh"
counts=("${@:-1 8 32}")
CLIENT=${CLIENT:-curl}
MIRRORS=${MIRRORS:-ferry proxy}
MADE_UP=registry.example.com # the registry name clients ask ferry's mirror for
ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'

# The release binary, built again when a source is newer (unless FERRY is given).
if [ "$FERRY" = "$REPO/target/release/ferry" ] && { [ ! -x "$FERRY" ] ||
  [ -n "$(find "$REPO"/{core,drivers,signing,runtime,cli,serve} "$REPO/Cargo.toml" "$REPO/Cargo.lock" \
    \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -newer "$FERRY" 2>/dev/null | head -1)" ]; }; then
  cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
fi
build_images
echo "disk and memory before the runs:"; df -h "$WORK" | tail -1; free -g | sed -n 2p

wait_http() { # wait_http URL: until it answers 200
  for _ in $(seq 200); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "$1 did not answer" >&2; exit 1
}

# The upstream: a registry whose access log counts the body bytes it sends (combined
# format: field 10).
UPSTREAM=127.0.0.1:$(free_port)
cat > "$WORK/upstream.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: false } }
storage: { filesystem: { rootdirectory: $WORK/upstream } }
http: { addr: $UPSTREAM }
YML
docker-registry serve "$WORK/upstream.yml" >"$WORK/upstream.log" 2>&1 &
UPID=$!; PIDS+=($UPID)
wait_http "http://$UPSTREAM/v2/"
skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$CACHE/layout:big" "docker://$UPSTREAM/bench/big:latest"
skopeo inspect --raw --tls-verify=false "docker://$UPSTREAM/bench/big:latest" > "$WORK/manifest.json"
MANIFEST_DIGEST=sha256:$(sha256sum < "$WORK/manifest.json" | cut -d' ' -f1)
IMAGE_BYTES=$(jq '[.layers[].size, .config.size] | add' "$WORK/manifest.json")
FIRST_LAYER=$(jq -r '.layers[0].digest' "$WORK/manifest.json")
echo "image bench/big: $((IMAGE_BYTES / 1000000)) MB in $(jq '.layers | length' "$WORK/manifest.json") layers + config, $MANIFEST_DIGEST; client: $CLIENT"

log_lines() { wc -l < "$WORK/upstream.log"; }
egress_since() { tail -n +"$(( $1 + 1 ))" "$WORK/upstream.log" | awk '$9 ~ /^[0-9]+$/ { s += $10 } END { printf "%.0f\n", s }'; }

# ferry's mirror: the made-up registry routed to the upstream.
cat > "$WORK/sites.toml" <<TOML
[[route]]
prefix = "$MADE_UP"
sources = ["origin"]

[source.origin]
driver = "registry"
url = "http://$UPSTREAM"
insecure = true
TOML

# start_mirror KIND N: a fresh ferry mirror or distribution proxy; sets MPID, BASE (the
# URL clients ask) and REPO_PATH (the repository in their paths).
start_mirror() {
  local port; port=$(free_port)
  rm -rf "$WORK/mstore" "$WORK/pstore"
  if [ "$1" = ferry ]; then
    "$FERRY" --root "$WORK/mstore" --config "$WORK/sites.toml" \
      serve --mirror --listen "127.0.0.1:$port" >"$WORK/ferry-$2.log" 2>&1 &
    MPID=$!; REPO_PATH=$MADE_UP/bench/big
  else
    cat > "$WORK/proxy.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $WORK/pstore }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
proxy: { remoteurl: "http://$UPSTREAM" }
YML
    docker-registry serve "$WORK/proxy.yml" >"$WORK/proxy-$2.log" 2>&1 &
    MPID=$!; REPO_PATH=bench/big
  fi
  PIDS+=($MPID)
  BASE=http://127.0.0.1:$port
  wait_http "$BASE/v2/"
}

stop_mirror() { kill "$MPID" 2>/dev/null || true; wait "$MPID" 2>/dev/null || true; }

# blob_ok I K DIGEST [first]: client I's blob K through the mirror, checked; with `first`,
# the time (ns) its first body byte arrived goes to cI/first-ns.
blob_ok() {
  local d=$WORK/c$1 url=$BASE/v2/$REPO_PATH/blobs/$3 sum
  if [ "${4:-}" = first ]; then
    sum=$(curl -fsS "$url" 2>"$d/err$2" | {
      dd bs=1 count=1 of="$d/byte" status=none; date +%s%N > "$d/first-ns"
      cat "$d/byte" - | openssl dgst -sha256 -r; } | cut -d' ' -f1) || true
  else
    sum=$(curl -fsS "$url" 2>"$d/err$2" | openssl dgst -sha256 -r | cut -d' ' -f1) || true
  fi
  [ "sha256:$sum" = "$3" ] || { echo "blob $3: got sha256:$sum $(cat "$d/err$2")" >> "$d/fail"; return 1; }
}

# client I: one pull through the mirror at $BASE; a failure is written to cI/fail.
client() {
  local i=$1 d=$WORK/c$1 k=0 pids=() b
  rm -rf "$d"; mkdir -p "$d"
  if [ "$CLIENT" = skopeo ]; then
    skopeo copy --quiet --src-tls-verify=false "docker://${BASE#http://}/$REPO_PATH:latest" "dir:$d/img" \
      2>"$d/err" || { cat "$d/err" >> "$d/fail"; return 1; }
    rm -rf "$d/img"; return 0
  fi
  curl -fsS -H "Accept: $ACCEPT" -o "$d/manifest" "$BASE/v2/$REPO_PATH/manifests/latest" 2>"$d/err" ||
    { echo "manifest: $(cat "$d/err")" >> "$d/fail"; return 1; }
  [ "sha256:$(sha256sum < "$d/manifest" | cut -d' ' -f1)" = "$MANIFEST_DIGEST" ] ||
    { echo "manifest digest differs" >> "$d/fail"; return 1; }
  for b in $(jq -r '.config.digest, .layers[].digest' "$d/manifest"); do
    k=$((k + 1))
    if [ "$b" = "$FIRST_LAYER" ]; then blob_ok "$i" "$k" "$b" first & else blob_ok "$i" "$k" "$b" & fi
    pids+=($!)
  done
  local ok=0; for p in "${pids[@]}"; do wait "$p" || ok=1; done
  return $ok
}

# cpu_ticks: "busy total" jiffies of all CPUs (as bench/peers.sh); proc_cpu PID: its CPU s.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f\n", v[int((NR + 1) / 2)]; else print "-" }'; }

# round KIND N: N clients at once through a cold mirror of KIND; sets TOTAL, TTFB, EGRESS,
# RSS_KB, FAILED.
round() {
  local kind=$1 n=$2 before t0 pids=() i
  start_mirror "$kind" "$n"
  local cpu0 up0; cpu0=$(cpu_ticks); up0=$(proc_cpu "$UPID")
  before=$(log_lines); t0=$(date +%s%N)
  for i in $(seq "$n"); do client "$i" & pids+=($!); done
  FAILED=0
  for p in "${pids[@]}"; do wait "$p" || FAILED=$((FAILED + 1)); done
  TOTAL=$(echo "scale=3; ($(date +%s%N) - $t0) / 1000000000" | bc -l)
  echo "$cpu0 $(cpu_ticks)" | awk -v k="$kind" -v n="$n" -v t="$TOTAL" -v m="$(proc_cpu "$MPID")" \
    -v u="$(echo "$(proc_cpu "$UPID") - $up0" | bc)" \
    '{ printf "  %s N=%s: %.1f s; CPU seconds: mirror %.1f, upstream %.1f; cores %.0f%% busy\n", k, n, t, m, u, 100 * ($3 - $1) / ($4 - $2) }' >&2
  TTFB=$(for i in $(seq "$n"); do if [ -f "$WORK/c$i/first-ns" ]; then
    echo "scale=3; ($(cat "$WORK/c$i/first-ns") - $t0) / 1000000000" | bc -l; fi; done | median)
  for i in $(seq "$n"); do
    [ ! -f "$WORK/c$i/fail" ] || sed "s/^/  $kind N=$n client $i: /" "$WORK/c$i/fail" | head -3 >&2
  done
  if [ "$kind" = ferry ]; then
    # MIRROR-7: the image is named in the mirror's store once complete.
    local named=no
    for _ in $(seq 100); do
      "$FERRY" --root "$WORK/mstore" images 2>/dev/null | grep -q "$MADE_UP/bench/big" && { named=yes; break; }
      sleep 0.2
    done
    [ "$named" = yes ] || echo "  ferry N=$n: the image is not named in the mirror's store 20 s after the pulls" >&2
  fi
  # The upstream logs a request after its last write, and distribution's proxy fills its
  # storage with fetches of its own that may outlast the clients: count once it is quiet.
  EGRESS=-1
  for _ in $(seq 120); do
    sleep 1; local e; e=$(egress_since "$before"); [ "$e" != "$EGRESS" ] || break; EGRESS=$e
  done
  RSS_KB=$(awk '/^VmHWM/ { print $2 }' "/proc/$MPID/status")
  local warnings; warnings=$(grep -ciE 'warn|error' "$WORK/$kind-$n.log" || true)
  [ "$warnings" -eq 0 ] || { echo "  $kind N=$n: $warnings warning/error lines in its log, e.g.:" >&2
    grep -iE 'warn|error' "$WORK/$kind-$n.log" | head -3 | cut -c1-300 | sed 's/^/    /' >&2; }
  stop_mirror
  [ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS"; cp "$WORK/$kind-$n.log" "$KEEP_LOGS/"; }
  rm -rf "$WORK"/c[0-9]* "$WORK/mstore" "$WORK/pstore"
}

x_image() { echo "scale=2; $1 / $IMAGE_BYTES" | bc -l | sed 's/^\./0./'; }
mib() { echo "$1 / 1024" | bc; }

rows=()
# run KIND N: a round of KIND when MIRRORS has it; sets R=(total ttfb egress rss failed).
run() {
  [[ " $MIRRORS " == *" $1 "* ]] || { R=(- - - - 0); return; }
  round "$1" "$2"
  R=("$(printf '%.2f' "$TOTAL")" "$TTFB" "$(x_image "$EGRESS")x" "$(mib "$RSS_KB")" "$FAILED")
}
for n in ${counts[*]}; do
  run ferry "$n"; f=("${R[@]}")
  run proxy "$n"; p=("${R[@]}")
  fail=""; [ "${f[4]}" -eq 0 ] && [ "${p[4]}" -eq 0 ] || fail="  failed: ferry ${f[4]}/$n, proxy ${p[4]}/$n"
  r=-; [ "${f[0]}" = - ] || [ "${p[0]}" = - ] || r=$(ratio "${f[0]}" "${p[0]}" | sed 's/^\./0./')
  rows+=("$(printf '%-4s %9s %9s %6s %9s %9s %10s %10s %9s %9s%s' "$n" "${f[0]}" "${p[0]}" "$r" \
    "${f[1]}" "${p[1]}" "${f[2]}" "${p[2]}" "${f[3]}" "${p[3]}" "$fail")")
done
[ -z "${KEEP_LOGS:-}" ] || cp "$WORK/upstream.log" "$KEEP_LOGS/"
printf '%-4s %9s %9s %6s %9s %9s %10s %10s %9s %9s\n' N "ferry s" "proxy s" ratio "TTFB f s" "TTFB p s" \
  "egress f" "egress p" "RSS f MiB" "RSS p MiB"
printf '%s\n' "${rows[@]}"
echo "targets: ratio <= 0.7, ferry egress 1.0x, ferry RSS <= 128 MiB"
