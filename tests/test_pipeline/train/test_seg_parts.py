"""Segmentation parts on their own: label selection, the loader, augmentation, losses, models."""
import cv2
import numpy as np
import pytest
import torch

from pipeline.data.augment import AugmentConfig, geometric, intensity
from pipeline.data.segloader import labelled_patients
from pipeline.data.segloader import SegDataConfig, SegLoader
from pipeline.models.encoder import ResNetEncoder, export_encoder
from pipeline.models.segmenter import (SegmenterConfig, build_segmenter, export_segmenter,
                                       load_pretrained_encoder, load_segmenter)
from pipeline.objectives.segmentation import consistency, dice_bce, plane_loss, rampup, soft_dice


# -- which patients are labelled ------------------------------------------------------------------
def test_label_fraction_is_per_patient_nested_and_stable():
    ids = [f"P{i:03d}" for i in range(40)]
    picks = {f: labelled_patients(ids, f, seed=1) for f in (0.05, 0.1, 0.25, 1.0)}
    assert [len(picks[f]) for f in (0.05, 0.1, 0.25, 1.0)] == [2, 4, 10, 40]
    assert set(picks[0.05]) <= set(picks[0.1]) <= set(picks[0.25]) <= set(ids)
    # adding patients never changes the order of the ones already there
    more = labelled_patients(ids + ["Q1", "Q2"], 1.0, seed=1)
    assert [p for p in more if p in ids] == labelled_patients(ids, 1.0, seed=1)
    assert labelled_patients(ids, 0.01, seed=1) and len(labelled_patients(ids, 0.01, seed=1)) == 1
    assert labelled_patients(ids, 0.25, seed=2) != picks[0.25]
    with pytest.raises(ValueError, match="label fraction"):
        labelled_patients(ids, 0.0)


def test_loader_uses_only_labelled_patients_and_resumes(seg_shards):
    lo = SegLoader(seg_shards, SegDataConfig(label_fraction=0.3, prefetch=0), batch_size=4,
                   unlabelled_batch=4, seed=0)
    chosen = set(lo.sel.patients)
    assert len(chosen) == 1 and lo.sel.total_patients == 3
    t = lo.view
    seen_l, seen_u = set(), set()
    for step in range(12):
        b = lo.batch(step)
        assert b.frames.shape == (4, 1, 64, 64) and b.frames.dtype == torch.uint8
        assert set(b.masks.unique().tolist()) <= {0, 1}
        seen_l |= {t.patient_ids[t.patient[r]] for r in b.rows}
        lab, unl = lo.step_rows(step)
        seen_u |= {t.patient_ids[t.patient[r]] for r in unl}
        assert (t.split[unl] == "train").all()
    assert seen_l == chosen
    assert len(seen_u) == 3        # the unlabelled stream reaches the other patients' frames
    # the state is the step count: a new loader at that state gives the same next batch
    it = iter(lo)
    for _ in range(2):
        next(it)
    state = lo.state_dict()
    want = next(it)
    lo2 = SegLoader(seg_shards, SegDataConfig(label_fraction=0.3, prefetch=0), batch_size=4,
                    unlabelled_batch=4, seed=0)
    lo2.load_state_dict(state)
    got = next(iter(lo2))
    assert np.array_equal(got.rows, want.rows) and torch.equal(got.unlabelled, want.unlabelled)
    other = SegLoader(seg_shards, SegDataConfig(label_fraction=1.0, prefetch=0), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="label_fraction"):
        other.load_state_dict(state)


def test_ranks_take_disjoint_frames(seg_shards):
    los = [SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=3, seed=0, rank=r,
                     world_size=2) for r in range(2)]
    a, b = (lo.step_rows(0)[0] for lo in los)
    whole = SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=6, seed=0).step_rows(0)[0]
    assert np.array_equal(np.r_[a, b], whole)


