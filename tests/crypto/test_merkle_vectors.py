"""Every RFC 6962 proof vector from transparency-dev/merkle must verify or fail as it says.

The vectors live outside the project, in ``<project root>/../shared/vectors/rfc6962`` (see
its README.md): ``inclusion/**.json`` and ``consistency/**.json``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from coalition.errors import ProofError
from coalition.merkle import verify_consistency, verify_inclusion

VECTORS = Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "rfc6962"
# Guard against a silently empty or truncated vector directory (there are 196 files).
MIN_VECTOR_FILES = 150


def _files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


def _id(path: Path) -> str:
    return path.relative_to(VECTORS).as_posix()


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def _skip_if_missing() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"RFC 6962 vector directory {VECTORS.resolve()} not found")


def test_vector_files_are_present() -> None:
    _skip_if_missing()
    assert len(INCLUSION) + len(CONSISTENCY) >= MIN_VECTOR_FILES
    assert INCLUSION
    assert CONSISTENCY


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    v = _load(path)
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    v = _load(path)
    args = (v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]), _proof(v["proof"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
