"""ODRL 2.2 and RSL 1.0 exports: JSON-LD checked with a real processor (pyld), RSL parsed.

No network: pyld's document loader serves the ODRL context from tests/domain/data/odrl.jsonld
(the W3C context https://www.w3.org/ns/odrl.jsonld, transcribed) and refuses anything else.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyld import jsonld  # type: ignore[import-untyped]

from coalition import norms
from coalition.v1 import access_pb2, consent_pb2, norms_pb2, terms_pb2
from coalition_server.domain import exports
from tests.norms.test_judgement import declarations, norm_sets

DATA = Path(__file__).resolve().parent / "data"
ODRL_CONTEXT_URLS = {"http://www.w3.org/ns/odrl.jsonld", "https://www.w3.org/ns/odrl.jsonld"}
ODRL_CONTEXT_DOCUMENT = json.loads((DATA / "odrl.jsonld").read_text())

ODRL = "http://www.w3.org/ns/odrl/2/"
XSD = "http://www.w3.org/2001/XMLSchema#"
RDF_VALUE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#value"
DCT_ISSUED = "http://purl.org/dc/terms/issued"
SKOS = "http://www.w3.org/2004/02/skos/core#"
V = exports.VOCABULARY
RSL = "{https://rslstandard.org/rsl}"
EXT = "{" + exports.VOCABULARY + "}"

BASE = "https://coalition.example/"
CONSENT_ID = "c0" * 16
MEMBER = "ab" * 32
COALITION = "cd" * 32
LAB = "ef" * 32
EXCLUDED = ["01" * 32, "02" * 32]
ITEMS = ["a1" * 16, "b2" * 16, "c3" * 16]
NOT_BEFORE = 1_767_225_600  # 2026-01-01T00:00:00Z
NOT_AFTER = 1_798_761_600  # 2027-01-01T00:00:00Z
CREATED = 1_767_225_000
DAY = 86_400


def _loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    if url not in ODRL_CONTEXT_URLS:
        raise AssertionError(f"tests have no network: refused to load {url}")
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": copy.deepcopy(ODRL_CONTEXT_DOCUMENT),
    }


OPTIONS: dict[str, Any] = {"documentLoader": _loader}


def expand(document: dict[str, Any]) -> list[dict[str, Any]]:
    # Through JSON text, as a consumer would receive it.
    result: list[dict[str, Any]] = jsonld.expand(json.loads(json.dumps(document)), OPTIONS)
    return result


def policy_node(document: dict[str, Any]) -> dict[str, Any]:
    expanded = expand(document)
    assert len(expanded) == 1
    return expanded[0]


# --- navigation in expanded JSON-LD -----------------------------------------------------------


def nodes(node: dict[str, Any], prop: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = node.get(prop, [])
    return found


def one(node: dict[str, Any], prop: str) -> dict[str, Any]:
    values = nodes(node, prop)
    assert len(values) == 1, (prop, values)
    return values[0]


def iri(node: dict[str, Any], prop: str) -> str:
    value: str = one(node, prop)["@id"]
    return value


def iris(node: dict[str, Any], prop: str) -> list[str]:
    return [value["@id"] for value in nodes(node, prop)]


def action(rule: dict[str, Any]) -> str:
    value = one(rule, ODRL + "action")
    if "@id" in value:
        found: str = value["@id"]
        return found
    return iri(value, RDF_VALUE)


def constraints(node: dict[str, Any], prop: str = ODRL + "constraint") -> list[Any]:
    """(left operand IRI, operator IRI, right operand values) of each constraint; a logical
    ``or`` constraint is (odrl:or, None, [its parts, read the same way])."""
    found: list[Any] = []
    for c in nodes(node, prop):
        if ODRL + "or" in c:
            (parts,) = nodes(c, ODRL + "or")
            found.append((ODRL + "or", None, constraints({"parts": parts["@list"]}, "parts")))
            continue
        found.append(
            (
                iri(c, ODRL + "leftOperand"),
                iri(c, ODRL + "operator"),
                [v.get("@id", v) for v in nodes(c, ODRL + "rightOperand")],
            )
        )
    return found


def constraint(
    node: dict[str, Any], left: str, operator: str, prop: str = ODRL + "constraint"
) -> list[Any]:
    """The right operand values of the one constraint (or refinement) on left and operator."""
    found = constraints(node, prop)
    matches = [right for (lft, op, right) in found if (lft, op) == (left, operator)]
    assert len(matches) == 1, (left, operator, found)
    right: list[Any] = matches[0]
    return right


def duties(rule: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in nodes(rule, ODRL + "duty") if action(d) == ODRL + kind]


def literal(value: str, datatype: str) -> dict[str, str]:
    return {"@value": value, "@type": XSD + datatype}


def purpose_iri(purpose: int) -> str:
    return V + exports.PURPOSE_NAMES[purpose]


def model_iri(model: int) -> str:
    return V + exports.PAYMENT_MODEL_NAMES[model]


# --- fixtures ---------------------------------------------------------------------------------


def _money(micros: int, currency: str = "USD") -> terms_pb2.Money:
    return terms_pb2.Money(currency_code=currency, micros=micros)


def make_token(
    *,
    selector: str = "item_ids",
    purposes: Iterable[int] | None = None,
    attribution: bool = True,
    deletion_days: int | None = 7,
    excluded: list[str] | None = None,
) -> consent_pb2.ConsentToken:
    if purposes is None:
        purposes = [
            terms_pb2.PURPOSE_TRAIN_AI,
            terms_pb2.PURPOSE_AI_INPUT,
            terms_pb2.PURPOSE_EVALUATION,
        ]
    token = consent_pb2.ConsentToken(
        purposes=[terms_pb2.Purpose.ValueType(p) for p in purposes],
        excluded_lab_key_ids=EXCLUDED if excluded is None else excluded,
        nonce=b"n" * 16,
    )
    if selector == "item_ids":
        token.items.item_ids.item_ids.extend(ITEMS)
    elif selector == "tag":
        token.items.tag = "holiday-photos"
    else:
        token.items.all_items = True
    token.floor.prices.add(
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE, minimum_per_item=_money(1_250_000)
    )
    subscription = token.floor.prices.add(
        payment_model=terms_pb2.PAYMENT_MODEL_SUBSCRIPTION, minimum_per_item=_money(1)
    )
    subscription.period.seconds = 30 * DAY
    token.floor.prices.add(
        payment_model=terms_pb2.PAYMENT_MODEL_PER_USE, minimum_per_item=_money(123_456_789)
    )
    token.floor.attribution_required = attribution
    token.floor.max_licence_duration.seconds = 365 * DAY
    if deletion_days is not None:
        token.floor.max_deletion_deadline.seconds = deletion_days * DAY
    token.not_before.seconds = NOT_BEFORE
    token.not_after.seconds = NOT_AFTER
    token.created_time.seconds = CREATED
    return token


def make_agreement(*, attribution: bool = True) -> access_pb2.Agreement:
    agreement = access_pb2.Agreement(
        negotiation_id="9f" * 16,
        lab_key_id=LAB,
        covered_items_root=bytes(range(32)),
        covered_item_count=len(ITEMS),
        covered_item_ids=sorted(ITEMS),
        nonce=b"n" * 16,
    )
    terms = agreement.terms
    terms.purposes.extend([terms_pb2.PURPOSE_TRAIN_GENAI, terms_pb2.PURPOSE_SEARCH])
    terms.payment_model = terms_pb2.PAYMENT_MODEL_SUBSCRIPTION
    terms.price_per_item.CopyFrom(_money(2_000_001))
    terms.subscription_period.seconds = 7 * DAY
    terms.licence_duration.seconds = 90 * DAY
    terms.attribution = attribution
    terms.deletion_deadline.seconds = 14 * DAY
    terms.lease_duration.seconds = 3600
    agreement.expiry_time.seconds = NOT_AFTER
    agreement.created_time.seconds = CREATED
    return agreement


def consent_policy(token: consent_pb2.ConsentToken | None = None) -> dict[str, Any]:
    return policy_node(exports.consent_to_odrl(CONSENT_ID, MEMBER, token or make_token()))


def party(key_id: str) -> str:
    return f"{BASE}party/{key_id}"


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "expected"),
    [
        (0, "0"),
        (1, "0.000001"),
        (10, "0.00001"),
        (1_250_000, "1.25"),
        (10_000_000, "10"),
        (123_456_789, "123.456789"),
        (10**15, "1000000000"),
        (2**63 - 1, "9223372036854.775807"),
    ],
)
def test_money_is_an_exact_decimal(micros: int, expected: str) -> None:
    assert exports.decimal_string(micros) == expected
    assert Decimal(expected) * 10**6 == micros


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (30 * DAY, 0, "P30D"),
        (3600, 0, "PT1H"),
        (DAY + 3661, 500_000_000, "P1DT1H1M1.5S"),
        (0, 0, "PT0S"),
        (0, 1, "PT0.000000001S"),
        (90, 0, "PT1M30S"),
        (-DAY, 0, "-P1D"),
    ],
)
def test_durations_are_iso_8601(seconds: int, nanos: int, expected: str) -> None:
    assert exports.iso_duration(Duration(seconds=seconds, nanos=nanos)) == expected


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (NOT_BEFORE, 0, "2026-01-01T00:00:00Z"),
        (NOT_BEFORE + 1, 250_000_000, "2026-01-01T00:00:01.25Z"),
        (-62_135_596_800, 0, "0001-01-01T00:00:00Z"),
        (253_402_300_799, 999_999_999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_times_are_rfc_3339(seconds: int, nanos: int, expected: str) -> None:
    assert exports.rfc3339(Timestamp(seconds=seconds, nanos=nanos)) == expected


# --- consent as ODRL --------------------------------------------------------------------------


def test_consent_is_an_offer_assigned_by_the_member() -> None:
    document = exports.consent_to_odrl(CONSENT_ID, MEMBER, make_token())
    assert document["@context"][0] == "http://www.w3.org/ns/odrl.jsonld"
    assert document["@context"][1] == {"coalition": exports.VOCABULARY}
    node = policy_node(document)
    assert node["@type"] == [ODRL + "Offer"]
    assert node["@id"] == f"{BASE}consent/{CONSENT_ID}"
    assert iri(node, ODRL + "profile") == exports.PROFILE
    assert iri(node, ODRL + "assigner") == party(MEMBER)
    assert iri(node, ODRL + "conflict") == ODRL + "prohibit"
    assert nodes(node, DCT_ISSUED) == [literal("2025-12-31T23:50:00Z", "dateTime")]
    for rule in nodes(node, ODRL + "permission") + nodes(node, ODRL + "prohibition"):
        assert iri(rule, ODRL + "assigner") == party(MEMBER)


def test_every_purpose_is_a_use_permission_with_a_purpose_constraint() -> None:
    token = make_token()
    node = consent_policy(token)
    permissions = nodes(node, ODRL + "permission")
    assert len(permissions) == len(token.purposes)
    found = []
    for rule in permissions:
        assert action(rule) == ODRL + "use"
        assert ODRL + "assignee" not in rule  # an offer to any lab
        (purpose,) = constraint(rule, ODRL + "purpose", ODRL + "eq")
        found.append(purpose)
    assert found == [purpose_iri(p) for p in token.purposes]


def test_validity_window_and_licence_duration_bound_every_permission() -> None:
    for rule in nodes(consent_policy(), ODRL + "permission"):
        assert constraint(rule, ODRL + "dateTime", ODRL + "gteq") == [
            literal("2026-01-01T00:00:00Z", "dateTime")
        ]
        assert constraint(rule, ODRL + "dateTime", ODRL + "lt") == [
            literal("2027-01-01T00:00:00Z", "dateTime")
        ]
        assert constraint(rule, ODRL + "elapsedTime", ODRL + "lteq") == [
            literal("P365D", "duration")
        ]


def test_start_defaults_to_the_ledger_time_when_the_token_has_no_not_before() -> None:
    token = make_token()
    token.ClearField("not_before")
    bare = consent_policy(token)
    for rule in nodes(bare, ODRL + "permission"):
        assert (ODRL + "dateTime", ODRL + "gteq") not in [c[:2] for c in constraints(rule)]
    sequenced = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    document = exports.consent_to_odrl(CONSENT_ID, MEMBER, token, sequenced_at=sequenced)
    for rule in nodes(policy_node(document), ODRL + "permission"):
        assert constraint(rule, ODRL + "dateTime", ODRL + "gteq") == [
            literal("2026-02-03T04:05:06Z", "dateTime")
        ]


def _compensation(duty: dict[str, Any]) -> tuple[str, dict[str, str], str, str, str]:
    """(payment model, amount literal, operator, unit, unit of count) of a compensate duty."""
    (model,) = constraint(duty, V + "paymentModel", ODRL + "eq")
    refined = one(duty, ODRL + "action")
    assert iri(refined, RDF_VALUE) == ODRL + "compensate"
    refinements = nodes(refined, ODRL + "refinement")
    (pay,) = [c for c in refinements if iri(c, ODRL + "leftOperand") == ODRL + "payAmount"]
    (count,) = constraint(refined, ODRL + "unitOfCount", ODRL + "eq", ODRL + "refinement")
    return (
        model,
        one(pay, ODRL + "rightOperand"),
        iri(pay, ODRL + "operator"),
        iri(pay, ODRL + "unit"),
        count,
    )


def test_every_price_floor_is_a_compensate_duty_per_payment_model() -> None:
    token = make_token()
    expected = {
        model_iri(terms_pb2.PAYMENT_MODEL_PURCHASE): "1.25",
        model_iri(terms_pb2.PAYMENT_MODEL_SUBSCRIPTION): "0.000001",
        model_iri(terms_pb2.PAYMENT_MODEL_PER_USE): "123.456789",
    }
    for rule in nodes(consent_policy(token), ODRL + "permission"):
        assert sorted(constraint(rule, V + "paymentModel", ODRL + "isAnyOf")) == sorted(expected)
        compensations = duties(rule, "compensate")
        assert len(compensations) == 3
        found = {}
        for duty in compensations:
            assert iri(duty, ODRL + "compensatedParty") == party(MEMBER)
            model, amount, operator, unit, count = _compensation(duty)
            assert operator == ODRL + "gteq"
            assert unit == V + "currency/USD"
            assert count == V + "item"
            assert amount["@type"] == XSD + "decimal"
            found[model] = amount["@value"]
            periods = [c for c in constraints(duty) if c[0] == ODRL + "timeInterval"]
            if model == model_iri(terms_pb2.PAYMENT_MODEL_SUBSCRIPTION):
                assert periods == [
                    (ODRL + "timeInterval", ODRL + "eq", [literal("P30D", "duration")])
                ]
            else:
                assert periods == []
        assert found == expected


@pytest.mark.parametrize("attribution", [True, False])
def test_attribution_duty_only_when_required(attribution: bool) -> None:
    for rule in nodes(consent_policy(make_token(attribution=attribution)), ODRL + "permission"):
        attribute = duties(rule, "attribute")
        if attribution:
            assert [iri(d, ODRL + "attributedParty") for d in attribute] == [party(MEMBER)]
        else:
            assert attribute == []


@pytest.mark.parametrize(("days", "expected"), [(7, "P7D"), (None, "P30D")])
def test_deletion_deadline_is_a_delete_duty_after_a_withdrawal_notice(
    days: int | None, expected: str
) -> None:
    for rule in nodes(consent_policy(make_token(deletion_days=days)), ODRL + "permission"):
        (delete,) = duties(rule, "delete")
        assert sorted(constraints(delete)) == sorted(
            [
                (ODRL + "event", ODRL + "gt", [V + "withdrawal-notice"]),
                (ODRL + "elapsedTime", ODRL + "lteq", [literal(expected, "duration")]),
            ]
        )


def test_excluded_labs_are_prohibited_and_prohibitions_win() -> None:
    node = consent_policy()
    prohibitions = nodes(node, ODRL + "prohibition")
    assert [iri(p, ODRL + "assignee") for p in prohibitions] == [party(lab) for lab in EXCLUDED]
    target = f"{BASE}consent/{CONSENT_ID}/items"
    for rule in prohibitions:
        assert action(rule) == ODRL + "use"
        assert iri(rule, ODRL + "target") == target
    assert iri(node, ODRL + "conflict") == ODRL + "prohibit"
    assert ODRL + "prohibition" not in consent_policy(make_token(excluded=[]))


def test_explicit_items_are_assets_part_of_the_target_collection() -> None:
    node = consent_policy(make_token(selector="item_ids"))
    target = one(node, ODRL + "target")
    assert target["@id"] == f"{BASE}consent/{CONSENT_ID}/items"
    assert target["@type"] == [ODRL + "AssetCollection"]
    assert iris(target["@reverse"], ODRL + "partOf") == [f"{BASE}item/{i}" for i in ITEMS]
    for rule in nodes(node, ODRL + "permission"):
        assert iri(rule, ODRL + "target") == target["@id"]


def test_a_tag_is_a_refinement_of_the_members_collection() -> None:
    node = consent_policy(make_token(selector="tag"))
    target = one(node, ODRL + "target")
    assert target["@type"] == [ODRL + "AssetCollection"]
    assert iri(target, ODRL + "source") == f"{BASE}party/{MEMBER}/items"
    assert constraints(target, ODRL + "refinement") == [
        (V + "tags", ODRL + "hasPart", [{"@value": "holiday-photos"}])
    ]


def test_all_items_is_the_members_collection() -> None:
    node = consent_policy(make_token(selector="all_items"))
    target = one(node, ODRL + "target")
    assert target["@id"] == f"{BASE}party/{MEMBER}/items"
    assert target["@type"] == [ODRL + "AssetCollection"]
    for rule in nodes(node, ODRL + "permission"):
        assert iri(rule, ODRL + "target") == target["@id"]


def test_odrl_round_trips_through_compaction_and_rdf() -> None:
    document = exports.consent_to_odrl(CONSENT_ID, MEMBER, make_token())
    expanded = expand(document)
    compacted = jsonld.compact(expanded, {"@context": document["@context"]}, OPTIONS)
    assert jsonld.expand(compacted, OPTIONS) == expanded
    nquads: str = jsonld.to_rdf(document, {**OPTIONS, "format": "application/n-quads"})
    uid = document["uid"]
    assert f"<{uid}> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <{ODRL}Offer> ." in nquads
    assert f'"123.456789"^^<{XSD}decimal>' in nquads
    assert f"<{BASE}item/{ITEMS[0]}> <{ODRL}partOf> <{uid}/items> ." in nquads
    # Every IRI is absolute: nothing fell back to a relative reference or a dropped term.
    assert "coalition:" not in nquads


VOCAB_TYPED = {"action", "operator", "leftOperand", "conflict"}


def _undefined_terms(value: Any, terms: set[str], prefixes: set[str]) -> list[str]:
    """Keys (and @vocab-typed values) a JSON-LD processor would silently drop or misread."""

    def defined(name: str) -> bool:
        return name.startswith("@") or name in terms or name.split(":", 1)[0] in prefixes

    missing: list[str] = []
    if isinstance(value, list):
        for element in value:
            missing += _undefined_terms(element, terms, prefixes)
    elif isinstance(value, dict):
        for key, element in value.items():
            if key == "@context":
                continue
            if not defined(key):
                missing.append(key)
            if key in VOCAB_TYPED and isinstance(element, str) and not defined(element):
                missing.append(element)
            missing += _undefined_terms(element, terms, prefixes)
    return missing


def test_every_term_used_is_defined_by_a_context() -> None:
    odrl_context = ODRL_CONTEXT_DOCUMENT["@context"]
    prefixes = {k for k, v in odrl_context.items() if isinstance(v, str) and v.endswith(("/", "#"))}
    prefixes.add("coalition")
    documents = [
        exports.consent_to_odrl(CONSENT_ID, MEMBER, make_token(selector=selector))
        for selector in ("item_ids", "tag", "all_items")
    ]
    documents.append(exports.agreement_to_odrl("a9" * 16, make_agreement(), COALITION))
    for document in documents:
        assert _undefined_terms(document, set(odrl_context), prefixes) == []


def test_base_uri_without_a_trailing_slash() -> None:
    document = exports.consent_to_odrl(
        CONSENT_ID, MEMBER, make_token(), base_uri="https://pool.example.org/c"
    )
    assert document["uid"] == f"https://pool.example.org/c/consent/{CONSENT_ID}"


def test_tokens_outside_the_vocabulary_are_refused() -> None:
    token = make_token(purposes=[terms_pb2.PURPOSE_UNSPECIFIED])
    with pytest.raises(ValueError, match="purpose"):
        exports.consent_to_odrl(CONSENT_ID, MEMBER, token)
    with pytest.raises(ValueError, match="purpose"):
        exports.consent_to_rsl(CONSENT_ID, MEMBER, token)
    no_items = make_token()
    no_items.ClearField("items")
    with pytest.raises(ValueError, match="items"):
        exports.consent_to_odrl(CONSENT_ID, MEMBER, no_items)
    with pytest.raises(ValueError, match="items"):
        exports.consent_to_rsl(CONSENT_ID, MEMBER, no_items)


# --- agreement as ODRL ------------------------------------------------------------------------


def test_agreement_is_between_the_coalition_and_the_lab() -> None:
    agreement = make_agreement()
    document = exports.agreement_to_odrl("a9" * 16, agreement, COALITION)
    node = policy_node(document)
    assert node["@type"] == [ODRL + "Agreement"]
    assert node["@id"] == f"{BASE}agreement/{'a9' * 16}"
    assert iri(node, ODRL + "assigner") == party(COALITION)
    assert iri(node, ODRL + "assignee") == party(LAB)
    assert iri(node, V + "negotiation") == f"{BASE}negotiation/{'9f' * 16}"
    assert nodes(node, DCT_ISSUED) == [literal("2025-12-31T23:50:00Z", "dateTime")]

    target = one(node, ODRL + "target")
    assert target["@type"] == [ODRL + "AssetCollection"]
    assert nodes(target, V + "coveredItemsRoot") == [literal(bytes(range(32)).hex(), "hexBinary")]
    assert nodes(target, V + "coveredItemCount") == [{"@value": 3}]
    assert iris(target["@reverse"], ODRL + "partOf") == [f"{BASE}item/{i}" for i in sorted(ITEMS)]

    permissions = nodes(node, ODRL + "permission")
    assert [constraint(r, ODRL + "purpose", ODRL + "eq")[0] for r in permissions] == [
        purpose_iri(terms_pb2.PURPOSE_TRAIN_GENAI),
        purpose_iri(terms_pb2.PURPOSE_SEARCH),
    ]
    for rule in permissions:
        assert action(rule) == ODRL + "use"
        assert iri(rule, ODRL + "target") == target["@id"]
        assert iri(rule, ODRL + "assignee") == party(LAB)
        assert constraint(rule, ODRL + "dateTime", ODRL + "lt") == [
            literal("2027-01-01T00:00:00Z", "dateTime")
        ]
        assert constraint(rule, ODRL + "elapsedTime", ODRL + "lteq") == [
            literal("P90D", "duration")
        ]
        assert constraint(rule, V + "leaseDuration", ODRL + "lteq") == [literal("PT1H", "duration")]
        (pay,) = duties(rule, "compensate")
        assert iri(pay, ODRL + "compensatedParty") == party(COALITION)
        assert iri(pay, ODRL + "compensatingParty") == party(LAB)
        assert _compensation(pay) == (
            model_iri(terms_pb2.PAYMENT_MODEL_SUBSCRIPTION),
            literal("2.000001", "decimal"),
            ODRL + "eq",
            V + "currency/USD",
            V + "item",
        )
        assert constraint(pay, ODRL + "timeInterval", ODRL + "eq") == [literal("P7D", "duration")]
        (delete,) = duties(rule, "delete")
        assert constraint(delete, ODRL + "elapsedTime", ODRL + "lteq") == [
            literal("P14D", "duration")
        ]
        (attribute,) = duties(rule, "attribute")
        contributors = one(attribute, ODRL + "attributedParty")
        assert contributors["@id"] == f"{BASE}agreement/{'a9' * 16}/contributors"
        assert contributors["@type"] == [ODRL + "PartyCollection"]


def test_agreement_without_attribution_has_no_attribute_duty() -> None:
    node = policy_node(
        exports.agreement_to_odrl("a9" * 16, make_agreement(attribution=False), COALITION)
    )
    for rule in nodes(node, ODRL + "permission"):
        assert duties(rule, "attribute") == []


# --- consent as RSL ---------------------------------------------------------------------------


def rsl(token: consent_pb2.ConsentToken | None = None) -> ET.Element:
    text = exports.consent_to_rsl(CONSENT_ID, MEMBER, token or make_token())
    assert text.startswith("<?xml")
    return ET.fromstring(text)


def test_rsl_document_structure() -> None:
    root = rsl()
    assert root.tag == RSL + "rsl"
    (content,) = root.findall(RSL + "content")
    assert content.get("url") == f"{BASE}consent/{CONSENT_ID}/items/*"
    assert content.findtext(RSL + "terms") == f"{BASE}consent/{CONSENT_ID}"
    assert content.findtext(RSL + "copyright") == party(MEMBER)
    # Nothing unknown in the RSL namespace (that would make the document non-conformant).
    allowed = {"rsl", "content", "license", "permits", "prohibits", "payment", "amount"}
    allowed |= {"standard", "custom", "legal", "copyright", "terms", "schema"}
    for element in root.iter():
        if element.tag.startswith(RSL):
            assert element.tag.removeprefix(RSL) in allowed


def test_rsl_has_one_licence_per_price_floor_with_exact_amounts() -> None:
    licences = rsl().findall(f"{RSL}content/{RSL}license")
    payments = []
    for licence in licences:
        (payment,) = licence.findall(RSL + "payment")
        (amount,) = payment.findall(RSL + "amount")
        payments.append((payment.get("type"), amount.get("currency"), amount.text))
    assert payments == [
        ("purchase", "USD", "1.25"),
        ("subscription", "USD", "0.000001"),
        ("use", "USD", "123.456789"),
    ]


def test_rsl_permits_exactly_the_mapped_usage_tokens() -> None:
    for licence in rsl().findall(f"{RSL}content/{RSL}license"):
        (permits,) = licence.findall(RSL + "permits")
        assert permits.get("type") == "usage"
        assert permits.text is not None
        assert permits.text.split(" ") == ["ai-train", "ai-input", "coalition:evaluation"]


@pytest.mark.parametrize(
    ("purposes", "tokens"),
    [
        ([terms_pb2.PURPOSE_TRAIN_AI], ["ai-train"]),
        ([terms_pb2.PURPOSE_TRAIN_GENAI], ["coalition:train-genai"]),
        ([terms_pb2.PURPOSE_TRAIN_GENAI, terms_pb2.PURPOSE_TRAIN_AI], ["ai-train"]),
        ([terms_pb2.PURPOSE_AI_INPUT], ["ai-input"]),
        ([terms_pb2.PURPOSE_AI_INDEX], ["ai-index"]),
        ([terms_pb2.PURPOSE_SEARCH], ["search"]),
        ([terms_pb2.PURPOSE_EVALUATION], ["coalition:evaluation"]),
        (
            [terms_pb2.PURPOSE_SEARCH, terms_pb2.PURPOSE_AI_INDEX, terms_pb2.PURPOSE_TRAIN_AI],
            ["ai-train", "ai-index", "search"],
        ),
    ],
)
def test_rsl_usage_mapping_never_grants_more(purposes: list[int], tokens: list[str]) -> None:
    assert exports.rsl_usage_tokens(purposes) == tokens
    root = rsl(make_token(purposes=purposes))
    for permits in root.iter(RSL + "permits"):
        assert permits.text is not None
        assert permits.text.split(" ") == tokens


@pytest.mark.parametrize(("attribution", "kind"), [(True, "attribution"), (False, "free")])
def test_rsl_zero_floor_is_free_or_attribution(attribution: bool, kind: str) -> None:
    token = make_token(attribution=attribution)
    token.floor.prices[0].minimum_per_item.micros = 0
    token.floor.prices[2].minimum_per_item.micros = 0
    payments = [
        (p.get("type"), p.findtext(RSL + "amount")) for p in rsl(token).iter(RSL + "payment")
    ]
    assert payments == [(kind, None), ("subscription", "0.000001")]


def test_rsl_refuses_a_token_without_a_price() -> None:
    token = make_token()
    token.floor.ClearField("prices")
    with pytest.raises(ValueError, match="price"):
        exports.consent_to_rsl(CONSENT_ID, MEMBER, token)


def test_rsl_extension_keeps_what_rsl_cannot_say() -> None:
    (ext,) = rsl().findall(EXT + "consent")
    assert ext.get("id") == CONSENT_ID
    assert ext.get("policy") == f"{BASE}consent/{CONSENT_ID}"
    assert ext.get("contributor") == party(MEMBER)
    assert ext.get("notBefore") == "2026-01-01T00:00:00Z"
    assert ext.get("notAfter") == "2027-01-01T00:00:00Z"
    items = ext.find(EXT + "items")
    assert items is not None
    assert items.get("selector") == "item-ids"
    assert [i.text for i in items.findall(EXT + "item")] == ITEMS
    assert ext.findtext(EXT + "purposes") == "train-ai ai-input evaluation"
    prices = [
        (p.get("model"), p.get("currency"), p.get("period"), p.text)
        for p in ext.findall(EXT + "price")
    ]
    assert prices == [
        ("purchase", "USD", None, "1.25"),
        ("subscription", "USD", "P30D", "0.000001"),
        ("per-use", "USD", None, "123.456789"),
    ]
    attribution = ext.find(EXT + "attribution")
    assert attribution is not None
    assert attribution.get("required") == "true"
    assert ext.findtext(EXT + "maxLicenceDuration") == "P365D"
    assert ext.findtext(EXT + "maxDeletionDeadline") == "P7D"
    assert [e.text for e in ext.findall(EXT + "excludedLab")] == EXCLUDED


@pytest.mark.parametrize(("selector", "text"), [("tag", "holiday-photos"), ("all_items", None)])
def test_rsl_extension_names_tag_and_all_items(selector: str, text: str | None) -> None:
    items = rsl(make_token(selector=selector)).find(f"{EXT}consent/{EXT}items")
    assert items is not None
    assert items.get("selector") == {"tag": "tag", "all_items": "all"}[selector]
    assert items.text == text


# --- random valid tokens ----------------------------------------------------------------------

HEX = "0123456789abcdef"
_ids = st.text(HEX, min_size=32, max_size=32)
_keys = st.text(HEX, min_size=64, max_size=64)
_durations = st.builds(
    lambda s, n: Duration(seconds=s, nanos=n),
    st.integers(0, 36_525 * DAY),
    st.sampled_from([0, 0, 1, 500_000_000, 999_999_999]),
)


@st.composite
def tokens(draw: st.DrawFn) -> consent_pb2.ConsentToken:
    purposes = draw(
        st.lists(st.sampled_from(sorted(exports.PURPOSE_NAMES)), min_size=1, unique=True)
    )
    token = consent_pb2.ConsentToken(
        purposes=[terms_pb2.Purpose.ValueType(p) for p in purposes],
        excluded_lab_key_ids=draw(st.lists(_keys, max_size=3, unique=True)),
        nonce=draw(st.binary(min_size=16, max_size=64)),
    )
    selector = draw(st.sampled_from(["item_ids", "tag", "all_items"]))
    if selector == "item_ids":
        token.items.item_ids.item_ids.extend(
            draw(st.lists(_ids, min_size=1, max_size=5, unique=True))
        )
    elif selector == "tag":
        token.items.tag = draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True))
    else:
        token.items.all_items = True
    currency = draw(st.sampled_from(["USD", "EUR", "JPY"]))
    models = draw(
        st.lists(st.sampled_from(sorted(exports.PAYMENT_MODEL_NAMES)), min_size=1, unique=True)
    )
    for model in models:
        price = token.floor.prices.add(
            payment_model=model, minimum_per_item=_money(draw(st.integers(0, 10**15)), currency)
        )
        if model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
            price.period.CopyFrom(draw(_durations))
    token.floor.attribution_required = draw(st.booleans())
    if draw(st.booleans()):
        token.floor.max_licence_duration.CopyFrom(draw(_durations))
    if draw(st.booleans()):
        token.floor.max_deletion_deadline.CopyFrom(draw(_durations))
    start = draw(st.integers(0, 4_000_000_000))
    if draw(st.booleans()):
        token.not_before.seconds = start
    token.not_after.seconds = start + draw(st.integers(1, 3653 * DAY))
    token.not_after.nanos = draw(st.integers(0, 999_999_999))
    token.created_time.seconds = start
    return token


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=tokens(), consent_id=_ids, member=_keys)
def test_any_valid_token_exports_and_expands(
    token: consent_pb2.ConsentToken, consent_id: str, member: str
) -> None:
    node = policy_node(exports.consent_to_odrl(consent_id, member, token))
    permissions = nodes(node, ODRL + "permission")
    assert [constraint(r, ODRL + "purpose", ODRL + "eq")[0] for r in permissions] == [
        purpose_iri(p) for p in token.purposes
    ]
    floors = {model_iri(p.payment_model): p.minimum_per_item.micros for p in token.floor.prices}
    for rule in permissions:
        assert constraint(rule, ODRL + "dateTime", ODRL + "lt") == [
            literal(exports.rfc3339(token.not_after), "dateTime")
        ]
        paid = {}
        for duty in duties(rule, "compensate"):
            model, amount, _, _, _ = _compensation(duty)
            paid[model] = Decimal(amount["@value"]) * 10**6
        assert paid == floors
        assert len(duties(rule, "delete")) == 1
        assert len(duties(rule, "attribute")) == int(token.floor.attribution_required)
    assert [iri(p, ODRL + "assignee") for p in nodes(node, ODRL + "prohibition")] == [
        party(lab) for lab in token.excluded_lab_key_ids
    ]

    root = ET.fromstring(exports.consent_to_rsl(consent_id, member, token))
    assert root.tag == RSL + "rsl"
    expected_tokens = exports.rsl_usage_tokens(token.purposes)
    for permits in root.iter(RSL + "permits"):
        assert permits.text is not None
        assert permits.text.split(" ") == expected_tokens
    amounts = {Decimal(a.text or "") * 10**6 for a in root.iter(RSL + "amount")}
    assert amounts == {micros for micros in floors.values() if micros}
    for element in root.iter(RSL + "amount"):
        assert element.get("currency") == token.floor.prices[0].minimum_per_item.currency_code


# --- JSON-LD losses ---------------------------------------------------------------------------

KEYWORD_ALIASES = {
    k for k, v in ODRL_CONTEXT_DOCUMENT["@context"].items() if isinstance(v, str) and v[:1] == "@"
}
ABSOLUTE_IRI = re.compile(r"(https?|urn):\S+")
# No base IRI: pyld would otherwise resolve an undefined term against a made-up base.
NO_BASE: dict[str, Any] = {**OPTIONS, "base": None}


def _input_keys(value: Any, found: Counter[str], empty: list[str]) -> None:
    if isinstance(value, list):
        for element in value:
            _input_keys(element, found, empty)
    elif isinstance(value, dict):
        for key, element in value.items():
            if key == "@context":
                continue
            if not key.startswith("@") and key not in KEYWORD_ALIASES:
                found[key] += 1
            if element in ([], None, {}):
                empty.append(key)
            _input_keys(element, found, empty)


def _expanded_iris(value: Any, properties: list[str], iris_found: list[str]) -> None:
    if isinstance(value, list):
        for element in value:
            _expanded_iris(element, properties, iris_found)
    elif isinstance(value, dict):
        for key, element in value.items():
            if key == "@id":
                iris_found.append(element)
            elif key == "@type" and "@value" not in value:
                iris_found.extend(element)
            elif not key.startswith("@"):
                properties.append(key)
            _expanded_iris(element, properties, iris_found)


def dropped_terms(document: dict[str, Any]) -> list[str]:
    """What JSON-LD silently loses or leaves unresolved in ``document``: keys no context
    defines (expansion drops them with their values), keys with nothing in them (no triple),
    and IRIs left relative or under an undefined prefix (``use`` when ``use`` is not a term;
    ``coalition:x`` without the prefix). Empty when every key survives expansion."""
    context = document["@context"]
    given: Counter[str] = Counter()
    empty: list[str] = []
    _input_keys(document, given, empty)
    problems = [f"empty value of {key!r}" for key in empty]
    for key in sorted(given):
        # Each key on its own: a key no context defines expands to nothing.
        probe = {"@context": context, key: {"@id": "urn:x:probe"}}
        if not jsonld.expand(probe, NO_BASE):
            problems.append(f"undefined key {key!r}")
    properties: list[str] = []
    found_iris: list[str] = []
    expanded = jsonld.expand(json.loads(json.dumps(document)), NO_BASE)
    _expanded_iris(expanded, properties, found_iris)
    if len(properties) != sum(given.values()):
        problems.append(f"{sum(given.values())} properties given, {len(properties)} expanded")
    for value in [*properties, *found_iris]:
        if ABSOLUTE_IRI.fullmatch(value) is None:
            problems.append(f"unresolved IRI {value!r}")
    return problems


def assert_lossless_json_ld(document: dict[str, Any]) -> str:
    """Expansion, compaction and RDF all succeed and lose nothing; returns the N-Quads."""
    assert dropped_terms(document) == []
    expanded = expand(document)
    compacted = jsonld.compact(expanded, {"@context": document["@context"]}, OPTIONS)
    assert jsonld.expand(compacted, OPTIONS) == expanded
    # Every key of the compacted output survives expansion too.
    assert dropped_terms(compacted) == []
    nquads: str = jsonld.to_rdf(document, {**OPTIONS, "format": "application/n-quads"})
    assert nquads
    assert "<coalition:" not in nquads  # an IRI under an undefined prefix
    return nquads


def test_dropped_terms_finds_what_json_ld_loses() -> None:
    document = exports.consent_to_odrl(CONSENT_ID, MEMBER, make_token())
    assert dropped_terms(document) == []
    broken = copy.deepcopy(document)
    broken["permission"][0]["paymentModel"] = "coalition:purchase"  # not a term
    broken["permission"][0]["action"] = "frobnicate"  # not an ODRL action
    broken["permission"][0]["constraint"][0]["nope:x"] = 1  # undefined prefix
    broken["permission"][1]["constraint"] = []  # vanishes
    problems = dropped_terms(broken)
    assert "undefined key 'paymentModel'" in problems
    assert "unresolved IRI 'frobnicate'" in problems
    assert "unresolved IRI 'nope:x'" in problems
    assert "empty value of 'constraint'" in problems
    assert any("properties given" in p for p in problems)


# --- members' norms and use declarations ------------------------------------------------------

VOCAB = norms.Vocabulary.load()
HARD = norms_pb2.NORM_STANCE_HARD
PRICED = norms_pb2.NORM_STANCE_PRICED
# One instance of every norm of the vocabulary (the examples of docs/norms.md).
NORM_PARAMETERS: dict[str, dict[str, Any]] = {
    "model-release": {"release": "open-weights"},
    "prohibited-use": {"domains": ["mass-surveillance", "military"]},
    "occupation": {"isco08": ["2166"]},
    "public-benefit": {"fund": "open-knowledge", "min_share_basis_points": 250},
    "jurisdiction": {"allowed": ["CA", "DE", "FR"]},
    "derivatives": {"forbidden": ["distillation"]},
    "withdrawal-effect": {
        "exclude_from_models_released_after": timedelta(days=90),
        "exclude_from_next_training_run": True,
    },
}
VALUES = [norms_pb2.EnduringValue.ValueType(v) for v in sorted(VOCAB.enduring_values)]


def example_norms(*stances: norms_pb2.NormStance.ValueType) -> list[norms_pb2.Norm]:
    """Every norm of the vocabulary, the i-th with stance ``stances[i % len]``, premium
    (i + 1) * 0.25 when priced, protecting the i-th enduring value (or none)."""
    result = []
    for i, (norm_id, parameters) in enumerate(NORM_PARAMETERS.items()):
        stance = stances[i % len(stances)]
        result.append(
            norms.make_norm(
                norm_id,
                stance,
                parameters,
                premium=_money((i + 1) * 250_000) if stance == PRICED else None,
                protects=([norms_pb2.ENDURING_VALUE_UNSPECIFIED, *VALUES])[i % (len(VALUES) + 1)],
            )
        )
    return norms.canonical_norms(result)


def token_with(norm_list: list[norms_pb2.Norm]) -> consent_pb2.ConsentToken:
    token = make_token()
    token.norms.extend(norm_list)
    norms.validate_norms(token.norms, "USD")
    return token


def full_declaration() -> terms_pb2.UseDeclaration:
    """A declaration with every field set."""
    declaration = terms_pb2.UseDeclaration(
        model_release=terms_pb2.MODEL_RELEASE_CLOSED,
        application_domains=["emotion-recognition", "targeted-advertising"],
        occupations=["2166", "2642"],
        jurisdictions=["DE-BY", "FR"],
        public_benefit_share_basis_points=100,
        public_benefit_fund="open-knowledge",
        distillation=True,
        third_party_fine_tunes=True,
    )
    declaration.withdrawal_commitments.exclude_from_next_training_run = True
    declaration.withdrawal_commitments.exclude_from_models_released_after.seconds = 180 * DAY
    norms.validate_declaration(declaration)
    return declaration


def test_the_examples_hold_every_norm_of_the_vocabulary() -> None:
    assert set(NORM_PARAMETERS) == set(VOCAB.norms)
    for stances in ([HARD], [PRICED], [HARD, PRICED]):
        assert {n.norm_id for n in token_with(example_norms(*stances)).norms} == set(VOCAB.norms)


def _breach(norm: norms_pb2.Norm) -> list[Any]:
    """The norm's breach constraint, expanded, as constraints() reads it."""
    rule = {"@context": exports._context(), "constraint": norms.norm_to_odrl(norm)["rule"]}
    rule["constraint"] = rule["constraint"]["constraint"]
    return constraints(policy_node(rule))


