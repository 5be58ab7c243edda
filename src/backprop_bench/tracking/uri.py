"""Tracking URIs: which store a run logs to, checked before any work (``validate_uri``)."""

from __future__ import annotations

import os
import re
from pathlib import Path


class TrackingUriError(ValueError):
    """A tracking URI that cannot work; the message names the option it came from."""


URI_EXPECTED = (
    "expected sqlite:///<file>.db (relative to the directory the app is started in), "
    "sqlite:////<absolute path>.db, http(s)://<host>:<port> (an mlflow server) "
    "or a database URL (postgresql://, mysql://, mssql://)"
)


_DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy dialects MLflow stores runs in, "+driver" allowed


def resolve_uri(uri: str | None, project_root: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db.

    Checked by validate_uri (a bad URI raises TrackingUriError naming its option), with a
    relative sqlite path made absolute against project_root.
    """
    if uri:
        return validate_uri(uri, project_root, "tracking.uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return validate_uri(os.environ["MLFLOW_TRACKING_URI"], project_root, "MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def validate_uri(uri: str, project_root: Path, source: str = "tracking.uri") -> str:
    """The URI in the form every process of a run agrees on, or TrackingUriError.

    sqlite:///rel.db is taken relative to project_root (the directory the app is started
    in, as MLflow's own client takes it relative to its cwd) and returned absolute, so
    sweep workers, the study and the sweep's parent run name one file. The deprecated
    file store (file:, a plain path), unknown schemes and a sqlite file in a directory
    that does not exist are refused here, before any training.
    """

    def bad(problem: str) -> TrackingUriError:
        return TrackingUriError(f"{source}={uri!r}: {problem}; {URI_EXPECTED}")

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
        db = Path(path) if Path(path).is_absolute() else Path(project_root).resolve() / path
        if not db.parent.is_dir():
            raise bad(f"the directory {db.parent} does not exist")
        if db.is_dir():
            raise bad(f"{db} is a directory")
        return f"sqlite:///{db}{sep}{query}"
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/?#]+", uri, re.IGNORECASE):
            raise bad("no host after //")
        return uri
    if scheme.split("+")[0] in _DB_SCHEMES:
        return uri
    raise bad(f"unknown scheme {scheme}:")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (absolute after validate_uri), else None."""
    return Path(uri[len("sqlite:///") :].partition("?")[0]) if uri.startswith("sqlite:///") else None
