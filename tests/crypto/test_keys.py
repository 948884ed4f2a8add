"""Ed25519 identities, the derived X25519 key, and key files."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coalition.errors import CoalitionError, KeyFormatError, SignatureError
from coalition.keys import PublicKey, SigningKey, key_id

# RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC8032_TEST2_SEED = bytes.fromhex(
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
)
RFC8032_TEST2_PUB = bytes.fromhex(
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
)
RFC8032_TEST2_SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_rfc8032_known_answers() -> None:
    key = SigningKey.from_seed(RFC8032_SEED)
    assert key.public_key.raw == RFC8032_PUB
    assert key.sign(b"") == RFC8032_SIG_EMPTY
    key.public_key.verify(RFC8032_SIG_EMPTY, b"")

    key2 = SigningKey.from_seed(RFC8032_TEST2_SEED)
    assert key2.public_key.raw == RFC8032_TEST2_PUB
    assert key2.sign(b"\x72") == RFC8032_TEST2_SIG


def test_key_id_is_lowercase_hex_sha256_of_raw_key() -> None:
    kid = key_id(RFC8032_PUB)
    assert kid == hashlib.sha256(RFC8032_PUB).hexdigest()
    assert len(kid) == 64
    assert kid == kid.lower()
    assert PublicKey(RFC8032_PUB).key_id == kid
    assert SigningKey.from_seed(RFC8032_SEED).key_id == kid


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, bytearray(32)])
def test_key_id_rejects_wrong_input(bad: Any) -> None:
    with pytest.raises(KeyFormatError):
        key_id(bad)


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "x" * 32, None])
def test_public_key_validates_on_construction(bad: Any) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey(bad)


def test_public_key_from_raw_accepts_bytes_like_and_compares_by_value() -> None:
    a = PublicKey.from_raw(bytearray(RFC8032_PUB))
    b = PublicKey(RFC8032_PUB)
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a.raw, bytes)


def test_a_key_id_read_once_is_kept_and_the_key_still_a_value() -> None:
    key = PublicKey(RFC8032_PUB)
    assert key.key_id == key_id(RFC8032_PUB) == key.key_id
    fresh = PublicKey(RFC8032_PUB)
    assert key == fresh
    assert hash(key) == hash(fresh)
    assert pickle.loads(pickle.dumps(key)) == fresh
    with pytest.raises(AttributeError):
        key.raw = bytes(32)  # type: ignore[misc]


def test_verify_rejects_tampering() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"message")
    key.public_key.verify(sig, b"message")
    with pytest.raises(SignatureError):
        key.public_key.verify(sig, b"messagE")
    with pytest.raises(SignatureError):
        key.public_key.verify(bytes([sig[0] ^ 1]) + sig[1:], b"message")
    with pytest.raises(SignatureError):
        key.public_key.verify(sig[:-1], b"message")
    with pytest.raises(SignatureError):
        key.public_key.verify(sig + b"\x00", b"message")
    with pytest.raises(SignatureError):
        SigningKey.generate().public_key.verify(sig, b"message")


def test_errors_belong_to_the_closed_hierarchy() -> None:
    assert issubclass(SignatureError, CoalitionError)
    assert issubclass(KeyFormatError, CoalitionError)


def test_generate_gives_distinct_keys_and_seed_round_trips() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.key_id != b.key_id
    seed = a.private_bytes_raw()
    assert len(seed) == 32
    again = SigningKey.from_seed(seed)
    assert again.public_key == a.public_key
    assert again.sign(b"x") == a.sign(b"x")  # Ed25519 is deterministic


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "s" * 32])
def test_from_seed_rejects_wrong_length(bad: Any) -> None:
    with pytest.raises(KeyFormatError):
        SigningKey.from_seed(bad)


def test_constructor_rejects_other_key_types() -> None:
    with pytest.raises(KeyFormatError):
        SigningKey(X25519PrivateKey.generate())  # type: ignore[arg-type]


def test_encryption_key_is_hkdf_of_the_seed() -> None:
    key = SigningKey.from_seed(RFC8032_SEED)
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"coalition x25519 v1"
    ).derive(RFC8032_SEED)
    derived = key.encryption_private_key()
    want = X25519PrivateKey.from_private_bytes(expected).public_key().public_bytes_raw()
    assert derived.public_key().public_bytes_raw() == want
    assert key.encryption_public_key_raw() == want
    assert len(key.encryption_public_key_raw()) == 32


def test_encryption_key_is_deterministic_and_per_identity() -> None:
    a = SigningKey.generate()
    assert (
        SigningKey.from_seed(a.private_bytes_raw()).encryption_public_key_raw()
        == a.encryption_public_key_raw()
    )
    b = SigningKey.generate()
    assert a.encryption_public_key_raw() != b.encryption_public_key_raw()
    # Not the Ed25519 key reused: the two public keys differ.
    assert a.encryption_public_key_raw() != a.public_key.raw
    # The derived keys agree on a shared secret (they are real X25519 keys).
    ab = a.encryption_private_key().exchange(
        X25519PublicKey.from_public_bytes(b.encryption_public_key_raw())
    )
    ba = b.encryption_private_key().exchange(
        X25519PublicKey.from_public_bytes(a.encryption_public_key_raw())
    )
    assert ab == ba


def test_repr_hides_key_material() -> None:
    key = SigningKey.from_seed(RFC8032_SEED)
    text = repr(key)
    assert key.key_id in text
    for secret in (RFC8032_SEED.hex(), RFC8032_SEED.hex().upper(), str(RFC8032_SEED)):
        assert secret not in text
    assert "PRIVATE" not in text
    assert str(key) == text


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "member.key"
    key.save(path)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = SigningKey.load(path)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()
    assert loaded.encryption_public_key_raw() == key.encryption_public_key_raw()
    assert SigningKey.load(str(path)).key_id == key.key_id


def test_saved_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "k.pem"
        SigningKey.generate().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_creates_the_file_with_0600_and_o_excl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mode must be given at creation, not fixed up afterwards by chmod.
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    SigningKey.generate().save(tmp_path / "k.pem")
    assert len(calls) == 1
    flags, mode = calls[0]
    assert mode == 0o600
    assert flags & os.O_CREAT
    assert flags & os.O_EXCL


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        SigningKey.generate().save(path)
    assert path.read_bytes() == b"precious"


def test_save_refuses_to_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        SigningKey.generate().save(link)
    assert not target.exists()


def test_failed_save_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    path = tmp_path / "k.pem"
    with pytest.raises(OSError, match="disk full"):
        SigningKey.generate().save(path)
    assert not path.exists()


def _pem(key: Any, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
    )
    return data


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a key", id="garbage"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="bad"),
        pytest.param(_pem(ec.generate_private_key(ec.SECP256R1())), id="p256"),
        pytest.param(_pem(X25519PrivateKey.generate()), id="x25519"),
        pytest.param(_pem(Ed25519PrivateKey.generate(), b"password"), id="encrypted"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFormatError):
        SigningKey.load(path)


def test_load_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SigningKey.load(tmp_path / "absent.pem")


def test_a_public_key_is_loaded_once() -> None:
    """Verifying is the server's hottest path: each party's key is loaded once, not per
    signature, and a bad signature is still refused."""
    from coalition import keys

    before = keys._loaded_public_key.cache_info()
    signer = SigningKey.generate()
    message = b"call bytes"
    for _ in range(3):
        PublicKey(signer.public_key.raw).verify(signer.sign(message), message)
    after = keys._loaded_public_key.cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits >= 5  # construction and each verification
    with pytest.raises(SignatureError):
        PublicKey(signer.public_key.raw).verify(signer.sign(b"other"), message)
