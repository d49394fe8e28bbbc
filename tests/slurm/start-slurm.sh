#!/usr/bin/env bash
# A one-node Slurm cluster (munged + slurmctld + slurmd) without systemd, for weft's Slurm tests
# (tests/launch_slurm.rs); idempotent; run as root. From ../shared/recipes/slurm, with one
# change: it refuses to replace an /etc/slurm/slurm.conf that it did not write.
# Env: SLURM_CI_DIR SLURM_CI_CPUS SLURM_CI_MEM_MB SLURM_CI_CRED_EXPIRE SLURM_CI_TIMEOUT
set -euo pipefail
T0=$(date +%s.%N)
BASE=${SLURM_CI_DIR:-/tmp/slurm-ci}; PIDS=$BASE/pids; LOGS=$BASE/log
CONF=/etc/slurm/slurm.conf; TIMEOUT=${SLURM_CI_TIMEOUT:-60}; NODE=$(hostname -s)
CPUS=${SLURM_CI_CPUS:-$(nproc)}
MEM=${SLURM_CI_MEM_MB:-$(awk '/^MemTotal:/ {printf "%d", $2/1024*0.9}' /proc/meminfo)}
SOCK=/run/munge/munge.socket.2

die() {
    echo "start-slurm: ERROR: $*" >&2
    for f in /var/log/munge/munged.log "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        [ -f "$f" ] && { echo "----- $f" >&2; tail -n 40 "$f" >&2; }
    done
    sinfo -N -l >&2 2>&1 || true
    exit 1
}
log() { echo "start-slurm: $*"; }
alive() {  # alive <pidfile> <comm>: live, non-zombie process with that name
    local pid st
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    st=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
wait_for() {  # wait_for <what> <pidfile> <comm> <cmd...>; fail fast if daemon died
    local what=$1 pf=$2 comm=$3 t0=$SECONDS; shift 3
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - t0)) -ge 3 ] && ! alive "$pf" "$comm" && die "$what: $comm not running"
        [ $((SECONDS - t0)) -ge "$TIMEOUT" ] && die "$what not up within ${TIMEOUT}s"
        sleep 0.5
    done
}

[ "$(id -u)" = 0 ] || die "must run as root"
for b in munged munge unmunge runuser slurmctld slurmd sinfo scontrol; do
    command -v "$b" >/dev/null || die "$b missing (apt-get install -y slurm-wlm munge)"
done
mkdir -p "$PIDS" "$LOGS" "$BASE/state" "$BASE/spool" /etc/slurm
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts

# munge: must run as user munge (as root it demands a root-owned key)
munge_ok() { munge -n -S "$SOCK" | unmunge -S "$SOCK" >/dev/null; }
if alive "$PIDS/munged.pid" munged || munge_ok 2>/dev/null; then
    log "munged already running"
else
    [ -s /etc/munge/munge.key ] || mungekey --create --force
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    rm -f "$SOCK" "$SOCK.lock" /run/munge/munged.pid
    runuser -u munge -- munged --force --socket="$SOCK" || die "munged failed"
    wait_for munged /run/munge/munged.pid munged munge_ok
    cp /run/munge/munged.pid "$PIDS/munged.pid"   # mark as ours for stop-slurm.sh
    log "munged started (pid $(cat "$PIDS/munged.pid"))"
fi

MARK="# written by weft tests/slurm/start-slurm.sh"
if [ -f "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not replacing a real cluster's config"
fi
NEW=$(mktemp)
cat >"$NEW" <<EOF
$MARK
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthInfo=socket=$SOCK,cred_expire=${SLURM_CI_CRED_EXPIRE:-10}
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=16
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
stop_pid() {  # stop one of our daemons (config changed)
    alive "$1" "$2" || return 0
    kill "$(cat "$1")"
    for _ in $(seq 1 40); do alive "$1" "$2" || return 0; sleep 0.25; done
    kill -9 "$(cat "$1")" 2>/dev/null || true
}
if ! cmp -s "$NEW" "$CONF"; then
    stop_pid "$PIDS/slurmd.pid" slurmd; stop_pid "$PIDS/slurmctld.pid" slurmctld
    install -m 0644 "$NEW" "$CONF"; log "wrote $CONF (CPUs=$CPUS RealMemory=$MEM)"
fi
rm -f "$NEW"

if alive "$PIDS/slurmctld.pid" slurmctld; then log "slurmctld already running"
else
    slurmctld -f "$CONF" || die "slurmctld failed"
    wait_for slurmctld "$PIDS/slurmctld.pid" slurmctld scontrol ping
    log "slurmctld started (pid $(cat "$PIDS/slurmctld.pid"))"
fi
if alive "$PIDS/slurmd.pid" slurmd; then log "slurmd already running"
else
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed"
    wait_for slurmd "$PIDS/slurmd.pid" slurmd alive "$PIDS/slurmd.pid" slurmd
    log "slurmd started (pid $(cat "$PIDS/slurmd.pid"))"
fi

state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }
node_ready() {
    case "$(state)" in
        idle|mixed|allocated) return 0 ;;
        drain*|down*|fail*) scontrol update NodeName="$NODE" State=RESUME; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for "node $NODE" "$PIDS/slurmd.pid" slurmd node_ready
log "ready: $NODE $(state) after $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
