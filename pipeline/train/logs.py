"""Metrics and figures of a run: ``metrics.jsonl``, loss curves, reconstruction panels."""
from __future__ import annotations

import json
from pathlib import Path

from preprocessing.atomic import atomic_open


class MetricsLog:
    """Appends one JSON object per logged step to RUN/metrics.jsonl (main process only).

    On resume from step S, lines for steps after S (logged by the run that died after its last
    checkpoint) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [ln for ln in read_metrics(self.path) if ln.get("step", 0) <= resume_step]
            with atomic_open(self.path, "w") as f:
                for row in kept:
                    f.write(json.dumps(row) + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:   # a line cut by a crash: the rest is still good
                continue
    return rows


CURVES = (("loss", "total"), ("loss_mir", "MIR"), ("loss_pm", "PM"), ("loss_io", "IO"),
          ("val_mir_sector_mse", "MIR error in the sector, val"))
SCORES = (("acc_pm", "PM accuracy"), ("acc_io", "IO accuracy"),
          ("val_pm_acc_cross_video", "PM accuracy, val cross-video pairs"),
          ("val_io_acc", "IO accuracy, val"))


def _series(rows: list[dict], key: str):
    """(steps, values) of the rows that hold ``key`` (the val_* keys are on some rows only)."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_curves(metrics_path, out_png, io_chance: float | None = None, curves=None,
                scores=SCORES) -> Path | None:
    """Losses (left) and scores in 0..1 (right) against the step; None when nothing was logged.
    ``curves`` / ``scores``: (metrics key, legend label) pairs (default: pretraining's); a
    ``val_*`` key (held-out, every train.eval_every steps) is drawn dashed with markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    if not rows:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in curves or CURVES:
        xs, ys = _series(rows, key)
        if xs:
            a.plot(xs, ys, label=label, **_style(key))
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("losses")
    a.legend()
    for key, label in scores:
        xs, ys = _series(rows, key)
        if xs:
            b.plot(xs, ys, label=label, **_style(key))
    if io_chance:
        b.axhline(io_chance, color="gray", ls=":", lw=1, label="IO chance")
    b.set_ylim(0, 1)
    b.set_xlabel("step")
    b.set_title("scores")
    b.legend()
    fig.tight_layout()
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(out_png)


def _style(key: str) -> dict:
    return {"ls": "--", "marker": "o", "ms": 3} if key.startswith("val_") else {}


def plot_reconstruction(masked, recon, target, out_png, title: str = "") -> Path:
    """Rows of (masked input | prediction in the hidden patches | target); arrays (N, H, W) in -1..1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(masked)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (img, name) in enumerate(((masked, "masked input"), (recon, "hidden patches predicted"),
                                         (target, "target"))):
            ax = axes[i, j]
            ax.imshow(img[i], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)
