"""Constants and builders of the segmentation tests (imported by name: sub-folder conftest
modules all share the name ``conftest``)."""
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = ROOT / "launch" / "configs" / "debug" / "finetune.yaml"
# The debug config at 32x32 with every step logged and checkpointed every 3 steps.
FAST = ["data.image_size=32", "train.batch_size=8", "train.log_every=1",
        "train.checkpoint_every=3", "train.trackers=[]", "semi.rampup_steps=2", "data.prefetch=0"]


def rewrite_csv(src: Path, dst: Path, drop=(), blank=()) -> Path:
    """A copy of a frames CSV without some columns, or with some columns emptied."""
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c not in drop]
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{b: "" for b in blank}})
    return dst
