"""encoder.pt / segmenter.pt into plain smp, torchvision and timm models, built and fed from the
files' metadata alone (no sonostream model code on the plain side), match what sonostream runs;
without the recorded normalisation they do not."""
import numpy as np
import pytest
import torch

from plain_models import plain_timm, plain_torchvision, plain_unet, recorded_input

from pipeline.infer import predict
from pipeline.models.encoder import export_encoder
from pipeline.models.inputs import to_unit
from pipeline.models.pretext import PretrainModel
from pipeline.models.segmenter import (SegmenterConfig, build_segmenter, export_segmenter,
                                       load_segmenter)

TOL = 1e-5


def pixels(n, size, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, *size), np.uint8))


def check_segmenter(path):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    pre = blob["preprocessing"]
    assert (pre["pixel_max"], pre["mean"], pre["std"], pre["in_chans"]) == (255.0, [0.5], [0.5], 1)
    size = tuple(pre["image_size"])
    px = pixels(4, size)
    net = plain_unet(blob, blob["state_dict"])
    model, meta = load_segmenter(path)
    assert meta["preprocessing"] == pre
    with torch.no_grad():
        mask, planes = net(recorded_input(px, pre))
        ours, our_planes = model(px.float() / 255.0)
        raw_mask, _ = net(px.float() / 255.0)        # 0..1 without the normalisation
    probs, plane_logits = predict(model, list(px[:, 0].numpy()), size, "cpu")  # sonostream's path
    assert (mask - ours).abs().max() <= TOL
    assert (planes - our_planes).abs().max() <= TOL
    assert np.abs(torch.sigmoid(mask)[:, 0].numpy() - np.stack(probs)).max() <= TOL
    assert np.abs(planes.numpy() - plane_logits).max() <= TOL
    assert (torch.sigmoid(raw_mask) - torch.sigmoid(mask)).abs().max() > 0.01


def test_trained_segmenter_runs_in_a_plain_smp_unet(trained_segmenter):
    check_segmenter(trained_segmenter)


def test_resnet18_segmenter_runs_in_a_plain_smp_unet(tmp_path):
    torch.manual_seed(0)
    cfg = SegmenterConfig(arch="resnet18", decoder_channels=(32, 16, 16, 8, 8))
    seg = build_segmenter(cfg, planes=3)
    export_segmenter(seg.state_dict(), cfg, tmp_path / "s.pt", image_size=(64, 64),
                     planes=["head", "abdomen", "femur"], mode="multitask")
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    assert "smp_register" not in blob and blob["smp"]["encoder_name"] == "resnet18"
    check_segmenter(tmp_path / "s.pt")


def test_segmenter_pt_without_recorded_preprocessing_still_loads(tmp_path):
    cfg = SegmenterConfig(arch="tiny", decoder_channels=(32, 16, 16, 8, 8))
    export_segmenter(build_segmenter(cfg).state_dict(), cfg, tmp_path / "s.pt", image_size=(64, 64),
                     planes=[])
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    for k in ("preprocessing", "smp", "smp_register", "outputs", "block", "layers"):
        del blob[k]   # as written before the recipe was recorded
    torch.save(blob, tmp_path / "old.pt")
    _, meta = load_segmenter(tmp_path / "old.pt")
    assert meta["preprocessing"]["mean"] == [0.5]
    assert meta["smp"]["encoder_name"] == "sonostream-tiny"


def _sonostream_features(arch, px):
    """Features of the encoder as pretraining feeds it (PretrainModel.forward), via a hook."""
    torch.manual_seed(0)
    model = PretrainModel(arch, clip_len=1, io_classes=1, tasks=("mir",)).eval()
    got = []
    # with the MIR decoder's skip map the encoder returns (last, skip): the last map is the feature
    model.encoder.register_forward_hook(
        lambda mod, args, out: got.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(to_unit(px).unsqueeze(1), None, None, None, None, noise_seed=0)
    return model.encoder, got[0]


@pytest.mark.parametrize("arch,plain", [("tiny", plain_torchvision), ("resnet18", plain_timm)])
def test_encoder_runs_in_plain_torchvision_and_timm(tmp_path, arch, plain):
    px = pixels(3, (64, 64), seed=1)
    encoder, ours = _sonostream_features(arch, px)
    export_encoder(encoder.state_dict(), arch, 1, tmp_path / "encoder.pt", image_size=(64, 64))
    blob = torch.load(tmp_path / "encoder.pt", weights_only=True)
    assert blob["preprocessing"]["image_size"] == [64, 64]
    net = plain(blob, blob["state_dict"])
    with torch.no_grad():
        feats = net(recorded_input(px, blob["preprocessing"]))
        raw = net(px.float() / 255.0)
    assert feats.shape == (3, blob["out_dim"], 2, 2)
    assert (feats - ours).abs().max() <= TOL
    assert (raw - ours).abs().max() > 0.01


def test_encoder_pt_without_recorded_preprocessing_loads_in_eval_mode(tmp_path):
    from pipeline.models.encoder import ResNetEncoder, load_encoder
    from preprocessing.format import SonostreamError
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, tmp_path / "e.pt")
    blob = torch.load(tmp_path / "e.pt", weights_only=True)
    for k in ("preprocessing", "output", "block", "layers"):
        del blob[k]   # as written before the recipe was recorded
    torch.save(blob, tmp_path / "old.pt")
    assert not load_encoder(tmp_path / "old.pt").training   # features, not batch statistics
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SonostreamError, match="notes.pt is not a sonostream encoder"):
        load_encoder(tmp_path / "notes.pt")
