"""``sonostream experiment label-efficiency``: encoder inits (scratch, pretrained, or several named
encoders: a pretext-task ablation) x modes (supervised / semi / multitask) x label amounts (label
fractions, or numbers of labelled patients) x seeds, each trained then evaluated; tables with
95 % confidence intervals over seeds and a plot with error bars.

E/runs/{init}-{mode}-p{N}-s{seed}/  one fine-tuning run each (segmenter.pt, metrics.jsonl, eval/);
                                   ``{init}-{mode}-{fraction}-s{seed}`` with label fractions
E/results.csv                     one row per run (long format)
E/results.md                      per metric: mean ± 95 % CI per arm (rows: init x mode;
                                  columns: label amount), each encoder - scratch paired by seed,
                                  and each mode - supervised of one encoder paired by seed
E/label_efficiency.png            all-frame Dice and HC error against the label amount, error bars

Seed s fixes both the initial weights (``train.seed``) and which patients are labelled
(``data.label_seed``), so two arms with the same seed saw the same labelled frames and the paired
difference removes the patient draw from the comparison. Seeds are the config's ``train.seed``,
+1, ... A re-run skips runs that finished and were evaluated, and resumes unfinished ones, so an
interrupted experiment continues where it stopped. The three outputs are rewritten after every
run (with the runs done so far), so a stopped experiment still leaves the table of its finished runs.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.format import SonostreamError

from .stats import fmt_ci, mean_ci, paired_ci

INITS = ("scratch", "pretrained")
FRACTIONS = (0.05, 0.1, 0.25, 1.0)
EVAL_COLUMNS = ("dice", "dice_all", "iou", "hd95_mm", "hc_mae_mm", "hc_missed", "plane_accuracy",
                "empty_false_positive_rate")
RESULT_COLUMNS = ("init", "mode", "label_fraction", "labelled_patients", "seed",
                  "labelled_frames", "steps", *EVAL_COLUMNS, "encoder")
# (column, title in results.md, digits): the metrics given with confidence intervals
METRICS = (("dice_all", "Dice over all test frames (an empty prediction of a frame without a "
            "head scores 1)", 3),
           ("dice", "Dice (mean over test frames that show a head)", 3),
           ("empty_false_positive_rate", "False heads: share of test frames without a head where "
            "one was predicted", 3),
           ("hd95_mm", "HD95 (mm) on frames that show a head", 2),
           ("hc_mae_mm", "HC mean absolute error (mm)", 2))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ExperimentStopped(Exception):
    """A run was stopped by a signal before its last step (it is checkpointed): the experiment
    stops there, its finished runs in the tables; re-running continues that run."""

    def __init__(self, run: str, signal, step):
        self.run, self.signal, self.step = run, signal, step
        super().__init__(f"stopped by {signal or 'a signal'} in run {run} at step {step} "
                         "(checkpoint saved); rerun the same command to continue")


def run_name(init: str, mode: str, amount, seed: int, patients: bool) -> str:
    return f"{init}-{mode}-{'p' if patients else ''}{amount:g}-s{seed}"


def parse_encoders(text: str | None) -> dict:
    """``name=path,name=path`` (``--encoders``) -> {name: path}."""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, path = (s.strip() for s in item.partition("="))
        if not sep or not name or not path:
            raise SonostreamError(f"--encoders {item.strip()!r}: give NAME=PATH (e.g. "
                                  "mir=runs/mir/encoder.pt), several separated by commas")
        if name in out:
            raise SonostreamError(f"--encoders names {name!r} twice; each name is one arm")
        out[name] = path
    return out


def run_one(data, out: Path, config, overrides, init: str, encoder, mode: str, amount,
            seed: int, patients: bool, split: str, max_steps, quiet: bool) -> dict:
    from pipeline.eval.evaluate import evaluate
    from pipeline.eval.quality import calibrate_finished_run, calibrate_segmenter
    from pipeline.models.segmenter import load_segmenter, read_segmenter_blob
    from pipeline.train.checkpoint import latest_checkpoint
    from pipeline.train.finetuning import load_finetune_config, train

    seg, ev = out / "segmenter.pt", out / "eval" / "metrics.json"
    blob = read_segmenter_blob(seg) if seg.is_file() else {}
    done = blob.get("complete")
    if done and blob.get("quality_calibration") is None:
        # stopped between training and calibration: calibrate now, or this run alone would be
        # scored with the default quality floor
        calibrate_segmenter(seg, data)
    if not done:
        # the amount named here wins over the config's: label_patients unset with fractions
        amount_set = (["data.label_fraction=1.0", f"data.label_patients={amount}"] if patients
                      else [f"data.label_fraction={amount}", "data.label_patients=null"])
        cfg = load_finetune_config(config, [*overrides, *amount_set], mode=mode,
                                   init=str(encoder) if encoder is not None else "none",
                                   max_steps=max_steps, seed=seed)
        summary = train(cfg, str(data), out, resume="latest" if latest_checkpoint(out) else None,
                        quiet=quiet)
        if not summary.get("complete"):
            # SIGTERM / SIGINT (checkpointed): stop the experiment; a half-trained run is no row
            raise ExperimentStopped(out.name, summary.get("signal"), summary.get("step"))
        calibrate_finished_run(summary, data)
    if not (ev.is_file() and ev.stat().st_mtime >= seg.stat().st_mtime):
        evaluate(seg, data, split, out / "eval", overlays=4, quiet=quiet)
    metrics = json.loads(ev.read_text())
    meta = load_segmenter(seg)[1]
    return {"init": init, "mode": mode, "label_fraction": None if patients else amount,
            "labelled_patients": meta.get("labelled_patients"), "seed": seed,
            "steps": meta.get("step"), "labelled_frames": _labelled_frames(out),
            "encoder": "" if encoder is None else str(encoder),
            **{k: metrics.get(k) for k in EVAL_COLUMNS}}


def _labelled_frames(run: Path):
    from pipeline.train.checkpoint import latest_checkpoint
    import yaml
    ckpt = latest_checkpoint(run)
    if ckpt is None or not (ckpt / "run.yaml").is_file():
        return None
    return yaml.safe_load((ckpt / "run.yaml").read_text()).get("loader", {}).get("labelled_frames")


def _arms(encoder, encoders, inits) -> tuple[list, dict]:
    """(inits to run, {name: encoder path}) after the checks."""
    named = dict(encoders or {})
    if encoder is not None:
        if "pretrained" in named:
            raise SonostreamError("--encoder is the arm 'pretrained'; --encoders names it again")
        named = {"pretrained": encoder, **named}
    for name in named:
        if name == "scratch" or not _NAME.match(name):
            raise SonostreamError(f"--encoders name {name!r}: use letters, digits and _ . + - "
                                  "(it names run folders), and not 'scratch' (the no-encoder arm)")
    inits = list(inits) if inits else (["scratch", *named] if named else list(INITS))
    if "pretrained" in inits and "pretrained" not in named:
        raise SonostreamError("--encoder missing: the pretrained arm needs an encoder.pt from "
                              "`sonostream pretrain` (or pass --inits scratch)")
    bad = [i for i in inits if i != "scratch" and i not in named]
    if bad:
        raise SonostreamError(f"unknown init(s) {bad}; use scratch or a name of --encoders "
                              f"({', '.join(named) or 'none given'})")
    for name in inits:
        if name != "scratch" and not Path(named[name]).is_file():
            raise SonostreamError(f"--encoders {name}={named[name]}: no such file (pretraining "
                                  "writes RUN/encoder.pt)")
    return inits, named


def _amounts(fractions, patients) -> tuple[list, bool]:
    if fractions is not None and patients is not None:
        raise SonostreamError("--fractions and --patients both set the label amount; give one")
    if patients is not None:
        bad = [p for p in patients if isinstance(p, bool) or not isinstance(p, int) or p < 1]
        if bad or not patients:
            raise SonostreamError(f"--patients must be whole numbers >= 1, got {list(patients)}")
        return sorted(set(patients)), True
    fractions = list(FRACTIONS if fractions is None else fractions)
    for f in fractions:
        if not 0 < f <= 1:
            raise SonostreamError(f"label fractions must be in (0, 1], got {f}")
    return sorted(set(fractions)), False


def _check_patients(data, split: str, most: int) -> None:
    """Fail before the first run, not at the run that asks for more patients than there are."""
    from pipeline.data.index import IndexView
    from pipeline.data.segloader import select_frames
    from pipeline.data.source import ShardSource
    n = select_frames(IndexView(ShardSource(data).index), split, 1.0, 0, str(data)).total_patients
    if most > n:
        raise SonostreamError(f"--patients {most}: split {split!r} of {data} has only {n} patients "
                              f"with masks; ask for at most {n}")


def label_efficiency(data, out, *, encoder=None, encoders=None, config=None, overrides=(),
                     fractions=None, patients=None, seeds: int = 1,
                     modes=("supervised", "semi", "multitask"), inits=None, split="test",
                     max_steps=None, quiet=True) -> list[dict]:
    """Trains and evaluates every (init, mode, amount, seed); returns the rows of results.csv.
    ``patients`` (numbers of labelled patients) and ``fractions`` are exclusive (neither: the
    fractions 5, 10, 25, 100 %); ``encoders`` {name: encoder.pt} adds one arm each beside
    ``encoder`` (the arm "pretrained")."""
    out = Path(out)
    inits, named = _arms(encoder, encoders, inits)
    amounts, by_patients = _amounts(fractions, patients)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SonostreamError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    from pipeline.train.finetuning import load_finetune_config
    base = load_finetune_config(config, overrides)   # bad config: fail before any run
    if by_patients:
        _check_patients(data, base.data.split, max(amounts))
    seed_list = [base.train.seed + s for s in range(seeds)]
    jobs = [(i, m, a, s) for i in inits for m in modes for a in amounts for s in seed_list]
    results = []
    for n, (init, mode, amount, seed) in enumerate(jobs, 1):
        name = run_name(init, mode, amount, seed, by_patients)
        print(f"[{n}/{len(jobs)}] {name}", flush=True)
        row = run_one(data, out / "runs" / name, config, overrides, init, named.get(init), mode,
                      amount, seed, by_patients, split, max_steps, quiet)
        results.append(row)
        print(f"    dice (all frames) {_fmt(row['dice_all'])}  dice {_fmt(row['dice'])}  "
              f"HC MAE {_fmt(row['hc_mae_mm'], 2)} mm", flush=True)
        # after every run, so an experiment stopped part-way leaves the table of what finished
        write_results(out, results, split)
    return results


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _by_patients(results: list[dict]) -> bool:
    return any(r["label_fraction"] is None for r in results)


def _amount(r: dict, by_patients: bool):
    return r["labelled_patients"] if by_patients else r["label_fraction"]


def _amount_label(a, by_patients: bool) -> str:
    return (f"{a} patient{'s' if a != 1 else ''}" if by_patients else f"{a:.0%} labels")


def arm_stats(results: list[dict], key: str) -> dict:
    """{(init, mode, amount): mean_ci over the seeds} for metric ``key``."""
    by_p = _by_patients(results)
    groups: dict = {}
    for r in results:
        groups.setdefault((r["init"], r["mode"], _amount(r, by_p)), []).append(r[key])
    return {k: mean_ci(v) for k, v in groups.items()}


def paired_stats(results: list[dict], key: str, baseline: str = "scratch",
                 along: str = "init") -> dict:
    """{(init, mode, amount): paired_ci of arm - its baseline arm, matched by seed}. ``along``
    "init": each init - ``baseline`` (default scratch) of the same mode and amount; "mode": each
    mode - ``baseline`` (e.g. supervised) of the same init and amount. Arms without a baseline
    run are left out."""
    by_p = _by_patients(results)
    j = {"init": 0, "mode": 1}[along]
    value = {(r["init"], r["mode"], _amount(r, by_p), r["seed"]): r[key] for r in results}
    out = {}
    for arm in dict.fromkeys(k[:3] for k in value):
        if arm[j] == baseline:
            continue
        ref = (*arm[:j], baseline, *arm[j + 1:])
        mine = {k[3]: v for k, v in value.items() if k[:3] == arm}
        base = {k[3]: v for k, v in value.items() if k[:3] == ref}
        if base:
            out[arm] = paired_ci(mine, base)
    return out


def _header(first: str, amounts, by_p) -> list[str]:
    return [f"| {first} | mode | " + " | ".join(_amount_label(a, by_p) for a in amounts) + " |",
            "|---|---|" + "---:|" * len(amounts)]


def _arm_cell(ci, digits: int, seeds: int) -> str:
    if ci is None:
        return "n/a"
    short = 1 < ci["n"] < seeds     # some seeds gave no value (e.g. no HC): say how many did
    return fmt_ci(ci, digits) + (f" (n = {ci['n']})" if short else "")


def table_markdown(results: list[dict], key: str, digits: int) -> str:
    by_p = _by_patients(results)
    amounts = sorted({_amount(r, by_p) for r in results})
    arms = list(dict.fromkeys((r["init"], r["mode"]) for r in results))
    stats = arm_stats(results, key)
    seeds = len({r["seed"] for r in results})
    lines = _header("encoder", amounts, by_p)
    for init, mode in arms:
        cells = [_arm_cell(stats.get((init, mode, a)), digits, seeds) for a in amounts]
        lines.append(f"| {init} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_cell(ci, digits: int) -> str:
    if ci is None or ci["mean"] is None:
        return "n/a"
    return fmt_ci(ci, digits, signed=True, interval=True) + f" (n = {ci['n']})"


def paired_markdown(results: list[dict], key: str, digits: int,
                    along: str = "init") -> str | None:
    """Encoder - scratch per mode (``along`` "init"), or mode - supervised per encoder ("mode")."""
    by_p = _by_patients(results)
    amounts = sorted({_amount(r, by_p) for r in results})
    base = "scratch" if along == "init" else "supervised"
    stats = paired_stats(results, key, base, along)
    if not stats:
        return None
    lines = _header("encoder − scratch" if along == "init" else "encoder", amounts, by_p)
    for init, mode in dict.fromkeys(k[:2] for k in stats):
        cells = [_paired_cell(stats.get((init, mode, a)), digits) for a in amounts]
        arm = f"{init} − scratch | {mode}" if along == "init" else f"{init} | {mode} − supervised"
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: list[dict], split: str) -> str:
    seeds = sorted({r["seed"] for r in results})
    md = [f"# Label efficiency ({split} split)", "",
          f"{len(results)} runs, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} per arm "
          f"(seeds {', '.join(map(str, seeds))}; a seed fixes the labelled patients and the "
          f"initial weights). Each cell: mean ± half-width of the 95 % t-interval over the seeds, "
          f"mean ± t(0.975, n−1)·sd/√n; with one seed there is no interval.", ""]
    for key, title, digits in METRICS:
        md += [f"{title}:", "", table_markdown(results, key, digits), ""]
    intros = {"init": "Paired differences, each encoder − scratch, matched by seed (same labelled "
                      "patients): mean ± 95 % CI half-width [interval] (n pairs). An interval above "
                      "0 (below 0 for false heads, HD95 and HC error) favours the encoder.",
              "mode": "Paired differences, each mode − supervised of the same encoder, matched by "
                      "seed: mean ± 95 % CI half-width [interval] (n pairs). An interval above 0 "
                      "(below 0 for false heads, HD95 and HC error) favours the mode."}
    for along, intro in intros.items():
        paired = [(title, paired_markdown(results, key, digits, along))
                  for key, title, digits in METRICS]
        if any(p for _, p in paired):
            md += [intro, ""]
            md += [line for title, p in paired if p for line in (f"{title}, difference:", "", p, "")]
    return "\n".join(md)


def write_results(out: Path, results: list[dict], split: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "results.csv", fmt.csv_text(RESULT_COLUMNS, results))
    atomic.write_text(out / "results.md", results_markdown(results, split))
    plot_results(results, out / "label_efficiency.png")


def plot_results(results: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_p = _by_patients(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    arms = list(dict.fromkeys((r["init"], r["mode"]) for r in results))
    panels = (("dice_all", "Dice, all frames (higher is better)"),
              ("hc_mae_mm", "HC MAE, mm (lower is better)"))
    for j, (init, mode) in enumerate(arms):
        shift = 1 + 0.04 * (j - (len(arms) - 1) / 2)   # side by side, so the bars do not hide
        style = "--" if init == "scratch" else "-"
        for ax, (key, _) in zip(axes, panels):
            stats = arm_stats([r for r in results if (r["init"], r["mode"]) == (init, mode)], key)
            pts = sorted((a, s) for (_, _, a), s in stats.items() if s["mean"] is not None)
            xs = [a * (1 if by_p else 100) * shift for a, _ in pts]
            ax.errorbar(xs, [s["mean"] for _, s in pts], yerr=[s["half"] or 0 for _, s in pts],
                        fmt=style, marker="o", capsize=3, label=f"{init} {mode}")
    seeds = len({r["seed"] for r in results})
    ticks = sorted({_amount(r, by_p) * (1 if by_p else 100) for r in results})
    for ax, (key, title) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled patients" if by_p else "labelled patients, %")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if not any(r[key] is not None for r in results):
            ax.text(0.5, 0.5, "no values (no head found, or no pixel size)", ha="center",
                    transform=ax.transAxes, fontsize=9)
    axes[0].set_ylim(-0.02, 1.02)   # a Dice interval wider than [0, 1] is cut at the frame
    if any(r["hc_mae_mm"] is not None for r in results):
        axes[1].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mean ± 95 % CI over {seeds} seed{'s' if seeds != 1 else ''}"
                 + (" (one seed: no error bars)" if seeds == 1 else ""), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path
