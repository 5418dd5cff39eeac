"""A disk that fills up (ENOSPC) during a build or an import is a message naming the folder,
the space free and needed, and the fix; the partial writes are gone, and a build's rerun
continues after its finished shards. So does a build whose encode worker is killed (the OOM
killer's SIGKILL): the rows it was encoding and the fix are named."""
import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from factories import write_frames
from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing import shards as shards_mod
from preprocessing.build import BuildError, BuildOptions, build
from preprocessing.format import SonostreamError
from preprocessing.importers.common import ImportWriter
from preprocessing.importers.parallel import run_items
from preprocessing.verify import verify

OPTS = BuildOptions(image_size=64, shard_size_mb=0.03, val_fraction=0, test_fraction=0)


def enospc(path=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


def fail_on_call(monkeypatch, owner, name, n, suffix=""):
    """``owner.name`` raises ENOSPC on its n-th call (of a path ending in ``suffix``), having
    written nothing of that call."""
    real, calls = getattr(owner, name), {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += str(a[0]).endswith(suffix)
        if calls["n"] == n and str(a[0]).endswith(suffix):
            raise enospc(a[0] if a and isinstance(a[0], (str, Path)) else None)
        return real(*a, **k)
    monkeypatch.setattr(owner, name, wrapped)


def leftovers(out: Path) -> list:
    """Temporary files, and shards (or DALI indexes) without the marker of a finished shard."""
    marked = {p.stem for p in (out / fmt.WORK_DIR / "parts").glob("*.json")}
    tmp = [p for p in out.rglob(".*.tmp-*")]
    orphans = [p for p in (out / fmt.SHARDS_DIR).glob("*.tar") if p.name not in marked]
    indexes = {fmt.dali_index_name(m) for m in marked}
    orphans += [p for p in (out / fmt.SHARDS_DIR).glob("*.idx") if p.name not in indexes]
    return tmp + orphans


@pytest.mark.parametrize("where", ["tar", "dali index"])
def test_a_full_disk_mid_build_is_named_cleaned_up_and_the_rerun_continues(tmp_path, monkeypatch,
                                                                           where):
    src = write_frames(tmp_path / "src", patients=4, videos=2, frames=6)
    out = tmp_path / "ds"
    if where == "tar":       # the open shard's tar
        fail_on_call(monkeypatch, shards_mod._HashingFile, "write", 30)
    else:                    # after the third tar was renamed, before its index and marker
        fail_on_call(monkeypatch, shards_mod.atomic, "write_bytes", 3, suffix=".idx")
    with pytest.raises(BuildError) as e:
        build(str(src), str(out), OPTS, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"no space left on the device (or the disk quota is used up) writing "
                          f"the dataset's shards in {out} ("), msg
    m = re.search(r" free on its file system; about [\d,]+ kB needed\); the unfinished shard "
                  r"was removed. Free space there and rerun the same command \(the (\d+) "
                  r"finished shards \([\d,]+ kB\) are kept and the build continues after them\), "
                  r"or build into another --out$", msg)
    assert m and int(m.group(1)) >= 2, msg
    assert leftovers(out) == [] and not (out / fmt.INDEX_FILE).exists()
    monkeypatch.undo()
    r = build(str(src), str(out), OPTS, progress=False)
    assert r.reused_shards == int(m.group(1)) and r.frames == 48 and verify(str(out), progress=False) == []


def test_the_cli_says_it_with_exit_2(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    src = write_frames(tmp_path / "src", patients=1, videos=1, frames=2, shape=(32, 32))
    fail_on_call(monkeypatch, shards_mod._HashingFile, "write", 1)
    assert main(["build", "--csv", str(src), "--out", str(tmp_path / "ds"), "--image-size", "32",
                 "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on the device (or the disk quota is used up) "
                          f"writing the dataset's shards in {tmp_path / 'ds'}"), err
    assert "it starts from the first shard again" in err and "Traceback" not in err


def test_an_unguarded_write_is_still_a_message(tmp_path, capsys):
    from pipeline.cli.common import guarded

    def command():
        raise enospc(tmp_path / "out" / "report.md")
    assert guarded(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on the device (or the disk quota is used up) "
                          f"writing report.md in {tmp_path / 'out'} (") and "--out" in err, err


def _two_frames(writer, item):   # an importer's per-file function: one video of two frames
    writer.start_video(item, "v", item)
    for f in range(2):
        writer.add_frame(item, "v", f, np.full((8, 8), 10 * f, np.uint8))


def _import(out):
    with ImportWriter(str(out), "test") as w:
        run_items(w, [(item, _two_frames, (item,)) for item in ("a", "b", "c")], progress=False)
        return w.finish()


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_full_disk_stops_an_import_keeps_what_it_committed_and_the_rerun_continues(
        tmp_path, monkeypatch):
    out = tmp_path / "imp"
    with monkeypatch.context() as m:
        fail_on_call(m, atomic, "write_staged", 4, suffix=".png")   # item b's 2nd frame fails
        with pytest.raises(SonostreamError) as e:
            _import(out)
    assert str(e.value).startswith(f"no space left on the device (or the disk quota is used up) "
                                   f"writing the imported frames in {out} (")
    assert "the inputs committed so far (1) are kept" in str(e.value)
    assert "rerun the same command to continue" in str(e.value)
    # Item a (committed) is kept with the resume state; nothing of b, no CSV, no temporary file.
    assert sorted(_files(out)) == [".import/fingerprint.json", ".import/journal.jsonl",
                                   "frames/a__v/000000.png", "frames/a__v/000001.png"]
    result = _import(out)        # space again: the rerun continues after item a
    assert (result.frames, result.inputs, result.rejects) == (6, 3, [])
    _import(tmp_path / "whole")
    assert _files(out) == _files(tmp_path / "whole")


def test_only_a_lack_of_space_counts(tmp_path, monkeypatch):
    assert atomic.out_of_space(enospc()) and atomic.out_of_space(OSError(errno.EDQUOT, "quota"))
    assert atomic.out_of_space(RuntimeError("I/O error: No space left on device (os error 28)"))
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not atomic.out_of_space(torch_says, tmp_path)          # plenty of space here
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1000)
    assert atomic.out_of_space(torch_says, tmp_path)               # none left: that was it
    assert not atomic.out_of_space(OSError(errno.EACCES, "denied"))


def test_a_killed_encode_worker_names_the_rows_and_the_rerun_continues(tmp_path, monkeypatch):
    import dying_worker
    import preprocessing.build as build_mod
    src = write_frames(tmp_path / "src", patients=4, videos=2, frames=6)
    out = tmp_path / "ds"
    monkeypatch.setattr(build_mod, "SEGMENT_FRAMES", 2)   # small tasks: several in flight
    monkeypatch.setattr(build_mod, "encode_segment", dying_worker.encode_or_die)
    with pytest.raises(BuildError) as e:
        build(str(src), str(out), OPTS, workers=2, progress=False)
    msg = str(e.value)
    assert msg.startswith("a build worker process died while encoding, most likely killed by "
                          "the kernel's out-of-memory killer"), msg
    assert re.search(rf"the CSV rows being encoded were among: .*2 frames from line \d+ "
                     rf"{dying_worker.PLANTED} to line \d+ img/p001/v1/3.png", msg), msg
    assert ("The finished shards are kept: rerun the same command with fewer --workers (now 2) "
            "or a lower --max-pixels (now 50000000) to continue after them") in msg
    assert leftovers(out) == [] and not (out / fmt.INDEX_FILE).exists()
    kept = len(list((out / fmt.SHARDS_DIR).glob("*.tar")))
    monkeypatch.setattr(build_mod, "encode_segment", dying_worker.encode_segment)
    r = build(str(src), str(out), OPTS, workers=1, progress=False)
    assert r.reused_shards == kept and r.frames == 48 and verify(str(out), progress=False) == []
