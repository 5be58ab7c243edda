"""A corpus of hostile and broken inputs, each refused by name, fast, and within bounded memory:
decompression bombs, lying IDX headers, crafted .npz and weights files (huge declared shapes,
pickles, NaN, wrong dtypes, truncation), bad values, and mirrors on 127.0.0.1 that never end,
drip, stall or promise too much. Every case asserts its own error message (docs/data.md)."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from conftest import LoopbackHTTP, make_split, make_tiny_npz

from backprop_bench.core.dataset import load_dataset
from backprop_bench.core.files import NpzError, read_npz, write_npz
from backprop_bench.core.specs import InitSpec, MLPSpec, init_params
from backprop_bench.data import download, formats
from backprop_bench.data.download import DownloadError
from backprop_bench.data.formats import DataError
from backprop_bench.results.weights import load_weights, save_weights

MAX_ROWS = 100  # small limits keep every case fast: images 78,416 bytes, a CSV 318,196


# ----------------------------------------------------------------------------- crafting


def gzip_bomb(inflated_mb: int) -> bytes:
    """Zeros that inflate to inflated_mb MiB from a few KiB: one member of 1 MiB of zeros,
    repeated (gzip readers take concatenated members as one stream)."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return member * inflated_mb


def idx_header(kind: str, n: int, rows: int = 28, cols: int = 28) -> bytes:
    if kind == "images":
        return bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, rows, cols))
    return bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def npz_with(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    """An .npz whose members are the given raw .npy bytes (crafted headers included)."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        for key, data in members.items():
            zf.writestr(f"{key}.npy", data)
    return path


def lying_npy(shape: tuple[int, ...], dtype: str = "<f4", body: bytes = b"\0" * 64) -> bytes:
    """An .npy header that declares shape, followed by only len(body) bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def csv_text(rows: list[list[object]]) -> str:
    return "\n".join([",".join(formats.CANONICAL_HEADER), *(",".join(map(str, r)) for r in rows)]) + "\n"


def good_row(label: object = 3, pixel: object = 0, at: int = 0) -> list[object]:
    row: list[object] = [label] + [0] * 784
    row[1 + at] = pixel
    return row


# ----------------------------------------------------------------------------- files the stages read

# (name, file name, the bytes, how it is read, the error expected)
FILE_CASES = [
    (
        "gzip bomb as IDX images (64 MiB from 64 KiB)",
        "images.gz",
        lambda: gzip_bomb(64),
        "images",
        r"images.gz: inflates to more than the limit of 78,416 bytes \(data.max_rows=100 rows\): refused",
    ),
    (
        "gzip bomb as a CSV",
        "train.csv.gz",
        lambda: gzip_bomb(64),
        "csv",
        r"train.csv.gz: inflates to more than the limit of 318,196 bytes",
    ),
    (
        "nested gzip bomb (a gzip of a bomb) as IDX images",
        "nested.gz",
        lambda: gzip.compress(gzip_bomb(64)),
        "images",
        r"nested.gz: offset 0: magic number 0x1f8b0800, expected 0x00000803",
    ),
    (
        "nested gzip bomb as a CSV",
        "nested.csv.gz",
        lambda: gzip.compress(gzip_bomb(64)),
        "csv",
        r"nested.csv.gz: row 1: NUL bytes \(UTF-16 text without a byte-order mark\?\)",
    ),
    (
        "plain file over the limit",
        "big-images",
        lambda: idx_header("images", 200) + bytes(200 * 784),
        "images",
        r"big-images: 156,816 bytes, more than the limit of 78,416 bytes \(data.max_rows=100 rows\)",
    ),
    (
        "truncated gzip",
        "cut.gz",
        lambda: gzip.compress(idx_header("images", 2) + bytes(2 * 784))[:-12],
        "images",
        r"cut.gz: truncated gzip \(\d+ bytes read\)",
    ),
    (
        "corrupt gzip (flipped bytes in the deflate stream)",
        "corrupt.gz",
        lambda: gzip.compress(bytes(range(256)) * 8)[:10] + b"\xff" * 40 + bytes(8),
        "images",
        r"corrupt.gz: corrupt gzip: ",
    ),
    (
        "gzip with trailing garbage",
        "trailing.gz",
        lambda: gzip.compress(idx_header("labels", 1) + b"\x01") + b"garbage!",
        "labels",
        r"trailing.gz: corrupt gzip: Not a gzipped file",
    ),
    (
        "IDX header declaring a billion images",
        "liar-images",
        lambda: idx_header("images", 10**9) + bytes(784),
        "images",
        r"liar-images: offset 4: the header declares 1,000,000,000 images, expected 1..100",
    ),
    (
        "IDX header declaring zero images",
        "empty-images",
        lambda: idx_header("images", 0),
        "images",
        r"empty-images: offset 4: the header declares 0 images, expected 1..100",
    ),
    (
        "IDX header declaring more images than the body holds",
        "short-images",
        lambda: idx_header("images", 5) + bytes(3 * 784),
        "images",
        r"short-images: offset 16: 2352 data bytes, expected 3920 for dimensions 5 x 28 x 28",
    ),
    (
        "IDX header with 4096-row images",
        "tall-images",
        lambda: idx_header("images", 1, rows=4096) + bytes(784),
        "images",
        r"tall-images: offset 8: 4096 rows per image, expected 28",
    ),
    (
        "IDX labels file holding image magic",
        "swapped-labels",
        lambda: idx_header("images", 1),
        "labels",
        r"swapped-labels: offset 0: magic number 0x00000803, expected 0x00000801",
    ),
    (
        "IDX label outside the classes",
        "labels",
        lambda: idx_header("labels", 3) + bytes([1, 12, 2]),
        "labels",
        r"labels: offset 9: label 12, expected 0-9",
    ),
    (
        "IDX header cut inside",
        "stub-images",
        lambda: bytes([0, 0, 8, 3, 0, 0]),
        "images",
        r"stub-images: offset 6: file ends inside the IDX header, expected 16 header bytes",
    ),
    (
        "CSV with a header and zero rows",
        "zero.csv",
        lambda: csv_text([]).encode(),
        "csv",
        r"zero.csv: empty file: a header and no data rows",
    ),
    (
        "CSV with a NaN pixel",
        "nan.csv",
        lambda: csv_text([good_row(), good_row(pixel="nan", at=5)]).encode(),
        "csv",
        r"nan.csv: row 3, column 7 \(p5\): NaN, expected a pixel, an integer 0-255",
    ),
    (
        "CSV with an infinite pixel",
        "inf.csv",
        lambda: csv_text([good_row(pixel="inf", at=0)]).encode(),
        "csv",
        r"inf.csv: row 2, column 2 \(p0\): pixel inf out of range, expected a pixel, an integer 0-255",
    ),
    (
        "CSV with a negative pixel",
        "neg.csv",
        lambda: csv_text([good_row(pixel=-1, at=783)]).encode(),
        "csv",
        r"neg.csv: row 2, column 785 \(p783\): pixel -1 out of range",
    ),
    (
        "CSV with a pixel over 255",
        "hot.csv",
        lambda: csv_text([good_row(pixel=256, at=10)]).encode(),
        "csv",
        r"hot.csv: row 2, column 12 \(p10\): pixel 256 out of range",
    ),
    (
        "CSV with label 10 (outside the ten classes)",
        "label.csv",
        lambda: csv_text([good_row(), good_row(label=10)]).encode(),
        "csv",
        r"label.csv: row 3, column 1 \(label\): label 10 out of range, expected a label, an integer 0-9",
    ),
    (
        "CSV with more rows than data.max_rows",
        "long.csv",
        lambda: csv_text([good_row(label=i % 10) for i in range(101)]).encode(),
        "csv",
        r"long.csv: 101 rows, more than data.max_rows=100 rows",
    ),
    (
        "CSV of binary junk",
        "junk.csv",
        lambda: bytes(range(1, 256)) * 4,
        "csv",
        r"junk.csv: row 1 \(header\): 1 columns, expected 785 \(label \+ 784 pixels\)",
    ),
]


def read_file(path: Path, how: str) -> object:
    if how == "csv":
        return formats.read_csv(path, max_rows=MAX_ROWS)
    return formats.read_idx(path, how, max_rows=MAX_ROWS)


@pytest.mark.parametrize("name, file, make, how, message", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_hostile_data_files_are_refused_by_name(tmp_path, name, file, make, how, message):
    path = tmp_path / file
    path.write_bytes(make())
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=message):
        read_file(path, how)
    assert time.perf_counter() - t0 < 5  # refused early, not after inflating gigabytes


# ----------------------------------------------------------------------------- .npz files


def npz_case_arrays(tmp_path: Path) -> dict[str, np.ndarray]:
    with np.load(make_tiny_npz(tmp_path / "good.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def with_array(key: str, change):
    def make(tmp_path: Path) -> Path:
        arrays = npz_case_arrays(tmp_path)
        arrays[key] = change(arrays[key])
        return write_npz(tmp_path / "bad.npz", arrays)

    return make


def with_member(key: str, data: bytes):
    def make(tmp_path: Path) -> Path:
        members = {k: npy_bytes(v) for k, v in npz_case_arrays(tmp_path).items()}
        members[key] = data
        return npz_with(tmp_path / "bad.npz", members)

    return make


def truncated(fraction: float):
    def make(tmp_path: Path) -> Path:
        good = make_tiny_npz(tmp_path / "good.npz").read_bytes()
        (tmp_path / "bad.npz").write_bytes(good[: int(len(good) * fraction)])
        return tmp_path / "bad.npz"

    return make


def nan_at(row: int):
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[row, 100] = np.nan
        return a

    return change


# (name, how the file is made in tmp_path, the error expected from load_dataset)
NPZ_CASES = [
    (
        "declared shape of 10^12 rows",
        with_member("x_train", lying_npy((10**12, 784))),
        r"bad.npz: x_train: the header declares float32 \(1000000000000, 784\) \(3,136,000,000,000,000 bytes\) "
        r"but 64 bytes follow \(truncated or crafted\)",
    ),
    (
        "object array (a pickle)",
        with_member("y_train", npy_bytes(np.array([1, "rm -rf"], dtype=object))),
        r"bad.npz: y_train: dtype object holds Python objects \(a pickle\): expected numbers",
    ),
    ("file cut in half", truncated(0.5), r"bad.npz: not a readable .npz \(truncated or corrupt\)"),
    ("file cut to its first 10 bytes", truncated(0.0001), r"bad.npz: not a readable .npz"),
    (
        "member body shorter than its header",
        with_member("x_val", npy_bytes(np.zeros((16, 784), np.float32))[:-100]),
        r"bad.npz: x_val: the header declares float32 \(16, 784\) \(50,176 bytes\) but 50,076 bytes follow",
    ),
    ("member that is no .npy", with_member("x_test", b"PK junk" * 10), r"bad.npz: x_test: not an .npy array"),
    ("NaN pixel", with_array("x_train", nan_at(5)), r"bad.npz: x_train row 5: value nan, expected pixels in \[0, 1\]"),
    (
        "infinite pixel",
        with_array("x_test", lambda a: np.where(a > 0.9, np.inf, a)),
        r"bad.npz: x_test row \d+: value inf",
    ),
    ("pixels not scaled", with_array("x_val", lambda a: a * 255), r"bad.npz: x_val row \d+: value \d+\.\d+"),
    (
        "label 10 with ten classes",
        with_array("y_val", lambda a: np.where(np.arange(len(a)) == 2, 10, a)),
        r"bad.npz: y_val row 2: label 10, expected 0..9 \(the model's classes\)",
    ),
    ("float labels", with_array("y_train", lambda a: a.astype(np.float64)), r"bad.npz: y_train must be int labels"),
    (
        "integer pixels",
        with_array("x_train", lambda a: (a * 255).astype(np.uint8)),
        r"bad.npz: x_train must be a float",
    ),
    ("string pixels", with_array("x_test", lambda a: a.astype(str)), r"bad.npz: x_test must be a float"),
    ("3-d pixels", with_array("x_val", lambda a: a.reshape(-1, 28, 28)), r"bad.npz: x_val must be a float \(N, 784\)"),
    ("zero train rows", with_array("x_train", lambda a: a[:0]), r"bad.npz: y_train must be int labels of shape \(0,\)"),
]


@pytest.mark.parametrize("name, make, message", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_hostile_processed_npz_is_refused_by_name(tmp_path, name, make, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", make(tmp_path))


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    """A deflated member declaring 64 MiB from ~64 KiB: refused on its declared size."""
    path = npz_with(tmp_path / "bomb.npz", {"x": npy_bytes(np.zeros((1 << 24,), np.float32))}, compress=True)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(NpzError, match=r"bomb.npz: 67,108,992 bytes of arrays, more than the limit of 1,048,576"):
        read_npz(path, max_bytes=1 << 20)


# ----------------------------------------------------------------------------- weights files


def weights_file(tmp_path: Path, change=None, spec_json: object = None) -> Path:
    spec = MLPSpec((4, 3, 2))
    save_weights(tmp_path / "w.npz", spec, init_params(spec, InitSpec(seed=0)))
    with np.load(tmp_path / "w.npz") as npz:
        members = {k: npy_bytes(npz[k]) for k in npz.files}
    if change:
        change(members)
    if spec_json is not None:
        members["spec"] = npy_bytes(np.array(spec_json))
    return npz_with(tmp_path / "w.npz", members)


def set_member(key: str, value: bytes):
    return lambda members: members.__setitem__(key, value)


WEIGHTS_CASES = [
    ("NaN weight", dict(change=set_member("W1", npy_bytes(np.full((3, 2), np.nan)))), r"w.npz: W1 holds NaN"),
    ("integer weights", dict(change=set_member("b0", npy_bytes(np.zeros(3, np.int64)))), r"b0 has dtype int64"),
    ("complex weights", dict(change=set_member("W0", npy_bytes(np.zeros((4, 3), complex)))), r"W0 has dtype complex"),
    (
        "declared shape of 10^10 x 10^10",
        dict(change=set_member("W0", lying_npy((10**10, 10**10), "<f8"))),
        r"w.npz: W0: the header declares float64 \(10000000000, 10000000000\)",
    ),
    (
        "object array in place of W0",
        dict(change=set_member("W0", npy_bytes(np.array([{"a": 1}], dtype=object)))),
        r"w.npz: W0: dtype object holds Python objects \(a pickle\)",
    ),
    (
        "spec as a pickle",
        dict(change=set_member("spec", npy_bytes(np.array([None], dtype=object)))),
        r"w.npz: spec: dtype object holds Python objects",
    ),
    ("spec that is no JSON", dict(spec_json="{sizes: oops"), r"w.npz: spec is not an MLPSpec's JSON"),
    ("spec with unknown fields", dict(spec_json=json.dumps({"sizes": [4, 2], "x": 1})), r"spec is not an MLPSpec's"),
    (
        "spec claiming a billion inputs",
        dict(spec_json=json.dumps({"sizes": [10**9, 3, 2]})),
        r"w.npz: W0 has shape \(4, 3\), the spec needs \(1000000000, 3\)",
    ),
    ("spec as a number array", dict(spec_json=np.arange(3)), r"w.npz: spec is int64 \(3,\), expected a JSON string"),
]


@pytest.mark.parametrize("name, how, message", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_hostile_weights_are_refused_by_name(tmp_path, name, how, message):
    with pytest.raises(ValueError, match=message):
        load_weights(weights_file(tmp_path, **how))


def test_truncated_weights_are_refused(tmp_path):
    path = weights_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(NpzError, match=r"w.npz: not a readable .npz \(truncated or corrupt\)"):
        load_weights(path)


# ----------------------------------------------------------------------------- mirrors


class Mirror(LoopbackHTTP):
    """A real HTTP server on 127.0.0.1 with hostile paths:
    /endless  200, no Content-Length, zeros until the client hangs up
    /drip     200, a Content-Length of 1000, then one byte every 0.1 s
    /liar     200, a Content-Length of 10 GB (and a few bytes)
    /stall    200, headers, then silence
    """

    def __init__(self):
        self.stop = threading.Event()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                self.send_response(200)
                if name != "endless":
                    self.send_header("Content-Length", "10000000000" if name == "liar" else "1000")
                self.end_headers()
                self.wfile.flush()
                try:
                    self.serve(name)
                except OSError:  # the client hung up: what the test wants
                    pass

            def serve(self, name: str) -> None:
                if name == "endless":
                    while not mirror.stop.is_set():
                        self.wfile.write(bytes(1 << 16))
                elif name == "drip":
                    for _ in range(1000):
                        if mirror.stop.wait(0.1):
                            return
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                elif name == "liar":
                    self.wfile.write(b"\0" * 10)
                elif name == "stall":
                    mirror.stop.wait(30)

        self.listen(Handler)
        self.url = self.base + "/m"

    def __exit__(self, *exc):
        self.stop.set()  # first: a handler waiting on it lets shutdown() return
        super().__exit__(*exc)


@pytest.fixture(scope="module")
def mirror():
    with Mirror() as m:
        yield m


# (name, the file asked for, fetch's limits, the error expected)
MIRROR_CASES = [
    (
        "endless body",
        "endless",
        dict(max_bytes=200_000, deadline_s=10, timeout_s=5),
        r"/m/endless: body still going after 200,000 bytes: more than the limit of 200,000 bytes for endless",
    ),
    (
        "a byte every 0.1 s",
        "drip",
        dict(max_bytes=200_000, deadline_s=1.0, timeout_s=5),
        r"/m/drip: deadline of 1 s per attempt passed after \d+ bytes \(try 1/1\)",
    ),
    (
        "Content-Length of 10 GB",
        "liar",
        dict(max_bytes=200_000, deadline_s=10, timeout_s=5),
        r"/m/liar: Content-Length 10,000,000,000: more than the limit of 200,000 bytes for liar",
    ),
    ("headers then silence", "stall", dict(max_bytes=200_000, deadline_s=10, timeout_s=0.5), r"/m/stall: .*timed out"),
]


@pytest.mark.parametrize("name, file, limits, message", MIRROR_CASES, ids=[c[0] for c in MIRROR_CASES])
def test_hostile_mirrors_stop_at_the_size_cap_or_the_deadline(
    mirror, tmp_path, monkeypatch, name, file, limits, message
):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=message):
        download.fetch([mirror.url], file, tmp_path / file, "0" * 64, attempts=1, progress=False, **limits)
    assert time.perf_counter() - t0 < 4
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_a_valid_file_fits_its_download_limit():
    """The limits are upper bounds a real file never reaches: 60,000 MNIST rows, gzipped or not."""
    assert download.download_limit("train_images", 60_000) > 16 + 60_000 * 784
    assert download.download_limit("train_labels", 60_000) > 8 + 60_000
    x, y = make_split(3, 0)
    text = csv_text([[int(label), *row] for row, label in zip(x.tolist(), y.tolist())]).encode()
    assert len(zlib.compress(text)) < download.download_limit("train", 3)
