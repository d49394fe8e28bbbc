#!/usr/bin/env bash
# Train on this machine with N worker processes (one per GPU) through `weft launch`.
#
#   launch/local.sh CONFIG [N] [weft train options...]
#   launch/local.sh configs/tiny.toml 2 --run-dir runs/tiny --set train.max_steps=100
#
# N defaults to the number of GPUs (nvidia-smi -L), or 2 on a machine without one. Every worker
# runs `weft train --config CONFIG` with the options after N; they share one run directory
# (--run-dir, else WEFT_RUN_DIR, else runs/<UTC date-time>). Ctrl-C or SIGTERM makes every
# worker save a checkpoint at the next step boundary and exit 75; the same command with the
# same --run-dir resumes. The weft binary is $WEFT, else `weft` on PATH, else this checkout's
# target/release/weft or target/debug/weft.
set -euo pipefail

usage() {
    echo "usage: launch/local.sh CONFIG [N] [weft train options...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
case $1 in -h | --help) usage ;; esac
CONFIG=$1
shift
[ -f "$CONFIG" ] || { echo "local.sh: config $CONFIG does not exist" >&2; exit 2; }

if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    N=$1
    shift
    [ "$N" -ge 1 ] || { echo "local.sh: N must be at least 1" >&2; exit 2; }
elif command -v nvidia-smi >/dev/null 2>&1 && GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') && [ "$GPUS" -ge 1 ]; then
    N=$GPUS
else
    N=2
fi

if [ -z "${WEFT:-}" ]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if command -v weft >/dev/null 2>&1; then
        WEFT=weft
    elif [ -x "$here/target/release/weft" ]; then
        WEFT=$here/target/release/weft
    elif [ -x "$here/target/debug/weft" ]; then
        WEFT=$here/target/debug/weft
    else
        echo "local.sh: no weft binary: build it (cargo build --release), put it on PATH or set WEFT" >&2
        exit 2
    fi
fi

echo "local.sh: $N processes of $WEFT train --config $CONFIG $*" >&2
# weft launch forwards signals to the workers and exits with their status (75: interrupted).
exec "$WEFT" launch --nproc-per-node "$N" -- train --config "$CONFIG" "$@"
