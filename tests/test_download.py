"""The download stage against a local HTTP server on 127.0.0.1 (no network): good files,
a wrong checksum, a 404, a server that drops the connection mid-body, a failing first
mirror, transient 503s; plus the embedded and file sources and the stage's main()."""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import LoopbackHTTP, make_split

from backprop_bench.core.checks import ParamsError
from backprop_bench.data import download, formats
from backprop_bench.data.download import DownloadError
from backprop_bench.data.formats import N_PIXELS


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server(LoopbackHTTP):
    """Serves `files` (path -> bytes). `drop` paths send half the body and hang up;
    `fail_first[path] = k` answers 503 to the first k requests. `log` records every path asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()
        self.fail_first: dict[str, int] = {}
        self.log: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.log.append(self.path)
                if server.fail_first.get(self.path, 0) > 0:
                    server.fail_first[self.path] -= 1
                    self.send_error(503, "busy")
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.drop:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # hang up with the rest promised
                    return
                self.wfile.write(body)

        self.listen(Handler)
        self.url = self.base


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never route the test through a proxy
    with Server() as s:
        yield s


@pytest.fixture
def sleeps():
    """A stand-in for time.sleep that records the backoff instead of waiting."""
    waited: list[float] = []
    return waited


def fetch(server, sleeps, tmp_path, name="f.bin", mirrors=("/m1",), sha256=None, attempts=3):
    return download.fetch(
        [server.url + m for m in mirrors],
        name,
        tmp_path / "dl" / name,
        sha256 or sha(server.files.get(f"{mirrors[-1]}/{name}", b"")),
        attempts=attempts,
        backoff_s=0.5,
        timeout_s=5,
        progress=False,
        sleep=sleeps.append,
    )


def load(data: dict, cache_dir: Path):
    """What the stage's main() does with params.yaml's `data:` section: unpack it, then load."""
    return download.load_source(download.read_params(data), cache_dir, progress=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- fetch


def test_fetch_streams_checks_and_renames(server, sleeps, tmp_path):
    body = bytes(range(256)) * 1000
    server.files["/m1/f.bin"] = body
    dest = fetch(server, sleeps, tmp_path)
    assert dest.read_bytes() == body
    assert leftovers(dest.parent) == ["f.bin"]  # the temp file was renamed, not copied
    # A good file already in place is kept: no second request.
    fetch(server, sleeps, tmp_path)
    assert server.log == ["/m1/f.bin"] and sleeps == []


def test_wrong_checksum_names_url_and_expected_hash_and_leaves_nothing(server, sleeps, tmp_path):
    server.files["/m1/f.bin"] = b"not what was published"
    expected = "ab" * 32
    with pytest.raises(DownloadError) as info:
        fetch(server, sleeps, tmp_path, sha256=expected)
    message = str(info.value)
    assert f"could not download f.bin (expected sha256 {expected})" in message
    assert f"{server.url}/m1/f.bin: sha256 {sha(b'not what was published')} (22 bytes), expected {expected}" in message
    assert leftovers(tmp_path / "dl") == []
    assert server.log == ["/m1/f.bin"]  # the same bytes again would not help: no retry


def test_404_names_url_and_is_not_retried(server, sleeps, tmp_path):
    with pytest.raises(DownloadError, match=r"/m1/f.bin: HTTP 404 Not Found \(try 1/3\)") as info:
        fetch(server, sleeps, tmp_path, sha256="cd" * 32)
    assert f"{server.url}/m1/f.bin" in str(info.value)
    assert server.log == ["/m1/f.bin"] and sleeps == []
    assert leftovers(tmp_path / "dl") == []


def test_connection_dropped_mid_body_is_retried_with_backoff_then_fails(server, sleeps, tmp_path):
    body = b"x" * 100_000
    server.files["/m1/f.bin"] = body
    server.drop.add("/m1/f.bin")
    with pytest.raises(DownloadError) as info:
        fetch(server, sleeps, tmp_path)
    message = str(info.value)
    assert f"expected sha256 {sha(body)}" in message
    assert f"{server.url}/m1/f.bin: connection dropped mid-body: 50000 of 100000 bytes received (try 3/3)" in message
    assert server.log == ["/m1/f.bin"] * 3
    assert sleeps == [0.5, 1.0]  # exponential backoff between the three tries
    assert leftovers(tmp_path / "dl") == []  # no partial file


def test_first_mirror_failing_then_second_succeeding(server, sleeps, tmp_path):
    body = b"payload" * 999
    server.files["/m2/f.bin"] = body  # /m1 has nothing: 404
    dest = fetch(server, sleeps, tmp_path, mirrors=("/m1", "/m2"))
    assert dest.read_bytes() == body
    assert server.log == ["/m1/f.bin", "/m2/f.bin"]


def test_transient_503_is_retried_on_the_same_mirror(server, sleeps, tmp_path):
    body = b"eventually" * 50
    server.files["/m1/f.bin"] = body
    server.fail_first["/m1/f.bin"] = 2
    dest = fetch(server, sleeps, tmp_path)
    assert dest.read_bytes() == body
    assert server.log == ["/m1/f.bin"] * 3 and sleeps == [0.5, 1.0]


def test_unreachable_mirror_is_reported(sleeps, tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with Server() as s:
        dead = s.url  # a port that nothing listens on once the server is closed
    with pytest.raises(DownloadError, match=r"cannot connect: .*\(try 2/2\)"):
        download.fetch(
            [dead], "f.bin", tmp_path / "f.bin", "0" * 64, attempts=2, backoff_s=0, progress=False, sleep=sleeps.append
        )


# ----------------------------------------------------------------------------- sources


def idx_catalog(server, tmp_path, train, test) -> dict:
    """Serve an IDX quartet from /mnist/ and return its catalog entry (names + sha256)."""
    files = {}
    for role, array in (
        ("train_images", train[0].reshape(-1, 28, 28)),
        ("train_labels", train[1]),
        ("test_images", test[0].reshape(-1, 28, 28)),
        ("test_labels", test[1]),
    ):
        name = f"{role}.gz"
        formats.write_idx(tmp_path / name, array)
        body = (tmp_path / name).read_bytes()
        server.files[f"/mnist/{name}"] = body
        files[role] = {"name": name, "sha256": sha(body)}
    return {"url": {"format": "idx", "mirrors": [server.url + "/nowhere/", server.url + "/mnist/"], "files": files}}


def url_params(catalog: dict) -> dict:
    return {
        "dataset": "mnist",
        "source": "url",
        "url": {"attempts": 1, "backoff_s": 0, "timeout_s": 5},
        "catalog": {"mnist": catalog},
    }


def test_url_source_idx_quartet(server, tmp_path):
    train, test = make_split(30, 1), make_split(10, 2)
    params = url_params(idx_catalog(server, tmp_path, train, test))
    (x_tr, y_tr), (x_te, y_te) = load(params, tmp_path / "cache")
    np.testing.assert_array_equal(x_tr, train[0])
    np.testing.assert_array_equal(y_te, test[1])
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(
        f"{r}.gz" for r in download.IDX_ROLES
    )


def test_url_source_csv(server, tmp_path):
    train, test = make_split(12, 3), make_split(5, 4)
    files = {}
    for role, (x, y) in (("train", train), ("test", test)):
        formats.write_canonical_csv(tmp_path / f"{role}.csv", x, y)
        body = (tmp_path / f"{role}.csv").read_bytes()
        server.files[f"/csv/{role}.csv"] = body
        files[role] = {"name": f"{role}.csv", "sha256": sha(body)}
    params = url_params({"url": {"format": "csv", "mirrors": [server.url + "/csv"], "files": files}})
    (x_tr, y_tr), (x_te, y_te) = load(params, tmp_path / "cache")
    np.testing.assert_array_equal(x_tr, train[0])
    np.testing.assert_array_equal(y_te, test[1])


def test_embedded_source_is_a_fixed_stratified_split_of_real_digits():
    (x_tr, y_tr), (x_te, y_te) = download.load_embedded(test_size=1000, seed=0)
    assert x_tr.shape == (4000, N_PIXELS) and x_te.shape == (1000, N_PIXELS)
    assert np.bincount(y_tr).tolist() == [400] * 10 and np.bincount(y_te).tolist() == [100] * 10
    assert x_tr.dtype == np.uint8 and 200 < x_tr.max() <= 255  # real digits use the full range
    # No image is in both splits.
    seen = {row.tobytes() for row in x_tr}
    assert not any(row.tobytes() in seen for row in x_te)
    (x_again, _), _ = download.load_embedded(test_size=1000, seed=0)
    np.testing.assert_array_equal(x_tr, x_again)


def test_file_source_kaggle_csv_and_idx_folder(tmp_path):
    train, test = make_split(8, 5), make_split(4, 6)
    kaggle_header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    for name, (x, y) in (("mnist_train.csv", train), ("mnist_test.csv", test)):
        rows = [",".join(map(str, [label, *row])) for row, label in zip(x.tolist(), y.tolist())]
        (tmp_path / name).write_text("\n".join([kaggle_header, *rows]) + "\n")
    params = {
        "dataset": "mnist",
        "source": "file",
        "file": {
            "format": "csv",
            "train_csv": str(tmp_path / "mnist_train.csv"),
            "test_csv": str(tmp_path / "mnist_test.csv"),
        },
    }
    (x_tr, _), (_, y_te) = load(params, tmp_path / "cache")
    np.testing.assert_array_equal(x_tr, train[0])
    np.testing.assert_array_equal(y_te, test[1])

    folder = tmp_path / "fashion"
    names = {}
    for role, array in (
        ("train_images", train[0].reshape(-1, 28, 28)),
        ("train_labels", train[1]),
        ("test_images", test[0].reshape(-1, 28, 28)),
        ("test_labels", test[1]),
    ):
        names[role] = {"name": f"{role}-ubyte.gz", "sha256": "unchecked for local files"}
        formats.write_idx(folder / names[role]["name"], array)
    params = {
        "dataset": "fashion_mnist",
        "source": "file",
        "file": {"format": "idx", "dir": None},
        "catalog": {"fashion_mnist": {"url": {"format": "idx", "files": names}, "local_dir": str(folder)}},
    }
    (x_tr, _), (_, y_te) = load(params, tmp_path / "cache")
    np.testing.assert_array_equal(x_tr, train[0])
    np.testing.assert_array_equal(y_te, test[1])


@pytest.mark.parametrize(
    "params, pattern",
    [
        ({"source": "ftp"}, r"data.source='ftp': must be one of embedded, url, file"),
        (
            {"source": "embedded", "dataset": "fashion_mnist"},
            r"data.dataset='fashion_mnist': must be mnist with data.source=embedded \(it holds MNIST digits only",
        ),
        (
            {"source": "embedded", "embedded": {"test_size": 5000}},
            r"data.embedded.test_size=5000: must be in 1..4999 \(the embedded set has 5000 rows\)",
        ),
        ({"source": "embedded", "embedded": {"seed": "zero"}}, r"data.embedded.seed='zero': must be an integer >= 0"),
        (
            {
                "source": "url",
                "url": {"attempts": 0},
                "catalog": {
                    "mnist": {
                        "url": {
                            "format": "idx",
                            "files": {r: {"name": r, "sha256": "0" * 64} for r in download.IDX_ROLES},
                        }
                    }
                },
            },
            r"data.url.attempts=0: must be an integer >= 1",
        ),
        (
            {"source": "url", "catalog": {"mnist": {"url": {"format": "zip"}}}},
            r"data.catalog.mnist.url.format='zip': must be one of csv, idx",
        ),
        (
            {"source": "url", "dataset": "kmnist", "catalog": {"mnist": {}}},
            r"data.dataset='kmnist': must be one of data.catalog's entries: mnist",
        ),
        (
            {"source": "url", "catalog": {"mnist": {"url": {"format": "idx", "files": {}}}}},
            r"data.catalog.mnist.url.files={}: needs a name and a sha256 for "
            r"train_images, train_labels, test_images, test_labels",
        ),
        (
            {"source": "file", "catalog": {"mnist": {}}, "file": {"format": "csv"}},
            r"data.file.train_csv=None: must name a CSV file \(data.source=file, format csv\)",
        ),
        (
            {"source": "file", "catalog": {"mnist": {}}, "file": {"format": "tsv"}},
            r"data.file.format='tsv': must be one of csv, idx",
        ),
        (
            {"source": "file", "catalog": {"mnist": {"local_dir": None}}, "file": {"format": "idx"}},
            r"data.file.dir=None: must name the folder .* data.catalog.mnist.local_dir is not set either",
        ),
        ({"source": "url", "catalog": {"mnist": "oops"}}, r"data.catalog.mnist='oops': must be a mapping"),
        ({"source": "url", "url": {"timeout_s": 0}}, r"data.url.timeout_s=0: must be a number >= 0.001"),
        ({"source": "url", "url": {"deadline_s": -1}}, r"data.url.deadline_s=-1: must be a number >= 0.001"),
        ({"source": "url", "max_rows": 0}, r"data.max_rows=0: must be an integer >= 1"),
        (
            {
                "source": "file",
                "file": {"format": "csv", "dir": "data/local", "train_csv": "../x.csv", "test_csv": "t"},
            },
            r"data.file.train_csv='../x.csv': must be a file in data.file.dir=data/local, the folder DVC watches",
        ),
        (
            {"source": "file", "file": {"format": "csv", "dir": "data/local", "train_csv": "a", "test_csv": "/etc/t"}},
            r"data.file.test_csv='/etc/t': must be a file in data.file.dir=data/local",
        ),
    ],
)
def test_config_errors_name_the_option(params, pattern, tmp_path):
    with pytest.raises(ParamsError, match=pattern):
        load(params, tmp_path)


def test_read_params_unpacks_the_repo_params_into_plain_values():
    p = download.read_params(formats.read_data_params(Path(__file__).parents[1] / "params.yaml"))
    assert (p.source, p.dataset, p.test_size, p.split_seed) == ("embedded", "mnist", 1000, 0)
    assert (p.attempts, p.backoff_s, p.timeout_s, p.deadline_s) == (3, 2.0, 60.0, 1800.0)
    assert (p.max_rows, p.file_dir) == (100_000, "data/local")
    assert isinstance(p.backoff_s, float) and isinstance(p.timeout_s, float)
    assert p.catalogs["fashion_mnist"].local_dir == "/usr/share/datasets/fashion-mnist"
    assert p.catalog().where == "data.catalog.mnist" and p.catalog().format == "idx"


def test_the_repo_params_catalog_is_complete():
    """params.yaml's catalogs carry a name and a 64-hex sha256 for all four IDX files."""
    data = formats.read_data_params(Path(__file__).parents[1] / "params.yaml")
    for dataset in ("mnist", "fashion_mnist"):
        files = download.read_params(data).catalogs[dataset].files_for("idx")
        assert all(len(f["sha256"]) == 64 and int(f["sha256"], 16) >= 0 for f in files.values())
        assert data["catalog"][dataset]["url"]["mirrors"]


