#!/usr/bin/env bash
# Build the weft that a lent GPU runs, and pack it to travel with the working tree (the device
# tool carries at most 64 MiB, tracked files included; on 2026-12-06 the stripped release cuda
# binary was 60.4 MiB, too much with the tracked 5.0 MiB, and 16.4 MiB gzipped). docs/gpu.md,
# "How to measure", says how it is used:
#
#   bash launch/gpu-pack.sh      # -> target/gpu-carry/weft.gz
#
# CUDARC_CUDA_VERSION: the CUDA version of cudarc's bindings (default 13000: the driver of the
# lent H100/H200 machines, 580, supports CUDA 13.0; without nvcc here cudarc would take 13.4).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release --locked -p weft --features cuda
mkdir -p target/gpu-carry
strip -o target/gpu-carry/weft target/release/weft
gzip -9f target/gpu-carry/weft
packed=$(stat -c %s target/gpu-carry/weft.gz)
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f 1)
limit=$((64 * 1024 * 1024))
echo "target/gpu-carry/weft.gz: $packed bytes (CUDA $CUDARC_CUDA_VERSION bindings); tracked files: $tracked bytes; at most $limit travel"
if [ $((packed + tracked)) -ge "$limit" ]; then
    echo "too large to travel with the working tree" >&2
    exit 1
fi
