"""The judgement (breaks, assess), validation refusals one reason at a time, and canonical
encoding. Property tests draw valid norm sets and declarations from the vocabulary itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalition import norms, statements
from coalition.errors import CoalitionError
from coalition.norms import NormError, Vocabulary
from coalition.v1 import norms_pb2, terms_pb2

VOCAB = Vocabulary.load()
HARD = norms_pb2.NORM_STANCE_HARD
PRICED = norms_pb2.NORM_STANCE_PRICED
OPEN = terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS
CLOSED = terms_pb2.MODEL_RELEASE_CLOSED
CURRENCY = "USD"
DAY = timedelta(days=1)


def usd(micros: int, currency: str = CURRENCY) -> terms_pb2.Money:
    return terms_pb2.Money(currency_code=currency, micros=micros)


def hard(norm_id: str, **parameters: Any) -> norms_pb2.Norm:
    return norms.make_norm(norm_id, HARD, parameters)


def priced(norm_id: str, premium: int, **parameters: Any) -> norms_pb2.Norm:
    return norms.make_norm(norm_id, PRICED, parameters, premium=usd(premium))


def declaration(**fields: Any) -> terms_pb2.UseDeclaration:
    """A declaration that keeps every example norm below, with ``fields`` changed."""
    withdrawal = fields.pop("withdrawal", {"next_run": True, "released_after": 30 * DAY})
    base: dict[str, Any] = {
        "model_release": OPEN,
        "jurisdictions": ["DE", "FR"],
        "public_benefit_share_basis_points": 500,
        "public_benefit_fund": "open-knowledge",
    }
    base.update(fields)
    result = terms_pb2.UseDeclaration(**base)
    commitments = result.withdrawal_commitments
    commitments.exclude_from_next_training_run = withdrawal.get("next_run", False)
    if withdrawal.get("released_after") is not None:
        commitments.exclude_from_models_released_after.FromTimedelta(withdrawal["released_after"])
    return result


# --- each norm's judgement: declarations that keep it and that break it ------------------------

# (name, norm, declaration, breaks?)
CASES: list[tuple[str, norms_pb2.Norm, terms_pb2.UseDeclaration, bool]] = [
    # model-release
    ("open required, open", hard("model-release", release="open-weights"), declaration(), False),
    (
        "open required, closed",
        hard("model-release", release="open-weights"),
        declaration(model_release=CLOSED),
        True,
    ),
    (
        "open required, undeclared",
        hard("model-release", release="open-weights"),
        declaration(model_release=terms_pb2.MODEL_RELEASE_UNSPECIFIED),
        True,
    ),
    (
        "closed required, closed",
        hard("model-release", release="closed"),
        declaration(model_release=CLOSED),
        False,
    ),
    ("closed required, open", hard("model-release", release="closed"), declaration(), True),
    # prohibited-use
    (
        "no sensitive domain",
        hard("prohibited-use", domains=["mass-surveillance", "military"]),
        declaration(),
        False,
    ),
    (
        "another domain",
        hard("prohibited-use", domains=["mass-surveillance", "military"]),
        declaration(application_domains=["targeted-advertising"]),
        False,
    ),
    (
        "a forbidden domain",
        hard("prohibited-use", domains=["mass-surveillance", "military"]),
        declaration(application_domains=["credit-scoring", "military"]),
        True,
    ),
    # occupation (ISCO-08, prefix hierarchy)
    ("no occupation", hard("occupation", isco08=["2166"]), declaration(), False),
    (
        "another occupation",
        hard("occupation", isco08=["2166"]),
        declaration(occupations=["22", "2512"]),
        False,
    ),
    (
        "the same code",
        hard("occupation", isco08=["2166"]),
        declaration(occupations=["2166"]),
        True,
    ),
    (
        "a group including it",
        hard("occupation", isco08=["2166"]),
        declaration(occupations=["2"]),
        True,
    ),
    (
        "a unit inside the protected group",
        hard("occupation", isco08=["21"]),
        declaration(occupations=["2166"]),
        True,
    ),
    # public-benefit
    (
        "share met, any fund",
        hard("public-benefit", min_share_basis_points=500),
        declaration(),
        False,
    ),
    (
        "share short",
        hard("public-benefit", min_share_basis_points=501),
        declaration(),
        True,
    ),
    (
        "no share",
        hard("public-benefit", min_share_basis_points=1),
        declaration(public_benefit_share_basis_points=0, public_benefit_fund=""),
        True,
    ),
    (
        "share met, named fund",
        hard("public-benefit", fund="open-knowledge", min_share_basis_points=100),
        declaration(),
        False,
    ),
    (
        "share met, other fund",
        hard("public-benefit", fund="public-media", min_share_basis_points=100),
        declaration(),
        True,
    ),
    # jurisdiction (ISO 3166, subdivision hierarchy)
    ("inside", hard("jurisdiction", allowed=["DE", "FR"]), declaration(), False),
    (
        "a subdivision of an allowed country",
        hard("jurisdiction", allowed=["DE", "FR"]),
        declaration(jurisdictions=["DE-BY", "FR"]),
        False,
    ),
    (
        "one place outside",
        hard("jurisdiction", allowed=["DE", "FR"]),
        declaration(jurisdictions=["DE", "US"]),
        True,
    ),
    (
        "the country of an allowed subdivision",
        hard("jurisdiction", allowed=["US-CA"]),
        declaration(jurisdictions=["US"]),
        True,
    ),
    (
        "no place declared",
        hard("jurisdiction", allowed=["DE"]),
        declaration(jurisdictions=[]),
        True,
    ),
    # derivatives
    ("no derivatives", hard("derivatives", forbidden=["distillation"]), declaration(), False),
    (
        "another derivative",
        hard("derivatives", forbidden=["distillation"]),
        declaration(third_party_fine_tunes=True),
        False,
    ),
    (
        "distillation",
        hard("derivatives", forbidden=["distillation"]),
        declaration(distillation=True),
        True,
    ),
    (
        "third-party fine-tunes",
        hard("derivatives", forbidden=["distillation", "third-party-fine-tunes"]),
        declaration(third_party_fine_tunes=True),
        True,
    ),
    # withdrawal-effect
    (
        "next run committed",
        hard("withdrawal-effect", exclude_from_next_training_run=True),
        declaration(),
        False,
    ),
    (
        "next run not committed",
        hard("withdrawal-effect", exclude_from_next_training_run=True),
        declaration(withdrawal={"released_after": DAY}),
        True,
    ),
    (
        "shorter delay",
        hard("withdrawal-effect", exclude_from_models_released_after=90 * DAY),
        declaration(),
        False,
    ),
    (
        "the same delay",
        hard("withdrawal-effect", exclude_from_models_released_after=30 * DAY),
        declaration(),
        False,
    ),
    (
        "longer delay",
        hard("withdrawal-effect", exclude_from_models_released_after=29 * DAY),
        declaration(),
        True,
    ),
    (
        "no delay committed",
        hard("withdrawal-effect", exclude_from_models_released_after=365 * DAY),
        declaration(withdrawal={"next_run": True}),
        True,
    ),
    (
        "both, one kept",
        hard(
            "withdrawal-effect",
            exclude_from_models_released_after=90 * DAY,
            exclude_from_next_training_run=True,
        ),
        declaration(withdrawal={"released_after": DAY}),
        True,
    ),
]


@pytest.mark.parametrize(
    ("norm", "use", "expected"),
    [pytest.param(n, d, b, id=f"{n.norm_id}: {name}") for name, n, d, b in CASES],
)
def test_breaks(norm: norms_pb2.Norm, use: terms_pb2.UseDeclaration, expected: bool) -> None:
    norms.validate_norms([norm], CURRENCY)
    assert norms.breaks(norm, use) is expected
    # The stance does not change whether a use breaks a norm, only what follows from it.
    as_priced = norms.make_norm(
        norm.norm_id,
        PRICED,
        {},
        premium=usd(1),
    )
    as_priced.parameters.extend(norm.parameters)
    assert norms.breaks(as_priced, use) is expected


def test_every_norm_is_kept_and_broken_by_some_case() -> None:
    kept = {n.norm_id for _, n, _, b in CASES if not b}
    broken = {n.norm_id for _, n, _, b in CASES if b}
    assert kept == broken == set(VOCAB.norms)


def test_the_example_declarations_are_valid() -> None:
    for _, _, use, _ in CASES:
        if use.model_release and use.jurisdictions:
            norms.validate_declaration(use)


def test_breaks_an_unknown_norm_is_refused() -> None:
    with pytest.raises(NormError) as caught:
        norms.breaks(norms_pb2.Norm(norm_id="no-such-norm", stance=HARD), declaration())
    assert caught.value.reason == norms.UNKNOWN_NORM


def test_breaks_a_norm_missing_what_it_needs_is_refused() -> None:
    with pytest.raises(NormError) as caught:
        norms.breaks(norms_pb2.Norm(norm_id="model-release", stance=HARD), declaration())
    assert caught.value.reason == norms.MISSING_PARAMETER


def test_assess_example() -> None:
    token = [  # in canonical order: by id, then stance
        priced("derivatives", 250_000, forbidden=["distillation"]),
        hard("jurisdiction", allowed=["DE", "FR"]),
        priced("model-release", 500_000, release="open-weights"),
        hard("prohibited-use", domains=["military"]),
        priced("prohibited-use", 1_000_000, domains=["targeted-advertising"]),
    ]
    norms.validate_norms(token, CURRENCY)
    use = declaration(
        model_release=CLOSED,
        application_domains=["targeted-advertising"],
        distillation=True,
    )
    result = norms.assess(token, use)
    assert result.admissible
    assert result.hard_broken == []
    assert result.priced_broken == [token[0], token[2], token[4]]
    assert result.premium_micros == 1_750_000
    assert result.broken_norm_ids == ["derivatives", "model-release", "prohibited-use"]

    military = declaration(application_domains=["military"])
    result = norms.assess(token, military)
    assert not result.admissible
    assert result.hard_broken == [token[3]]
    assert result.premium_micros == 0


def test_assess_without_norms_covers_at_the_floor() -> None:
    result = norms.assess([], declaration())
    assert result == norms.Assessment(hard_broken=[], priced_broken=[], premium_micros=0)


def test_assess_refuses_a_norm_without_stance() -> None:
    norm = hard("model-release", release="closed")
    norm.stance = norms_pb2.NORM_STANCE_UNSPECIFIED
    with pytest.raises(NormError) as caught:
        norms.assess([norm], declaration())
    assert caught.value.reason == norms.BAD_STANCE


# --- validation: one refusal per reason -------------------------------------------------------


def _with(norm: norms_pb2.Norm, change: Callable[[norms_pb2.Norm], object]) -> norms_pb2.Norm:
    changed = norms_pb2.Norm()
    changed.CopyFrom(norm)
    change(changed)
    return changed


def _raw(norm_id: str, *parameters: tuple[str, norms_pb2.NormValue]) -> norms_pb2.Norm:
    """A hard norm with parameters exactly as given (no sorting)."""
    norm = norms_pb2.Norm(norm_id=norm_id, stance=HARD)
    for name, value in parameters:
        norm.parameters.add(name=name, value=value)
    return norm


def _texts(*values: str) -> norms_pb2.NormValue:
    value = norms_pb2.NormValue()
    value.texts.values.extend(values)
    return value


V = norms.norm_value
MILITARY = hard("prohibited-use", domains=["military"])

# (name, norms, expected reason)
REFUSALS: list[tuple[str, list[norms_pb2.Norm], str]] = [
    ("unknown norm", [hard("no-such-norm", x="y")], norms.UNKNOWN_NORM),
    (
        "unknown parameter",
        [hard("model-release", release="closed", weights="yes")],
        norms.UNKNOWN_PARAMETER,
    ),
    ("term not allowed", [hard("model-release", release="half-open")], norms.BAD_PARAMETER),
    ("wrong type", [_raw("model-release", ("release", V(True)))], norms.BAD_PARAMETER),
    ("no value", [_raw("model-release", ("release", norms_pb2.NormValue()))], norms.BAD_PARAMETER),
    ("empty list", [_raw("prohibited-use", ("domains", _texts()))], norms.BAD_PARAMETER),
    (
        "unknown domain",
        [_raw("prohibited-use", ("domains", _texts("gambling")))],
        norms.BAD_PARAMETER,
    ),
    (
        "unsorted list",
        [_raw("prohibited-use", ("domains", _texts("military", "impersonation")))],
        norms.BAD_PARAMETER,
    ),
    (
        "repeated value",
        [_raw("prohibited-use", ("domains", _texts("military", "military")))],
        norms.BAD_PARAMETER,
    ),
    ("ISCO-08 code too long", [hard("occupation", isco08=["21661"])], norms.BAD_PARAMETER),
    ("nested ISCO-08 codes", [hard("occupation", isco08=["21", "2166"])], norms.BAD_PARAMETER),
    ("lower-case country", [hard("jurisdiction", allowed=["de"])], norms.BAD_PARAMETER),
    ("alpha-3 country", [hard("jurisdiction", allowed=["DEU"])], norms.BAD_PARAMETER),
    (
        "country beside its subdivision",
        [hard("jurisdiction", allowed=["DE", "DE-BY"])],
        norms.BAD_PARAMETER,
    ),
    (
        "share of zero",
        [hard("public-benefit", min_share_basis_points=0)],
        norms.BAD_PARAMETER,
    ),
    (
        "share above the whole",
        [hard("public-benefit", min_share_basis_points=10_001)],
        norms.BAD_PARAMETER,
    ),
    (
        "fund id with spaces",
        [hard("public-benefit", fund="Open Knowledge", min_share_basis_points=100)],
        norms.BAD_PARAMETER,
    ),
    (
        "false flag (leave it out instead)",
        [hard("withdrawal-effect", exclude_from_next_training_run=False)],
        norms.BAD_PARAMETER,
    ),
    (
        "fraction of a second",
        [hard("withdrawal-effect", exclude_from_models_released_after=timedelta(seconds=1.5))],
        norms.BAD_PARAMETER,
    ),
    (
        "delay above ten years",
        [hard("withdrawal-effect", exclude_from_models_released_after=3651 * DAY)],
        norms.BAD_PARAMETER,
    ),
    ("missing required parameter", [hard("model-release")], norms.MISSING_PARAMETER),
    (
        "missing required beside an optional one",
        [hard("public-benefit", fund="open-knowledge")],
        norms.MISSING_PARAMETER,
    ),
    ("no parameter at all", [hard("withdrawal-effect")], norms.MISSING_PARAMETER),
    (
        "parameters out of order",
        [
            _raw(
                "public-benefit",
                ("min_share_basis_points", V(100)),
                ("fund", V("open-knowledge")),
            )
        ],
        norms.UNSORTED_PARAMETERS,
    ),
    (
        "parameter twice",
        [_raw("model-release", ("release", V("closed")), ("release", V("closed")))],
        norms.UNSORTED_PARAMETERS,
    ),
    (
        "two model-release norms demanding different things",
        [hard("model-release", release="closed"), hard("model-release", release="open-weights")],
        norms.CONTRADICTORY_NORMS,
    ),
    (
        "the same norm twice",
        [hard("jurisdiction", allowed=["DE"]), hard("jurisdiction", allowed=["DE"])],
        norms.CONTRADICTORY_NORMS,
    ),
    (
        "a domain both hard and priced",
        [MILITARY, priced("prohibited-use", 1, domains=["impersonation", "military"])],
        norms.CONTRADICTORY_NORMS,
    ),
    (
        "overlapping occupations across norms",
        [hard("occupation", isco08=["2"]), priced("occupation", 1, isco08=["2166"])],
        norms.CONTRADICTORY_NORMS,
    ),
    (
        "repeats that should be one norm",
        [MILITARY, hard("prohibited-use", domains=["impersonation"])],
        norms.CONTRADICTORY_NORMS,
    ),
    ("no stance", [_with(MILITARY, lambda n: setattr(n, "stance", 0))], norms.BAD_STANCE),
    ("unknown stance", [_with(MILITARY, lambda n: setattr(n, "stance", 7))], norms.BAD_STANCE),
    (
        "priced without premium",
        [_with(MILITARY, lambda n: setattr(n, "stance", PRICED))],
        norms.MISSING_PREMIUM,
    ),
    ("priced at zero", [priced("prohibited-use", 0, domains=["military"])], norms.MISSING_PREMIUM),
    (
        "hard with a premium",
        [_with(MILITARY, lambda n: n.premium_per_item.CopyFrom(usd(1)))],
        norms.BAD_PREMIUM,
    ),
    (
        "premium in another currency",
        [
            norms.make_norm(
                "prohibited-use", PRICED, {"domains": ["military"]}, premium=usd(1, "EUR")
            )
        ],
        norms.BAD_PREMIUM,
    ),
    ("negative premium", [priced("prohibited-use", -1, domains=["military"])], norms.BAD_PREMIUM),
    (
        "absurd premium",
        [priced("prohibited-use", 10**15 + 1, domains=["military"])],
        norms.BAD_PREMIUM,
    ),
    (
        "unknown enduring value",
        [_with(MILITARY, lambda n: setattr(n, "protects", 42))],
        norms.UNKNOWN_ENDURING_VALUE,
    ),
    ("too many norms", [MILITARY] * (norms.MAX_NORMS + 1), norms.TOO_MANY_NORMS),
    (
        "norms out of order",
        [hard("model-release", release="closed"), hard("jurisdiction", allowed=["DE"])],
        norms.UNSORTED_NORMS,
    ),
]


@pytest.mark.parametrize(
    ("given", "reason"), [pytest.param(n, r, id=name) for name, n, r in REFUSALS]
)
def test_validation_refuses(given: list[norms_pb2.Norm], reason: str) -> None:
    with pytest.raises(NormError) as caught:
        norms.validate_norms(given, CURRENCY)
    assert caught.value.reason == reason
    assert isinstance(caught.value, CoalitionError)


def test_an_unknown_vocabulary_is_refused() -> None:
    for version in ("2", "0", "../1", "", "1.0"):
        with pytest.raises(NormError) as caught:
            Vocabulary.load(version)
        assert caught.value.reason == norms.UNKNOWN_VOCABULARY


def test_refusals_say_where() -> None:
    token = [MILITARY, hard("jurisdiction", allowed=["DE", "de"])]
    with pytest.raises(NormError) as caught:
        norms.validate_norms(token, CURRENCY)
    assert caught.value.metadata == {
        "norm_id": "jurisdiction",
        "norm_index": "1",
        "parameter": "allowed",
    }


def test_a_hard_and_a_priced_instance_of_one_norm_are_fine() -> None:
    norms.validate_norms(
        [
            hard("occupation", isco08=["2166"]),
            priced("occupation", 1, isco08=["2512"]),
            MILITARY,
            priced("prohibited-use", 1_000_000, domains=["political-persuasion"]),
            hard(
                "withdrawal-effect",
                exclude_from_models_released_after=0 * DAY,
                exclude_from_next_training_run=True,
            ),
        ],
        CURRENCY,
    )


# --- canonical order of a token's norms -------------------------------------------------------


def test_norms_must_be_in_canonical_order() -> None:
    ordered = [
        hard("jurisdiction", allowed=["DE"]),
        hard("model-release", release="open-weights"),
        MILITARY,
        priced("prohibited-use", 2, domains=["impersonation"]),
        priced("prohibited-use", 3, domains=["political-persuasion"]),
        _with(
            priced("prohibited-use", 3, domains=["social-scoring"]),
            lambda n: setattr(n, "protects", norms_pb2.ENDURING_VALUE_SAFETY),
        ),
    ]
    norms.validate_norms(ordered, CURRENCY)
    assert norms.canonical_norms(reversed(ordered)) == ordered
    # Each adjacent swap breaks one rule of the order: id, stance, premium, protected value.
    for i in range(len(ordered) - 1):
        swapped = [*ordered[:i], ordered[i + 1], ordered[i], *ordered[i + 2 :]]
        with pytest.raises(NormError) as caught:
            norms.validate_norms(swapped, CURRENCY)
        assert caught.value.reason == norms.UNSORTED_NORMS
        assert caught.value.metadata == {
            "norm_id": swapped[i + 1].norm_id,
            "norm_index": str(i + 1),
            "other_norm_index": str(i),
        }


def test_a_contradiction_is_reported_before_the_order() -> None:
    # Unsorted *and* contradictory: the contradiction is the more useful answer.
    token = [hard("model-release", release="open-weights"), hard("jurisdiction", allowed=["DE"])]
    token.append(priced("jurisdiction", 1, allowed=["FR"]))
    with pytest.raises(NormError) as caught:
        norms.validate_norms(token, CURRENCY)
    assert caught.value.reason == norms.CONTRADICTORY_NORMS


DECLARATION_REFUSALS: list[tuple[str, terms_pb2.UseDeclaration, str, str]] = [
    (
        "release not declared",
        declaration(model_release=terms_pb2.MODEL_RELEASE_UNSPECIFIED),
        norms.MISSING_DECLARATION_FIELD,
        "model_release",
    ),
    (
        "unknown release",
        declaration(model_release=9),
        norms.BAD_DECLARATION_FIELD,
        "model_release",
    ),
    (
        "no jurisdiction",
        declaration(jurisdictions=[]),
        norms.MISSING_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "bad jurisdiction",
        declaration(jurisdictions=["Germany"]),
        norms.BAD_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "unsorted jurisdictions",
        declaration(jurisdictions=["FR", "DE"]),
        norms.BAD_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "unknown domain",
        declaration(application_domains=["gambling"]),
        norms.BAD_DECLARATION_FIELD,
        "application_domains",
    ),
    (
        "repeated domain",
        declaration(application_domains=["military", "military"]),
        norms.BAD_DECLARATION_FIELD,
        "application_domains",
    ),
    (
        "bad occupation",
        declaration(occupations=["designer"]),
        norms.BAD_DECLARATION_FIELD,
        "occupations",
    ),
    (
        "nested occupations",
        declaration(occupations=["2", "2166"]),
        norms.BAD_DECLARATION_FIELD,
        "occupations",
    ),
    (
        "share above the whole",
        declaration(public_benefit_share_basis_points=10_001),
        norms.BAD_DECLARATION_FIELD,
        "public_benefit_share_basis_points",
    ),
    (
        "share without fund",
        declaration(public_benefit_fund=""),
        norms.MISSING_DECLARATION_FIELD,
        "public_benefit_fund",
    ),
    (
        "fund without share",
        declaration(public_benefit_share_basis_points=0),
        norms.BAD_DECLARATION_FIELD,
        "public_benefit_fund",
    ),
    (
        "bad fund id",
        declaration(public_benefit_fund="-fund"),
        norms.BAD_DECLARATION_FIELD,
        "public_benefit_fund",
    ),
    (
        "fraction of a second",
        declaration(withdrawal={"released_after": timedelta(milliseconds=1)}),
        norms.BAD_DECLARATION_FIELD,
        "withdrawal_commitments",
    ),
    (
        "negative delay",
        declaration(withdrawal={"released_after": -DAY}),
        norms.BAD_DECLARATION_FIELD,
        "withdrawal_commitments",
    ),
]


@pytest.mark.parametrize(
    ("use", "reason", "field"),
    [pytest.param(d, r, f, id=name) for name, d, r, f in DECLARATION_REFUSALS],
)
def test_declaration_validation_refuses(
    use: terms_pb2.UseDeclaration, reason: str, field: str
) -> None:
    with pytest.raises(NormError) as caught:
        norms.validate_declaration(use)
    assert (caught.value.reason, caught.value.metadata) == (reason, {"field": field})


def test_minimal_declaration_is_valid() -> None:
    norms.validate_declaration(terms_pb2.UseDeclaration(model_release=CLOSED, jurisdictions=["JP"]))


def test_every_reason_has_a_refusal_test() -> None:
    exercised = {r for _, _, r in REFUSALS} | {r for _, _, r, _ in DECLARATION_REFUSALS}
    exercised.add(norms.UNKNOWN_VOCABULARY)  # test_an_unknown_vocabulary_is_refused
    assert exercised == set(norms.NORM_REASONS)


# --- canonical encoding -----------------------------------------------------------------------

GOLDEN_NORM = norms.make_norm(
    "public-benefit",
    PRICED,
    {"min_share_basis_points": 250, "fund": "open-knowledge"},
    premium=usd(1_500_000),
    protects=norms_pb2.ENDURING_VALUE_COMMONS,
)
# Its encoding, byte for byte: a reference vector for implementations in other languages.
GOLDEN_HEX = (
    "0a0e7075626c69632d62656e65666974"  # 1: norm_id "public-benefit"
    "12180a0466756e6412100a0e6f70656e2d6b6e6f776c65646765"  # 2: fund = "open-knowledge"
    "121d0a166d696e5f73686172655f62617369735f706f696e7473120320fa01"  # 2: min share = 250
    "1802"  # 3: stance PRICED
    "22090a0355534410e0c65b"  # 4: premium 1.5 USD
    "2806"  # 5: protects COMMONS
)


def test_golden_encoding() -> None:
    encoded = GOLDEN_NORM.SerializeToString()
    assert encoded.hex() == GOLDEN_HEX
    assert statements.parse_payload(norms_pb2.Norm, encoded) == GOLDEN_NORM
    norms.validate_norms([GOLDEN_NORM], CURRENCY)


def test_make_norm_is_canonical_whatever_the_order() -> None:
    a = norms.make_norm(
        "public-benefit", HARD, {"min_share_basis_points": 100, "fund": "open-knowledge"}
    )
    b = norms.make_norm(
        "public-benefit", HARD, {"fund": "open-knowledge", "min_share_basis_points": 100}
    )
    assert a.SerializeToString() == b.SerializeToString()
    assert [p.name for p in a.parameters] == ["fund", "min_share_basis_points"]
    listed = norms.make_norm("prohibited-use", HARD, {"domains": ["military", "impersonation"]})
    assert list(listed.parameters[0].value.texts.values) == ["impersonation", "military"]


# --- properties -------------------------------------------------------------------------------

# Small pools for hierarchical codes, so that norms and declarations often overlap.
POOLS: Mapping[tuple[str, str], Sequence[str]] = {
    ("occupation", "isco08"): ["0", "2", "21", "216", "2166", "2512", "26", "3", "7", "9"],
    ("jurisdiction", "allowed"): ["CA", "DE", "DE-BY", "FR", "GB", "JP", "US", "US-CA", "US-NY"],
    ("public-benefit", "fund"): ["open-knowledge", "public-media", "x"],
}


def test_pools_are_valid_terms() -> None:
    for (norm_id, name), terms in POOLS.items():
        spec = VOCAB.norm(norm_id).parameter(name)
        assert spec is not None
        assert all(spec.term_problem(t) is None for t in terms)


def _no_overlaps(spec: norms.ParameterSpec, terms: Sequence[str]) -> list[str]:
    kept: list[str] = []
    for term in terms:
        if not any(spec.overlaps(term, k) for k in kept):
            kept.append(term)
    return sorted(kept)


def _terms(norm_id: str, spec: norms.ParameterSpec) -> st.SearchStrategy[str]:
    pool = POOLS.get((norm_id, spec.name))
    if pool is not None:
        return st.sampled_from(pool)
    assert spec.allowed is not None, f"give {norm_id}.{spec.name} a pool"
    return st.sampled_from(spec.allowed)


def _value(norm_id: str, spec: norms.ParameterSpec) -> st.SearchStrategy[Any]:
    if spec.type == "text":
        return _terms(norm_id, spec)
    if spec.type == "texts":
        return st.lists(_terms(norm_id, spec), min_size=1, max_size=spec.max_items).map(
            lambda terms: _no_overlaps(spec, terms)
        )
    if spec.type == "flag":
        return st.sampled_from(spec.allowed_flags or (False, True))
    if spec.type == "number":
        return st.integers(spec.minimum or 0, spec.maximum or 10**6)
    if spec.type == "duration":
        return st.integers(spec.minimum or 0, spec.maximum or 10**9).map(
            lambda s: timedelta(seconds=s)
        )
    raise AssertionError(f"no strategy for {spec.type}")


@st.composite
def parameters_of(draw: st.DrawFn, norm_id: str) -> dict[str, Any]:
    spec = VOCAB.norm(norm_id)
    while True:
        chosen = {
            p.name: draw(_value(norm_id, p))
            for p in spec.parameters
            if p.required or draw(st.booleans())
        }
        if len(chosen) >= spec.min_parameters:
            return chosen


@st.composite
def norm_sets(draw: st.DrawFn) -> list[norms_pb2.Norm]:
    """Valid norms for one token: some norms of the vocabulary, a repeatable one sometimes
    split into a hard and a priced instance over disjoint values."""
    ids = draw(st.lists(st.sampled_from(list(VOCAB.norms)), unique=True))
    result: list[norms_pb2.Norm] = []
    for norm_id in ids:
        spec = VOCAB.norm(norm_id)
        parameters = draw(parameters_of(norm_id))
        protects = draw(st.sampled_from(norms_pb2.EnduringValue.values()))
        premium = draw(st.integers(1, 10**9))
        split = spec.disjoint_on
        values = parameters.get(split) if split is not None else None
        if split is not None and values is not None and len(values) > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, len(values) - 1))
            result.append(norms.make_norm(norm_id, HARD, {**parameters, split: values[:cut]}))
            result.append(
                norms.make_norm(
                    norm_id,
                    PRICED,
                    {**parameters, split: values[cut:]},
                    premium=usd(premium),
                )
            )
            continue
        if draw(st.booleans()):
            result.append(norms.make_norm(norm_id, HARD, parameters, protects=protects))
        else:
            result.append(
                norms.make_norm(
                    norm_id, PRICED, parameters, premium=usd(premium), protects=protects
                )
            )
    return norms.canonical_norms(result)


def _declared_terms(field: str, *, min_size: int = 0) -> st.SearchStrategy[list[str]]:
    spec = VOCAB.values_of(field)
    assert spec.max_items is not None
    pool = POOLS.get(next(k for k in POOLS if VOCAB.norm(k[0]).parameter(k[1]) is spec), ())
    terms = st.sampled_from(pool) if pool else st.sampled_from(spec.allowed or ())
    return st.lists(terms, min_size=min_size, max_size=8).map(lambda t: _no_overlaps(spec, t))


@st.composite
def declarations(draw: st.DrawFn) -> terms_pb2.UseDeclaration:
    share = draw(st.sampled_from([0, 1, 100, 250, 500, 10_000]) | st.integers(0, 10_000))
    result = terms_pb2.UseDeclaration(
        model_release=draw(st.sampled_from([OPEN, CLOSED])),
        application_domains=draw(
            st.lists(
                st.sampled_from(VOCAB.values_of("application_domains").allowed or ()),
                unique=True,
            ).map(sorted)
        ),
        occupations=draw(_declared_terms("occupations")),
        jurisdictions=draw(_declared_terms("jurisdictions", min_size=1)),
        public_benefit_share_basis_points=share,
        public_benefit_fund=draw(st.sampled_from(POOLS["public-benefit", "fund"])) if share else "",
        distillation=draw(st.booleans()),
        third_party_fine_tunes=draw(st.booleans()),
    )
    commitments = result.withdrawal_commitments
    commitments.exclude_from_next_training_run = draw(st.booleans())
    delay = draw(st.none() | st.integers(0, 400) | st.integers(0, 315_360_000))
    if delay is not None:
        commitments.exclude_from_models_released_after.seconds = delay * (
            86_400 if delay <= 400 else 1
        )
    return result


@settings(max_examples=300, deadline=None)
@given(norm_sets(), declarations())
def test_assess_on_valid_input(token: list[norms_pb2.Norm], use: terms_pb2.UseDeclaration) -> None:
    norms.validate_norms(token, CURRENCY)
    norms.validate_declaration(use)
    result = norms.assess(token, use)
    broken = [n for n in token if norms.breaks(n, use)]
    assert result.hard_broken == [n for n in broken if n.stance == HARD]
    assert result.priced_broken == [n for n in broken if n.stance == PRICED]
    assert all(n.stance == HARD for n in result.hard_broken)
    assert all(n.stance == PRICED for n in result.priced_broken)
    assert result.premium_micros == sum(n.premium_per_item.micros for n in result.priced_broken)
    # A hard norm never counts in the premium: dropping every hard norm changes nothing there.
    priced_only = [n for n in token if n.stance == PRICED]
    assert norms.assess(priced_only, use).premium_micros == result.premium_micros
    assert result.admissible == (not result.hard_broken)


@settings(max_examples=200, deadline=None)
@given(norm_sets(), declarations(), declarations())
def test_declaring_more_never_keeps_more(
    token: list[norms_pb2.Norm], use: terms_pb2.UseDeclaration, more: terms_pb2.UseDeclaration
) -> None:
    """Listing more domains, occupations or places only breaks more norms."""
    wider = terms_pb2.UseDeclaration()
    wider.CopyFrom(use)
    for field in ("application_domains", "occupations", "jurisdictions"):
        spec = VOCAB.values_of(field)
        union = _no_overlaps(spec, [*getattr(use, field), *getattr(more, field)])
        # Keep every code of ``use`` (or a wider one that includes it).
        assert all(any(spec.covers(u, t) for u in union) for t in getattr(use, field))
        wider.ClearField(field)
        getattr(wider, field).extend(union)
    norms.validate_declaration(wider)
    for norm in token:
        if norms.breaks(norm, use) and norm.norm_id in (
            "prohibited-use",
            "occupation",
            "jurisdiction",
        ):
            assert norms.breaks(norm, wider)


@settings(max_examples=200, deadline=None)
@given(norm_sets(), st.randoms(use_true_random=False))
def test_only_the_canonical_order_of_a_norm_set_is_valid(
    token: list[norms_pb2.Norm], rng: Any
) -> None:
    shuffled = list(token)
    rng.shuffle(shuffled)
    assert norms.canonical_norms(shuffled) == token
    if shuffled == token:
        norms.validate_norms(shuffled, CURRENCY)
        return
    with pytest.raises(NormError) as caught:
        norms.validate_norms(shuffled, CURRENCY)
    assert caught.value.reason == norms.UNSORTED_NORMS


@settings(max_examples=200, deadline=None)
@given(norm_sets(), st.randoms(use_true_random=False))
def test_norms_encode_canonically(token: list[norms_pb2.Norm], rng: Any) -> None:
    for norm in token:
        encoded = norm.SerializeToString()
        assert encoded == norm.SerializeToString(deterministic=True)
        decoded = statements.parse_payload(norms_pb2.Norm, encoded)
        assert decoded == norm
        assert decoded.SerializeToString() == encoded
        if len(norm.parameters) > 1:
            shuffled = _with(norm, lambda n: n.ClearField("parameters"))
            order = list(norm.parameters)
            while [p.name for p in order] == [p.name for p in norm.parameters]:
                rng.shuffle(order)
            shuffled.parameters.extend(order)
            with pytest.raises(NormError) as caught:
                norms.validate_norm(shuffled, CURRENCY)
            assert caught.value.reason == norms.UNSORTED_PARAMETERS
