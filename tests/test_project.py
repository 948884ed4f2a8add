"""Project-level checks: generated code, docker-compose, README/CI entry points, Makefile."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

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


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


def _as_list(value: Any) -> list[str]:
    """A compose command/test/entrypoint, list or string form, as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    assert isinstance(value, list)
    return [str(v) for v in value]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, Any]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return deps


def test_compose_has_the_three_services(services: dict[str, Any]) -> None:
    assert {"postgres", "migrate", "server"} <= set(services)


def test_compose_postgres(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(_as_list(postgres["healthcheck"]["test"]))
    volumes = [str(v) for v in postgres.get("volumes", [])]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in volumes), volumes


def test_compose_migrate(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert "build" in migrate or "image" in migrate
    assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
    command = _as_list(migrate.get("command"))
    assert "migrate" in command
    db_url = command[command.index("--db") + 1]
    assert db_url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in db_url


def test_compose_server(services: dict[str, Any]) -> None:
    server = services["server"]
    assert "build" in server
    deps = _depends_on(server)
    assert deps["migrate"]["condition"] == "service_completed_successfully"

    command = _as_list(server.get("command"))
    assert command[command.index("--listen") + 1] == "0.0.0.0:50051"
    assert "--data-dir" in command
    db_url = command[command.index("--db") + 1]
    env = _environment(server)
    assert env["COALITION_DB_URL"] == db_url
    assert db_url.startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in db_url, "the server must reach the compose postgres service"

    ports = [str(p) for p in server.get("ports", [])]
    assert any(p.split(":")[-1] == "50051" for p in ports), ports

    health = " ".join(_as_list(server["healthcheck"]["test"]))
    assert "grpc_health" in health or "health" in command
    assert "127.0.0.1:50051" in health


def test_compose_migrate_and_server_share_the_server_image(services: dict[str, Any]) -> None:
    assert services["migrate"].get("image") == services["server"].get("image")


def test_dockerfile_runs_coalition_server() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11")
    entry = [line for line in instructions if line.startswith(("ENTRYPOINT", "CMD"))]
    assert any("coalition-server" in line for line in entry), entry
    assert any(line.startswith("USER ") and "root" not in line for line in instructions)
    assert "EXPOSE 50051" in instructions


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
    pytest_lines = [line for line in lines if re.search(r"(^|[/\s])pytest(\s|$)", line)]
    assert pytest_lines, result.stdout
    for line in pytest_lines:
        assert not re.search(r"\s-m\s*(?!pytest\b)\S", line), line
        assert "not slow" not in line, line
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
