"""The version sets CI installs: the floors come from pyproject.toml, not a hand copy, and the
tested set (constraints.txt) pins every package the project asks for."""

import subprocess
import sys

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import PROJECT_ROOT


def test_floors_are_each_lower_bound_of_pyproject_pinned():
    printed = subprocess.run(
        [sys.executable, ".ci/versions.py", "floors"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    floors = {canonicalize_name(Requirement(line).name): Requirement(line) for line in printed}
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, declared["dependencies"]):
        floor = floors[canonicalize_name(requirement.name)]
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert str(floor.specifier) == (f"=={lower[0]}" if lower else str(requirement.specifier))
        assert floor.marker == requirement.marker


def test_the_tested_set_pins_every_package_the_project_asks_for():
    pinned = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    asked = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    for requirement in map(Requirement, asked):
        name = canonicalize_name(requirement.name)
        if name != "alexnet-pl":
            assert name in pinned, f"{name} is not in constraints.txt"
            assert requirement.specifier.contains(pinned[name]), (name, pinned[name])
