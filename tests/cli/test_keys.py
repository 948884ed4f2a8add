"""``coalition keys``: new key files (0600, never overwritten) and showing public parts."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from coalition.keys import SigningKey
from tests.cli.helpers import invoke, json_out


def test_keys_new_writes_an_owner_only_key_and_prints_its_id(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    result = invoke("keys", "new", str(path))
    assert result.exit_code == 0, result.output
    key = SigningKey.load(path)
    assert result.stdout.strip() == key.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "keep it secret" in result.stderr


def test_keys_new_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    assert invoke("keys", "new", str(path)).exit_code == 0
    before = path.read_bytes()
    result = invoke("keys", "new", str(path))
    assert result.exit_code == 1
    assert result.stderr == f"error: {path} already exists: refusing to overwrite a key\n"
    assert path.read_bytes() == before


def test_keys_new_json(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    result = invoke("keys", "new", str(path), "--json")
    assert result.exit_code == 0
    assert json_out(result) == {"key_id": SigningKey.load(path).key_id, "path": str(path)}


def test_keys_new_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    result = invoke("keys", "new", str(tmp_path / "nope" / "me.key"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write ")


def test_keys_show_prints_public_parts_only(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    key = SigningKey.generate()
    key.save(path)
    seed_b64 = base64.b64encode(key.private_bytes_raw()).decode()
    for args in (["keys", "show", str(path)], ["--key", str(path), "keys", "show"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert key.key_id in result.stdout
        assert base64.b64encode(key.public_key.raw).decode() in result.stdout
        assert base64.b64encode(key.encryption_public_key_raw()).decode() in result.stdout
        assert seed_b64 not in result.output
        assert key.private_bytes_raw().hex() not in result.output
    data = json_out(invoke("keys", "show", str(path), "--json"))
    assert data == {
        "key_id": key.key_id,
        "public_key": base64.b64encode(key.public_key.raw).decode(),
        "encryption_public_key": base64.b64encode(key.encryption_public_key_raw()).decode(),
    }


def test_keys_show_warns_about_a_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    SigningKey.generate().save(path)
    path.chmod(0o644)
    result = invoke("keys", "show", str(path))
    assert result.exit_code == 0
    assert "readable by other users" in result.stderr


def test_keys_show_needs_a_key(tmp_path: Path) -> None:
    result = invoke("keys", "show")
    assert result.exit_code == 2
    assert "needs a key" in result.stderr
    result = invoke("keys", "show", str(tmp_path / "missing.key"))
    assert result.exit_code == 2
    assert "no key file at" in result.stderr
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    result = invoke("keys", "show", str(garbage))
    assert result.exit_code == 2
    assert "cannot load key" in result.stderr


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("coalition ")
