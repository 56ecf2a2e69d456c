"""The Dockerfile: hadolint-clean, multi-stage, non-root numeric user matching the chart, `taskproc` entrypoint;
installs the runtime lock and then the package without extras; the build context (.dockerignore) holds what the
build stage installs; the wheel carries the migrations."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import CHART, ROOT, venv_tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [venv_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_catches_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n", encoding="utf-8")
    proc = subprocess.run([venv_tool("hadolint"), str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout


def test_image_shape() -> None:
    ins = instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith("AS build")
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    final_text = " ".join(a for _, a in final)
    for compiler in ("gcc", "build-essential", "apt-get install"):
        assert compiler not in final_text, f"final stage installs {compiler}"
    assert ("COPY", "--from=build /opt/taskproc /opt/taskproc") in final
    user = [a for w, a in final if w == "USER"]
    assert user == ["10001:10001"]
    assert [a for w, a in final if w == "ENTRYPOINT"] == ['["taskproc"]']
    env = " ".join(a for w, a in final if w == "ENV")
    assert "TMPDIR=/tmp" in env
    assert "HOME=/tmp" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHON_IMAGE" in froms[0]
    arg = next(a for w, a in ins if w == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert "-slim" in arg


def test_chart_runs_as_the_image_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["securityContext"]["runAsUser"] == 10001
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert values["securityContext"]["runAsGroup"] == 10001


def test_dockerignore_allows_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied |= {a.rstrip("/") for a in args.split()[:-1]}
    assert copied == allowed == {"pyproject.toml", "README.md", "src", "requirements/runtime.txt"}


def test_build_installs_the_runtime_lock_then_the_package_without_dependencies_or_extras() -> None:
    """Reproducible: the pinned, hash-checked versions of requirements/runtime.txt, and taskproc itself with
    --no-deps, so pip resolves nothing on its own; no extras, so the embedded servers stay out."""
    ins = instructions()
    final_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    installs = [
        cmd.strip()
        for w, a in ins[:final_from]
        if w == "RUN"
        for cmd in a.split("&&")
        if re.search(r"\bpip install\b", cmd)
    ]
    assert len(installs) == 2, installs
    lock, package = installs
    assert "--require-hashes" in lock.split()
    assert lock.endswith("-r requirements/runtime.txt")
    assert package.split()[-2:] == ["--no-deps", "."]
    assert not any("[" in cmd for cmd in installs), installs


@pytest.mark.slow
def test_wheel_has_entrypoint_and_migrations(tmp_path: Path) -> None:
    """What the build stage installs: the taskproc wheel with its console script and alembic migrations."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("taskproc-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "taskproc = taskproc.cli:main" in zf.read(entry_points).decode()
    assert any(n.startswith("taskproc/migrations/") and n.endswith("env.py") for n in names), names
    assert any(n.startswith("taskproc/migrations/versions/") and n.endswith(".py") for n in names), names


def test_pip_index_settings_stay_in_the_build_stage() -> None:
    """scripts/image.sh passes the host's pip index settings as build arguments: only the build stage may
    declare them, so they (and any credentials in an index URL) never reach the final image."""
    ins = instructions()
    final_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    pip_args = [(i, a) for i, (w, a) in enumerate(ins) if w == "ARG" and a.startswith("PIP_")]
    assert {a for _, a in pip_args} == {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"}
    assert all(i < final_from for i, _ in pip_args)
