"""The signed echo baseline does the work it claims: both signatures are checked."""

from __future__ import annotations

import pytest
from bench.baselines import signed_echo
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def test_a_signed_request_passes_and_any_tampering_fails() -> None:
    key = Ed25519PrivateKey.generate()
    statement_signature = key.sign(signed_echo.STATEMENT)
    request = signed_echo.signed_request(key, statement_signature)
    assert signed_echo.check(request) == statement_signature
    assert signed_echo.signed_request(key, statement_signature) != request  # a fresh nonce
    for position in (40, 100, 170, len(request) - 1):  # call sig, statement sig, nonce, statement
        tampered = bytearray(request)
        tampered[position] ^= 1
        with pytest.raises(InvalidSignature):
            signed_echo.check(bytes(tampered))


def test_a_statement_signed_by_another_key_fails() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    request = signed_echo.signed_request(key, other.sign(signed_echo.STATEMENT))
    with pytest.raises(InvalidSignature):
        signed_echo.check(request)
