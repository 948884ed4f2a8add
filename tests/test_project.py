"""Project-level checks: generated code, README/CI entry points, Makefile."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_generate_protos() -> ModuleType:
    path = ROOT / "scripts" / "generate_protos.py"
    spec = importlib.util.spec_from_file_location("_coalition_generate_protos", path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    # The generator prepends the interpreter's bin directory to PATH; keep that local to this test.
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    generate_protos = _load_generate_protos()
    stale: list[str] = generate_protos.stale_files()
    assert stale == [], f"stale generated files {stale}: run `make generate` and commit the result"


# docker-compose.yml, the Dockerfile and deploy/: tests/test_compose.py


# --- README, CI and Makefile -----------------------------------------------------------------


SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "zsh"}


def _readme_commands(markdown: str) -> list[str]:
    """Shell commands in fenced blocks: every line of a sh/bash/console block, and `make`
    or `$ ` lines of any other block (a `text` block such as the layout tree is not commands)."""
    commands: list[str] = []
    language: str | None = None
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip().lower() or "")
            continue
        if language is None:
            continue
        is_prompt = line.startswith(("$ ", "make "))
        if language in SHELL_LANGUAGES or is_prompt:
            command = line.removeprefix("$ ").split("#", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def _section(markdown: str, heading: str) -> str:
    """The text of one `## heading` section."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match is not None, f"README has no '## {heading}' section"
    return match.group(1)


def test_readme_gives_exactly_two_commands() -> None:
    # The new user's set-up is exactly two commands; the role guides come after it.
    readme = (ROOT / "README.md").read_text()
    quick_start = _section(readme, "Quick start")
    assert _readme_commands(quick_start) == ["make serve", "make test"]
    assert readme.index("## Quick start") < readme.index("## Using it, by role")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    code = [line.split("#", 1)[0] for line in ci.splitlines()]
    assert any(re.search(r"\bmake test\s*$", line) for line in code)
    assert any("COALITION_REQUIRE_PG=1" in line for line in code)
    assert any("COALITION_TEST_PG_URL=" in line for line in code)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_runs_the_whole_suite() -> None:
    # A dry run prints the recipe without running it (nothing is installed or executed).
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", "--no-print-directory", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTEST_ARGS": ""},
    )
    lines = result.stdout.splitlines()
    runs = [
        run
        for line in lines
        for run in re.split(r"&&|;", line)
        if re.search(r"(^|[/\s])pytest(\s|$)", run)
    ]
    assert runs, result.stdout
    # Every test runs: one pytest without a marker filter, or the fast tests and then the slow.
    filters = sorted(
        match.group(1) for run in runs if (match := re.search(r"-m ('[^']*'|\"[^\"]*\"|\S+)", run))
    )
    assert filters in ([], ['"not slow"', "slow"]), runs
    if filters:
        assert len(runs) == 2, runs
    for step in ("generate_protos.py --check", "ruff check", "ruff format --check", "mypy"):
        assert any(step in line for line in lines), (step, result.stdout)


def test_wheels_carry_the_migrations() -> None:
    # The Docker image installs a wheel: Alembic's env.py, template and revisions must be in it.
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["coalition_server"]
    package = ROOT / "server" / "coalition_server"
    files = [
        path.relative_to(package).as_posix()
        for path in (package / "store" / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert missing == [], f"add these to [tool.setuptools.package-data] coalition_server: {missing}"