def _norm_iri(norm: norms_pb2.Norm) -> str:
    return V + "norm/" + norm.norm_id


def test_hard_norms_are_prohibitions_of_use_under_their_breach() -> None:
    token = token_with(example_norms(HARD))
    node = consent_policy(token)
    prohibitions = nodes(node, ODRL + "prohibition")
    by_lab = [p for p in prohibitions if ODRL + "assignee" in p]
    by_norm = [p for p in prohibitions if V + "norm" in p]
    assert len(by_lab) == len(EXCLUDED)
    assert len(by_norm) == len(token.norms) == len(prohibitions) - len(EXCLUDED)
    for norm, rule in zip(token.norms, by_norm, strict=True):
        assert action(rule) == ODRL + "use"
        assert iri(rule, V + "norm") == _norm_iri(norm)
        assert iri(rule, ODRL + "assigner") == party(MEMBER)
        assert iri(rule, ODRL + "target") == f"{BASE}consent/{CONSENT_ID}/items"
        assert constraints(rule) == _breach(norm)
        if norm.protects:
            value = VOCAB.enduring_values[norm.protects].id
            assert iris(rule, V + "protects") == [V + "value/" + value]
        else:
            assert V + "protects" not in rule
    # Hard norms owe nothing: each permission keeps exactly its floors' duties.
    for rule in nodes(node, ODRL + "permission"):
        assert len(duties(rule, "compensate")) == len(token.floor.prices)
    assert iri(node, ODRL + "conflict") == ODRL + "prohibit"


