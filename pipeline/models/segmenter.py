"""The fetal head segmenter: a segmentation-models-pytorch UNet on our ResNet encoder.

smp's ResNet encoders *are* torchvision ResNets, like ours, so ``encoder.pt`` loads into
``Segmenter.encoder`` with ``strict=True`` (every weight, by name). Our debug arch ``tiny``
(a ResNet-10) is registered with smp under ``sonostream-tiny``. The optional plane head
(multi-task mode) is smp's classification head on the deepest features.

``segmenter.pt`` (what ``finetune`` writes and ``evaluate`` / ``segment-video`` read) is a plain
dict that loads with ``weights_only=True``: format, arch, in_chans, image_size, planes,
decoder_channels, block, layers, smp (the plain ``smp.Unet`` arguments), preprocessing (the
input recipe of ``inputs.py``), outputs, mode, init, step, complete, min_quality and
quality_calibration (the quality floor of its measurements and how it was chosen; see
``pipeline.eval.quality``: written after fine-tuning, and filled in with DEFAULT_MIN_QUALITY for
files that predate it), state_dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from preprocessing import format as fmt
from preprocessing.format import SonostreamError

from .encoder import ARCHS, FORMAT as ENCODER_FORMAT
from .files import ENCODER_KEYS, SEGMENTER_KEYS, describe, load_weights, require
from .inputs import normalize, preprocessing

FORMAT = "sonostream-segmenter/1"
SMP_NAMES = {"tiny": "sonostream-tiny", "resnet18": "resnet18", "resnet34": "resnet34",
             "resnet50": "resnet50"}
# smp's encoders entry for "tiny" (smp has no ResNet-10): stored in segmenter.pt as smp_register
# The quality floor of a segmenter.pt that was not calibrated (written before the calibration, or
# whose val split could not calibrate one): about the lowest of the floors calibrated on the demo's
# val split (0.197, 0.281, 0.351: README "The quality floor"), far above the false region the demo
# models find on the real 2-frame DICOM (0.014).
DEFAULT_MIN_QUALITY = 0.2
TINY_SMP = {"out_channels": [3, 64, 64, 128, 256, 512], "block": ARCHS["tiny"][0].__name__,
            "layers": list(ARCHS["tiny"][1])}


@dataclass
class SegmenterConfig:
    arch: str = "resnet18"                         # tiny | resnet18 | resnet34 | resnet50
    in_chans: int = 1
    decoder_channels: tuple = (256, 128, 64, 32, 16)
    plane_dropout: float = 0.2                     # multi-task plane head

    def __post_init__(self):
        self.decoder_channels = tuple(self.decoder_channels)
        if self.arch not in ARCHS:
            raise SonostreamError(f"model.arch must be one of {', '.join(ARCHS)}, got "
                                  f"{self.arch!r}")
        if len(self.decoder_channels) != 5:
            raise SonostreamError("model.decoder_channels needs 5 widths (one per UNet stage)")


def _register_tiny() -> None:
    from segmentation_models_pytorch import encoders
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
    if SMP_NAMES["tiny"] not in encoders.encoders:
        encoders.encoders[SMP_NAMES["tiny"]] = {
            "encoder": ResNetEncoder, "pretrained_settings": {},
            "params": {**TINY_SMP, "block": ARCHS["tiny"][0]}}


def build_segmenter(cfg: SegmenterConfig, planes: int = 0):
    """A randomly initialised UNet; ``planes`` > 0 adds the plane classification head."""
    import segmentation_models_pytorch as smp
    _register_tiny()

    class Segmenter(smp.Unet):
        """imgs float (N, C, H, W) in 0..1, H and W multiples of 32 ->
        (mask logits (N, 1, H, W), plane logits (N, planes) or None)."""

        def forward(self, x):
            return self.forward_normalized(normalize(x))   # -1..1, as the encoder was pretrained

        def forward_normalized(self, x):
            """The plain smp.Unet on normalised input: what segmenter.pt's weights expect."""
            out = super().forward(x)
            return out if isinstance(out, tuple) else (out, None)

    aux = {"classes": planes, "dropout": cfg.plane_dropout} if planes else None
    return Segmenter(SMP_NAMES[cfg.arch], encoder_weights=None, in_channels=cfg.in_chans, classes=1,
                     decoder_channels=list(cfg.decoder_channels), aux_params=aux)


