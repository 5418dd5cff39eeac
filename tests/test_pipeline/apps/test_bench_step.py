"""The step benchmark at a tiny size: its figures are not asserted (machines are noisy), but what
each step encodes and decodes is: the fused step must encode K images per clip, the three-pass
step 1 + 2 + K."""
import json

import pytest
import torch

from pipeline.apps.bench.step import (TasksConfig, bench_step, build, fused_step, make_inputs,
                                 three_pass_step)
from pipeline.cli import main


class Count:
    def __init__(self):
        self.images, self.calls = 0, 0

    def __call__(self, _module, args, _output):
        self.images += args[0].shape[0]
        self.calls += 1


@pytest.fixture(scope="module")
def small():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # fast on a busy machine (2 threads spin against other work)
    model, opt = build("tiny", 4)
    yield model, opt, make_inputs(batch=4, clip_len=4, image_size=32)
    torch.set_num_threads(threads)


def _counts(model, opt, inp, fn):
    enc, dec = Count(), Count()
    hooks = [model.encoder.register_forward_hook(enc), model.mir.register_forward_hook(dec)]
    try:
        fn(model, opt, inp, TasksConfig(), 0)
    finally:
        for h in hooks:
            h.remove()
    return enc, dec


def test_fused_encodes_k_three_pass_encodes_1_2_k(small):
    model, opt, inp = small
    b = inp["frames"].shape[0]
    enc, dec = _counts(model, opt, inp, fused_step)
    assert (enc.calls, enc.images, dec.images) == (1, 4 * b, 4 * b)
    enc, dec = _counts(model, opt, inp, three_pass_step)
    assert (enc.calls, enc.images, dec.images) == (3, (1 + 2 + 4) * b, b)


def test_inputs_have_both_pm_labels_and_a_real_mask(small):
    _, _, inp = small
    cb, pick = inp["batch"], inp["pm_pick"]
    labels = cb.pm_label[pick]
    assert len(labels) == 4 and 0 < labels.sum() < 4            # positives and negatives
    assert (cb.patient[cb.pm_a[pick][:, 0]] == cb.patient[cb.pm_b[pick][:, 0]]).float().eq(labels).all()
    frac = inp["mask"].float().mean().item()
    assert abs(frac - 38 / 64) < 1e-6                            # round(0.6 * 64) of 8x8 patches
    assert inp["frames"].min() >= 0 and inp["frames"].max() <= 1


def test_both_steps_train_the_same_parameters(small):
    model, opt, inp = small
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for fn in (fused_step, three_pass_step):
        loss = fn(model, opt, inp, TasksConfig(), 1)
        assert torch.isfinite(torch.tensor(loss))
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == set(before), set(before) - moved   # every module got a gradient
        before = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_bench_step_result():
    threads = torch.get_num_threads()
    r = bench_step("tiny", image_size=64, batch=4, clip_len=4, threads=1, steps=1)
    assert torch.get_num_threads() == threads                   # restored
    assert r["fused_step_s"] > 0 and r["three_pass_step_s"] > 0
    assert r["speedup"] == pytest.approx(r["three_pass_step_s"] / r["fused_step_s"])
    assert r["speedup_cpu"] == pytest.approx(r["three_pass_step_cpu_s"] / r["fused_step_cpu_s"])
    assert r["speedup_paired_median"] > 0
    assert r["images_encoded_per_clip"] == {"fused": 4, "three_pass": 7}
    assert r["images_decoded_per_clip"] == {"fused": 4, "three_pass": 1}
    assert r["encode_bound"] == pytest.approx(7 / 4)
    s = r["settings"]
    assert (s["arch"], s["image_size"], s["batch"], s["clip_len"], s["threads"], s["steps"]) == \
        ("tiny", 64, 4, 4, 1, 1)
    assert s["torch"] == torch.__version__ and s["device"] == "cpu"


def test_cli_bench_step(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert main(["bench", "step", "--arch", "tiny", "--image-size", "32", "--batch", "3",
                 "--clip-len", "3", "--threads", "1", "--steps", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == r
    assert r["images_encoded_per_clip"] == {"fused": 3, "three_pass": 6}
    assert r["settings"]["batch"] == 3 and r["speedup"] > 0


def test_cli_bench_step_rejects_unknown_arch(capsys):
    assert main(["bench", "step", "--arch", "resnet7", "--steps", "1"]) == 2
    assert "resnet18" in capsys.readouterr().err
