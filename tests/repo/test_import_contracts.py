"""The one dependency rule holds (``lint-imports`` with pyproject.toml's contracts), and the
contracts do catch what they are for: each planted import below breaks one."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}   # ahead of the editable install's finder
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tree")
    for name in ("preprocessing", "pipeline"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst)
    return dst


PLANTED = [
    # (file, line added, contract that must break)
    ("preprocessing/format/contract.py", "import pipeline.data", "preprocessing never imports pipeline"),
    ("preprocessing/format/geometry.py", "from preprocessing import atomic",
     "preprocessing: format (the contract) at the bottom"),
    ("preprocessing/build.py", "from preprocessing import cli", "preprocessing: format"),
    ("pipeline/data/index.py", "from pipeline.eval import hc", "pipeline layers"),
    ("pipeline/apps/report.py", "import pipeline.cli.console", "pipeline layers"),
    ("pipeline/eval/cine/outputs.py", "from . import run", "no import cycles"),
]


@pytest.mark.parametrize("path,line,contract", PLANTED)
def test_a_planted_import_breaks_its_contract(copy, path, line, contract):
    target = copy / path
    original = target.read_text()
    target.write_text(original + f"\n{line}  # planted\n")
    try:
        r = lint(copy)
    finally:
        target.write_text(original)
    assert r.returncode != 0, f"{line!r} in {path} broke no contract:\n{r.stdout[-3000:]}"
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), r.stdout[-3000:]
