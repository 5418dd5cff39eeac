"""What a run (or an evaluation) was made from: ``RUN/provenance.json`` and dataset references.

Nothing here may fail a run: a missing git, a folder that is not a repository, an uninstalled
package or an unreadable manifest give ``null``, never an error. Package versions come from
``importlib.metadata`` (nothing heavy is imported for them).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pipeline.data import is_url
from preprocessing import atomic
from preprocessing import format as fmt

PACKAGES = ("sonostream", "torch", "torchvision", "accelerate", "webdataset", "numpy",
            "segmentation-models-pytorch", "deepspeed", "tensorboard", "wandb", "mlflow")
CODE_ROOT = Path(__file__).resolve().parents[2]   # the folder holding pipeline/ and preprocessing/


def absolute(path) -> str | None:
    """A local path made absolute (symlinks kept); URLs and None unchanged."""
    if path is None or is_url(str(path)):
        return None if path is None else str(path)
    return os.path.abspath(os.path.expanduser(str(path)))


def manifest_sha256(data: str) -> str | None:
    """sha256 of the dataset's manifest.json bytes (read from the URL for remote data)."""
    try:
        if is_url(data):
            from pipeline.data.source import open_url
            with open_url(data.rstrip("/") + "/" + fmt.MANIFEST_FILE) as f:
                blob = f.read()
        else:
            blob = (Path(data) / fmt.MANIFEST_FILE).read_bytes()
    except Exception:   # noqa: BLE001 - provenance never fails the run
        return None
    return hashlib.sha256(blob).hexdigest()


def dataset_ref(data: str) -> dict:
    """``{"data": absolute path or URL, "manifest_sha256": ...}``: which dataset, exactly."""
    return {"data": absolute(data), "manifest_sha256": manifest_sha256(str(data))}


def package_versions() -> dict:
    """python and the installed versions of the packages a run depends on (None: not installed);
    DALI under whichever CUDA flavour is installed."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-dali"):
            out[name] = dist.version
    return out


def git_state(root: Path = CODE_ROOT) -> dict:
    """The code's commit and whether tracked files differ from it; None for each when git is
    absent or ``root`` is not the top of a work tree (an installed copy inside another repo)."""
    none = {"commit": None, "dirty": None}
    if shutil.which("git") is None:
        return none

    def git(*args):
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                           timeout=20, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != root.resolve():
            return none
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": None if status is None else bool(status)}
    except (OSError, subprocess.SubprocessError):
        return none


def device_names(acc) -> list[str]:
    """The CUDA devices this (main) process sees, by name, or ["cpu"]."""
    import torch
    if acc.device.type == "cuda" and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [acc.device.type]


def provenance(acc, tc, *, data: str, out, resume_from=None, argv=None) -> dict:
    """What ``RUN/provenance.json`` holds for this invocation."""
    return {
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        **dataset_ref(data),
        "out": absolute(out),
        "resumed_from": absolute(resume_from),
        "git": git_state(),
        "packages": package_versions(),
        "world_size": acc.num_processes,
        "distributed": str(acc.distributed_type).split(".")[-1],
        "precision": tc.precision,
        "mixed_precision": acc.mixed_precision,
        "devices": device_names(acc),
        "host": platform.node(),
    }


def write_provenance(path: Path, info: dict, resumed: bool) -> None:
    """Atomically write ``info``; on a resume the earlier invocations' records are kept in
    ``earlier`` (oldest first), so the file tells the whole run's history."""
    earlier = []
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
            earlier = [*old.pop("earlier", []), old] if isinstance(old, dict) else []
        except ValueError:
            earlier = []
    atomic.write_json(path, {**info, "earlier": earlier})
