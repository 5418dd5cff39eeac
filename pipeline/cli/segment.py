"""``sonostream evaluate``, ``segment-video``, ``calibrate-quality`` and ``probe``: a segmenter's
results on a dataset split and on cine loops, the quality floor of its measurements, and what a
pretrained encoder's frozen features know."""
from __future__ import annotations

import argparse

EVALUATE_EPILOG = """\
writes E/metrics.json (dice, iou, hd95_mm, hc_mae_mm, plane_accuracy and counts), E/per_image.csv,
E/hc18.csv (filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad; centre in
the source frame's mm, before any letterboxing) and E/overlays/{best,worst}.png.
Dice/IoU/HD95 average the frames whose true mask shows a head; frames without one are scored in
dice_all and empty_false_positive_rate. HC needs a pixel size: without one it is null, never 0.
A region whose quality is below the segmenter's floor (min_quality, calibrated on val at the end
of finetune) is uncertain: no ellipse, no HC; metrics.json counts them (uncertain_frames).
"""

CALIBRATE_EPILOG = """\
example:
  sonostream calibrate-quality --checkpoint runs/ft/segmenter.pt --data runs/demo/shards

On the split's frames that have a mask: the highest floor that keeps >= 99 % of the regions
measured on heads, lowered to the lowest quality that rejects as many regions measured on frames
without a head. finetune does this itself on val when a run completes; this command redoes it
(for a segmenter.pt written before, or on another split) and stores min_quality and
quality_calibration in the checkpoint (or in --out, leaving --checkpoint as it is).
"""

SEGMENT_VIDEO_EPILOG = """\
examples:
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --input sweep.mp4 --out runs/sv \\
      --pixel-size-mm 0.15
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --input scans/cine.dcm --out runs/sv
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --input scans/ --out runs/sv   # each loop
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --data runs/demo/shards \\
      --video-key P0003__sweep_01 --out runs/sv

writes O/per_frame.csv (frame_index,head_present,cx,cy,a,b,angle_rad,hc_mm,quality: smoothed;
pixels of the source file, radians, mm), O/per_frame_raw.csv (before smoothing), O/summary.json
(best frame, HC there, jitter), O/best_frame.png, O/best_overlay.png, O/overlay.mp4 and
O/hc_over_time.png. A folder --input gives O/<file name>/ per loop and O/summary.csv.
Frames without a head have no HC; without a pixel size (DICOM header, dataset, or
--pixel-size-mm) HC is empty and the plot shows the perimeter in pixels. A frame whose region has
a quality below the segmenter's floor (calibrated on val; --min-quality overrides it) is
uncertain: no ellipse, no HC, never the best frame (per_frame.csv: uncertain 1).
"""

PROBE_EPILOG = """\
examples:
  sonostream probe --encoder runs/pt/encoder.pt --data runs/demo/shards --split test --json probe.json
  sonostream probe --encoder random --arch tiny --data runs/demo/shards   # the baseline alone

Frozen features (global average of the encoder's last feature map, frames resized to its
pretraining size), and beside them those of a random-init encoder of the same arch and --seed.
Linear probes (logistic regression on standardised features, L2, L-BFGS; deterministic) are
fitted on the train split and scored on --split:
  plane_acc                      plane of the frame (head / abdomen / femur), accuracy
  head_acc                       a head in the frame's mask, accuracy
  standard_plane_bacc            within +-2 frames of the labelled standard plane, in videos
                                 that have one; balanced accuracy (0.5 = chance)
  patient_retrieval_other_video  no fit: each frame's nearest frame by cosine among frames of
                                 OTHER videos of the split is the same patient (patients with
                                 >= 2 videos); chance is about 1 / patients
The JSON has these four keys, the same under "random" (the baseline) and "chance", plus counts,
arch, split and the dataset. A figure that cannot be scored is null, its reason under "skipped".
"""


MIN_QUALITY_HELP = ("quality floor in [0, 1]: a region below it is uncertain, with no HC "
                    "(default: the floor calibrated into the segmenter.pt, else 0.2)")


