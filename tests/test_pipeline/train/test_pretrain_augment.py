"""Pretraining augmentation: one draw per clip (a clip's frames share it, PM's two sides, from two
clips, do not), seeded and resume-exact, before the encoder (MIR's target is the augmented
frame), and ``augment.enabled: false`` leaves today's batches bit for bit."""
from dataclasses import replace

import pytest
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.augment import ClipAugmentConfig, augment_clips
from pipeline.train import pretraining
from pipeline.train.pretraining import augment_batch, load_pretrain_config, train

from factories import PRETRAIN_CONFIG, PRETRAIN_FAST

ON = ClipAugmentConfig(enabled=True, speckle=0.1)
LOADER = LoaderConfig(batch_size=6, clip_len=3, stride=1, image_size=32, loader="cpu",
                      patient_groups=2, decode_threads=1, prefetch=0)


def _batches(shards, n, state=None):
    loader = ClipLoader(shards, LOADER, seed=3)
    if state is not None:
        loader.load_state_dict(state)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out, loader.state_dict()
    return out, loader.state_dict()


def test_a_clip_shares_one_draw_and_the_two_pm_sides_differ(shards):
    (batch,), _ = _batches(shards, 1)
    assert len(batch.pm_a) > 0
    same = batch.frames[:1, :1].expand_as(batch.frames).contiguous()   # one frame everywhere
    out = augment_batch(replace(batch, frames=same), ON, seed=0).frames
    assert torch.equal(out, out[:, :1].expand_as(out))        # K frames of a clip: one draw
    a, b = batch.pm_a[:, 0], batch.pm_b[:, 0]
    assert (a != b).all()                                      # positives from another clip ...
    differ = (out[a, 0].float() - out[b, 0].float()).abs().flatten(1).mean(1)
    assert (differ > 1).all()                                  # ... so each side its own draw
    assert not torch.equal(out[:, 0], same[:, 0])


def test_black_outside_the_fan_stays_black_before_the_geometry():
    x = torch.zeros(8, 2, 1, 16, 16, dtype=torch.uint8)   # 8 clips: some lifted, some darkened
    x[..., 4:12, 4:12] = 128
    cfg = ClipAugmentConfig(enabled=True, flip=0, rotate_deg=0, scale=0, shift=0, level=0.5,
                            dyn_range=0.5, speckle=0.2)
    y = augment_clips(x, cfg, torch.Generator().manual_seed(0))
    assert (y[x == 0] == 0).all() and not torch.equal(y, x)


def test_seeded_and_a_resumed_loader_draws_the_same_augmentations(shards):
    straight, _ = _batches(shards, 3)
    first, state = _batches(shards, 1)
    resumed, _ = _batches(shards, 2, state)
    for b, r in zip(straight[1:], resumed):
        assert torch.equal(augment_batch(b, ON, 0).frames, augment_batch(r, ON, 0).frames)
    b = straight[0]
    assert torch.equal(augment_batch(b, ON, 0).frames, augment_batch(b, ON, 0).frames)
    assert not torch.equal(augment_batch(b, ON, 0).frames, augment_batch(b, ON, 1).frames)
    assert not torch.equal(augment_batch(b, ON, 0).frames, augment_batch(straight[1], ON, 0).frames[:len(b.frames)])


def test_off_switch_gives_the_batch_bit_for_bit(shards, tmp_path):
    (batch,), _ = _batches(shards, 1)
    assert augment_batch(batch, replace(ON, enabled=False), 0) is batch
    assert load_pretrain_config(None).augment.enabled is False          # off unless configured
    cfg = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + ["augment.enabled=false"])
    assert cfg.augment.enabled is False
    with pytest.raises(ValueError, match="augment.level"):
        load_pretrain_config(None, ["augment.level=1.5"])


@pytest.mark.parametrize("enabled", [False, True], ids=["off", "on"])
def test_the_step_feeds_the_augmented_frames_to_the_model(shards, tmp_path, monkeypatch, enabled):
    """What the training step passes to pretrain_forward (whose MIR target is those frames):
    the loader's batch augmented, or (off) the loader's batch itself."""
    seen, real = [], pretraining.pretrain_forward

    def spy(model, batch, *a, **kw):
        seen.append(batch.frames.clone())
        loss, logs, out = real(model, batch, *a, **kw)
        assert torch.equal(out["target"], batch.frames.flatten(0, 1).float() / 255 * 2 - 1)
        return loss, logs, out

    monkeypatch.setattr(pretraining, "pretrain_forward", spy)
    cfg = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + [f"augment.enabled={enabled}"],
                               max_steps=1)
    train(cfg, str(shards), tmp_path / "run", quiet=True)
    loader = ClipLoader(shards, replace(cfg.loader, batch_size=cfg.train.batch_size),
                        seed=cfg.train.seed)
    batch = next(iter(loader))
    want = augment_batch(batch, cfg.augment, cfg.train.seed).frames
    assert torch.equal(seen[0], want)
    assert torch.equal(seen[0], batch.frames) is (not enabled)
