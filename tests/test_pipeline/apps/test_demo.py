"""`sonostream demo --size smoke`: every stage end to end, the report and its figures, and a re-run
that skips what is done."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from pipeline.cli import main

STAGES = ("synth", "build", "verify", "inspect", "pretrain", "probe", "finetune", "evaluate",
          "label_efficiency", "sweep", "video_sweep", "video_dicom", "report")


@pytest.mark.slow
def test_demo_runs_end_to_end_and_a_rerun_skips_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "smoke"]) == 0
    first = capsys.readouterr().out
    for n, stage in enumerate(STAGES, 1):
        assert re.search(rf"\[\s*{n}/{len(STAGES)}\] {stage}\s+done in", first), first
        assert (out / ".demo" / f"{stage}.json").is_file()
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    # Contact sheet, preview, curves, reconstructions, overlays, label efficiency, and per loop
    # the best frame (when one reached the quality floor: the smoke models' 4 steps may leave
    # every frame uncertain), HC and quality over time and the frame strip: every one exists.
    assert len(links) >= 10 and all((out / link).is_file() for link in links), links
    assert "was not made" not in report.split("### A real scanner file")[0]
    for section in ("## 1. Data", "## 2. Self-supervised pretraining", "## 3. Fetal head",
                    "## 4. Label efficiency", "## 5. Cine loops", "## Time per stage"):
        assert section in report
    sweep = json.loads((out / ".demo" / "video_sweep.json").read_text())["result"]
    assert sweep["frames"] == 12 and sweep["standard_frame"] is not None
    assert (out / "video" / "sweep" / "overlay.mp4").stat().st_size > 0
    # Numbers in the report are the stages' own: the evaluate table shows metrics.json's Dice.
    dice = json.loads((out / "evaluate" / "multitask" / "metrics.json").read_text())["dice"]
    assert f"| multitask | {dice:.3f} |" in report
    # The probe table: the encoder beside its random init, the numbers of probe.json.
    probe = json.loads((out / ".demo" / "probe.json").read_text())["result"]
    assert "### What the frozen encoder knows" in report and "| random init (seed 0) |" in report
    assert f"| {probe['random']['head_acc']:.3f} |" in report.split("| random init (seed 0) |")[1]
    # Each fine-tuned model's quality floor was calibrated on val, and the report shows it.
    cal = json.loads((out / "evaluate" / "multitask" / "metrics.json").read_text())["quality_calibration"]
    assert cal["split"] == "val" and f"| multitask | {cal['min_quality']:.3f} |" in report

    # What a run trained with comes from its saved config, not from text typed into the report.
    pretrain = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    assert f"a `{pretrain['model']['arch']}` encoder on 64x64 frames" in report
    finetune = yaml.safe_load((out / "finetune" / "multitask" / "config.yaml").read_text())
    assert f"{finetune['train']['steps']} steps each" in report

    # The re-run rewrites the report from what is on disk: edit a saved config and it follows.
    edited = {**pretrain, "model": {**pretrain["model"], "arch": "resnet34"}}
    (out / "pretrain" / "config.yaml").write_text(yaml.safe_dump(edited))
    assert main(["demo", "--out", str(out), "--size", "smoke"]) == 0
    again = capsys.readouterr().out
    assert again.count("skipped (done in an earlier run") == len(STAGES) - 1 and "report" in again
    assert "a `resnet34` encoder" in (out / "report.md").read_text()


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / ".demo").mkdir(parents=True)
    (out / ".demo" / "settings.json").write_text(json.dumps({"size": "default"}))
    assert main(["demo", "--out", str(out), "--size", "smoke"]) == 2
    assert "another --out" in capsys.readouterr().err


def test_a_failing_stage_names_itself_and_keeps_the_finished_ones(tmp_path, capsys, monkeypatch):
    from pipeline.apps import demo

    def boom(self):
        print("inspect's own output")
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(demo.Demo, "inspect", boom)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "smoke"]) == 1
    cap = capsys.readouterr()
    assert "stage inspect failed (RuntimeError: disk on fire)" in cap.err
    assert str(out / ".demo" / "inspect.log") in cap.err
    assert "inspect's own output" in (out / ".demo" / "inspect.log").read_text()
    assert re.search(r"\[ 4/13\] inspect\s+failed", cap.out)
    done = sorted(p.stem for p in (out / ".demo").glob("*.json") if p.stem != "settings")
    assert done == ["build", "synth", "verify"]
