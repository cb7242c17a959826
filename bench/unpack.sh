#!/usr/bin/env bash
# Cold pull + unpack: ferry (pull, then unpack into a directory) beside `skopeo copy` +
# `umoci unpack` and `ctr images pull` (private containerd, overlayfs snapshotter), same
# registry and images, median of $RUNS; then `ferry run --rm busybox true` beside `runc run`
# on a prepared bundle and `ctr run --rm`. Needs root. Usage: bench/unpack.sh [busybox deb big]
source "$(dirname "$0")/lib.sh"
images=("${@:-busybox deb big}")
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
start_registry
for t in ${images[*]}; do push "$t"; done
# Unpack targets on tmpfs, so disk noise does not dominate.
mkdir -p "$WORK/t" && mount -t tmpfs -o size=6g tmpfs "$WORK/t"

for t in ${images[*]}; do
  ref=$REGISTRY/bench/$t:latest
  echo "== $t"
  measure "ferry pull+unpack" 'rm -rf $WORK/t/store $WORK/t/rootfs' \
    sh -c "'$FERRY' --root '$WORK/t/store' pull '$ref' && '$FERRY' --root '$WORK/t/store' unpack '$ref' '$WORK/t/rootfs'"
  f=$LAST_MEDIAN
  measure "skopeo copy + umoci unpack" 'rm -rf $WORK/t/oci $WORK/t/bundle' \
    sh -c "skopeo copy --quiet --src-tls-verify=false 'docker://$ref' 'oci:$WORK/t/oci:latest' && umoci unpack --image '$WORK/t/oci:latest' '$WORK/t/bundle' >/dev/null"
  s=$LAST_MEDIAN
  measure "ctr images pull (unpack)" "start_containerd" \
    ctr --address "$CTR_SOCK" -n bench images pull --plain-http "$ref"
  c=$LAST_MEDIAN
  echo "ratios: ferry/(skopeo+umoci) $(ratio "$f" "$s")  ferry/ctr $(ratio "$f" "$c")"
done

echo "== run busybox true"
ref=$REGISTRY/bench/busybox:latest
"$FERRY" --root "$WORK/t/store" pull "$ref" >/dev/null
"$FERRY" --root "$WORK/t/store" run --rm "$ref" true
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
umount "$WORK/t"
