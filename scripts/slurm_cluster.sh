#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests of `riskcl sweep --launcher slurm` (and for trying it):
#
#   sudo scripts/slurm_cluster.sh start    # munged, slurmctld and slurmd (Debian's slurm-wlm and munge, as root)
#   sudo scripts/slurm_cluster.sh stop
#   scripts/slurm_cluster.sh status
#
# The node is this host with its CPUs and memory, in one partition `debug`; process tracking by
# proctrack/linuxproc and no task plugin (no cgroups needed). State and logs go to $SLURM_STATE (default
# /tmp/riskcl-slurm). `apt-get install slurm-wlm munge` first (.ci/run does).
set -euo pipefail
STATE="${SLURM_STATE:-/tmp/riskcl-slurm}"
CONF_DIR=/etc/slurm
HOST="$(hostname -s)"

start() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || { echo "slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)" >&2; exit 3; }
  [ "$(id -u)" -eq 0 ] || { echo "starting the daemons needs root" >&2; exit 3; }
  mkdir -p "$STATE/ctld" "$STATE/d" "$CONF_DIR" /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=riskcl
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 30); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "slurm: one-node cluster up on $HOST ($cpus CPUs)"; return 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm: the node did not come up; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
  exit 4
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  echo "slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
