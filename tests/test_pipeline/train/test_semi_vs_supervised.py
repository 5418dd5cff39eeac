"""Semi-supervised mode with nothing to teach is the supervised run, on a small fixed case: one
labelled patient of seg_shards' three train patients, 40 steps at 32x32, the debug config, seed 1.

The semi mode of session 24 fed every unlabelled frame to the student, so frames that taught
nothing still changed it through BatchNorm's batch statistics: on this case, with its teacher
confident on no pixel in the first 30 steps, it scored 0.495 all-frame Dice on the test frames
against 0.779 supervised, a head on 11 of 11 empty test frames against 0 of 11 (BENCHMARKS.md,
"Semi-supervised with one labelled patient"). With alpha 0 it did not give supervised's weights."""
import pytest
import torch

from pipeline.models.segmenter import load_segmenter
from pipeline.train.finetuning import load_finetune_config, train

from factories import FINETUNE_CONFIG

pytestmark = pytest.mark.slow
SIZE, STEPS, SEED = 32, 40, 1


def run(shards, out, mode, *extra):
    cfg = load_finetune_config(FINETUNE_CONFIG, ["train.trackers=[]", "data.prefetch=0",
                                                 f"data.image_size={SIZE}",
                                                 "train.checkpoint_every=1000", *extra],
                               mode=mode, max_steps=STEPS, label_patients=1, seed=SEED)
    train(cfg, str(shards), out, quiet=True)
    return out / "segmenter.pt"


def test_semi_with_nothing_to_teach_is_the_supervised_run(seg_shards, tmp_path):
    """alpha 0: no unlabelled frame reaches the student, so the weights are supervised's."""
    semi = load_segmenter(run(seg_shards, tmp_path / "semi0", "semi", "semi.alpha=0"))[0]
    sup = load_segmenter(run(seg_shards, tmp_path / "sup", "supervised"))[0]
    a, b = semi.state_dict(), sup.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