# ----------------------------------------------------------------------------- main()


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_main_writes_canonical_csvs_and_a_failure_keeps_them(server, tmp_path, capsys):
    train, test = make_split(20, 7), make_split(10, 8)
    catalog = idx_catalog(server, tmp_path, train, test)
    params = write_params(tmp_path / "params.yaml", url_params(catalog))
    out = tmp_path / "raw"
    argv = ["--params", str(params), "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert download.main(argv) == 0
    assert "20 rows, per class [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]" in capsys.readouterr().out
    assert (out / "train.csv").read_text().startswith("label,p0,p1,")
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    x, y = formats.read_csv(out / "test.csv")
    np.testing.assert_array_equal(x, test[0])

    # Now the published checksum of one file no longer matches: exit 1, a clear message,
    # and the previous outputs untouched.
    catalog["url"]["files"]["test_labels"]["sha256"] = "0" * 64
    write_params(params, url_params(catalog))
    assert download.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("download: error: could not download test_labels.gz (expected sha256 0000")
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


def test_a_file_source_with_zero_images_keeps_the_good_csvs(tmp_path, capsys):
    """An IDX quartet whose train split holds no images is refused by name before anything
    is replaced; the CSVs are read from data.file.dir, by names relative to it."""
    local = tmp_path / "local"
    train, test = make_split(10, 1), make_split(10, 2)
    names = {role: {"name": f"{role}.gz", "sha256": "unchecked"} for role in download.IDX_ROLES}
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}
    for role, array in arrays.items():
        formats.write_idx(local / f"{role}.gz", array.reshape(-1, 28, 28) if role.endswith("images") else array)
    data = {
        "source": "file",
        "file": {"format": "idx", "dir": str(local)},
        "catalog": {"mnist": {"url": {"format": "idx", "files": names}}},
    }
    params = write_params(tmp_path / "params.yaml", data)
    out = tmp_path / "raw"
    argv = ["--params", str(params), "--out-dir", str(out), "--no-progress"]
    assert download.main(argv) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    formats.write_idx(local / "train_images.gz", np.zeros((0, 28, 28), np.uint8))
    formats.write_idx(local / "train_labels.gz", np.zeros(0, np.uint8))
    assert download.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"download: error: {local / 'train_images.gz'}: offset 4: the header declares 0 images, "
        "expected 1..100,000 (data.max_rows=100,000 rows)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good

    # csv: names relative to data.file.dir
    formats.write_canonical_csv(local / "tr.csv", *train)
    formats.write_canonical_csv(local / "te.csv", *test)
    data["file"] = {"format": "csv", "dir": str(local), "train_csv": "tr.csv", "test_csv": "te.csv"}
    (x_tr, _), (_, y_te) = load(data, tmp_path / "cache")
    np.testing.assert_array_equal(x_tr, train[0])
    np.testing.assert_array_equal(y_te, test[1])
