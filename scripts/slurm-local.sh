#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this machine: the scheduler to rehearse cluster sweeps
# on a laptop or a CI box (Debian or Ubuntu, as root), and the one the `slurm` tests run against.
#
#   sudo scripts/slurm-local.sh start    install the packages (once), write the configuration, start
#                                        munge, MariaDB, slurmdbd, slurmctld and slurmd; wait until the
#                                        node takes jobs. Running it again with everything up does nothing.
#   scripts/slurm-local.sh status        the daemons and the node; exit 0 when jobs can run, 3 otherwise
#   sudo scripts/slurm-local.sh stop     stop the daemons it started (by pid)
#
# Written for machines without systemd and without cgroups (containers, CI runners): nothing is enabled
# as a service, processes are tracked by /proc (proctrack/linuxproc), and no task plugin confines jobs.
# Each job gets its share of memory (DefMemPerCPU), so several jobs run side by side; an impossible
# request (a GPU on this node, more CPUs than it has) fails at submission (EnforcePartLimits=ALL) instead
# of pending forever. A requeued job starts again within about 30 s (cred_expire=10) and is started by
# the main scheduler (sched/builtin): a requeued job the backfill scheduler starts gets SLURM 22.05's
# time-limit signal (--signal) at once, and dies before it can handle it (sacct: FAILED 12:0).
# Settings: SLURM_LOCAL_PARTITION (default: debug), SLURM_LOCAL_STATE (default: /var/lib/seal-exp-slurm).
set -euo pipefail

PARTITION=${SLURM_LOCAL_PARTITION:-debug}
STATE=${SLURM_LOCAL_STATE:-/var/lib/seal-exp-slurm}
CONF_DIR=/etc/slurm
MARK="# written by seal-exp scripts/slurm-local.sh"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
DB_PASS_FILE=$STATE/db-password
LOG=$STATE/log

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (sudo $0 $1): it installs packages and starts system daemons"
}

pid_file() {  # pid_file <daemon>: where its pid is kept
    case "$1" in
    munged) echo /run/munge/munged.pid ;;
    mariadb) echo /run/mysqld/mysqld.pid ;;
    *) echo "$STATE/run/$1.pid" ;;
    esac
}

running() {  # running <pid file>: whether the process it names is alive
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for <seconds> <what> <command...>
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 5))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what did not come up within $seconds s; see $LOG/"
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu) to install: ${missing[*]}"
    say "installing ${missing[*]}"
    # the packages must not try to start services (no systemd here): policy-rc.d refuses it
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        >"$LOG/apt.log" 2>&1; then
        apt-get update >>"$LOG/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
            >>"$LOG/apt.log" 2>&1 || { rm -f /usr/sbin/policy-rc.d; die "apt-get failed; see $LOG/apt.log"; }
    fi
    rm -f /usr/sbin/policy-rc.d
}

write_config() {
    local host cpus mem_mb per_cpu
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    per_cpu=$((mem_mb / cpus))
    if [ -f $CONF_DIR/slurm.conf ] && ! grep -q "$MARK" $CONF_DIR/slurm.conf; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script: this machine has its own SLURM"
    fi
    mkdir -p $CONF_DIR "$STATE"/{ctld,slurmd,run}
    chown slurm:slurm "$STATE/ctld" "$STATE/run" "$LOG"
    cat >$CONF_DIR/slurm.conf <<EOF
$MARK
ClusterName=sealexp
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SchedulerType=sched/builtin
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$per_cpu
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=300
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    [ -s "$DB_PASS_FILE" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
    cat >$CONF_DIR/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm $CONF_DIR/slurmdbd.conf
    chmod 600 $CONF_DIR/slurmdbd.conf
}

start_munge() {
    running "$(pid_file munged)" && return
    mkdir -p /etc/munge
    chown munge:munge /etc/munge
    chmod 700 /etc/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --force
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged --force
    wait_for 10 munged test -S /run/munge/munge.socket.2
}

start_mariadb() {
    if ! running "$(pid_file mariadb)"; then
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$LOG/mariadb-install.log" 2>&1
        runuser -u mysql -- mariadbd --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
            >"$LOG/mariadb.log" 2>&1 &
        wait_for 60 MariaDB mariadb -u root -e "select 1"
    fi
    local pass
    pass=$(cat "$DB_PASS_FILE")
    mariadb -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurm() {
    if ! running "$(pid_file slurmdbd)"; then
        slurmdbd
        wait_for 60 slurmdbd sacctmgr -n list cluster
    fi
    sacctmgr -n list cluster format=cluster | grep -qw sealexp || sacctmgr -i add cluster sealexp >/dev/null
    if ! running "$(pid_file slurmctld)"; then
        slurmctld
        wait_for 30 slurmctld scontrol ping
    fi
    if ! running "$(pid_file slurmd)"; then
        slurmd
    fi
    wait_for 60 "the node" node_takes_jobs
}

node_takes_jobs() {
    local state
    state=$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -n1)
    case "$state" in
    idle* | mixed* | allocated* | completing*) return 0 ;;
    down* | drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
    esac
}

start() {
    need_root start
    if node_takes_jobs 2>/dev/null; then
        say "already up ($(sinfo -h -o '%P %D %T' | head -n1))"
        return
    fi
    mkdir -p "$LOG"
    local started=$SECONDS
    install_packages
    write_config
    start_munge
    start_mariadb
    start_slurm
    say "up in $((SECONDS - started)) s: partition $PARTITION on $(hostname -s), $(nproc) CPUs; logs in $LOG/"
}

stop() {
    need_root stop
    for daemon in slurmd slurmctld slurmdbd mariadb munged; do
        local pid_file
        pid_file=$(pid_file $daemon)
        if running "$pid_file"; then
            local pid
            pid=$(cat "$pid_file")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
            say "stopped $daemon"
        fi
        rm -f "$pid_file"
    done
}

status() {
    local up=0
    for daemon in munged mariadb slurmdbd slurmctld slurmd; do
        if running "$(pid_file $daemon)"; then
            echo "$daemon: running (pid $(cat "$(pid_file $daemon)" 2>/dev/null))"
        else
            echo "$daemon: not running"
        fi
    done
    if command -v sinfo >/dev/null && node_takes_jobs; then
        sinfo
        up=1
    fi
    [ $up = 1 ] || { say "no cluster takes jobs here (sudo $0 start)"; exit 3; }
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
