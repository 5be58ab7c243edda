"""Tracking URIs: which store a run logs to, checked before any work (``validate_uri``).

Credentials never leave the environment: a password written into a URI
(``http://user:PASSWORD@host``, ``postgresql://user:PASSWORD@host/db``) is moved into the
variables the client reads (``take_credentials``) before the URI is used, and every text that
may hold a URI is passed through ``redact`` before it is printed, logged, tagged or written.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)


class TrackingUriError(ValueError):
    """A tracking URI that cannot work; the message names the option it came from."""


URI_EXPECTED = (
    "expected sqlite:///<file>.db (relative to the directory the app is started in), "
    "sqlite:////<absolute path>.db, http(s)://<host>:<port> (an mlflow server) "
    "or a database URL (postgresql://, mysql://, mssql://)"
)


_DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy dialects MLflow stores runs in, "+driver" allowed


CREDENTIALS_HOWTO = (
    "keep passwords out of URIs: for an mlflow server set MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD; for a PostgreSQL store use PostgreSQL's own PGPASSFILE (or ~/.pgpass) "
    'or PGPASSWORD (docs/architecture.md, MLflow, "Credentials")'
)


# scheme://user:password@ (the password up to the last "@" before the host) and password-like
# query parameters (?password=..., &pwd=...): what redact hides.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*):(?P<secret>[^\s/'\"]*)@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|secret|api_key)=)(?P<secret>[^&#\s'\"]*)", re.I)


def redact(text: str) -> str:
    """text with every URI password replaced by ***: userinfo (scheme://user:***@host) and
    password-like query parameters (?password=***). Works on a URI or on any text holding URIs
    (an error message, a traceback, an override); text without one comes back unchanged."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", str(text))
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)


def has_password(uri: str) -> bool:
    return redact(uri) != uri


_warned: set[tuple[str, str]] = set()  # (option, URI): said once per process


def take_credentials(uri: str, env: MutableMapping[str, str] | None = None, source: str = "tracking.uri") -> str:
    """The URI without its password, the password moved into the variable its client reads.

    http(s): user and password go to MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow
    sends them as basic auth). postgresql: the password goes to PGPASSWORD (libpq reads it), the
    user stays. Other stores have no such variable: a password there raises TrackingUriError.
    Child processes (sweep cells, study workers) inherit env, so they authenticate too, while
    params, tags, config files and logs only ever see the URI without the password.
    """
    if not has_password(uri):
        return uri
    env = os.environ if env is None else env
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    secrets = [v for k, v in query if _QUERY_SECRET.match(f"?{k}=")]
    password = unquote(parts.password) if parts.password is not None else (secrets[0] if secrets else "")
    user = unquote(parts.username or "")
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    query_left = urlencode([(k, v) for k, v in query if not _QUERY_SECRET.match(f"?{k}=")])
    if scheme in ("http", "https"):
        if user:
            env["MLFLOW_TRACKING_USERNAME"] = user
        env["MLFLOW_TRACKING_PASSWORD"] = password
    elif scheme.split("+")[0] == "postgresql":
        env["PGPASSWORD"] = password
        netloc = f"{quote(user, safe='')}@{netloc}" if user else netloc
    else:
        raise TrackingUriError(
            f"{source}={redact(uri)!r}: a password in a {scheme}: URI is not supported; {CREDENTIALS_HOWTO}"
        )
    clean = urlunsplit((parts.scheme, netloc, parts.path, query_left, parts.fragment))
    if (source, clean) in _warned:
        return clean
    _warned.add((source, clean))
    log.warning(
        "%s carried a password: moved into the environment, outputs name %s. Shell history and process "
        "lists still show it: %s",
        source,
        clean,
        CREDENTIALS_HOWTO,
    )
    return clean


