"""Fixtures for the CLI tests: a clean environment and a CLI bound to the test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import Cli

ENV_VARS = (
    "COALITION_SERVER",
    "COALITION_KEY",
    "COALITION_TLS_CA",
    "COALITION_LOG_KEY",
    "COALITION_AUDIT_STATE",
    "COLUMNS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No COALITION_* settings leak in from the developer's shell; config under tmp_path."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def cli(target: str) -> Cli:
    """The CLI, pointed at the running test server."""
    return Cli(target)
