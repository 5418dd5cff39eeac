"""Segmentation losses: Dice + BCE, consistency, plane CE, ramp-up."""
import numpy as np
import pytest
import torch

from pipeline.objectives.segmentation import consistency, dice_bce, plane_loss, rampup, soft_dice


def test_dice_bce_and_friends():
    t = torch.zeros(2, 1, 8, 8)
    t[0, :, 2:6, 2:6] = 1
    good = (t * 2 - 1) * 20
    assert soft_dice(good, t) > 0.99 and dice_bce(good, t)[0] < 0.02
    assert soft_dice(-good, t) < 0.3   # second image is empty and predicted empty by neither
    assert rampup(0, 100) == 0.0 and rampup(100, 100) == 1.0 and rampup(5, 0) == 1.0
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
