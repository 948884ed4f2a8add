"""Bad norms and bad use declarations over real gRPC, on SQLite and PostgreSQL: each refused
with INVALID_ARGUMENT and the vocabulary's ErrorInfo reason (and where, in the metadata),
nothing written: every table's row count and the ledger's size are unchanged."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from coalition import norms
from coalition.client import Client, ServerError
from coalition.dsse import Envelope
from coalition.statements import sign_statement
from coalition.v1 import consent_pb2, negotiation_pb2, norms_pb2, terms_pb2

from . import builders
from .helpers import row_counts
from .world import CONSENT, Member, lab, member, move, open_negotiation

HARD = norms_pb2.NORM_STANCE_HARD
PRICED = norms_pb2.NORM_STANCE_PRICED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
USD = 1_000_000


def _money(micros: int, currency: str = "USD") -> terms_pb2.Money:
    return terms_pb2.Money(currency_code=currency, micros=micros)


def hard(norm_id: str, **parameters: object) -> norms_pb2.Norm:
    return norms.make_norm(norm_id, HARD, parameters)  # type: ignore[arg-type]


def priced(norm_id: str, premium: int, **parameters: object) -> norms_pb2.Norm:
    return norms.make_norm(norm_id, PRICED, parameters, premium=_money(premium))  # type: ignore[arg-type]


def raw(norm_id: str, *parameters: tuple[str, norms_pb2.NormValue]) -> norms_pb2.Norm:
    """A hard norm with its parameters exactly as given (make_norm would sort them)."""
    norm = norms_pb2.Norm(norm_id=norm_id, stance=HARD)
    for name, value in parameters:
        norm.parameters.add(name=name, value=value)
    return norm


def changed(norm: norms_pb2.Norm, **fields: object) -> norms_pb2.Norm:
    result = norms_pb2.Norm()
    result.CopyFrom(norm)
    for name, value in fields.items():
        if isinstance(value, terms_pb2.Money):
            getattr(result, name).CopyFrom(value)
        else:
            setattr(result, name, value)
    return result


def texts(*values: str) -> norms_pb2.NormValue:
    value = norms_pb2.NormValue()
    value.texts.values.extend(values)
    return value


V = norms.norm_value
MILITARY = hard("prohibited-use", domains=["military"])

# (case, the token's norms, reason, metadata the ErrorInfo must include)
GRANT_CASES: list[tuple[str, list[norms_pb2.Norm], str, dict[str, str]]] = [
    (
        "unknown norm id",
        [norms_pb2.Norm(norm_id="no-military-ever", stance=HARD)],
        norms.UNKNOWN_NORM,
        {"norm_id": "no-military-ever", "norm_index": "0"},
    ),
    (
        "unknown parameter",
        [hard("model-release", release="closed", weights="open")],
        norms.UNKNOWN_PARAMETER,
        {"norm_id": "model-release", "parameter": "weights"},
    ),
    (
        "parameter of the wrong type",
        [raw("model-release", ("release", V(True)))],
        norms.BAD_PARAMETER,
        {"parameter": "release"},
    ),
    (
        "value outside the vocabulary",
        [hard("model-release", release="half-open")],
        norms.BAD_PARAMETER,
        {"parameter": "release"},
    ),
    (
        "malformed code",
        [hard("jurisdiction", allowed=["Germany"])],
        norms.BAD_PARAMETER,
        {"parameter": "allowed"},
    ),
    (
        "number out of range",
        [hard("public-benefit", min_share_basis_points=10_001)],
        norms.BAD_PARAMETER,
        {"parameter": "min_share_basis_points"},
    ),
    (
        "duration out of range",
        [hard("withdrawal-effect", exclude_from_models_released_after=timedelta(days=3651))],
        norms.BAD_PARAMETER,
        {"parameter": "exclude_from_models_released_after"},
    ),
    (
        "unsorted list",
        [raw("prohibited-use", ("domains", texts("military", "impersonation")))],
        norms.BAD_PARAMETER,
        {"parameter": "domains"},
    ),
    (
        "missing parameter",
        [hard("prohibited-use")],
        norms.MISSING_PARAMETER,
        {"parameter": "domains"},
    ),
    (
        "parameters out of order",
        [raw("public-benefit", ("min_share_basis_points", V(100)), ("fund", V("open-knowledge")))],
        norms.UNSORTED_PARAMETERS,
        {"norm_id": "public-benefit"},
    ),
    (
        "the same norm twice with different stances",
        [
            hard("model-release", release="open-weights"),
            priced("model-release", USD, release="closed"),
        ],
        norms.CONTRADICTORY_NORMS,
        {"norm_index": "1", "other_norm_index": "0"},
    ),
    (
        "the same norm twice",
        [MILITARY, MILITARY],
        norms.CONTRADICTORY_NORMS,
        {"norm_index": "1", "other_norm_index": "0"},
    ),
    (
        "a domain both hard and priced",
        [MILITARY, priced("prohibited-use", USD, domains=["impersonation", "military"])],
        norms.CONTRADICTORY_NORMS,
        {"norm_id": "prohibited-use"},
    ),
    (
        "nested occupations across norms",
        [hard("occupation", isco08=["21"]), priced("occupation", USD, isco08=["2166"])],
        norms.CONTRADICTORY_NORMS,
        {"norm_id": "occupation"},
    ),
    (
        "priced norm without a premium",
        [changed(MILITARY, stance=PRICED)],
        norms.MISSING_PREMIUM,
        {"norm_id": "prohibited-use"},
    ),
    (
        "priced norm at zero",
        [priced("prohibited-use", 0, domains=["military"])],
        norms.MISSING_PREMIUM,
        {"norm_id": "prohibited-use"},
    ),
    (
        "hard norm with a premium",
        [changed(MILITARY, premium_per_item=_money(USD))],
        norms.BAD_PREMIUM,
        {"norm_id": "prohibited-use"},
    ),
    (
        "premium in another currency",
        [changed(MILITARY, stance=PRICED, premium_per_item=_money(USD, "EUR"))],
        norms.BAD_PREMIUM,
        {"currency": "USD"},
    ),
    (
        "absurd premium",
        [priced("prohibited-use", 10**15 + 1, domains=["military"])],
        norms.BAD_PREMIUM,
        {"norm_id": "prohibited-use"},
    ),
    ("no stance", [changed(MILITARY, stance=0)], norms.BAD_STANCE, {"norm_id": "prohibited-use"}),
    (
        "unknown enduring value",
        [changed(MILITARY, protects=99)],
        norms.UNKNOWN_ENDURING_VALUE,
        {"norm_id": "prohibited-use"},
    ),
    ("too many norms", [MILITARY] * (norms.MAX_NORMS + 1), norms.TOO_MANY_NORMS, {}),
    (
        "norms out of canonical order",
        [hard("model-release", release="open-weights"), hard("jurisdiction", allowed=["DE"])],
        norms.UNSORTED_NORMS,
        {"norm_id": "jurisdiction", "norm_index": "1", "other_norm_index": "0"},
    ),
    (
        "hard after priced",
        [priced("prohibited-use", USD, domains=["impersonation"]), MILITARY],
        norms.UNSORTED_NORMS,
        {"norm_index": "1"},
    ),
]


async def _member_with_items(make_client: Callable[..., Client]) -> tuple[Member, list[str]]:
    m = await member(make_client)
    return m, await m.add([b"one", b"two"])


async def _grant_all(m: Member, tokens: list[consent_pb2.ConsentToken]) -> None:
    """One GrantConsent call with every token (all or nothing)."""
    envelopes: list[Envelope] = [sign_statement(token, m.key) for token in tokens]
    await m.client.call(
        CONSENT + "GrantConsent",
        consent_pb2.GrantConsentRequest(tokens=[e.to_proto() for e in envelopes]),
        consent_pb2.GrantConsentResponse,
        sign=True,
    )


async def _refused(
    db_url: str,
    anonymous: Client,
    attempt: Callable[[], object],
    reason: str,
    metadata: dict[str, str],
) -> None:
    """``attempt`` is refused with INVALID_ARGUMENT and ``reason``, and writes nothing."""
    before = await row_counts(db_url)
    size = (await anonymous.checkpoint()).tree_size
    with pytest.raises(ServerError) as refused:
        await attempt()  # type: ignore[misc]
    assert (refused.value.code, refused.value.reason) == (INVALID, reason), refused.value
    assert metadata.items() <= refused.value.metadata.items(), refused.value.metadata
    assert await row_counts(db_url) == before
    assert (await anonymous.checkpoint()).tree_size == size


@pytest.mark.parametrize(
    ("norm_list", "reason", "metadata"),
    [pytest.param(n, r, m, id=name) for name, n, r, m in GRANT_CASES],
)
async def test_grant_consent_refuses_bad_norms(
    make_client: Callable[..., Client],
    anonymous: Client,
    db_url: str,
    norm_list: list[norms_pb2.Norm],
    reason: str,
    metadata: dict[str, str],
) -> None:
    m, ids = await _member_with_items(make_client)
    token = builders.consent_token(item_ids=ids)
    token.norms.extend(norm_list)
    await _refused(db_url, anonymous, lambda: m.grant(token), reason, metadata)


async def test_one_bad_token_refuses_the_whole_grant(
    make_client: Callable[..., Client], anonymous: Client, db_url: str
) -> None:
    m, ids = await _member_with_items(make_client)
    good = builders.consent_token(item_ids=ids[:1])
    good.norms.append(MILITARY)
    bad = builders.consent_token(item_ids=ids[1:])
    bad.norms.append(hard("prohibited-use", domains=["gambling"]))
    await _refused(db_url, anonymous, lambda: _grant_all(m, [good, bad]), norms.BAD_PARAMETER, {})
    # The good token alone is fine, in canonical order, with every norm of the vocabulary.
    every = norms.canonical_norms(
        [
            hard("model-release", release="open-weights"),
            MILITARY,
            priced("prohibited-use", USD, domains=["targeted-advertising"]),
            hard("occupation", isco08=["2166"]),
            priced("public-benefit", 2 * USD, fund="open-knowledge", min_share_basis_points=250),
            hard("jurisdiction", allowed=["CA", "DE", "FR"]),
            priced("derivatives", USD // 4, forbidden=["distillation"]),
            hard("withdrawal-effect", exclude_from_next_training_run=True),
        ]
    )
    good.ClearField("norms")
    good.norms.extend(every)
    await _grant_all(m, [good])


def _declaration(**fields: object) -> terms_pb2.UseDeclaration:
    """A valid declaration with ``fields`` changed (None clears a field)."""
    declaration = terms_pb2.UseDeclaration(
        model_release=terms_pb2.MODEL_RELEASE_CLOSED, jurisdictions=["DE"]
    )
    for name, value in fields.items():
        declaration.ClearField(name)  # type: ignore[arg-type]
        if isinstance(value, list):
            getattr(declaration, name).extend(value)
        elif value is not None:
            setattr(declaration, name, value)
    return declaration


# (case, declaration, reason, field)
DECLARATION_CASES: list[tuple[str, terms_pb2.UseDeclaration, str, str]] = [
    (
        "no model release",
        _declaration(model_release=None),
        norms.MISSING_DECLARATION_FIELD,
        "model_release",
    ),
    (
        "no jurisdiction",
        _declaration(jurisdictions=None),
        norms.MISSING_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "a share without a fund",
        _declaration(public_benefit_share_basis_points=100),
        norms.MISSING_DECLARATION_FIELD,
        "public_benefit_fund",
    ),
    (
        "unknown release",
        _declaration(model_release=9),
        norms.BAD_DECLARATION_FIELD,
        "model_release",
    ),
    (
        "unknown domain",
        _declaration(application_domains=["gambling"]),
        norms.BAD_DECLARATION_FIELD,
        "application_domains",
    ),
    (
        "malformed occupation",
        _declaration(occupations=["designer"]),
        norms.BAD_DECLARATION_FIELD,
        "occupations",
    ),
    (
        "malformed jurisdiction",
        _declaration(jurisdictions=["Germany"]),
        norms.BAD_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "nested jurisdictions",
        _declaration(jurisdictions=["DE", "DE-BY"]),
        norms.BAD_DECLARATION_FIELD,
        "jurisdictions",
    ),
    (
        "share above the whole",
        _declaration(public_benefit_share_basis_points=10_001, public_benefit_fund="x"),
        norms.BAD_DECLARATION_FIELD,
        "public_benefit_share_basis_points",
    ),
    (
        "a fund without a share",
        _declaration(public_benefit_fund="open-knowledge"),
        norms.BAD_DECLARATION_FIELD,
        "public_benefit_fund",
    ),
]


@pytest.mark.parametrize(
    ("declaration", "reason", "field"),
    [pytest.param(d, r, f, id=name) for name, d, r, f in DECLARATION_CASES],
)
async def test_offers_with_a_bad_declaration_are_refused(
    make_client: Callable[..., Client],
    anonymous: Client,
    db_url: str,
    declaration: terms_pb2.UseDeclaration,
    reason: str,
    field: str,
) -> None:
    m, ids = await _member_with_items(make_client)
    await m.grant(builders.consent_token(item_ids=ids))
    acme = await lab(make_client)
    terms = builders.licence_terms(price=10 * USD)
    terms.declaration.CopyFrom(declaration)
    await _refused(
        db_url, anonymous, lambda: open_negotiation(acme, terms), reason, {"field": field}
    )


async def test_a_counter_offer_with_a_bad_declaration_is_refused(
    make_client: Callable[..., Client], anonymous: Client, db_url: str
) -> None:
    m, ids = await _member_with_items(make_client)
    await m.grant(builders.consent_token(item_ids=ids, purchase_floor=5 * USD))
    acme = await lab(make_client)
    # A low opening: the coalition answers with an offer of its own, for the lab to counter.
    terms = builders.licence_terms(price=USD)
    terms.declaration.CopyFrom(_declaration())
    opened = (await open_negotiation(acme, terms)).negotiation
    assert opened.state == negotiation_pb2.NEGOTIATION_STATE_OFFERED, opened
    counter = builders.licence_terms(price=2 * USD)
    counter.declaration.CopyFrom(_declaration(jurisdictions=None))

    async def attempt() -> object:
        return await move(
            acme, opened.negotiation_id, opened.round + 1, negotiation_pb2.MOVE_KIND_OFFER, counter
        )

    await _refused(
        db_url, anonymous, attempt, norms.MISSING_DECLARATION_FIELD, {"field": "jurisdictions"}
    )
