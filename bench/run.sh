#!/usr/bin/env bash
# `ferry run --rm busybox true` with a bind mount (-v HOST:/data:ro) and limits (--memory,
# --cpus, --pids-limit) beside `runc run` on a prepared bundle with the same mount and
# limits, and both without options; median of hyperfine's runs. The default seccomp profile
# is on in both. Needs root and `scripts/install-deps --bench`. Usage: bench/run.sh
source "$(dirname "$0")/lib.sh"
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
start_registry
push busybox
mkdir -p "$WORK/t" && mount -t tmpfs -o size=1g tmpfs "$WORK/t"
mkdir -p "$WORK/t/share" && echo bench > "$WORK/t/share/file"
ref=$REGISTRY/bench/busybox:latest
"$FERRY" --root "$WORK/t/store" pull "$ref" >/dev/null 2>&1
LIMITS=(--memory 256m --cpus 1 --pids-limit 100)
OPTS="-v $WORK/t/share:/data:ro ${LIMITS[*]}"
# Warm the snapshots, and fail early if an option is not supported.
"$FERRY" --root "$WORK/t/store" run --rm $OPTS "$ref" true

# runc's bundles: busybox unpacked by umoci; one plain, one with the same mount and limits
# and ferry's default seccomp profile, as ferry writes them into config.json.
skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$WORK/t/oci:latest"
umoci unpack --image "$WORK/t/oci:latest" "$WORK/t/plain" >/dev/null
jq '.process.terminal = false | .process.args = ["/bin/true"]' "$WORK/t/plain/config.json" \
  > "$WORK/t/c.json" && mv "$WORK/t/c.json" "$WORK/t/plain/config.json"
umoci unpack --image "$WORK/t/oci:latest" "$WORK/t/opts" >/dev/null
"$FERRY" --root "$WORK/t/store" run $OPTS "$ref" true
seccomp=$(jq '.linux.seccomp' "$(ls -d "$WORK"/t/store/containers/*/ | head -1)config.json")
jq --arg share "$WORK/t/share" --argjson seccomp "$seccomp" '
  .process.terminal = false | .process.args = ["/bin/true"]
  | .mounts += [{"destination": "/data", "type": "bind", "source": $share,
                 "options": ["rbind", "rprivate", "ro"]}]
  | .linux.resources.memory = {"limit": 268435456, "swap": 268435456}
  | .linux.resources.cpu = {"quota": 100000, "period": 100000}
  | .linux.resources.pids = {"limit": 100}
  | .linux.seccomp = $seccomp' "$WORK/t/opts/config.json" > "$WORK/t/c.json"
mv "$WORK/t/c.json" "$WORK/t/opts/config.json"

hyperfine -N --warmup 3 --runs "${RUNS_RUN:-30}" --export-json "$WORK/run.json" \
  "$FERRY --root $WORK/t/store run --rm $ref true" \
  "$FERRY --root $WORK/t/store run --rm $OPTS $ref true" \
  "runc --root $WORK/t/runc run -b $WORK/t/plain bench" \
  "runc --root $WORK/t/runc run -b $WORK/t/opts bench" >/dev/null
jq -r '.results[] | "\(.median * 1000 * 10 | floor / 10) ms  \(.command | sub("'"$WORK"'/t/"; ""; "g"))"' \
  "$WORK/run.json"
jq -r '[.results[].median] | "ratio with options, ferry/runc: \(.[1] / .[3] * 100 | floor / 100)"' \
  "$WORK/run.json"
umount "$WORK/t"
