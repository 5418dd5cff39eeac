"""The remote shard cache never serves a dataset's old shards after it was rebuilt at the same
URL: each cached shard is checked against the manifest of the run that reads it."""
import functools
import http.server
import re
import shutil
import threading

import pytest

from pipeline.data import ClipLoader
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
