#!/usr/bin/env bash
# Stop what start-slurm.sh started, via its pid files only. --purge: also delete state/logs.
# From ../shared/recipes/slurm, as start-slurm.sh.
set -uo pipefail
BASE=${SLURM_CI_DIR:-/tmp/slurm-ci}; PIDS=$BASE/pids
running() {  # running <pid> <comm>: live, non-zombie process with that name
    local st
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
stop_one() {
    local f=$PIDS/$1.pid pid
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -z "$pid" ]; then echo "stop-slurm: $1: no pid file"; return 0; fi
    running "$pid" "$1" || { echo "stop-slurm: $1: stale pid $pid"; rm -f "$f"; return 0; }
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        running "$pid" "$1" || { echo "stop-slurm: $1 ($pid) stopped"; rm -f "$f"; return 0; }
        sleep 0.25
    done
    echo "stop-slurm: $1 ($pid) SIGKILL"; kill -KILL "$pid" 2>/dev/null; rm -f "$f"
}
# cancel jobs first: stopping slurmd alone leaves slurmstepd and job processes running
if running "$(cat "$PIDS/slurmctld.pid" 2>/dev/null)" slurmctld; then
    scancel --partition=debug 2>/dev/null
    for _ in $(seq 1 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
fi
stop_one slurmd; stop_one slurmctld; stop_one munged
[ "${1:-}" = --purge ] && rm -rf "$BASE" && echo "stop-slurm: removed $BASE"
exit 0