def take_process_credentials(argv: list[str], env: MutableMapping[str, str] | None = None) -> None:
    """Before Hydra sees the command line: move the password of a tracking.uri override and of
    $MLFLOW_TRACKING_URI into the environment (take_credentials), in place. Hydra writes its
    overrides into .hydra/, multirun.yaml and its error lines before any task code runs, so this
    has to happen first; the rest of the app only ever sees URIs without passwords."""
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = take_credentials(env["MLFLOW_TRACKING_URI"], env, "MLFLOW_TRACKING_URI")
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "tracking.uri" and has_password(value):
            quoted = value[:1] in "'\"" and value[-1:] == value[:1] and len(value) > 1
            inner = value[1:-1] if quoted else value
            clean = take_credentials(inner, env)
            argv[i] = f"{key}={value[0]}{clean}{value[0]}" if quoted else f"{key}={clean}"


def resolve_uri(uri: str | None, project_root: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db.

    Checked by validate_uri (a bad URI raises TrackingUriError naming its option), with a
    relative sqlite path made absolute against project_root.
    """
    if uri:
        return validate_uri(uri, project_root, "tracking.uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        clean = validate_uri(os.environ["MLFLOW_TRACKING_URI"], project_root, "MLFLOW_TRACKING_URI")
        if has_password(os.environ["MLFLOW_TRACKING_URI"]):  # MLflow itself reads it too: no password there
            os.environ["MLFLOW_TRACKING_URI"] = clean
        return clean
    return f"sqlite:///{store_root(project_root) / 'mlflow.db'}"


def store_root(project_root: Path) -> Path:
    """Where the default sqlite store and relative sqlite paths live: the project root, except
    in an experiment DVC runs in a temporary copy of the project (`dvc exp run --queue`, `--temp`).

    DVC runs those in <project>/.dvc/tmp/exps/<tmpdir>/ and deletes the copy afterwards, so an
    mlflow.db there would be lost. DVC gives every stage command the project it belongs to in
    DVC_ROOT (for a queued experiment: the original project, not the copy; dvc/repo/experiments/
    queue/base.py). It is followed only when project_root really lies in that project's
    .dvc/tmp, so a DVC_ROOT inherited from elsewhere changes nothing.
    """
    root = Path(project_root).resolve()
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and root.is_relative_to(Path(dvc_root).resolve() / ".dvc" / "tmp"):
        return Path(dvc_root).resolve()
    return root


def validate_uri(uri: str, project_root: Path, source: str = "tracking.uri") -> str:
    """The URI in the form every process of a run agrees on, or TrackingUriError.

    sqlite:///rel.db is taken relative to project_root (the directory the app is started
    in, as MLflow's own client takes it relative to its cwd) and returned absolute, so
    sweep workers, the study and the sweep's parent run name one file. The deprecated
    file store (file:, a plain path), unknown schemes and a sqlite file in a directory
    that does not exist are refused here, before any training. A password in a server or
    database URI is moved into the environment (take_credentials): the URI returned has none.
    """

    def bad(problem: str) -> TrackingUriError:
        return TrackingUriError(f"{source}={redact(uri)!r}: {problem}; {URI_EXPECTED}")

    if uri == "databricks" or uri.startswith("databricks://"):  # a Databricks workspace (profile)
        return uri
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file" or not scheme or len(scheme) == 1:  # a path ("C:" is a drive)
        raise bad("the file store (a path or file:) is not supported by MLflow 3.13 and later")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
            raise bad("a sqlite URI needs a file after three slashes")
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        db = Path(path) if Path(path).is_absolute() else store_root(project_root) / path
        if not db.parent.is_dir():
            raise bad(f"the directory {db.parent} does not exist")
        if db.is_dir():
            raise bad(f"{db} is a directory")
        return f"sqlite:///{db}{sep}{query}"
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/?#]+", uri, re.IGNORECASE):
            raise bad("no host after //")
        return take_credentials(uri, source=source)
    if scheme.split("+")[0] in _DB_SCHEMES:
        return take_credentials(uri, source=source)
    raise bad(f"unknown scheme {scheme}:")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (absolute after validate_uri), else None."""
    return Path(uri[len("sqlite:///") :].partition("?")[0]) if uri.startswith("sqlite:///") else None
