"""A dataset read with ``s3://`` (the ``s3`` extra: s3fs) from a local S3-compatible server
(moto in server mode on 127.0.0.1) gives the same batches as the local folder."""
import importlib.util

import pytest

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.source import open_url
from preprocessing.dataset import DatasetError

from test_loader import cfg, run   # noqa: E402 (same folder; pytest puts it on sys.path)

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_dataset(s3_endpoint, dataset, monkeypatch):
    """The session's dataset uploaded to s3://sonostream-test/ds, and the environment a user
    of an S3-compatible store sets (AWS_ENDPOINT_URL is read by botocore, hence by s3fs)."""
    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="sonostream-test")
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "sonostream-test", f"ds/{path.relative_to(dataset).as_posix()}")
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()   # a fresh client sees the environment
    return "s3://sonostream-test/ds"


def test_s3_dataset_gives_the_same_batches(dataset, s3_dataset, tmp_path):
    local = run(ClipLoader(dataset, cfg(), seed=4))
    remote = ClipLoader(s3_dataset, cfg(), seed=4, cache_dir=tmp_path / "cache")
    assert run(remote) == local
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.tar")) == \
        sorted(p.name for p in (dataset / "shards").glob("*.tar"))


def test_a_missing_s3_key_is_a_dataset_error(s3_dataset, tmp_path):
    with pytest.raises(DatasetError, match="sonostream build"):
        ClipLoader(s3_dataset + "-missing", LoaderConfig(loader="cpu"), cache_dir=tmp_path / "c")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_protocol_without_its_plugin_says_what_to_install():
    with pytest.raises(DatasetError, match=r"gs://bucket/ds/manifest.json: cannot read gs:// URLs.*"
                                           r"install the fsspec plugin for gs://"):
        open_url("gs://bucket/ds/manifest.json")
