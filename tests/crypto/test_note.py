"""C2SP signed notes, checked against the vectors of Go's reference implementation."""

from __future__ import annotations

import base64

import pytest

from coalition.errors import NoteError, VerificationError
from coalition.keys import PublicKey, SigningKey
from coalition.note import (
    MAX_NOTE_SIZE,
    NoteSigner,
    NoteVerifier,
    key_hash,
    make_verifier_key,
    verify_note,
)

# Vectors from golang.org/x/mod/sumdb/note's note_test.go.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpR"
    "Zb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLo"
    "x33WWd1RvMc+QQ=\n"
)


def _peter_signer() -> NoteSigner:
    # The Go signer key is "PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed)".
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", SigningKey.from_seed(seed))


PETER = NoteVerifier.parse(PETER_VKEY)
ENOCH = NoteVerifier.parse(ENOCH_VKEY)


def test_go_vector_signing_is_byte_identical() -> None:
    signer = _peter_signer()
    assert signer.verifier == PETER
    assert signer.verifier.verifier_key == PETER_VKEY
    assert signer.sign(TEXT) == TEXT + "\n" + PETER_SIG


def test_key_hash_matches_go() -> None:
    assert PETER.key_hash == bytes.fromhex("c74f20a3")
    assert key_hash("PeterNeumann", PETER.public_key.raw) == bytes.fromhex("c74f20a3")
    assert ENOCH.key_hash == bytes.fromhex("af0cfe78")
    assert make_verifier_key("EnochRoot", ENOCH.public_key) == ENOCH_VKEY


def test_open_go_vectors() -> None:
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(note, [PETER]) == TEXT
    assert verify_note(note, [ENOCH]) == TEXT
    assert verify_note(note, [PETER, ENOCH]) == TEXT
    assert verify_note(note.encode(), [PETER]) == TEXT
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(note, [])


def test_invalid_known_signature_rejects_the_note() -> None:
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="known key PeterNeumann"):
        verify_note(bad, [PETER])


def test_duplicated_and_unknown_signatures_are_tolerated() -> None:
    # As Go's TestOpen: a bad signature by an unknown key is ignored.
    note = (
        TEXT
        + "\n"
        + PETER_SIG
        + PETER_SIG
        + ENOCH_SIG
        + ENOCH_SIG
        + ENOCH_SIG[:60]
        + "ABCD"
        + ENOCH_SIG[60:]
    )
    assert verify_note(note, [PETER]) == TEXT


def test_too_many_signatures() -> None:
    assert verify_note(TEXT + "\n" + PETER_SIG * 100, [PETER]) == TEXT
    with pytest.raises(NoteError, match="more than 100"):
        verify_note(TEXT + "\n" + PETER_SIG * 101, [PETER])
    with pytest.raises(NoteError):
        verify_note(TEXT + "\n" + PETER_SIG * 101, [])


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(TEXT, id="no-signatures"),
        pytest.param(TEXT + "\n", id="blank-line-only"),
        pytest.param(TEXT + "\n" + PETER_SIG[:-1], id="no-final-newline"),
        pytest.param("\x01" + TEXT + "\n" + PETER_SIG, id="control-char"),
        pytest.param("\r" + TEXT + "\n" + PETER_SIG, id="carriage-return"),
        pytest.param("\t" + TEXT + "\n" + PETER_SIG, id="tab"),
        pytest.param(
            TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
            "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
            id="bad-name",
        ),
        pytest.param(TEXT + "\n" + PETER_SIG + "Unexpected line.\n", id="unexpected-line"),
        pytest.param(TEXT + "\n" + PETER_SIG.replace("—", "-"), id="hyphen"),
        pytest.param(TEXT + "\n— PeterNeumann\n", id="no-signature"),
        pytest.param(TEXT + "\n— PeterNeumann \n", id="empty-signature"),
        pytest.param(TEXT + "\n— PeterNeumann AAAAAA==\n", id="short-signature"),
        pytest.param(TEXT + "\n— PeterNeumann x08go!!!\n", id="bad-base64"),
        pytest.param(TEXT + "\n— PeterNeumann x08go/ZJ\n", id="truncated-known"),
        pytest.param(TEXT + "\n—  PeterNeumann x08go/ZJ\n", id="double-space"),
        pytest.param(TEXT + "\n— Peter+Neumann AAAAAAAA\n", id="plus-in-name"),
        pytest.param(TEXT + "\n" + PETER_SIG + "\n", id="trailing-blank-line"),
        pytest.param("", id="empty"),
        pytest.param("\ud800" + TEXT + "\n" + PETER_SIG, id="lone-surrogate"),
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(NoteError):
        verify_note(note, [PETER])


