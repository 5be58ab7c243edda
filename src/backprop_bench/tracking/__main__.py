"""MLflow housekeeping from the command line:

python -m backprop_bench.tracking reap [--tracking-uri URI] [--experiment NAME]
python -m backprop_bench.tracking url [--tracking-uri URI] [--experiment NAME] [--base URL]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from backprop_bench.tracking.reaper import reap
from backprop_bench.tracking.summary import ui_urls
from backprop_bench.tracking.uri import TrackingUriError, redact, resolve_uri, sqlite_path, validate_uri


def main(argv: list[str] | None = None) -> int:
    """python -m backprop_bench.tracking reap|url [--tracking-uri URI] [--experiment NAME]"""
    parser = argparse.ArgumentParser(prog="python -m backprop_bench.tracking", description="MLflow housekeeping")
    commands = parser.add_subparsers(dest="command", required=True)
    reaper = commands.add_parser(
        "reap", help="end FAILED (outcome=lost) this host's RUNNING runs whose process is gone"
    )
    url = commands.add_parser("url", help="print where the MLflow UI shows the study (its Runs table, its report)")
    url.add_argument("--base", default="http://127.0.0.1:5000", help="the UI's address (default: %(default)s)")
    for cmd in (reaper, url):
        cmd.add_argument(
            "--tracking-uri",
            default=None,
            help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory",
        )
        cmd.add_argument("--experiment", default="backprop-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.tracking_uri:
            uri = validate_uri(args.tracking_uri, Path.cwd(), "--tracking-uri")
        else:
            uri = resolve_uri(None, Path.cwd())
    except TrackingUriError as err:
        print(f"{args.command}: {err}", file=sys.stderr)
        return 2
    db = sqlite_path(uri)
    missing = db is not None and not db.is_file()
    if args.command == "url":
        urls = [] if missing else ui_urls(uri, args.experiment, args.base.rstrip("/"))
        print("\n".join(urls) or f"url: no experiment {args.experiment!r} in {redact(uri)} yet: run make run first")
        return 0
    reaped = [] if missing else reap(uri, args.experiment)
    print(f"reap: {len(reaped)} lost run(s) of experiment {args.experiment!r} in {redact(uri)} marked FAILED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
