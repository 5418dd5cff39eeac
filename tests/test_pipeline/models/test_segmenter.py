"""The segmenter: a pretrained encoder.pt loads strictly, wrong ones are refused, segmenter.pt round trip."""
import pytest
import torch

from pipeline.models.encoder import ResNetEncoder, export_encoder
from pipeline.models.segmenter import (SegmenterConfig, build_segmenter, export_segmenter,
                                       load_pretrained_encoder, load_segmenter)


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_pretrained_encoder_weights_are_loaded(tmp_path, arch):
    torch.manual_seed(0)
    enc = ResNetEncoder(arch)
    export_encoder(enc.state_dict(), arch, 1, tmp_path / "encoder.pt", step=7)
    seg = build_segmenter(SegmenterConfig(arch=arch, decoder_channels=(32, 16, 16, 8, 8)))
    assert not torch.equal(seg.encoder.conv1.weight, enc.conv1.weight)
    meta = load_pretrained_encoder(seg, tmp_path / "encoder.pt", arch)
    assert meta["step"] == 7
    ours = seg.encoder.state_dict()
    for k, v in enc.state_dict().items():
        assert torch.equal(ours[k], v), k
    assert len(ours) == len(enc.state_dict())


def test_encoder_of_another_arch_or_format_is_refused(tmp_path):
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, tmp_path / "tiny.pt")
    seg = build_segmenter(SegmenterConfig(arch="resnet18"))
    with pytest.raises(ValueError, match="holds a tiny encoder.*model.arch: tiny"):
        load_pretrained_encoder(seg, tmp_path / "tiny.pt", "resnet18")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sonostream encoder"):
        load_pretrained_encoder(seg, tmp_path / "other.pt", "resnet18")
    with pytest.raises(ValueError, match="encoder.*fine-tune it first"):
        load_segmenter(tmp_path / "tiny.pt")


class MakesMarker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):          # unpickling this would create the file: code from a pickle
        return (open, (self.path, "w"))


@pytest.mark.parametrize("load", ["init", "encoder", "segmenter"])
def test_a_foreign_pickle_is_refused_without_running_it_or_bad_advice(tmp_path, load):
    from pipeline.models.encoder import load_encoder
    from preprocessing.format import SonostreamError
    path, marker = tmp_path / "encoder.pt", tmp_path / "pwned"
    torch.save({"format": "x", "state_dict": MakesMarker(marker)}, path)
    seg = build_segmenter(SegmenterConfig(arch="tiny", decoder_channels=(32, 16, 16, 8, 8)))
    call = {"init": lambda: load_pretrained_encoder(seg, path, "tiny"),
            "encoder": lambda: load_encoder(path), "segmenter": lambda: load_segmenter(path)}[load]
    with pytest.raises(SonostreamError, match="is not a sonostream") as e:
        call()
    assert "weights_only" not in str(e.value) and not marker.exists()


def test_segmenter_round_trip(tmp_path):
    cfg = SegmenterConfig(arch="tiny", decoder_channels=(32, 16, 16, 8, 8))
    torch.manual_seed(1)
    seg = build_segmenter(cfg, planes=3).eval()
    export_segmenter(seg.state_dict(), cfg, tmp_path / "s.pt", image_size=(64, 64),
                     planes=["head", "abdomen", "femur"], mode="multitask", step=3)
    back, meta = load_segmenter(tmp_path / "s.pt")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        (m1, p1), (m2, p2) = seg(x), back(x)
    assert torch.equal(m1, m2) and torch.equal(p1, p2)
    assert meta["mode"] == "multitask" and meta["image_size"] == [64, 64]
