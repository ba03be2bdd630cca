#!/usr/bin/env bash
# A one-node Slurm cluster in a folder, for tests: no systemd, nothing under /etc or /var.
#
#   tools/slurm-one-node.sh start DIR    starts munged, slurmctld and slurmd with their state in
#                                        DIR; prints `SLURM_CONF=DIR/slurm.conf` once the node
#                                        takes jobs (sbatch, squeue and scontrol need it set)
#   tools/slurm-one-node.sh stop DIR     stops them (by the pids they wrote in DIR)
#
# Needs Debian's `slurm-wlm` and `munge` (apt-get install slurm-wlm munge) and root: slurmd
# starts each job as its submitter. The node has the machine's CPUs, or SLURM_ONE_NODE_CPUS
# (more than the machine has is allowed: jobs then share cores, which a test of scheduling
# wants and a benchmark would not). Ports: SLURM_ONE_NODE_PORT and the next one (default: one
# picked at random, so two clusters on one machine do not meet).
#
# Why the settings: proctrack/linuxproc and task/none need no cgroups (containers and CI
# machines often have none to give); JobRequeue=1 lets `scontrol requeue` and `--requeue` work;
# accounting is off (no slurmdbd); state and spool stay in DIR, so `stop` and `rm -rf DIR`
# leave nothing behind.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$2

stop() {
    # slurmd first, so that no job step outlives the controller that would clean it up.
    for daemon in slurmd slurmctld munged; do
        local pidfile="$dir/$daemon.pid"
        [ -s "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

case "$action" in
stop)
    stop
    exit 0
    ;;
start) ;;
*) usage ;;
esac

for tool in munged mungekey slurmctld slurmd sbatch scontrol sinfo; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "$tool not found: apt-get install slurm-wlm munge" >&2
        exit 3
    fi
done
export PATH="$PATH:/usr/sbin"
if [ "$(id -u)" != 0 ]; then
    echo "slurmd must run as root (it starts jobs as their submitters)" >&2
    exit 3
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# munged refuses a socket folder that others can write to, and slurmd one where the spool's
# parent is not its own.
chmod 700 "$dir"
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
trap 'stop; echo "the cluster did not start; logs in $dir/log" >&2' ERR

# munge: the key, then the daemon with its socket in DIR. It refuses to run as root unless forced.
dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge.key"
munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed"

cpus=${SLURM_ONE_NODE_CPUS:-$(nproc)}
# Two free ports in a row, below the kernel's ephemeral range (32768 and up on Linux, where
# every connecting or any-port program on the machine gets its ports), checked by binding them.
free_ports() {
    python3 - <<'PY'
import random, socket
for _ in range(500):
    port = random.randrange(10000, 30000)
    try:
        for p in (port, port + 1):
            s = socket.socket()
            s.bind(("0.0.0.0", p))
            s.close()
    except OSError:
        continue
    print(port)
    break
PY
}
port=${SLURM_ONE_NODE_PORT:-$(free_ports)}
cat >"$dir/slurm.conf" <<EOF
# written by tools/slurm-one-node.sh
ClusterName=unoflow-test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$dir/munge.sock,cred_expire=5
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
PlugStackConfig=$dir/plugstack.conf
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=30
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: >"$dir/plugstack.conf"
export SLURM_CONF="$dir/slurm.conf"

# In the foreground (-D) but in the background here, logs to files, so that this script's
# output ends when it does; each writes its pid file.
slurmctld -D -i -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
ctld=$!
slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd.out" 2>&1 &

# Ready when the node is idle (it registered and takes jobs); 30 s by the clock (a `sinfo` with
# no controller to answer takes seconds), and at once if the controller died (a port taken).
end=$((SECONDS + 30))
while [ "$SECONDS" -lt "$end" ]; do
    if ! kill -0 "$ctld" 2>/dev/null; then
        state="slurmctld exited"
        break
    fi
    state=$(timeout 3 sinfo -h -n localhost -o %t 2>/dev/null || true)
    if [ "$state" = idle ]; then
        trap - ERR
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
stop
echo "the cluster did not start within 30 s (node state: ${state:-none}; ports $port, $((port + 1))); logs in $dir/log:" >&2
tail -n 20 "$dir"/log/* >&2
exit 1
