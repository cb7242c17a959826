#!/usr/bin/env bash
# Peers and origin egress: N ferry nodes (each its own store root and `ferry serve --relay`
# on its own port) pull the ~1 GB `big` image at the same moment through
# sources = ["peers", "origin"]; the origin is a registry whose access log counts the body
# bytes it sends. Beside each run, the same N pulls straight from the origin.
# Prints wall time and origin egress per N. Usage: bench/peers.sh [N...] (default 1 4 8).
source "$(dirname "$0")/lib.sh"
counts=("${@:-1 4 8}")
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images

# The origin: a registry with its access log on (combined format: the body size is field 10).
port=$(free_port)
cat > "$WORK/origin.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: false } }
storage: { filesystem: { rootdirectory: $WORK/origin } }
http: { addr: 127.0.0.1:$port }
YML
docker-registry serve "$WORK/origin.yml" >"$WORK/access.log" 2>&1 &
PIDS+=($!)
ORIGIN=127.0.0.1:$port
for _ in $(seq 100); do curl -fsS "http://$ORIGIN/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$CACHE/layout:big" "docker://$ORIGIN/bench/big:latest"
REF=$ORIGIN/bench/big:latest
IMAGE_BYTES=$(skopeo inspect --raw --tls-verify=false "docker://$REF" | jq '[.layers[].size, .config.size] | add')
echo "image $REF: $((IMAGE_BYTES / 1000000)) MB of config and layers"

# egress_since LINE: body bytes the origin sent in access-log lines after LINE.
egress_since() { tail -n +"$(( $1 + 1 ))" "$WORK/access.log" | awk '$9 ~ /^[0-9]+$/ { s += $10 } END { printf "%.0f\n", s }'; }
log_lines() { wc -l < "$WORK/access.log"; }
now() { date +%s.%N; }

# config N SOURCES: a site config for the bench name over nodes 1..N.
config() {
  local n=$1 sources=$2 peers=() i
  for i in $(seq "$n"); do peers+=("\"http://127.0.0.1:${NODE_PORTS[$i]}\""); done
  local IFS=,
  cat > "$WORK/sites-$n.toml" <<TOML
[[route]]
prefix = "$ORIGIN/bench"
sources = [$sources]
[source.peers]
driver = "peer"
peers = [${peers[*]}]
[source.origin]
driver = "registry"
url = "http://$ORIGIN"
TOML
  echo "$WORK/sites-$n.toml"
}

# pull_all N CONFIG: N pulls at once, one per node root; prints "seconds egress_bytes".
pull_all() {
  local n=$1 cfg=$2 before start pids=() i
  before=$(log_lines); start=$(now)
  for i in $(seq "$n"); do
    "$FERRY" --root "$WORK/node$i" --config "$cfg" pull "$REF" >/dev/null 2>"$WORK/pull$i.err" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "pull $((i + 1)) failed:" >&2; cat "$WORK/pull$((i + 1)).err" >&2; exit 1; }
  done
  echo "$(echo "$(now) - $start" | bc -l) $(egress_since "$before")"
}

printf '%-4s %-28s %9s %12s %10s\n' N sources seconds "egress MB" "x image"
for n in ${counts[*]}; do
  NODE_PORTS=(); SERVE_PIDS=()
  for i in $(seq "$n"); do NODE_PORTS[$i]=$(free_port); done
  cfg=$(config "$n" '"peers", "origin"')
  for i in $(seq "$n"); do
    rm -rf "$WORK/node$i"
    "$FERRY" --root "$WORK/node$i" --config "$cfg" serve --listen "127.0.0.1:${NODE_PORTS[$i]}" --relay \
      >/dev/null 2>"$WORK/serve$i.log" &
    SERVE_PIDS+=($!); PIDS+=($!)
  done
  for i in $(seq "$n"); do
    for _ in $(seq 100); do curl -fsS "http://127.0.0.1:${NODE_PORTS[$i]}/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  pull_all "$n" "$cfg" > "$WORK/result"; read -r secs bytes < "$WORK/result"
  printf '%-4s %-28s %9.2f %12.1f %10.2f\n' "$n" '["peers", "origin"]' "$secs" \
    "$(echo "$bytes / 1000000" | bc -l)" "$(echo "$bytes / $IMAGE_BYTES" | bc -l)"
  for p in "${SERVE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # The same pulls straight from the origin.
  for i in $(seq "$n"); do rm -rf "$WORK/node$i"; done
  cfg=$(config "$n" '"origin"')
  pull_all "$n" "$cfg" > "$WORK/result"; read -r secs bytes < "$WORK/result"
  printf '%-4s %-28s %9.2f %12.1f %10.2f\n' "$n" '["origin"]' "$secs" \
    "$(echo "$bytes / 1000000" | bc -l)" "$(echo "$bytes / $IMAGE_BYTES" | bc -l)"
  for i in $(seq "$n"); do rm -rf "$WORK/node$i"; done
done
