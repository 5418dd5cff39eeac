"""Checks of a loaded ``encoder.pt`` / ``segmenter.pt`` dict: the keys its readers use, and what
a file that is not one of ours looks like, so the error names the file, the missing keys and
what it seems to be instead of a ``KeyError`` deep in a loader."""
from __future__ import annotations

import torch

from preprocessing.format import SonostreamError

ENCODER_KEYS = ("arch", "in_chans", "state_dict")
SEGMENTER_KEYS = ("arch", "in_chans", "decoder_channels", "image_size", "planes", "state_dict")
REWRITE = {"encoder": "pretraining writes RUN/encoder.pt at the end of every invocation: rerun "
                      "its command with --resume latest to write it again",
           "segmenter": "finetune writes RUN/segmenter.pt at the end of every invocation: rerun "
                        "its command with --resume latest to write it again"}


def describe(blob) -> str:
    """What a loaded file looks like, in words (for errors about files that are not ours)."""
    if not isinstance(blob, dict):
        return f"a {type(blob).__name__}, not a dict"
    if "format" in blob:
        return f"a file of format {blob['format']!r}"
    keys = [str(k) for k in blob]
    if keys and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return (f"a bare state dict of {len(keys)} tensors ({', '.join(keys[:3])}, ...): weights "
                "without the metadata (format, arch, ...) sonostream writes beside them")
    kind = ""
    if {"model", "optimizer"} & set(keys) or "optimizer_state_dict" in keys:
        kind = " (a training checkpoint of another program?)"
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return f"a dict with keys {shown or '(none)'}{kind}, and no sonostream format key"


def require(blob: dict, keys, path, kind: str) -> None:
    """SonostreamError naming ``path`` and the missing ``keys`` of a ``kind`` file ("encoder" |
    "segmenter") whose format key is ours."""
    missing = [k for k in keys if k not in blob]
    if not missing and not isinstance(blob["state_dict"], dict):
        missing = ["state_dict (a dict of tensors)"]
    if missing:
        raise SonostreamError(
            f"{path} says it is a sonostream {kind} (format {blob.get('format')!r}) but lacks "
            f"{', '.join(missing)} (it holds {', '.join(map(str, blob)) or 'nothing'}): it was "
            f"edited or written by something else; pass a complete {kind}.pt ({REWRITE[kind]})")


def load_weights(module, state_dict: dict, path, what: str) -> None:
    """``module.load_state_dict(strict=True)``, or a SonostreamError naming ``path``."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:   # missing / unexpected keys, size mismatches
        lines = str(e).splitlines()
        detail = " ".join(x.strip() for x in lines[1:3]) or lines[0] if lines else type(e).__name__
        raise SonostreamError(f"{path}: its state_dict does not fit the {what} its metadata "
                              f"describes ({detail[:300]}): the file was edited or mixed up; "
                              f"pass the file the run wrote") from None
