"""Task labels: IO labels invert the shuffle, PM labels match patients, masks have the ratio."""
import math

import numpy as np
import pytest
import torch

from pipeline.data.tasks import expand_patches, io_classes, io_labels, patch_masks, pm_pairs


@pytest.mark.parametrize("k,reverse,n", [(3, "same", 3), (4, "same", 12), (4, "distinct", 24),
                                         (2, "distinct", 2)])
def test_io_class_count(k, reverse, n):
    assert len(io_classes(k, reverse)) == n


@pytest.mark.parametrize("reverse", ["same", "distinct"])
def test_io_labels_invert_the_shuffle(reverse):
    rng = np.random.default_rng(0)
    k = 4
    perm, label = io_labels(rng, 500, k, reverse)
    clip = np.arange(10, 10 + k)                      # frames in temporal order
    for p, c in zip(perm, label):
        shown = clip[p]                               # what the model sees
        canon = io_classes(k, reverse)[c]
        restored = shown[np.argsort(canon)]
        if reverse == "distinct":
            assert restored.tolist() == clip.tolist()
        else:
            assert restored.tolist() in (clip.tolist(), clip[::-1].tolist())
    assert len(set(label.tolist())) == len(io_classes(k, reverse))   # every class occurs


def test_io_rejects_a_single_class():
    with pytest.raises(ValueError, match="one class"):
        io_classes(2, "same")


def test_pm_same_clip_positives_match_patients_and_are_balanced():
    rng = np.random.default_rng(1)
    patient = np.array([0, 0, 1, 2, 2, 3, 1, 0])
    video = np.arange(8)
    a, b, y = pm_pairs(rng, patient, video, k=4, positive="video")
    assert len(y) == 16 and y.sum() == 8
    np.testing.assert_array_equal(y, (patient[a[:, 0]] == patient[b[:, 0]]).astype(np.float32))
    pos = y == 1
    assert (a[pos, 0] == b[pos, 0]).all() and (a[pos, 1] != b[pos, 1]).all()   # same video, other frame
    assert ((a >= 0) & (a[:, 1:] < 4)).all()


def test_pm_patient_positives_use_another_video_when_there_is_one():
    rng = np.random.default_rng(2)
    patient = np.array([0, 0, 1, 2])
    a, b, y = pm_pairs(rng, patient, np.arange(4), k=4, positive="patient")
    pos = y == 1
    pairs = {(int(i), int(j)) for i, j in zip(a[pos, 0], b[pos, 0])}
    assert pairs == {(0, 1), (1, 0)}          # clips 2 and 3 have no other video: no pair
    np.testing.assert_array_equal(y, (patient[a[:, 0]] == patient[b[:, 0]]).astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_pm_default_positives_never_come_from_the_same_clip_or_video(seed):
    """Default pm_positive: a positive is another video of the patient; a clip without one (a
    single-video patient) gives no pair, so every clip gives one positive and one negative or
    nothing."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, 5, size=16)
    video = patient * 10 + rng.integers(0, 3, size=16)      # 1-3 videos per patient, repeats
    video[patient == 4] = 40                                 # patient 4: a single video
    a, b, y = pm_pairs(np.random.default_rng(seed + 100), patient, video, k=4)
    np.testing.assert_array_equal(y, np.tile([1.0, 0.0], len(y) // 2))   # alternating: balanced
    pos, neg = y == 1, y == 0
    assert (patient[a[pos, 0]] == patient[b[pos, 0]]).all()
    assert (video[a[pos, 0]] != video[b[pos, 0]]).all() and (a[pos, 0] != b[pos, 0]).all()
    assert (patient[a[neg, 0]] != patient[b[neg, 0]]).all()
    np.testing.assert_array_equal(a[pos, 0], a[neg, 0])     # each clip: its positive, its negative
    cross = [(patient == patient[i]) & (video != video[i]) for i in range(16)]
    expected = [i for i in range(16) if cross[i].any() and (patient != patient[i]).any()]
    assert a[pos, 0].tolist() == expected                    # exactly the clips that have both
    assert 4 not in patient[a[:, 0]] and ((a[:, 1] < 4) & (b[:, 1] < 4)).all()


def test_pm_without_another_patient_gives_no_pairs():
    for positive in ("patient", "video"):
        a, b, y = pm_pairs(np.random.default_rng(0), np.zeros(5, int), np.arange(5), k=4,
                           positive=positive)
        assert len(y) == 0


@pytest.mark.parametrize("grid,ratio,hw", [((8, 8), 0.6, (64, 64)), ((4, 6), 0.25, (32, 48)),
                                           ((7, 7), 0.5, (50, 50))])
def test_patch_masks_have_the_configured_ratio(grid, ratio, hw):
    g = torch.Generator().manual_seed(0)
    p = patch_masks(10, grid, ratio, g)
    n_patches = math.floor(ratio * grid[0] * grid[1] + 0.5)
    assert p.shape == (10, *grid) and (p.sum(dim=(1, 2)) == n_patches).all()
    m = expand_patches(p.unsqueeze(1), *hw)
    assert m.shape == (10, 1, *hw) and m.dtype == torch.bool
    if hw[0] % grid[0] == 0 and hw[1] % grid[1] == 0:
        ph, pw = hw[0] // grid[0], hw[1] // grid[1]
        patches = m.view(10, grid[0], ph, grid[1], pw)
        # constant within each patch, exact count of masked patches per frame
        assert (patches == patches[:, :, :1, :, :1]).all()
        assert (patches[:, :, 0, :, 0].sum(dim=(1, 2)) == n_patches).all()
        assert torch.allclose(m.float().mean(dim=(1, 2, 3)), torch.tensor(n_patches / (grid[0] * grid[1])))
    else:
        frac = m.float().mean(dim=(1, 2, 3))
        assert (abs(frac - ratio) < 0.08).all()
    assert not torch.equal(m[0], m[1])                    # frames get different masks


def test_patch_masks_repeat_for_a_seed_and_check_arguments():
    a = patch_masks(4, (4, 4), 0.5, torch.Generator().manual_seed(3))
    b = patch_masks(4, (4, 4), 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ratio"):
        patch_masks(1, (2, 2), 1.5)
    with pytest.raises(ValueError, match="finer than the frame"):
        expand_patches(a[:, None], 2, 2)
