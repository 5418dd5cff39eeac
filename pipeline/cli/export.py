"""``sonostream export``: a checkpoint's weights as safetensors or ONNX, with a JSON config."""
from __future__ import annotations

import argparse

EPILOG = """\
examples:
  sonostream export --checkpoint runs/ft/segmenter.pt --format onnx --out export/segmenter.onnx
  sonostream export --checkpoint runs/pt --format safetensors --out export/encoder.safetensors

writes F and its config F-with-suffix-.json (export/segmenter.json): arch, block/layers, the
plain smp.Unet arguments (segmenter), preprocessing, outputs, step. The exported network is the
plain one: feed it (pixels / 255 - 0.5) / 0.5 as the config's preprocessing says. ONNX (needs
onnx and onnxruntime) has dynamic batch, height and width; it is run in onnxruntime against torch
on a random batch and written only if the max |difference| is within --tolerance.
Exit status: 0 done, 2 bad input, 1 the ONNX model disagrees with torch.
"""


def add_parsers(sub) -> None:
    from pipeline.apps.export import FORMATS, ONNX_TOLERANCE
    e = sub.add_parser("export", help="a checkpoint's weights as safetensors or ONNX, plus a JSON config",
                       description="Export the weights of an encoder.pt or segmenter.pt for "
                       "tools outside sonostream, with the config (preprocessing included) "
                       "beside them.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--checkpoint", required=True,
                   help="encoder.pt or segmenter.pt, or a run folder holding one of them")
    e.add_argument("--format", required=True, choices=FORMATS,
                   help="safetensors (the state dict) or onnx (the network, verified in onnxruntime)")
    e.add_argument("--out", required=True, help="weights file to write, e.g. model.onnx; the "
                   "config goes beside it as model.json")
    e.add_argument("--tolerance", type=float, default=ONNX_TOLERANCE,
                   help=f"largest |onnxruntime - torch| accepted (default {ONNX_TOLERANCE:g})")


def cmd_export(args) -> int:
    from pipeline.apps.export import export_checkpoint
    s = export_checkpoint(args.checkpoint, args.format, args.out, tolerance=args.tolerance)
    print(f"exported the {s['kind']} of {s['checkpoint']} to {s['weights']} and {s['config']}")
    if "max_abs_diff" in s:
        h, w = s["verified_size"]
        print(f"onnxruntime vs torch on a random batch of {s['verified_batch']} at {h}x{w}: max "
              f"|difference| {s['max_abs_diff']:.3g} (tolerance {s['tolerance']:g})")
    return 0


COMMANDS = {"export": cmd_export}
