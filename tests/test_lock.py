"""requirements/lock.txt satisfies pyproject.toml, docs/security.md's floors are its, and
the app image installs from requirements/app.txt, its runtime subset."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKED_EXTRAS = ("test", "faust")
"""The extras `make lock` resolves (bench is installed on top, unlocked)."""


def hashed(name: str = "lock.txt") -> dict[str, tuple[Version, frozenset[str]]]:
    """name → (version, hashes) of every pin in requirements/`name`."""
    text = (ROOT / "requirements" / name).read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
            pins[canonicalize_name(match[1])] = (Version(match[2]), hashes)
    return pins


def locked() -> dict[str, tuple[Version, int]]:
    """name → (version, number of hashes) of every pin in the lock."""
    return {name: (version, len(hashes)) for name, (version, hashes) in hashed().items()}


def requirements(*, extras: tuple[str, ...]) -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def test_the_lock_pins_every_requirement_within_its_range_with_hashes() -> None:
    pins = locked()
    assert len(pins) > 40
    for requirement in requirements(extras=LOCKED_EXTRAS):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in the lock: run `make lock`"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock has {name}=={version}, pyproject.toml wants {requirement.specifier}: "
            "run `make lock`"
        )
        assert hashes >= 1, name
    assert all(hashes >= 1 for _, hashes in pins.values())


def test_the_documented_floors_are_the_projects() -> None:
    """Every row of docs/security.md's floors table is a floor in pyproject.toml."""
    doc = (ROOT / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)`(?: \(build\))? \| ([0-9.]+) \|", doc, re.MULTILINE)
    assert len(rows) >= 15
    declared = requirements(extras=(*LOCKED_EXTRAS, "bench")) + [
        Requirement(r) for r in PYPROJECT["build-system"]["requires"]
    ]
    floors = {
        canonicalize_name(r.name): {Version(s.version) for s in r.specifier if s.operator == ">="}
        for r in declared
    }
    for name, floor in rows:
        assert Version(floor) in floors.get(canonicalize_name(name), set()), (
            f"docs/security.md says {name} >= {floor}; pyproject.toml does not"
        )
    for must in ("h11", "starlette"):
        assert must in {name for name, _ in rows}


APP_DOCKERFILE = ROOT / "deploy" / "images" / "app" / "Dockerfile"


def test_the_app_lock_is_the_runtime_subset_of_the_lock() -> None:
    """requirements/app.txt: what the image needs, at the lock's versions and hashes."""
    full, app = hashed(), hashed("app.txt")
    assert len(app) > 30
    for name, pin in app.items():
        assert full.get(name) == pin, f"{name}: app.txt differs from lock.txt; run `make lock`"
        assert pin[1], name
    for requirement in requirements(extras=("faust",)):
        assert canonicalize_name(requirement.name) in app, requirement.name
    for tool in ("pytest", "hypothesis", "mypy", "ruff", "playwright", "testcontainers"):
        assert tool not in app, f"{tool} (a test tool) would go into the image"


def test_the_app_image_installs_from_the_app_lock_only() -> None:
    dockerfile = APP_DOCKERFILE.read_text()
    commands = re.sub(r"\\\n", " ", dockerfile).splitlines()
    runs = " && ".join(line for line in commands if line.startswith("RUN"))
    installs = [m.strip() for m in re.findall(r"pip install ([^&]+)", runs)]
    # The project itself: its wheel, built (with nothing else) in the Dockerfile's first stage.
    assert installs == [
        "--require-hashes -r requirements/app.txt",
        "--no-deps /tmp/wheels/*.whl",
    ], installs
    wheels = [m.strip() for m in re.findall(r"pip wheel ([^&]+)", runs)]
    assert wheels == ["-q --no-deps --wheel-dir /wheels ."], wheels
    assert "pip check" in runs
    assert "COPY requirements/app.txt ./requirements/" in dockerfile