def load_pretrained_encoder(model, path, arch: str, in_chans: int = 1) -> dict:
    """Copy ``encoder.pt`` into ``model.encoder`` (every weight, strict). Returns its metadata."""
    path = Path(path)
    if not path.is_file():
        raise SonostreamError(f"--init {path}: no such file (pretraining writes RUN/encoder.pt; "
                              "--init none trains from scratch)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise SonostreamError(f"--init {path} is not a sonostream encoder.pt: it holds more than "
                              "tensors and plain data, which is never loaded (unpickling it could "
                              "run code); pass the encoder.pt a pretraining run wrote") from None
    if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
        hint = " (that is a fine-tuned segmenter, not a pretrained encoder)" if (
            isinstance(blob, dict) and blob.get("format") == FORMAT) else ""
        raise SonostreamError(f"--init {path} is not a sonostream encoder (it is "
                              f"{describe(blob)}){hint}; pass the encoder.pt a pretraining run "
                              "wrote")
    require(blob, ENCODER_KEYS, f"--init {path}", "encoder")
    if blob["arch"] != arch or blob["in_chans"] != in_chans:
        raise SonostreamError(f"--init {path} holds a {blob['arch']} encoder with "
                              f"{blob['in_chans']} input channel(s), but model.arch is {arch} "
                              f"with {in_chans}: set "
                              f"model.arch: {blob['arch']} or pass an encoder of that architecture")
    load_weights(model.encoder, dict(blob["state_dict"]), f"--init {path}", f"{arch} encoder")
    return {k: v for k, v in blob.items() if k != "state_dict"}


def segmenter_meta(cfg: SegmenterConfig, image_size, planes) -> dict:
    """What ``segmenter.pt`` says of its network: enough to build a plain ``smp.Unet`` for its
    state dict (``smp``; arch ``tiny`` needs ``smp_register`` added to smp's encoders, see
    README), the input recipe (``inputs.preprocessing``) and what the outputs mean."""
    block, layers = ARCHS[cfg.arch]
    smp_args = {"encoder_name": SMP_NAMES[cfg.arch], "encoder_weights": None,
                "in_channels": cfg.in_chans, "classes": 1,
                "decoder_channels": list(cfg.decoder_channels)}
    outputs = {"mask": "logits [N, 1, H, W]; sigmoid > 0.5 is the fetal head"}
    if planes:
        smp_args["aux_params"] = {"classes": len(planes), "dropout": cfg.plane_dropout}
        outputs["planes"] = f"logits [N, {len(planes)}] over planes, in the order of 'planes'"
    out = {"arch": cfg.arch, "in_chans": cfg.in_chans,
           "decoder_channels": list(cfg.decoder_channels), "image_size": list(image_size),
           "planes": list(planes), "block": block.__name__, "layers": list(layers),
           "smp": smp_args, "preprocessing": preprocessing(cfg.in_chans, image_size),
           "outputs": outputs}
    if cfg.arch == "tiny":
        out["smp_register"] = {"name": SMP_NAMES["tiny"], **TINY_SMP}
    return out


def export_segmenter(state_dict: dict, cfg: SegmenterConfig, path, *, image_size, planes,
                     **meta) -> None:
    from preprocessing.atomic import atomic_open
    blob = {"format": FORMAT, **segmenter_meta(cfg, image_size, planes), **meta,
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}}
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)


def load_segmenter(path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on CPU, metadata) from a ``segmenter.pt``."""
    return segmenter_from_blob(read_segmenter_blob(path), path)


def segmenter_from_blob(blob: dict, path="segmenter.pt") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, metadata) from a loaded ``segmenter.pt`` dict (read from ``path``)."""
    require(blob, SEGMENTER_KEYS, path, "segmenter")
    cfg = SegmenterConfig(arch=blob["arch"], in_chans=blob["in_chans"],
                          decoder_channels=tuple(blob["decoder_channels"]))
    model = build_segmenter(cfg, planes=len(blob["planes"]))
    load_weights(model, blob["state_dict"], path, f"{cfg.arch} UNet")
    model.eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    # files written before the recipe was recorded: the same constants made their inputs;
    # before the quality floor was calibrated: the default floor
    uncalibrated = {"min_quality": DEFAULT_MIN_QUALITY, "quality_calibration": {
        "source": "default", "min_quality": DEFAULT_MIN_QUALITY,
        "reason": "segmenter.pt was written without a calibrated quality floor"}}
    return model, {**segmenter_meta(cfg, blob["image_size"], blob["planes"]), **uncalibrated, **meta}


def read_segmenter_blob(path) -> dict:
    """The loaded ``segmenter.pt`` dict (weights_only), or a SonostreamError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SonostreamError(f"checkpoint {path} does not exist (finetune writes "
                              f"RUN/segmenter.pt)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise SonostreamError(f"{path} is not a sonostream segmenter ({type(e).__name__}); pass "
                              f"the segmenter.pt a finetune run wrote") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        what = blob.get("format") if isinstance(blob, dict) else None
        hint = " (that is a pretrained encoder: fine-tune it first)" if what == ENCODER_FORMAT else ""
        raise SonostreamError(f"{path} is not a sonostream segmenter (it is {describe(blob)})"
                              f"{hint}; pass the segmenter.pt a finetune run wrote")
    return blob


def update_segmenter(path, out=None, **meta) -> Path:
    """Adds (or replaces) metadata ``meta`` in the segmenter.pt at ``path``, written atomically to
    ``out`` (default: ``path`` itself); the weights are unchanged."""
    from preprocessing.atomic import atomic_open
    blob = read_segmenter_blob(path)
    blob.update(meta)
    out = Path(out) if out is not None else Path(path)
    with atomic_open(out, "wb") as f:
        torch.save(blob, f)
    return out


PLANES = fmt.PLANES
