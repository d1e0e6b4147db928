#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm-up.sh (only those: read from their pid files).
set -uo pipefail
state=${MTBENCH_SLURM_DIR:-/tmp/mtbench-slurm}
for name in slurmd slurmctld; do
    if [ -s "$state/$name.pid" ]; then
        kill "$(cat "$state/$name.pid")" 2>/dev/null || true
    fi
done
munge_pid=/run/munge/munged.pid
if [ -s "$munge_pid" ]; then
    kill "$(cat "$munge_pid")" 2>/dev/null || true
fi
sleep 1
rm -f "$state"/*.pid
