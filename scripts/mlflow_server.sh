#!/usr/bin/env bash
# A shared MLflow tracking server for the project (make mlflow-server; docs/cluster.md).
#
#   scripts/mlflow_server.sh                       # sqlite store under ./mlflow-server/, http://127.0.0.1:5000
#   PGPASSFILE=~/.pgpass BB_MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://user@dbhost:5432/mlflow \
#       BB_MLFLOW_AUTH_CONFIG=auth.ini BB_MLFLOW_HOST=0.0.0.0 scripts/mlflow_server.sh
#
# The backend store is $BB_MLFLOW_BACKEND_STORE_URI when set (PostgreSQL: several writers at
# once, many nodes), else a sqlite file. Artifacts are served by the server itself
# (--artifacts-destination): clients upload and download them over HTTP, so the compute
# nodes need no shared file system with the server. It runs in the foreground.
#
# Who may use it: with BB_MLFLOW_AUTH_CONFIG it runs MLflow's basic-auth app (mlflow[auth]),
# and every request needs a user and password (clients: MLFLOW_TRACKING_USERNAME and
# MLFLOW_TRACKING_PASSWORD). Without it anyone who reaches the port may read and write every
# run, so it then listens on the loopback interface only and refuses any other BB_MLFLOW_HOST.
#
# Settings (environment):
#   BB_MLFLOW_BACKEND_STORE_URI  the store of runs and experiments (default: sqlite in BB_MLFLOW_STATE_DIR)
#   BB_MLFLOW_STATE_DIR          the default store's folder (default: <repo>/mlflow-server)
#   BB_MLFLOW_ARTIFACTS          where the server keeps artifacts: a folder, s3://..., gs://... (default: <state dir>/artifacts)
#   BB_MLFLOW_AUTH_CONFIG        MLflow's basic-auth config (an ini: admin_username, admin_password,
#                                database_uri, default_permission), readable by its owner only
#   BB_MLFLOW_HOST, BB_MLFLOW_PORT  where it listens (default 127.0.0.1:5000; another address,
#                                such as 0.0.0.0 to serve other machines, needs BB_MLFLOW_AUTH_CONFIG)
#   BB_MLFLOW_ALLOWED_HOSTS      the Host headers it answers (MLflow's --allowed-hosts), e.g. mlflow.internal:5000
#   BB_MLFLOW_WORKERS            worker processes (default 2; each costs about 150 MB)
#   BB_PYTHON                    the python that has mlflow (default: <repo>/.venv/bin/python)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${BB_PYTHON:-$ROOT/.venv/bin/python}
STATE=${BB_MLFLOW_STATE_DIR:-$ROOT/mlflow-server}
BACKEND=${BB_MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}
ARTIFACTS=${BB_MLFLOW_ARTIFACTS:-$STATE/artifacts}
HOST=${BB_MLFLOW_HOST:-127.0.0.1}
PORT=${BB_MLFLOW_PORT:-5000}
WORKERS=${BB_MLFLOW_WORKERS:-2}
AUTH=${BB_MLFLOW_AUTH_CONFIG:-}

die() {
    echo "mlflow_server.sh: $*" >&2
    exit 1
}

[[ -x $PY ]] || die "no python at $PY (run make setup, or set BB_PYTHON)"
if [[ -n $AUTH ]]; then
    [[ -f $AUTH && -r $AUTH ]] || die "BB_MLFLOW_AUTH_CONFIG=$AUTH: no such readable file (an ini with an [mlflow] section)"
    # It holds the admin's password (or the database's).
    (((8#$(stat -c %a "$AUTH") & 8#077) == 0)) ||
        die "BB_MLFLOW_AUTH_CONFIG=$AUTH: mode $(stat -c %a "$AUTH"), expected 600 or 400 (it holds the admin password)"
else
    case $HOST in
        127.0.0.1 | localhost | ::1) ;;
        *) die "BB_MLFLOW_HOST=$HOST: without authentication the server listens on 127.0.0.1 only;" \
            "set BB_MLFLOW_AUTH_CONFIG (MLflow's basic-auth app, docs/cluster.md) to serve other machines" ;;
    esac
fi
case $BACKEND in
    sqlite:///*) mkdir -p "$(dirname "${BACKEND#sqlite:///}")" ;;
    postgresql*://* | mysql*://* | mssql*://*) ;;
    *)
        die "BB_MLFLOW_BACKEND_STORE_URI=$BACKEND: expected sqlite:///<file>," \
            "postgresql+psycopg2://user@host:port/db or another database URL"
        ;;
esac
[[ $ARTIFACTS == *://* ]] || mkdir -p "$ARTIFACTS"

# The store URI (it may hold a password) goes through MLflow's own environment variable,
# not the command line, so `ps` does not show it. sed masks it in the log line.
export MLFLOW_BACKEND_STORE_URI=$BACKEND
# MLflow 3's job runner (a supervisor and seven consumers, about 1.2 GB) serves its GenAI
# features (prompt optimisation, scorers), which this project does not use: off unless asked.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
echo "mlflow server: store $(sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#' <<<"$BACKEND"), artifacts $ARTIFACTS, http://$HOST:$PORT${AUTH:+, basic auth}"
args=(--artifacts-destination "$ARTIFACTS" --host "$HOST" --port "$PORT" --workers "$WORKERS")
if [[ -n $AUTH ]]; then
    export MLFLOW_AUTH_CONFIG_PATH=$AUTH
    # The key of the auth app's CSRF tokens: one for all workers; a new one per start unless set.
    if [[ -z ${MLFLOW_FLASK_SERVER_SECRET_KEY:-} ]]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    args+=(--app-name basic-auth)
fi
[[ -z ${BB_MLFLOW_ALLOWED_HOSTS:-} ]] || args+=(--allowed-hosts "$BB_MLFLOW_ALLOWED_HOSTS")
exec "$PY" -m mlflow server "${args[@]}"
