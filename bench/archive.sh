#!/usr/bin/env bash
# Save and load of the ~1 GB `big` image beside skopeo (oci: <-> oci-archive:), median of
# $RUNS (default 3) and peak RSS, with throughput. Usage: bench/archive.sh [TAG] (default big)
source "$(dirname "$0")/lib.sh"
tag=${1:-big}
[ -x "$FERRY" ] || cargo build --release --bin ferry --manifest-path "$REPO/Cargo.toml"
build_images
start_registry
push "$tag"
ref=$REGISTRY/bench/$tag:latest
"$FERRY" --root "$WORK/store" pull "$ref" >/dev/null 2>&1
rate() { echo "scale=0; $2 / $1 / 1000000" | bc -l; }
echo "== $tag ($(skopeo inspect --raw --tls-verify=false "docker://$ref" | jq '[.layers[].size] | add / 1e6 | floor') MB of layers)"

echo "-- save"
measure "ferry save (ferry)" 'rm -f $WORK/f.tar' "$FERRY" --root "$WORK/store" save "$ref" -o "$WORK/f.tar"; f=$LAST_MEDIAN
size=$(stat -c %s "$WORK/f.tar")
echo "   $(rate "$f" "$size") MB/s ($((size / 1000000)) MB archive)"
measure "ferry save (oci-archive)" 'rm -f $WORK/o.tar' "$FERRY" --root "$WORK/store" save --format oci-archive "$ref" -o "$WORK/o.tar"; o=$LAST_MEDIAN
measure "ferry save -o - > file" 'rm -f $WORK/p.tar' sh -c "'$FERRY' --root '$WORK/store' save '$ref' -o - > '$WORK/p.tar'"
measure "skopeo copy oci: oci-archive:" 'rm -f $WORK/s.tar' skopeo copy --quiet --preserve-digests "oci:$CACHE/layout:$tag" "oci-archive:$WORK/s.tar:$tag"; s=$LAST_MEDIAN
echo "ratio: ferry/skopeo $(ratio "$f" "$s")"
measure "ferry save (docker-archive)" 'rm -f $WORK/d.tar' "$FERRY" --root "$WORK/store" save --format docker-archive "$ref" -o "$WORK/d.tar"; fd=$LAST_MEDIAN
measure "skopeo copy oci: docker-archive:" 'rm -f $WORK/sd.tar' skopeo copy --quiet "oci:$CACHE/layout:$tag" "docker-archive:$WORK/sd.tar:bench/$tag:latest"; sd=$LAST_MEDIAN
echo "ratio: ferry/skopeo (docker-archive) $(ratio "$fd" "$sd")"

echo "-- load"
measure "ferry load (ferry)" 'rm -rf $WORK/store2' "$FERRY" --root "$WORK/store2" load -i "$WORK/f.tar"; l=$LAST_MEDIAN
echo "   $(rate "$l" "$size") MB/s"
measure "ferry load < stdin" 'rm -rf $WORK/store2' sh -c "'$FERRY' --root '$WORK/store2' load -i - < '$WORK/f.tar'"
measure "ferry load (skopeo's archive)" 'rm -rf $WORK/store2' "$FERRY" --root "$WORK/store2" load --name "bench/$tag" -i "$WORK/s.tar"
measure "skopeo copy oci-archive: oci:" 'rm -rf $WORK/oci2' skopeo copy --quiet --preserve-digests "oci-archive:$WORK/s.tar:$tag" "oci:$WORK/oci2:$tag"; sl=$LAST_MEDIAN
echo "ratio: ferry/skopeo $(ratio "$l" "$sl")"
measure "ferry load (docker-archive)" 'rm -rf $WORK/store2' "$FERRY" --root "$WORK/store2" load -i "$WORK/d.tar"
measure "skopeo copy docker-archive: oci:" 'rm -rf $WORK/oci3' skopeo copy --quiet "docker-archive:$WORK/d.tar" "oci:$WORK/oci3:$tag"
measure "ferry load again (present)" ':' "$FERRY" --root "$WORK/store2" load -i "$WORK/d.tar"