def test_priced_norms_are_premium_duties_per_payment_model() -> None:
    token = token_with(example_norms(PRICED))
    node = consent_policy(token)
    assert all(V + "norm" not in p for p in nodes(node, ODRL + "prohibition"))
    floors = {model_iri(p.payment_model): p for p in token.floor.prices}
    for rule in nodes(node, ODRL + "permission"):
        premiums = [d for d in duties(rule, "compensate") if V + "norm" in d]
        assert len(premiums) == len(token.norms) * len(floors)
        owed = set()
        for duty in premiums:
            model, amount, operator, unit, count = _compensation(duty)
            norm = next(n for n in token.norms if _norm_iri(n) == iri(duty, V + "norm"))
            assert iri(duty, ODRL + "compensatedParty") == party(MEMBER)
            assert operator == ODRL + "gteq"
            assert (unit, count) == (V + "currency/USD", V + "item")
            assert Decimal(amount["@value"]) * 10**6 == norm.premium_per_item.micros
            # The breach constraint, beside the payment model (and period) of its floor.
            rest = [c for c in constraints(duty) if c[0] != V + "paymentModel"]
            period = [c for c in rest if c[0] == ODRL + "timeInterval"]
            assert [c for c in rest if c not in period] == _breach(norm)
            if model == model_iri(terms_pb2.PAYMENT_MODEL_SUBSCRIPTION):
                assert period == [
                    (ODRL + "timeInterval", ODRL + "eq", [literal("P30D", "duration")])
                ]
            else:
                assert period == []
            owed.add((norm.norm_id, model))
        assert owed == {(n.norm_id, m) for n in token.norms for m in floors}


