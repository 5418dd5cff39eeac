"""How many worker processes a data command uses by default."""
from __future__ import annotations

import os

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, n))
