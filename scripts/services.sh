#!/usr/bin/env bash
# The project's services on one machine, for cluster sweeps (docs/cluster.md):
#
#   scripts/services.sh up       install what is missing (as root, with apt-get), then start
#   scripts/services.sh status   what runs, and the environment a client needs
#   scripts/services.sh down     stop what `up` started (nothing else)
#
# `up` starts, each on 127.0.0.1 only and with its state, logs and pid file under the state
# folder: munge (SLURM's authentication), MariaDB + slurmdbd (job accounting, which
# submitit's sacct polling needs), slurmctld + slurmd (a one-node SLURM cluster), PostgreSQL
# (MLflow's store) and `mlflow server` (scripts/mlflow_server.sh) on it, with MLflow's
# basic-auth app. These are private instances: Debian's own services and configs in /etc are
# not used (nor started by the install: policy-rc.d forbids it meanwhile). `down` signals
# exactly the pids in the state folder's pid files.
#
# Who may do what: the state folder is root's (mode 0711, every service's part 0700 and owned
# by the service's user); `up` refuses a folder it did not make, one another user can write,
# or one holding a symbolic link, before it touches anything. Every daemon but slurmd runs as
# its own user (munge, mysql, slurm, postgres, and $BB_MLFLOW_USER for the MLflow server).
# The passwords (PostgreSQL, MariaDB, the MLflow admin and the project's MLflow user) and
# munge's key are generated at the first `up`, kept 0600/0400 in the state folder, and never
# written to a log or a command line.
#
# Then, as root, in a shell:  source "$BB_SERVICES_DIR/env"   (0600: SLURM_CONF,
# MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)
#
# Settings (environment):
#   BB_SERVICES_DIR      the state folder (default /var/lib/backprop-bench-services)
#   BB_SERVICES_INSTALL  1 (default): apt-get install missing packages when root; 0: never
#   BB_PYTHON            the python with mlflow[auth] and psycopg2 (default <repo>/.venv/bin/python);
#                        the MLflow user must be able to run it
#   BB_MLFLOW_USER       the system user the MLflow server runs as (default bb-mlflow; made if missing)
#   BB_MLFLOW_PORT (5000) BB_PG_PORT (5433) BB_MYSQL_PORT (3307)
#   BB_SLURMCTLD_PORT (6817) BB_SLURMD_PORT (6818) BB_SLURMDBD_PORT (6819)
#   BB_SLURM_CPUS        CPUs the node offers to jobs (default: this machine's count)
set -euo pipefail
umask 077 # nothing this script writes is for others unless it says so (chmod)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATES=$ROOT/scripts/services
RUN=${BB_SERVICES_DIR:-/var/lib/backprop-bench-services}
PY=${BB_PYTHON:-$ROOT/.venv/bin/python}
MLFLOW_USER=${BB_MLFLOW_USER:-bb-mlflow}
MLFLOW_PORT=${BB_MLFLOW_PORT:-5000}
PG_PORT=${BB_PG_PORT:-5433}
MYSQL_PORT=${BB_MYSQL_PORT:-3307}
SLURMCTLD_PORT=${BB_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${BB_SLURMD_PORT:-6818}
SLURMDBD_PORT=${BB_SLURMDBD_PORT:-6819}
CLUSTER=backprop-bench
PARTITION=debug
PG_USER=backprop_bench
PG_DB=mlflow
PG_AUTH_DB=mlflow_auth # the basic-auth app's users and permissions
MLFLOW_ADMIN="admin"
MLFLOW_PROJECT_USER=backprop-bench # the user the runs log as
MARKER=.backprop-bench-services    # up's mark on a state folder it made
# Start order; `down` goes backwards.
SERVICES=(munge mariadb slurmdbd slurmctld slurmd postgres mlflow)
# What each one's command line holds: a stale pid file may name a pid since reused by
# an unrelated process, which must not count as ours (nor be stopped).
declare -A COMMAND=([munge]=munged [mariadb]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld
    [slurmd]=slurmd [postgres]=postgres [mlflow]="mlflow server")
# Whom each one runs as. A pid file in a service user's folder is that user's to write: root
# signals the pid only if the process also runs as that user, so the file cannot aim root's
# kill at anyone else's process.
declare -A OWNER=([munge]=munge [mariadb]=mysql [slurmdbd]=slurm [slurmctld]=slurm
    [slurmd]=root [postgres]=postgres [mlflow]="$MLFLOW_USER")

export SLURM_CONF=$RUN/etc/slurm.conf # every slurm daemon and command reads this one

say() { printf '%s\n' "$*"; }
die() {
    printf 'services.sh: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

pid_file() { # where a service's pid is: a daemon that is not root writes it in its own folder
    case $1 in
        munge) printf '%s' "$RUN/munge/munged.pid" ;;
        mariadb) printf '%s' "$RUN/mysql/mariadbd.pid" ;;
        postgres) printf '%s' "$RUN/postgres/data/postmaster.pid" ;;
        *) printf '%s' "$RUN/pid/$1.pid" ;;
    esac
}

