"""Semi-supervised mode with a tiny labelled set: the mechanisms that keep it from collapsing.

A garbage teacher adds nothing to the student's loss (confidence filter); an empty-looking frame
never teaches a head (frame-level decision); the unlabelled term is 0 at step 0 and ramps over
a share of the run; the teacher follows the student at first, then slows down; the teacher is
exported when it scores better on val frames, and the segmenter says which was exported.
"""
import contextlib
import copy

import numpy as np
import pytest
import torch

from pipeline.data import SegLoader
from pipeline.data.segloader import SegBatch, SegDataConfig
from pipeline.models.segmenter import build_segmenter
from pipeline.objectives.segmentation import SemiConfig, consistency, rampup
from pipeline.train.finetuning import MeanTeacher, finetune_forward, load_finetune_config, pick_student_or_teacher

from factories import FINETUNE_CONFIG, FINETUNE_FAST, make_dataset, write_frames


def semi_cfg(*extra, steps=100):
    return load_finetune_config(FINETUNE_CONFIG, [*FINETUNE_FAST, "semi.rampup_steps=null", *extra],
                                mode="semi", max_steps=steps)


class FixedTeacher:
    """A teacher whose logits are given (its ``module`` ignores the frames); no prior, gate open."""
    gate = 1.0

    def __init__(self, logits):
        self.module = lambda u: (logits[: u.shape[0]], None)

    def observe(self, masks, t_logits):
        return None


def batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 8:20, 10:22] = 1
    return SegBatch(frames, masks, torch.full((n,), -1), torch.ones(n), frames.flip(0).clone(),
                    np.arange(n), epoch=0, step=0)


@pytest.fixture(scope="module")
def tiny():
    """One small UNet for the whole module (building one is the slow part)."""
    torch.manual_seed(0)
    return build_segmenter(semi_cfg().model)


def test_a_garbage_teacher_leaves_the_supervised_loss(tiny):
    model, c = tiny, semi_cfg()
    b = batch()
    garbage = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # p 0.27-0.73
    loss, logs, _ = finetune_forward(model, b, c, 80, torch.Generator().manual_seed(0),
                                     FixedTeacher(garbage), contextlib.nullcontext)
    assert logs["alpha"] > 0.9                        # ramped up: only the filter can zero it
    assert float(logs["loss_cons"]) == 0.0 and float(logs["cons_pixels"]) == 0.0
    assert float(loss.detach()) == pytest.approx(float(logs["loss_seg"]), abs=1e-7)


def test_an_empty_looking_frame_never_pushes_a_head():
    c = SemiConfig()
    t = torch.full((2, 1, 64, 64), -0.8)            # p 0.31: unsure background everywhere
    t[0, 0, 5, 5] = 6.0                              # a confident speck: 1 pixel is not a head
    t[1] = -6.0                                      # a confidently empty frame
    s = torch.full((2, 1, 64, 64), -1.0, requires_grad=True)
    loss, used = consistency(s, t, c.consistency, c.threshold, c.min_head_pixels)
    loss.backward()
    assert float(used) > 0                           # the empty frame teaches "no head"
    assert bool((s.grad >= 0).all())                 # no pixel's logit is pushed up
    assert float(s.grad[1].sum()) > 0                # the confidently empty frame pushes down


def test_a_frame_with_a_head_uses_confident_pixels_only():
    c = SemiConfig()
    t = torch.full((1, 1, 32, 32), -6.0)
    t[0, 0, 8:20, 8:20] = 6.0                        # a confident head
    t[0, 0, 8:20, 20:24] = 0.3                       # its unsure border
    s = torch.zeros((1, 1, 32, 32), requires_grad=True)
    loss, used = consistency(s, t, c.consistency, c.threshold, c.min_head_pixels)
    loss.backward()
    g = s.grad[0, 0]
    assert bool((g[8:20, 8:20] < 0).all()) and bool((g[8:20, 20:24] == 0).all())
    assert float(used) == pytest.approx(1 - 48 / 1024)
    unsure = torch.full((1, 1, 32, 32), -6.0)        # confident background, and a head seen
    unsure[0, 0, 8:20, 8:20] = 0.4                   # but not one confident head pixel
    loss, used = consistency(s.detach(), unsure, c.consistency, c.threshold, c.min_head_pixels)
    assert float(used) == 0.0 and float(loss) == 0.0  # the frame is left out, not called empty