def test_invalid_utf8_bytes_are_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        verify_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [PETER])


def test_size_limit() -> None:
    signer = SigningKey.generate()
    ns = NoteSigner("big", signer)
    text = "x" * (MAX_NOTE_SIZE - 200) + "\n"
    assert verify_note(ns.sign(text), [ns.verifier]) == text
    with pytest.raises(NoteError):
        ns.sign("x" * MAX_NOTE_SIZE + "\n")
    with pytest.raises(NoteError, match="exceeds"):
        verify_note("x" * MAX_NOTE_SIZE + "\n\n" + PETER_SIG, [PETER])


def test_round_trip_and_blank_lines_in_text() -> None:
    ns = NoteSigner("example.com/log", SigningKey.generate())
    for text in ("a\n", "\n", "a\n\nb\n", "a\n\n\n", "unicode ✓ — ok\n", "— x y\n"):
        assert verify_note(ns.sign(text), [ns.verifier]) == text


@pytest.mark.parametrize("text", ["", "no newline", "a\rb\n", "a\x00\n", "\ud800\n", b"a\n"])
def test_sign_rejects_bad_text(text: str) -> None:
    ns = NoteSigner("n", SigningKey.generate())
    with pytest.raises(NoteError):
        ns.sign(text)


def test_same_name_other_key_is_ignored_not_accepted() -> None:
    real = NoteSigner("example.com/log", SigningKey.generate())
    impostor = NoteSigner("example.com/log", SigningKey.generate())
    note = impostor.sign("tree\n")
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(note, [real.verifier])
    # With both signatures the real one counts and the impostor's is ignored.
    both = note + real.sign("tree\n").split("\n\n", 1)[1]
    assert verify_note(both, [real.verifier]) == "tree\n"


def test_signature_with_known_key_hash_but_wrong_length_is_rejected() -> None:
    ns = NoteSigner("n", SigningKey.generate())
    sig = base64.b64encode(ns.verifier.key_hash + bytes(10)).decode()
    with pytest.raises(NoteError, match="not an Ed25519 signature"):
        verify_note(f"t\n\n— n {sig}\n", [ns.verifier])


def test_a_verifier_listed_twice_is_not_ambiguous() -> None:
    key = SigningKey.generate()
    v = NoteVerifier("n", key.public_key)
    assert verify_note(NoteSigner("n", key).sign("t\n"), [v, v]) == "t\n"


def test_verifier_key_format() -> None:
    key = SigningKey.generate()
    v = NoteVerifier("example.com/log", key.public_key)
    name, h, k = v.verifier_key.split("+", 2)
    assert name == "example.com/log"
    assert h == v.key_hash.hex()
    assert len(h) == 8
    assert base64.b64decode(k) == b"\x01" + key.public_key.raw
    assert NoteVerifier.parse(v.verifier_key) == v


def test_verifier_key_manglings_are_rejected() -> None:
    # As Go's TestNewVerifier: every proper substring and every single-character increment.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if i == 0 and j == len(PETER_VKEY):
                continue
            with pytest.raises(NoteError):
                NoteVerifier.parse(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        mangled = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(NoteError):
            NoteVerifier.parse(mangled)


@pytest.mark.parametrize(
    "vkey",
    [
        # From Go's tests: wrong length key and unknown algorithm, each with a matching hash.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.parse(vkey)


def test_uppercase_key_hash_is_accepted_like_go() -> None:
    name, h, k = PETER_VKEY.split("+", 2)
    assert NoteVerifier.parse(f"{name}+{h.upper()}+{k}") == PETER


@pytest.mark.parametrize(
    "name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2003b", "a\nb", "a\x01b", 5]
)
def test_names_are_validated(name: str) -> None:
    key = SigningKey.generate()
    with pytest.raises(NoteError):
        NoteVerifier(name, key.public_key)
    with pytest.raises(NoteError):
        NoteSigner(name, key)


def test_constructor_types_are_checked() -> None:
    with pytest.raises(NoteError):
        NoteVerifier("n", b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(NoteError):
        NoteSigner("n", PublicKey(bytes(32)))  # type: ignore[arg-type]


def test_note_error_is_a_verification_error() -> None:
    assert issubclass(NoteError, VerificationError)
