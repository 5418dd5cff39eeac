"""The demo's ``report.md``: what each stage made, its figures and its numbers, in one page.

Figures are linked by paths relative to the report, so the folder can be moved or zipped whole.
Numbers come from the stages' own outputs (metrics.json, results.md, summary.json) and what a run
trained with from its saved config.yaml (arch, frame size, steps, label fraction), never typed in.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from preprocessing import atomic

MODES = ("supervised", "semi", "multitask")


def _f(v, digits: int = 3, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def _img(out: Path, rel: str, alt: str) -> str:
    return f"![{alt}]({rel})" if (out / rel).is_file() else f"*({rel} was not made)*"


def _last_recon(out: Path) -> str | None:
    figs = sorted((out / "pretrain" / "figures").glob("recon-step-*.png"))
    return str(figs[-1].relative_to(out)) if figs else None


def _data(out: Path, results: dict) -> list[str]:
    r = results.get("build", {}).get("result", {})
    lines = ["## 1. Data: synthetic cohort -> shards", ""]
    if r:
        lines += [f"{r['frames']} frames in {r['shards']} shard(s), {r['rejects']} rejected; "
                  "`verify` found no problem.", "",
                  "| split | patients | videos | frames |", "|---|---:|---:|---:|"]
        order = {k: i for i, k in enumerate(("train", "val", "test"))}
        lines += [f"| {k} | {v['patients']} | {v['videos']} | {v['frames']} |"
                  for k, v in sorted(r["splits"].items(), key=lambda kv: order.get(kv[0], 9))]
    lines += ["", _img(out, "synth_preview.png", "a synthetic head sweep and the other planes"), "",
              "Contact sheet of the built shards (`sonostream inspect --contact-sheet`):", "",
              _img(out, "contact_sheet.png", "contact sheet"), ""]
    return lines


def _run_config(out: Path, run: str) -> dict:
    """The resolved config a training stage saved (RUN/config.yaml); {} if it has none."""
    path = out / run / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _frame_size(out: Path, configured) -> str:
    """The frame size a run trained at: its config's, else the shards' (manifest image_size)."""
    if configured:
        return f"{configured}x{configured}"
    manifest = out / "shards" / "manifest.json"
    size = json.loads(manifest.read_text()).get("image_size") if manifest.is_file() else None
    return f"{size}x{size}" if size else "stored size"


def _pretrain(out: Path, results: dict) -> list[str]:
    r = results.get("pretrain", {}).get("result", {})
    last = r.get("last") or {}
    cfg = _run_config(out, "pretrain")
    arch = cfg.get("model", {}).get("arch", "n/a")
    size = _frame_size(out, cfg.get("loader", {}).get("image_size"))
    tasks = [t.upper() for t in ("mir", "pm", "io") if cfg.get("tasks", {}).get(t, 0) > 0]
    lines = ["## 2. Self-supervised pretraining", "",
             f"{r.get('step', 'n/a')} steps of {' + '.join(tasks) or 'n/a'} (masked image "
             f"reconstruction, patient matching, image ordering): a `{arch}` encoder on {size} "
             f"frames, {cfg.get('train', {}).get('batch_size', 'n/a')} clips of "
             f"{cfg.get('loader', {}).get('clip_len', 'n/a')} frames per step."]
    shown = {k: v for k, v in last.items() if k.startswith("loss") and isinstance(v, (int, float))}
    if shown:
        lines += ["Last logged losses: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())) + "."]
    lines += _heldout(r, last, cfg)
    lines += ["", _img(out, "pretrain/curves.png", "pretraining curves"), ""]
    recon = _last_recon(out)
    if recon:
        lines += ["Masked reconstructions (masked input, reconstruction, target):", "",
                  _img(out, recon, "reconstructions"), ""]
    return lines + _probe(results.get("probe", {}).get("result"))


def _heldout(r: dict, last: dict, cfg: dict) -> list[str]:
    """The held-out pretext metrics at the end of pretraining (``val_*``: val patients)."""
    v = r.get("validation") or {k: x for k, x in last.items() if k.startswith("val_")}
    if not any(k.startswith("val_") for k in v):
        return []
    from pipeline.data.tasks import io_classes
    loader = cfg.get("loader", {})
    try:
        classes = len(io_classes(loader.get("clip_len", 4), loader.get("io_reverse", "same")))
    except ValueError:   # a clip length IO cannot use: no chance level to show
        classes = None
    shown = [(key, label) for key, label in (
        ("val_io_acc", f"IO accuracy {_f(v.get('val_io_acc'))}"
                       + (f" (chance {1 / classes:.3f})" if classes else "")),
        ("val_pm_acc_cross_video", f"PM accuracy on cross-video pairs "
                                   f"{_f(v.get('val_pm_acc_cross_video'))} (chance 0.5)"),
        ("val_mir_sector_mse", f"MIR error in the sector {_f(v.get('val_mir_sector_mse'))}"))
        if key in v]
    return [f"Held-out pretext metrics (val patients, "
            f"{cfg.get('train', {}).get('eval_clips', 'n/a')} clips, step {v.get('step', 'n/a')}): "
            + ", ".join(label for _, label in shown) + "."]


def _probe(r: dict | None) -> list[str]:
    """The linear-probe table (``sonostream probe``): the encoder beside a random init."""
    from pipeline.eval.probe import probe_table
    if not r:
        return []
    c = r["counts"]
    return ["### What the frozen encoder knows: linear probes (`sonostream probe`)", "",
            f"Features of the {r['split']} split's {c['frames']} frames at {r['image_size']}px "
            f"(global average of layer4); probes fitted on the {c['train_frames']} train frames; "
            f"retrieval: {c['retrieval_queries']} frames of {c['retrieval_patients']} patients "
            "with 2 or more videos. The random-init encoder has the same arch and seed.", "",
            probe_table(r), ""]


def _finetune(out: Path, results: dict) -> list[str]:
    ev = results.get("evaluate", {}).get("result", {})
    cfg = _run_config(out, "finetune/multitask")
    arch = cfg.get("model", {}).get("arch", "n/a")
    fraction = cfg.get("data", {}).get("label_fraction")
    size = _frame_size(out, cfg.get("data", {}).get("image_size"))
    lines = ["## 3. Fetal head segmentation: three modes", "",
             f"A `{arch}` UNet on {size} frames with the pretrained encoder, "
             f"{_f(fraction * 100 if fraction else None, 0)} % of the training patients labelled, "
             f"{cfg.get('train', {}).get('steps', 'n/a')} steps each; scored on the test split "
             "(`sonostream evaluate`).", "",
             "| mode | Dice | IoU | HD95 (mm) | HC MAE (mm) | HC missed | uncertain | "
             "plane accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in MODES:
        m = ev.get(mode)
        if m:
            lines.append(f"| {mode} | {_f(m.get('dice'))} | {_f(m.get('iou'))} | "
                         f"{_f(m.get('hd95_mm'), 2)} | {_f(m.get('hc_mae_mm'), 2)} | "
                         f"{m.get('hc_missed')} | {m.get('uncertain_frames', 'n/a')} | "
                         f"{_f(m.get('plane_accuracy'))} |")
    lines += ["", "*Uncertain*: frames whose measured region has a quality below the model's floor "
              "(no ellipse, no HC; they count in HC missed when the frame has a reference HC). "
              "Each floor was calibrated on the val split when the run finished:", ""]
    lines += _floors(ev)
    lines += ["", "Training curves (multitask):", "",
              _img(out, "finetune/multitask/curves.png", "fine-tuning curves"), "",
              "Worst test frames by Dice (truth green, prediction red, fitted ellipse yellow):", "",
              _img(out, "evaluate/multitask/overlays/worst.png", "worst overlays"), ""]
    return lines


def _floors(ev: dict) -> list[str]:
    lines = ["| mode | quality floor | chosen by | val head regions kept | val false regions rejected |",
             "|---|---:|---|---:|---:|"]
    for mode in MODES:
        cal = (ev.get(mode) or {}).get("quality_calibration") or {}
        if not cal:
            continue
        kept = (f"{_f(cal['heads_kept_pct'], 1)} % of {cal['head_regions']}"
                if cal.get("heads_kept_pct") is not None else "n/a")
        rejected = (f"{_f(cal['false_rejected_pct'], 1)} % of {cal['false_regions']}"
                    if cal.get("false_rejected_pct") is not None else "n/a")
        source = cal.get("source", "n/a") + (f" ({cal['reason']})" if cal.get("reason") else "")
        lines.append(f"| {mode} | {_f(cal.get('min_quality'))} | {source} | {kept} | {rejected} |")
    return lines


def _label_efficiency(out: Path, settings=None) -> list[str]:
    md = out / "label_efficiency" / "results.md"
    lines = ["## 4. Label efficiency (small)", ""]
    if md.is_file():
        if settings is not None:
            lines += [f"`sonostream experiment label-efficiency --patients "
                      f"{','.join(map(str, settings.le_patients))} --seeds {settings.le_seeds} "
                      f"--modes {','.join(settings.le_modes)}`: scratch vs the pretrained encoder, "
                      f"{settings.le_steps} steps per run: it shows what the experiment writes; "
                      "so few seeds and steps are no evidence of a gain either way.", ""]
        body = md.read_text().split("\n", 1)[1].strip()   # without its own title
        lines += [body, "", _img(out, "label_efficiency/label_efficiency.png", "label efficiency"), ""]
    else:
        lines += ["*(not run)*", ""]
    return lines


def _video(out: Path, name: str, title: str, r: dict, note: str) -> list[str]:
    lines = [f"### {title}", ""]
    if not r or "skipped" in r:
        return lines + [f"*Skipped: {r.get('skipped') if r else 'not run'}*", ""]
    found = r.get("best_frame") is not None
    hc = (f"HC there {_f(r.get('best_hc_mm'), 1)} mm" if r.get("best_hc_mm") is not None
          else "no HC (no pixel size)")
    best = f"best frame {r['best_frame']}, {hc}" if found else "so no best frame and no HC"
    unsure = r.get("uncertain_frames") or 0
    uncertain = (f", {unsure} uncertain (a region of quality below the model's floor "
                 f"{_f(r.get('min_quality'), 2)}: no HC)" if unsure else "")
    lines += [f"`{Path(r['source']).name}`: {r['frames']} frames, a head in {r['head_frames']} of "
              f"them{uncertain}; {best}. Segmented at {_f(r.get('frames_per_s'), 0)} frames/s.", ""]
    unit = r.get("hc_unit", "mm")
    if r.get(f"jitter_raw_{unit}") is not None:
        lines += [f"Frame-to-frame jitter of HC (mean absolute second difference): "
                  f"{_f(r[f'jitter_raw_{unit}'], 2)} {unit} per-frame fits -> "
                  f"{_f(r[f'jitter_smoothed_{unit}'], 2)} {unit} smoothed.", ""]
    if r.get("standard_frame") is not None:
        lines += [f"Labelled standard plane: frame {r['standard_frame']} (best frame is "
                  f"{r.get('best_frame_offset', 'n/a')} frames off); reference HC at the best frame "
                  f"{_f(r.get('hc_true_at_best_mm'), 1)} mm, error "
                  f"{_f(r.get('hc_abs_err_at_best_mm'), 1)} mm.", ""]
    if note:
        lines += [note, ""]
    base = f"video/{name}"
    if found:
        lines += ["| best frame | HC over time |", "|---|---|",
                  f"| {_img(out, base + '/best_overlay.png', 'best frame')} | "
                  f"{_img(out, base + '/hc_over_time.png', 'HC over time')} |", ""]
    elif unsure:   # why nothing was measured: each frame's quality against the floor
        lines += ["Quality per frame (orange) against the model's floor (dotted):", "",
                  _img(out, base + "/hc_over_time.png", "quality over time"), ""]
    lines += [_img(out, base + "/frames.png", "frames through the loop"), "",
              f"Every frame with its outline: [{base}/overlay.mp4]({base}/overlay.mp4); per frame: "
              f"[{base}/per_frame.csv]({base}/per_frame.csv).", ""]
    return lines


def _machine() -> str:
    import os

    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{gpu} + {cores} CPU cores" if gpu else f"the CPU ({cores} cores, no GPU)"


def write_report(out: Path, settings, results: dict, size: str) -> Path:
    out = Path(out)
    res = lambda name: results.get(name, {}).get("result")  # noqa: E731
    lines = ["# sonostream demo report", "",
             f"Setting `--size {size}`: {settings.patients} synthetic patients x "
             f"{settings.videos_per_patient} sweeps x {settings.frames_per_video} frames at "
             f"{settings.size}px, on {_machine()}. Every number below was produced by this "
             "run; re-running `sonostream demo` skips finished stages.", ""]
    lines += _data(out, results) + _pretrain(out, results) + _finetune(out, results)
    lines += _label_efficiency(out, settings)
    lines += ["## 5. Cine loops: `sonostream segment-video`", "",
              "Every frame segmented, the head's ellipse smoothed over time, the best frame picked "
              "(peak of the head's section area among good-quality frames).", ""]
    lines += _video(out, "sweep", "A synthetic head sweep (a fetus the models never saw)",
                    res("video_sweep"), "")
    lines += _video(out, "dicom", "A real scanner file: 2-frame obstetric DICOM from pydicom-data",
                    res("video_dicom"),
                    "The models here trained on synthetic frames only: on a real scan this shows "
                    "the path from a scanner file to per-frame measurements (decoding, sector crop, "
                    "pixel size from the DICOM header), not a clinically meaningful HC.")
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {r.get('seconds', 0):.1f} |" for name, r in results.items()]
    total = sum(r.get("seconds", 0) for r in results.values())
    lines += [f"| **total (stages run so far, summed)** | **{total:.1f}** |", ""]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path

