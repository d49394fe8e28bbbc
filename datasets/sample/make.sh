#!/usr/bin/env bash
# Regenerates datasets/sample/ (deterministic: the same bytes every time).
# Run from the repository root: bash datasets/sample/make.sh [path/to/weft]
set -euo pipefail
WEFT=${1:-target/release/weft}
rm -rf datasets/sample/train datasets/sample/val
"$WEFT" data synth --out datasets/sample/train --rows 8000 --shards 4 --image-size 64 --seed 0 --row-group-size 500
"$WEFT" data synth --out datasets/sample/val --rows 500 --shards 1 --image-size 64 --seed 1 --row-group-size 250
"$WEFT" data tokenizer --train --out datasets/sample/tokenizer.json --vocab-size 256 datasets/sample/train
