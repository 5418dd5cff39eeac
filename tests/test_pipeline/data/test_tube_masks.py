"""MIR tube masks: one mask per clip, so IO's frame differences are not the masks' differences."""
import numpy as np
import pytest
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.tasks import clip_masks, io_classes
from preprocessing.format import SonostreamError


def test_tube_masks_repeat_one_mask_over_the_clip_and_frame_masks_do_not():
    g = torch.Generator().manual_seed(0)
    tube = clip_masks(5, 4, (8, 8), 0.6, "tube", g)
    assert tube.shape == (5, 4, 8, 8)
    assert (tube.sum(dim=(2, 3)) == round(0.6 * 64)).all()          # the ratio, per frame
    assert (tube == tube[:, :1]).all()                               # every frame: the clip's mask
    assert not (tube[0] == tube[1]).all()                            # clips differ
    frame = clip_masks(5, 4, (8, 8), 0.6, "frame", torch.Generator().manual_seed(0))
    assert not (frame == frame[:, :1]).all()
    with pytest.raises(SonostreamError, match="mask_mode"):
        LoaderConfig(mask_mode="clip")


def test_loader_io_labels_with_tube_masks(dataset):
    """The loader's default: all K frames of a clip hide the same patches, so the frames IO is
    shown (``frames[io_perm]``) share one mask, and the labels still invert the shuffle."""
    cfg = LoaderConfig(batch_size=3, clip_len=4, num_workers=0, shuffle_window=5, loader="cpu")
    assert cfg.mask_mode == "tube"
    loader = ClipLoader(dataset, cfg, seed=0)
    n = 0
    for batch in loader:
        m = batch.mir_patches
        assert (m == m[:, :1]).all(), "a clip's frames have different MIR masks"
        mask = batch.mir_mask                                        # per pixel, [B, K, 1, H, W]
        for b in range(batch.batch_size):
            shown = mask[b, batch.io_perm[b]]
            assert (shown == shown[:1]).all()
            canon = io_classes(4)[int(batch.io_label[b])]
            order = batch.frame_index[b][batch.io_perm[b]].numpy()[np.argsort(canon)]
            assert (np.diff(order) > 0).all() or (np.diff(order) < 0).all()
        n += 1
    assert n > 0
    # mask_mode frame: the old per-frame masks, still deterministic.
    frame = ClipLoader(dataset, LoaderConfig(**{**cfg.__dict__, "mask_mode": "frame"}), seed=0)
    m = next(iter(frame)).mir_patches
    assert not (m == m[:, :1]).all()
