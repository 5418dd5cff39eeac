"""Ultrasound augmentation on the device: geometry moves frame and mask together; intensity."""
import pytest
import torch

from pipeline.data.augment import AugmentConfig, geometric, intensity


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
