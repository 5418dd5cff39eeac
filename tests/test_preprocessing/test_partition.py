"""A build split into parts (`build --plan`, `--part I --parts N`, `--merge`): two real
processes at once, merged, give the one-machine build's content; missing, unfinished and
other-plan parts are refused by name; reruns give the same bytes."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factories import write_frames
from preprocessing import format as fmt
from preprocessing import shards as shards_mod
from preprocessing.build import BuildError, BuildOptions, build
from preprocessing.dataset import open_dataset
from preprocessing.frames_csv import Video
from preprocessing.partition import assign_parts, build_part, merge, part_dir, plan_parts
from preprocessing.verify import verify
from pipeline.cli import main

OPTS = BuildOptions(image_size=64, shard_size_mb=0.03, val_fraction=0.25, test_fraction=0.25,
                    seed=1)
PLACE = {"shard", "image_offset", "mask_offset"}   # where a frame sits: all that may differ
CLI = [sys.executable, "-m", "pipeline.cli", "build"]
FLAGS = ["--image-size", "64", "--shard-size-mb", "0.03", "--val-fraction", "0.25",
         "--test-fraction", "0.25", "--seed", "1"]


def _csv(root: Path) -> Path:
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad" / "text.png").write_text("not an image")
    bad = [dict(frame_path="bad/missing.png", patient_id="900", video_name="v0", frame_id="0"),
           dict(frame_path="bad/text.png", patient_id="900", video_name="v0", frame_id="1"),
           dict(frame_path="bad/text.png", patient_id="", video_name="v0", frame_id="2")]
    return write_frames(root, patients=6, videos=2, frames=5, extra_rows=bad)


def _tree(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(out).rglob("*")) if p.is_file()}


def _content(out: Path) -> dict:
    """Per sample key: its index row without its place in the shards, and its members' bytes."""
    ds = open_dataset(str(out))
    rows = {}
    for row in ds.index.to_pylist():
        members = [ds.member(row, "image"), ds.member(row, "mask") if row["has_mask"] else None]
        rows[row["key"]] = ({k: v for k, v in row.items() if k not in PLACE}, members)
    return rows


def _plan_and_parts(csv_path, out, parts, order=None):
    plan_parts(str(csv_path), str(out), OPTS, parts)
    for p in order or range(parts):
        build_part(str(out), p, parts, progress=False)


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    root = tmp_path_factory.mktemp("partition")
    csv_path = _csv(root / "src")
    build(str(csv_path), str(root / "one"), OPTS, progress=False)
    return root, csv_path


