"""The pairwise IO head (shape, and its class map is consistent with io_classes) and the MIR
latent at stride 8 (>= 8x8 at 64 px) from the same single encoder pass."""
import itertools

import numpy as np
import pytest
import torch

from pipeline.data.tasks import io_classes, io_labels
from pipeline.models import HeadsConfig, IOHead, PretrainModel, ResNetEncoder
from pipeline.models.heads import pair_relations
from preprocessing.format import SonostreamError


@pytest.mark.parametrize("k,reverse", [(3, "same"), (4, "same"), (4, "distinct"), (5, "same")])
def test_pairwise_head_shape_and_classes_match_io_classes(k, reverse):
    classes = io_classes(k, reverse)
    torch.manual_seed(0)
    head = IOHead(16, k, len(classes), HeadsConfig(io_hidden=8))
    out = head(torch.randn(3, k, 16))
    assert out.shape == (3, len(classes)) and torch.isfinite(out).all()
    pairs, rel, r = pair_relations(k, reverse)
    assert len(pairs) == k * (k - 1) // 2 and rel.shape == (len(classes), len(pairs))
    assert len({tuple(row) for row in rel.tolist()}) == len(classes)   # no two classes alike
    # Every permutation io_labels draws implies its label's relations, up to direction.
    rng = np.random.default_rng(0)
    perm, label = io_labels(rng, 200, k, reverse)
    for p, c in zip(perm.tolist(), label.tolist()):
        for q, (i, j) in enumerate(pairs):
            d = p[j] - p[i]
            want = abs(d) - 1 if reverse == "same" else (d + k - 1 if d < 0 else d + k - 2)
            assert rel[c, q] == want, (p, c, (i, j))
    # Pair scores that are sure of one class's relations make that class the argmax.
    for c in range(len(classes)):
        lp = torch.full((1, len(pairs), r), -20.0)
        lp[0, torch.arange(len(pairs)), rel[c]] = 0.0
        head.pair_logprobs = lambda feats, lp=lp: lp
        assert int(head(torch.zeros(1, k, 16)).argmax()) == c


def test_pairwise_head_logits_are_sums_of_pair_logprobs():
    torch.manual_seed(1)
    head = IOHead(8, 4, 12, HeadsConfig(io_hidden=8))
    feats = torch.randn(2, 4, 8)
    lp = head.pair_logprobs(feats)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 6))
    _, rel, _ = pair_relations(4, "same")
    want = torch.stack([lp[:, q, rel[:, q]] for q in range(6)], -1).sum(-1)
    assert torch.allclose(head(feats), want)
    # Swapping the frames shown at two positions changes the logits (the head sees the order).
    assert not torch.allclose(head(feats[:, [1, 0, 2, 3]]), head(feats))


def test_concat_head_is_kept_as_an_option_and_bad_names_are_refused():
    head = IOHead(8, 4, 12, HeadsConfig(io_head="concat", io_hidden=8))
    assert head(torch.randn(2, 4, 8)).shape == (2, 12)
    with pytest.raises(SonostreamError, match="io_head"):
        HeadsConfig(io_head="mlp")
    with pytest.raises(SonostreamError, match="mir_stride"):
        HeadsConfig(mir_stride=4)


def test_mir_latent_is_8x8_at_64px_from_one_encoder_pass_and_encoder_names_stay():
    torch.manual_seed(0)
    model = PretrainModel("tiny", 4, 12).train()
    calls = []
    model.encoder.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    frames = torch.rand(2, 4, 1, 64, 64)
    out = model(frames, None, torch.arange(4).repeat(2, 1), torch.zeros(0, 2, dtype=torch.long),
                torch.zeros(0, 2, dtype=torch.long), noise_seed=0)
    assert calls == [8]                                 # B*K frames, one pass
    assert out["mu"].shape[-2:] == (8, 8)               # stride 8, not the last map's 2x2
    assert out["recon"].shape == (8, 1, 64, 64)
    out["recon"].mean().backward()
    assert model.encoder.layer4[0].conv1.weight.grad.abs().sum() > 0   # MIR still trains layer4
    # The encoder's weights keep torchvision's names: what export_encoder writes is unchanged.
    assert set(model.encoder.state_dict()) == set(ResNetEncoder("tiny").state_dict())
    coarse = PretrainModel("tiny", 4, 12, HeadsConfig(mir_stride=32)).eval()
    with torch.no_grad():
        out32 = coarse(frames, None, torch.arange(4).repeat(2, 1),
                       torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long))
    assert out32["mu"].shape[-2:] == (2, 2) and out32["recon"].shape == (8, 1, 64, 64)
