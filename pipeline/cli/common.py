"""What every command shares: logging set-up and the mapping from errors to exit statuses.

Exit statuses: 0 done; 2 bad input or configuration (a ``SonostreamError``: the message says what
to fix); 1 the work itself failed (an error class with ``exit_status = 1``, such as a training run
whose loss stays non-finite, or a demo stage that raised); 130 interrupted. Any other exception is
a bug and keeps its traceback (exit 1), so it is never mistaken for bad input.
"""
from __future__ import annotations

import logging
import sys

from preprocessing.format import SonostreamError

NOISY_LOGGERS = ("accelerate", "DeepSpeed", "matplotlib", "torch.distributed")


def setup_logging(level: int = logging.INFO) -> None:
    """Our INFO lines; only warnings from the libraries around us."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def guarded(fn, *args) -> int:
    """``fn(*args)`` -> its exit status, with our errors printed as ``error: ...``."""
    try:
        status = fn(*args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except SonostreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # noqa: BLE001 - only errors that declare an exit status are ours
        status = getattr(type(e), "exit_status", None)
        if status is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return int(status)
    return 0 if status is None else int(status)


def write_json_result(result: dict, path: str | None) -> None:
    """Print a benchmark's JSON; with ``path`` also write it (first: a closed stdout must not
    lose the result)."""
    import json
    text = json.dumps(result, indent=2)
    if path:
        from preprocessing.atomic import write_text
        write_text(path, text + "\n")
    print(text)
