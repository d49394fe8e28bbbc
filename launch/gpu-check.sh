#!/usr/bin/env bash
# The GPU checks of weft in one go, for a machine with an NVIDIA GPU (docs/gpu.md records
# the figures they gave, with these commands):
#   weft doctor (libraries, driver, GPUs, a 1-rank NCCL all-reduce against the CPU's values,
#   one training step of configs/tiny.toml and configs/clip-vit-b16.toml: step time,
#   samples/s, FLOPs, MFU, peak memory), in f32 and in bf16; a short training run of the tiny
#   config on the GPU; the PyTorch eager reference of clip-vit-b16 at the same batch.
#
#   bash launch/gpu-check.sh [OUT_DIR]
#
# WEFT: the binary (default: weft on PATH, else target/release/weft), built with
# `cargo build --release --features cuda`. BATCH: the clip-vit-b16 batch (default 256).
# STEPS: timed steps per config (default 5). Needs python3 with torch for the reference.
# Every command's stdout and stderr go to OUT_DIR/<name>.out and .err; the script goes on
# after a failure and exits non-zero if any command failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-runs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
BATCH=${BATCH:-256}
STEPS=${STEPS:-5}
if [ -z "${WEFT:-}" ]; then
    if command -v weft >/dev/null 2>&1; then WEFT=weft; else WEFT=target/release/weft; fi
fi
mkdir -p "$OUT"
status=0
run() { # name command...
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$OUT/commands.txt"
    local started=$SECONDS
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    local rc=$?
    echo "   exit $rc after $((SECONDS - started)) s" | tee -a "$OUT/commands.txt"
    [ "$rc" = 0 ] || status=1
    tail -n 30 "$OUT/$name.out"
}
run nvidia-smi nvidia-smi
run doctor "$WEFT" doctor --batch "$BATCH" --steps "$STEPS" --configs configs/clip-vit-b16.toml
run doctor-tiny "$WEFT" doctor --steps "$STEPS" --configs configs/tiny.toml --json
run doctor-f32 "$WEFT" doctor --batch "$BATCH" --steps "$STEPS" --configs configs/clip-vit-b16.toml --json
run doctor-bf16 "$WEFT" doctor --batch "$BATCH" --steps "$STEPS" --configs configs/clip-vit-b16.toml --set train.precision=bf16 --json
run train-tiny "$WEFT" train --set train.device=cuda --set train.epochs=1 --run-dir "$OUT/run-tiny" --resume never
for precision in f32 bf16; do
    run "torch-clip-$precision" python3 benches/reference/train_step.py --shape clip-vit-b16 \
        --device cuda --batch "$BATCH" --steps "$STEPS" --grad-clip 1.0 --precision "$precision" --json
done
echo "results in $OUT (exit $status)"
exit "$status"
