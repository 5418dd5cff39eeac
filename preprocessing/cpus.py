"""Worker processes of the data commands: how many by default, and that none outlives its parent."""
from __future__ import annotations

import os
import threading
import time

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """The CPUs this process may use (:func:`usable_cpus`), at most 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cpus()))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (not the machine's count), and no more
    than Slurm's ``SLURM_CPUS_PER_TASK`` where that is set (a job step's affinity can be the whole
    node when Slurm does not bind tasks). ``os.cpu_count()`` only where there is no affinity
    mask (not Linux)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) >= 1:
        n = min(n, int(slurm))
    return max(1, n)


def exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker as soon as process ``parent_pid`` is gone.

    A worker made by a forkserver is not a child of the process that runs the pool, so neither
    the OS nor multiprocessing ends it when that process is killed (kill -9): it would wait for
    tasks forever, and keep the forkserver and resource tracker alive. A daemon thread waits on a
    pidfd (Linux), else checks the pid every half second, and exits the worker."""
    try:
        fd = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        fd = None
    threading.Thread(target=_wait_for_exit, args=(parent_pid, fd), daemon=True,
                     name="exit-with-parent").start()


def _wait_for_exit(pid: int, fd: int | None) -> None:
    if fd is not None:
        import select
        select.select([fd], [], [])  # readable once the process has exited
    else:
        while _alive(pid):
            time.sleep(0.5)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
