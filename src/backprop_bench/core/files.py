"""Every file the project writes goes through here: atomically, and in one format per kind.

Atomic: the content goes to a temp file beside the target, is fsynced, and ``os.replace``
then moves it over the target, whose folder is fsynced in turn; so a reader (DVC, compare, a
rerun after a crash, even after a power cut) sees the old file or the new one, never half of
one. ``sha256_file`` streams, so a 100 MB CSV is never in memory. ``one_writer`` keeps two
processes from writing one folder at once.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

# What atomic_write takes: the bytes, a text (written as UTF-8), or a function that writes
# into the open binary temp file (for writers that stream, like np.save or a download).
Content = bytes | str | Callable[[BinaryIO], None]


def atomic_write(path: str | Path, content: Content) -> Path:
    """Write content to a temp file beside ``path``, then move it over ``path``.

    The parent folder is created. On any error (also one raised by a writer function)
    the temp file is removed and ``path`` keeps what it had. The file gets the usual
    mode (0o666 minus the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())  # the bytes on disk before the name points at them
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # and the rename itself
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make the entries of folder (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def all_or_nothing(out_dir: str | Path, names: Sequence[str]) -> Iterator[Path]:
    """A staging folder inside out_dir: write the files called ``names`` there. When the block
    ends without an error they replace their namesakes in out_dir together; if one move
    fails, the files already moved are put back as they were (or removed where there was
    none), so out_dir holds all the old files or all the new ones, never a mix. On an error
    inside the block out_dir is untouched. The staging folder is always removed; one left by a
    killed process (its name carries the pid) is removed by the next all_or_nothing there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING}{os.getpid()}-"))
    try:
        yield stage  # the writers (atomic_write) fsync each file they stage
        _replace_all([(stage / name, out_dir / name) for name in names], stage / ".previous")
        fsync_dir(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


STAGING = ".staging-"  # all_or_nothing's folders: .staging-<pid>-<random>


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders in out_dir whose process is gone (killed between two moves,
    say); returns them. A live process's folder, or one named otherwise, is left alone."""
    removed = []
    for stage in out_dir.glob(STAGING + "*"):
        pid = stage.name[len(STAGING) :].split("-", 1)[0]
        if stage.is_dir() and not stage.is_symlink() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class Busy(RuntimeError):
    """Another process is writing the folder."""


@contextlib.contextmanager
def one_writer(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold folder's writer lock (``folder/.writer.lock``, an flock) for the block, or raise Busy
    at once, naming the folder and the pid that holds it: two runs into one out_dir would
    interleave their files. The lock file is removed on the way out, so it never ends up among
    the folder's outputs (a DVC out), and so is the folder if this made it and it stayed empty
    (a run that failed before writing leaves nothing)."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".writer.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Busy(
                f"{what} {folder} is being written by another process (pid {holder}): "
                "give each run its own out_dir, or wait for that one to end"
            ) from None
        # The holder before us may have removed the file between our open and our lock: then
        # our lock is on a name no one else sees, so start again on the current file.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote its files
                folder.rmdir()


def _replace_all(moves: Sequence[tuple[Path, Path]], keep: Path) -> None:
    """os.replace each (src, dst) in turn; on a failure, undo the ones done. ``keep`` holds hard
    links to the old targets (same folder tree, so same file system), which outlive the replace."""
    keep.mkdir()
    done: list[tuple[Path, Path | None]] = []
    try:
        for src, dst in moves:
            old = keep / dst.name if dst.exists() else None
            if old is not None:
                os.link(dst, old)
            os.replace(src, dst)
            done.append((dst, old))
    except BaseException:
        for dst, old in reversed(done):
            if old is None:
                dst.unlink(missing_ok=True)
            else:
                os.replace(old, dst)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it: put it straight back
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Mapping[str, Any]) -> Path:
    """Indented JSON plus a final newline. NaN is refused: it is not JSON (write None)."""
    return atomic_write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A header line, then one line per row; values as str() writes them, "\\n" line ends."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, text.getvalue())


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """One array as .npy (no pickles)."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz (as np.load reads it) with fixed zip timestamps and no compression.

    The same arrays always give the same bytes, so DVC sees an unchanged output as
    unchanged and does not rerun the stages that depend on it.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)  # 0-d arrays stay 0-d
    return buf.getvalue()


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Several named arrays as a deterministic .npz (``npz_bytes``)."""
    return atomic_write(path, npz_bytes(arrays))


def exit_now(code: int | None) -> NoReturn:
    """End a finished entry point with ``code``: flush the log handlers, stdout and stderr,
    then leave without the interpreter's teardown (os._exit). With mlflow and a framework
    loaded, that teardown takes 0.9-1.8 s a process and frees nothing the OS would not.
    Only after every file is written and every MLflow run ended: atexit hooks do not run."""
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def under(root: str | Path, path: str | Path) -> Path:
    """path as given when absolute, else taken relative to root (the project root)."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


class NpzError(ValueError):
    """An .npz that is not what np.savez writes of plain numbers: the message names the file,
    the key and what was expected. ``missing``: the keys asked for that the file lacks."""

    def __init__(self, message: str, missing: Sequence[str] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


def read_npz(path: str | Path, keys: Sequence[str] | None = None, max_bytes: int = 1 << 31) -> dict[str, np.ndarray]:
    """The arrays of an .npz (all, or the named keys), checked before any is loaded.

    Each member's .npy header (dtype, shape) is read first: object dtypes (pickles) are
    refused, and the declared shape must fill the member exactly, so a crafted header that
    claims terabytes, or a file cut short, fails before memory is taken. The members read
    may hold at most max_bytes in all.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename.removesuffix(".npy"): info for info in zf.infolist()}
            wanted = list(members) if keys is None else list(keys)
            missing = [k for k in wanted if k not in members]
            if missing:
                has = ", ".join(sorted(members))
                raise NpzError(f"{path}: missing key(s) {', '.join(missing)}; has {has}", missing)
            total = sum(members[k].file_size for k in wanted)
            if total > max_bytes:
                raise NpzError(f"{path}: {total:,} bytes of arrays, more than the limit of {max_bytes:,}")
            return {k: _read_member(path, zf, members[k], k) for k in wanted}
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise NpzError(f"{path}: not a readable .npz (truncated or corrupt): {err}") from err


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """One .npy member: its header checked against the member's size, then its bytes."""
    fmt = np.lib.format
    with zf.open(info) as f:
        try:
            version = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except ValueError as err:  # not .npy, an unknown version, a header that is no dict
            raise NpzError(f"{path}: {key}: not an .npy array: {err}") from err
        if dtype.hasobject:
            raise NpzError(f"{path}: {key}: dtype {dtype} holds Python objects (a pickle): expected numbers")
        nbytes = math.prod(shape) * dtype.itemsize
        body = info.file_size - f.tell()
        if nbytes != body:
            raise NpzError(
                f"{path}: {key}: the header declares {dtype} {shape} ({nbytes:,} bytes) but {body:,} bytes follow "
                "(truncated or crafted)"
            )
        data = bytearray(nbytes)  # writable, as np.load's arrays are
        if f.readinto(data) != nbytes:
            raise NpzError(f"{path}: {key}: fewer than {nbytes:,} bytes of data (truncated)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