def test_no_masks_and_bad_masks_are_clear_errors(seg_shards, unlabelled_shards, monkeypatch):
    with pytest.raises(ValueError, match="no frames with masks"):
        SegLoader(unlabelled_shards, SegDataConfig(), batch_size=2)
    lo = SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=2)
    grey = np.zeros((64, 64), np.uint8)
    grey[10:20, 10:20] = 128
    png = cv2.imencode(".png", grey)[1].tobytes()
    row = int(lo.sel.labelled[0])
    real = lo.source.read
    monkeypatch.setattr(lo.source, "read", lambda s, o, n: png if o == lo.view.mask_offset[row]
                        else real(s, o, n))
    with pytest.raises(ValueError, match=r"values 0, 128, not only 0/255"):
        lo.decoder.mask(row)
    with pytest.raises(ValueError, match="multiple of 32"):
        SegDataConfig(image_size=48)


# -- augmentation --------------------------------------------------------------------------------
def test_geometry_moves_frame_and_mask_together_and_is_seeded():
    y = torch.zeros(6, 1, 64, 64)
    y[:, :, 20:44, 12:40] = 1
    x = y.clone()
    cfg = AugmentConfig(rotate_deg=20, flip=0.5)
    gx, gy = geometric(x, y, cfg, torch.Generator().manual_seed(5))
    assert set(gy.unique().tolist()) <= {0.0, 1.0}
    assert ((gx > 0.5).float() != gy).float().mean() < 0.01   # same transform for both
    assert not torch.equal(gy, y)
    again = geometric(x, y, cfg, torch.Generator().manual_seed(5))[1]
    assert torch.equal(again, gy)
    none = AugmentConfig(flip=0, rotate_deg=0, scale=0, shift=0)
    assert torch.allclose(geometric(x, y, none, torch.Generator())[0], x, atol=1e-5)


def test_intensity_stays_in_range_and_changes_pixels():
    x = torch.rand(4, 1, 32, 32)
    out = intensity(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    flat = intensity(x, AugmentConfig(gain=0, gamma=0, speckle=0), torch.Generator())
    assert torch.allclose(flat, x)
    with pytest.raises(ValueError, match="augment.speckle"):
        AugmentConfig(speckle=-1)


def test_intensity_gamma_is_a_power_law_on_both_sides_of_one():
    """gamma alone (no gain, no speckle): each frame becomes x ** g with ln g uniform in
    [-ln 1.3, ln 1.3], so contrast is both raised and lowered and never shifted linearly."""
    ramp = torch.linspace(0.05, 0.95, 64).repeat(256, 1, 64, 1)        # [256, 1, 64, 64]
    out = intensity(ramp, AugmentConfig(gain=0, gamma=0.3, speckle=0), torch.Generator().manual_seed(1))
    g = torch.log(out) / torch.log(ramp)                                 # per-pixel exponent
    per_frame = g.flatten(1)
    assert torch.allclose(per_frame, per_frame[:, :1].expand_as(per_frame), atol=1e-4)  # one g a frame
    g = per_frame[:, 0]
    assert g.min() >= 1 / 1.3 - 1e-4 and g.max() <= 1.3 + 1e-4
    assert (g < 0.9).sum() > 30 and (g > 1.1).sum() > 30                 # both ways, often


# -- losses --------------------------------------------------------------------------------------
def test_dice_bce_and_friends():
    t = torch.zeros(2, 1, 8, 8)
    t[0, :, 2:6, 2:6] = 1
    good = (t * 2 - 1) * 20
    assert soft_dice(good, t) > 0.99 and dice_bce(good, t)[0] < 0.02
    assert soft_dice(-good, t) < 0.3   # second image is empty and predicted empty by neither
    assert rampup(0, 100) == pytest.approx(np.exp(-5)) and rampup(100, 100) == 1.0 and rampup(5, 0) == 1.0
    s = torch.full((1, 1, 4, 4), 3.0)
    tt = torch.tensor([4.0, 0.1, -4.0, 0.0]).repeat(4).view(1, 1, 4, 4)
    loss, used = consistency(s, tt, "pseudo", 0.9)
    assert used == pytest.approx(0.5)   # only |p - 0.5| > 0.4 pixels count
    assert consistency(tt, tt, "mse")[0] == 0
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    loss, acc = plane_loss(logits, torch.tensor([0, -1]))
    assert acc == 1 and loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])).item())
    none, acc = plane_loss(logits, torch.tensor([-1, -1]))
    none.backward()
    assert none == 0 and logits.grad is not None


# -- models --------------------------------------------------------------------------------------
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