def test_a_token_without_norms_has_no_norm_rules() -> None:
    plain = exports.consent_to_odrl(CONSENT_ID, MEMBER, make_token())
    assert "coalition:norm" not in json.dumps(plain)
    node = policy_node(plain)
    assert len(nodes(node, ODRL + "prohibition")) == len(EXCLUDED)


def test_a_token_with_only_hard_norms_has_prohibitions_even_without_excluded_labs() -> None:
    token = make_token(excluded=[])
    token.norms.extend(example_norms(HARD))
    prohibitions = nodes(consent_policy(token), ODRL + "prohibition")
    assert [iri(p, V + "norm") for p in prohibitions] == [_norm_iri(n) for n in token.norms]


def agreement_with_declaration() -> access_pb2.Agreement:
    agreement = make_agreement()
    agreement.terms.declaration.CopyFrom(full_declaration())
    return agreement


def test_agreement_carries_the_use_declaration() -> None:
    agreement_id = "a9" * 16
    node = policy_node(
        exports.agreement_to_odrl(agreement_id, agreement_with_declaration(), COALITION)
    )
    declared = one(node, V + "useDeclaration")
    assert declared["@id"] == f"{BASE}agreement/{agreement_id}/declaration"
    assert declared["@type"] == [V + "UseDeclaration"]
    assert iris(declared, V + "modelRelease") == [V + "release/closed"]
    assert iris(declared, V + "applicationDomain") == [
        V + "domain/emotion-recognition",
        V + "domain/targeted-advertising",
    ]
    assert iris(declared, V + "automatedOccupation") == [V + "isco08/2166", V + "isco08/2642"]
    assert iris(declared, V + "processingLocation") == [V + "iso3166/DE-BY", V + "iso3166/FR"]
    assert nodes(declared, V + "publicBenefitShare") == [literal("100", "integer")]
    assert iris(declared, V + "publicBenefitFund") == [V + "fund/open-knowledge"]
    assert iris(declared, V + "derivative") == [
        V + "derivative/distillation",
        V + "derivative/third-party-fine-tunes",
    ]
    assert nodes(declared, V + "nextTrainingRunExclusion") == [literal("true", "boolean")]
    assert nodes(declared, V + "releasedModelExclusionDelay") == [literal("P180D", "duration")]
    # Every field of the declaration is exported: each names the operands it fills.
    operands = {o for f in VOCAB.declaration.values() for o in f.left_operands}
    assert {key for key in declared if key.startswith(V)} == {VOCAB.expand_iri(o) for o in operands}


