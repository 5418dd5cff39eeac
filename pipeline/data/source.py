"""Where shard bytes come from: a local dataset folder, or a URL with a local shard cache.

``root`` is the ``--out`` folder of ``sonostream build`` or a URL of one (``http(s)://``, or any
fsspec protocol such as ``s3://`` / ``gs://`` when its fsspec plugin is installed).
``shard_url`` optionally overrides where shards come from, with ``{shard}`` for the file name,
e.g. ``pipe:aws s3 cp s3://bucket/ds/shards/{shard} -`` (WebDataset's ``pipe:`` convention,
opened with ``webdataset.gopen``).

Remote shards are downloaded whole into the cache on first use (size and sha256 checked
against the manifest, written to a temp file and renamed), then read like local ones: each
member is one ``pread`` at the byte offset the index gives, so no tar is parsed on the hot
path. The sha256 checked at download is kept beside the cached shard and compared with the
manifest of every later run, so a dataset rebuilt at the same URL is fetched again, never
served from a stale cache.

Several processes (DataLoader workers, ranks, other jobs) may share one cache folder:

* ``SHARD.lock`` (an exclusive ``flock``) is held around a shard's download and sidecar write,
  so it is downloaded once; a process that waited finds it there.
* A process holds a shared ``flock`` on each cached shard it has open, for as long as it is
  open; it takes it, then checks that the file is still the verified one (else fetches again).
* With ``cache_limit_gb`` the least recently used shards are deleted after a download once the
  cache is larger, each only under its ``SHARD.lock`` and an exclusive ``flock`` on the file
  taken without waiting: a shard another process is reading or downloading is skipped (so the
  cache may exceed the limit by the shards in use). The evicting process first closes its own
  descriptors that no thread is reading; a later read opens (or downloads) them again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import threading
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from preprocessing import format as fmt
from preprocessing.atomic import write_text
from preprocessing.dataset import REBUILD, DatasetError, open_dataset, parse_manifest

log = logging.getLogger("sonostream.loader")


def is_url(path: str) -> bool:
    return isinstance(path, str) and ("://" in path or path.startswith("pipe:"))


def open_url(url: str):
    """A readable binary stream for a local path, pipe:, http(s):// or fsspec URL."""
    if url.startswith("pipe:"):
        import webdataset as wds
        return wds.gopen(url, "rb")
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=120)
    if "://" in url:
        import fsspec
        try:
            return fsspec.open(url, "rb").open()
        except ImportError as e:   # the protocol's fsspec plugin (s3fs, gcsfs, ...) is missing
            protocol = url.split("://", 1)[0]
            hint = "pip install 'sonostream[s3]'" if protocol in ("s3", "s3a") else \
                f"install the fsspec plugin for {protocol}://"
            raise DatasetError(f"{url}: cannot read {protocol}:// URLs here ({e}); {hint}") from None
    return open(url, "rb")


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


EVICTED_RETRIES = 3   # downloads of one shard that other processes evict before it is opened


class _Open:
    """One open shard of this process: its descriptor and the threads reading it now."""
    __slots__ = ("fd", "users")

    def __init__(self, fd: int):
        self.fd, self.users = fd, 0


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _remove_unused(p: Path) -> bool:
    """Delete cached shard ``p`` (and its sha256 mark) unless a process is downloading it (its
    ``.lock``) or holds it open (a shared flock on the file); whether it was deleted."""
    try:
        lock = open(f"{p}.lock", "a")
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # being downloaded again
            return False
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # open in a reader
            os.close(fd)
            return False
        try:
            p.unlink()
            Path(f"{p}.sha256").unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


def default_cache_dir(root: str) -> Path:
    base = os.environ.get("SONOSTREAM_CACHE") or os.path.join(Path.home(), ".cache", "sonostream")
    return Path(base) / hashlib.sha256(root.encode()).hexdigest()[:16]


