"""Key-encryption keys: the file provider's wrapping, permissions and destruction."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coalition_server.keys.provider import (
    DEFAULT_RETENTION,
    DEK_SIZE,
    KEK_SIZE,
    FileKeyProvider,
    KeyNotFoundError,
    KeyProvider,
    KeyProviderError,
    RetentionPolicy,
    UnwrapError,
    WrappedKey,
)

OWNER = "c0ffee" * 10 + "abcd"  # a contributor key id (64 hex digits)
AD = b"item-1|contributor-1"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keks"


@pytest.fixture
def provider(directory: Path) -> FileKeyProvider:
    return FileKeyProvider(directory)


def kek_bytes(provider: FileKeyProvider, kek_id: str) -> bytes:
    """The raw KEK, read straight from its file (the last KEK_SIZE bytes)."""
    data = (provider.directory / f"{kek_id}.kek").read_bytes()
    return data[-KEK_SIZE:]


def all_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name


def test_wrap_unwrap_round_trip(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    dek = os.urandom(DEK_SIZE)
    wrapped = provider.wrap(kek_id, dek, AD)
    assert wrapped.kek_id == kek_id
    assert dek not in wrapped.ciphertext
    assert len(wrapped.ciphertext) == 12 + DEK_SIZE + 16
    assert provider.unwrap(wrapped, AD) == dek
    # A fresh random nonce every time: wrapping twice gives different ciphertexts.
    assert provider.wrap(kek_id, dek, AD).ciphertext != wrapped.ciphertext


def test_wrapped_format_is_nonce_then_aes_gcm_with_labelled_aad(
    provider: FileKeyProvider,
) -> None:
    kek_id = provider.create_kek(OWNER)
    dek = os.urandom(DEK_SIZE)
    blob = provider.wrap(kek_id, dek, AD).ciphertext
    kek = kek_bytes(provider, kek_id)
    assert AESGCM(kek).decrypt(blob[:12], blob[12:], b"coalition-dek-v1" + AD) == dek


def test_kek_ids_are_random_32_hex(provider: FileKeyProvider) -> None:
    ids = {provider.create_kek(OWNER) for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert all(provider.kek_exists(i) for i in ids)


def test_wrong_associated_data_fails(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    wrapped = provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)
    for other in (b"", b"item-2|contributor-1", AD + b"\x00", AD[:-1]):
        with pytest.raises(UnwrapError):
            provider.unwrap(wrapped, other)


@pytest.mark.parametrize("position", [0, 11, 12, 30, 43, 44, 59])
def test_tampered_wrapped_key_fails(provider: FileKeyProvider, position: int) -> None:
    kek_id = provider.create_kek(OWNER)
    wrapped = provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)
    blob = bytearray(wrapped.ciphertext)
    blob[position] ^= 0x01
    with pytest.raises(UnwrapError):
        provider.unwrap(WrappedKey(kek_id, bytes(blob)), AD)


def test_truncated_or_extended_wrapped_key_fails(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    blob = provider.wrap(kek_id, os.urandom(DEK_SIZE), AD).ciphertext
    for bad in (blob[:-1], blob + b"\x00", blob[:12]):
        with pytest.raises(UnwrapError):
            provider.unwrap(WrappedKey(kek_id, bad), AD)


def test_wrapped_key_moved_to_another_kek_fails(provider: FileKeyProvider) -> None:
    first, second = provider.create_kek(OWNER), provider.create_kek(OWNER)
    wrapped = provider.wrap(first, os.urandom(DEK_SIZE), AD)
    with pytest.raises(UnwrapError):
        provider.unwrap(WrappedKey(second, wrapped.ciphertext), AD)


def test_destroyed_kek_raises_key_not_found(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    dek = os.urandom(DEK_SIZE)
    wrapped = provider.wrap(kek_id, dek, AD)
    provider.destroy_kek(kek_id)
    assert not provider.kek_exists(kek_id)
    with pytest.raises(KeyNotFoundError):
        provider.unwrap(wrapped, AD)
    with pytest.raises(KeyNotFoundError):
        provider.wrap(kek_id, dek, AD)
    # Idempotent.
    provider.destroy_kek(kek_id)
    assert not provider.kek_exists(kek_id)


def test_destroying_one_kek_leaves_the_others(provider: FileKeyProvider) -> None:
    keep, drop = provider.create_kek(OWNER), provider.create_kek(OWNER)
    dek = os.urandom(DEK_SIZE)
    wrapped = provider.wrap(keep, dek, AD)
    provider.destroy_kek(drop)
    assert provider.kek_exists(keep)
    assert provider.unwrap(wrapped, AD) == dek


def test_unknown_kek_raises_key_not_found(provider: FileKeyProvider) -> None:
    unknown = "0" * 32
    assert not provider.kek_exists(unknown)
    with pytest.raises(KeyNotFoundError):
        provider.wrap(unknown, os.urandom(DEK_SIZE), AD)
    with pytest.raises(KeyNotFoundError):
        provider.unwrap(WrappedKey(unknown, bytes(60)), AD)
    provider.destroy_kek(unknown)  # nothing to destroy: fine


@pytest.mark.parametrize(
    "bad_id", ["", "../../etc/passwd", "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "/", "g" * 32]
)
def test_malformed_kek_ids_name_no_file(provider: FileKeyProvider, bad_id: str) -> None:
    assert not provider.kek_exists(bad_id)
    with pytest.raises(KeyNotFoundError) as excinfo:
        provider.wrap(bad_id, os.urandom(DEK_SIZE), AD)
    if bad_id:
        assert bad_id not in str(excinfo.value)
    with pytest.raises(KeyNotFoundError):
        provider.destroy_kek(bad_id)


def test_file_and_directory_permissions(directory: Path) -> None:
    # Even under a permissive umask, the directory is 0700 and KEK files 0600.
    old = os.umask(0)
    try:
        provider = FileKeyProvider(directory)
        kek_id = provider.create_kek(OWNER)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    path = directory / f"{kek_id}.kek"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(directory) == [f"{kek_id}.kek"]


def test_existing_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keks"
    directory.mkdir()
    os.chmod(directory, 0o755)
    with pytest.raises(KeyProviderError, match="chmod 700"):
        FileKeyProvider(directory)
    os.chmod(directory, 0o700)
    FileKeyProvider(directory)


def test_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keks"
    path.write_bytes(b"")
    with pytest.raises(KeyProviderError, match="not a directory"):
        FileKeyProvider(path)


def test_kek_file_readable_by_others_is_refused(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    os.chmod(provider.directory / f"{kek_id}.kek", 0o644)
    with pytest.raises(KeyProviderError, match="private"):
        provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)


def test_symlinked_kek_file_is_refused(provider: FileKeyProvider, tmp_path: Path) -> None:
    kek_id = provider.create_kek(OWNER)
    path = provider.directory / f"{kek_id}.kek"
    target = tmp_path / "elsewhere.kek"
    target.write_bytes(path.read_bytes())
    os.chmod(target, 0o600)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(KeyProviderError):
        provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)
    with pytest.raises(KeyProviderError):
        provider.destroy_kek(kek_id)
    assert target.read_bytes() != bytes(len(target.read_bytes()))  # not written through


def test_corrupt_kek_file_is_refused(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    path = provider.directory / f"{kek_id}.kek"
    data = path.read_bytes()
    for bad in (data[:-1], data + b"\x00", b"", b"X" + data[1:]):
        path.write_bytes(bad)
        with pytest.raises(KeyProviderError, match="corrupt"):
            provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)


def test_kek_file_records_its_owner(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    data = (provider.directory / f"{kek_id}.kek").read_bytes()
    assert data.startswith(b"coalition-kek-v1\n")
    assert OWNER.encode() in data


def test_destroy_leaves_no_file_and_no_key_bytes(provider: FileKeyProvider, tmp_path: Path) -> None:
    keep = provider.create_kek(OWNER)
    drop = provider.create_kek(OWNER)
    kek = kek_bytes(provider, drop)
    for kek_id in (keep, drop):
        provider.wrap(kek_id, os.urandom(DEK_SIZE), AD)
    provider.destroy_kek(drop)

    assert not (provider.directory / f"{drop}.kek").exists()
    assert all(drop not in p.name for p in all_files(tmp_path))
    for path in all_files(tmp_path):
        data = path.read_bytes()
        assert kek not in data, path
        assert kek.hex().encode() not in data, path


def test_destroy_overwrites_the_file_before_unlinking(
    provider: FileKeyProvider, tmp_path: Path
) -> None:
    # A second link to the same inode (as a backup tool or another name could hold) shows
    # what happened to the blocks: they were zeroed in place, not merely unlinked.
    kek_id = provider.create_kek(OWNER)
    original = (provider.directory / f"{kek_id}.kek").read_bytes()
    witness = tmp_path / "witness"
    os.link(provider.directory / f"{kek_id}.kek", witness)
    provider.destroy_kek(kek_id)
    assert witness.read_bytes() == bytes(len(original))


def test_key_material_never_in_reprs_or_errors(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    kek = kek_bytes(provider, kek_id)
    dek = os.urandom(DEK_SIZE)
    wrapped = provider.wrap(kek_id, dek, AD)
    texts = [repr(provider), str(provider), repr(wrapped), str(wrapped)]
    for call in (
        lambda: provider.unwrap(wrapped, b"other"),
        lambda: provider.unwrap(WrappedKey(kek_id, wrapped.ciphertext[:-1]), AD),
        lambda: provider.wrap(kek_id, dek[:-1], AD),
        lambda: provider.wrap(kek_id, dek + b"\x00", AD),
    ):
        with pytest.raises((KeyProviderError, ValueError)) as excinfo:
            call()
        texts += [str(excinfo.value), repr(excinfo.value)]
    provider.destroy_kek(kek_id)
    with pytest.raises(KeyNotFoundError) as gone:
        provider.unwrap(wrapped, AD)
    texts += [str(gone.value), repr(gone.value)]
    for text in texts:
        for secret in (kek, dek):
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text
            assert str(list(secret)) not in text
    assert "ciphertext=<60 bytes>" in repr(wrapped)


def test_wrap_refuses_a_data_key_of_the_wrong_size(provider: FileKeyProvider) -> None:
    kek_id = provider.create_kek(OWNER)
    for bad in (b"", bytes(16), bytes(33)):
        with pytest.raises(ValueError, match="32 bytes"):
            provider.wrap(kek_id, bad, AD)


def test_create_kek_refuses_an_empty_owner(provider: FileKeyProvider) -> None:
    with pytest.raises(ValueError, match="owner"):
        provider.create_kek("")
    with pytest.raises(ValueError, match="owner"):
        provider.create_kek("x" * 1025)
    assert os.listdir(provider.directory) == []


def test_wrapped_key_is_valid_from_construction() -> None:
    with pytest.raises(ValueError, match="KEK"):
        WrappedKey("", b"\x00")
    with pytest.raises(ValueError, match="ciphertext"):
        WrappedKey("0" * 32, b"")
    assert WrappedKey("0" * 32, b"\x01") == WrappedKey("0" * 32, b"\x01")


def test_file_provider_is_a_key_provider(provider: FileKeyProvider) -> None:
    assert isinstance(provider, KeyProvider)
    with pytest.raises(TypeError):
        KeyProvider()  # type: ignore[abstract]


# --- retention policy -----------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_retention_default_is_seven_days() -> None:
    policy = RetentionPolicy()
    assert policy.retention == DEFAULT_RETENTION == timedelta(days=7)
    assert policy.destroy_at(T0) == T0 + timedelta(days=7)


def test_destroy_due_at_and_after_the_window_not_before() -> None:
    policy = RetentionPolicy(timedelta(hours=1))
    assert not policy.destroy_due(T0, T0)
    assert not policy.destroy_due(T0, T0 + timedelta(minutes=59, seconds=59))
    assert policy.destroy_due(T0, T0 + timedelta(hours=1))
    assert policy.destroy_due(T0, T0 + timedelta(days=30))


def test_zero_retention_destroys_at_retirement() -> None:
    assert RetentionPolicy(timedelta(0)).destroy_due(T0, T0)


def test_destroy_due_compares_instants_across_time_zones() -> None:
    policy = RetentionPolicy(timedelta(hours=1))
    plus_two = timezone(timedelta(hours=2))
    # 14:00+02:00 is 12:00 UTC: retired just now, not due.
    assert not policy.destroy_due(T0, datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    assert policy.destroy_due(T0, datetime(2025, 1, 1, 15, 0, tzinfo=plus_two))


def test_retention_policy_is_valid_from_construction() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        RetentionPolicy(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="non-negative"):
        RetentionPolicy(7)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    policy = RetentionPolicy()
    naive = datetime(2025, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.destroy_due(naive, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.destroy_due(T0, naive)
