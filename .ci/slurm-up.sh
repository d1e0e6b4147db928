#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for the sweep tests.
# Idempotent: installs the packages if missing, rewrites the config, (re)starts the daemons.
# Needs root (apt-get, daemons). Stop it with .ci/slurm-down.sh.
#   SLURM_CONF        config file to write (default /etc/slurm/slurm.conf, where clients look)
#   MTBENCH_SLURM_DIR state, spool and logs (default /tmp/mtbench-slurm)
set -euo pipefail
conf=${SLURM_CONF:-/etc/slurm/slurm.conf}
state=${MTBENCH_SLURM_DIR:-/tmp/mtbench-slurm}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

"$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true
mkdir -p "$state/ctld" "$state/d" "$(dirname "$conf")" /run/munge
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
runuser -u munge -- /usr/sbin/munged

host=$(hostname -s)
# The machine's own CPUs and memory, as slurmd sees them (first line of `slurmd -C`).
node=$(slurmd -C | head -n 1 | sed -E 's/ UpTime=.*//; s/NodeName=[^ ]+/NodeName='"$host"'/')
cat >"$conf" <<CONF
ClusterName=mtbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MaxArraySize=100000
MinJobAge=300
KillWait=5
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF=$conf
slurmctld -i
slurmd
for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "slurm up: $(sinfo -h -N -o '%N %c CPUs %m MB %T')"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up; logs in $state: $(tail -n 3 "$state"/slurm*.log 2>/dev/null | tr '\n' ' ')" >&2
exit 1
