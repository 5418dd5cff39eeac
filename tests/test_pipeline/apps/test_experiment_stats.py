"""The label-efficiency experiment's arithmetic (t-intervals over seeds, paired differences) and
its argument checks, without training anything."""
import math

import pytest

from pipeline.apps.experiment import (arm_stats, label_efficiency, paired_stats, parse_encoders,
                                      results_markdown, run_name)
from pipeline.apps.stats import fmt_ci, mean_ci, paired_ci, t_quantile


@pytest.mark.parametrize("df, want", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                      (9, 2.2622), (29, 2.0452), (1000, 1.9623)])
def test_t_quantile_matches_the_table(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-4)


def test_mean_ci_by_hand():
    # 0.90, 0.92, 0.97: mean 0.93, sd sqrt(((-.03)^2 + (-.01)^2 + .04^2) / 2) = sqrt(0.0013)
    ci = mean_ci([0.90, 0.92, 0.97])
    sd = math.sqrt(0.0013)
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(0.93) and ci["sd"] == pytest.approx(sd)
    assert ci["half"] == pytest.approx(4.302653 * sd / math.sqrt(3))      # = 0.08957
    assert ci["half"] == pytest.approx(0.08957, abs=1e-5)
    assert (ci["lo"], ci["hi"]) == pytest.approx((0.93 - 0.08957, 0.93 + 0.08957), abs=1e-5)
    two = mean_ci([1.0, 3.0])                  # sd sqrt(2), half 12.706 * sqrt(2) / sqrt(2)
    assert two["half"] == pytest.approx(12.7062, abs=1e-4)
    one = mean_ci([0.8, None, float("nan")])   # missing values are left out, n says so
    assert one["n"] == 1 and one["mean"] == 0.8 and one["half"] is None
    assert fmt_ci(one, 3) == "0.800 (n = 1: no CI)"
    assert fmt_ci(ci, 3) == "0.930 ± 0.090"
    assert mean_ci([])["mean"] is None and fmt_ci(mean_ci([]), 3) == "n/a"


def test_paired_difference_matches_by_seed_not_by_order():
    enc = {2: 0.80, 0: 0.95, 1: 0.90}
    base = {0: 0.91, 1: 0.89, 2: 0.70, 5: 0.5}          # seed 5 has no partner: left out
    d = paired_ci(enc, base)                            # 0.04, 0.01, 0.10
    assert d["pairs"] == [0, 1, 2] and d["mean"] == pytest.approx(0.05)
    sd = math.sqrt((0.01 ** 2 + 0.04 ** 2 + 0.05 ** 2) / 2)
    assert d["half"] == pytest.approx(4.302653 * sd / math.sqrt(3))
    assert fmt_ci(d, 3, signed=True, interval=True) == (
        f"+0.050 ± {d['half']:.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")


def _rows():
    rows = []
    for init, shift in (("scratch", 0.0), ("mir", 0.05)):
        for patients in (1, 2):
            for seed, v in zip((0, 1, 2), (0.70, 0.80, 0.75)):
                rows.append({"init": init, "mode": "supervised", "label_fraction": None,
                             "labelled_patients": patients, "seed": seed,
                             "dice_all": v + shift + 0.1 * patients + 0.01 * seed * (init == "mir"),
                             "dice": 0.9, "empty_false_positive_rate": 0.1,
                             "hd95_mm": None if seed else 3.0,
                             "hc_mae_mm": None if seed == 2 else 4.0 + seed})
    return rows


def test_arm_and_paired_tables():
    rows = _rows()
    arms = arm_stats(rows, "dice_all")
    assert arms[("scratch", "supervised", 1)]["mean"] == pytest.approx(0.85)
    assert arms[("scratch", "supervised", 1)]["half"] == pytest.approx(
        4.302653 * 0.05 / math.sqrt(3))
    paired = paired_stats(rows, "dice_all")
    assert set(paired) == {("mir", "supervised", 1), ("mir", "supervised", 2)}
    # differences 0.05, 0.06, 0.07 per seed: mean 0.06, sd 0.01
    d = paired[("mir", "supervised", 2)]
    assert d["mean"] == pytest.approx(0.06) and d["half"] == pytest.approx(4.302653 * 0.01 / 3 ** .5)
    md = results_markdown(rows, "test")
    assert "| encoder | mode | 1 patient | 2 patients |" in md
    assert f"| scratch | supervised | 0.850 ± {4.302653 * 0.05 / 3 ** .5:.3f} |" in md
    assert "| mir − scratch | supervised | +0.060 ± 0.025 [+0.035, +0.085] (n = 3) |" in md
    assert "3.00 (n = 1: no CI)" in md          # HD95 known for one seed only
    assert f"| 4.50 ± {12.7062 * 0.5 ** .5 / 2 ** .5:.2f} (n = 2) |" in md   # HC: 2 of 3 seeds
    assert "3 seeds per arm (seeds 0, 1, 2" in md


def test_run_names():
    assert run_name("scratch", "semi", 2, 1, patients=True) == "scratch-semi-p2-s1"
    assert run_name("mir+pm", "supervised", 0.25, 0, patients=False) == "mir+pm-supervised-0.25-s0"


SCRATCH = {"inits": ["scratch"]}


