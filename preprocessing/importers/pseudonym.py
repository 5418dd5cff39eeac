"""Pseudonymised identifiers: keyed hashes of patient, study and video ids, and the key file.

An id becomes ``p-`` (patient), ``s-`` (study) or ``v-`` (video) followed by the first 16 hex
digits of ``HMAC-SHA256(key, "sonostream-pseudonym-v1" NUL kind NUL id)``. The kind in the
message separates the domains: a patient id and a video id with the same text get unrelated
pseudonyms. Without the key nobody can recompute a pseudonym from a guessed id (a plain hash of a
medical record number or a file path can be reversed by trying every number or name); with the
key, the same id always gives the same pseudonym, so two imports made with one key link the same
patients and keep patient-level splits consistent.

Collisions: 16 hex digits are 64 bits. Among n distinct ids of one kind the chance that any two
share a pseudonym is about n**2 / 2**65: 3e-8 for a million ids, 3e-6 for ten million, 3e-4 for
a hundred million. Two videos that did collide would not merge silently: the importer refuses a
second (patient, video) and lists it in import_rejects.csv.

The key file holds 32 random bytes as 64 hex digits. Default location: ``--key-file``, else the
``SONOSTREAM_KEY_FILE`` environment variable, else ``$XDG_CONFIG_HOME/sonostream/pseudonym.key``
(``~/.config/sonostream/pseudonym.key``). It is created (mode 0600, atomically, never over an
existing file) when absent, and refused when group or others may read or write it. The key
fingerprint (``k-`` + 16 hex digits of an HMAC of a fixed message) names the key without
revealing it: it is written into every row of frames.csv (``PSEUDONYM_COLUMN``, carried by the
build into the index and shard metadata) and into ``OUT/pseudonyms.json``, so that an import
into a folder imported with another key, or a build of rows pseudonymised with two keys, stops
with an error instead of mixing ids that do not link.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from preprocessing import atomic
from preprocessing.format import PSEUDONYM_COLUMN, SonostreamError

KEY_ENV = "SONOSTREAM_KEY_FILE"
KEY_BYTES = 32
ID_HEX = 16
RECORD_FILE = "pseudonyms.json"  # OUT/pseudonyms.json: how the import folder's ids were made
_DOMAIN = b"sonostream-pseudonym-v1"


class KeyFileError(SonostreamError):
    """The key file cannot be used, or does not match earlier pseudonyms; the message says why."""


def default_key_file() -> Path:
    """``$SONOSTREAM_KEY_FILE``, else ``$XDG_CONFIG_HOME/sonostream/pseudonym.key`` (default
    ``~/.config``)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "sonostream" / "pseudonym.key"


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonyms; picklable (importer worker processes get a copy). ``repr`` hides the
    key. Build one with :meth:`from_key_file`."""
    key: bytes = field(repr=False)
    fingerprint: str = ""

    def __post_init__(self):
        if not isinstance(self.key, bytes) or len(self.key) < KEY_BYTES:
            raise KeyFileError(f"a pseudonym key needs at least {KEY_BYTES} bytes")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.key))

    @classmethod
    def from_key_file(cls, path: str | os.PathLike | None = None, create: bool = True,
                      quiet: bool = False) -> "Pseudonymiser":
        """The key in ``path`` (default :func:`default_key_file`); when absent and ``create``,
        a new random key is written there and a note saying so goes to stderr."""
        path = Path(path).expanduser() if path else default_key_file()
        if create and not path.exists():
            try:
                created = _create_key_file(path)
            except OSError as e:
                raise KeyFileError(f"cannot create the pseudonym key file {path} ({e}); pass "
                                   f"--key-file (or set {KEY_ENV}) to a file in a folder you "
                                   "can write, or to the key used for earlier imports") from None
            if created and not quiet:
                print(f"note: created a new pseudonym key in {path} (fingerprint "
                      f"{fingerprint(_read_key(path))}). Keep it and back it up: the same key "
                      "gives the same pseudonymised ids, so later imports of the same patients "
                      "link to this one; with another key they get other ids. Do not copy it "
                      "with the dataset: whoever holds it can test guessed ids against the "
                      "pseudonyms.", file=sys.stderr)
        return cls(_read_key(path))

    def _tag(self, kind: str, text: str, prefix: str) -> str:
        msg = b"\x00".join((_DOMAIN, kind.encode(), str(text).encode("utf-8")))
        return prefix + hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:ID_HEX]

    def patient(self, patient_id: str) -> str:
        return self._tag("patient", patient_id, "p-")

    def study(self, study_id: str) -> str:
        return self._tag("study", study_id, "s-")

    def video(self, video_id: str) -> str:
        return self._tag("video", video_id, "v-")

    def anonymous_patient(self, path: str) -> str:
        """A patient id for a file without one: keyed on its absolute path (one per file)."""
        return self._tag("file", os.path.abspath(path), "p-")

    def columns(self) -> dict:
        """The frames CSV column every pseudonymised row carries."""
        return {PSEUDONYM_COLUMN: self.fingerprint}


def fingerprint(key: bytes) -> str:
    """Names the key without revealing it (an HMAC is not invertible)."""
    return "k-" + hmac.new(key, _DOMAIN + b"\x00fingerprint", hashlib.sha256).hexdigest()[:ID_HEX]


def _read_key(path: Path) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"pseudonym key file {path} does not exist; pass the key file used "
                           "for earlier imports with --key-file (or set "
                           f"{KEY_ENV}), or let the import create a new one") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"pseudonym key file {path} is not a regular file; pass the key file "
                           "with --key-file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(f"pseudonym key file {path} may be read or written by other users "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); make it private with "
                           f"`chmod 600 {path}` (and consider whether it has leaked)")
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as e:
        raise KeyFileError(f"cannot read the pseudonym key file {path} ({e}); pass a readable "
                           "--key-file") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"pseudonym key file {path} does not hold a key (expected "
                           f"{2 * KEY_BYTES} hex digits); restore it from your backup, or pass "
                           "another --key-file")
    return key


def _create_key_file(path: Path) -> bool:
    """Writes a new random key to ``path`` (0600) unless a file appears there first; True if
    this call created it. Written to a temporary file, then hard-linked into place, so the key
    file is never seen half-written and an existing one is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secrets.token_bytes(KEY_BYTES).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # another import created it first: use that one
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- the import folder's record --------------------------------------------------------------
def _record(pseudonyms: Pseudonymiser | None) -> dict:
    if pseudonyms is None:
        return {"identifiers": "kept"}
    return {"identifiers": "pseudonymised", PSEUDONYM_COLUMN: pseudonyms.fingerprint}


