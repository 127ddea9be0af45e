#!/usr/bin/env bash
# Stop the single-node Slurm started by slurm/local/start.sh from STATE_DIR.
#
#   slurm/local/stop.sh [STATE_DIR]   (default: ${IONFLOW_SLURM_DIR:-/tmp/ionflow-slurm})
#
# Cancels the cluster's jobs, stops slurmd and slurmctld (SIGTERM, then SIGKILL after 15 s)
# and leaves munged running (it is shared by every Slurm on the host). Idempotent.
set -uo pipefail

STATE=${1:-${IONFLOW_SLURM_DIR:-/tmp/ionflow-slurm}}
[ -d "$STATE" ] || exit 0
STATE=$(cd "$STATE" && pwd)
export SLURM_CONF="$STATE/slurm.conf"

gone() {  # a zombie counts as gone: daemons re-parented to a PID 1 that reaps late
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [ -z "$state" ] || [ "${state:0:1}" = "Z" ]
}

if [ -f "$SLURM_CONF" ]; then
    timeout 10 scancel --full --quiet --user="$(id -un)" >/dev/null 2>&1 || true
fi
for daemon in slurmd slurmctld; do
    pidfile="$STATE/$daemon.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if ! gone "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 150); do
            gone "$pid" && break
            sleep 0.1
        done
        gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
done
echo "slurm/local/stop.sh: Slurm from $STATE stopped"
