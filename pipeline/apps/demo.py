"""``sonostream demo``: the whole pipeline on the built-in synthetic cohort, ending in one report.

synth -> build -> verify -> inspect -> pretrain -> probe (linear probes of the frozen encoder
beside a random-init one) -> finetune (supervised, semi, multitask) ->
evaluate -> label-efficiency (small) -> sweep (a synthetic cine loop as mp4) -> segment-video on
the sweep and on a real 2-frame ultrasound DICOM (pydicom-data) -> report.md

Every stage leaves D/.demo/<stage>.json when it finishes (what it made, how long it took); a re-run
skips finished stages, and the training stages resume from their last checkpoint, so an
interrupted demo continues where it stopped. ``--size smoke`` is the smallest setting (seconds per
stage; what the test suite runs); ``default`` is what ``make demo`` runs (README's Set-up gives
its time).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from preprocessing import atomic
from preprocessing.format import SonostreamError


def _configs() -> Path:
    """launch/configs/debug of the source tree (editable install), else of the working folder
    (the container's WORKDIR holds launch/)."""
    here = Path(__file__).resolve().parents[2] / "launch" / "configs" / "debug"
    return here if here.is_dir() else Path.cwd() / "launch" / "configs" / "debug"


CONFIGS = _configs()
MODES = ("supervised", "semi", "multitask")
VIDEO_MODEL = "multitask"   # segment-video uses this run: its plane head also scores the frames
DICOM_NAME = "OBXXXX1A_rle_2frame.dcm"   # pydicom-data: Philips obstetric scan, 2 frames, RLE


@dataclasses.dataclass(frozen=True)
class Settings:
    patients: int
    videos_per_patient: int
    frames_per_video: int
    size: int
    pretrain_steps: int
    finetune_steps: int
    label_fraction: float          # of the three-mode fine-tuning runs
    le_patients: tuple             # label-efficiency: labelled patients ...
    le_seeds: int                  # ... x seeds (each its own patients and init) x both inits
    le_modes: tuple
    le_steps: int
    sweep_frames: int


SIZES = {
    "default": Settings(24, 3, 32, 256, 200, 100, 0.5, (1, 2), 3, ("supervised",), 100, 48),
    "smoke": Settings(6, 2, 8, 64, 4, 4, 0.5, (1,), 2, ("supervised",), 3, 12),
}


def find_dicom(name: str = DICOM_NAME) -> Path | None:
    """The file in pydicom-data (installed with the dev extras), without any download."""
    spec = importlib.util.find_spec("data_store")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / name
        if path.is_file():
            return path
    return None


class StageFailed(RuntimeError):
    """A stage raised; the message names it and where its log is (the CLI exits 1)."""
    exit_status = 1


class Demo:
    def __init__(self, out, size: str = "default", quiet: bool = True):
        if size not in SIZES:
            raise SonostreamError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
        if not CONFIGS.is_dir():
            raise SonostreamError(f"{CONFIGS} is missing: the demo reads its configs from the "
                                  "source tree (run from a checkout, or install with "
                                  "`pip install -e .`)")
        self.out, self.size, self.s, self.quiet = Path(out), size, SIZES[size], quiet
        self.state = self.out / ".demo"
        self.shards = self.out / "shards"
        self.encoder = self.out / "pretrain" / "encoder.pt"
        self._check_settings()

    def _check_settings(self) -> None:
        path = self.state / "settings.json"
        now = {"size": self.size, **dataclasses.asdict(self.s)}
        now = json.loads(json.dumps(now))   # tuples -> lists, as stored
        if path.is_file():
            before = json.loads(path.read_text())
            if before != now:
                raise SonostreamError(f"{self.out} holds a demo made with --size "
                                      f"{before.get('size')} "
                                      f"(or other settings); use another --out, or delete {self.out}")
        else:
            atomic.write_json(path, now)

    # --- stages ---------------------------------------------------------------------------
    def synth(self) -> dict:
        from preprocessing.cpus import default_workers
        from preprocessing.synth import make_cohort, save_preview
        s = self.s
        csv_path = make_cohort(self.out / "cohort", patients=s.patients,
                               videos_per_patient=s.videos_per_patient,
                               frames_per_video=s.frames_per_video, size=s.size,
                               workers=default_workers(), progress=not self.quiet)
        save_preview(self.out / "synth_preview.png", size=s.size)
        return {"csv": str(csv_path), "frames": s.patients * s.videos_per_patient * s.frames_per_video}

    def build(self) -> dict:
        from preprocessing.build import BuildOptions, build
        from preprocessing.cpus import default_workers
        r = build(str(self.out / "cohort" / "frames.csv"), str(self.shards),
                  BuildOptions(image_size=self.s.size, val_fraction=0.1, test_fraction=0.25),
                  workers=default_workers(), progress=not self.quiet)
        if r.frames == 0:
            raise RuntimeError(f"no frame made it into {self.shards}; see its rejects.csv")
        return {"frames": r.frames, "rejects": r.rejects, "shards": r.shards, "splits": r.splits}

    def verify(self) -> dict:
        from preprocessing.verify import verify
        problems = verify(str(self.shards), decode=True, progress=not self.quiet)
        if problems:
            raise RuntimeError(f"verify found {len(problems)} problem(s) in {self.shards}: "
                               + "; ".join(problems[:3]))
        return {"problems": 0}

    def inspect(self) -> dict:
        from preprocessing.summary import contact_sheet, summarize
        contact_sheet(str(self.shards), str(self.out / "contact_sheet.png"))
        s = summarize(str(self.shards))
        return {k: s[k] for k in ("frames", "videos", "patients", "splits", "coverage") if k in s}

    def pretrain(self) -> dict:
        from pipeline.train.checkpoint import latest_checkpoint
        from pipeline.train.pretraining import load_pretrain_config, train
        run = self.out / "pretrain"
        # smoke's 8-frame videos hold one clip each at the debug config's stride 3 (span 10)
        sets = ["train.trackers=[]"] + (["loader.stride=1"] if self.size == "smoke" else [])
        cfg = load_pretrain_config(CONFIGS / "pretrain.yaml", sets, self.s.pretrain_steps)
        summary = train(cfg, str(self.shards), run,
                        resume="latest" if latest_checkpoint(run) else None, quiet=self.quiet)
        return {"step": summary["step"], "last": summary.get("last"),
                "validation": summary.get("validation")}

    def probe(self) -> dict:
        from pipeline.eval.probe import probe
        return probe(self.encoder, str(self.shards), "test", quiet=self.quiet)

    def finetune(self) -> dict:
        from pipeline.eval.quality import calibrate_segmenter
        from pipeline.models.segmenter import load_segmenter, read_segmenter_blob
        from pipeline.train.checkpoint import latest_checkpoint
        from pipeline.train.finetuning import load_finetune_config, train
        done = {}
        for mode in MODES:
            run = self.out / "finetune" / mode
            seg = run / "segmenter.pt"
            if not (seg.is_file() and load_segmenter(seg)[1].get("complete")):
                cfg = load_finetune_config(CONFIGS / "finetune.yaml", mode=mode, init=str(self.encoder),
                                           label_fraction=self.s.label_fraction,
                                           max_steps=self.s.finetune_steps)
                train(cfg, str(self.shards), run,
                      resume="latest" if latest_checkpoint(run) else None, quiet=self.quiet)
            blob = read_segmenter_blob(seg)
            if blob.get("complete") and "quality_calibration" not in blob:   # its floor, on val
                calibrate_segmenter(seg, str(self.shards))
            done[mode] = str(seg)
        return done

    def evaluate(self) -> dict:
        from pipeline.eval.evaluate import evaluate
        return {mode: evaluate(self.out / "finetune" / mode / "segmenter.pt", str(self.shards), "test",
                               self.out / "evaluate" / mode, overlays=4, quiet=self.quiet)
                for mode in MODES}

    def label_efficiency(self) -> dict:
        from .experiment import label_efficiency
        rows = label_efficiency(str(self.shards), self.out / "label_efficiency", encoder=self.encoder,
                                config=str(CONFIGS / "finetune.yaml"), patients=list(self.s.le_patients),
                                seeds=self.s.le_seeds, modes=self.s.le_modes,
                                max_steps=self.s.le_steps, quiet=self.quiet)
        return {"runs": len(rows)}

    def sweep(self) -> dict:
        from preprocessing.synth.sweep import write_sweep
        # A patient index past the cohort: a fetus no model has seen.
        return write_sweep(self.out / "video" / "sweep.mp4", patient=self.s.patients + 100,
                           frames=self.s.sweep_frames, size=self.s.size)

    def video_sweep(self) -> dict:
        from pipeline.eval.cine.run import segment_video
        from pipeline.eval.cine.source import read_file
        info = json.loads((self.state / "sweep.json").read_text())["result"]
        # The synthetic frames are whole fans, as the model saw them in training: no sector crop.
        cine = read_file(info["video"], crop_sector=False, pixel_size_mm=info["pixel_size_mm"])
        cine.truth = read_truth(info["truth"])
        return segment_video(self._video_model(), self.out / "video" / "sweep", cine=cine,
                             quiet=self.quiet)

    def video_dicom(self) -> dict:
        from pipeline.eval.cine.run import segment_video
        from pipeline.eval.cine.source import read_file
        path = find_dicom()
        if path is None:
            return {"skipped": f"{DICOM_NAME} not found: pydicom-data is not installed "
                    "(pip install pydicom-data, or the dev extras)"}
        return segment_video(self._video_model(), self.out / "video" / "dicom",
                             cine=read_file(str(path)), quiet=self.quiet)

    def report(self) -> dict:
        from .report import write_report
        results = {name: json.loads((self.state / f"{name}.json").read_text())
                   for name, _ in self.stages() if (self.state / f"{name}.json").is_file()}
        path = write_report(self.out, self.s, results, self.size)
        return {"report": str(path)}

    def _video_model(self) -> Path:
        return self.out / "finetune" / VIDEO_MODEL / "segmenter.pt"

    # --- running ----------------------------------------------------------------------------
    def stages(self):
        return [("synth", self.synth), ("build", self.build), ("verify", self.verify),
                ("inspect", self.inspect), ("pretrain", self.pretrain), ("probe", self.probe),
                ("finetune", self.finetune), ("evaluate", self.evaluate),
                ("label_efficiency", self.label_efficiency), ("sweep", self.sweep),
                ("video_sweep", self.video_sweep), ("video_dicom", self.video_dicom),
                ("report", self.report)]

    def run(self, log=print) -> float:
        """Runs the stages not yet done; returns the seconds taken. Unless verbose, what a stage
        prints itself goes to D/.demo/<stage>.log, and the console gets one line per stage."""
        stages = self.stages()
        t_all = time.perf_counter()
        tty = sys.stdout.isatty()
        for n, (name, fn) in enumerate(stages, 1):
            marker = self.state / f"{name}.json"
            head = f"[{n:>2}/{len(stages)}] {name:<17}"
            if marker.is_file() and name != "report":
                took = json.loads(marker.read_text()).get("seconds", 0.0)
                log(f"{head} skipped (done in an earlier run, {took:.1f}s)", flush=True)
                continue
            if tty:
                log(f"{head} ...", end="\r", flush=True)
            t0 = time.perf_counter()
            try:
                if self.quiet:
                    self.state.mkdir(parents=True, exist_ok=True)
                    with open(self.state / f"{name}.log", "w") as f, contextlib.redirect_stdout(f):
                        result = fn()
                else:
                    result = fn()
            except SonostreamError:
                log(f"{head} failed", flush=True)
                raise   # our own errors say what to fix
            except Exception as e:
                log(f"{head} failed", flush=True)
                where = f"; its output is in {self.state / (name + '.log')}" if self.quiet else ""
                raise StageFailed(f"stage {name} failed ({type(e).__name__}: {e}){where}; fix "
                                  "it and run the demo again: finished stages are skipped") from e
            took = time.perf_counter() - t0
            atomic.write_json(marker, {"stage": name, "seconds": round(took, 2),
                                       "result": _jsonable(result)})
            log(f"{head} done in {took:.1f}s" + _brief(name, result), flush=True)
        total = time.perf_counter() - t_all
        atomic.write_json(self.state / "total.json", {"seconds": round(total, 2)})
        return total


def read_truth(path) -> dict:
    """hc_mm per frame and the labelled standard-plane frame from a sweep's truth CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    hc = np.array([float(r["hc_mm"]) if r["hc_mm"] else np.nan for r in rows])
    standard = [i for i, r in enumerate(rows) if r["is_standard_plane"] == "1"]
    return {"hc_mm": hc, "standard_frame": standard[0] if standard else None}


def _brief(name: str, r) -> str:
    if not isinstance(r, dict):
        return ""
    if name == "evaluate":
        return "  (Dice " + ", ".join(f"{m} {v['dice']:.3f}" for m, v in r.items()
                                      if v.get("dice") is not None) + ")"
    if name == "probe":
        f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        return (f"  (same patient, other video: {f(r['patient_retrieval_other_video'])}, random "
                f"init {f(r['random']['patient_retrieval_other_video'])})")
    if name.startswith("video_"):
        if "skipped" in r:
            return f"  (skipped: {r['skipped']})"
        unsure = f", {r['uncertain_frames']} uncertain" if r.get("uncertain_frames") else ""
        if r.get("best_frame") is None:
            return f"  ({r['frames']} frames{unsure}, no head found)"
        hc = f", HC {r['best_hc_mm']:.1f} mm" if r.get("best_hc_mm") is not None else ""
        return (f"  ({r['frames']} frames, head in {r['head_frames']}{unsure}, best frame "
                f"{r['best_frame']}{hc})")
    if name == "report":
        return f"  -> {r['report']}"
    return ""


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
