#!/usr/bin/env bash
# Install a single-node Slurm (controller + compute daemon + client tools) and munge.
# Idempotent: does nothing when the daemons and tools are already installed.
# Debian/Ubuntu only; needs root (or passwordless sudo). Used by the Makefile target
# `slurm` and by tests/test_slurm.py; see slurm/README.md.
set -euo pipefail

need=()
for exe in slurmctld slurmd sbatch squeue sacct scancel srun munged munge; do
    if ! command -v "$exe" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$exe" ]; then
        need+=("$exe")
    fi
done
if [ ${#need[@]} -eq 0 ]; then
    echo "slurm/local/install.sh: Slurm and munge already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "slurm/local/install.sh: need root (or passwordless sudo) to apt-get install" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm/local/install.sh: apt-get not found (Debian/Ubuntu only)" >&2
    exit 1
fi
echo "slurm/local/install.sh: installing slurmctld slurmd slurm-client munge (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d: the packages' postinst must not try to start services (no systemd here)
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
echo "slurm/local/install.sh: done (slurm $(dpkg-query -W -f="${Version}" slurmctld 2>/dev/null))"
