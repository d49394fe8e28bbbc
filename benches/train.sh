#!/usr/bin/env bash
# weft's CPU training step against the PyTorch reference, in one run, on the tiny-bench model
# (../shared/bench/tiny-bench.json = configs/tiny-bench.toml), with the same threads.
# Prints both step times and their ratio for the ITC-only and ITC+ITM+MLM variants.
#   bash benches/train.sh [STEPS] [THREADS]
# Needs: target/release/weft (cargo build --release) and pip install torch.
set -euo pipefail
STEPS=${1:-10}
THREADS=${2:-2}
WEFT=${WEFT:-target/release/weft}
echo "== tiny-bench step, batch 64, $STEPS timed steps after 2 untimed, $THREADS threads ($(uname -m), $(nproc) CPUs)"
run() { # variant config [reference flags...]
    local variant=$1 config=$2
    shift 2
    local w p
    w=$("$WEFT" --config "$config" --set train.threads="$THREADS" bench train --steps "$STEPS" --warmup 2 --json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_median_s"])')
    p=$(python3 benches/reference/train_step.py --variant "$variant" --steps "$STEPS" --warmup 2 --threads "$THREADS" --json "$@" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_median_s"])')
    python3 -c "w,p=$w,$p; print(f'{\"$variant $*\":<28} weft {1e3*w:8.1f} ms   pytorch {1e3*p:8.1f} ms   weft/pytorch {w/p:5.2f}')"
}
run itc configs/tiny-bench.toml
run albef configs/tiny-bench-albef.toml
run albef configs/tiny-bench-albef.toml --mlm-masked-only
echo "(torch $(python3 -c 'import torch; print(torch.__version__)'))"
