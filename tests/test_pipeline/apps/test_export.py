"""`sonostream export`: safetensors round-trips into plain models, ONNX agrees with torch in
onnxruntime, and bad input is a SonostreamError that names the file and the fix."""
import json
import sys

import numpy as np
import pytest
import torch

from plain_models import plain_torchvision, plain_unet, recorded_input

from pipeline.apps import export as ex
from pipeline.cli import main
from pipeline.models.encoder import ResNetEncoder, export_encoder, load_encoder
from pipeline.models.segmenter import DEFAULT_MIN_QUALITY, load_segmenter
from preprocessing.format import SonostreamError


def pixels(n, size, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, *size), np.uint8))


@pytest.fixture(scope="module")
def encoder_pt(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, path, image_size=(64, 64), step=9)
    return path


def test_safetensors_segmenter_from_a_run_folder_round_trips(trained_segmenter, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file
    out = tmp_path / "seg.safetensors"
    assert main(["export", "--checkpoint", str(trained_segmenter.parent), "--format",
                 "safetensors", "--out", str(out)]) == 0
    assert f"and {tmp_path / 'seg.json'}" in capsys.readouterr().out
    config = json.loads((tmp_path / "seg.json").read_text())
    assert config["kind"] == "segmenter" and config["weights"] == "seg.safetensors"
    # an uncalibrated segmenter.pt: its export says which quality floor applies (the default)
    assert config["min_quality"] == DEFAULT_MIN_QUALITY
    assert config["quality_calibration"]["source"] == "default"
    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()["sonostream"]) == config
    net = plain_unet(config, load_file(out))           # config + weights only
    model, _ = load_segmenter(trained_segmenter)
    px = pixels(3, config["preprocessing"]["image_size"], seed=5)
    with torch.no_grad():
        (mask, planes), (ours, our_planes) = net(recorded_input(px, config["preprocessing"])), \
            model(px.float() / 255.0)
    assert (mask - ours).abs().max() <= 1e-5 and (planes - our_planes).abs().max() <= 1e-5


def test_safetensors_encoder_round_trips_into_torchvision(encoder_pt, tmp_path):
    from safetensors.torch import load_file
    summary = ex.export_checkpoint(encoder_pt, "safetensors", tmp_path / "enc.safetensors")
    config = json.loads((tmp_path / "enc.json").read_text())
    assert summary["kind"] == config["kind"] == "encoder" and config["step"] == 9
    assert config["source_format"] == "sonostream-encoder/1"
    px = pixels(2, (64, 64), seed=6)
    with torch.no_grad():
        feats = plain_torchvision(config, load_file(tmp_path / "enc.safetensors"))(
            recorded_input(px, config["preprocessing"]))
        ours = load_encoder(encoder_pt)(px.float() / 127.5 - 1)
    assert (feats - ours).abs().max() <= 1e-5


def _ort(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})


def test_onnx_segmenter_agrees_with_torch_in_onnxruntime(trained_segmenter, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(trained_segmenter), "--format", "onnx",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    config = json.loads((tmp_path / "seg.json").read_text())
    verified = config["onnx"]["verified"]
    assert f"max |difference| {verified['max_abs_diff']:.3g}" in printed
    assert verified["max_abs_diff"] <= 1e-4 and config["onnx"]["outputs"] == ["mask_logits",
                                                                              "plane_logits"]
    model, _ = load_segmenter(trained_segmenter)
    px = pixels(5, (64, 64), seed=7)                  # another batch size than export / verify
    mask, planes = _ort(out, recorded_input(px, config["preprocessing"]))
    with torch.no_grad():
        ours, our_planes = model(px.float() / 255.0)
    assert np.abs(mask - ours.numpy()).max() <= 1e-4
    assert np.abs(planes - our_planes.numpy()).max() <= 1e-4
    raw, _ = _ort(out, px.float() / 255.0)             # without the recipe: far off
    assert np.abs(raw - ours.numpy()).max() > 0.01


def test_onnx_encoder_has_dynamic_batch_and_size(encoder_pt, tmp_path):
    pytest.importorskip("onnx")
    summary = ex.export_checkpoint(encoder_pt, "onnx", tmp_path / "enc.onnx")
    assert summary["max_abs_diff"] <= 1e-4 and summary["verified_size"] == [64, 64]
    x = recorded_input(pixels(1, (96, 128), seed=8), json.loads(
        (tmp_path / "enc.json").read_text())["preprocessing"])
    (feats,) = _ort(tmp_path / "enc.onnx", x)
    with torch.no_grad():
        ours = load_encoder(encoder_pt)(x)
    assert feats.shape == (1, 512, 3, 4) and np.abs(feats - ours.numpy()).max() <= 1e-4


def test_onnx_that_disagrees_with_torch_fails_and_writes_nothing(encoder_pt, tmp_path,
                                                                  monkeypatch, capsys):
    pytest.importorskip("onnx")
    real = ex._torch_outputs
    monkeypatch.setattr(ex, "_torch_outputs", lambda net, x: [y + 0.5 for y in real(net, x)])
    out = tmp_path / "enc.onnx"
    assert main(["export", "--checkpoint", str(encoder_pt), "--format", "onnx",
                 "--out", str(out)]) == 1
    assert "differs from torch by 0.5" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "enc.json").exists()


def test_bad_input_names_the_file_and_the_fix(encoder_pt, tmp_path, monkeypatch, capsys):
    def refused(checkpoint, fmt="safetensors", out=tmp_path / "x.safetensors", match=""):
        with pytest.raises(SonostreamError, match=match):
            ex.export_checkpoint(checkpoint, fmt, out)
    refused(tmp_path / "missing.pt", match=r"missing.pt does not exist; pass an encoder.pt")
    refused(encoder_pt, fmt="tflite", match=r"'tflite' is not one of .*--format safetensors")
    refused(encoder_pt, out=tmp_path / "x.json", match=r"x.json must be a file name such as")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    refused(tmp_path / "other.pt", match=r"other.pt is not a sonostream checkpoint \(it is a bare state dict "
            r"of 1 tensors \(weights, ...\): weights without the metadata"
            r".*pass the encoder.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    refused(tmp_path / "notes.pt", match=r"notes.pt is not a sonostream checkpoint \(it is not loadable "
            r"as a torch file: Unpickl")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", match=r"empty is a folder with no segmenter.pt or encoder.pt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # as if not installed
    refused(encoder_pt, fmt="onnx", out=tmp_path / "e.onnx",
            match=r"encoder.pt to .*e.onnx as ONNX needs the onnx and onnxruntime packages.*"
                  r"pip install onnx onnxruntime")
    assert not list(tmp_path.glob("x.*")) and not (tmp_path / "e.onnx").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "other.pt"), "--format",
                 "safetensors", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "error: --checkpoint" in capsys.readouterr().err
