#!/usr/bin/env bash
# weft's TcpRing all-reduce against torch.distributed's Gloo, both between NPROC processes on
# 127.0.0.1, alternated ROUNDS times (this VM's speed drifts); prints the median bus bandwidth
# of each side per size (nccl-tests' busbw = bytes / time * 2(n-1)/n) and each round's ratio.
#   bash benches/allreduce.sh [NPROC] [ROUNDS] [SIZES]
# Needs: target/release/weft (cargo build --release) and pip install torch.
set -euo pipefail
NPROC=${1:-2}
ROUNDS=${2:-3}
SIZES=${3:-1M,16M,64M,256M}
WEFT=${WEFT:-target/release/weft}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$ROUNDS"); do
    "$WEFT" bench allreduce --nproc "$NPROC" --sizes "$SIZES" --json > "$out/weft-$r.json"
    python3 benches/reference/allreduce_gloo.py --nproc "$NPROC" --sizes "$SIZES" --json > "$out/gloo-$r.json"
done
python3 - "$out" "$ROUNDS" "$NPROC" <<'PY'
import json, statistics, sys
out, rounds, nproc = sys.argv[1], int(sys.argv[2]), sys.argv[3]
w = [json.load(open(f"{out}/weft-{r}.json"))["rows"] for r in range(1, rounds + 1)]
g = [json.load(open(f"{out}/gloo-{r}.json"))["rows"] for r in range(1, rounds + 1)]
print(f"== all-reduce (sum, f32), {nproc} processes on 127.0.0.1, {rounds} rounds: busbw GB/s")
for i, row in enumerate(w[0]):
    ws = [x[i]["busbw_gbps"] for x in w]
    gs = [x[i]["busbw_gbps"] for x in g]
    ratios = " ".join(f"{a / b:.2f}" for a, b in zip(ws, gs))
    print(f"{row['bytes'] >> 20:>5} MB  weft {statistics.median(ws):5.2f}  gloo {statistics.median(gs):5.2f}"
          f"  weft/gloo {statistics.median(ws) / statistics.median(gs):4.2f}  (rounds: {ratios})")
PY
