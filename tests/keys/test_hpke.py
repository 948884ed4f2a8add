"""Key release with RFC 9180 HPKE: binding, recipients, tampering, and a known answer."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coalition import hpke
from coalition.errors import CoalitionError, KeyFormatError, VerificationError
from coalition.hpke import (
    RELEASE_INFO_LABEL,
    SEALED_SIZE,
    KeyReleaseError,
    open_data_key,
    release_info,
    seal_data_key,
)
from coalition.keys import SigningKey

AGREEMENT, LEASE, ITEM = "agreement-1", "lease-1", "item-1"
INFO = release_info(AGREEMENT, LEASE, ITEM)


@pytest.fixture(scope="module")
def lab() -> SigningKey:
    return SigningKey.from_seed(bytes(range(32)))


@pytest.fixture
def data_key() -> bytes:
    return os.urandom(32)


def test_round_trip_with_a_signing_key_derived_x25519_key(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    assert isinstance(sealed, bytes)
    assert len(sealed) == SEALED_SIZE == 80
    assert data_key not in sealed
    assert open_data_key(lab.encryption_private_key(), sealed, INFO) == data_key


def test_every_seal_uses_a_fresh_ephemeral_key(lab: SigningKey, data_key: bytes) -> None:
    first = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    second = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    assert first[:32] != second[:32]
    assert first[32:] != second[32:]


@pytest.mark.parametrize(
    ("agreement", "lease", "item"),
    [
        ("agreement-2", LEASE, ITEM),
        (AGREEMENT, "lease-2", ITEM),
        (AGREEMENT, LEASE, "item-2"),
        (LEASE, AGREEMENT, ITEM),  # same ids, other roles
    ],
)
def test_other_agreement_lease_or_item_fails(
    lab: SigningKey, data_key: bytes, agreement: str, lease: str, item: str
) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    with pytest.raises(KeyReleaseError):
        open_data_key(lab.encryption_private_key(), sealed, release_info(agreement, lease, item))


def test_other_recipient_fails(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    for other in (SigningKey.generate().encryption_private_key(), X25519PrivateKey.generate()):
        with pytest.raises(KeyReleaseError):
            open_data_key(other, sealed, INFO)


def test_every_tampered_byte_fails(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    private = lab.encryption_private_key()
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x80
        with pytest.raises(KeyReleaseError):
            open_data_key(private, bytes(tampered), INFO)


def test_truncated_or_extended_fails(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    private = lab.encryption_private_key()
    for bad in (b"", sealed[:32], sealed[:-1], sealed + b"\x00"):
        with pytest.raises(KeyReleaseError):
            open_data_key(private, bad, INFO)


def test_key_release_error_is_a_verification_error() -> None:
    assert issubclass(KeyReleaseError, VerificationError)
    assert issubclass(KeyReleaseError, CoalitionError)


def test_errors_hold_no_key_material(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    with pytest.raises(KeyReleaseError) as excinfo:
        open_data_key(lab.encryption_private_key(), sealed, b"other")
    private_raw = lab.encryption_private_key().private_bytes_raw()
    for text in (str(excinfo.value), repr(excinfo.value)):
        for secret in (data_key, private_raw):
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text


def test_release_info_is_labelled_and_length_prefixed() -> None:
    assert INFO == (
        RELEASE_INFO_LABEL
        + b"\x00\x00\x00\x0bagreement-1"
        + b"\x00\x00\x00\x07lease-1"
        + b"\x00\x00\x00\x06item-1"
    )
    assert RELEASE_INFO_LABEL == b"coalition-key-release-v1"


def test_release_info_is_unambiguous() -> None:
    triples = [
        ("ab", "c", "d"),
        ("a", "bc", "d"),
        ("a", "b", "cd"),
        ("a\x00\x00\x00\x01b", "c", "d"),
        ("é", "c", "d"),
        ("e\u0301", "c", "d"),
    ]
    assert len({release_info(*t) for t in triples}) == len(triples)


@pytest.mark.parametrize(
    "ids", [("", LEASE, ITEM), (AGREEMENT, "", ITEM), (AGREEMENT, LEASE, ""), ("\ud800", "l", "i")]
)
def test_release_info_refuses_empty_or_invalid_ids(ids: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="id"):
        release_info(*ids)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_seal_refuses_malformed_public_keys(bad: bytes, data_key: bytes) -> None:
    with pytest.raises(KeyFormatError):
        seal_data_key(bad, data_key, INFO)


def test_seal_refuses_a_small_order_public_key(data_key: bytes) -> None:
    # The all-zero point gives an all-zero shared secret: refused, never "encrypted".
    with pytest.raises(KeyFormatError):
        seal_data_key(bytes(32), data_key, INFO)


@pytest.mark.parametrize("bad", [b"", bytes(16), bytes(31), bytes(33)])
def test_seal_refuses_data_keys_of_the_wrong_size(lab: SigningKey, bad: bytes) -> None:
    with pytest.raises(KeyFormatError):
        seal_data_key(lab.encryption_public_key_raw(), bad, INFO)


def test_open_refuses_a_key_of_another_kind(lab: SigningKey, data_key: bytes) -> None:
    sealed = seal_data_key(lab.encryption_public_key_raw(), data_key, INFO)
    with pytest.raises(KeyFormatError):
        open_data_key(lab.private_bytes_raw(), sealed, INFO)  # type: ignore[arg-type]


# --- known answer ---------------------------------------------------------------------------
#
# RFC 9180's Appendix A has no vector for DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM;
# the full set published with it (cfrg/draft-irtf-cfrg-hpke test-vectors.json) does. This is
# its base-mode entry (kem_id 32, kdf_id 1, aead_id 2), as carried by BoringSSL's
# crypto/hpke/hpke_test_vectors.txt. The public API cannot inject the ephemeral key, so the
# sender side cannot be checked; the recipient side can: the vector's first encryption
# (sequence 0, as in single-shot mode) must open. Its AAD ("Count-0") is only reachable through
# the library's private single-shot-with-AAD entry point, the one its own vector tests use.

KAT_INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
KAT_SKRM = bytes.fromhex("497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d")
KAT_PKRM = bytes.fromhex("430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c")
KAT_ENC = bytes.fromhex("6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256")
KAT_AAD = bytes.fromhex("436f756e742d30")  # "Count-0"
KAT_CT = bytes.fromhex(
    "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a"
)
KAT_PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")


def test_rfc9180_known_answer_for_the_suite() -> None:
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    decrypt_with_aad = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if decrypt_with_aad is None:
        pytest.skip("this cryptography version exposes no single-shot decrypt with AAD")
    recipient = X25519PrivateKey.from_private_bytes(KAT_SKRM)
    assert recipient.public_key().public_bytes_raw() == KAT_PKRM
    suite = hpke._SUITE  # the module's own suite: the vector pins AES-256-GCM, not just HPKE
    opened = decrypt_with_aad(suite, KAT_ENC + KAT_CT, recipient, info=KAT_INFO, aad=KAT_AAD)
    assert opened == KAT_PT
    # And the public path is the same computation with an empty AAD.
    sealed = seal_data_key(KAT_PKRM, bytes(32), INFO)
    assert decrypt_with_aad(suite, sealed, recipient, info=INFO, aad=b"") == bytes(32)
