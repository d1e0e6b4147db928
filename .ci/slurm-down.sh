#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm-up.sh (only those: read from their pid files) and wait
# for them to exit.
set -uo pipefail
state=${MTBENCH_SLURM_DIR:-/tmp/mtbench-slurm}
pids=()
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid" /run/munge/munged.pid; do
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
done
for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
done
rm -f "$state"/slurmd.pid "$state"/slurmctld.pid
echo "slurm down"
