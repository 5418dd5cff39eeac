"""``sonostream export``: ``encoder.pt`` / ``segmenter.pt`` -> safetensors or ONNX + a JSON config.

The exported network is the *plain* one the state dict belongs to (a torchvision-named ResNet, or
an ``smp.Unet``), so its input is the normalised image of the recipe in the config
(``preprocessing``: pixels / 255, then (x - 0.5) / 0.5), not sonostream's 0..1 frames. The JSON
beside ``F`` (``F`` with the suffix ``.json``) holds everything the checkpoint says besides the
weights (arch, block/layers, smp arguments, preprocessing, outputs, step, ...); the safetensors
header carries the same JSON under ``sonostream``.

ONNX goes through torch's TorchScript exporter (``dynamo=False``: the dynamo exporter needs
onnxscript) with dynamic batch, height and width, and is checked in onnxruntime against torch on a
seeded random batch before it is written: a difference above the tolerance is an error (exit 1)
and writes nothing. Importing this module does not import torch (the CLI parser reads FORMATS).
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

from preprocessing import atomic
from preprocessing.format import SonostreamError

FORMATS = ("safetensors", "onnx")
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17
VERIFY_BATCH = 3          # the export traces a batch of 2: verifying at 3 checks the dynamic axis
DEFAULT_SIZE = (224, 224)  # verification size for an encoder.pt that does not record its own


class ExportError(RuntimeError):
    """The exported model disagrees with torch: not bad input, so the CLI exits 1."""
    exit_status = 1


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a run folder holding exactly one of segmenter.pt / encoder.pt."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("segmenter.pt", "encoder.pt") if (path / n).is_file()]
        if len(found) != 1:
            what = "both segmenter.pt and encoder.pt" if found else "no segmenter.pt or encoder.pt"
            raise SonostreamError(f"--checkpoint {path} is a folder with {what}; pass the file "
                                  "to export (RUN/segmenter.pt or RUN/encoder.pt)")
        return found[0]
    if not path.is_file():
        raise SonostreamError(f"--checkpoint {path} does not exist; pass an encoder.pt or "
                              "segmenter.pt (or the run folder holding one)")
    return path


def read_checkpoint(path: Path) -> tuple[str, dict]:
    """("encoder" | "segmenter", the loaded dict), or SonostreamError if not one of ours."""
    import torch

    from pipeline.models.encoder import FORMAT as ENCODER
    from pipeline.models.files import ENCODER_KEYS, SEGMENTER_KEYS, describe, require
    from pipeline.models.segmenter import FORMAT as SEGMENTER
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        blob = e
    kinds = {ENCODER: "encoder", SEGMENTER: "segmenter"}
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt not in kinds:
        what = (describe(blob) if not isinstance(blob, Exception)
                else f"not loadable as a torch file: {type(blob).__name__}")
        raise SonostreamError(f"--checkpoint {path} is not a sonostream checkpoint (it is {what}); "
                              "pass the encoder.pt a pretraining run wrote or the segmenter.pt of "
                              "a finetune run")
    kind = kinds[fmt]
    require(blob, ENCODER_KEYS if kind == "encoder" else SEGMENTER_KEYS, f"--checkpoint {path}",
            kind)
    return kind, blob


def build_plain(kind: str, blob: dict, path="--checkpoint"):
    """(the plain network holding the weights, eval mode, config dict, output names)."""
    from torch import nn

    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    if kind == "encoder":
        from pipeline.models.encoder import ResNetEncoder, encoder_meta
        from pipeline.models.files import load_weights
        net = ResNetEncoder(blob["arch"], blob["in_chans"])
        load_weights(net, blob["state_dict"], path, f"{blob['arch']} encoder")
        return net.eval(), {**encoder_meta(blob["arch"], blob["in_chans"]), **meta}, ["features"]

    from pipeline.models.segmenter import segmenter_from_blob
    model, meta = segmenter_from_blob(blob, path)

    class Plain(nn.Module):   # the smp.Unet forward, on normalised input
        def __init__(self, seg):
            super().__init__()
            self.seg = seg

        def forward(self, x):
            mask, planes = self.seg.forward_normalized(x)
            return mask if planes is None else (mask, planes)

    names = ["mask_logits"] + (["plane_logits"] if meta["planes"] else [])
    return Plain(model).eval(), meta, names


def export_checkpoint(checkpoint, fmt: str, out, tolerance: float = ONNX_TOLERANCE,
                      seed: int = 0) -> dict:
    """Write ``out`` (weights) and ``out`` with suffix .json (config); returns a summary."""
    if fmt not in FORMATS:
        raise SonostreamError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}; pass "
                              "--format safetensors or --format onnx")
    out = Path(out)
    config_path = out.with_suffix(".json")
    if out.suffix == ".json" or out.is_dir():
        raise SonostreamError(f"--out {out} must be a file name such as model.{fmt} (the config "
                              f"goes beside it as model.json)")
    if not tolerance >= 0:
        raise SonostreamError(f"--tolerance must be >= 0, got {tolerance}")
    path = resolve_checkpoint(checkpoint)
    if fmt == "onnx":
        _need_onnx(path, out)
    kind, blob = read_checkpoint(path)
    net, meta, names = build_plain(kind, blob, f"--checkpoint {path}")
    config = {"exported_by": "sonostream export", "kind": kind, "source": str(path.resolve()),
              "source_format": meta.pop("format"), "weights": out.name, "weights_format": fmt,
              **meta}
    summary = {"kind": kind, "checkpoint": str(path), "weights": str(out),
               "config": str(config_path)}
    if fmt == "safetensors":
        from safetensors.torch import save
        tensors = {k: v.contiguous() for k, v in blob["state_dict"].items()}
        data = save(tensors, metadata={"format": "pt", "sonostream": json.dumps(config)})
        summary["tensors"] = len(tensors)
    else:
        size = tuple(meta["preprocessing"].get("image_size") or DEFAULT_SIZE)
        data, diff = _onnx(net, names, meta["preprocessing"], size, tolerance, seed, path)
        config["onnx"] = {"opset": ONNX_OPSET, "input": "image", "outputs": names,
                          "dynamic_axes": "batch, height and width (multiples of 32)",
                          "verified": {"batch": VERIFY_BATCH, "image_size": list(size),
                                       "max_abs_diff": diff, "tolerance": tolerance}}
        summary.update(max_abs_diff=diff, tolerance=tolerance, verified_batch=VERIFY_BATCH,
                       verified_size=list(size))
    atomic.write_bytes(out, data)
    atomic.write_text(config_path, json.dumps(config, indent=2) + "\n")
    return summary


def _need_onnx(path: Path, out: Path) -> None:
    import importlib
    try:
        for name in ("onnx", "onnxruntime"):
            importlib.import_module(name)
    except ImportError as e:
        raise SonostreamError(f"exporting {path} to {out} as ONNX needs the onnx and onnxruntime "
                              f"packages ({e}): pip install onnx onnxruntime (the dev extra has "
                              "them), or use --format safetensors") from None


def _random_input(n: int, size, seed: int, recipe: dict):
    """A seeded batch of uint8 pixels, put through the recorded recipe."""
    import torch
    g = torch.Generator().manual_seed(seed)
    px = torch.randint(0, 256, (n, recipe["in_chans"], *size), generator=g, dtype=torch.uint8)
    mean = torch.tensor(recipe["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(recipe["std"]).view(1, -1, 1, 1)
    return (px.float() / recipe["pixel_max"] - mean) / std


def _torch_outputs(net, x) -> list:
    import torch
    with torch.no_grad():
        y = net(x)
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _onnx(net, names, recipe, size, tolerance, seed, path) -> tuple[bytes, float]:
    """(ONNX bytes, max |onnxruntime - torch|) on a seeded random batch; ExportError above
    ``tolerance``."""
    import numpy as np
    import onnxruntime as ort
    import torch
    buf = io.BytesIO()
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    for n in names:
        axes[n] = {0: "batch"} if n == "plane_logits" else {0: "batch", 2: "h", 3: "w"}
    with warnings.catch_warnings():   # "legacy TorchScript-based ONNX export": chosen, see above
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(net, (_random_input(2, size, seed, recipe),), buf,
                          dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                          output_names=names, dynamic_axes=axes)
    data = buf.getvalue()
    x = _random_input(VERIFY_BATCH, size, seed + 1, recipe)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(names, {"image": x.numpy()})
    want = _torch_outputs(net, x)
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if not diff <= tolerance:
        raise ExportError(f"the ONNX export of {path} differs from torch by {diff:.3g} in "
                          f"onnxruntime (tolerance {tolerance:g}); nothing was written. Use "
                          "--format safetensors, or raise --tolerance if that is acceptable")
    return data, diff
