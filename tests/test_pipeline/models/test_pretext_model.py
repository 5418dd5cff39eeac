"""The pretext model: one encoder pass feeds every head; each head's label logic, on tiny tensors."""
import math

import pytest
import torch

from pipeline.data.batch import label_batch
from pipeline.data.tasks import expand_patches, io_classes, patch_masks
from pipeline.models import PretrainModel
from pipeline.models.pretext import apply_mask, normalize
from pipeline.objectives import TasksConfig, pretrain_losses


def _batch(b=4, k=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, k, 1, size, size), generator=g, dtype=torch.uint8)
    patient = torch.arange(b) // 2
    batch = label_batch(frames, patient.numpy(), torch.arange(b).numpy(), torch.arange(b).numpy(),
                        torch.arange(k).repeat(b, 1).numpy(), seed=seed, epoch=0, step=0)
    batch.mir_patches = patch_masks(b * k, (8, 8), 0.5, g, "cpu").view(b, k, 8, 8)
    return batch


def _model(k=4, tasks=("mir", "pm", "io")):
    torch.manual_seed(0)
    return PretrainModel("tiny", k, len(io_classes(k)), tasks=tasks).eval()


def test_one_encoder_pass_over_the_clip_frames_feeds_all_heads():
    model, batch = _model(), _batch()
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = model(batch.images(), batch.mir_mask, batch.io_perm, batch.pm_a, batch.pm_b)
    assert seen == [4 * 4]                       # B*K frames, once
    assert out["recon"].shape == (16, 1, 32, 32)  # full input resolution
    assert out["pm_logits"].shape == (len(batch.pm_a),)
    assert out["io_logits"].shape == (4, len(io_classes(4)))


def test_io_head_sees_the_frames_in_the_permuted_order():
    model, batch = _model(), _batch()
    x = normalize(batch.images().flatten(0, 1))
    with torch.no_grad():
        _, pooled = model.encode(apply_mask(x, batch.mir_mask.flatten(0, 1)))
        feats = pooled.view(4, 4, -1)
        shown = torch.stack([feats[b, batch.io_perm[b]] for b in range(4)])
        out = model(batch.images(), batch.mir_mask, batch.io_perm, batch.pm_a, batch.pm_b)
        assert torch.allclose(out["io_logits"], model.io(shown), atol=1e-5)
        ident = torch.arange(4).repeat(4, 1)
        other = model(batch.images(), batch.mir_mask, ident, batch.pm_a, batch.pm_b)
    assert not torch.allclose(out["io_logits"], other["io_logits"])   # order matters


def test_pm_head_compares_the_paired_frames_and_is_symmetric():
    model, batch = _model(), _batch()
    with torch.no_grad():
        x = normalize(batch.images().flatten(0, 1))
        _, pooled = model.encode(apply_mask(x, batch.mir_mask.flatten(0, 1)))
        feats = pooled.view(4, 4, -1)
        a, b = batch.pm_a, batch.pm_b
        out = model(batch.images(), batch.mir_mask, batch.io_perm, a, b)
        want = model.pm(feats[a[:, 0], a[:, 1]], feats[b[:, 0], b[:, 1]])
        swapped = model(batch.images(), batch.mir_mask, batch.io_perm, b, a)["pm_logits"]
    assert torch.allclose(out["pm_logits"], want, atol=1e-5)
    assert torch.allclose(out["pm_logits"], swapped, atol=1e-5)
    # labels: 1 exactly when the two frames' clips share a patient
    same = (batch.patient[a[:, 0]] == batch.patient[b[:, 0]]).float()
    assert torch.equal(batch.pm_label, same) and 0 < same.mean() < 1


def test_no_pairs_still_touches_every_pm_weight():
    model, batch = _model(), _batch()
    model.train()
    empty = torch.zeros(0, 2, dtype=torch.long)
    out = model(batch.images(), batch.mir_mask, batch.io_perm, empty, empty, noise_seed=1)
    batch.pm_label = torch.zeros(0)
    loss = pretrain_losses(out, batch, batch.mir_mask, TasksConfig(), step=0)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.pm.parameters())
    assert math.isfinite(loss.item())


def test_mir_mask_hides_whole_patches():
    g = torch.Generator().manual_seed(1)
    m = expand_patches(patch_masks(3, (4, 4), 0.5, g, "cpu").view(3, 1, 4, 4), 16, 16)
    assert m.float().mean().item() == pytest.approx(0.5)
    x = torch.ones(3, 1, 16, 16)
    assert (apply_mask(x, m)[m] == 0).all() and (apply_mask(x, m)[~m] == 1).all()
