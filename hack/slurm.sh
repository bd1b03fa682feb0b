#!/usr/bin/env bash
# A throw-away two-node Slurm cluster on this host for drun's integration tests
# (Debian 12, Slurm 22.05, daemons started by hand: no systemd).
#
#   hack/slurm.sh up DIR [--sacct]  create DIR, start munged, slurmctld, slurmd n1 + n2; wait until both are idle
#   hack/slurm.sh env DIR           print what a client needs: eval "$(hack/slurm.sh env DIR)"; srun -N2 hostname
#   hack/slurm.sh down DIR          cancel jobs, stop the daemons by their pidfiles, remove the cluster's cgroups
#
# Everything (confs, munge key/socket, state, spool, logs, pidfiles) lives under DIR.
# Both nodes run on this host (NodeAddr=127.0.0.1, own ports; Debian's slurmd is
# built with multiple-slurmd support: `slurmd -N`), each with 2 CPUs, 1000 MB and
# Gres=gpu:2 backed by the same fake devices DIR/dev/nvidia0 (c 195:0) and
# DIR/dev/nvidia1 (c 195:1).  No driver is loaded, so opening an allowed node gives
# ENXIO while one the step's devices cgroup denies gives EPERM.
#
# Exit codes: `scontrol show job ID` keeps finished jobs an hour (MinJobAge):
# ExitCode= (batch script) and DerivedExitCode= (highest step); DIR/jobcomp.txt
# gets a line per finished job.  Per-step records need slurmdbd (22.05 has no
# filetxt accounting): --sacct adds a private MariaDB + slurmdbd under DIR/dbd
# (~85 MB RAM, ~80 MB disk, +3-7 s) for `sacct -j ID -o JobID,ExitCode`.
#
# Caveats: DIR is made 0755 so unprivileged users can read slurm.conf and reach
# the munge socket (the key stays in a 0700 dir).  The v1 cgroups are
# /sys/fs/cgroup/<ctrl>/slurm_<node>/uid_U/job_J/step_S/task_T: two clusters with
# the same node names on one host would share them.
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

usage() { die "usage: $0 up DIR [--sacct] | down DIR | env DIR"; }
[ $# -ge 2 ] || usage
CMD=$1
D=$(realpath -m "$2")
SACCT=
case "${3:-}" in --sacct) SACCT=1 ;; "") ;; *) usage ;; esac
# An existing DIR keeps its configuration (ports, cluster name, accounting).
if [ -f "$D/slurm.conf" ]; then SACCT=$([ ! -f "$D/slurmdbd.conf" ] || echo 1); fi
NODES=(n1 n2)
CONF_PAT="-f $D/slurm.conf" # how pid_is_ours recognises our slurmctld and slurmds
# slurmdbd's private MariaDB: small files, root without a password over loopback TCP
DB_OPTS=(--no-defaults --user=root --innodb-log-file-size=4M --innodb-buffer-pool-size=16M)

retry() { # TRIES CMD...: run CMD every 0.1 s until it succeeds
    local i
    for ((i = 0; i < $1; i++)); do "${@:2}" && return 0; sleep 0.1; done
    return 1
}
gone() { ! kill -0 "$1" 2>/dev/null; }
listening() { ss -Hltn "sport = :$1" | grep -q .; }
no_jobs() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; } # squeue lists jobs until they finish completing
mysql_up() { mariadb --no-defaults -h 127.0.0.1 -P "$1" -u root -e 'select 1' >/dev/null 2>&1; }

stop_pids() { # PID...: TERM them together (each takes ~2 s to shut down), KILL after 10 s
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        retry 100 gone "$p" || { log "pid $p ignored SIGTERM, killing"; kill -KILL "$p" 2>/dev/null || true; }
    done
}
ours() { if pid_is_ours "$1" "$2"; then cat "$1"; fi; } # PIDFILE PATTERN: its pid if ours

# slurmdbd has no -f (it reads slurmdbd.conf next to $SLURM_CONF): check its environment.
dbd_pid() {
    pid_is_ours "$D/dbd/slurmdbd.pid" slurmdbd || return 1
    tr '\0' '\n' <"/proc/$(cat "$D/dbd/slurmdbd.pid")/environ" | grep -qxF "SLURM_CONF=$D/slurm.conf" || return 1
    cat "$D/dbd/slurmdbd.pid"
}

