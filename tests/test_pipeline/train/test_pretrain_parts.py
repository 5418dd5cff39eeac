"""Each pretext head's label logic, the losses, the schedule and the config, on tiny tensors."""
import math

import pytest
import torch

from pipeline.train.config import load_config
from pipeline.data.batch import label_batch
from pipeline.data.tasks import expand_patches, io_classes, patch_masks
from pipeline.models import PretrainModel
from pipeline.models.pretext import apply_mask, normalize
from pipeline.objectives import TasksConfig, beta_at, io_loss, mir_loss, pm_loss, pretrain_losses
from pipeline.train.optim import OptimConfig, build_optimizer, lr_factor
from pipeline.train.pretraining import PretrainConfig, load_pretrain_config


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


def test_mir_loss_counts_only_hidden_pixels_and_kl_is_a_mean():
    target = torch.zeros(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    recon = torch.zeros_like(target)
    recon[:, :, 4:] = 5.0                       # wrong only where visible: no loss
    mu, logvar = torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1)
    loss, rec, kl = mir_loss(recon, target, mask, mu, logvar, beta=1.0)
    assert rec.item() == 0 and kl.item() == 0 and loss.item() == 0
    recon[:, :, :4] = 1.0                       # wrong by 1 on every hidden pixel
    mu = torch.ones(2, 3, 1, 1)                 # KL of N(1, 1) to N(0, 1) = 0.5 per element
    loss, rec, kl = mir_loss(recon, target, mask, mu, logvar, beta=0.1)
    assert rec.item() == pytest.approx(1.0) and kl.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(1.05)
    # a 1000x larger latent does not make the KL 1000x larger (the seed's summed KL did)
    _, _, kl_big = mir_loss(recon, target, mask, torch.ones(2, 3000, 1, 1), torch.zeros(2, 3000, 1, 1), 0.1)
    assert kl_big.item() == pytest.approx(0.5)


def test_beta_warms_up_linearly():
    assert beta_at(0, 0.2, 10) == 0 and beta_at(5, 0.2, 10) == pytest.approx(0.1)
    assert beta_at(10, 0.2, 10) == beta_at(99, 0.2, 10) == 0.2 and beta_at(0, 0.2, 0) == 0.2


def test_pm_and_io_losses_and_accuracy():
    loss, acc = pm_loss(torch.tensor([5.0, -5.0, 5.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert acc.item() == pytest.approx(2 / 3) and loss.item() > 0
    assert pm_loss(torch.zeros(0), torch.zeros(0))[0].item() == 0
    logits = torch.tensor([[0.0, 9.0], [9.0, 0.0]])
    loss, acc = io_loss(logits, torch.tensor([1, 1]))
    assert acc.item() == 0.5


def test_mir_mask_hides_whole_patches():
    g = torch.Generator().manual_seed(1)
    m = expand_patches(patch_masks(3, (4, 4), 0.5, g, "cpu").view(3, 1, 4, 4), 16, 16)
    assert m.float().mean().item() == pytest.approx(0.5)
    x = torch.ones(3, 1, 16, 16)
    assert (apply_mask(x, m)[m] == 0).all() and (apply_mask(x, m)[~m] == 1).all()


def test_warmup_then_cosine_and_separate_groups():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0 and f[10] == pytest.approx(1.0)
    assert f[99] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))
    opt = build_optimizer(_model(), OptimConfig(lr_encoder=1e-4, lr_heads=1e-3, weight_decay=0.1))
    by = {g["name"]: g for g in opt.param_groups}
    assert by["encoder"]["lr"] == 1e-4 and by["heads"]["lr"] == 1e-3
    assert by["encoder_no_decay"]["weight_decay"] == 0 and by["heads"]["weight_decay"] == 0.1


def test_config_errors_say_the_fix(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  stesp: 10\n")
    with pytest.raises(ValueError, match=r"unknown config key config.train.stesp \(did you mean 'steps'\?\)"):
        load_config(bad, PretrainConfig)
    bad.write_text("loader:\n  batch_size: 8\n")
    with pytest.raises(ValueError, match="set train.batch_size"):
        load_pretrain_config(bad)
    with pytest.raises(ValueError, match="model.arch must be one of"):
        load_pretrain_config(None, ["model.arch=resnet9"])
    with pytest.raises(ValueError, match="train.steps must be int"):
        load_pretrain_config(None, ["train.steps=ten"])
    with pytest.raises(ValueError, match="every weight is 0"):
        load_pretrain_config(None, ["tasks.mir=0", "tasks.pm=0", "tasks.io=0"])
    assert load_pretrain_config(None, ["optim.lr_encoder=5e-4"]).optim.lr_encoder == 5e-4  # YAML 1.1 text
    cfg = load_pretrain_config(None, ["tasks.pm=0"], max_steps=7)
    assert cfg.train.steps == 7 and cfg.tasks.active == ("mir", "io")
    assert PretrainModel("tiny", 4, 12, tasks=cfg.tasks.active).pm is None