@pytest.mark.parametrize("kw, match", [
    ({**SCRATCH, "fractions": [0.5], "patients": [1]}, "--fractions and --patients"),
    ({**SCRATCH, "patients": [0, 2]}, "--patients must be whole numbers >= 1"),
    ({**SCRATCH, "patients": [1], "seeds": 0}, "--seeds must be a whole number >= 1"),
    ({**SCRATCH, "fractions": [1.5]}, r"label fractions must be in \(0, 1\]"),
    ({"inits": ["pretrained"]}, "--encoder missing"),
    ({"inits": ["scratch", "mir"]}, r"unknown init\(s\) \['mir'\]"),
    ({"encoders": {"mir": "nowhere/encoder.pt"}}, "--encoders mir=nowhere/encoder.pt: no such file"),
    ({"encoders": {"scratch": "x.pt"}}, "not 'scratch'"),
    ({"encoder": "a.pt", "encoders": {"pretrained": "b.pt"}}, "names it again")])
def test_bad_arguments_are_refused_before_any_run(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        label_efficiency(tmp_path / "no-data", tmp_path / "exp", **kw)
    assert not (tmp_path / "exp").exists()


def test_parse_encoders():
    assert parse_encoders("mir=a/e.pt, mir+pm=b/e.pt") == {"mir": "a/e.pt", "mir+pm": "b/e.pt"}
    assert parse_encoders(None) == {}
    for bad, match in (("mir", "give NAME=PATH"), ("a=x,a=y", "twice")):
        with pytest.raises(ValueError, match=match):
            parse_encoders(bad)


def test_results_are_written_after_every_run(tmp_path, monkeypatch):
    """An experiment stopped part-way (a crash, SIGTERM, the deadline) leaves results.csv and
    results.md of the runs that finished, not nothing."""
    import csv
    from pipeline.apps import experiment

    def fake_run(data, out, config, overrides, init, encoder, mode, amount, seed, patients,
                 split, max_steps, quiet):
        if seed == 2:
            raise KeyboardInterrupt    # stopped during the third run
        return {"init": init, "mode": mode, "label_fraction": amount, "labelled_patients": 1,
                "seed": seed, "steps": 1, "labelled_frames": 8, "encoder": "",
                **{k: 0.5 + 0.1 * seed for k in experiment.EVAL_COLUMNS}}

    monkeypatch.setattr(experiment, "run_one", fake_run)
    out = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        label_efficiency(tmp_path / "no-data", out, inits=["scratch"], fractions=[0.5], seeds=3,
                         modes=("supervised",))
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["seed"], r["dice_all"]) for r in rows] == [("0", "0.5"), ("1", "0.6")]
    assert "2 runs, 2 seeds per arm (seeds 0, 1;" in (out / "results.md").read_text()


def test_mode_minus_supervised_is_paired_within_one_encoder():
    """The goal "pretrained + semi not worse than pretrained supervised" is a paired difference
    within one encoder, not against scratch."""
    rows = [r for r in _rows() if r["labelled_patients"] == 1]
    for seed, d in zip((0, 1, 2), (-0.02, 0.01, 0.04)):        # mir semi = mir supervised + d
        sup = next(r for r in rows if (r["init"], r["seed"]) == ("mir", seed))
        rows.append({**sup, "mode": "semi", "dice_all": sup["dice_all"] + d})
    stats = paired_stats(rows, "dice_all", "supervised", along="mode")
    assert set(stats) == {("mir", "semi", 1)}                  # scratch has no semi run
    d = stats[("mir", "semi", 1)]
    assert d["pairs"] == [0, 1, 2] and d["mean"] == pytest.approx(0.01)
    assert d["half"] == pytest.approx(4.302653 * 0.03 / 3 ** .5)
    md = results_markdown(rows, "test")
    assert "each mode − supervised of the same encoder" in md
    assert "| mir | semi − supervised | +0.010 ± 0.075 [-0.065, +0.085] (n = 3) |" in md
    assert "| mir − scratch | semi |" not in md                # no scratch semi to pair with


def test_a_signal_stops_the_experiment_not_only_the_run(tmp_path, monkeypatch):
    """SIGTERM during a run (checkpointed, step < steps) ends the experiment: the half-trained run
    is neither evaluated nor a row, and no later run starts."""
    from pipeline.apps import experiment
    from pipeline.eval import evaluate as ev_mod
    from pipeline.train import finetuning

    started = []

    def fake_train(cfg, data, out, resume=None, quiet=False):
        started.append(out.name)
        return {"complete": False, "signal": "SIGTERM", "step": 3, "stopped_by": "signal"}

    def no_eval(*a, **k):
        raise AssertionError("a stopped run was evaluated")

    monkeypatch.setattr(finetuning, "train", fake_train)
    monkeypatch.setattr(ev_mod, "evaluate", no_eval)
    with pytest.raises(experiment.ExperimentStopped, match="SIGTERM in run scratch-supervised-0.5-s0"):
        label_efficiency(tmp_path / "no-data", tmp_path / "exp", inits=["scratch"],
                         fractions=[0.5], seeds=2, modes=("supervised",))
    assert started == ["scratch-supervised-0.5-s0"]
    assert not (tmp_path / "exp" / "results.csv").exists()