# The v1 cgroups slurmd creates (a multiple-slurmd build names the root slurm_<node>).
node_cgroups() { local n; for n in "${NODES[@]}"; do ls -d /sys/fs/cgroup/*/slurm_"$n" 2>/dev/null || true; done; }
rm_cgroup() { find "$1" -depth -type d -exec rmdir {} + 2>/dev/null; [ ! -d "$1" ]; }

free_port_base() { # N: first of N consecutive free TCP ports in 20000-29999
    local used b i ok
    used=$(ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u)
    for _ in $(seq 50); do
        b=$((20000 + RANDOM % 9990)) ok=1
        for ((i = 0; i < $1; i++)); do grep -qx "$((b + i))" <<<"$used" && ok=0; done
        [ $ok = 1 ] && { echo "$b"; return 0; }
    done
    die "no free port range"
}

dump_logs() {
    local f
    for f in "$D"/munge/munged.log "$D"/dbd/*.log "$D"/ctld/slurmctld.log "$D"/n?/slurmd.log; do
        if [ -f "$f" ]; then echo "==> $f" >&2; tail -n 30 "$f" >&2; fi
    done
}

write_conf() { # PORT: slurmctld PORT, slurmd PORT+1 and +2, slurmdbd +3, mariadb +4
    local p=$1 acct="AccountingStorageType=accounting_storage/none"
    [ -z "$SACCT" ] || acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((p + 3))
# the connection to slurmdbd takes its munge socket from here, not from AuthInfo
AccountingStoragePass=$D/munge/munge.sock"
    cat >"$D/slurm.conf" <<EOF
ClusterName=drun$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
SlurmctldHost=localhost
SlurmctldPort=$p
SlurmUser=root
SlurmdUser=root
# auth/munge and cred/munge both take the (non-default) munge socket from AuthInfo
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.sock
StateSaveLocation=$D/ctld
SlurmctldPidFile=$D/ctld/slurmctld.pid
SlurmctldLogFile=$D/ctld/slurmctld.log
# %n is the node name, so each slurmd -N gets its own files
SlurmdSpoolDir=$D/%n/spool
SlurmdPidFile=$D/%n/slurmd.pid
SlurmdLogFile=$D/%n/slurmd.log
# Per node too: the PMIx plugin makes TmpFS/spmix_appdir_UID_JOB.STEP, which both nodes' step daemons would
# otherwise both try to create on this one host (EEXIST, and the step fails to launch)
TmpFS=$D/%n/tmp
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
# finished jobs stay visible to scontrol for an hour
MinJobAge=3600
# a job queued behind a completing one starts within a second, not up to 60 s
SchedulerParameters=sched_interval=1,batch_sched_delay=0
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
# trust the node lines below, not the hardware slurmd sees (no drain on mismatch)
SlurmdParameters=config_overrides
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((p + 1)) CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((p + 2)) CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
    # Hybrid host (v1 controllers + an empty cgroup2 at unified/): 22.05's
    # autodetect picks v1 here too; say so explicitly.
    printf '%s\n' CgroupPlugin=cgroup/v1 CgroupAutomount=no ConstrainDevices=yes >"$D/cgroup.conf"
    echo "Name=gpu File=$D/dev/nvidia[0-1]" >"$D/gres.conf"
    chmod 644 "$D"/{slurm,cgroup,gres}.conf
    [ -n "$SACCT" ] || return 0
    install -m 600 /dev/stdin "$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.sock
DbdHost=localhost
DbdPort=$((p + 3))
SlurmUser=root
PidFile=$D/dbd/slurmdbd.pid
LogFile=$D/dbd/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((p + 4))
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

make_devices() {
    mkdir -p "$D/dev"
    # Device nodes on a nodev mount cannot be opened at all (EACCES): use a tmpfs.
    if findmnt -no OPTIONS -T "$D/dev" | tr , '\n' | grep -qx nodev; then
        mount -t tmpfs -o mode=755,size=64k,nosuid drun-slurm-dev "$D/dev"
    fi
    local i
    for i in 0 1; do [ -e "$D/dev/nvidia$i" ] || mknod -m 666 "$D/dev/nvidia$i" c 195 "$i"; done
}

start_dbd() {
    local port
    port=$(sed -n 's/^StoragePort=//p' "$D/slurmdbd.conf")
    if [ ! -d "$D/dbd/db/mysql" ]; then
        mariadb-install-db "${DB_OPTS[@]}" --datadir="$D/dbd/db" --skip-test-db \
            --auth-root-authentication-method=normal >"$D/dbd/install.log" 2>&1 ||
            { dump_logs; die "mariadb-install-db failed"; }
    fi
    # (a plain command in the background: no subshell left holding our stdout)
    if ! pid_is_ours "$D/dbd/mariadb.pid" "$D/dbd/db"; then
        setsid mariadbd "${DB_OPTS[@]}" --datadir="$D/dbd/db" --bind-address=127.0.0.1 --port="$port" \
            --socket="$D/dbd/mariadb.sock" --pid-file="$D/dbd/mariadb.pid" --log-error="$D/dbd/mariadb.log" \
            --skip-name-resolve --performance-schema=0 </dev/null >/dev/null 2>&1 &
    fi
    retry 300 mysql_up "$port" || { dump_logs; die "mariadb did not start"; }
    dbd_pid >/dev/null || slurmdbd || { dump_logs; die "slurmdbd failed"; }
    # slurmctld needs slurmdbd answering (it fetches the TRES list at start)
    retry 100 listening "$(sed -n 's/^DbdPort=//p' "$D/slurmdbd.conf")" || { dump_logs; die "slurmdbd not listening"; }
}

up() {
    # libpmix-dev: Slurm's mpi/pmix plugin dlopens pmix2/lib/libpmix.so, the unversioned name only -dev ships
    need_pkgs munge slurmctld slurmd slurm-client libpmix-dev
    [ -z "$SACCT" ] || need_pkgs slurmdbd mariadb-server
    local n c t0=$SECONDS states
    pid_is_ours "$D/n1/slurmd.pid" "$CONF_PAT" || for c in $(node_cgroups); do
        [ -z "$(find "$c" -name cgroup.procs -exec cat {} +)" ] || die "$c has processes: another cluster with these node names?"
    done
    mkdir -p "$D"/{munge/key,ctld,dbd}
    chmod 755 "$D" "$D/munge"
    chmod 700 "$D/munge/key" "$D/ctld" "$D/dbd" # private: key, state, database
    for n in "${NODES[@]}"; do mkdir -p "$D/$n/spool" "$D/$n/tmp"; chmod 1777 "$D/$n/tmp"; done
    make_devices
    [ -f "$D/slurm.conf" ] || write_conf "$(free_port_base 5)"
    export SLURM_CONF=$D/slurm.conf

    # munged insists on a private key file and an owner-only socket directory.
    [ -s "$D/munge/key/munge.key" ] || {
        dd if=/dev/urandom of="$D/munge/key/munge.key" bs=1024 count=1 status=none
        chmod 400 "$D/munge/key/munge.key"
    }
    pid_is_ours "$D/munge/munged.pid" "$D/munge/" ||
        munged --key-file="$D/munge/key/munge.key" --socket="$D/munge/munge.sock" \
            --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
            --seed-file="$D/munge/key/munged.seed" || { dump_logs; die "munged failed"; }
    [ -z "$SACCT" ] || start_dbd

    # These daemons fork and write their own pidfiles (-i: carry on past state
    # files an earlier run in DIR left unreadable).
    pid_is_ours "$D/ctld/slurmctld.pid" "$CONF_PAT" || slurmctld -i -f "$D/slurm.conf" || { dump_logs; die "slurmctld failed"; }
    for n in "${NODES[@]}"; do
        pid_is_ours "$D/$n/slurmd.pid" "$CONF_PAT" || slurmd -N "$n" -f "$D/slurm.conf" || { dump_logs; die "slurmd $n failed"; }
    done
    while :; do
        states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ') || true
        [ "$states" = "n1=idle n2=idle " ] && break
        if ((SECONDS - t0 > 60)); then
            dump_logs
            die "nodes not idle after 60s: ${states:-no answer from slurmctld}"
        fi
        sleep 0.2
    done
    log "cluster up in $((SECONDS - t0))s: export SLURM_CONF=$D/slurm.conf"
}

down() {
    [ -f "$D/slurm.conf" ] || { log "no cluster in $D"; return 0; }
    export SLURM_CONF=$D/slurm.conf
    local n c pids
    if pid_is_ours "$D/ctld/slurmctld.pid" "$CONF_PAT"; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        retry 100 no_jobs || log "warning: jobs still listed after scancel"
    fi
    # shellcheck disable=SC2046 # (pids) slurmctld flushes to slurmdbd, both need munged
    stop_pids $(for n in "${NODES[@]}"; do ours "$D/$n/slurmd.pid" "$CONF_PAT"; done) \
        $(ours "$D/ctld/slurmctld.pid" "$CONF_PAT")
    # shellcheck disable=SC2046
    stop_pids $(dbd_pid || true) $(ours "$D/munge/munged.pid" "$D/munge/")
    # shellcheck disable=SC2046
    stop_pids $(ours "$D/dbd/mariadb.pid" "$D/dbd/db")

    # Steps that outlived slurmd (slurmstepd and its tasks) sit in this cluster's cgroups.
    for c in $(node_cgroups); do
        pids=$(find "$c" -name cgroup.procs -exec cat {} + | sort -u | tr '\n' ' ')
        if [ -n "$pids" ]; then
            log "killing leftover step processes: $pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    done
    for c in $(node_cgroups); do # (killed tasks take a moment to leave)
        retry 50 rm_cgroup "$c" || log "warning: could not remove $c"
    done
    if mountpoint -q "$D/dev"; then umount "$D/dev"; fi
    log "cluster in $D stopped"
}

case $CMD in
up) up ;;
down) down ;;
env) echo "export SLURM_CONF=$D/slurm.conf" ;;
*) usage ;;
esac
