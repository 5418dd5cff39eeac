"""Where shard bytes come from: a local dataset folder, or a URL with a local shard cache.

``root`` is the ``--out`` folder of ``sonostream build`` or a URL of one (``http(s)://``, or any
fsspec protocol such as ``s3://`` / ``gs://`` when its fsspec plugin is installed).
``shard_url`` optionally overrides where shards come from, with ``{shard}`` for the file name,
e.g. ``pipe:aws s3 cp s3://bucket/ds/shards/{shard} -`` (WebDataset's ``pipe:`` convention,
opened with ``webdataset.gopen``).

Remote shards are downloaded whole into the cache on first use (size and sha256 checked
against the manifest, written to a temp file and renamed, one download per node even with
several workers: a lock file serialises them), then read like local ones. The sha256 checked
at download is kept beside the cached shard and compared with the manifest of every later run,
so a dataset rebuilt at the same URL is fetched again, never served from a stale cache: each member is one
``pread`` at the byte offset the index gives, so no tar is parsed on the hot path. With
``cache_limit_gb`` the least recently used shards are deleted after a download once the cache
is larger (a shard still open keeps working: POSIX keeps unlinked open files; a later read of
an evicted shard downloads it again).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import threading
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from preprocessing import format as fmt
from preprocessing.atomic import write_text
from preprocessing.dataset import REBUILD, DatasetError, open_dataset, parse_manifest


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
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()   # decode threads open shards concurrently
        self.index, self.manifest = self._load()
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
        if not self.remote:
            return Path(self.root) / fmt.SHARDS_DIR / shard
        dest = self.cache_dir / shard
        if not self._cached(shard, dest):
            self._download(shard, dest)
            if self.cache_limit is not None:
                self._evict(keep=dest)
        else:
            os.utime(dest)  # recently used
        return dest

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

    def _evict(self, keep: Path) -> None:
        """Delete least recently used cached shards until the cache fits its limit."""
        shards = []
        for p in self.cache_dir.glob("*.tar"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another worker evicted it
                continue
            shards.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in shards)
        for _, size, p in sorted(shards):
            if total <= self.cache_limit:
                break
            if p == keep:
                continue
            try:
                p.unlink()
                Path(f"{p}.sha256").unlink(missing_ok=True)
                total -= size
            except FileNotFoundError:
                pass

    def _download(self, shard: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{dest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._cached(shard, dest):  # another worker fetched it while we waited
                return
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
            except OSError as e:
                raise DatasetError(f"{url}: download failed ({e})") from e
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def read(self, shard: str, offset: int, size: int) -> bytes:
        if os.getpid() != self._pid:  # forked into a worker: descriptors are not ours to share
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    path = self.path_of(shard)
                    try:
                        fd = self._fds[shard] = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        raise DatasetError(f"{path}: shard is missing; re-copy the dataset or "
                                           "rebuild it") from None
        data = os.pread(fd, size, offset)
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
