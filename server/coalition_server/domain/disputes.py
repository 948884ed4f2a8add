"""Disputes and ballots' reasons: what the statements may say (pure).

Both point into the norm vocabulary (``coalition.norms``): a ballot gives norm ids as its
reasons, a dispute names the norms and the use-declaration fields it alleges the lab breaks.
Values stay structured from the member to the audit, so these lists are checked like every
list in a signed statement: known terms only, one encoding per meaning (strictly ascending,
hence distinct), and bounded. Free text is a bounded supplement, never the substance.

Who may file or answer, and about which agreement, needs the store; that is checked in the
sequencing transaction (``coalition_server.api.disputes``), not here.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from typing import Final

from coalition.norms import Vocabulary
from coalition.v1 import disputes_pb2
from coalition_server.domain.errors import InvalidArgumentError
from coalition_server.domain.statements import HEX_ID

MAX_NORM_IDS: Final = 16
"""Most norm ids one ballot or dispute names (the vocabulary may grow; this bounds it)."""
MAX_TEXT_CHARS: Final = 1000
"""Longest dispute or response text, in characters (Unicode code points)."""
# Line feeds and tabs are the only control characters allowed in text.
_ALLOWED_CONTROLS: Final = frozenset("\n\t")
# Bidirectional embeddings, overrides and isolates: they make displayed text lie about its
# order (the "Trojan Source" trick), and a dispute is read by people.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _strictly_ascending(values: Sequence[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def check_norm_ids(values: Sequence[str], field: str) -> None:
    """Norm ids of the vocabulary: at most :data:`MAX_NORM_IDS`, strictly ascending (so
    distinct), each known; INVALID_ARGUMENT ``BAD_NORM_IDS`` or ``UNKNOWN_NORM`` otherwise."""
    if len(values) > MAX_NORM_IDS:
        raise InvalidArgumentError(
            "BAD_NORM_IDS", f"{field}: at most {MAX_NORM_IDS} norm ids", {"field": field}
        )
    if not _strictly_ascending(values):
        raise InvalidArgumentError(
            "BAD_NORM_IDS",
            f"{field}: norm ids go in ascending order, each once",
            {"field": field},
        )
    known = Vocabulary.load().norms
    for value in values:
        if value not in known:
            raise InvalidArgumentError(
                "UNKNOWN_NORM",
                f"{field}: no norm {value[:64]!r} in the vocabulary",
                {"field": field, "norm_id": value[:64]},
            )


def check_declaration_fields(values: Sequence[str]) -> None:
    """Names of UseDeclaration fields: strictly ascending (so distinct), each a field of
    the vocabulary's declaration; ``BAD_DECLARATION_FIELDS`` or ``UNKNOWN_DECLARATION_FIELD``."""
    if not _strictly_ascending(values):
        raise InvalidArgumentError(
            "BAD_DECLARATION_FIELDS",
            "declaration_fields go in ascending order, each once",
        )
    known = Vocabulary.load().declaration
    for value in values:
        if value not in known:
            raise InvalidArgumentError(
                "UNKNOWN_DECLARATION_FIELD",
                f"a use declaration has no field {value[:64]!r}",
                {"field": value[:64]},
            )


def text_problem(text: str) -> str | None:
    """Why ``text`` may not stand in a dispute or response, or None if it may."""
    if len(text) > MAX_TEXT_CHARS:
        return f"at most {MAX_TEXT_CHARS} characters"
    for char in text:
        control = unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS
        if control or char in _BIDI_CONTROLS:
            return f"no control characters (U+{ord(char):04X}) but line feeds and tabs"
    return None


def check_text(text: str, field: str, *, required: bool) -> None:
    """Bounded, displayable text; ``MISSING_TEXT`` or ``BAD_TEXT`` otherwise."""
    if required and not text.strip():
        raise InvalidArgumentError("MISSING_TEXT", f"{field} is required", {"field": field})
    problem = text_problem(text)
    if problem is not None:
        raise InvalidArgumentError("BAD_TEXT", f"{field}: {problem}", {"field": field})


def check_ballot_reasons(reasons: Sequence[str]) -> None:
    """A ballot's reasons: norm ids of the vocabulary (see :func:`check_norm_ids`)."""
    check_norm_ids(reasons, "reasons")


def check_dispute(statement: disputes_pb2.Dispute) -> None:
    """Refuse a malformed dispute: a bad agreement id, unknown or unordered norm ids or
    declaration fields, neither of them, or bad text. (Freshness and nonce: checked with
    the signature.)"""
    if not HEX_ID.match(statement.agreement_id):
        raise InvalidArgumentError("BAD_AGREEMENT_ID", "agreement ids are 32 lowercase hex")
    check_norm_ids(statement.norm_ids, "norm_ids")
    check_declaration_fields(statement.declaration_fields)
    if not statement.norm_ids and not statement.declaration_fields:
        # Values stay structured: a dispute says which norm or commitment, not only prose.
        raise InvalidArgumentError(
            "MISSING_ALLEGATION",
            "name at least one norm id or declaration field the lab allegedly breaks",
        )
    check_text(statement.text, "text", required=False)


def check_response(statement: disputes_pb2.DisputeResponse) -> None:
    """Refuse a malformed response: a bad dispute id, or missing or bad text."""
    check_dispute_id(statement.dispute_id)
    check_text(statement.text, "text", required=True)


def check_dispute_id(value: str) -> None:
    """A dispute id: 32 lowercase hex (a statement id)."""
    if not HEX_ID.match(value):
        raise InvalidArgumentError("BAD_DISPUTE_ID", "dispute ids are 32 lowercase hex")
