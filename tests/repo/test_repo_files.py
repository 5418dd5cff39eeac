"""The files a newcomer and a cluster rely on say what the code does (no Docker engine here)."""
import os
import re
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself needs 3.10

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    joined, cont = [], ""
    for line in lines:
        if not line or line.startswith("#"):
            continue
        cont += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(cont.strip())
            cont = ""
    return joined


def test_dockerfile_base_is_pinned_and_copies_what_it_installs():
    steps = _dockerfile()
    (base,) = [s.split()[1] for s in steps if s.startswith("FROM ")]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), base
    assert "cuda" in tag
    copied = {p for s in steps if s.startswith("COPY ") for p in s.split()[1:-1]}
    packages = {"preprocessing", "pipeline"}
    assert packages | {"pyproject.toml", "README.md", "launch"} <= copied
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in included} == packages
    installs = [s for s in steps if s.startswith("RUN ") and "pip install" in s]
    assert installs and any(re.search(r"accelerate==\d", s) for s in installs)
    assert any(re.search(r"\s\.(\s|$)", s) for s in installs)  # installs the project itself
    (entry,) = [s for s in steps if s.startswith("ENTRYPOINT")]
    assert "launch/entrypoint.sh" in entry


def test_entrypoint_routes_cli_and_accelerate(tmp_path):
    script = ROOT / "launch" / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("sonostream", "accelerate"):
        (fake / name).write_text(f"#!/bin/sh\necho {name} \"$@\"\n")
        (fake / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    run = lambda *a: subprocess.run([str(script), *a], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip()
    assert run("sonostream", "build", "--help") == "sonostream build --help"
    assert run("--num_processes", "8", "-m", "x") == "accelerate launch --num_processes 8 -m x"
    assert run() == "sonostream --help"


def test_readme_setup_is_the_two_make_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in setup.split("```bash", 1)[1].split("```")[0].splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_makefile_and_ci():
    make = (ROOT / "Makefile").read_text()
    for target in ("setup:", "demo: setup", "test: setup"):
        assert re.search(rf"^{re.escape(target)}", make, re.M), target
    assert "-m venv" in make and ".[dev]" in make
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_and_readme_commands_exist():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, func = pyproject["project"]["scripts"]["sonostream"].split(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))
    from pipeline.cli.console import COMMANDS
    used = set(re.findall(r"^\s*sonostream ([\w-]+)", (ROOT / "README.md").read_text(), re.M))
    used |= set(re.findall(r"sonostream ([\w-]+)", (ROOT / "Makefile").read_text()))
    assert used and used <= set(COMMANDS), used - set(COMMANDS)