class ShardSource:
    """Index, manifest and member bytes of one dataset, local or remote."""

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 shard_url: str | None = None, cache_limit_gb: float | None = None):
        self.root = str(root)
        self.cache_limit = None if cache_limit_gb is None else int(cache_limit_gb * 2**30)
        self.remote = is_url(self.root) or shard_url is not None
        self.shard_url = shard_url
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self._fds: dict[str, _Open] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()   # decode threads open shards concurrently
        self.index, self.manifest = self._load()
        if not all(c in self.index.column_names for c in fmt.CHECKSUM_COLUMNS):
            log.warning("%s is dataset format %s, which has no per-member checksums: a member "
                        "corrupted on disk that still decodes is served as data; rebuild it with "
                        "`sonostream build --csv CSV --out DIR --overwrite` to get per-member checks",
                        self.root, self.manifest.get("format_version"))
        self._shard_info = {s["name"]: s for s in self.manifest.get("shards", [])}

    def _load(self) -> tuple[pa.Table, dict]:
        if not is_url(self.root):
            ds = open_dataset(self.root)
            return ds.index, ds.manifest
        try:
            with open_url(_join(self.root, fmt.MANIFEST_FILE)) as f:
                raw = f.read()
            with open_url(_join(self.root, fmt.INDEX_FILE)) as f:
                index = pq.read_table(io.BytesIO(f.read()))
        except OSError as e:
            raise DatasetError(f"{self.root}: cannot read {fmt.MANIFEST_FILE} / {fmt.INDEX_FILE} "
                               f"({e}); is it the URL of a `sonostream build` output folder?") from e
        manifest = parse_manifest(raw, _join(self.root, fmt.MANIFEST_FILE),
                                  fix="upload the dataset folder again (`sonostream verify DIR` "
                                  f"checks the local copy), or {REBUILD}")
        return index, manifest

    def url_of(self, shard: str) -> str:
        if self.shard_url:
            return self.shard_url.format(shard=shard)
        return _join(self.root, fmt.SHARDS_DIR, shard)

    def path_of(self, shard: str) -> Path:
        """Where ``shard`` is read from: the dataset's own file, or its place in the cache."""
        return Path(self.root) / fmt.SHARDS_DIR / shard if not self.remote else self.cache_dir / shard

    def _cached(self, shard: str, dest: Path) -> bool:
        """Whether ``dest`` holds this dataset's ``shard``: the sha256 checked at its download
        (kept beside it in ``dest.sha256``) must be the one the manifest now gives, so a dataset
        rebuilt at the same URL is downloaded again, never served from a stale cache."""
        try:
            verified = Path(f"{dest}.sha256").read_text().strip()
            size = dest.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return False
        info = self._shard_info.get(shard, {})
        return verified == info.get("sha256", verified) and size == info.get("bytes", size)

    def _open(self, shard: str) -> int:
        """A descriptor of ``shard`` for ``pread`` (called under ``self._lock``). A cached shard
        is downloaded if it is not there, then held with a shared ``flock`` for as long as it
        is open, which eviction (by any process sharing the cache) respects."""
        path = self.path_of(shard)
        if not self.remote:
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DatasetError(f"{path}: shard is missing; re-copy the dataset or "
                                   "rebuild it") from None
        fetched = False
        for _ in range(EVICTED_RETRIES):
            if not self._cached(shard, path):
                fetched = self._download(shard, path) or fetched
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:   # evicted by another process since: fetch it again
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, path) and self._cached(shard, path):   # still the one checked
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used
                if fetched and self.cache_limit is not None:
                    self._evict(keep=path)
                return fd
            os.close(fd)
        raise DatasetError(f"{path}: other processes sharing the cache {self.cache_dir} evicted "
                           f"this shard {EVICTED_RETRIES} times before it could be opened; raise "
                           "their --cache-limit-gb, or give each job its own --cache-dir")

    def _close_idle(self, keep: Path) -> None:
        """Close this process's descriptors that no thread is reading (under ``self._lock``),
        so that eviction may remove their shards; a later read opens them again."""
        for shard, entry in list(self._fds.items()):
            if entry.users == 0 and self.cache_dir / shard != keep:
                os.close(entry.fd)
                del self._fds[shard]

    def _evict(self, keep: Path) -> None:
        """Delete least recently used cached shards until the cache fits its limit. A shard
        that any process holds open (a shared flock) or is downloading (its ``.lock``) is never
        deleted, so the cache can exceed the limit by the shards in use."""
        self._close_idle(keep)
        shards = []
        for p in self.cache_dir.glob("*.tar"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            shards.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in shards)
        for _, size, p in sorted(shards):
            if total <= self.cache_limit:
                break
            if p != keep and _remove_unused(p):
                total -= size

    def _download(self, shard: str, dest: Path) -> bool:
        """Fetch ``shard`` into ``dest`` unless another process just did; whether it did."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{dest}.lock", "w") as lock:   # one download (or eviction) of a shard at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._cached(shard, dest):  # another process fetched it while we waited
                return False
            url, tmp = self.url_of(shard), f"{dest}.tmp.{os.getpid()}"
            digest, n = hashlib.sha256(), 0
            try:
                with open_url(url) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
                info = self._shard_info.get(shard, {})
                if "bytes" in info and n != info["bytes"]:
                    raise DatasetError(f"{url}: got {n} bytes, the manifest says {info['bytes']}")
                if "sha256" in info and digest.hexdigest() != info["sha256"]:
                    raise DatasetError(f"{url}: sha256 differs from the manifest (corrupt download)")
                Path(f"{dest}.sha256").unlink(missing_ok=True)   # no stale mark on the new bytes
                os.replace(tmp, dest)
                write_text(f"{dest}.sha256", digest.hexdigest() + "\n")
                return True
            except OSError as e:
                raise DatasetError(f"{url}: download failed ({e})") from e
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def read(self, shard: str, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:  # forked into a worker: descriptors are not ours to share
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        if self.cache_limit is None or not self.remote:   # descriptors stay open: no counting
            entry = self._fds.get(shard)
            if entry is None:
                with self._lock:
                    entry = self._fds.get(shard)
                    if entry is None:
                        entry = self._fds[shard] = _Open(self._open(shard))
            data = os.pread(entry.fd, size, offset)
        else:
            with self._lock:
                entry = self._fds.get(shard)
                if entry is None:
                    entry = self._fds[shard] = _Open(self._open(shard))
                entry.users += 1      # not closed while a thread reads it (see _close_idle)
            try:
                data = os.pread(entry.fd, size, offset)
            finally:
                with self._lock:
                    entry.users -= 1
        if len(data) != size:
            raise EOFError(f"{size} bytes at {offset} run past the end of {shard}")
        return data

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())
