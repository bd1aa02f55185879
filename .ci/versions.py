"""The project's version sets, read from pyproject.toml and the installed packages.

    python .ci/versions.py floors   each `name>=X` of the dependencies as `name==X` (what .ci/floors
                                    installs: the oldest set pyproject.toml promises to run on)
    python .ci/versions.py freeze   every installed package that `pip install -e ".[test]"` needs,
                                    as `name==version` (writes constraints.txt: the tested set)
    python .ci/versions.py check    exit status 1 if an installed package of that set differs
                                    from constraints.txt (after the README's install command)
"""

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
EXTRAS = ("test",)  # the README installs .[test]
CONSTRAINTS = ROOT / "constraints.txt"
# The installer's own tools, left to the environment as `pip freeze` does (torch asks for a
# setuptools; a fresh virtual environment's older one is upgraded to meet it).
INSTALLER_TOOLS = {"pip", "setuptools", "wheel", "distribute"}


def applies(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**default_environment(), "extra": extra})


def project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The project's own requirements with `extras`, its self-references (alexnet-pl[...])
    expanded."""
    found = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == NAME:
                found += project_requirements(tuple(requirement.extras))
            else:
                found.append(requirement)
    return [requirement for requirement in found if applies(requirement)]


def floors() -> list[str]:
    pins = []
    for requirement in project_requirements(()):
        floor = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        marker = f"; {requirement.marker}" if requirement.marker else ""
        pins.append(f"{requirement.name}=={floor[0]}{marker}" if floor else str(requirement))
    return pins


def installed_closure() -> dict[str, str]:
    """{name: version} of the installed packages the project needs, its dependencies' too."""
    versions: dict[str, str] = {}
    pending = [(requirement, "") for requirement in project_requirements(EXTRAS)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement, _ = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is not installed; install the project first: pip install -e .[test]")
        if name not in INSTALLER_TOOLS:
            versions[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            if applies(child) or any(applies(child, extra) for extra in requirement.extras):
                pending.append((child, ""))
    return dict(sorted(versions.items()))


def main(command: str) -> int:
    if command == "floors":
        print("\n".join(floors()))
    elif command == "freeze":
        header = (
            "# The exact versions the suite passed with (python .ci/versions.py freeze, on Python\n"
            f"# {sys.version_info.major}.{sys.version_info.minor}, Linux x86_64). "
            'pip install -e ".[test]" -c constraints.txt installs\n'
            "# them; leave out `-c constraints.txt` for the newest releases pyproject.toml allows.\n"
        )
        pins = "".join(f"{name}=={version}\n" for name, version in installed_closure().items())
        CONSTRAINTS.write_text(header + pins)
        print(f"wrote {CONSTRAINTS}")
    elif command == "check":
        wanted = {}
        for line in CONSTRAINTS.read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==")
                wanted[canonicalize_name(name)] = version
        installed = installed_closure()
        wrong = {name: v for name, v in installed.items() if wanted.get(name) not in (v, None)}
        extra = sorted(set(installed) - set(wanted))
        for name, version in wrong.items():
            print(f"{name} {version} installed, constraints.txt says {wanted[name]}")
        for name in extra:
            print(f"{name} {installed[name]} installed, not in constraints.txt")
        if wrong or extra:
            return 1
        print(f"the {len(installed)} packages the project needs are the versions of constraints.txt")
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
