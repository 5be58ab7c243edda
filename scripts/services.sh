#!/usr/bin/env bash
# The project's services on one machine, for cluster sweeps (docs/cluster.md):
#
#   scripts/services.sh up       install what is missing (as root, with apt-get), then start
#   scripts/services.sh status   what runs, and the environment a client needs
#   scripts/services.sh down     stop what `up` started (nothing else)
#
# `up` starts, each on 127.0.0.1 only and with its state, logs and pid file under the run
# directory: munge (SLURM's authentication), MariaDB + slurmdbd (job accounting, which
# submitit's sacct polling needs), slurmctld + slurmd (a one-node SLURM cluster), PostgreSQL
# (MLflow's store) and `mlflow server` (scripts/mlflow_server.sh) on it. These are private
# instances: Debian's own services and configs in /etc are not used (nor started by the
# install: policy-rc.d forbids it meanwhile). `down` signals exactly the pids in the run
# directory's pid files.
#
# Then, in a shell:  source "$BB_SERVICES_DIR/env"   (SLURM_CONF and MLFLOW_TRACKING_URI)
#
# Settings (environment):
#   BB_SERVICES_DIR      the run directory (default /tmp/backprop-bench-services)
#   BB_SERVICES_INSTALL  1 (default): apt-get install missing packages when root; 0: never
#   BB_PYTHON            the python with mlflow and psycopg2 (default <repo>/.venv/bin/python)
#   BB_MLFLOW_PORT (5000) BB_PG_PORT (5433) BB_MYSQL_PORT (3307)
#   BB_SLURMCTLD_PORT (6817) BB_SLURMD_PORT (6818) BB_SLURMDBD_PORT (6819)
#   BB_SLURM_CPUS        CPUs the node offers to jobs (default: this machine's count)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATES=$ROOT/scripts/services
RUN=${BB_SERVICES_DIR:-/tmp/backprop-bench-services}
PY=${BB_PYTHON:-$ROOT/.venv/bin/python}
MLFLOW_PORT=${BB_MLFLOW_PORT:-5000}
PG_PORT=${BB_PG_PORT:-5433}
MYSQL_PORT=${BB_MYSQL_PORT:-3307}
SLURMCTLD_PORT=${BB_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${BB_SLURMD_PORT:-6818}
SLURMDBD_PORT=${BB_SLURMDBD_PORT:-6819}
CLUSTER=backprop-bench
PARTITION=debug
# Local-only instances: these passwords guard nothing a local root could not read anyway.
PG_USER=backprop_bench
PG_PASSWORD=backprop-bench
PG_DB=mlflow
MYSQL_PASSWORD=backprop-bench
# Start order; `down` goes backwards.
SERVICES=(munge mariadb slurmdbd slurmctld slurmd postgres mlflow)
# What each one's command line holds: a stale pid file may name a pid since reused by
# an unrelated process, which must not count as ours (nor be stopped).
declare -A COMMAND=([munge]=munged [mariadb]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld
    [slurmd]=slurmd [postgres]=postgres [mlflow]="mlflow server")

export SLURM_CONF=$RUN/etc/slurm.conf # every slurm daemon and command reads this one

say() { printf '%s\n' "$*"; }
die() {
    printf 'services.sh: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

pid_of() { # the pid in a service's pid file, if the file exists and names a live process
    local file=$RUN/pid/$1.pid pid
    [[ $1 == postgres ]] && file=$RUN/postgres/data/postmaster.pid # postgres writes its own
    [[ -r $file ]] || return 1
    pid=$(head -n1 "$file" | tr -dc 0-9)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "${COMMAND[$1]}" || return 1
    printf '%s' "$pid"
}

wait_until() { # wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
    local limit=$1 what=$2 start
    shift 2
    start=$(now)
    until "$@" >/dev/null 2>&1; do
        if awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            die "$what did not come up within ${limit} s; see $RUN/log/"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- install

pg_bin() { # the newest installed PostgreSQL's bin directory
    local dirs
    dirs=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n1) || true
    printf '%s' "$dirs"
}

mariadbd_bin() { command -v mariadbd || command -v mysqld || { [[ -x /usr/sbin/mariadbd ]] && echo /usr/sbin/mariadbd; }; }

install_missing() {
    local need=()
    command -v munged >/dev/null || [[ -x /usr/sbin/munged ]] || need+=(munge)
    mariadbd_bin >/dev/null || need+=(mariadb-server)
    command -v slurmdbd >/dev/null || [[ -x /usr/sbin/slurmdbd ]] || need+=(slurmdbd)
    { command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null || need+=(slurm-wlm)
    [[ -n $(pg_bin) && -x $(pg_bin)/initdb ]] || need+=(postgresql)
    ((${#need[@]})) || return 0
    if [[ $(id -u) != 0 || ${BB_SERVICES_INSTALL:-1} != 1 ]] || ! command -v apt-get >/dev/null; then
        die "missing Debian packages: ${need[*]} (install them as root: apt-get install ${need[*]};" \
            "this script does it itself when run as root on a machine with apt-get and BB_SERVICES_INSTALL=1)"
    fi
    say "installing ${need[*]} (apt-get)"
    # Debian's packages start their own system instances on install; ours run privately, so
    # forbid that for the install (policy-rc.d is the documented switch), unless one is there.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    apt-get update -q >"$RUN/log/apt.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
            >>"$RUN/log/apt.log" 2>&1 || rc=$?
    ((made_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${need[*]} failed (exit $rc); see $RUN/log/apt.log"
}

# ---------------------------------------------------------------- config

render() { # render TEMPLATE DEST: fill @NAME@ from this script's settings
    local cpus mem_mb
    cpus=${BB_SLURM_CPUS:-$(nproc)}
    # RealMemory must not exceed what slurmd finds, or the node is drained: 90 % of MemTotal.
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    sed -e "s#@RUN@#$RUN#g" -e "s#@HOST@#$(hostname -s)#g" -e "s#@CLUSTER@#$CLUSTER#g" \
        -e "s#@PARTITION@#$PARTITION#g" -e "s#@CPUS@#$cpus#g" -e "s#@MEMORY_MB@#$mem_mb#g" \
        -e "s#@SLURMCTLD_PORT@#$SLURMCTLD_PORT#g" -e "s#@SLURMD_PORT@#$SLURMD_PORT#g" \
        -e "s#@SLURMDBD_PORT@#$SLURMDBD_PORT#g" -e "s#@MYSQL_PORT@#$MYSQL_PORT#g" \
        -e "s#@MYSQL_PASSWORD@#$MYSQL_PASSWORD#g" "$1" >"$2"
}

write_env() {
    cat >"$RUN/env" <<EOF
# source this file to use the services that scripts/services.sh started
export SLURM_CONF=$RUN/etc/slurm.conf
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
EOF
}

# ---------------------------------------------------------------- start, one function per service

start_munge() {
    mkdir -p "$RUN/munge" && chmod 700 "$RUN/munge"
    local key=$RUN/munge/munge.key
    if [[ ! -s $key ]]; then
        head -c 1024 /dev/urandom >"$key"
        chmod 400 "$key"
    fi
    local munged
    munged=$(command -v munged || echo /usr/sbin/munged)
    # munged forks into the background itself and writes the pid file.
    "$munged" --key-file="$key" --socket="$RUN/munge/munge.socket" --pid-file="$RUN/pid/munge.pid" \
        --log-file="$RUN/log/munge.log" --seed-file="$RUN/munge/munge.seed" --force
    wait_until 20 munge pid_of munge
}

mysql_root() { mariadb --no-defaults --socket="$RUN/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    mkdir -p "$RUN/mysql"
    if [[ ! -d $RUN/mysql/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$RUN/mysql/data" \
            --auth-root-authentication-method=socket >"$RUN/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed; see $RUN/log/mariadb-install.log"
    fi
    # Small buffers: slurmdbd's tables hold a few rows per job.
    setsid "$(mariadbd_bin)" --no-defaults --user=root --datadir="$RUN/mysql/data" \
        --socket="$RUN/mysql/mysqld.sock" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
        --pid-file="$RUN/pid/mariadb.pid" --log-error="$RUN/log/mariadb.log" --skip-name-resolve \
        --innodb-buffer-pool-size=32M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
        --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    wait_until 60 MariaDB mysql_root -e 'SELECT 1'
    mysql_root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    render "$TEMPLATES/slurmdbd.conf.in" "$RUN/etc/slurmdbd.conf"
    chmod 600 "$RUN/etc/slurmdbd.conf" # slurmdbd refuses a config others can read
    slurmdbd                           # forks; finds slurmdbd.conf beside $SLURM_CONF
    wait_until 60 slurmdbd sacctmgr -n list cluster
    # The cluster must be known to the database before slurmctld registers with it.
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

node_ready() { sinfo -h -N -o %T | grep -qxE 'idle|mixed|allocated'; }  # not 'idle*': not responding

start_slurmctld() {
    mkdir -p "$RUN/slurm/state" "$RUN/slurm/spool"
    slurmctld
    wait_until 60 slurmctld scontrol ping
}

start_slurmd() {
    slurmd
    wait_until 60 "slurmd (node idle)" node_ready
}

pg() { runuser -u postgres -- "$(pg_bin)/$1" "${@:2}"; }
psql_admin() { pg psql -X -q -h "$RUN/postgres" -p "$PG_PORT" -d postgres -tA "$@"; }

start_postgres() {
    # Our own cluster in the run directory; PostgreSQL refuses to run as root, so it runs as postgres.
    mkdir -p "$RUN/postgres"
    chown postgres: "$RUN/postgres"
    chmod 700 "$RUN/postgres"
    touch "$RUN/log/postgres.log" && chown postgres: "$RUN/log/postgres.log"
    if [[ ! -f $RUN/postgres/data/PG_VERSION ]]; then
        pg initdb -D "$RUN/postgres/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            >"$RUN/log/postgres-initdb.log" 2>&1 || die "initdb failed; see $RUN/log/postgres-initdb.log"
    fi
    pg pg_ctl -D "$RUN/postgres/data" -l "$RUN/log/postgres.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $RUN/postgres -c shared_buffers=32MB" >/dev/null ||
        die "PostgreSQL did not start; see $RUN/log/postgres.log"
    if [[ -z $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'") ]]; then
        psql_admin -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'"
    fi
    if [[ -z $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") ]]; then
        psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
    fi
}

mlflow_healthy() { "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"; }

start_mlflow() {
    # Its own session (setsid), so `down` can stop the server and its workers as one group.
    BB_MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB" \
        BB_MLFLOW_ARTIFACTS="$RUN/mlflow/artifacts" BB_MLFLOW_HOST=127.0.0.1 BB_MLFLOW_PORT="$MLFLOW_PORT" \
        BB_PYTHON="$PY" setsid "$ROOT/scripts/mlflow_server.sh" </dev/null >"$RUN/log/mlflow.log" 2>&1 &
    local pid=$! start
    echo "$pid" >"$RUN/pid/mlflow.pid"
    start=$(now)
    until mlflow_healthy >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "mlflow server exited (its port taken?); see $RUN/log/mlflow.log"
        awk -v a="$start" -v b="$(now)" 'BEGIN { exit !(b - a > 120) }' &&
            die "mlflow server did not answer on /health within 120 s; see $RUN/log/mlflow.log"
        sleep 0.2
    done
}

up() {
    [[ $(id -u) == 0 ]] || die "up needs root: slurmd starts jobs as their users and PostgreSQL runs as postgres"
    [[ -x $PY ]] || die "no python at $PY (run make setup, or set BB_PYTHON)"
    mkdir -p "$RUN"/{etc,log,pid}
    chmod 755 "$RUN" # postgres (another user) must reach its data directory inside
    install_missing
    "$PY" -c 'import psycopg2' 2>/dev/null || die "$PY cannot import psycopg2: pip install -e '.[cluster]'"
    render "$TEMPLATES/slurm.conf.in" "$RUN/etc/slurm.conf"
    write_env
    local s start pid
    for s in "${SERVICES[@]}"; do
        if pid=$(pid_of "$s"); then
            say "$s: already running (pid $pid)"
            continue
        fi
        start=$(now)
        "start_$s"
        say "$s: up in $(since "$start") s (pid $(pid_of "$s"))"
    done
    say "all up; in a shell: source $RUN/env"
}

# ---------------------------------------------------------------- stop

stop_pid() { # stop_pid NAME SIGNAL: signal the pid (mlflow: its process group), wait, then SIGKILL
    local name=$1 sig=$2 pid target i start
    pid=$(pid_of "$name") || return 0
    start=$(now)
    target=$pid
    [[ $name == mlflow ]] && target=-$pid
    kill "-$sig" -- "$target" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 -- "$target" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 -- "$target" 2>/dev/null; then
        say "$name: still running after 30 s, SIGKILL"
        kill -KILL -- "$target" 2>/dev/null || true
    fi
    rm -f "$RUN/pid/$name.pid"
    say "$name: stopped in $(since "$start") s (pid $pid)"
}

down() {
    [[ -d $RUN ]] || {
        say "nothing to stop: no $RUN"
        return 0
    }
    # Jobs still on our cluster are ours too: cancel them while slurmctld can.
    if pid_of slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            wait_until 60 "job cancellation" bash -c '[[ -z $(squeue -h -o %A) ]]'
        fi
    fi
    local i
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        case ${SERVICES[i]} in
            postgres) stop_pid postgres INT ;; # PostgreSQL's "fast" shutdown
            *) stop_pid "${SERVICES[i]}" TERM ;;
        esac
    done
}

status() {
    local s pid rc=0
    for s in "${SERVICES[@]}"; do
        if pid=$(pid_of "$s"); then
            say "$s: running (pid $pid)"
        else
            say "$s: stopped"
            rc=3
        fi
    done
    [[ -r $RUN/env ]] && say "environment: source $RUN/env" && grep '^export' "$RUN/env"
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: scripts/services.sh up|down|status (got '${1:-}')" ;;
esac