def check_folder(out_dir, pseudonyms: Pseudonymiser | None, overwrite: bool = False) -> None:
    """KeyFileError when ``OUT/pseudonyms.json`` says the folder was imported with another key
    (always: its ids would not link with this import's), or with the other choice of
    pseudonymised vs kept identifiers while an earlier import may be continued (no
    ``overwrite``)."""
    path = Path(out_dir) / RECORD_FILE
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:
        earlier = None
    if not isinstance(earlier, dict):
        raise KeyFileError(f"{path} is not readable JSON; delete it if the folder's earlier "
                           "import is to be replaced, or choose another --out")
    now = _record(pseudonyms)
    old_key, new_key = earlier.get(PSEUDONYM_COLUMN), now.get(PSEUDONYM_COLUMN)
    if old_key and new_key and old_key != new_key:
        raise KeyFileError(
            f"{path}: {out_dir} was imported with pseudonym key {old_key}, but this key "
            f"is {new_key}; its ids would not match the earlier ones. Pass the key file used "
            f"then with --key-file (or {KEY_ENV}); to start over with this key, delete {path} "
            "and pass --overwrite, or choose another --out")
    if earlier.get("identifiers") != now["identifiers"] and not overwrite:
        raise KeyFileError(
            f"{path}: {out_dir} was imported with identifiers {earlier.get('identifiers')}, "
            f"this import has them {now['identifiers']}; pass --overwrite to replace the "
            "earlier import, or choose another --out")


def record_folder(out_dir, pseudonyms: Pseudonymiser | None) -> None:
    """Writes ``OUT/pseudonyms.json`` (after :func:`check_folder`; before any frame)."""
    atomic.write_json(Path(out_dir) / RECORD_FILE, _record(pseudonyms))
