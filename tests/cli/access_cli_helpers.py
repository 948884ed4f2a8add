"""Helpers for the contributor, lab and compliance CLI tests: keys, parties and files."""

from __future__ import annotations

from pathlib import Path

from coalition.keys import SigningKey
from tests.cli.helpers import Cli, json_out


async def joined(cli: Cli, tmp_path: Path, role: str, name: str) -> tuple[Path, SigningKey]:
    """A new key saved under tmp_path and registered with ``role`` through the CLI."""
    path = tmp_path / f"{name.lower().replace(' ', '-')}.key"
    key = SigningKey.generate()
    key.save(path)
    result = await cli("join", "--role", role, "--name", name, key=path)
    assert result.exit_code == 0, result.output
    return path, key


def files(directory: Path, contents: dict[str, bytes]) -> list[Path]:
    """Write ``contents`` (name -> bytes) into ``directory``; the paths in order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contents.items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths


async def add_items(cli: Cli, key: Path, paths: list[Path], *extra: str) -> list[dict[str, object]]:
    """``coalition items add`` the files; the JSON output."""
    result = await cli("items", "add", *map(str, paths), *extra, "--json", key=key)
    assert result.exit_code == 0, result.output
    out: list[dict[str, object]] = json_out(result)
    return out


async def grant(cli: Cli, key: Path, *selector: str) -> str:
    """``coalition consent grant`` for train-ai at a purchase floor of $1; the consent id."""
    result = await cli(
        "consent",
        "grant",
        *selector,
        "--purpose",
        "train-ai",
        "--floor",
        "purchase=1.00",
        "--json",
        key=key,
    )
    assert result.exit_code == 0, result.output
    consent_id: str = json_out(result)["consent_id"]
    return consent_id
