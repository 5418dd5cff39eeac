"""``sonostream experiment label-efficiency``: scratch vs pretrained x supervised / semi /
multitask at several label fractions, each trained then evaluated; a table and a plot.

E/runs/{init}-{mode}-{fraction}/   one fine-tuning run each (segmenter.pt, metrics.jsonl, eval/)
E/results.csv                     one row per run (long format)
E/results.md                      Dice and HC error tables (rows: init x mode; columns: fraction)
E/label_efficiency.png            Dice and HC error against the label fraction

A re-run skips runs that finished and were evaluated, and resumes unfinished ones, so an
interrupted experiment continues where it stopped.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.format import SonostreamError

INITS = ("scratch", "pretrained")
RESULT_COLUMNS = ("init", "mode", "label_fraction", "labelled_patients", "labelled_frames", "steps",
                  "dice", "iou", "hd95_mm", "hc_mae_mm", "hc_missed", "plane_accuracy",
                  "empty_false_positive_rate")


def run_name(init: str, mode: str, fraction: float) -> str:
    return f"{init}-{mode}-{fraction:g}"


def run_one(data, out: Path, config, overrides, init: str, encoder, mode: str, fraction: float,
            split: str, max_steps, quiet: bool) -> dict:
    from pipeline.eval.evaluate import evaluate
    from pipeline.eval.quality import calibrate_finished_run
    from pipeline.models.segmenter import load_segmenter
    from pipeline.train.checkpoint import latest_checkpoint
    from pipeline.train.finetuning import load_finetune_config, train

    seg, ev = out / "segmenter.pt", out / "eval" / "metrics.json"
    done = seg.is_file() and load_segmenter(seg)[1].get("complete")
    if not done:
        cfg = load_finetune_config(config, overrides, mode=mode,
                                   init=str(encoder) if init == "pretrained" else "none",
                                   label_fraction=fraction, max_steps=max_steps)
        summary = train(cfg, str(data), out, resume="latest" if latest_checkpoint(out) else None,
                        quiet=quiet)
        calibrate_finished_run(summary, data)
    if not (ev.is_file() and ev.stat().st_mtime >= seg.stat().st_mtime):
        evaluate(seg, data, split, out / "eval", overlays=4, quiet=quiet)
    metrics = json.loads(ev.read_text())
    meta = load_segmenter(seg)[1]
    return {"init": init, "mode": mode, "label_fraction": fraction,
            "labelled_patients": meta.get("labelled_patients"), "steps": meta.get("step"),
            "labelled_frames": _labelled_frames(out),
            **{k: metrics.get(k) for k in RESULT_COLUMNS[6:]}}


def _labelled_frames(run: Path):
    from pipeline.train.checkpoint import latest_checkpoint
    import yaml
    ckpt = latest_checkpoint(run)
    if ckpt is None or not (ckpt / "run.yaml").is_file():
        return None
    return yaml.safe_load((ckpt / "run.yaml").read_text()).get("loader", {}).get("labelled_frames")


def label_efficiency(data, out, *, encoder=None, config=None, overrides=(), fractions=(0.05, 0.1, 0.25, 1.0),
                     modes=("supervised", "semi", "multitask"), inits=INITS, split="test",
                     max_steps=None, quiet=True) -> list[dict]:
    out = Path(out)
    if "pretrained" in inits:
        if encoder is None or not Path(encoder).is_file():
            raise SonostreamError(f"--encoder {encoder}: the pretrained arm needs an encoder.pt "
                                  f"from `sonostream pretrain` (or pass --inits scratch)")
    for f in fractions:
        if not 0 < f <= 1:
            raise SonostreamError(f"label fractions must be in (0, 1], got {f}")
    bad = set(inits) - set(INITS)
    if bad:
        raise SonostreamError(f"unknown init(s) {sorted(bad)}; use {', '.join(INITS)}")
    jobs = [(i, m, f) for i in inits for m in modes for f in fractions]
    results = []
    for n, (init, mode, frac) in enumerate(jobs, 1):
        name = run_name(init, mode, frac)
        print(f"[{n}/{len(jobs)}] {name}", flush=True)
        row = run_one(data, out / "runs" / name, config, overrides, init, encoder, mode, frac,
                      split, max_steps, quiet)
        results.append(row)
        print(f"    dice {_fmt(row['dice'])}  HC MAE {_fmt(row['hc_mae_mm'], 2)} mm", flush=True)
    write_results(out, results, split)
    return results


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table_markdown(results: list[dict], key: str, digits: int) -> str:
    fractions = sorted({r["label_fraction"] for r in results})
    arms = list(dict.fromkeys((r["init"], r["mode"]) for r in results))
    cell = {(r["init"], r["mode"], r["label_fraction"]): r[key] for r in results}
    lines = ["| encoder | mode | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |",
             "|---|---|" + "---:|" * len(fractions)]
    for init, mode in arms:
        lines.append(f"| {init} | {mode} | " + " | ".join(
            _fmt(cell.get((init, mode, f)), digits) for f in fractions) + " |")
    return "\n".join(lines)


def write_results(out: Path, results: list[dict], split: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "results.csv", fmt.csv_text(RESULT_COLUMNS, results))
    md = (f"# Label efficiency ({split} split)\n\nDice (mean over {split} frames that show a head):\n\n"
          + table_markdown(results, "dice", 3)
          + "\n\nHC mean absolute error (mm):\n\n" + table_markdown(results, "hc_mae_mm", 2) + "\n")
    atomic.write_text(out / "results.md", md)
    plot_results(results, out / "label_efficiency.png")


def plot_results(results: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    arms = list(dict.fromkeys((r["init"], r["mode"]) for r in results))
    for init, mode in arms:
        rs = sorted((r for r in results if (r["init"], r["mode"]) == (init, mode)),
                    key=lambda r: r["label_fraction"])
        style = "-" if init == "pretrained" else "--"
        for ax, key in zip(axes, ("dice", "hc_mae_mm")):
            xs = [r["label_fraction"] * 100 for r in rs if r[key] is not None]
            ys = [r[key] for r in rs if r[key] is not None]
            ax.plot(xs, ys, style, marker="o", label=f"{init} {mode}")
    for ax, title in zip(axes, ("Dice (higher is better)", "HC MAE, mm (lower is better)")):
        ax.set_xscale("log")
        ax.set_xlabel("labelled patients, %")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path