def test_agreement_without_a_declaration_has_none() -> None:
    node = policy_node(exports.agreement_to_odrl("a9" * 16, make_agreement(), COALITION))
    assert V + "useDeclaration" not in node


def _documents_with_norms() -> list[tuple[str, dict[str, Any]]]:
    documents = [
        (
            f"consent, {name} norms",
            exports.consent_to_odrl(CONSENT_ID, MEMBER, token_with(example_norms(*stances))),
        )
        for name, stances in (("hard", [HARD]), ("priced", [PRICED]), ("mixed", [HARD, PRICED]))
    ]
    split = norms.canonical_norms(
        [
            norms.make_norm("prohibited-use", HARD, {"domains": ["military"]}),
            norms.make_norm(
                "prohibited-use",
                PRICED,
                {"domains": ["targeted-advertising"]},
                premium=_money(1),
            ),
            norms.make_norm("occupation", HARD, {"isco08": ["2166"]}),
            norms.make_norm("occupation", PRICED, {"isco08": ["2512"]}, premium=_money(2)),
        ]
    )
    documents.append(
        ("consent, repeated norms", exports.consent_to_odrl(CONSENT_ID, MEMBER, token_with(split)))
    )
    documents.append(
        (
            "agreement with a full declaration",
            exports.agreement_to_odrl("a9" * 16, agreement_with_declaration(), COALITION),
        )
    )
    documents.append(("the profile", norms.odrl_profile()))
    return documents


