"""core/files.py: atomic, durable writes (bytes, text, a writer function), all-or-nothing folders and
their leftovers, one writer per folder, the streamed sha256, the writers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backprop_bench.core.files import (
    Busy,
    NpzError,
    all_or_nothing,
    atomic_write,
    npz_bytes,
    one_writer,
    read_npz,
    sha256_file,
    write_csv,
    write_json,
    write_npy,
    write_npz,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "old")
    assert path.read_text() == "old"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()

    def half_then_crash(f):
        f.write(b"new but half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old"  # the old file is untouched
    assert os.listdir(path.parent) == ["f.txt"]  # no temp file left


def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"good")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode
    atomic_write(target, "é")  # text is written as UTF-8
    assert target.read_bytes() == "é".encode()
    assert atomic_write(target, lambda f: f.write(b"streamed")) == target
    assert target.read_bytes() == b"streamed"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_sha256_file_streams_the_whole_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 5)  # more than one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()
    write_json(tmp_path / "m.json", {"x": None, "y": 1.5})
    assert (tmp_path / "m.json").read_text().endswith("}\n")
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 1.5}


def test_write_csv_header_then_rows(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"], [float("nan"), ""]])
    assert (tmp_path / "t.csv").read_text() == 'a,b\n1,"x,y"\nnan,\n'


def test_write_npy_round_trips(tmp_path):
    write_npy(tmp_path / "p.npy", np.arange(5, dtype=np.int64))
    loaded = np.load(tmp_path / "p.npy")
    assert loaded.dtype == np.int64 and loaded.tolist() == [0, 1, 2, 3, 4]


def test_npz_bytes_load_back_and_are_deterministic(tmp_path):
    arrays = {"x_train": np.ones((3, 4), np.float32), "y_train": np.arange(3)}
    payload = npz_bytes(arrays)
    assert payload == npz_bytes(dict(arrays))  # no timestamps in the zip
    write_npz(tmp_path / "a.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == payload
    with np.load(tmp_path / "a.npz") as loaded:
        assert sorted(loaded.files) == ["x_train", "y_train"]
        np.testing.assert_array_equal(loaded["y_train"], arrays["y_train"])


def test_npz_keeps_shapes_orders_and_zero_d_arrays(tmp_path):
    arrays = {"s": np.array("text"), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "v": np.arange(10)[::2]}
    write_npz(tmp_path / "a.npz", arrays)
    with np.load(tmp_path / "a.npz") as loaded:
        assert loaded["s"].shape == () and str(loaded["s"]) == "text"
        for key in ("f", "v"):
            np.testing.assert_array_equal(loaded[key], arrays[key])


def test_all_or_nothing_replaces_the_files_together(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with all_or_nothing(tmp_path, ["a.txt", "b.txt"]) as stage:
        atomic_write(stage / "a.txt", "new a")
        atomic_write(stage / "b.txt", "new b")
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing lands before the block ends
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # the staging folder is gone


def test_all_or_nothing_rolls_back_when_a_move_fails(tmp_path, monkeypatch):
    for name in ("a.txt", "c.txt"):
        (tmp_path / name).write_text(f"old {name}")
    real_replace = os.replace

    def replace(src, dst):  # the third move into tmp_path fails (a full disk, a permission)
        if Path(dst).parent == tmp_path and Path(src).parent.name.startswith(".staging-"):
            moved.append(Path(dst).name)
            if len(moved) == 3:
                raise OSError("injected")
        return real_replace(src, dst)

    moved: list[str] = []
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        with all_or_nothing(tmp_path, ["a.txt", "b.txt", "c.txt"]) as stage:
            for name in ("a.txt", "b.txt", "c.txt"):
                atomic_write(stage / name, f"new {name}")
    assert moved == ["a.txt", "b.txt", "c.txt"]
    # a.txt has its old bytes back, b.txt (which did not exist) is gone, c.txt was never replaced
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old a.txt", "c.txt": "old c.txt"}


def test_all_or_nothing_leaves_out_dir_alone_on_an_error_in_the_block(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with all_or_nothing(tmp_path, ["a.txt"]) as stage:
            atomic_write(stage / "a.txt", "new")
            raise RuntimeError("the second file could not be made")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


def test_exit_now_flushes_output_and_logs_then_exits_with_the_code(tmp_path):
    """exit_now skips the interpreter's teardown (and atexit), but nothing printed or logged is lost."""
    import subprocess
    import sys

    code = (
        "import atexit, logging, sys\n"
        "from backprop_bench.core.files import exit_now\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "logging.getLogger('x').info('logged line')\n"
        "atexit.register(print, 'atexit ran')\n"
        "print('printed', end='')\n"
        "sys.stderr.write('to stderr')\n"
        "exit_now(int(sys.argv[2]))\n"
    )
    log = tmp_path / "log.txt"
    for rc in (0, 3):
        cmd = [sys.executable, "-c", code, str(log), str(rc)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout, out.stderr) == (rc, "printed", "to stderr")
        assert "logged line" in log.read_text()


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    kind = lambda fd: "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"  # noqa: E731
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(kind(fd)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    atomic_write(tmp_path / "f.txt", "x")
    assert events == ["file", "rename", "dir"]


# A child that stages a file in out_dir, says so, and waits to be killed there: between the
# staging and the moves, as a power cut or the OOM killer would leave it.
STAGE_AND_WAIT = """
import sys, time
from backprop_bench.core.files import all_or_nothing
with all_or_nothing(sys.argv[1], ["a.txt"]) as stage:
    (stage / "a.txt").write_text("never moved")
    print("staged", flush=True)
    time.sleep(60)
"""

HOLD_LOCK = """
import sys, time
from backprop_bench.core.files import one_writer
with one_writer(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def _child(code: str, arg: Path, ready: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", code, str(arg)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == ready
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def test_a_killed_writers_staging_folder_is_removed_at_the_next_start(tmp_path):
    child = _child(STAGE_AND_WAIT, tmp_path, "staged")
    try:
        (live,) = tmp_path.glob(".staging-*")  # the child's own, while it lives, is left alone
        with all_or_nothing(tmp_path, []):
            assert live.is_dir()
    finally:
        _kill(child)
    assert live.is_dir()  # killed: nothing cleaned up after it
    with all_or_nothing(tmp_path, ["b.txt"]) as stage:
        (stage / "b.txt").write_text("new")
    assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_one_writer_refuses_a_second_process_naming_the_folder_and_pid(tmp_path):
    child = _child(HOLD_LOCK, tmp_path, "holding")
    try:
        with pytest.raises(Busy, match=rf"out_dir {tmp_path} is being written by another process \(pid {child.pid}\)"):
            with one_writer(tmp_path, "out_dir"):
                pass
    finally:
        _kill(child)
    with one_writer(tmp_path) as folder:  # the kernel dropped the dead holder's lock
        assert (folder / ".writer.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".writer.lock").exists()  # not left among the folder's outputs
    with one_writer(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()  # made for the lock, left empty: removed again


def test_one_writer_does_not_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".writer.lock").symlink_to(target)
    with pytest.raises(OSError):
        with one_writer(tmp_path / "out"):
            pass
    assert target.read_text() == "keep"


# ----------------------------------------------------------------------------- read_npz


def test_read_npz_reads_what_np_savez_writes(tmp_path):
    arrays = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "s": np.array('{"sizes": [4, 2]}'),
        "e": np.zeros((0, 784), np.float32),
    }
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    write_npz(tmp_path / "ours.npz", arrays)
    for name in ("plain.npz", "packed.npz", "ours.npz"):
        got = read_npz(tmp_path / name)
        assert sorted(got) == sorted(arrays)
        for key, value in arrays.items():
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value)
        assert got["x"].flags.writeable
    assert list(read_npz(tmp_path / "ours.npz", ["s"])) == ["s"]


def test_read_npz_checks_headers_before_loading(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([1, "x"], dtype=object))
    with pytest.raises(NpzError, match=r"obj.npz: a: dtype object holds Python objects \(a pickle\)"):
        read_npz(tmp_path / "obj.npz")
    write_npz(tmp_path / "a.npz", {"x": np.zeros((100, 10))})
    with pytest.raises(NpzError, match=r"a.npz: missing key\(s\) y, z; has x"):
        read_npz(tmp_path / "a.npz", ["x", "y", "z"])
    with pytest.raises(NpzError, match=r"a.npz: 8,128 bytes of arrays, more than the limit of 8,000"):
        read_npz(tmp_path / "a.npz", max_bytes=8000)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:-30])
    with pytest.raises(NpzError, match=r"cut.npz: not a readable .npz \(truncated or corrupt\)"):
        read_npz(tmp_path / "cut.npz")
