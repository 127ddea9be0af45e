#!/usr/bin/env bash
# Start a single-node Slurm cluster on this host, by hand (no systemd), for tests and demos.
#
#   slurm/local/start.sh [STATE_DIR]      (default: ${IONFLOW_SLURM_DIR:-/tmp/ionflow-slurm})
#
# Writes STATE_DIR/slurm.conf (and env.sh: `source` it so that sbatch/squeue find the
# config), starts munged (if not running), slurmctld and slurmd, and returns once
# `srun --immediate true` works. Idempotent: a cluster already running from STATE_DIR is
# reused. Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818).
# Needs root (slurmd runs jobs as their owner) and slurm/local/install.sh first.
set -euo pipefail

STATE=${1:-${IONFLOW_SLURM_DIR:-/tmp/ionflow-slurm}}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
NODE=$(hostname -s)
export SLURM_CONF="$STATE/slurm.conf"

alive() {  # pid file -> 0 if the process is alive and not a zombie
    [ -s "$1" ] || return 1
    local pid state
    pid=$(cat "$1")
    state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    [ -n "$state" ] && [ "${state:0:1}" != "Z" ]
}

ready() {
    timeout 20 srun --immediate=5 --quiet true >/dev/null 2>&1
}

if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && ready; then
    echo "slurm/local/start.sh: Slurm already running from $STATE"
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
fi

for exe in slurmctld slurmd munged srun; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || {
        echo "slurm/local/start.sh: $exe not found: run slurm/local/install.sh" >&2
        exit 1
    }
done
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm/local/start.sh: must run as root" >&2
    exit 1
fi

# --- munge: one key per host, one daemon per host -----------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    # --force: a stale socket/pid left by a crashed munged would otherwise stop it
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n </dev/null | unmunge >/dev/null || {
        echo "slurm/local/start.sh: munged does not work" >&2
        exit 1
    }
fi

# --- slurm.conf ------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
[ "$MEM_MB" -gt 4000 ] && MEM_MB=4000
mkdir -p "$STATE/spool" "$STATE/state" "$STATE/log"
cat >"$SLURM_CONF" <<CONF
# Written by ionflow slurm/local/start.sh: a one-node test cluster.
ClusterName=ionflow-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
ReturnToService=2
# fast turnaround for tests: short kill grace, finished jobs visible in squeue for 5 min
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$STATE/env.sh"

# --- daemons -----------------------------------------------------------------------------
# Started in their own session so that they outlive this script; the pid files are ours
# (the daemons' own pid files are written too). -i: ignore unreadable state after a crash.
if ! alive "$STATE/slurmctld.pid"; then
    setsid /usr/sbin/slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 &
    echo $! >"$STATE/slurmctld.pid"
fi
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.1
done
if ! alive "$STATE/slurmd.pid"; then
    setsid /usr/sbin/slurmd -D -N "$NODE" -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmd.out" 2>&1 &
    echo $! >"$STATE/slurmd.pid"
fi

deadline=$((SECONDS + 60))
until ready; do
    if ! alive "$STATE/slurmctld.pid" || ! alive "$STATE/slurmd.pid"; then
        echo "slurm/local/start.sh: a Slurm daemon exited; logs:" >&2
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "slurm/local/start.sh: Slurm did not become ready in 60 s" >&2
        sinfo -N -l >&2 || true
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        exit 1
    fi
    # a node left DOWN/DRAIN by an earlier run of this state dir: bring it back
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
echo "slurm/local/start.sh: Slurm ready (state $STATE, node $NODE, $CPUS CPUs)"
echo "export SLURM_CONF=$SLURM_CONF"
