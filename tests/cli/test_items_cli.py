"""``coalition items``: register files, upload them with a progress bar, list them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coalition.client import item_id
from tests.cli.access_cli_helpers import add_items, files, joined
from tests.cli.helpers import Cli, json_out


async def test_items_add_registers_and_uploads(cli: Cli, tmp_path: Path) -> None:
    key_path, key = await joined(cli, tmp_path, "contributor", "Ada")
    contents = {"poem.txt": b"roses are red\n" * 100, "data.bin": bytes(3 * 1024 * 1024 + 5)}
    paths = files(tmp_path / "src", contents)
    out = await add_items(cli, key_path, paths, "--tag", "poems")
    assert [o["path"] for o in out] == [str(p) for p in paths]
    for entry, data in zip(out, contents.values(), strict=True):
        assert entry["item_id"] == item_id(key.key_id, hashlib.sha256(data).digest())
        assert entry["commitment"] == hashlib.sha256(data).hexdigest()
        assert entry["size_bytes"] == len(data)
        assert entry["state"] == "stored"
        assert entry["registered_now"] is True
        assert entry["uploaded_now"] is True
        assert entry["tags"] == ["poems"]
        receipt = entry["receipt"]
        assert isinstance(receipt, dict)
        assert receipt["verified"] is True
        assert receipt["index"] == entry["registration_index"]
    assert out[0]["media_type"] == "text/plain"
    assert out[1]["media_type"] == "application/octet-stream"

    listed = await cli("items", "list", "--json", key=key_path)
    assert listed.exit_code == 0, listed.output
    assert [(i["item_id"], i["state"]) for i in json_out(listed)] == [
        (o["item_id"], "stored") for o in out
    ]
    text = await cli("items", "list", key=key_path)
    assert text.exit_code == 0, text.output
    assert str(out[0]["item_id"]) in text.stdout
    assert "stored" in text.stdout


async def test_items_add_no_upload_keeps_the_content(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    (path,) = files(tmp_path / "src", {"secret.txt": b"mine only"})
    (entry,) = await add_items(cli, key_path, [path], "--no-upload")
    assert entry["state"] == "registered"
    assert entry["uploaded_now"] is False
    # Adding it again uploads it, without registering it again.
    (again,) = await add_items(cli, key_path, [path])
    assert again["item_id"] == entry["item_id"]
    assert (again["registered_now"], again["uploaded_now"]) == (False, True)
    assert again["receipt"] is None
    assert again["state"] == "stored"
    (third,) = await add_items(cli, key_path, [path])
    assert (third["registered_now"], third["uploaded_now"], third["state"]) == (
        False,
        False,
        "stored",
    )


async def test_items_add_shows_a_progress_bar(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    (path,) = files(tmp_path / "src", {"big.bin": bytes(2 * 1024 * 1024)})
    result = await cli("items", "add", str(path), "--progress", key=key_path)
    assert result.exit_code == 0, result.output
    assert "uploading" in result.stderr
    assert "100%" in result.stderr
    assert "stored" in result.stdout


async def test_items_add_text_output_and_errors(cli: Cli, tmp_path: Path) -> None:
    key_path, _ = await joined(cli, tmp_path, "contributor", "Ada")
    (path,) = files(tmp_path / "src", {"a.txt": b"a"})
    result = await cli("items", "add", str(path), key=key_path)
    assert result.exit_code == 0, result.output
    assert "stored" in result.stdout
    # The same content again is the same item: nothing new is registered.
    copy = tmp_path / "src" / "copy.txt"
    copy.write_bytes(b"a")
    again = await cli("items", "add", str(path), str(copy), key=key_path)
    assert again.exit_code == 0, again.output
    assert "stored (before)" in again.stdout
    assert "copy.txt" not in again.stdout
    # A lab cannot register items.
    lab_path, _ = await joined(cli, tmp_path, "lab", "Lab")
    refused = await cli("items", "add", str(path), key=lab_path)
    assert refused.exit_code == 1
    assert "ROLE_NOT_ALLOWED" in refused.stderr
    # No key at all: cannot run.
    missing = await cli("items", "list")
    assert missing.exit_code == 2