def test_two_part_processes_merge_to_the_one_machine_build(one_machine):
    root, csv_path = one_machine
    out = root / "two"
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(CLI + ["--csv", str(csv_path), "--out", str(out), "--plan", "--parts", "2"]
                   + FLAGS, **run)
    procs = [subprocess.Popen(CLI + ["--out", str(out), "--part", str(p), "--parts", "2",
                                     "--workers", "1", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in (0, 1)]   # both running before either is waited for
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "built part" in stdout
    merged = subprocess.run(CLI + ["--out", str(out), "--merge"], **run).stdout
    assert "merged" in merged
    assert verify(str(out), decode=True, progress=False) == []
    names = {p.name for p in (out / fmt.SHARDS_DIR).glob("*.tar")}
    assert any("-p000-" in n for n in names) and any("-p001-" in n for n in names)
    assert not (out / fmt.WORK_DIR).exists()
    one = root / "one"
    assert _content(out) == _content(one)   # the frames, labels, splits and per-video order
    assert (out / fmt.REJECTS_FILE).read_bytes() == (one / fmt.REJECTS_FILE).read_bytes()
    assert len((out / fmt.REJECTS_FILE).read_text().splitlines()) == 4   # 3 rejects + header
    manifest = open_dataset(str(out)).manifest
    assert manifest["counts"] == open_dataset(str(one)).manifest["counts"]
    assert manifest["fingerprint"]["parts"] == 2


def test_rerun_gives_the_same_bytes_in_any_part_order(one_machine, tmp_path):
    _, csv_path = one_machine
    _plan_and_parts(csv_path, tmp_path / "a", 2)
    merge(str(tmp_path / "a"))
    _plan_and_parts(csv_path, tmp_path / "b", 2, order=[1, 0])
    merge(str(tmp_path / "b"))
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    assert merge(str(tmp_path / "a")).up_to_date and _tree(tmp_path / "a") == first
    assert build_part(str(tmp_path / "a"), 1, 2, progress=False).up_to_date
    assert plan_parts(str(csv_path), str(tmp_path / "a"), OPTS, 2).up_to_date
    assert _tree(tmp_path / "a") == first


def test_merge_refuses_missing_and_unfinished_parts_then_the_parts_resume(one_machine, tmp_path,
                                                                          monkeypatch):
    _, csv_path = one_machine
    _plan_and_parts(csv_path, tmp_path / "clean", 3)
    merge(str(tmp_path / "clean"))
    out = tmp_path / "ds"
    plan_parts(str(csv_path), str(out), OPTS, 3)
    build_part(str(out), 0, 3, progress=False)
    real_finish, calls = shards_mod.ShardWriter._finish_shard, []

    def crashing_finish(self):   # part 1 is killed while finishing its third shard
        if self._file is not None:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt("simulated crash")
        real_finish(self)

    monkeypatch.setattr(shards_mod.ShardWriter, "_finish_shard", crashing_finish)
    with pytest.raises(KeyboardInterrupt):
        build_part(str(out), 1, 3, progress=False)
    monkeypatch.setattr(shards_mod.ShardWriter, "_finish_shard", real_finish)
    with pytest.raises(BuildError) as e:
        merge(str(out))
    msg = str(e.value)
    assert "2 of its 3 parts are not ready" in msg and "nothing was written" in msg
    assert "part 1 is unfinished (2 of its shards done" in msg
    assert f"sonostream build --out {out} --part 1 --parts 3`" in msg
    assert "part 2 was never built" in msg and "part 0" not in msg
    assert not {fmt.INDEX_FILE, fmt.MANIFEST_FILE, fmt.REJECTS_FILE} & set(os.listdir(out))
    resumed = build_part(str(out), 1, 3, progress=False)
    assert resumed.reused_shards == 2
    build_part(str(out), 2, 3, progress=False)
    merge(str(out))
    assert _tree(out) == _tree(tmp_path / "clean")


def test_merge_refuses_a_part_whose_shard_went_missing(one_machine, tmp_path):
    _, csv_path = one_machine
    _plan_and_parts(csv_path, tmp_path / "ds", 2)
    victim = sorted((tmp_path / "ds" / fmt.SHARDS_DIR).glob("*-p001-*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:512])
    with pytest.raises(BuildError, match=rf"part 1: shard {victim.name} .* --overwrite"):
        merge(str(tmp_path / "ds"))
    build_part(str(tmp_path / "ds"), 1, 2, overwrite=True, progress=False)
    merge(str(tmp_path / "ds"))
    assert verify(str(tmp_path / "ds"), progress=False) == []


def test_a_part_of_another_plan_is_refused(one_machine, tmp_path):
    _, csv_path = one_machine
    out, other = tmp_path / "ds", tmp_path / "other"
    plan_parts(str(csv_path), str(out), OPTS, 2)
    build_part(str(out), 0, 2, progress=False)
    plan_parts(str(csv_path), str(other), BuildOptions(**{**OPTS.__dict__, "seed": 2}), 2)
    shutil.rmtree(out / fmt.WORK_DIR / "plan")   # someone swaps in another plan
    shutil.copytree(other / fmt.WORK_DIR / "plan", out / fmt.WORK_DIR / "plan")
    with pytest.raises(BuildError, match="part 0 .* was started from another plan .*--overwrite"):
        build_part(str(out), 0, 2, progress=False)
    build_part(str(out), 1, 2, progress=False)
    with pytest.raises(BuildError, match="part 0 was built from another plan: rebuild it with "
                                         r"`sonostream build .* --part 0 --parts 2 --overwrite`"):
        merge(str(out))
    build_part(str(out), 0, 2, overwrite=True, progress=False)
    merge(str(out))
    assert verify(str(out), progress=False) == []


def test_plan_refuses_another_plan_and_wrong_part_numbers(one_machine, tmp_path):
    _, csv_path = one_machine
    out = tmp_path / "ds"
    assert not plan_parts(str(csv_path), str(out), OPTS, 2).unchanged
    assert plan_parts(str(csv_path), str(out), OPTS, 2).unchanged
    with pytest.raises(BuildError, match="holds a plan of another CSV, other options or another "
                                         "--parts"):
        plan_parts(str(csv_path), str(out), OPTS, 3)
    with pytest.raises(BuildError, match="splits the build into 2 parts, not 3"):
        build_part(str(out), 0, 3, progress=False)
    with pytest.raises(BuildError, match=r"--part 2 is not a part .* 0\.\.1"):
        build_part(str(out), 2, 2, progress=False)
    with pytest.raises(BuildError, match="holds a plan of a build split into parts"):
        build(str(csv_path), str(out), OPTS, progress=False)
    with pytest.raises(BuildError, match="has no build plan"):
        build_part(str(tmp_path / "empty"), 0, 2, progress=False)


def test_parts_are_balanced_by_frames_and_deterministic():
    sizes = [1, 5, 3, 2, 3, 2]
    videos = [Video("p", f"v{i}", f"p__v{i}", "train", frames=[None] * n)
              for i, n in enumerate(sizes)]
    groups = assign_parts(videos, 2)
    # largest first into the lighter part: v1(5)->0, v2(3)->1, v4(3)->1, v3(2)->0, v5(2)->1,
    # v0(1)->0; each part's videos in plan order
    assert groups == [[0, 1, 3], [2, 4, 5]]
    assert [sum(sizes[i] for i in g) for g in groups] == [8, 8]
    assert assign_parts(videos, 2) == groups and sorted(sum(assign_parts(videos, 4), [])) == list(range(6))


@pytest.mark.parametrize("argv, message", [
    (["--out", "D"], "--csv is required"),
    (["--out", "D", "--plan", "--parts", "2"], "--plan needs --csv"),
    (["--out", "D", "--csv", "F", "--plan"], "--plan needs --parts N"),
    (["--out", "D", "--part", "0"], "--part needs --parts N"),
    (["--out", "D", "--csv", "F", "--part", "0", "--parts", "2"], "drop --csv"),
    (["--out", "D", "--merge", "--image-size", "128"], "--image-size: build options are fixed by "
                                                       "the plan"),
    (["--out", "D", "--merge", "--parts", "2"], "drop --parts"),
    (["--out", "D", "--csv", "F", "--parts", "2"], "--parts goes with --plan or --part"),
])
def test_cli_refuses_wrong_combinations(argv, message, capsys):
    assert main(["build", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_two_modes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--out", "D", "--plan", "--merge"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_merge_of_a_finished_part_dir_reads_the_plan_not_the_folder(one_machine, tmp_path):
    """A stray shard of a part the plan does not have is not merged (and verify names it)."""
    _, csv_path = one_machine
    out = tmp_path / "ds"
    _plan_and_parts(csv_path, out, 2)
    stray = out / fmt.SHARDS_DIR / fmt.shard_name("train", 0, part=7)
    stray.write_bytes(b"\0" * 1024)
    merge(str(out))
    assert stray.name not in pq.read_table(out / fmt.INDEX_FILE)["shard"].to_pylist()
    assert verify(str(out), progress=False) == [f"{stray.name}: shard on disk but not in the "
                                                "manifest"]


def test_a_part_resuming_leaves_the_files_of_a_part_being_written_alone(one_machine, tmp_path):
    """Part 0 (re)starting cleans up only its own leftovers: part 1's open temp file and its
    shard renamed but not yet marked finished are another live process's work."""
    _, csv_path = one_machine
    out = tmp_path / "ds"
    plan_parts(str(csv_path), str(out), OPTS, 2)
    sdir = out / fmt.SHARDS_DIR
    sdir.mkdir(parents=True)
    theirs = [sdir / ".train-p001-000000.tar.tmp-999", sdir / "train-p001-000005.tar",
              sdir / "train-p001-000005.idx", sdir / ".train-p001-000005.idx.tmp-abc"]
    mine = [sdir / ".train-p000-000009.tar.tmp-1", sdir / "train-p000-000009.tar"]
    for p in theirs + mine:
        p.write_bytes(b"x")
    build_part(str(out), 0, 2, progress=False)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in mine)
