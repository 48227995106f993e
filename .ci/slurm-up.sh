#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM test (tests/integration/test_slurm.py).
#
#   .ci/slurm-up.sh        # install (Debian's slurmctld, slurmd, munge) if needed, configure, start, wait idle
#   .ci/slurm-up.sh down   # stop the daemons this script started (by the PIDs in their pid files)
#
# Needs root and apt-get (Debian 12). Does nothing when a cluster already answers (`sinfo` shows a node up),
# so it is safe on a machine that has a real one. The configuration has no cgroups, no accounting and no DNS:
# the controller and the one node are this host at 127.0.0.1, partition `debug`; state and logs go to $STATE.
# The node claims at least 4 CPUs (more than a 2-core CI machine has), so that small jobs run side by side.
# Settings that matter, as found on these machines: EnforcePartLimits=ALL (an impossible request fails at
# once instead of pending forever), MinJobAge=3600 (`scontrol show job` still knows a finished job: without
# accounting, `sacct` cannot tell submitit), batch_sched_delay=0 (jobs start ~1 s sooner).
set -euo pipefail
STATE=${DISTRI_SLURM_STATE:-/tmp/distri-slurm}
CONF=/etc/slurm/slurm.conf

stop() {  # the daemons named (slurmd slurmctld munged), by the PIDs in their pid files
    for d in "$@"; do
        f="$STATE/$d.pid"
        [ "$d" = munged ] && f=/run/munge/munged.pid
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 1 20); do  # a slurmd stuck on munge can ignore SIGTERM for a while
            state=$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)
            { [ -z "$state" ] || [ "$state" = Z ]; } && continue 2
            sleep 0.25
        done
        kill -9 "$pid" 2>/dev/null || true
    done
}

if [ "${1:-up}" = down ]; then
    stop slurmd slurmctld munged
    exit 0
fi

node_up() { timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; }
if command -v sinfo >/dev/null && node_up; then
    echo "slurm-up: a cluster already answers:"; sinfo
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
fi

# munge: a key owned by munge (0400), its run folder, the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! { [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    runuser -u munge -- /usr/sbin/munged
fi

host=$(hostname -s)
cpus=$(( $(nproc) < 4 ? 4 : $(nproc) ))  # at least 4 (config_overrides): the test's two jobs run side by side
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
cat >"$CONF" <<EOF
# written by distri's .ci/slurm-up.sh: a single-node test cluster
ClusterName=distri
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
MinJobAge=3600
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

stop slurmd slurmctld  # of an earlier bring-up, if any
sleep 0.5
slurmctld -c
slurmd -N "$host"
for _ in $(seq 1 60); do
    node_up && { echo "slurm-up: node $host idle (state and logs in $STATE)"; exit 0; }
    sleep 0.5
done
echo "slurm-up: the node did not come up within 30 s; logs:" >&2
tail -n 20 "$STATE"/slurmctld.log "$STATE"/slurmd.log >&2 || true
exit 1
