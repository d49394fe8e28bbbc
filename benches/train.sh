#!/usr/bin/env bash
# weft's CPU training step against the PyTorch reference, in one run, on the tiny-bench model
# (../shared/bench/tiny-bench.json = configs/tiny-bench.toml), with the same threads.
# For each variant it alternates weft and PyTorch ROUNDS times (this machine is a VM whose
# speed drifts by ±10% over minutes), and prints the median step time of each side, their
# ratio, and the ratio of each round.
#   bash benches/train.sh [STEPS] [THREADS] [ROUNDS]
# WEFT_SET="k=v ..." adds --set options to every weft run, e.g. WEFT_SET=model.prune_unread_tokens=false
# to compute every token of the last layers, as the reference does.
# Needs: target/release/weft (cargo build --release) and pip install torch.
set -euo pipefail
STEPS=${1:-10}
THREADS=${2:-2}
ROUNDS=${3:-3}
WEFT=${WEFT:-target/release/weft}
SETS=()
for kv in ${WEFT_SET:-}; do SETS+=(--set "$kv"); done
echo "== tiny-bench step, batch 64, $STEPS timed steps after 2 untimed, $THREADS threads, $ROUNDS rounds ($(uname -m), $(nproc) CPUs)${WEFT_SET:+, weft --set $WEFT_SET}"
median() { python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_median_s"])'; }
run() { # variant config [reference flags...]
    local variant=$1 config=$2
    shift 2
    local ws=() ps=()
    for _ in $(seq "$ROUNDS"); do
        ws+=("$("$WEFT" --config "$config" --set train.threads="$THREADS" "${SETS[@]}" bench train --steps "$STEPS" --warmup 2 --json 2>/dev/null | median)")
        ps+=("$(python3 benches/reference/train_step.py --variant "$variant" --steps "$STEPS" --warmup 2 --threads "$THREADS" --json "$@" | median)")
    done
    python3 - "$variant $*" "${ws[*]}" "${ps[*]}" <<'PY'
import statistics, sys
name, w, p = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
mw, mp = statistics.median(w), statistics.median(p)
rounds = " ".join(f"{a / b:.2f}" for a, b in zip(w, p))
print(f"{name:<26} weft {1e3 * mw:7.1f} ms   pytorch {1e3 * mp:7.1f} ms   weft/pytorch {mw / mp:5.2f}   (rounds: {rounds})")
PY
}
run itc configs/tiny-bench.toml
run albef configs/tiny-bench-albef.toml
run albef configs/tiny-bench-albef.toml --mlm-masked-only
echo "(torch $(python3 -c 'import torch; print(torch.__version__)'))"
