"""Atomic file writes: write to a temporary file in the target's folder, fsync, then rename.

A crash leaves either the old file, the new file, or a ``*.tmp-*`` leftover that readers never
look at; never a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files get the permissions open() would give them (0644 usually)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)`` publishes ``p`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; datasets are shared
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_staged(path: str | os.PathLike, data: bytes) -> None:
    """Write and fsync ``path`` in place, with no temporary file and rename: only for files in a
    staging folder that is published or discarded as a whole (the import's per-input folders),
    where a half-written file is never seen because its folder is never moved into place."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def share(root: str | os.PathLike) -> None:
    """Give ``root`` and everything under it the permissions ``open()`` / ``mkdir`` would (0644 /
    0755 under the usual umask): libraries that write through ``mkstemp`` (safetensors does)
    leave 0600 files that the rest of a cluster group cannot read."""
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)


def remove_leftovers(folder: str | os.PathLike) -> int:
    """Delete temporary files a crashed writer left in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


# -- a full disk ------------------------------------------------------------------------------
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
LOW_SPACE = 64 * 2**20   # a write that failed with less free than this failed for lack of space


def out_of_space(e: BaseException, folder=None) -> bool:
    """Whether a failed write (into ``folder``) failed for lack of space: ENOSPC or EDQUOT, also
    in the text of what libraries re-raise (safetensors), or, where an error says nothing
    useful (``torch.save``: "unexpected pos"), a file system left with under 64 MiB free."""
    if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
        return True
    if any(t in str(e) for t in NO_SPACE_TEXTS):
        return True
    free = free_bytes(folder) if folder is not None else None
    return free is not None and free < LOW_SPACE


def free_bytes(folder) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def mb(n: float) -> str:
    if n >= 10 * 2**20:
        return f"{n / 2**20:,.0f} MB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} kB"


def no_space_message(folder, what: str, fix: str, needed: float | None = None) -> str:
    """``no space left writing WHAT in FOLDER (F free, about N needed); FIX``."""
    free = free_bytes(folder)
    known = [f"{mb(free)} free on its file system" if free is not None else None,
             f"about {mb(needed)} needed" if needed else None]
    detail = "; ".join(k for k in known if k)
    return (f"no space left on the device (or the disk quota is used up) writing {what} in "
            f"{folder}" + (f" ({detail})" if detail else "") + f"; {fix}")