NORM_DOCUMENTS = _documents_with_norms()


@pytest.mark.parametrize(
    "document", [d for _, d in NORM_DOCUMENTS], ids=[name for name, _ in NORM_DOCUMENTS]
)
def test_exports_with_norms_are_lossless_json_ld(document: dict[str, Any]) -> None:
    nquads = assert_lossless_json_ld(document)
    if "uid" in document:
        assert f"<{document['uid']}> <{ODRL}profile> <{exports.PROFILE}> ." in nquads


def _coalition_iris(value: Any, found: set[str]) -> None:
    if isinstance(value, list):
        for element in value:
            _coalition_iris(element, found)
    elif isinstance(value, dict):
        for key, element in value.items():
            if key.startswith(V):
                found.add(key)
            if key in ("@id", "@type") and "@value" not in value:
                for entry in element if isinstance(element, list) else [element]:
                    if entry.startswith(V):
                        found.add(entry)
            _coalition_iris(element, found)


def test_the_profile_defines_every_term_the_exports_use() -> None:
    graph = expand(norms.odrl_profile())
    defined = {n["@id"] for n in graph}
    schemes = {n["@id"] for n in graph if n.get("@type") == [SKOS + "ConceptScheme"]}
    closed = {iri(n, SKOS + "inScheme") for n in graph if SKOS + "inScheme" in n}
    open_schemes = schemes - closed
    used: set[str] = set()
    documents = [d for name, d in NORM_DOCUMENTS if name != "the profile"]
    documents += [
        exports.consent_to_odrl(
            CONSENT_ID, MEMBER, make_token(selector=s, purposes=exports.PURPOSE_NAMES)
        )
        for s in ("item_ids", "tag", "all_items")
    ]
    for document in documents:
        _coalition_iris(expand(document), used)
    undefined = {
        term
        for term in used
        if term not in defined and not any(term.startswith(s) for s in open_schemes)
    }
    assert undefined == set()
    # Open schemes are exactly the code sets without a closed list of terms.
    assert {s.removeprefix(V) for s in open_schemes} == {
        "currency/",
        "isco08/",
        "iso3166/",
        "fund/",
    }
    for scheme in closed:
        assert scheme in schemes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=tokens(), norm_list=norm_sets(), use=declarations())
