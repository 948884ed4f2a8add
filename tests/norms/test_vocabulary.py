"""The vocabulary data file: it loads, it is closed and self-consistent, every norm has a
judgement, every declared field is judged, it ships in the package, docs/norms.md describes
it, and its ODRL mapping is valid JSON-LD that means what the judgement means."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import tomllib
from collections.abc import Callable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from pyld import jsonld  # type: ignore[import-untyped]

from coalition import norms
from coalition.norms import Vocabulary, VocabularyError
from coalition.v1 import norms_pb2, terms_pb2
from coalition_server.domain import exports
from tests.norms.test_judgement import CASES, declarations, norm_sets

ROOT = Path(__file__).resolve().parents[2]
DATA_FILE = ROOT / "client" / "coalition" / "data" / "norms-v1.json"
VOCAB = Vocabulary.load()
NS = VOCAB.namespace
ODRL = "http://www.w3.org/ns/odrl/2/"

# The norms the issue asks for, and the domains it names.
REQUIRED_NORMS = {
    "model-release",
    "prohibited-use",
    "occupation",
    "public-benefit",
    "jurisdiction",
    "derivatives",
    "withdrawal-effect",
}
REQUIRED_DOMAINS = {
    "military",
    "mass-surveillance",
    "biometric-identification",
    "political-persuasion",
    "impersonation",
}


def raw_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return document


# --- loading ----------------------------------------------------------------------------------


def test_loads_from_the_package_and_is_cached() -> None:
    resource = resources.files("coalition").joinpath("data", "norms-v1.json")
    assert resource.is_file()
    assert json.loads(resource.read_text()) == raw_document()
    assert Vocabulary.load() is Vocabulary.load("1") is VOCAB
    assert VOCAB.version == "1"


def test_has_the_norms_the_issue_asks_for() -> None:
    assert set(VOCAB.norms) >= REQUIRED_NORMS
    domains = VOCAB.norm("prohibited-use").parameter("domains")
    assert domains is not None
    assert domains.allowed is not None
    assert set(domains.allowed) >= REQUIRED_DOMAINS
    assert len(domains.allowed) > len(REQUIRED_DOMAINS)


def test_every_norm_in_the_file_has_a_judgement() -> None:
    in_file = {norm["id"] for norm in raw_document()["norms"]}
    missing = sorted(in_file - norms.judged_norm_ids())
    assert missing == [], f"write a breaks() rule for {missing}"
    stale = sorted(norms.judged_norm_ids() - in_file)
    assert stale == [], f"rules for norms the vocabulary does not have: {stale}"


def test_a_norm_without_a_judgement_does_not_load() -> None:
    document = raw_document()
    extra = copy.deepcopy(document["norms"][0])
    extra["id"] = "brand-new"
    document["norms"].append(extra)
    with pytest.raises(VocabularyError, match="no judgement"):
        norms._parse(document, "1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["declaration"].pop(), "every UseDeclaration field"),
        (lambda d: d["norms"][0]["parameters"][0].update(type="colour"), "unknown type"),
        (lambda d: d["norms"][3]["parameters"].reverse(), "sorted by name"),
        (lambda d: d["norms"][1]["parameters"][0]["allowed"].reverse(), "sorted"),
        (lambda d: d["norms"][0].update(judged_against=["nothing"]), "unknown field"),
        (lambda d: d.update(version="2"), "version"),
    ],
)
def test_a_malformed_file_does_not_load(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    document = raw_document()
    change(document)
    with pytest.raises(VocabularyError, match=message):
        norms._parse(document, "1")


# --- closed and consistent --------------------------------------------------------------------


def test_ids_are_stable_kebab_case_and_parameters_sorted() -> None:
    for spec in VOCAB.norms.values():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", spec.id)
        names = [p.name for p in spec.parameters]
        assert names == sorted(names)
        assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", n) for n in names)
        assert spec.title
        assert spec.description
        assert spec.breach


def test_every_declared_field_is_judged_by_some_norm() -> None:
    fields = set(terms_pb2.UseDeclaration.DESCRIPTOR.fields_by_name)
    judged = {field for spec in VOCAB.norms.values() for field in spec.judged_against}
    assert judged == fields == set(VOCAB.declaration)


def test_enduring_values_match_the_enum() -> None:
    enum = {v.number for v in norms_pb2.EnduringValue.DESCRIPTOR.values if v.number}
    assert set(VOCAB.enduring_values) == enum
    assert [v.id for v in VOCAB.enduring_values.values()] == [
        "privacy",
        "livelihood",
        "safety",
        "fairness",
        "autonomy",
        "commons",
    ]


def test_model_release_terms_cover_the_enum() -> None:
    enum = {v.number for v in terms_pb2.ModelRelease.DESCRIPTOR.values if v.number}
    assert VOCAB.declaration["model_release"].enum is not None
    assert set(VOCAB.declaration["model_release"].enum) == enum


def test_the_derivatives_judgement_knows_every_derivative_term() -> None:
    forbidden = VOCAB.norm("derivatives").parameter("forbidden")
    assert forbidden is not None
    assert set(forbidden.allowed or ()) == set(norms.DERIVATIVE_FIELDS)
    bools = {f.name for f in terms_pb2.UseDeclaration.DESCRIPTOR.fields if f.type == f.TYPE_BOOL}
    assert set(norms.DERIVATIVE_FIELDS.values()) <= bools


@pytest.mark.parametrize(
    ("norm_id", "parameter", "good", "bad"),
    [
        ("occupation", "isco08", ["0", "2", "21", "216", "2166"], ["", "21661", "21a", " 2"]),
        (
            "jurisdiction",
            "allowed",
            ["DE", "US-CA", "GB-LND", "FR-75C"],
            ["de", "DEU", "DE-", "DE-BAYE", "D", "DE BY"],
        ),
        ("public-benefit", "fund", ["open-knowledge", "x", "fund-2"], ["Fund", "a--b", "-a", "a-"]),
    ],
)
def test_patterns(norm_id: str, parameter: str, good: list[str], bad: list[str]) -> None:
    spec = VOCAB.norm(norm_id).parameter(parameter)
    assert spec is not None
    assert [t for t in good if spec.term_problem(t) is not None] == []
    assert [t for t in bad if spec.term_problem(t) is None] == []


def test_hierarchies() -> None:
    isco = VOCAB.norm("occupation").parameter("isco08")
    iso = VOCAB.norm("jurisdiction").parameter("allowed")
    assert isco is not None
    assert iso is not None
    assert isco.covers("21", "2166")
    assert not isco.covers("2166", "21")
    assert isco.overlaps("2166", "21")
    assert not isco.overlaps("21", "22")
    assert iso.covers("DE", "DE-BY")
    assert not iso.covers("DE-BY", "DE")
    assert not iso.covers("D", "DE")
    assert not iso.covers("US", "USA")


def test_ships_in_the_wheel() -> None:
    """pyproject's package-data must carry the data file into wheels and sdists."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["coalition"]
    relative = DATA_FILE.relative_to(ROOT / "client" / "coalition").as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), (
        f'add "data/*.json" to [tool.setuptools.package-data] coalition (has {patterns})'
    )


