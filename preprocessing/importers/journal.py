"""The resume state of an unfinished import: ``OUT/.import/``, removed once frames.csv is written.

::

    fingerprint.json   what the import reads and how: source, options, every input file's path,
                       size and mtime; a rerun with another fingerprint is refused (--overwrite)
    journal.jsonl      one JSON line per input committed, in input order: its CSV rows (as their
                       CSV text), the (patient, video) it claimed, its truncation flags, or the
                       reason it was rejected. Appended (flushed and fsynced) after the input's
                       files are in place, so a line names files that exist; a line a crash cut
                       short is dropped on resume
    committing.json    the final paths of the one input being moved into place, written before
                       the first move; on resume, an input it names that has no journal line
                       gets those files removed
    staging/NNNNNNNN/  each input's frames and masks while it is being read (a worker process
                       writes there, never into frames/ or masks/); removed on resume

The committed inputs are always a prefix of the input order, so a rerun replays the journal's
lines for the first inputs and reads only the rest; frames.csv is streamed from the journal at
the end, so rows never pile up in memory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from preprocessing import atomic
from preprocessing import format as fmt

STATE_DIR = ".import"
FINGERPRINT = "fingerprint.json"
JOURNAL = "journal.jsonl"
COMMITTING = "committing.json"
STAGING = "staging"


def fingerprint(source: str, options: dict, files, missing=()) -> dict:
    """What makes two imports the same: source, options and each input's path, absolute path,
    size and mtime (reading every file's bytes twice would cost as much as the import)."""
    def stamp(path) -> list:
        try:
            st = os.stat(path)
        except OSError:
            return [str(path), os.path.abspath(path), None, None]
        return [str(path), os.path.abspath(path), st.st_size, st.st_mtime_ns]
    fp = {"format_version": fmt.FORMAT_VERSION, "source": source, "options": options,
          "inputs": [stamp(p) for p in files], "missing": [str(p) for p in missing]}
    return json.loads(json.dumps(fp, sort_keys=True))  # as it reads back from the file


def describe(pseudonyms) -> object:
    """A stable, secret-free stand-in for a pseudonymiser in the fingerprint (its ``fingerprint``
    attribute, e.g. of its key, where it has one)."""
    if pseudonyms is None:
        return None
    fp = getattr(pseudonyms, "fingerprint", None)
    fp = fp() if callable(fp) else fp
    return fp if isinstance(fp, (str, int, float, list, dict)) else type(pseudonyms).__qualname__


class ImportState:
    """``OUT/.import/``: start it, resume it, journal each input, read it back, remove it."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / STATE_DIR
        self.journal_path = self.dir / JOURNAL
        self._file = None
        self.committed = 0   # journal lines (inputs committed) when the import started

    def exists(self) -> bool:
        return (self.dir / FINGERPRINT).is_file()

    def stored_fingerprint(self):
        try:
            return json.loads((self.dir / FINGERPRINT).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, fp: dict) -> None:
        """A new import: a fresh state folder holding the fingerprint."""
        self.remove()
        atomic.write_json(self.dir / FINGERPRINT, fp)
        self._open()

    def resume(self) -> int:
        """An interrupted import: drop what was not committed, keep the journal's whole lines;
        returns how many inputs are committed."""
        self.committed = self._valid_lines()
        self.discard_uncommitted(self.committed)
        self._open()
        return self.committed

    def discard_uncommitted(self, committed: int) -> None:
        """Remove every file of an input after the first ``committed``: staged ones, and those
        of an input that was being moved into place."""
        shutil.rmtree(self.dir / STAGING, ignore_errors=True)
        atomic.remove_leftovers(self.dir)
        self._discard_half_commit(committed)

    def _valid_lines(self) -> int:
        """Whole, parseable journal lines; a torn tail is cut off the file."""
        n = good = 0
        try:
            f = open(self.journal_path, "rb")
        except FileNotFoundError:
            return 0
        with f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    json.loads(line)
                except ValueError:
                    break
                n, good = n + 1, good + len(line)
        if good != self.journal_path.stat().st_size:
            os.truncate(self.journal_path, good)
        return n

    def _discard_half_commit(self, committed: int) -> None:
        path = self.dir / COMMITTING
        try:
            note = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except ValueError:   # cannot be: written atomically; nothing was moved under it
            note = {"index": -1, "paths": []}
        if note["index"] >= committed:
            for rel in note["paths"]:
                (self.out / rel).unlink(missing_ok=True)
        path.unlink()

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.journal_path, "ab")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def stage(self, index: int) -> Path:
        return self.dir / STAGING / f"{index:08d}"

    def move_into_place(self, index: int, stage: Path, paths: list[str]) -> None:
        """Move one input's staged files to their final paths (noted first, for a crash)."""
        if paths:
            atomic.write_json(self.dir / COMMITTING, {"index": index, "paths": paths})
        for rel in paths:
            dst = self.out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, dst)

    def append(self, record: dict) -> None:
        """Journal one committed input (after its files are in place)."""
        self._file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        (self.dir / COMMITTING).unlink(missing_ok=True)

    def records(self) -> Iterator[dict]:
        """The journal's lines, in input order, one at a time."""
        if self._file is not None:
            self._file.flush()
        with open(self.journal_path, "rb") as f:
            for line in f:
                yield json.loads(line)
