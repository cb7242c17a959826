#!/usr/bin/env bash
# Peers and origin egress: N ferry nodes (each its own store root and `ferry serve --relay`)
# pull the ~1 GB `big` image at the same moment through sources = ["peers", "origin"]; the
# origin is a registry whose access log counts the body bytes it sends. Beside each run,
# the same N pulls straight from the origin. Prints wall time, origin egress and peak RSS
# of the pulls per N.
#
# Usage: bench/peers.sh [N...]   (default 1 4 8 16)
#   NET=loopback (default): every node on 127.0.0.1. All links are as fast as the CPU, so
#     the time measures the CPU the N nodes share on this machine.
#   DIRECT_MAX=N: the straight-from-origin pulls only for counts up to N.
#   NET=lan RATE=1gbit: the origin and every node in its own network namespace, each behind
#     a veth link shaped to RATE in both directions (tc tbf) on one bridge: N machines with
#     their own NICs on a switch, the origin one of them. The time is then what a site sees
#     when links, not CPUs, are the limit (the N nodes still share this machine's cores).
source "$(dirname "$0")/lib.sh"
counts=("${@:-1 4 8 16}")
NET=${NET:-loopback}
RATE=${RATE:-1gbit}
DIRECT_MAX=${DIRECT_MAX:-1000} # the straight pulls only up to this N (they take N times longer)
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
max=$(printf '%s\n' ${counts[*]} | sort -n | tail -1)

# The network: addresses of the origin and of node i; `on_node i` sets ON to the prefix that
# runs a command on node i (a plain array, so `$!` of "${ON[@]}" CMD & is the command).
if [ "$NET" = lan ]; then
  lan_down() {
    for ns in $(ip netns list | awk '/^ferry-bench-/ {print $1}'); do ip netns del "$ns"; done
    ip link del fbr0 2>/dev/null || true
  }
  # lan_host NS LINK IP: a namespace with one veth link to the bridge, shaped to RATE.
  lan_host() {
    ip netns add "$1"
    ip link add "vh-$2" type veth peer name "vn-$2"
    ip link set "vn-$2" netns "$1"
    ip link set "vh-$2" master fbr0 up
    ip -n "$1" link set lo up
    ip -n "$1" addr add "$3/16" dev "vn-$2"
    ip -n "$1" link set "vn-$2" up
    tc qdisc add dev "vh-$2" root tbf rate "$RATE" burst 1mb latency 50ms
    ip netns exec "$1" tc qdisc add dev "vn-$2" root tbf rate "$RATE" burst 1mb latency 50ms
  }
  lan_down
  trap 'cleanup; lan_down' EXIT
  ip link add fbr0 type bridge
  ip addr add 10.77.255.250/16 dev fbr0
  ip link set fbr0 up
  lan_host ferry-bench-o o 10.77.255.254
  for i in $(seq "$max"); do lan_host "ferry-bench-$i" "n$i" "10.77.0.$i"; done
  ORIGIN=10.77.255.254:5000
  node_addr() { echo "10.77.0.$1:7000"; }
  on_node() { ON=(ip netns exec "ferry-bench-$1"); }
  ON_ORIGIN=(ip netns exec ferry-bench-o)
  # Bytes the origin's link has sent (IP packets: about 3% more than the HTTP bodies).
  origin_tx() { ip netns exec ferry-bench-o cat /sys/class/net/vn-o/statistics/tx_bytes; }
else
  ORIGIN=127.0.0.1:$(free_port)
  NODE_PORTS=(); for i in $(seq "$max"); do NODE_PORTS[$i]=$(free_port); done
  node_addr() { echo "127.0.0.1:${NODE_PORTS[$1]}"; }
  on_node() { ON=(); }
  ON_ORIGIN=()
  origin_tx() { echo 0; }
fi

# The origin: a registry with its access log on (combined format: the body size is field 10).
cat > "$WORK/origin.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: false } }
storage: { filesystem: { rootdirectory: $WORK/origin } }
http: { addr: $ORIGIN }
YML
"${ON_ORIGIN[@]}" docker-registry serve "$WORK/origin.yml" >"$WORK/access.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fsS "http://$ORIGIN/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$CACHE/layout:big" "docker://$ORIGIN/bench/big:latest"
REF=$ORIGIN/bench/big:latest
IMAGE_BYTES=$(skopeo inspect --raw --tls-verify=false "docker://$REF" | jq '[.layers[].size, .config.size] | add')
echo "image $REF: $((IMAGE_BYTES / 1000000)) MB of config and layers; network: $NET$([ "$NET" = lan ] && echo ", every link $RATE")"