# --- docs -------------------------------------------------------------------------------------


def test_docs_describe_the_vocabulary() -> None:
    text = (ROOT / "docs" / "norms.md").read_text()
    words: list[str] = list(norms.NORM_REASONS)
    for spec in VOCAB.norms.values():
        words.append(spec.id)
        words.extend(p.name for p in spec.parameters)
        for p in spec.parameters:
            words.extend(p.allowed or ())
        words.extend(b.left_operand for b in spec.odrl_breach)
    words.extend(v.id for v in VOCAB.enduring_values.values())
    words.extend(VOCAB.declaration)
    missing = sorted({w for w in words if f"`{w}`" not in text})
    assert missing == [], f"document these in docs/norms.md: {missing}"


# --- ODRL -------------------------------------------------------------------------------------

ODRL_CONTEXT_DOCUMENT = json.loads((ROOT / "tests" / "domain" / "data" / "odrl.jsonld").read_text())


def _loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    if url not in {"http://www.w3.org/ns/odrl.jsonld", "https://www.w3.org/ns/odrl.jsonld"}:
        raise AssertionError(f"tests have no network: refused to load {url}")
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": copy.deepcopy(ODRL_CONTEXT_DOCUMENT),
    }


OPTIONS: dict[str, Any] = {"documentLoader": _loader}
TARGET = "https://coalition.example/consent/c0/items"


