#!/usr/bin/env bash
# Byte identity of a refactor: converts every sample under samples/ with a fixed set of flag
# combinations (every target, tables, --logits last, TWN, group scales, TensorRT INT8) using
# two bitnet-onnx binaries, and compares every output file, the JSON report, stderr and the
# exit code. Prints each difference and "N conversions, M differences"; exits 1 on any.
#
# usage: tools/compare_binaries.sh OLD_BINARY NEW_BINARY
set -u
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flag_sets=(
  "--target ort"
  "--target ort --activations float --head int8 --embeddings int8"
  "--target ort-int8"
  "--target ort-int8 --logits last --scale tensor"
  "--target onnx"
  "--target onnx --scale group:32 --head ternary"
  "--target tensorrt"
  "--target tensorrt --tensorrt-int8"
  "--target qdq-int8"
  "--target qdq-int8 --method twn --scale tensor"
  "--target ort --preset bitnet-b1.58 --block-size 32"
)
run() { # binary outdir
  local i=0
  for m in $(cd "$root" && find samples -name '*.onnx' | sort); do
    for flags in "${flag_sets[@]}"; do
      i=$((i + 1))
      local d="$2/$i"
      mkdir -p "$d"
      echo "$m $flags" > "$d/cmd"
      # shellcheck disable=SC2086
      (cd "$root" && "$1" convert "$m" -o "$d/out.onnx" $flags --report "$d/report.json" -q \
        > /dev/null 2> "$d/stderr"); echo $? > "$d/rc"
      sed -i "s#$d#OUT#g" "$d/stderr"
    done
  done
}
run "$(realpath "$1")" "$work/old"
run "$(realpath "$2")" "$work/new"
n=0; diffs=0
for d in "$work"/old/*; do
  i=$(basename "$d"); n=$((n + 1))
  files=$( (cd "$d" && ls; cd "$work/new/$i" && ls) | sort -u)
  for f in $files; do
    if ! cmp -s "$d/$f" "$work/new/$i/$f"; then
      echo "differs: $f of '$(cat "$d/cmd")'"
      diffs=$((diffs + 1))
    fi
  done
done
echo "$n conversions, $diffs differences"
[ "$diffs" -eq 0 ]
