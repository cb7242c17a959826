#!/usr/bin/env bash
# Cold pull into an empty store: ferry beside `skopeo copy docker:// oci:` and
# `ctr content fetch`, same registry and images, median of $RUNS (default 3), peak RSS; then
# the re-pull of a present image. Usage: bench/pull.sh [busybox deb big]
source "$(dirname "$0")/lib.sh"
images=("${@:-busybox deb big}")
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
start_registry
for t in ${images[*]}; do push "$t"; done

for t in ${images[*]}; do
  ref=$REGISTRY/bench/$t:latest
  echo "== $t ($(skopeo inspect --raw --tls-verify=false "docker://$ref" | jq '[.layers[].size] | add / 1e6 | floor') MB compressed)"
  measure "ferry pull" 'rm -rf $WORK/store' "$FERRY" --root "$WORK/store" pull "$ref"; f=$LAST_MEDIAN
  measure "skopeo copy" 'rm -rf $WORK/oci' skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$WORK/oci:latest"; s=$LAST_MEDIAN
  measure "ctr content fetch" "start_containerd" ctr --address "$CTR_SOCK" -n bench content fetch --plain-http "$ref"; c=$LAST_MEDIAN
  echo "ratios: ferry/skopeo $(ratio "$f" "$s")  ferry/ctr $(ratio "$f" "$c")"
  hyperfine -N --warmup 3 --runs 20 --export-json "$WORK/h.json" "$FERRY --root $WORK/store pull $ref" >/dev/null
  echo "re-pull of a present image: median $(jq '.results[0].median * 1000 | floor' "$WORK/h.json") ms"
done