def policy(
    norm_list: list[norms_pb2.Norm], use: terms_pb2.UseDeclaration | None = None
) -> dict[str, Any]:
    """A minimal Offer carrying the norms' fragments (as exports.py will place them)."""
    prohibitions: list[dict[str, Any]] = []
    duties: list[dict[str, Any]] = []
    for norm in norm_list:
        fragment = norms.norm_to_odrl(norm)
        rule = {"target": TARGET, **fragment["rule"]}
        if fragment["kind"] == "prohibition":
            prohibitions.append(rule)
        else:
            assert fragment["kind"] == "duty"
            duties.append(rule)
    document: dict[str, Any] = {
        "@context": ["http://www.w3.org/ns/odrl.jsonld", {"coalition": exports.VOCABULARY}],
        "@type": "Offer",
        "uid": "https://coalition.example/consent/c0",
        "profile": exports.PROFILE,
        "conflict": "prohibit",
        "permission": [{"target": TARGET, "action": "use", "duty": duties}],
        "prohibition": prohibitions,
    }
    if use is not None:
        document[f"{VOCAB.prefix}:useDeclaration"] = norms.declaration_to_odrl(use)
    return document


def expand(document: dict[str, Any]) -> dict[str, Any]:
    expanded: list[dict[str, Any]] = jsonld.expand(json.loads(json.dumps(document)), OPTIONS)
    assert len(expanded) == 1
    return expanded[0]


def test_profile_is_the_exports_profile() -> None:
    assert VOCAB.profile == exports.PROFILE
    assert VOCAB.namespace == exports.VOCABULARY
    assert VOCAB.prefix == exports.PREFIX


def test_every_operand_and_term_is_in_the_profile_namespace() -> None:
    for spec in VOCAB.norms.values():
        for breach in spec.odrl_breach:
            assert breach.left_operand.startswith(VOCAB.prefix + ":")
            assert (breach.iri or f"{VOCAB.prefix}:").startswith(VOCAB.prefix + ":")
    for field in VOCAB.declaration.values():
        assert all(o.startswith(VOCAB.prefix + ":") for o in field.left_operands)


def test_hard_norm_is_a_prohibition() -> None:
    norm = norms.make_norm(
        "prohibited-use",
        norms_pb2.NORM_STANCE_HARD,
        {"domains": ["military", "mass-surveillance"]},
        protects=norms_pb2.ENDURING_VALUE_SAFETY,
    )
    node = expand(policy([norm]))
    [prohibition] = node[ODRL + "prohibition"]
    assert prohibition[ODRL + "action"] == [{"@id": ODRL + "use"}]
    [constraint] = prohibition[ODRL + "constraint"]
    assert constraint[ODRL + "leftOperand"] == [{"@id": NS + "applicationDomain"}]
    assert constraint[ODRL + "operator"] == [{"@id": ODRL + "isAnyOf"}]
    assert constraint[ODRL + "rightOperand"] == [
        {"@id": NS + "domain/mass-surveillance"},
        {"@id": NS + "domain/military"},
    ]
    assert prohibition[NS + "norm"] == [{"@id": NS + "norm/prohibited-use"}]
    assert prohibition[NS + "protects"] == [{"@id": NS + "value/safety"}]


def test_priced_norm_is_a_compensate_duty_under_the_breach() -> None:
    norm = norms.make_norm(
        "public-benefit",
        norms_pb2.NORM_STANCE_PRICED,
        {"fund": "open-knowledge", "min_share_basis_points": 250},
        premium=terms_pb2.Money(currency_code="USD", micros=1_250_000),
    )
    node = expand(policy([norm]))
    [permission] = node[ODRL + "permission"]
    [duty] = permission[ODRL + "duty"]
    [act] = duty[ODRL + "action"]
    assert act["http://www.w3.org/1999/02/22-rdf-syntax-ns#value"] == [{"@id": ODRL + "compensate"}]
    pay = next(
        r
        for r in act[ODRL + "refinement"]
        if r[ODRL + "leftOperand"][0]["@id"] == ODRL + "payAmount"
    )
    assert pay[ODRL + "rightOperand"] == [
        {"@value": "1.25", "@type": "http://www.w3.org/2001/XMLSchema#decimal"}
    ]
    assert pay[ODRL + "unit"] == [{"@id": NS + "currency/USD"}]
    [logical] = duty[ODRL + "constraint"]
    parts = logical[ODRL + "or"][0]["@list"]
    assert [p[ODRL + "leftOperand"][0]["@id"] for p in parts] == [
        NS + "publicBenefitFund",
        NS + "publicBenefitShare",
    ]
    assert parts[1][ODRL + "unit"] == [{"@id": NS + "basis-point"}]


