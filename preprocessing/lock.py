"""One writer per dataset folder: ``with folder_lock(out, "build"):`` around a build or import.

The lock is an ``fcntl.flock`` on ``OUT/.sonostream.lock``, held for the whole job. The kernel
drops it when the process ends, however it ends (kill -9 included), so a lock is never stale;
the file (which names the holder's pid) is removed when the job finishes. A second writer is
refused at once with a :class:`FolderLocked` error, before it reads or deletes anything.
Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .format import SonostreamError

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS
    fcntl = None

LOCK_FILE = ".sonostream.lock"


class FolderLocked(SonostreamError):
    """Another build or import is writing the folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, job: str) -> Iterator[None]:
    """Hold the writer lock of ``folder`` (created if missing) while the block runs."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SonostreamError(f"--out {folder} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = folder / LOCK_FILE
    fd = _acquire(path, folder)
    try:
        with contextlib.suppress(OSError):   # the holder's note only (a full disk: the job says it)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {job}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: nobody can have locked a newer file
        os.close(fd)


def _acquire(path: Path, folder: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise SonostreamError(f"cannot create {path}: {folder} is not writable by you; give "
                                  "an --out you can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLocked(
                f"{folder} is being written by another sonostream build or import{holder}; "
                "wait for it to finish, or use another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder finished and removed the file we opened: try the new one


def _holder(fd: int) -> str:
    try:
        pid, _, job = os.pread(fd, 200, 0).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        return ""
    return f" ({job}, pid {pid})" if pid.isdigit() and job else ""
