#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (the node is this host, sized from `slurmd -C`), for the
# `slurm` tests (tests/slurm) and for trying the Slurm launcher profiles before using a real cluster.
#
#   sudo scripts/start_slurm.sh          # installs slurmctld, slurmd, slurm-client and munge (Debian/Ubuntu)
#   sinfo                                # -> partition "local", one idle node
#   python -m pytest -m slurm tests/slurm -q
#
# Idempotent: packages, the munge key and slurm.conf are created only when missing or different, daemons are
# started only when not running. Works without systemd (containers, CI): the daemons are started directly.
set -euo pipefail

SLURM_CONF_DIR=/etc/slurm
SLURM_CONF=$SLURM_CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (sudo $0): it installs packages and starts system daemons" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
  echo "installing slurmctld, slurmd, slurm-client and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# munge authenticates every Slurm RPC; one key shared by the (single) node.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n >/dev/null 2>&1; then
  su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 1 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n >/dev/null || { echo "error: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1; }
fi

HOST=$(hostname -s)
# The node line as slurmd measures it (CPUs, sockets, cores, threads, RealMemory), minus 1 GiB for the OS.
NODE_LINE=$(slurmd -C | head -n1 | awk '{
  for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) { split($i, kv, "="); m = kv[2] - 1024; if (m < 512) m = kv[2]; $i = "RealMemory=" m }
  print }')
mkdir -p "$SLURM_CONF_DIR" "$LOG_DIR" /var/spool/slurmd /var/spool/slurmctld
NEW_CONF=$(cat <<CONF
# One-node cluster written by scripts/start_slurm.sh; rerun the script after changing the machine.
ClusterName=rlhf-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
# No cgroup hierarchy is needed (containers often lack a writable one).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=10
$NODE_LINE State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" > "$SLURM_CONF"
  CHANGED=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! running /run/slurmctld.pid; then
  slurmctld
elif [ "$CHANGED" = 1 ]; then
  scontrol reconfigure
fi
if ! running /run/slurmd.pid; then
  slurmd
fi

for _ in $(seq 1 60); do
  scontrol ping 2>/dev/null | grep -q UP && break
  sleep 1
done
scontrol ping | grep -q UP || { echo "error: slurmctld is not answering (see $LOG_DIR/slurmctld.log)" >&2; exit 1; }

# A node left DOWN/DRAIN by an earlier unclean stop comes back; an idle or busy one is left alone.
for _ in $(seq 1 60); do
  STATE=$(sinfo -h -n "$HOST" -o %T | head -n1)
  case "$STATE" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
STATE=$(sinfo -h -n "$HOST" -o %T | head -n1)
case "$STATE" in
  idle*|mixed*|allocated*|completing*) ;;
  *) echo "error: node $HOST is '$STATE' (see $LOG_DIR/slurmd.log and sinfo -R)" >&2; exit 1 ;;
esac
sinfo
