"""C2SP tlog-checkpoint bodies and signed checkpoints."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from coalition.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from coalition.errors import CheckpointError, NoteError, VerificationError
from coalition.keys import SigningKey
from coalition.merkle import EMPTY_ROOT, InMemoryTree
from coalition.note import NoteSigner, NoteVerifier

ORIGIN = "coalition.example/log"
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()

# The example from the spec.
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, SigningKey.generate())


def test_body_format() -> None:
    assert Checkpoint(ORIGIN, 7, ROOT).body() == f"{ORIGIN}\n7\n{ROOT_B64}\n"
    assert Checkpoint(ORIGIN, 0, EMPTY_ROOT).body() == (
        f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    )
    cp = Checkpoint(ORIGIN, 7, ROOT, ("ext one", "ext two"))
    assert cp.body() == f"{ORIGIN}\n7\n{ROOT_B64}\next one\next two\n"


def test_parse_spec_example() -> None:
    cp = Checkpoint.parse_body(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert base64.b64encode(cp.root_hash).decode() == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert cp.extensions == ()
    assert cp.body() == SPEC_BODY


@pytest.mark.parametrize(
    "cp",
    [
        Checkpoint(ORIGIN, 0, EMPTY_ROOT),
        Checkpoint(ORIGIN, 2**64 - 1, ROOT),
        Checkpoint("o", 1, ROOT, ("a", "b c", "é")),
        Checkpoint("with space+plus", 10, ROOT),
    ],
)
def test_parse_round_trip(cp: Checkpoint) -> None:
    assert Checkpoint.parse_body(cp.body()) == cp


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="empty"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64}", id="no-final-newline"),
        pytest.param(f"{ORIGIN}\n7\n", id="no-root"),
        pytest.param(f"\n7\n{ROOT_B64}\n", id="empty-origin"),
        pytest.param(f"{ORIGIN}\n07\n{ROOT_B64}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n00\n{ROOT_B64}\n", id="double-zero"),
        pytest.param(f"{ORIGIN}\n+7\n{ROOT_B64}\n", id="plus-sign"),
        pytest.param(f"{ORIGIN}\n-1\n{ROOT_B64}\n", id="negative"),
        pytest.param(f"{ORIGIN}\n 7\n{ROOT_B64}\n", id="space"),
        pytest.param(f"{ORIGIN}\n1_000\n{ROOT_B64}\n", id="underscore"),
        pytest.param(f"{ORIGIN}\n\u0663\n{ROOT_B64}\n", id="arabic-digit"),
        pytest.param(f"{ORIGIN}\n\n{ROOT_B64}\n", id="empty-size"),
        pytest.param(f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n", id="size-overflow"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64[:-4]}\n", id="short-root"),
        pytest.param(f"{ORIGIN}\n7\n{base64.b64encode(bytes(33)).decode()}\n", id="long-root"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64.rstrip('=')}\n", id="unpadded-root"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64[:-2]}9=\n", id="noncanonical-root"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64} \n", id="root-trailing-space"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64}\n\n", id="empty-extension"),
        pytest.param(f"{ORIGIN}\n7\n{ROOT_B64}\next\n\n", id="empty-last-extension"),
        pytest.param(f"{ORIGIN}\r\n7\n{ROOT_B64}\n", id="carriage-return"),
    ],
)
def test_parse_rejects_malformed_bodies(body: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse_body(body)


@pytest.mark.parametrize(
    "args",
    [
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        ("a\x00", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 2**64, ROOT),
        (ORIGIN, True, ROOT),
        (ORIGIN, "1", ROOT),
        (ORIGIN, 1, ROOT[:31]),
        (ORIGIN, 1, ROOT_B64),
        (ORIGIN, 1, ROOT, ("",)),
        (ORIGIN, 1, ROOT, ("a\nb",)),
        (ORIGIN, 1, ROOT, (5,)),
    ],
)
def test_checkpoint_validates_on_construction(args: tuple[Any, ...]) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(*args)


def test_extensions_are_stored_as_a_tuple() -> None:
    cp = Checkpoint(ORIGIN, 1, ROOT, ["x"])  # type: ignore[arg-type]
    assert cp.extensions == ("x",)
    assert hash(cp) == hash(Checkpoint(ORIGIN, 1, ROOT, ("x",)))


def test_sign_and_verify(signer: NoteSigner) -> None:
    tree = InMemoryTree(b"%d" % i for i in range(5))
    cp = Checkpoint(ORIGIN, tree.size, tree.root())
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.body() + "\n— " + ORIGIN + " ")
    assert verify_checkpoint(note, signer.verifier) == cp
    assert verify_checkpoint(note, signer.verifier, origin=ORIGIN) == cp
    # The verifier key string is all an auditor needs.
    assert verify_checkpoint(note, NoteVerifier.parse(signer.verifier.verifier_key)) == cp


def test_verify_rejects_other_origin(signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), signer)
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(note, signer.verifier, origin="other.example/log")


def test_verify_rejects_other_key_and_tampering(signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 9, ROOT), signer)
    with pytest.raises(NoteError):
        verify_checkpoint(note, NoteSigner(ORIGIN, SigningKey.generate()).verifier)
    with pytest.raises(NoteError):
        verify_checkpoint(note.replace("\n9\n", "\n10\n"), signer.verifier)
    with pytest.raises(NoteError):
        verify_checkpoint(
            note.replace(ROOT_B64, base64.b64encode(bytes(32)).decode()), signer.verifier
        )


def test_signed_but_malformed_body_is_a_checkpoint_error(signer: NoteSigner) -> None:
    note = signer.sign(f"{ORIGIN}\n007\n{ROOT_B64}\n")
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, signer.verifier)
    with pytest.raises(CheckpointError):
        verify_checkpoint(signer.sign("just text\n"), signer.verifier)


def test_checkpoint_error_is_a_verification_error() -> None:
    assert issubclass(CheckpointError, VerificationError)
