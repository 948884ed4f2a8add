"""A norm as one command-line word (``consent grant --norm``): parse_norm_option reads what
format_norm_option writes, refuses bad input with the vocabulary's reasons, and the round
trip holds for every valid norm."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings

from coalition import norms
from coalition.norms import NormError, Vocabulary
from coalition.v1 import norms_pb2, terms_pb2
from tests.norms.test_judgement import norm_sets
from tests.norms.test_vocabulary import raw_document

VOCAB = Vocabulary.load()
HARD = norms_pb2.NORM_STANCE_HARD
PRICED = norms_pb2.NORM_STANCE_PRICED


def usd(micros: int) -> terms_pb2.Money:
    return terms_pb2.Money(currency_code="USD", micros=micros)


# (option, the norm it means)
EXAMPLES = [
    (
        "prohibited-use:hard:domains=military,mass-surveillance",
        norms.make_norm("prohibited-use", HARD, {"domains": ["mass-surveillance", "military"]}),
    ),
    (
        "model-release:priced:release=open-weights:premium=3.00",
        norms.make_norm(
            "model-release", PRICED, {"release": "open-weights"}, premium=usd(3_000_000)
        ),
    ),
    (
        "occupation:priced:isco08=2166:premium=0.000001:protects=livelihood",
        norms.make_norm(
            "occupation",
            PRICED,
            {"isco08": ["2166"]},
            premium=usd(1),
            protects=norms_pb2.ENDURING_VALUE_LIVELIHOOD,
        ),
    ),
    (
        # Any order of fields and of list values: the norm is canonical all the same.
        "public-benefit:hard:protects=commons:min_share_basis_points=250:fund=open-knowledge",
        norms.make_norm(
            "public-benefit",
            HARD,
            {"fund": "open-knowledge", "min_share_basis_points": 250},
            protects=norms_pb2.ENDURING_VALUE_COMMONS,
        ),
    ),
    (
        "jurisdiction:hard:allowed=FR,DE-BY,CA",
        norms.make_norm("jurisdiction", HARD, {"allowed": ["CA", "DE-BY", "FR"]}),
    ),
    (
        "derivatives:priced:forbidden=distillation:premium=0.25",
        norms.make_norm(
            "derivatives", PRICED, {"forbidden": ["distillation"]}, premium=usd(250_000)
        ),
    ),
    (
        "withdrawal-effect:hard:exclude_from_models_released_after=90d"
        ":exclude_from_next_training_run=true",
        norms.make_norm(
            "withdrawal-effect",
            HARD,
            {
                "exclude_from_models_released_after": timedelta(days=90),
                "exclude_from_next_training_run": True,
            },
        ),
    ),
    (
        "withdrawal-effect:hard:exclude_from_models_released_after=0s",
        norms.make_norm(
            "withdrawal-effect", HARD, {"exclude_from_models_released_after": timedelta(0)}
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_parses_examples(text: str, expected: norms_pb2.Norm) -> None:
    norm = norms.parse_norm_option(text, "USD")
    assert norm == expected
    assert norm.SerializeToString() == expected.SerializeToString()


def test_examples_cover_every_norm() -> None:
    assert {n.norm_id for _, n in EXAMPLES} == set(VOCAB.norms)


@pytest.mark.parametrize(
    ("norm", "text"),
    [
        (EXAMPLES[0][1], "prohibited-use:hard:domains=mass-surveillance,military"),
        (EXAMPLES[1][1], "model-release:priced:release=open-weights:premium=3"),
        (
            EXAMPLES[3][1],
            "public-benefit:hard:fund=open-knowledge:min_share_basis_points=250:protects=commons",
        ),
        (
            norms.make_norm(
                "withdrawal-effect",
                HARD,
                {"exclude_from_models_released_after": timedelta(hours=36)},
            ),
            "withdrawal-effect:hard:exclude_from_models_released_after=36h",
        ),
        (
            norms.make_norm(
                "withdrawal-effect",
                HARD,
                {"exclude_from_models_released_after": timedelta(days=14)},
            ),
            "withdrawal-effect:hard:exclude_from_models_released_after=2w",
        ),
    ],
)
def test_formats_canonically(norm: norms_pb2.Norm, text: str) -> None:
    assert norms.format_norm_option(norm) == text


# (option, reason)
BAD = [
    ("", norms.UNKNOWN_NORM),
    ("no-such-norm:hard", norms.UNKNOWN_NORM),
    ("prohibited-use", norms.BAD_STANCE),
    ("prohibited-use:soft:domains=military", norms.BAD_STANCE),
    ("prohibited-use:domains=military", norms.BAD_STANCE),
    ("prohibited-use:hard:domains", norms.BAD_PARAMETER),
    ("prohibited-use:hard:domains=", norms.BAD_PARAMETER),
    ("prohibited-use:hard:domains=military,,impersonation", norms.BAD_PARAMETER),
    ("prohibited-use:hard:domains=gambling", norms.BAD_PARAMETER),
    ("prohibited-use:hard:colour=red", norms.UNKNOWN_PARAMETER),
    ("prohibited-use:hard", norms.MISSING_PARAMETER),
    ("model-release:hard:release=closed:release=open-weights", norms.UNSORTED_PARAMETERS),
    ("public-benefit:hard:min_share_basis_points=lots", norms.BAD_PARAMETER),
    ("public-benefit:hard:min_share_basis_points=0", norms.BAD_PARAMETER),
    ("jurisdiction:hard:allowed=de", norms.BAD_PARAMETER),
    ("withdrawal-effect:hard:exclude_from_next_training_run=yes", norms.BAD_PARAMETER),
    ("withdrawal-effect:hard:exclude_from_next_training_run=false", norms.BAD_PARAMETER),
    ("withdrawal-effect:hard:exclude_from_models_released_after=90", norms.BAD_PARAMETER),
    ("withdrawal-effect:hard:exclude_from_models_released_after=3651d", norms.BAD_PARAMETER),
    ("model-release:priced:release=closed", norms.MISSING_PREMIUM),
    ("model-release:priced:release=closed:premium=0", norms.MISSING_PREMIUM),
    ("model-release:hard:release=closed:premium=1", norms.BAD_PREMIUM),
    ("model-release:priced:release=closed:premium=-1", norms.BAD_PREMIUM),
    ("model-release:priced:release=closed:premium=1.0000001", norms.BAD_PREMIUM),
    ("model-release:priced:release=closed:premium=1e3", norms.BAD_PREMIUM),
    ("model-release:priced:release=closed:premium=10000000000", norms.BAD_PREMIUM),
    ("model-release:hard:release=closed:protects=joy", norms.UNKNOWN_ENDURING_VALUE),
]


@pytest.mark.parametrize(("text", "reason"), BAD, ids=[t or "empty" for t, _ in BAD])
def test_refuses_bad_options(text: str, reason: str) -> None:
    with pytest.raises(NormError) as caught:
        norms.parse_norm_option(text, "USD")
    assert caught.value.reason == reason
    assert repr(text) in caught.value.message  # says which --norm was wrong


def test_errors_say_where_and_how() -> None:
    with pytest.raises(NormError) as caught:
        norms.parse_norm_option("occupation:hard:isco08=21,2166", "USD")
    assert caught.value.metadata == {"norm_id": "occupation", "parameter": "isco08"}
    with pytest.raises(NormError) as syntax:
        norms.parse_norm_option("occupation", "USD")
    assert norms.NORM_OPTION_SYNTAX in syntax.value.message
    with pytest.raises(NormError) as unknown:
        norms.parse_norm_option("model-release:hard:weights=open", "USD")
    assert "it has release" in unknown.value.message


def test_the_premium_is_in_the_given_currency() -> None:
    norm = norms.parse_norm_option("model-release:priced:release=closed:premium=2.5", "EUR")
    assert norm.premium_per_item == terms_pb2.Money(currency_code="EUR", micros=2_500_000)


def test_no_parameter_is_named_like_an_option_key() -> None:
    for spec in VOCAB.norms.values():
        assert not {p.name for p in spec.parameters} & set(norms.OPTION_KEYS), spec.id


def test_values_may_hold_colons() -> None:
    """Fields split only at a colon followed by NAME=, so RFC 3339 times survive."""
    document = raw_document()
    effect = next(n for n in document["norms"] if n["id"] == "withdrawal-effect")
    effect["parameters"].append(
        {"name": "since", "type": "time", "required": False, "description": "A test time."}
    )
    effect["odrl"]["breach"].append(
        {
            "parameter": "since",
            "left_operand": "coalition:since",
            "operator": "lt",
            "datatype": "xsd:dateTime",
        }
    )
    vocab = norms._parse(document, "1")
    text = "withdrawal-effect:hard:exclude_from_next_training_run=true:since=2026-01-01T12:30:00Z"
    norm = norms.parse_norm_option(text, "USD", vocab)
    (_, since) = norm.parameters
    assert since.name == "since"
    assert since.value.time.ToJsonString() == "2026-01-01T12:30:00Z"
    assert norms.format_norm_option(norm, vocab) == text
    with pytest.raises(NormError) as caught:
        norms.parse_norm_option(
            "withdrawal-effect:hard:exclude_from_next_training_run=true:since=tomorrow",
            "USD",
            vocab,
        )
    assert caught.value.reason == norms.BAD_PARAMETER


@settings(max_examples=300, deadline=None)
@given(norm_sets())
def test_format_then_parse_is_the_identity(token: list[norms_pb2.Norm]) -> None:
    for norm in token:
        text = norms.format_norm_option(norm)
        parsed = norms.parse_norm_option(text, "USD")
        assert parsed == norm
        assert parsed.SerializeToString() == norm.SerializeToString()
        assert norms.format_norm_option(parsed) == text
    # And a token's options, in any order, give back the token.
    options = [norms.format_norm_option(n) for n in reversed(token)]
    again = norms.canonical_norms(norms.parse_norm_option(o, "USD") for o in options)
    assert again == token
    norms.validate_norms(again, "USD")
