"""What every command shares: logging set-up and the mapping from errors to exit statuses.

Exit statuses: 0 done; 2 bad input or configuration (a ``SonostreamError``: the message says what
to fix); 1 the work itself failed (an error class with ``exit_status = 1``, such as a training run
whose loss stays non-finite, or a demo stage that raised); 130 interrupted. Any other exception is
a bug and keeps its traceback (exit 1), so it is never mistaken for bad input, except a full
disk (ENOSPC / EDQUOT) under a write no command caught itself: ``error: no space left ...``,
exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys

from preprocessing.atomic import NO_SPACE_ERRNOS
from preprocessing.format import SonostreamError

NOISY_LOGGERS = ("accelerate", "DeepSpeed", "matplotlib", "torch.distributed")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_chosen: list = [None]   # the --log-level of this invocation (None: the command's own default)


def add_log_level(p, default=argparse.SUPPRESS) -> None:
    """``--log-level`` on parser ``p``. A sub-command's flag defaults to SUPPRESS so that it does
    not undo ``sonostream --log-level X COMMAND``."""
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=default,
                   help="what gets logged to stderr: DEBUG, INFO (default: our progress and "
                   "metrics lines), WARNING (only problems), ERROR")


def choose_log_level(name: str | None) -> None:
    """Remember the user's ``--log-level`` (None: none given) for :func:`setup_logging`."""
    _chosen[0] = None if name is None else getattr(logging, name)


def log_level_chosen() -> bool:
    """Whether the user gave ``--log-level`` (then no command lowers or raises it on its own)."""
    return _chosen[0] is not None


def setup_logging(level: int = logging.INFO) -> None:
    """Our INFO lines (or the ``--log-level`` the user chose, which wins over ``level``, a
    command's default); only warnings from the libraries around us."""
    level = _chosen[0] if _chosen[0] is not None else level
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def guarded(fn, *args) -> int:
    """``fn(*args)`` -> its exit status, with our errors printed as ``error: ...``."""
    try:
        status = fn(*args)
    except KeyboardInterrupt:
        print("interrupted before a checkpoint was saved; to continue from the last checkpoint, "
              "rerun the same command with --resume latest (without it if the run has none)",
              file=sys.stderr)
        return 130
    except SonostreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # noqa: BLE001 - only errors that declare an exit status are ours
        status = getattr(type(e), "exit_status", None)
        if status is None and isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            print(f"error: {disk_full(e)}", file=sys.stderr)   # a write the command did not
            return 2                                          # guard itself: say it plainly
        if status is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return int(status)
    return 0 if status is None else int(status)


def disk_full(e: OSError) -> str:
    """The message for a full disk (or quota) under a write no command caught itself."""
    from pathlib import Path

    from preprocessing.atomic import no_space_message
    if not e.filename:
        return (f"no space left on the device (or the disk quota is used up): {e.strerror}; free "
                "space where the command writes, or choose another --out")
    path = Path(e.filename)
    return no_space_message(path.parent, path.name, fix="free space there, or choose another "
                            "--out")


def write_json_result(result: dict, path: str | None) -> None:
    """Print a benchmark's JSON; with ``path`` also write it (first: a closed stdout must not
    lose the result)."""
    import json
    text = json.dumps(result, indent=2)
    if path:
        from preprocessing.atomic import write_text
        write_text(path, text + "\n")
    print(text)