def test_any_valid_token_with_norms_exports_losslessly(
    token: consent_pb2.ConsentToken,
    norm_list: list[norms_pb2.Norm],
    use: terms_pb2.UseDeclaration,
) -> None:
    currency = token.floor.prices[0].minimum_per_item.currency_code
    for norm in norm_list:
        if norm.HasField("premium_per_item"):
            norm.premium_per_item.currency_code = currency
    token.norms.extend(norm_list)
    norms.validate_norms(token.norms, currency)
    document = exports.consent_to_odrl(CONSENT_ID, MEMBER, token)
    assert dropped_terms(document) == []
    node = policy_node(document)
    by_norm = [p for p in nodes(node, ODRL + "prohibition") if V + "norm" in p]
    assert [iri(p, V + "norm") for p in by_norm] == [
        _norm_iri(n) for n in norm_list if n.stance == HARD
    ]
    priced_count = sum(n.stance == PRICED for n in norm_list)
    for rule in nodes(node, ODRL + "permission"):
        premiums = [d for d in duties(rule, "compensate") if V + "norm" in d]
        assert len(premiums) == priced_count * len(token.floor.prices)
    agreement = make_agreement()
    agreement.terms.declaration.CopyFrom(use)
    assert dropped_terms(exports.agreement_to_odrl("a9" * 16, agreement, COALITION)) == []


