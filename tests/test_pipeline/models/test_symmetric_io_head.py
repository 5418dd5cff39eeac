"""The symmetric IO head (the default): each pair's MLP sees only what does not change when the
pair's two frames swap, so it must order frames from how they differ, and on feature
trajectories of unseen "patients" it orders clips where the frame-seeing pairwise head does not."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.tasks import io_labels
from pipeline.models import HeadsConfig, IOHead
from pipeline.models.heads import IO_HEADS


def _swapped_pair_scores(head, feats):
    """Each pair's log-probabilities, and those of the same two frames with their order swapped
    (reversing the shown order maps pair (i, j) to (K-1-j, K-1-i))."""
    k = feats.shape[1]
    pairs = list(zip(head.pair_i.tolist(), head.pair_j.tolist()))
    lp, lp_rev = head.pair_logprobs(feats), head.pair_logprobs(feats.flip(1))
    return lp, lp_rev[:, [pairs.index((k - 1 - j, k - 1 - i)) for i, j in pairs]]


def test_symmetric_is_the_default_and_a_pairs_scores_do_not_depend_on_its_order():
    assert HeadsConfig().io_head == "symmetric" and "pairwise" in IO_HEADS
    torch.manual_seed(0)
    head = IOHead(8, 4, 12, HeadsConfig(io_hidden=8))
    assert head.kind == "symmetric"
    lp, swapped = _swapped_pair_scores(head, torch.randn(3, 4, 8))
    assert torch.allclose(lp, swapped, atol=1e-6)
    # ...but swapping two frames of the clip still changes the classes' logits.
    feats = torch.randn(3, 4, 8)
    assert not torch.allclose(head(feats[:, [1, 0, 2, 3]]), head(feats))
    # The frame-seeing pairwise head is kept as an option, and is not symmetric.
    lp, swapped = _swapped_pair_scores(IOHead(8, 4, 12, HeadsConfig(io_hidden=8, io_head="pairwise")),
                                       torch.randn(3, 4, 8))
    assert not torch.allclose(lp, swapped, atol=1e-3)


def test_symmetric_head_with_distinct_reverse_sees_the_sign():
    torch.manual_seed(0)
    head = IOHead(8, 4, 24, HeadsConfig(io_hidden=8))   # 24 classes: io_reverse="distinct"
    lp, swapped = _swapped_pair_scores(head, torch.randn(2, 4, 8))
    assert not torch.allclose(lp, swapped, atol=1e-3)   # the offset's sign is a label there


def _toy_heldout_accuracy(kind: str, seed: int = 0, steps: int = 150) -> float:
    """Train the head alone on clips of feature trajectories f_t = a_p + t u_p (a_p, u_p drawn
    per "patient"), score it on clips of other patients."""
    g = torch.Generator().manual_seed(seed)
    d, k = 16, 4

    def clips(n, patients):
        base = torch.randn(patients, d, generator=g) * 3
        step = torch.randn(patients, d, generator=g)
        step = step / step.norm(dim=1, keepdim=True)
        p = torch.randint(0, patients, (n,), generator=g)
        t = torch.randint(0, 20, (n,), generator=g).float()[:, None] + torch.arange(k).float()
        return base[p][:, None] + t[..., None] * step[p][:, None]          # (n, K, d)

    torch.manual_seed(seed)
    head = IOHead(d, k, 12, HeadsConfig(io_hidden=32, io_head=kind))
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    rng = np.random.default_rng(seed)
    train, val = clips(2000, 8), clips(500, 8)
    rows = torch.arange(64)[:, None]
    for _ in range(steps):
        perm, label = io_labels(rng, 64, k)
        f = train[torch.from_numpy(rng.choice(2000, 64))][rows, torch.from_numpy(perm)]
        loss = F.cross_entropy(head(f), torch.from_numpy(label))
        opt.zero_grad()
        loss.backward()
        opt.step()
    perm, label = io_labels(np.random.default_rng(99), 500, k)
    with torch.no_grad():
        pred = head(val[torch.arange(500)[:, None], torch.from_numpy(perm)]).argmax(1)
    return float((pred == torch.from_numpy(label)).float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_symmetric_head_orders_clips_of_unseen_patients(seed):
    # Chance is 1/12; the pairwise head (frames in its input) reaches 0.50-0.62 here.
    assert _toy_heldout_accuracy("symmetric", seed) >= 0.9


def test_the_configs_use_the_symmetric_head():
    from pathlib import Path

    from pipeline.train.pretraining import load_pretrain_config
    root = Path(__file__).resolve().parents[3] / "launch" / "configs"
    for path in (root / "debug" / "pretrain.yaml", root / "pretrain.yaml"):
        assert load_pretrain_config(path).heads.io_head == "symmetric", path
