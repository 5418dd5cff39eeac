"""``sonostream probe``: linear probes fitted on train only, a random baseline that is its own
network, the JSON keys on a tiny dataset, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.eval import probe as P
from pipeline.models.encoder import export_encoder
from preprocessing.format import SonostreamError


def test_probes_are_fitted_on_train_only():
    """Train and test share the features, the test labels are the train labels shifted by one
    class: a probe fitted on train scores 0 on test; one that saw the test labels (fitted on
    test, or on both) would score well above it."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = (np.eye(3)[y] * 4 + rng.normal(0, 0.3, (60, 3))).astype(np.float32)
    x = np.concatenate([x, rng.normal(0, 1, (60, 29)).astype(np.float32)], axis=1)
    acc, why = P.linear_probe(x, y, x, (y + 1) % 3)
    assert why is None and acc == 0.0
    same, _ = P.linear_probe(x, y, x, y)
    assert same == 1.0   # the features do carry the labels
    # Balanced accuracy: the mean of the recalls, 0.5 for a constant guess whatever the balance.
    assert P.balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == 0.5
    assert P.linear_probe(x, np.zeros(60, int), x, y)[1] == "the train split holds fewer than 2 classes"


def test_retrieval_ignores_the_frames_own_video_and_single_video_patients():
    # Patient 0: videos 0 and 1; patient 1: videos 2 and 3; patient 2: one video (no query).
    patient = np.array([0, 0, 1, 1, 2, 2])
    video = np.array([0, 1, 2, 3, 4, 4])
    # Each frame is closest to the other frame of ... a different patient's video, except its own.
    x = np.array([[1, 0], [0, 1], [1, 0.1], [0.1, 1], [5, 5], [5, 5]], np.float64)
    share, chance, n = P.retrieval_other_video(x, patient, video)
    assert n == 4 and share == 0.0                  # frame 0's nearest is frame 2 (patient 1)
    assert chance == pytest.approx(1 / 5)           # 1 of the 5 other-video frames
    x[1] = [1, 0.01]                                 # now frames 0 and 1 (patient 0) agree
    assert P.retrieval_other_video(x, patient, video)[0] == 0.5   # 0, 1 hit; 2, 3 miss


def test_the_random_baseline_is_its_own_network(tmp_path):
    path = tmp_path / "encoder.pt"
    pretrained = P.random_encoder("tiny", 1, seed=123)
    export_encoder(pretrained.state_dict(), "tiny", 1, path, image_size=(64, 64))
    net, baseline, meta = P.encoders(path, seed=0)
    assert meta["arch"] == "tiny" and meta["preprocessing"]["image_size"] == [64, 64]
    assert baseline is not net
    fresh = P.random_encoder("tiny", 1, seed=0).state_dict()
    for k, v in baseline.state_dict().items():
        assert torch.equal(v, fresh[k]), k            # the seed's init, not the file's weights
    assert not torch.equal(net.conv1.weight, baseline.conv1.weight)
    a, b, _ = P.encoders("random", arch="tiny", seed=0)
    assert a is not b and torch.equal(a.conv1.weight, b.conv1.weight)


def test_probe_cli_on_a_tiny_dataset(seg_shards, tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    export_encoder(P.random_encoder("tiny", 1, seed=7).state_dict(), "tiny", 1, path,
                   image_size=(64, 64), step=5)
    out = tmp_path / "probe.json"
    assert main(["probe", "--encoder", str(path), "--data", str(seg_shards), "--split", "test",
                 "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    for key in P.PROBE_KEYS:
        assert key in r and key in r["random"] and key in r["chance"], key
    assert r["arch"] == "tiny" and r["split"] == "test" and r["encoder_step"] == 5
    c = r["counts"]
    assert c["frames"] == c["train_frames"] == 48      # 3 patients x 2 sweeps x 8 frames each
    assert c["retrieval_queries"] == c["frames"] and c["retrieval_patients"] == 3
    assert 0 < c["near_standard_frames"] < c["standard_plane_video_frames"]
    assert r["skipped"] == {} and all(0 <= r[k] <= 1 for k in P.PROBE_KEYS)
    assert "| random init (seed 0) |" in printed and "| pretrained encoder |" in printed
    # The random baseline alone: both rows are the same network's, so the same figures.
    assert main(["probe", "--encoder", "random", "--arch", "tiny", "--data", str(seg_shards),
                 "--quiet", "--json", str(out)]) == 0
    alone = json.loads(out.read_text())
    assert {k: alone[k] for k in P.PROBE_KEYS} == alone["random"] == r["random"]


def test_probe_refuses_bad_requests(seg_shards, tmp_path, capsys):
    assert main(["probe", "--encoder", "random", "--data", str(seg_shards)]) == 2
    assert "--encoder random needs --arch" in capsys.readouterr().err
    assert main(["probe", "--encoder", "random", "--arch", "tiny", "--data", str(seg_shards),
                 "--split", "train"]) == 2
    assert "fitted on the train split" in capsys.readouterr().err
    with pytest.raises(SonostreamError, match="no frames in split 'val'"):
        P.probe("random", seg_shards, "val", arch="tiny", quiet=True)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert main(["probe", "--encoder", str(tmp_path / "bad.pt"), "--data", str(seg_shards)]) == 2
    assert "is not a sonostream encoder" in capsys.readouterr().err


def test_every_fit_sees_train_frames_only(seg_shards, monkeypatch):
    """On the real path (features of both splits, both encoders): each probe's fit gets the
    train split's features, never the scored split's."""
    splits, fits = {}, []
    extract, fit = P.extract, P.fit_linear

    def recording_extract(nets, source, view, rows, *args):
        out = extract(nets, source, view, rows, *args)
        splits.setdefault(set(view.split[rows]).pop(), []).extend(out)
        return out

    def recording_fit(x, y, classes, balanced=False):
        fits.append(x)
        return fit(x, y, classes, balanced)

    monkeypatch.setattr(P, "extract", recording_extract)
    monkeypatch.setattr(P, "fit_linear", recording_fit)
    P.probe("random", seg_shards, "test", arch="tiny", seed=3, quiet=True)
    assert set(splits) == {"train", "test"}
    train_rows = {row.tobytes() for s in splits["train"] for row in s.x}
    test_rows = {row.tobytes() for s in splits["test"] for row in s.x}
    for x in fits:
        seen = {row.tobytes() for row in x.astype(np.float32)}
        assert seen <= train_rows and not seen & test_rows
    assert len(fits) == 6   # 3 probes x 2 encoders
