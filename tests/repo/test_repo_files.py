"""The files a newcomer and a cluster rely on say what the code does (no Docker engine here)."""
import re
import tomllib
from pathlib import Path

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
    assert tag and tag != "latest" and re.match(r"\d+\.\d+", tag), base
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert image == "python" and tag.startswith(floor.lstrip(">=").strip() + "-"), (base, floor)
    copied = {p for s in steps if s.startswith("COPY ") for p in s.split()[1:-1]}
    packages = {"preprocessing", "pipeline"}
    assert packages | {"pyproject.toml", "README.md", "launch"} <= copied
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in included} == packages
    installs = [s for s in steps if s.startswith("RUN ") and "pip install" in s]
    # every version comes from the file the tests ran on, none is pinned here
    assert installs and all(s.count("pip install") == s.count("-c launch/constraints.txt")
                            for s in installs), installs
    assert not [s for s in installs if "==" in s]
    assert "launch/constraints.txt" in copied and "nvidia-dali-cuda130" in " ".join(installs)
    (torch,) = [s for s in installs if re.search(r"\btorch\b", s)]
    assert "download.pytorch.org/whl/cu130" in torch   # the +cu130 build the tests ran on
    assert any(re.search(r"""\s["']?\.(\[[\w,]+\])?["']?(\s|$)""", s) for s in installs)  # the project
    (entry,) = [s for s in steps if s.startswith("ENTRYPOINT")]
    assert "launch/entrypoint.sh" in entry


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
