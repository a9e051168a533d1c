#!/usr/bin/env bash
# Draws the sample grid of the README and the model card: 6 seeds for each of 10 prompts,
# generated with the default settings and upscaled 2x with crisp pixels.
# Needs a release build of jetformer (in $CARGO_TARGET_DIR, target/ or $JETFORMER) and
# ImageMagick's montage.
# Usage: scripts/sample-grid.sh [MODEL_DIR] [OUT.png]
set -euo pipefail

model=${1:-assets/model}
out=${2:-docs/samples.png}
jetformer=${JETFORMER:-${CARGO_TARGET_DIR:-target}/release/jetformer}
prompts=("grinning face" "cat face" "red heart" "red apple" "pizza" "rocket" "sun"
  "deciduous tree" "fire" "ghost")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tiles=()
for index in "${!prompts[@]}"; do
  "$jetformer" --device cpu --model "$model" generate --prompt "${prompts[$index]}" \
    --count 6 --seed 0 --out "$work/row$index.png" >/dev/null
  for number in 1 2 3 4 5 6; do
    tiles+=("$work/row$index-$number.png")
  done
done
montage "${tiles[@]}" -filter point -geometry 64x64+2+2 -tile 6x "$work/grid.png"
mv "$work/grid.png" "$out"
echo "wrote $out"
