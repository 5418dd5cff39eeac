"""What pyproject.toml and launch/constraints.txt say about installing is true of the packages
the suite runs on (their own metadata), so a newcomer's install fails nowhere we could know of."""
import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "launch" / "constraints.txt"


def _floor(spec: str) -> Version:
    (floor,) = [Version(s.version) for s in SpecifierSet(spec) if s.operator == ">="]
    return floor


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{CONSTRAINTS}: {line!r} is not name==version"
            pins[name.strip()] = version.strip()
    return pins


def test_requires_python_is_no_lower_than_any_dependency_needs():
    ours = _floor(PYPROJECT["project"]["requires-python"])
    names = [Requirement(r).name for r in PYPROJECT["project"]["dependencies"]]
    names += [Requirement(r).name for extra in PYPROJECT["project"]["optional-dependencies"].values()
              for r in extra if Requirement(r).name != "sonostream"]
    too_low = {}
    for name in names:
        try:
            needs = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:
            continue
        if needs and any(s.operator == ">=" for s in SpecifierSet(needs)) and _floor(needs) > ours:
            too_low[name] = needs
    assert not too_low, f"requires-python {ours} but these need more: {too_low}"


def test_setuptools_floor_reads_the_license_field():
    # a license given as an SPDX string (PEP 639) is refused by setuptools < 77
    if isinstance(PYPROJECT["project"].get("license"), str):
        (req,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
        assert req.name == "setuptools" and _floor(str(req.specifier)) >= Version("77")


def test_the_suite_runs_on_the_pinned_versions():
    pins = _pins()
    assert {"torch", "torchvision", "accelerate", "nvidia-dali-cuda130", "deepspeed"} <= set(pins)
    wrong = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue   # e.g. DALI or DeepSpeed where the platform has none
        if Version(installed).public != Version(version).public:
            wrong[name] = f"{installed} installed, {version} pinned"
    assert not wrong, wrong


def test_the_driver_requirement_is_stated_where_users_read():
    readme = (ROOT / "README.md").read_text()
    for text in (readme, (ROOT / "Dockerfile").read_text(), CONSTRAINTS.read_text()):
        assert re.search(r"driver >= ?580|driver ≥ ?580", text)
