"""The remote shard cache never serves a dataset's old shards after it was rebuilt at the same
URL: each cached shard is checked against the manifest of the run that reads it. Processes
sharing one cache folder download each shard once, and eviction never removes a shard that
another process is reading."""
import functools
import http.server
import multiprocessing as mp
import re
import shutil
import threading
from pathlib import Path

import pytest

from pipeline.data import ClipLoader, ShardSource
from preprocessing.dataset import DatasetError
from test_loader import cfg, run   # noqa: E402 (same folder; pytest puts it on sys.path)

from factories import make_dataset, write_frames


@pytest.fixture
def served(tmp_path):
    """An http server over tmp_path/www, whose content a test may replace."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/ds/"
    server.shutdown()


def test_a_dataset_rebuilt_at_the_same_url_is_fetched_again(tmp_path, dataset, served):
    www, url = served
    shutil.copytree(dataset, www / "ds")
    cache = tmp_path / "cache"
    assert run(ClipLoader(url, cfg(), seed=3, cache_dir=cache)) == run(ClipLoader(dataset, cfg(), seed=3))
    # the same cohort with other pixels: the same shard names, other bytes and offsets
    csv = write_frames(tmp_path / "src", patients=6, videos=2, frames=9, shape=(40, 48), seed=1)
    rebuilt = make_dataset(tmp_path / "rebuilt", csv, image_size=32, shard_kb=12)
    assert {p.name for p in (rebuilt / "shards").glob("*.tar")} & {p.name for p in cache.glob("*.tar")}
    shutil.rmtree(www / "ds")
    shutil.copytree(rebuilt, www / "ds")
    remote = ClipLoader(url, cfg(), seed=3, cache_dir=cache)
    assert run(remote) == run(ClipLoader(rebuilt, cfg(), seed=3))
    assert remote.faults == []


def test_an_unchanged_dataset_reuses_its_cache(tmp_path, dataset, served):
    www, url = served
    shutil.copytree(dataset, www / "ds")
    cache = tmp_path / "cache"
    first = run(ClipLoader(url, cfg(), seed=3, cache_dir=cache))
    stamps = {p.name: p.stat().st_ino for p in cache.glob("*.tar")}
    shutil.rmtree(www / "ds")   # gone from the server: only the cache can serve it now...
    (www / "ds").mkdir()
    for name in ("manifest.json", "index.parquet"):   # ...with the same manifest and index
        shutil.copy(dataset / name, www / "ds" / name)
    assert run(ClipLoader(url, cfg(), seed=3, cache_dir=cache)) == first
    assert {p.name: p.stat().st_ino for p in cache.glob("*.tar")} == stamps


def test_a_damaged_remote_manifest_names_its_url(tmp_path, dataset, served):
    www, url = served
    shutil.copytree(dataset, www / "ds")
    (www / "ds" / "manifest.json").write_text('{"format_version": 2, "shards": [')   # cut short
    with pytest.raises(DatasetError, match=r"^" + re.escape(url) + r"manifest\.json is not valid "
                       r"JSON .*upload the dataset folder again"):
        ClipLoader(url, cfg(), seed=3, cache_dir=tmp_path / "cache")


# -- one cache folder shared by several processes ------------------------------------------------
def members(dataset):
    """(shard, offset, size) of the first image of every shard, in shard order."""
    import pyarrow.parquet as pq
    first = {}
    for r in pq.read_table(dataset / "index.parquet").to_pylist():
        first.setdefault(r["shard"], (r["shard"], r["image_offset"], r["image_size"]))
    return [first[s] for s in sorted(first)]


def hold_a_shard(url, cache, member, ready, release, result):
    """Process 1: read one shard and keep it open until told to let go."""
    src = ShardSource(url, cache_dir=cache)
    data = src.read(*member)
    ready.set()
    release.wait(120)
    result.put(src.read(*member) == data)


def read_all(url, cache, todo, limit_gb, start, result):
    """Process 2: read every shard in ``todo``, evicting down to ``limit_gb`` after downloads."""
    src = ShardSource(url, cache_dir=cache, cache_limit_gb=limit_gb)
    start.wait(120)
    for m in todo:
        src.read(*m)
    result.put(sorted(p.name for p in Path(cache).glob("*.tar")))


@pytest.fixture
def counted(tmp_path, dataset):
    """``dataset`` served over http, with the GET requests counted per path."""
    import collections
    hits = collections.Counter()
    www = tmp_path / "www"
    shutil.copytree(dataset, www / "ds")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] += 1
            super().do_GET()

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ds/", hits
    server.shutdown()


def test_eviction_never_removes_a_shard_another_process_is_reading(tmp_path, dataset, counted):
    url, _ = counted
    cache, ctx = tmp_path / "cache", mp.get_context("fork")
    held, *rest = members(dataset)
    ready, release, start, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    start.set()
    p1 = ctx.Process(target=hold_a_shard, args=(url, cache, held, ready, release, results))
    p1.start()
    assert ready.wait(120)
    p2 = ctx.Process(target=read_all, args=(url, cache, rest, 1e-9, start, results))
    p2.start()
    p2.join(120)
    left = results.get(timeout=10)        # every download of process 2 evicted all it could...
    assert held[0] in left and len(left) <= 2, left   # ...but not the shard process 1 reads
    release.set()
    assert results.get(timeout=60) is True                # which process 1 still reads
    p1.join(60)
    assert p1.exitcode == 0 and p2.exitcode == 0
    source = ShardSource(url, cache_dir=cache, cache_limit_gb=1e-9)
    source.read(*rest[0])                 # once nobody reads it, it is evicted like any other
    assert not (cache / held[0]).exists()


def test_two_processes_download_each_shard_once(tmp_path, dataset, counted):
    url, hits = counted
    cache, ctx = tmp_path / "cache", mp.get_context("fork")
    todo = members(dataset)
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=read_all, args=(url, cache, todo, None, start, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    start.set()                           # both at once, the same shards in the same order
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results.get(timeout=10) == results.get(timeout=10) == [m[0] for m in todo]
    shard_gets = {k: v for k, v in hits.items() if "/shards/" in k}
    assert len(shard_gets) == len(todo) and set(shard_gets.values()) == {1}, shard_gets


def test_a_shard_evicted_between_the_check_and_the_open_is_fetched_again(tmp_path, dataset,
                                                                          counted, monkeypatch):
    url, hits = counted
    cache = tmp_path / "cache"
    shard, offset, size = members(dataset)[0]
    first = ShardSource(url, cache_dir=cache).read(shard, offset, size)
    real, evicted = ShardSource._cached, []

    def cached_then_evicted(self, name, dest):   # another process evicts it right after the check
        ok = real(self, name, dest)
        if ok and not evicted:
            evicted.append(dest)
            dest.unlink()
        return ok
    monkeypatch.setattr(ShardSource, "_cached", cached_then_evicted)
    assert ShardSource(url, cache_dir=cache).read(shard, offset, size) == first
    assert evicted and hits[f"/ds/shards/{shard}"] == 2    # downloaded again, not an error
