#!/usr/bin/env bash
# The GPU checks of weft in one go, for a machine with an NVIDIA GPU, within a time budget
# (docs/gpu.md records the figures they gave, with these commands). In order of what they
# tell, cheapest first, so that a short lease gets the most out of its minutes:
#   1. nvidia-smi; `weft doctor --no-steps`: libraries (and the links weft made for them),
#      driver, GPUs, a 1-rank NCCL all-reduce against the CPU's values;
#   2. one training step of configs/tiny.toml (`weft doctor`);
#   3. configs/clip-vit-b16.toml at BATCH in f32, then the PyTorch eager reference of the same
#      model, batch and GPU;
#   4. the same two in bf16 (weft's autocast, torch.autocast);
#   5. a one-epoch training run of the tiny config on the GPU (losses, retrieval).
#
#   bash launch/gpu-check.sh [OUT_DIR]
#
# WEFT: the binary (default: weft on PATH, else target/release/weft), built with
# `cargo build --release --features cuda`, or gzipped (`*.gz`, what launch/gpu-pack.sh makes to
# travel to a lent GPU: the binary alone is over the 64 MiB that travel). BATCH: the clip-vit-b16 batch (default 256).
# STEPS: timed steps per config (default 5). BUDGET: seconds for the whole script (default
# 480); each command gets at most its own limit and what is left of the budget, and a command
# that would start with under 20 s left is skipped. PYTHON: the Python with torch for the
# reference (default python3; python3 also prints the summary).
#
# OUT_DIR gets 5 files (the device tool brings back at most 8): commands.txt (each command,
# its exit status and seconds), log.txt (every command's stderr, and stdout where it is not
# JSON), results.json (the JSON of each doctor and reference run by name, written after each
# command), and the tiny run's train-tiny-metrics.jsonl and train-tiny-eval.jsonl. The script
# goes on after a failure and exits non-zero if any command failed or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-runs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
BATCH=${BATCH:-256}
STEPS=${STEPS:-5}
BUDGET=${BUDGET:-480}
PYTHON=${PYTHON:-python3}
if [ -z "${WEFT:-}" ]; then
    if command -v weft >/dev/null 2>&1; then WEFT=weft; else WEFT=target/release/weft; fi
fi
mkdir -p "$OUT"
: >"$OUT/commands.txt"
: >"$OUT/log.txt"
echo '{}' >"$OUT/results.json"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
case "$WEFT" in
*.gz)
    gunzip -c "$WEFT" >"$scratch/weft" && chmod +x "$scratch/weft" || exit 2
    echo "weft: $WEFT unpacked to $scratch/weft" | tee -a "$OUT/commands.txt"
    WEFT=$scratch/weft
    ;;
esac
status=0
deadline=$((SECONDS + BUDGET))

# results.json[NAME] = the JSON in FILE (its text when it is not JSON).
keep_json() {
    python3 - "$OUT/results.json" "$1" "$2" <<'PY'
import json, os, sys
path, name, file = sys.argv[1:]
text = open(file).read()
try:
    value = json.loads(text)
except ValueError:
    value = {"not_json": text[-4000:]}
results = json.load(open(path))
results[name] = value
with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
os.replace(path + ".tmp", path)
PY
}

# run NAME LIMIT_S json|- command...: stdout into results.json as NAME (json) or into the
# log (-), stderr into the log.
run() {
    local name=$1 limit=$2 json=$3
    shift 3
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left} s of the budget left: $*" | tee -a "$OUT/commands.txt"
        status=1
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/commands.txt" "$OUT/log.txt" >/dev/null
    echo "== $name: $*"
    local started=$SECONDS rc
    if [ "$json" = - ]; then
        timeout --kill-after=10 "$limit" "$@" >>"$OUT/log.txt" 2>&1
        rc=$?
    else
        timeout --kill-after=10 "$limit" "$@" >"$scratch/stdout" 2>>"$OUT/log.txt"
        rc=$?
        echo "-- $name: stdout in results.json" >>"$OUT/log.txt"
        keep_json "$name" "$scratch/stdout"
    fi
    local verdict="exit $rc"
    [ "$rc" = 124 ] && verdict="timed out (exit 124)"
    echo "   $verdict after $((SECONDS - started)) s" | tee -a "$OUT/commands.txt"
    [ "$rc" = 0 ] || status=1
}

run nvidia-smi 30 - nvidia-smi
run doctor-checks 120 json "$WEFT" doctor --no-steps --json
run doctor-tiny 150 json "$WEFT" doctor --steps "$STEPS" --configs configs/tiny.toml --json
for precision in f32 bf16; do
    run "doctor-clip-$precision" 180 json "$WEFT" doctor --batch "$BATCH" --steps "$STEPS" \
        --configs configs/clip-vit-b16.toml --set "train.precision=$precision" --json
    run "torch-clip-$precision" 150 json "$PYTHON" benches/reference/train_step.py \
        --shape clip-vit-b16 --device cuda --batch "$BATCH" --steps "$STEPS" --grad-clip 1.0 \
        --precision "$precision" --json
done
run train-tiny 240 - "$WEFT" train --set train.device=cuda --set train.epochs=1 \
    --run-dir "$scratch/run-tiny" --resume never
for f in metrics.jsonl eval.jsonl; do
    if [ -f "$scratch/run-tiny/$f" ]; then cp "$scratch/run-tiny/$f" "$OUT/train-tiny-$f"; fi
done

echo "results in $OUT (exit $status):"
cat "$OUT/commands.txt"
# The figures of docs/gpu.md, one line each (python3 is there for the reference anyway).
python3 - "$OUT/results.json" <<'PY' || true
import json, sys
results = json.load(open(sys.argv[1]))
def get(name):
    return results.get(name) or {"missing": name}
d = get("doctor-checks")
g = d.get("gpu", {})
print("gpu:", g.get("status"), "|", ", ".join(x.get("name", "?") for x in g.get("gpus", [])),
      "| driver CUDA", g.get("driver_cuda"), "bindings", g.get("built_cuda"), "|", g.get("error") or "")
for lib in g.get("libraries", []):
    print("  lib:", "ok" if lib.get("loaded") else "FAIL", lib.get("paths") or lib.get("error"))
if g.get("links"):
    print("  links made by weft:", g["links"])
n = d.get("nccl") or {}
print("nccl:", n.get("status"), n.get("error") or "", "| device ms", n.get("device_ms"),
      "| host-staged ms", n.get("host_staged_ms"))
for name in ["doctor-tiny", "doctor-clip-f32", "doctor-clip-bf16"]:
    if not get(name).get("steps"):
        print(f"{name}: no step reported (commands.txt, log.txt)")
    for s in get(name).get("steps") or []:
        print(f"{name}: {s.get('config')} {s.get('precision')} batch {s.get('batch')}:",
              s.get("status"), s.get("error") or "", "| step", s.get("step_time_s"), "s |",
              s.get("samples_per_s"), "samples/s | MFU", s.get("mfu"), "| memory GiB",
              s.get("peak_memory_gib"))
for p in ["f32", "bf16"]:
    t = get(f"torch-clip-{p}")
    w = (get(f"doctor-clip-{p}").get("steps") or [{}])[0]
    ratio = None
    if isinstance(w.get("step_time_s"), (int, float)) and isinstance(t.get("step_time_median_s"), (int, float)):
        ratio = round(w["step_time_s"] / t["step_time_median_s"], 3)
    print(f"torch-clip-{p}: step", t.get("step_time_median_s"), "s |", t.get("samples_per_s"),
          f"samples/s | weft/torch step time {ratio} (target at most 1.2)")
PY
exit "$status"
