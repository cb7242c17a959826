#!/usr/bin/env bash
# Cold pull + unpack, everything on one tmpfs (registry, stores, containerd's root):
#   ferry pull --unpack (one pass into snapshots), cold ferry run IMAGE true, ferry unpack
#   REF DIR of a missing image (one pass, layers staged at once), ferry pull then ferry
#   unpack DIR; beside skopeo copy + umoci unpack and ctr images pull (private
#   containerd, overlayfs snapshotter, no pigz); and the machine's limits for the same layers:
#   the download alone (curl of every layer, 4 at once as ferry) and the decompression alone
#   (gzip -dc, the layers one after another and all at once).
# Median of $RUNS, peak RSS. FERRY_BEFORE=path measures an older binary's pull+unpack beside.
# DROP_CACHES=1 drops the page cache before every timed run (cold binaries; root).
# Then `ferry run --rm busybox true` warm beside `runc run` and `ctr run --rm`.
# Needs root. Usage: bench/unpack.sh [busybox deb4 large]
source "$(dirname "$0")/lib.sh"
images=("${@:-busybox deb4 large}")
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
# One tmpfs for everything, so disk noise does not set the times.
mount -t tmpfs -o size=12g tmpfs "$WORK"
trap 'cleanup 2>/dev/null || true; umount "$WORK"; rmdir "$WORK"' EXIT
start_registry
for t in ${images[*]}; do push "$t"; done
mkdir -p "$WORK/t"
cold() { [ "${DROP_CACHES:-0}" = 1 ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }; true; }

echo "ferry binary: $(stat -c %s "$FERRY" | awk '{printf "%.1f MB", $1/1e6}'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in ${images[*]}; do
  ref=$REGISTRY/bench/$t:latest
  manifest=$(skopeo inspect --raw --tls-verify=false "docker://$ref")
  blobs=$(jq -r '.layers[].digest' <<<"$manifest")
  echo "== $t: $(jq '.layers | length' <<<"$manifest") layers, $(jq '[.layers[].size] | add / 1e6 | floor' <<<"$manifest") MB compressed"
  urls=$(for d in $blobs; do echo "http://$REGISTRY/v2/bench/$t/blobs/$d"; done)
  files=$(for d in $blobs; do echo "$CACHE/layout/blobs/sha256/${d#sha256:}"; done)
  measure "download alone (curl x4)" '' sh -c "echo '$urls' | xargs -P 4 -n 1 curl -fsS -o /dev/null"; dl=$LAST_MEDIAN
  measure "gunzip alone, in sequence" '' sh -c "echo '$files' | xargs -n 1 gzip -dc >/dev/null"; gz=$LAST_MEDIAN
  measure "gunzip alone, all at once" '' sh -c "echo '$files' | xargs -P 8 -n 1 sh -c 'gzip -dc \$0 >/dev/null'"; gzp=$LAST_MEDIAN
  measure "ferry pull --unpack" 'rm -rf $WORK/t/store; cold' \
    "$FERRY" --root "$WORK/t/store" pull --unpack "$ref"; one=$LAST_MEDIAN
  measure "ferry run IMAGE true" 'rm -rf $WORK/t/store; cold' \
    "$FERRY" --root "$WORK/t/store" run --rm "$ref" true; run=$LAST_MEDIAN
  measure "ferry unpack REF DIR (one pass)" 'rm -rf $WORK/t/store $WORK/t/rootfs; cold' \
    "$FERRY" --root "$WORK/t/store" unpack "$ref" "$WORK/t/rootfs"; u=$LAST_MEDIAN
  measure "ferry pull + unpack DIR" 'rm -rf $WORK/t/store $WORK/t/rootfs; cold' \
    sh -c "'$FERRY' --root '$WORK/t/store' pull '$ref' && '$FERRY' --root '$WORK/t/store' unpack '$ref' '$WORK/t/rootfs'"
  f=$LAST_MEDIAN
  if [ -n "${FERRY_BEFORE:-}" ]; then
    measure "before: run IMAGE true" 'rm -rf $WORK/t/store; cold' \
      "$FERRY_BEFORE" --root "$WORK/t/store" run --rm "$ref" true
    measure "before: pull + unpack DIR" 'rm -rf $WORK/t/store $WORK/t/rootfs; cold' \
      sh -c "'$FERRY_BEFORE' --root '$WORK/t/store' pull '$ref' && '$FERRY_BEFORE' --root '$WORK/t/store' unpack '$ref' '$WORK/t/rootfs'"
  fi
  rm -rf "$WORK/t/store" "$WORK/t/rootfs"
  measure "skopeo copy + umoci unpack" 'rm -rf $WORK/t/oci $WORK/t/bundle; cold' \
    sh -c "skopeo copy --quiet --src-tls-verify=false 'docker://$ref' 'oci:$WORK/t/oci:latest' && umoci unpack --image '$WORK/t/oci:latest' '$WORK/t/bundle' >/dev/null"
  s=$LAST_MEDIAN
  rm -rf "$WORK/t/oci" "$WORK/t/bundle"
  measure "ctr images pull (unpack)" "start_containerd; cold" \
    ctr --address "$CTR_SOCK" -n bench images pull --plain-http "$ref"
  c=$LAST_MEDIAN
  longer=$(printf '%s\n%s\n' "$dl" "$gzp" | sort -n | tail -1)
  echo "ratios: pull --unpack/ctr $(ratio "$one" "$c")  run/ctr $(ratio "$run" "$c")  unpack DIR/ctr $(ratio "$u" "$c")  pull+unpack DIR/ctr $(ratio "$f" "$c")  pull --unpack/(skopeo+umoci) $(ratio "$one" "$s")  pull --unpack/max(download, gunzip all at once) $(ratio "$one" "$longer")"
done

echo "== run busybox true (warm: image and snapshots present)"
[[ " ${images[*]} " == *" busybox "* ]] || push busybox
ref=$REGISTRY/bench/busybox:latest
rm -rf "$WORK/t/store"
"$FERRY" --root "$WORK/t/store" pull --unpack "$ref" >/dev/null 2>&1
start_containerd
ctr --address "$CTR_SOCK" -n bench images pull --plain-http "$ref" >/dev/null
skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$WORK/t/oci2:latest"
umoci unpack --image "$WORK/t/oci2:latest" "$WORK/t/rbundle" >/dev/null
jq '.process.terminal = false | .process.args = ["/bin/true"]' "$WORK/t/rbundle/config.json" > "$WORK/t/c.json"
mv "$WORK/t/c.json" "$WORK/t/rbundle/config.json"
hyperfine -N --warmup 3 --runs 30 --export-json "$WORK/run.json" \
  "$FERRY --root $WORK/t/store run --rm $ref true" \
  "runc --root $WORK/t/runc run -b $WORK/t/rbundle bench" \
  "ctr --address $CTR_SOCK -n bench run --rm $ref bench true" >/dev/null
jq -r '.results[] | "\(.command | split(" ")[0] | split("/")[-1]): median \(.median * 1000 | floor) ms"' "$WORK/run.json"