def add_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="score a segmenter on a split: Dice, IoU, HD95, HC error, HC18 CSV",
                       description="Segment every frame of a split with a segmenter.pt and score "
                       "it against the masks, HC and plane labels the dataset has.",
                       epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="segmenter.pt written by `sonostream finetune`")
    e.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    e.add_argument("--split", default="test", help="split to score: train | val | test (default test)")
    e.add_argument("--out", required=True, help="folder for metrics.json, per_image.csv, hc18.csv, overlays/")
    e.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    e.add_argument("--overlays", type=int, default=8, help="best and worst frames drawn (default 8; 0: none)")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    e.add_argument("--min-quality", type=float, metavar="Q", help=MIN_QUALITY_HELP)
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser("segment-video", help="segment a cine loop: per-frame HC, smoothing, best frame, overlay mp4",
                       description="Segment every frame of a cine loop (video file, multi-frame "
                       "DICOM, or a video in the shards), smooth the head's ellipse over time, pick "
                       "the frame that shows the head best and report HC there.",
                       epilog=SEGMENT_VIDEO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--checkpoint", required=True, help="segmenter.pt written by `sonostream finetune`")
    what = v.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help="video file (mp4, avi, ...), DICOM file, or a folder of them")
    what.add_argument("--video-key", help="a video in --data (index.parquet's video_key)")
    v.add_argument("--data", help="dataset folder written by `sonostream build` (with --video-key)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--pixel-size-mm", type=float, help="mm per pixel of the frames (video files carry "
                   "none; otherwise the DICOM header's or the dataset's value is used)")
    v.add_argument("--no-crop-sector", dest="crop_sector", action="store_false",
                   help="segment the whole frame (default: crop to the ultrasound sector, as "
                   "`sonostream import` stores frames)")
    v.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    v.add_argument("--no-video", dest="video", action="store_false", help="skip overlay.mp4")
    v.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    v.add_argument("--min-quality", type=float, metavar="Q", help=MIN_QUALITY_HELP)
    v.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("calibrate-quality", help="calibrate a segmenter's quality floor on a split",
                       description="Measure every frame with a mask of a split (default val) and "
                       "choose the quality below which a measurement is uncertain (no HC).",
                       epilog=CALIBRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--checkpoint", required=True, help="segmenter.pt written by `sonostream finetune`")
    c.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    c.add_argument("--split", default="val", help="split to calibrate on (default val)")
    c.add_argument("--out", help="write the calibrated segmenter.pt here (default: update "
                   "--checkpoint in place)")
    c.add_argument("--batch-size", type=int, default=32, help="frames per forward pass (default 32)")
    c.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")

    p = sub.add_parser("probe", help="linear probes of a frozen encoder beside a random-init one",
                       description="How much a pretrained encoder's frozen features know: plane, "
                       "head present, nearness to the standard plane and the patient across "
                       "videos, each beside a random-init encoder of the same architecture.",
                       epilog=PROBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, metavar="ENCODER.pt|random",
                   help="encoder.pt written by `sonostream pretrain`, or random (needs --arch)")
    p.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    p.add_argument("--split", default="test", help="split scored: val | test (default test; the "
                   "probes are fitted on train)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--arch", help="tiny | resnet18 | resnet34 | resnet50 (with --encoder random; "
                   "else it must match the file's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder (default 0)")
    p.add_argument("--image-size", type=int, help="frame side fed to the encoders (default: the "
                   "encoder's pretraining size, else the stored frames')")
    p.add_argument("--batch-size", type=int, default=64, help="frames per forward pass (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_evaluate(args) -> int:
    from pipeline.eval.evaluate import evaluate
    m = evaluate(args.checkpoint, args.data, args.split, args.out, batch_size=args.batch_size,
                 overlays=args.overlays, device=args.device, quiet=args.quiet,
                 min_quality=args.min_quality)
    show = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"{args.split}: {m['frames']} frames ({m['head_frames']} with a head) | Dice "
          f"{show(m['dice'])} | IoU {show(m['iou'])} | HD95 {show(m['hd95_mm'], 2)} mm | HC MAE "
          f"{show(m['hc_mae_mm'], 2)} mm ({m['hc_missed']} missed) | plane accuracy "
          f"{show(m['plane_accuracy'])} | {m['uncertain_frames']} uncertain (quality below "
          f"{m['min_quality']:.2f}: no HC)\nwrote {args.out}/metrics.json, per_image.csv, hc18.csv, overlays/")
    return 0


def cmd_segment_video(args) -> int:
    from pipeline.eval.cine import segment_loops
    done, failed = segment_loops(args.checkpoint, args.out, input=args.input, data=args.data,
                                 video_key=args.video_key, pixel_size_mm=args.pixel_size_mm,
                                 crop_sector=args.crop_sector, batch_size=args.batch_size,
                                 device=args.device, video=args.video, quiet=args.quiet,
                                 min_quality=args.min_quality)
    return 1 if failed and not done else 0


def cmd_calibrate_quality(args) -> int:
    from pipeline.eval.quality import calibrate_segmenter, describe_calibration
    from preprocessing.format import SonostreamError
    if args.batch_size < 1:
        raise SonostreamError(f"--batch-size must be >= 1, got {args.batch_size}")
    cal = calibrate_segmenter(args.checkpoint, args.data, args.split, args.out, args.device,
                              args.batch_size)
    print(f"{describe_calibration(cal)}\nwrote {args.out or args.checkpoint}")
    return 0


def cmd_probe(args) -> int:
    from pipeline.eval.probe import probe, probe_table
    from preprocessing.format import SonostreamError
    if args.batch_size < 1 or (args.image_size is not None and args.image_size < 32):
        raise SonostreamError("--batch-size must be >= 1 and --image-size >= 32 (the encoder "
                              f"downsamples 32x); got {args.batch_size} and {args.image_size}")
    r = probe(args.encoder, args.data, args.split, arch=args.arch, seed=args.seed,
              image_size=args.image_size, batch_size=args.batch_size, quiet=args.quiet)
    c = r["counts"]
    print(f"{r['arch']} encoder, {args.split}: {c['frames']} frames scored, probes fitted on "
          f"{c['train_frames']} train frames at {r['image_size']}px; retrieval over "
          f"{c['retrieval_queries']} frames of {c['retrieval_patients']} patients\n"
          f"{probe_table(r)}")
    for key, why in r["skipped"].items():
        print(f"{key}: not scored ({why})")
    if args.json:
        import json

        from preprocessing.atomic import write_text
        write_text(args.json, json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "segment-video": cmd_segment_video,
            "calibrate-quality": cmd_calibrate_quality, "probe": cmd_probe}