pid_of() { # the pid in a service's pid file, if the file exists and names a live process
    local file pid
    file=$(pid_file "$1")
    [[ -r $file ]] || return 1
    pid=$(head -n1 "$file" | tr -dc 0-9)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "${COMMAND[$1]}" || return 1
    [[ $(stat -c %U "/proc/$pid" 2>/dev/null) == "${OWNER[$1]}" ]] || return 1
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

# ---------------------------------------------------------------- the state folder

mode_of() { stat -c %a "$1"; }
owner_of() { stat -c %u "$1"; }
writable_by_others() { (((8#$(mode_of "$1") & 8#022) != 0)); } # group or world may write

check_above() { # every folder above the state folder: root's, and no one else may rename in it (unless sticky, like /tmp)
    local dir
    dir=$(dirname "$RUN")
    while [[ ! -e $dir ]]; do dir=$(dirname "$dir"); done # the rest up makes itself (mkdir -p)
    dir=$(realpath -e "$dir")
    while :; do
        [[ $(owner_of "$dir") == 0 ]] ||
            die "$dir (above $RUN) belongs to uid $(owner_of "$dir"), not root: its owner could swap the state folder; choose another BB_SERVICES_DIR"
        if writable_by_others "$dir" && [[ ! -k $dir ]]; then
            die "$dir (above $RUN) is writable by others (mode $(mode_of "$dir")) without the sticky bit: choose another BB_SERVICES_DIR"
        fi
        [[ $dir == / ]] && break
        dir=$(dirname "$dir")
    done
}

check_owner() { # the state folder: root's, and no one else may write in it
    [[ -d $RUN ]] || die "$RUN is not a folder"
    [[ $(owner_of "$RUN") == 0 ]] ||
        die "$RUN belongs to uid $(owner_of "$RUN"), not root: only a folder root made is used (remove it, or set BB_SERVICES_DIR)"
    if writable_by_others "$RUN"; then
        die "$RUN is writable by group or others (mode $(mode_of "$RUN")): only a folder no one else can change is used (remove it, or set BB_SERVICES_DIR)"
    fi
}

check_state() { # refuse a state folder up did not make or that someone else could have changed
    local found
    [[ $RUN == /* ]] || die "BB_SERVICES_DIR=$RUN: expected an absolute path"
    check_above
    [[ -L $RUN ]] && die "$RUN is a symbolic link: up uses only a real folder it made (remove it, or set BB_SERVICES_DIR)"
    [[ -e $RUN ]] || return 0
    check_owner
    if [[ ! -f $RUN/$MARKER && -n $(ls -A "$RUN") ]]; then
        die "$RUN holds files up did not make (no $MARKER in it): remove it, or set BB_SERVICES_DIR to a new or empty folder"
    fi
    # Symbolic links would make root write or re-own files elsewhere; sockets are 0777 by design.
    found=$(find "$RUN" -type l -print -quit)
    [[ -z $found ]] || die "$RUN holds a symbolic link, $found: up follows none (remove the state folder, or set BB_SERVICES_DIR)"
    found=$(find "$RUN" ! -type s -perm -o+w -print -quit)
    [[ -z $found ]] || die "$RUN holds $found, which anyone may write: remove the state folder, or set BB_SERVICES_DIR"
}

make_state() { # the state folder and root's own parts of it
    if [[ ! -e $RUN ]]; then
        (umask 022 && mkdir -p "$(dirname "$RUN")")
        mkdir -m 0711 "$RUN" || die "could not create $RUN" # fails if someone made it meanwhile
    fi
    chmod 0711 "$RUN" # other users (postgres, slurm, munge clients) pass through, list nothing
    : >"$RUN/$MARKER"
    mkdir -p "$RUN/secrets" "$RUN/etc" "$RUN/log" "$RUN/pid"
    chmod 0700 "$RUN/secrets"
    chmod 0755 "$RUN/etc" "$RUN/log" "$RUN/pid" # slurm.conf and the logs: for the team to read
}

service_dir() { # service_dir PATH USER MODE: a folder that belongs to a service's user
    # PATH may sit in another service folder its user could have written: never follow a link
    [[ -L $1 ]] && die "$1 is a symbolic link; a service's folder must be a real one (remove it and run up again)"
    [[ -d $1 ]] || mkdir "$1"
    chown -h "$2:" "$1"
    chmod "$3" "$1"
}

place() { # place USER MODE DEST < CONTENT: a file for a service, made in root's secrets/ folder and
    # renamed over DEST (mv -T replaces a planted link instead of following it): root never
    # opens, chowns or chmods a name inside a folder that the service's user can write
    local tmp
    tmp=$(mktemp "$RUN/secrets/.place.XXXXXX")
    cat >"$tmp"
    chown "$1:" "$tmp"
    chmod "$2" "$tmp"
    mv -fT "$tmp" "$3"
}

service_log() { # service_log NAME USER: log/NAME.log, writable by the service's user
    touch "$RUN/log/$1.log"
    chown "$2:" "$RUN/log/$1.log"
    chmod 0644 "$RUN/log/$1.log"
}

secret() { # secret NAME: the password in secrets/NAME, generated at first use (0600, root's)
    local file=$RUN/secrets/$1
    if [[ ! -s $file ]]; then
        od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$file.new" # 48 hex digits
        chmod 0600 "$file.new"
        mv "$file.new" "$file"
    fi
    cat "$file"
}

as_user() { # as_user USER COMMAND...: run as a service's user, with a clean environment
    local user=$1
    shift
    setpriv --reuid="$user" --regid="$user" --init-groups env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"
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
    "$ROOT/scripts/apt_install.sh" --no-recommends --log "$RUN/log/apt.log" "${need[@]}" || rc=$?
    ((made_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${need[*]} failed (exit $rc; apt's output above); see $RUN/log/apt.log"
}

SERVER_IMPORTS='import flask_wtf, mlflow.server.auth, psycopg2'

mlflow_user() { # the MLflow server's system user (made if missing), and the python it runs: MLFLOW_PY
    if ! getent passwd "$MLFLOW_USER" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            "$MLFLOW_USER" || die "could not create the system user $MLFLOW_USER (set BB_MLFLOW_USER to an existing one)"
    fi
    MLFLOW_PY=$PY MLFLOW_PYTHONPATH=
    as_user "$MLFLOW_USER" "$PY" -c "$SERVER_IMPORTS" 2>/dev/null && return 0
    # A venv made from a python in a private home (pyenv under /root) names a base python no
    # other user may run: run the venv's packages with the system's python of the same version.
    local version site
    version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    MLFLOW_PY=/usr/bin/python$version MLFLOW_PYTHONPATH=$site
    [[ -x $MLFLOW_PY ]] && as_user "$MLFLOW_USER" PYTHONPATH="$site" "$MLFLOW_PY" -c "$SERVER_IMPORTS" 2>/dev/null ||
        die "the MLflow server's user $MLFLOW_USER can run neither $PY nor $MLFLOW_PY with $site to import" \
            "mlflow.server.auth, flask_wtf and psycopg2: pip install -e '.[cluster]' (mlflow[auth], psycopg2)," \
            "and let other users read the python's folders"
}

# ---------------------------------------------------------------- config

render() { # render TEMPLATE DEST: fill @NAME@ from this script's settings (no secrets: sed's command line is public)
    local cpus mem_mb
    cpus=${BB_SLURM_CPUS:-$(nproc)}
    # RealMemory must not exceed what slurmd finds, or the node is drained: 90 % of MemTotal.
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    sed -e "s#@RUN@#$RUN#g" -e "s#@HOST@#$(hostname -s)#g" -e "s#@CLUSTER@#$CLUSTER#g" \
        -e "s#@PARTITION@#$PARTITION#g" -e "s#@CPUS@#$cpus#g" -e "s#@MEMORY_MB@#$mem_mb#g" \
        -e "s#@SLURMCTLD_PORT@#$SLURMCTLD_PORT#g" -e "s#@SLURMD_PORT@#$SLURMD_PORT#g" \
        -e "s#@SLURMDBD_PORT@#$SLURMDBD_PORT#g" -e "s#@MYSQL_PORT@#$MYSQL_PORT#g" "$1" >"$2"
}

write_env() { # 0600: it holds the project user's MLflow password
    {
        say "# source this file (as root) to use the services that scripts/services.sh started"
        say "export SLURM_CONF=$RUN/etc/slurm.conf"
        say "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
        say "export MLFLOW_TRACKING_USERNAME=$MLFLOW_PROJECT_USER"
        say "export MLFLOW_TRACKING_PASSWORD=$(secret mlflow-user)"
    } >"$RUN/env.new"
    chmod 0600 "$RUN/env.new"
    mv "$RUN/env.new" "$RUN/env"
}

# ---------------------------------------------------------------- start, one function per service

start_munge() {
    # munged runs as munge and checks that no one else can read its key or write its folders.
    service_dir "$RUN/munge" munge 0711 # clients (slurm, jobs) reach the socket inside
    local key=$RUN/munge/munge.key
    if [[ ! -s $key ]]; then # up's own key, made once; munged never runs with --force
        head -c 1024 /dev/urandom | place munge 0400 "$key"
    fi
    service_log munge munge
    local munged
    munged=$(command -v munged || echo /usr/sbin/munged)
    # munged forks into the background itself and writes the pid file.
    as_user munge "$munged" --key-file="$key" --socket="$RUN/munge/munge.socket" --pid-file="$(pid_file munge)" \
        --log-file="$RUN/log/munge.log" --seed-file="$RUN/munge/munge.seed"
    wait_until 20 munge pid_of munge
}

mysql_root() { mariadb --no-defaults --socket="$RUN/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    service_dir "$RUN/mysql" mysql 0700
    service_log mariadb mysql
    if [[ ! -d $RUN/mysql/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$RUN/mysql/data" \
            --auth-root-authentication-method=socket >"$RUN/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed; see $RUN/log/mariadb-install.log"
    fi
    # As mysql (mariadbd drops root itself). Small buffers: slurmdbd's tables hold a few rows per job.
    setsid "$(mariadbd_bin)" --no-defaults --user=mysql --datadir="$RUN/mysql/data" \
        --socket="$RUN/mysql/mysqld.sock" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
        --pid-file="$(pid_file mariadb)" --log-error="$RUN/log/mariadb.log" --skip-name-resolve \
        --innodb-buffer-pool-size=32M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
        --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    wait_until 60 MariaDB mysql_root -e 'SELECT 1'
    # On stdin, not the command line, where any local user could read the password.
    mysql_root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(secret mariadb)';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(secret mariadb)';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
    local conf=$RUN/etc/slurmdbd.conf
    render "$TEMPLATES/slurmdbd.conf.in" "$conf.new"
    printf 'StoragePass=%s\n' "$(secret mariadb)" >>"$conf.new" # printf is a builtin: no command line
    chown slurm: "$conf.new"
    chmod 0600 "$conf.new" # slurmdbd refuses a config others can read, or not its user's
    mv "$conf.new" "$conf"
    service_log slurmdbd slurm
    slurmdbd # forks, drops root for SlurmUser (slurm); finds slurmdbd.conf beside $SLURM_CONF
    wait_until 60 slurmdbd sacctmgr -n list cluster
    # The cluster must be known to the database before slurmctld registers with it.
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

node_ready() { sinfo -h -N -o %T | grep -qxE 'idle|mixed|allocated'; } # not 'idle*': not responding

start_slurmctld() {
    [[ -d $RUN/slurm ]] || mkdir "$RUN/slurm"
    chmod 0711 "$RUN/slurm"
    service_dir "$RUN/slurm/state" slurm 0700 # slurmctld runs as SlurmUser (slurm)
    service_dir "$RUN/slurm/spool" root 0700  # slurmd stays root: it starts jobs as their users
    service_log slurmctld slurm
    slurmctld
    wait_until 60 slurmctld scontrol ping
}

start_slurmd() {
    slurmd
    wait_until 60 "slurmd (node idle)" node_ready
}

pg() { as_user postgres "$(pg_bin)/$1" "${@:2}"; }
psql_admin() { pg psql -X -q -h "$RUN/postgres" -p "$PG_PORT" -d postgres -tA -v ON_ERROR_STOP=1 "$@"; }

start_postgres() {
    # Our own cluster in the state folder; PostgreSQL refuses to run as root, so it runs as postgres.
    service_dir "$RUN/postgres" postgres 0700
    service_log postgres postgres
    if [[ ! -f $RUN/postgres/data/PG_VERSION ]]; then
        pg initdb -D "$RUN/postgres/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            >"$RUN/log/postgres-initdb.log" 2>&1 || die "initdb failed; see $RUN/log/postgres-initdb.log"
    fi
    # pg_hba (initdb above): peer for the local socket, scram-sha-256 for TCP; passwords stored the same way.
    pg pg_ctl -D "$RUN/postgres/data" -l "$RUN/log/postgres.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $RUN/postgres -c shared_buffers=32MB -c max_connections=200 -c password_encryption=scram-sha-256" \
        >/dev/null || die "PostgreSQL did not start; see $RUN/log/postgres.log"
    # On stdin, not the command line; \gexec creates what is missing.
    psql_admin >/dev/null <<EOF
SELECT 'CREATE ROLE $PG_USER LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE $PG_USER PASSWORD '$(secret postgres)';
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SELECT 'CREATE DATABASE $PG_AUTH_DB OWNER $PG_USER' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_AUTH_DB') \gexec
EOF
}

mlflow_healthy() { "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"; }

mlflow_config() { # what the server reads: PostgreSQL's password file and the basic-auth app's config
    local dir=$RUN/mlflow
    service_dir "$dir" "$MLFLOW_USER" 0700
    service_dir "$dir/artifacts" "$MLFLOW_USER" 0700
    printf '127.0.0.1:%s:*:%s:%s\n' "$PG_PORT" "$PG_USER" "$(secret postgres)" | place "$MLFLOW_USER" 0600 "$dir/pgpass"
    # default_permission EDIT: every user the admin makes can log to every experiment, not
    # delete one or change permissions. The admin is made at the server's first start.
    {
        say "[mlflow]"
        say "default_permission = EDIT"
        say "database_uri = postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_AUTH_DB"
        say "admin_username = $MLFLOW_ADMIN"
        say "admin_password = $(secret mlflow-admin)"
        say "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
        # a credential checked once a minute per worker, not on every request (PBKDF2 is slow)
        say "auth_cache_ttl_seconds = 60"
    } | place "$MLFLOW_USER" 0600 "$dir/auth.ini"
}

mlflow_project_user() { # the user the runs log as: made at first up, its password kept as in secrets/
    BB_URL="http://127.0.0.1:$MLFLOW_PORT" BB_ADMIN="$MLFLOW_ADMIN" BB_ADMIN_PASSWORD="$(secret mlflow-admin)" \
        BB_USER="$MLFLOW_PROJECT_USER" BB_USER_PASSWORD="$(secret mlflow-user)" "$PY" - <<'EOF' ||
import base64, json, os, urllib.error, urllib.request

token = base64.b64encode(f"{os.environ['BB_ADMIN']}:{os.environ['BB_ADMIN_PASSWORD']}".encode()).decode()
user = {"username": os.environ["BB_USER"], "password": os.environ["BB_USER_PASSWORD"]}


def call(method, path, body):
    request = urllib.request.Request(
        os.environ["BB_URL"] + "/api/2.0/mlflow/users/" + path, json.dumps(body).encode(), method=method,
        headers={"Authorization": "Basic " + token, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()


try:
    call("POST", "create", user)
except urllib.error.HTTPError as error:
    if error.code not in (400, 409):  # RESOURCE_ALREADY_EXISTS: keep its password in step
        raise SystemExit(f"creating the MLflow user {user['username']}: HTTP {error.code}")
    call("PATCH", "update-password", user)
EOF
        die "could not create the MLflow user $MLFLOW_PROJECT_USER (the error above; the server's side: $RUN/log/mlflow.log)"
}

start_mlflow() {
    mlflow_config
    # As $MLFLOW_USER with only the environment it needs (no root's), in its own session (setsid),
    # so `down` can stop the server and its workers as one group. The store URI holds no
    # password: psycopg2 reads it from PGPASSFILE.
    # Each worker serves up to 40 requests at once (its thread pool): up to 40 database
    # connections per store (runs, users), not SQLAlchemy's 15, or a team's concurrent runs
    # wait 30 s for one and fail (tests/test_load.py). PostgreSQL allows 200.
    setsid setpriv --reuid="$MLFLOW_USER" --regid="$MLFLOW_USER" --init-groups env -i \
        PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="$RUN/mlflow" PGPASSFILE="$RUN/mlflow/pgpass" \
        BB_MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB" \
        BB_MLFLOW_AUTH_CONFIG="$RUN/mlflow/auth.ini" BB_MLFLOW_ARTIFACTS="$RUN/mlflow/artifacts" \
        BB_MLFLOW_HOST=127.0.0.1 BB_MLFLOW_PORT="$MLFLOW_PORT" BB_MLFLOW_WORKERS="${BB_MLFLOW_WORKERS:-2}" \
        MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=10 MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=30 \
        BB_PYTHON="$MLFLOW_PY" ${MLFLOW_PYTHONPATH:+PYTHONPATH="$MLFLOW_PYTHONPATH"} "$ROOT/scripts/mlflow_server.sh" </dev/null >"$RUN/log/mlflow.log" 2>&1 &
    local pid=$! start
    echo "$pid" >"$(pid_file mlflow)"
    start=$(now)
    until mlflow_healthy >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "mlflow server exited (its port taken?); see $RUN/log/mlflow.log"
        awk -v a="$start" -v b="$(now)" 'BEGIN { exit !(b - a > 120) }' &&
            die "mlflow server did not answer on /health within 120 s; see $RUN/log/mlflow.log"
        sleep 0.2
    done
    mlflow_project_user
}

up() {
    [[ $(id -u) == 0 ]] || die "up needs root: slurmd starts jobs as their users and PostgreSQL runs as postgres"
    [[ -x $PY ]] || die "no python at $PY (run make setup, or set BB_PYTHON)"
    check_state # before anything is written
    make_state
    install_missing
    "$PY" -c 'import psycopg2' 2>/dev/null || die "$PY cannot import psycopg2: pip install -e '.[cluster]'"
    mlflow_user
    render "$TEMPLATES/slurm.conf.in" "$RUN/etc/slurm.conf"
    chmod 0644 "$RUN/etc/slurm.conf" # every SLURM command reads it; it holds no secret
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
    say "all up; in a shell, as root: source $RUN/env"
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
    [[ $name == postgres ]] || rm -f "$(pid_file "$name")" # postgres removes its own
    say "$name: stopped in $(since "$start") s (pid $pid)"
}

down() {
    [[ -d $RUN ]] || {
        say "nothing to stop: no $RUN"
        return 0
    }
    check_owner # the pid files say what root signals: only root may have written them
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
    # The password stays in the file.
    [[ -r $RUN/env ]] && say "environment: source $RUN/env" && grep '^export' "$RUN/env" | grep -v PASSWORD
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: scripts/services.sh up|down|status (got '${1:-}')" ;;
esac