@settings(max_examples=40, deadline=None)
@given(norm_sets(), declarations())
def test_fragments_are_valid_json_ld(
    norm_list: list[norms_pb2.Norm], use: terms_pb2.UseDeclaration
) -> None:
    document = policy(norm_list, use)
    node = expand(document)
    hard = [n for n in norm_list if n.stance == norms_pb2.NORM_STANCE_HARD]
    assert len(node.get(ODRL + "prohibition", [])) == len(hard)
    compacted = jsonld.compact(node, {"@context": document["@context"]}, OPTIONS)
    assert jsonld.expand(compacted, OPTIONS) == [node]
    assert jsonld.to_rdf(document, {**OPTIONS, "format": "application/n-quads"})


# A reading of the profile's constraints against a declaration node, to show the ODRL mapping
# says what breaks() decides. Codes: an occupation matches a code it overlaps (either
# includes the other); a place matches an allowed code that includes it.


def _code(iri: str) -> str:
    return iri.rsplit("/", 1)[1]


def _matches(operand: str, right: str, value: str) -> bool:
    if operand == "coalition:automatedOccupation":
        spec = VOCAB.norm("occupation").parameter("isco08")
        assert spec is not None
        return spec.overlaps(_code(right), _code(value))
    if operand == "coalition:processingLocation":
        spec = VOCAB.norm("jurisdiction").parameter("allowed")
        assert spec is not None
        return spec.covers(_code(right), _code(value))
    return right == value


def _seconds(text: str) -> int:
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
    assert match is not None, text
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _holds(constraint: dict[str, Any], node: dict[str, Any]) -> bool:
    if "or" in constraint:
        return any(_holds(c, node) for c in constraint["or"]["@list"])
    operand, operator, right = (
        constraint["leftOperand"],
        constraint["operator"],
        constraint["rightOperand"],
    )
    value = node.get(operand)
    if operator in ("isAnyOf", "isNoneOf"):
        values = [v["@id"] for v in value or []]
        rights = [r["@id"] for r in right]
        if operator == "isAnyOf":
            return any(_matches(operand, r, v) for r in rights for v in values)
        # A place outside every allowed code, or no place declared at all.
        return not values or any(not any(_matches(operand, r, v) for r in rights) for v in values)
    if operator == "neq":
        if value is None:
            return True
        key = "@id" if "@id" in right else "@value"
        return bool(value[key] != right[key])
    if operator == "lt":
        assert value is not None
        return int(value["@value"]) < int(right["@value"])
    if operator == "gt":
        # An absent delay is no commitment: longer than any.
        return value is None or _seconds(value["@value"]) > _seconds(right["@value"])
    raise AssertionError(f"operator {operator} not in the profile")


def _odrl_breaks(norm: norms_pb2.Norm, use: terms_pb2.UseDeclaration) -> bool:
    rule = norms.norm_to_odrl(norm)["rule"]
    return all(_holds(c, norms.declaration_to_odrl(use)) for c in rule["constraint"])


@pytest.mark.parametrize(
    ("norm", "use"),
    [pytest.param(n, d, id=f"{n.norm_id}: {name}") for name, n, d, _ in CASES],
)
def test_odrl_breach_means_breaks_examples(
    norm: norms_pb2.Norm, use: terms_pb2.UseDeclaration
) -> None:
    assert _odrl_breaks(norm, use) == norms.breaks(norm, use)


@settings(max_examples=300, deadline=None)
@given(norm_sets(), declarations())
def test_odrl_breach_means_breaks(
    norm_list: list[norms_pb2.Norm], use: terms_pb2.UseDeclaration
) -> None:
    for norm in norm_list:
        assert _odrl_breaks(norm, use) == norms.breaks(norm, use), norm


def test_durations_are_written_like_exports() -> None:
    from google.protobuf.duration_pb2 import Duration

    for seconds in (0, 1, 59, 60, 3600, 86_400, 90 * 86_400 + 3661, 315_360_000):
        duration = Duration()
        duration.FromTimedelta(timedelta(seconds=seconds))
        assert norms._iso_duration(seconds) == exports.iso_duration(duration)
