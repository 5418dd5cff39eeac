"""The one base class of sonostream's own errors.

Everything the project raises for bad input or configuration (a CSV that cannot be built, an
image that does not decode, a config key that does not exist, a checkpoint of the wrong kind)
derives from :class:`SonostreamError`, and its message says what to fix. The CLI turns exactly
these into ``error: ...`` and exit status 2; anything else (a bug in our code, numpy or torch)
keeps its traceback and exits 1, so a real bug is never reported as "bad input".

It subclasses ``ValueError`` so that callers who caught ``ValueError`` before still work.
"""
from __future__ import annotations


class SonostreamError(ValueError):
    """Bad input or configuration; the message names what is wrong and how to fix it."""