# egress_since LINE: body bytes the origin sent in access-log lines after LINE.
egress_since() { tail -n +"$(( $1 + 1 ))" "$WORK/access.log" | awk '$9 ~ /^[0-9]+$/ { s += $10 } END { printf "%.0f\n", s }'; }
log_lines() { wc -l < "$WORK/access.log"; }

# config N SOURCES: a site config for the bench name over nodes 1..N.
config() {
  local n=$1 sources=$2 peers=() i
  for i in $(seq "$n"); do peers+=("\"http://$(node_addr "$i")\""); done
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
insecure = true
TOML
  echo "$WORK/sites-$n.toml"
}

# cpu_ticks: "busy total" jiffies of all CPUs; cpu_busy BEFORE AFTER: percent busy between.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
cpu_busy() { echo "$1 $2" | awk '{ printf "%.0f\n", 100 * ($3 - $1) / ($4 - $2) }'; }

# pull_all N CONFIG: N pulls at once, one per node; prints "seconds egress_bytes peak_rss_kb
# cpu_busy_percent", the egress from the access log (HTTP bodies) or, on the lan, from the
# origin's link; the CPU figure tells whether the machine's cores, not the links, set the time.
pull_all() {
  local n=$1 cfg=$2 before tx t0 pids=() i
  before=$(log_lines); tx=$(origin_tx); cpu0=$(cpu_ticks); t0=$(date +%s%N)
  for i in $(seq "$n"); do
    on_node "$i"
    "${ON[@]}" /usr/bin/time -f "%M" -o "$WORK/rss$i" \
      "$FERRY" --root "$WORK/node$i" --config "$cfg" pull "$REF" >/dev/null 2>"$WORK/pull$i.err" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "pull $((i + 1)) failed:" >&2; cat "$WORK/pull$((i + 1)).err" >&2; exit 1; }
  done
  local secs egress busy; secs=$(echo "scale=3; ($(date +%s%N) - $t0) / 1000000000" | bc -l)
  busy=$(cpu_busy "$cpu0" "$(cpu_ticks)")
  sleep 1 # the registry logs a request after its last write
  if [ "$NET" = lan ]; then egress=$(( $(origin_tx) - tx )); else egress=$(egress_since "$before"); fi
  echo "$secs $egress $(cat "$WORK"/rss* | sort -n | tail -1) $busy"
  rm -f "$WORK"/rss*
}

row() { # row N SOURCES SECONDS BYTES RSS_KB BUSY
  printf '%-4s %-22s %9.2f %12.1f %9.2f %12.1f %6s%%\n' "$1" "$2" "$3" \
    "$(echo "$4 / 1000000" | bc -l)" "$(echo "$4 / $IMAGE_BYTES" | bc -l)" "$(echo "$5 / 1024" | bc -l)" "$6"
}

printf '%-4s %-22s %9s %12s %9s %12s %7s\n' N sources seconds "egress MB" "x image" "pull RSS MiB" "CPU"
for n in ${counts[*]}; do
  SERVE_PIDS=()
  cfg=$(config "$n" '"peers", "origin"')
  for i in $(seq "$n"); do
    rm -rf "$WORK/node$i"
    on_node "$i"
    "${ON[@]}" "$FERRY" --root "$WORK/node$i" --config "$cfg" serve --listen "$(node_addr "$i")" --relay \
      >/dev/null 2>"$WORK/serve$i.log" &
    SERVE_PIDS+=($!); PIDS+=($!)
  done
  for i in $(seq "$n"); do
    for _ in $(seq 100); do curl -fsS "http://$(node_addr "$i")/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  pull_all "$n" "$cfg" > "$WORK/result"; read -r secs bytes rss busy < "$WORK/result"
  row "$n" '["peers", "origin"]' "$secs" "$bytes" "$rss" "$busy"
  for p in "${SERVE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for i in $(seq "$n"); do rm -rf "$WORK/node$i"; done
  [ "$n" -le "$DIRECT_MAX" ] || continue
  # The same pulls straight from the origin.
  cfg=$(config "$n" '"origin"')
  pull_all "$n" "$cfg" > "$WORK/result"; read -r secs bytes rss busy < "$WORK/result"
  row "$n" '["origin"]' "$secs" "$bytes" "$rss" "$busy"
  for i in $(seq "$n"); do rm -rf "$WORK/node$i"; done
done
