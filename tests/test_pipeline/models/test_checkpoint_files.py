"""An encoder.pt / segmenter.pt that is one of ours by its format key but lacks keys (edited,
written by hand), or a file that is not ours at all, is named with what is missing and what the
file looks like, wherever it is read: load_encoder, --init, load_segmenter, export."""
import pytest
import torch

from pipeline.apps.export import export_checkpoint
from pipeline.models.encoder import ResNetEncoder, export_encoder, load_encoder
from pipeline.models.segmenter import (SegmenterConfig, build_segmenter, export_segmenter,
                                       load_pretrained_encoder, load_segmenter)
from preprocessing.format import SonostreamError

SMALL = SegmenterConfig(arch="tiny", decoder_channels=(32, 16, 16, 8, 8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, root / "encoder.pt")
    seg = build_segmenter(SMALL)
    export_segmenter(seg.state_dict(), SMALL, root / "segmenter.pt", image_size=(32, 32), planes=[])
    return root


def without(files, tmp_path, name, *keys):
    blob = torch.load(files / name, weights_only=True)
    for k in keys:
        del blob[k]
    path = tmp_path / name
    torch.save(blob, path)
    return path


def encoder_loads(path):
    return {"load_encoder": lambda: load_encoder(path),
            "--init": lambda: load_pretrained_encoder(build_segmenter(SMALL), path, "tiny"),
            "export": lambda: export_checkpoint(path, "safetensors", path.with_suffix(".st"))}


@pytest.mark.parametrize("how", ["load_encoder", "--init", "export"])
def test_an_encoder_without_arch_names_the_file_and_the_missing_keys(files, tmp_path, how):
    path = without(files, tmp_path, "encoder.pt", "arch", "in_chans")
    with pytest.raises(SonostreamError) as e:
        encoder_loads(path)[how]()
    msg = str(e.value)
    assert f"{path} says it is a sonostream encoder (format 'sonostream-encoder/1') but lacks " \
           "arch, in_chans (it holds format, out_dim," in msg, msg
    assert "--resume latest to write it again" in msg


@pytest.mark.parametrize("how", ["load_segmenter", "export"])
def test_a_segmenter_without_planes_names_the_file_and_the_missing_keys(files, tmp_path, how):
    path = without(files, tmp_path, "segmenter.pt", "planes", "decoder_channels")
    call = {"load_segmenter": lambda: load_segmenter(path),
            "export": lambda: export_checkpoint(path, "safetensors", tmp_path / "x.st")}[how]
    with pytest.raises(SonostreamError, match=r"segmenter.pt says it is a sonostream segmenter "
                       r"\(format 'sonostream-segmenter/1'\) but lacks decoder_channels, planes "):
        call()


def test_weights_that_do_not_fit_the_metadata_name_the_file(files, tmp_path):
    blob = torch.load(files / "encoder.pt", weights_only=True)
    blob["arch"] = "resnet18"                       # tiny's weights, said to be a ResNet-18
    torch.save(blob, tmp_path / "encoder.pt")
    with pytest.raises(SonostreamError, match=r"encoder.pt: its state_dict does not fit the "
                       r"resnet18 encoder its metadata describes \(Missing key"):
        load_encoder(tmp_path / "encoder.pt")


@pytest.mark.parametrize("blob, looks", [
    ({"conv1.weight": torch.zeros(2), "bn1.weight": torch.zeros(2)},
     r"a bare state dict of 2 tensors \(conv1.weight, bn1.weight, ...\)"),
    ({"model": {}, "optimizer": {}, "epoch": 3},
     r"a dict with keys model, optimizer, epoch \(a training checkpoint of another program\?\)"),
    ([1, 2], r"a list, not a dict")], ids=["state dict", "training checkpoint", "list"])
def test_a_foreign_file_says_what_it_looks_like(tmp_path, blob, looks):
    path = tmp_path / "encoder.pt"
    torch.save(blob, path)
    for call in (lambda: load_encoder(path), lambda: load_segmenter(path),
                 lambda: load_pretrained_encoder(build_segmenter(SMALL), path, "tiny")):
        with pytest.raises(SonostreamError, match=rf"encoder.pt is not a sonostream \w+ \(.*it "
                           rf"is {looks}"):
            call()