def test_rampup_is_zero_at_step_zero_and_a_share_of_the_run(tiny):
    c = semi_cfg(steps=100)
    sure = FixedTeacher(torch.full((4, 1, 32, 32), -6.0))   # confidently empty: all to teach
    logs = finetune_forward(tiny, batch(), c, 0, torch.Generator().manual_seed(0), sure,
                            contextlib.nullcontext)[1]
    assert float(logs["alpha"]) == 0.0 and float(logs["cons_frames"]) == 0.0   # weight 0: not fed
    logs = finetune_forward(tiny, batch(), c, 20, torch.Generator().manual_seed(0), sure,
                            contextlib.nullcontext)[1]
    assert float(logs["alpha"]) > 0 and float(logs["cons_frames"]) == 1.0
    assert float(logs["loss_cons"]) > 0
    for steps in (100, 1000):
        n = c.semi.rampup_length(steps)
        assert n == round(c.semi.rampup * steps) and 0 < n < steps
        assert 0 < rampup(n // 2, n) < rampup(n - 1, n) < rampup(n, n) == 1.0


def test_the_teacher_follows_then_slows_down_and_resumes_its_schedule(tiny):
    c = SemiConfig(ema_decay=0.99, ema_decay_end=0.999, rampup=0.5)
    decays = [c.decay_at(s, 1000) for s in range(1000)]
    assert decays[0] == 0.0 and decays[9] == pytest.approx(0.9)   # the running mean at first
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert decays[-1] == pytest.approx(0.999) and decays[300] < 0.999
    model = copy.deepcopy(tiny)
    t = MeanTeacher(model, 0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    t.update(model, c.decay_at(t.updates, 1000))               # decay 0: teacher = student
    assert all(torch.equal(a, b) for a, b in zip(t.module.state_dict().values(),
                                                 model.state_dict().values()))
    again = MeanTeacher(model, 0.99)
    again.load_state_dict(t.state_dict())
    assert again.updates == 1 and all(torch.equal(a, b) for a, b in zip(
        again.module.state_dict().values(), t.module.state_dict().values()))


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("semi_val")
    return make_dataset(root / "shards", write_frames(root / "src", patients=4, videos=1, frames=3,
                                                     shape=(32, 32)), image_size=32, val=0.5)


def test_the_teacher_is_exported_when_it_scores_better_on_val(val_shards, tiny):
    c, model = semi_cfg(), tiny
    loader = SegLoader(val_shards, SegDataConfig(image_size=32, prefetch=0), batch_size=2)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    empty = {**sd, "segmentation_head.0.bias": torch.full_like(sd["segmentation_head.0.bias"], -50.0)}
    full = {**sd, "segmentation_head.0.bias": torch.full_like(sd["segmentation_head.0.bias"], 50.0)}
    for stud, teach, want in ((empty, full, "teacher"), (full, empty, "student")):
        t = MeanTeacher(model, 0.99)
        t.module.load_state_dict(teach)
        out, meta = pick_student_or_teacher(c, loader, [], stud, t)
        assert meta["exported"] == want and meta["val_scores"]["frames"] > 0
        assert torch.equal(out["segmentation_head.0.bias"], full["segmentation_head.0.bias"])
    c.semi.val_frames = 0
    out, meta = pick_student_or_teacher(c, loader, [], empty, t)
    assert meta["exported"] == "student" and out is empty


def test_the_labelled_empty_share_calls_the_lowest_scoring_frames_empty(tiny):
    """A teacher that marks a confident head on every frame (as a poor teacher does on empty
    frames): with half the labelled frames empty, its four smallest heads are taught "no head"
    on every pixel, its four largest stay heads."""
    t = torch.full((8, 1, 32, 32), -6.0)
    for i in range(8):
        t[i, 0, 4:10 + 2 * i, 4:20] = 6.0            # a confident head, larger with i
    masks = torch.zeros(8, 1, 32, 32, dtype=torch.uint8)
    masks[:4, :, 8:20, 8:20] = 1                     # labelled: 4 of 8 frames hold a head
    teacher = MeanTeacher(tiny, 0.99, window=64, eval_mode=True)
    assert not teacher.module.training
    empty = teacher.observe(masks, t)
    assert teacher.empty_share() == 0.5 and empty.tolist() == [True] * 4 + [False] * 4
    s = torch.zeros((8, 1, 32, 32), requires_grad=True)
    c = SemiConfig()
    loss, used = consistency(s, t, c.consistency, c.threshold, c.min_head_pixels, empty)
    loss.backward()
    assert float(used) == 1.0                        # every pixel of every frame is confident
    assert bool((s.grad[:4] > 0).all())              # the 4 lowest: pushed down everywhere
    assert bool((s.grad[4:, 0, 4:10, 4:20] < 0).all())   # the heads of the 4 largest: pushed up
    again = MeanTeacher(tiny, 0.99, window=64)
    again.load_state_dict(teacher.state_dict())     # the prior resumes with the run
    assert again.empty_share() == 0.5 and torch.equal(again.scores, teacher.scores)
    off = MeanTeacher(tiny, 0.99, window=0)
    assert not bool(off.observe(masks, t).any())     # semi.prior_window 0: the area rule alone


def test_the_gate_turns_the_unlabelled_term_off_while_the_teacher_is_worse(tiny):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    bias = "segmentation_head.0.bias"
    empty = {**sd, bias: torch.full_like(sd[bias], -50.0)}   # predicts no head anywhere
    full = {**sd, bias: torch.full_like(sd[bias], 50.0)}     # a head everywhere
    student, teacher = copy.deepcopy(tiny), MeanTeacher(tiny, 0.99)
    student.train()
    frames = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)     # val frames without a head
    student.load_state_dict(empty)
    teacher.module.load_state_dict(full)
    teacher.gate_check(student, frames, masks)
    assert teacher.gate == 0.0 and student.training          # worse teacher: off; mode kept
    c = semi_cfg()
    logs = finetune_forward(student, batch(), c, 80, torch.Generator().manual_seed(0), teacher,
                            contextlib.nullcontext)[1]
    assert float(logs["alpha"]) == 0.0 and float(logs["cons_frames"]) == 0.0
    again = MeanTeacher(tiny, 0.99)
    again.load_state_dict(teacher.state_dict())              # the gate resumes with the run
    assert again.gate == 0.0
    teacher.module.load_state_dict(empty)                    # as good as the student: on
    teacher.gate_check(student, frames, masks)
    assert teacher.gate == 1.0