# --- the documented examples are the real output ----------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def json_block_after(path: Path, heading: str, nth: int = 0) -> Any:
    """The ``nth`` ```json block after the line ``heading`` in a Markdown file."""
    text = path.read_text()
    start = text.index("\n" + heading + "\n")
    blocks = re.findall(r"```json\n(.*?)\n```", text[start:], flags=re.DOTALL)
    return json.loads(blocks[nth])


def docs_example_token() -> consent_pb2.ConsentToken:
    """The token of the "A token with norms" example in docs/exports.md."""
    token = consent_pb2.ConsentToken(purposes=[terms_pb2.PURPOSE_TRAIN_GENAI], nonce=b"n" * 16)
    token.items.all_items = True
    token.floor.prices.add(
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE, minimum_per_item=_money(2_500_000)
    )
    token.not_before.seconds = NOT_BEFORE
    token.not_after.seconds = NOT_AFTER
    token.created_time.seconds = CREATED
    options = [
        "prohibited-use:hard:domains=military,mass-surveillance:protects=safety",
        "model-release:priced:release=open-weights:premium=3.00",
    ]
    token.norms.extend(norms.canonical_norms(norms.parse_norm_option(o, "USD") for o in options))
    return token


def test_the_documented_exports_with_norms_are_the_output() -> None:
    exported = exports.consent_to_odrl("3f" * 16, "aa" * 32, docs_example_token())
    assert json_block_after(ROOT / "docs" / "exports.md", "### A token with norms") == exported
    assert_lossless_json_ld(exported)
    # docs/norms.md shows the two rules the norms became.
    norms_md = ROOT / "docs" / "norms.md"
    assert json_block_after(norms_md, "### In an export") == exported["prohibition"][0]
    (premium,) = [d for d in exported["permission"][0]["duty"] if "coalition:norm" in d]
    assert json_block_after(norms_md, "### In an export", 1) == premium

    agreement = make_agreement()
    declared = json_block_after(ROOT / "docs" / "exports.md", "### An agreement's use declaration")
    declaration = terms_pb2.UseDeclaration()
    for field, value in {
        "model_release": terms_pb2.MODEL_RELEASE_CLOSED,
        "application_domains": ["targeted-advertising"],
        "occupations": ["2166", "2642"],
        "jurisdictions": ["DE-BY", "FR"],
        "public_benefit_share_basis_points": 100,
        "public_benefit_fund": "open-knowledge",
        "third_party_fine_tunes": True,
    }.items():
        if isinstance(value, list):
            getattr(declaration, field).extend(value)
        else:
            setattr(declaration, field, value)
    declaration.withdrawal_commitments.exclude_from_next_training_run = True
    declaration.withdrawal_commitments.exclude_from_models_released_after.seconds = 180 * DAY
    agreement.terms.declaration.CopyFrom(declaration)
    policy = exports.agreement_to_odrl("a9" * 16, agreement, COALITION)
    assert declared == {"coalition:useDeclaration": policy["coalition:useDeclaration"]}
