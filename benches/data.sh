#!/usr/bin/env bash
# weft's data pipeline against the pyarrow + Pillow reference, in one run, on the same files
# and the same number of cores. Prints both tables; the README quotes them.
#   bash benches/data.sh [ROWS] [SOURCE_SIZE] [OUT_SIZE]
# Needs: target/release/weft (cargo build --release) and pip install -r benches/reference/requirements.txt
set -euo pipefail
ROWS=${1:-2000}
SRC=${2:-320}
OUT=${3:-224}
CORES=$(nproc)
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
WEFT=${WEFT:-target/release/weft}
"$WEFT" data synth --out "$DIR/ds" --rows "$ROWS" --shards 4 --image-size "$SRC" --format jpeg --row-group-size 100 >/dev/null
"$WEFT" data tokenizer --train --out "$DIR/tok.json" --vocab-size 256 "$DIR/ds" >/dev/null 2>&1
echo "== $ROWS JPEG images of ${SRC}x${SRC} -> ${OUT}x${OUT}, batch 64, tokenized to 32, $CORES cores ($(uname -m), $(nproc) CPUs)"
echo "-- weft bench data"
"$WEFT" bench data "$DIR/ds" --workers "$CORES" --set data.image_size="$OUT" --set data.batch_size=64 \
    --set data.tokenizer="$DIR/tok.json" --set model.text.context_length=32 2>/dev/null
echo "-- benches/reference/data_pipeline.py (pyarrow $(python3 -c 'import pyarrow; print(pyarrow.__version__)'), Pillow $(python3 -c 'import PIL; print(PIL.__version__)'))"
python3 benches/reference/data_pipeline.py "$DIR/ds" --workers "$CORES" --image-size "$OUT" --batch-size 64 \
    --tokenizer "$DIR/tok.json" --context-length 32
