"""The pretext losses: MIR on hidden pixels, KL as a mean, beta warm-up, PM and IO."""
import pytest
import torch

from pipeline.objectives import beta_at, io_loss, mir_loss, pm_loss


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
