"""Constants of the pretraining tests (a plain module with a unique name: sub-folder conftest
modules share the name ``conftest``, so tests import from here, not from there)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = ROOT / "launch" / "configs" / "debug" / "pretrain.yaml"
# The debug config made smaller still: 32x32 frames, 8 clips per step, every step logged.
FAST = ["loader.image_size=32", "train.batch_size=8", "train.log_every=1", "train.figure_every=4",
        "train.checkpoint_every=4", "train.trackers=[]"]
