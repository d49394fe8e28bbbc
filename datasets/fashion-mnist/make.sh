#!/usr/bin/env bash
# Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) as Parquet for zero-shot classification:
# Debian's dataset-fashion-mnist package (IDX files in /usr/share/datasets/fashion-mnist)
# converted by `weft data import-idx` into datasets/fashion-mnist/{train,test}/ (PNG images,
# template captions, a `label` column), and a tokenizer trained on the training captions.
# Run from the repository root: bash datasets/fashion-mnist/make.sh [path/to/weft]
# (apt-get install dataset-fashion-mnist first). The files are not committed (about 35 MB).
set -euo pipefail
WEFT=${1:-target/release/weft}
SRC=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
OUT=datasets/fashion-mnist
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ]; then
    echo "no Fashion-MNIST in $SRC: apt-get install dataset-fashion-mnist (or set FASHION_MNIST)" >&2
    exit 2
fi
rm -rf "$OUT/train" "$OUT/test"
"$WEFT" data import-idx --images "$SRC/train-images-idx3-ubyte.gz" --labels "$SRC/train-labels-idx1-ubyte.gz" \
    --out "$OUT/train/part-0.parquet" --classes fashion-mnist
"$WEFT" data import-idx --images "$SRC/t10k-images-idx3-ubyte.gz" --labels "$SRC/t10k-labels-idx1-ubyte.gz" \
    --out "$OUT/test/part-0.parquet" --classes fashion-mnist
"$WEFT" data tokenizer --train --out "$OUT/tokenizer.json" --vocab-size 128 "$OUT/train"
