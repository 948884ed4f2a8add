"""Members' values as structured norms: the vocabulary, validation, and the judgement (pure).

A member attaches :class:`~coalition.v1.norms_pb2.Norm` messages to a consent; a lab
declares its intended use in a :class:`~coalition.v1.terms_pb2.UseDeclaration`. Both use one
closed, versioned vocabulary kept as a data file (``coalition/data/norms-v<N>.json``,
documented in docs/norms.md). This module reads it and answers the one question everything
else asks: *does this use break this norm?*

* :meth:`Vocabulary.load` reads and self-checks the data file (cached per version).
* :func:`validate_norms` and :func:`validate_declaration` refuse bad input with a
  :class:`NormError` carrying a machine reason (sent as google.rpc.ErrorInfo.reason).
* :func:`breaks` judges one norm against a declaration; :func:`assess` judges a token's norms
  and sums the premium a deal must add over the member's floor.
* :func:`norm_to_odrl` and :func:`declaration_to_odrl` give ODRL 2.2 fragments in the
  ``coalition:`` profile, for the exports; :func:`odrl_profile` is the profile document itself.
* :func:`parse_norm_option` and :func:`format_norm_option` read and write a norm as one
  command-line word (``prohibited-use:hard:domains=military``).

Decisions in short:

* **One encoding per meaning.** Signed payloads must mean one thing and have one encoding in
  every language: parameters are sorted by name with no repeats (no proto maps), list values
  are sorted and distinct, a hierarchical code never sits beside a code it includes, flags
  that may only be true are left out rather than set false, durations are whole seconds.
* **Fail closed.** What a declaration does not say counts against it: an undeclared model
  release breaks either model-release norm, a declaration without a jurisdiction breaks every
  jurisdiction norm, a withdrawal commitment not made breaks a norm that asks for it.
* **Declarations list what the lab will do.** Domains, occupations and jurisdictions it does
  not list it commits not to touch; so a longer list can only break more norms.
* **Norms on a token are in canonical order** (:func:`norm_order_key`: by id, then stance,
  premium and protected value), refused otherwise (``UNSORTED_NORMS``): the token is signed,
  so the server cannot sort it, and one order per set keeps one encoding per meaning.
  :func:`canonical_norms` sorts a list before signing.
* **Repeats.** A norm with ``repeat.disjoint_on`` (prohibited-use, occupation, derivatives)
  may appear more than once on a token, e.g. military hard and targeted advertising priced,
  if the instances share no value (codes overlap through the hierarchy) and differ in stance,
  premium or protected value (else they are one norm written twice). Every other norm appears
  at most once.
* **Premiums are per item, in the coalition's currency**, like floors: a deal breaking a
  priced norm owes the premium on top of the floor (:attr:`Assessment.premium_micros`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, cast

from coalition.errors import CoalitionError
from coalition.v1 import norms_pb2, terms_pb2

__all__ = [
    "NORM_REASONS",
    "Assessment",
    "DeclarationFieldSpec",
    "DeclarationFile",
    "DeclarationLimits",
    "EnduringValueSpec",
    "NormError",
    "NormSpec",
    "OdrlBreach",
    "ParameterSpec",
    "Vocabulary",
    "VocabularyError",
    "amend_to_keep",
    "assess",
    "breaks",
    "canonical_norms",
    "declaration_changes",
    "declaration_from_json",
    "declaration_to_json",
    "declaration_to_odrl",
    "format_norm_option",
    "judged_norm_ids",
    "load_declaration",
    "make_norm",
    "norm_order_key",
    "norm_to_odrl",
    "norm_value",
    "odrl_profile",
    "parse_norm_option",
    "read_declaration",
    "validate_declaration",
    "validate_norm",
    "validate_norms",
]

DEFAULT_VERSION: Final = "1"
ODRL_CONTEXT: Final = "http://www.w3.org/ns/odrl.jsonld"
# At most this many norms on one consent token.
MAX_NORMS: Final = 32
# Same ceiling as price floors: 10^9 currency units per item.
MAX_PREMIUM_MICROS: Final = 10**15
# Longest duration any parameter may take unless the vocabulary says less: 100 years.
MAX_DURATION_SECONDS: Final = 100 * 365 * 86_400
# Timestamp range of RFC 3339 (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z).
_MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
_MICROS: Final = 6
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

HARD: Final = norms_pb2.NORM_STANCE_HARD
PRICED: Final = norms_pb2.NORM_STANCE_PRICED

# Machine reasons of NormError, one per way a norm or a declaration is refused.
UNKNOWN_VOCABULARY: Final = "UNKNOWN_VOCABULARY"
TOO_MANY_NORMS: Final = "TOO_MANY_NORMS"
UNKNOWN_NORM: Final = "UNKNOWN_NORM"
UNKNOWN_PARAMETER: Final = "UNKNOWN_PARAMETER"
BAD_PARAMETER: Final = "BAD_PARAMETER"
MISSING_PARAMETER: Final = "MISSING_PARAMETER"
UNSORTED_PARAMETERS: Final = "UNSORTED_PARAMETERS"
CONTRADICTORY_NORMS: Final = "CONTRADICTORY_NORMS"
UNSORTED_NORMS: Final = "UNSORTED_NORMS"
BAD_STANCE: Final = "BAD_STANCE"
MISSING_PREMIUM: Final = "MISSING_PREMIUM"
BAD_PREMIUM: Final = "BAD_PREMIUM"
UNKNOWN_ENDURING_VALUE: Final = "UNKNOWN_ENDURING_VALUE"
MISSING_DECLARATION_FIELD: Final = "MISSING_DECLARATION_FIELD"
BAD_DECLARATION_FIELD: Final = "BAD_DECLARATION_FIELD"
NORM_REASONS: Final = (
    UNKNOWN_VOCABULARY,
    TOO_MANY_NORMS,
    UNKNOWN_NORM,
    UNKNOWN_PARAMETER,
    BAD_PARAMETER,
    MISSING_PARAMETER,
    UNSORTED_PARAMETERS,
    CONTRADICTORY_NORMS,
    UNSORTED_NORMS,
    BAD_STANCE,
    MISSING_PREMIUM,
    BAD_PREMIUM,
    UNKNOWN_ENDURING_VALUE,
    MISSING_DECLARATION_FIELD,
    BAD_DECLARATION_FIELD,
)

ParameterType = Literal["text", "texts", "flag", "number", "duration", "time"]
# The NormValue oneof members have exactly these names.
PARAMETER_TYPES: Final[tuple[ParameterType, ...]] = (
    "text",
    "texts",
    "flag",
    "number",
    "duration",
    "time",
)
Hierarchy = Literal["prefix", "subdivision"]
JsonObject = dict[str, Any]


class NormError(CoalitionError):
    """A norm or a declaration is refused: ``reason`` is one of :data:`NORM_REASONS`,
    ``metadata`` says where (``norm_index``, ``norm_id``, ``parameter`` or ``field``)."""

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})


class VocabularyError(CoalitionError):
    """The vocabulary data file itself is malformed (a defect of the package, not input)."""


# --- the vocabulary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSpec:
    """One typed parameter of a norm."""

    name: str
    type: ParameterType
    required: bool
    description: str
    allowed: tuple[str, ...] | None = None
    """For text and texts: the closed set of terms (else ``pattern``)."""
    allowed_descriptions: Mapping[str, str] | None = None
    pattern: re.Pattern[str] | None = None
    """For text and texts: what every term must match in full."""
    max_length: int | None = None
    hierarchy: Hierarchy | None = None
    """How codes include each other: ``prefix`` (ISCO-08: "21" includes "2166") or
    ``subdivision`` (ISO 3166: "DE" includes "DE-BY"); None: only equal codes."""
    max_items: int | None = None
    allowed_flags: tuple[bool, ...] | None = None
    minimum: int | None = None
    """For numbers: the least value; for durations: the least seconds."""
    maximum: int | None = None
    """For numbers: the greatest value; for durations: the most seconds."""

    def term_problem(self, term: str) -> str | None:
        """Why ``term`` is not a valid value of this parameter, or None."""
        if self.allowed is not None and term not in self.allowed:
            return f"{term!r} is not one of {', '.join(self.allowed)}"
        if self.pattern is not None and self.pattern.fullmatch(term) is None:
            return f"{term!r} does not match {self.pattern.pattern}"
        if self.max_length is not None and len(term) > self.max_length:
            return f"{term!r} is longer than {self.max_length} characters"
        return None

    def covers(self, general: str, specific: str) -> bool:
        """Whether code ``general`` includes code ``specific`` (every code includes itself)."""
        if general == specific:
            return True
        if self.hierarchy == "prefix":
            return specific.startswith(general)
        if self.hierarchy == "subdivision":
            return specific.startswith(general + "-")
        return False

    def overlaps(self, a: str, b: str) -> bool:
        """Whether two codes share anything: one includes the other."""
        return self.covers(a, b) or self.covers(b, a)


@dataclass(frozen=True)
class OdrlBreach:
    """How one parameter becomes a constraint that holds when a use breaks the norm."""

    parameter: str
    left_operand: str
    operator: str
    iri: str | None = None
    """Template of the right operand's IRI (``coalition:domain/{}``), for terms."""
    datatype: str | None = None
    """XSD datatype of a literal right operand (``xsd:integer``), for values."""
    unit: str | None = None


@dataclass(frozen=True)
class NormSpec:
    """One norm of the vocabulary."""

    id: str
    title: str
    description: str
    parameters: tuple[ParameterSpec, ...]
    """In ascending order of name: the order a norm's parameters must have."""
    min_parameters: int
    disjoint_on: str | None
    """The list parameter on which repeats of this norm must not overlap; None: no repeats."""
    judged_against: tuple[str, ...]
    """The UseDeclaration fields the judgement reads."""
    breach: str
    """In words: when a declaration breaks this norm."""
    odrl_breach: tuple[OdrlBreach, ...]

    def parameter(self, name: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclass(frozen=True)
class EnduringValueSpec:
    """One of the lasting values a norm may protect."""

    id: str
    enum: int
    title: str
    description: str


@dataclass(frozen=True)
class DeclarationFieldSpec:
    """One field of a UseDeclaration and the ODRL left operands it gives values to."""

    field: str
    required: bool
    description: str
    left_operands: tuple[str, ...]
    values_from: tuple[str, str] | None = None
    """(norm id, parameter) whose terms this field's values are drawn from."""
    enum: Mapping[int, str] | None = None
    """For enum fields: enum number -> the vocabulary's term."""
    iri: str | None = None
    """For yes/no fields: the IRI the field contributes when true."""


@dataclass(frozen=True)
class Vocabulary:
    """The closed, versioned norm vocabulary (one data file). Get it with :meth:`load`."""

    version: str
    title: str
    profile: str
    prefix: str
    namespace: str
    norm_iri: str
    value_iri: str
    hard_rule: str
    hard_action: str
    priced_rule: str
    priced_action: str
    norms: Mapping[str, NormSpec]
    """By id, in the data file's order."""
    enduring_values: Mapping[int, EnduringValueSpec]
    """By EnduringValue number."""
    declaration: Mapping[str, DeclarationFieldSpec]
    """By UseDeclaration field name."""
    description: str = ""
    """What the vocabulary is, in words (the data file's ``description``)."""
    hard_description: str = ""
    """How a hard norm reads in ODRL, in words."""
    priced_description: str = ""
    """How a priced norm reads in ODRL, in words."""

    @classmethod
    def load(cls, version: str = DEFAULT_VERSION) -> Vocabulary:
        """The vocabulary of ``version`` (cached), or NormError UNKNOWN_VOCABULARY."""
        return _load(version)

    def norm(self, norm_id: str) -> NormSpec:
        """The norm with this id, or NormError UNKNOWN_NORM."""
        try:
            return self.norms[norm_id]
        except KeyError:
            raise NormError(
                UNKNOWN_NORM,
                f"no norm {norm_id!r} in vocabulary {self.version}",
                {"norm_id": norm_id},
            ) from None

    def values_of(self, field: str) -> ParameterSpec:
        """The parameter a declaration field draws its terms from."""
        spec = self.declaration[field]
        if spec.values_from is None:
            raise KeyError(f"declaration field {field} draws on no parameter")
        norm_id, parameter = spec.values_from
        found = self.norms[norm_id].parameter(parameter)
        assert found is not None  # checked at load
        return found

    def expand_iri(self, compact: str) -> str:
        """A ``coalition:`` compact IRI in full."""
        if compact.startswith(self.prefix + ":"):
            return self.namespace + compact[len(self.prefix) + 1 :]
        return compact


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise VocabularyError(message)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    _need(isinstance(value, str) and bool(value), f"{key!r} must be a non-empty string")
    return cast(str, value)


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    _need(value is None or isinstance(value, str), f"{key!r} must be a string")
    return cast("str | None", value)


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    _need(
        value is None or (isinstance(value, int) and not isinstance(value, bool)),
        f"{key!r} must be an integer",
    )
    return cast("int | None", value)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    _need(isinstance(value, bool), f"{key!r} must be true or false")
    return cast(bool, value)


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    _need(isinstance(value, dict), f"{what} must be an object")
    return cast("Mapping[str, Any]", value)


def _list(value: Any, what: str) -> list[Any]:
    _need(isinstance(value, list), f"{what} must be a list")
    return cast("list[Any]", value)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = _list(value, what)
    _need(all(isinstance(v, str) and v for v in items), f"{what} must list strings")
    return tuple(cast("list[str]", items))


def _parse_parameter(raw: Mapping[str, Any], norm_id: str) -> ParameterSpec:
    name = _str(raw, "name")
    where = f"{norm_id}.{name}"
    kind = _str(raw, "type")
    _need(kind in PARAMETER_TYPES, f"{where}: unknown type {kind!r}")
    allowed: tuple[str, ...] | None = None
    allowed_flags: tuple[bool, ...] | None = None
    if "allowed" in raw:
        if kind == "flag":
            flags = _list(raw["allowed"], f"{where}.allowed")
            _need(all(isinstance(f, bool) for f in flags), f"{where}: flags are true/false")
            allowed_flags = tuple(cast("list[bool]", flags))
        else:
            _need(kind in ("text", "texts"), f"{where}: only terms and flags list values")
            allowed = _strings(raw["allowed"], f"{where}.allowed")
            _need(list(allowed) == sorted(set(allowed)), f"{where}: allowed must be sorted")
    pattern_text = _opt_str(raw, "pattern")
    pattern = re.compile(pattern_text) if pattern_text is not None else None
    if kind in ("text", "texts"):
        _need((allowed is None) != (pattern is None), f"{where}: give allowed or a pattern")
    descriptions = raw.get("allowed_descriptions")
    allowed_descriptions: dict[str, str] | None = None
    if descriptions is not None:
        allowed_descriptions = {
            str(k): str(v) for k, v in _obj(descriptions, f"{where}.descriptions").items()
        }
        _need(set(allowed_descriptions) == set(allowed or ()), f"{where}: describe each term")
    hierarchy = _opt_str(raw, "hierarchy")
    _need(hierarchy in (None, "prefix", "subdivision"), f"{where}: unknown hierarchy")
    minimum = _opt_int(raw, "minimum" if kind == "number" else "minimum_seconds")
    maximum = _opt_int(raw, "maximum" if kind == "number" else "maximum_seconds")
    if kind == "duration":
        minimum = 0 if minimum is None else minimum
        maximum = MAX_DURATION_SECONDS if maximum is None else maximum
        _need(0 <= minimum <= maximum <= MAX_DURATION_SECONDS, f"{where}: bad duration range")
    max_items = _opt_int(raw, "max_items")
    _need(kind != "texts" or (max_items or 0) > 0, f"{where}: lists need max_items")
    return ParameterSpec(
        name=name,
        type=cast(ParameterType, kind),
        required=_bool(raw, "required"),
        description=_str(raw, "description"),
        allowed=allowed,
        allowed_descriptions=allowed_descriptions,
        pattern=pattern,
        max_length=_opt_int(raw, "max_length"),
        hierarchy=cast("Hierarchy | None", hierarchy),
        max_items=max_items,
        allowed_flags=allowed_flags,
        minimum=minimum,
        maximum=maximum,
    )


def _parse_breach(
    raw: Mapping[str, Any], spec_parameters: Iterable[str], norm_id: str
) -> OdrlBreach:
    parameter = _str(raw, "parameter")
    _need(parameter in spec_parameters, f"{norm_id}: ODRL breach names unknown {parameter!r}")
    breach = OdrlBreach(
        parameter=parameter,
        left_operand=_str(raw, "left_operand"),
        operator=_str(raw, "operator"),
        iri=_opt_str(raw, "iri"),
        datatype=_opt_str(raw, "datatype"),
        unit=_opt_str(raw, "unit"),
    )
    _need((breach.iri is None) != (breach.datatype is None), f"{norm_id}: iri or datatype")
    return breach


def _parse_norm(raw: Mapping[str, Any]) -> NormSpec:
    norm_id = _str(raw, "id")
    _need(re.fullmatch(r"[a-z]+(-[a-z]+)*", norm_id) is not None, f"bad norm id {norm_id!r}")
    parameters = tuple(
        _parse_parameter(_obj(p, f"{norm_id} parameter"), norm_id)
        for p in _list(raw.get("parameters"), f"{norm_id}.parameters")
    )
    names = [p.name for p in parameters]
    _need(bool(names) and names == sorted(set(names)), f"{norm_id}: parameters sorted by name")
    repeat = raw.get("repeat")
    disjoint_on = None if repeat is None else _str(_obj(repeat, "repeat"), "disjoint_on")
    if disjoint_on is not None:
        target = next((p for p in parameters if p.name == disjoint_on), None)
        _need(target is not None and target.type == "texts", f"{norm_id}: repeat on a list")
    min_parameters = _opt_int(raw, "min_parameters") or 0
    _need(min_parameters >= sum(p.required for p in parameters), f"{norm_id}: min_parameters")
    odrl = _obj(raw.get("odrl"), f"{norm_id}.odrl")
    breaches = tuple(
        _parse_breach(_obj(b, "breach"), names, norm_id)
        for b in _list(odrl.get("breach"), f"{norm_id}.odrl.breach")
    )
    _need(sorted(b.parameter for b in breaches) == names, f"{norm_id}: one breach per parameter")
    return NormSpec(
        id=norm_id,
        title=_str(raw, "title"),
        description=_str(raw, "description"),
        parameters=parameters,
        min_parameters=min_parameters,
        disjoint_on=disjoint_on,
        judged_against=_strings(raw.get("judged_against"), f"{norm_id}.judged_against"),
        breach=_str(raw, "breach"),
        odrl_breach=breaches,
    )


def _parse_declaration_field(
    raw: Mapping[str, Any], norms: Mapping[str, NormSpec]
) -> DeclarationFieldSpec:
    name = _str(raw, "field")
    proto_field = terms_pb2.UseDeclaration.DESCRIPTOR.fields_by_name.get(name)
    _need(proto_field is not None, f"declaration field {name!r} is not in UseDeclaration")
    values_from: tuple[str, str] | None = None
    source = _opt_str(raw, "values_from")
    if source is not None:
        norm_id, _, parameter = source.partition(".")
        _need(
            norm_id in norms and norms[norm_id].parameter(parameter) is not None,
            f"{name}: values_from {source!r} names no parameter",
        )
        values_from = (norm_id, parameter)
    enum: dict[int, str] | None = None
    if "enum" in raw:
        enum = {}
        for enum_name, term in _obj(raw["enum"], f"{name}.enum").items():
            enum[terms_pb2.ModelRelease.Value(enum_name)] = str(term)
        if values_from is not None:
            terms = norms[values_from[0]].parameter(values_from[1])
            _need(
                terms is not None and sorted(enum.values()) == list(terms.allowed or ()),
                f"{name}: enum terms must be the parameter's terms",
            )
    return DeclarationFieldSpec(
        field=name,
        required=_bool(raw, "required"),
        description=_str(raw, "description"),
        left_operands=_strings(raw.get("left_operands"), f"{name}.left_operands"),
        values_from=values_from,
        enum=enum,
        iri=_opt_str(raw, "iri"),
    )


def _parse(document: Mapping[str, Any], version: str) -> Vocabulary:
    _need(document.get("version") == version, f"the file says version {document.get('version')}")
    odrl = _obj(document.get("odrl"), "odrl")
    hard = _obj(odrl.get("hard"), "odrl.hard")
    priced = _obj(odrl.get("priced"), "odrl.priced")
    _need(odrl.get("combine") == "or", "breach constraints combine with or")
    norms: dict[str, NormSpec] = {}
    for raw in _list(document.get("norms"), "norms"):
        spec = _parse_norm(_obj(raw, "norm"))
        _need(spec.id not in norms, f"norm {spec.id} twice")
        norms[spec.id] = spec
    values: dict[int, EnduringValueSpec] = {}
    for raw in _list(document.get("enduring_values"), "enduring_values"):
        entry = _obj(raw, "enduring value")
        number = norms_pb2.EnduringValue.Value(_str(entry, "enum"))
        values[number] = EnduringValueSpec(
            id=_str(entry, "id"),
            enum=number,
            title=_str(entry, "title"),
            description=_str(entry, "description"),
        )
    declared = [
        _parse_declaration_field(_obj(raw, "declaration field"), norms)
        for raw in _list(document.get("declaration"), "declaration")
    ]
    declaration = {spec.field: spec for spec in declared}
    proto_fields = set(terms_pb2.UseDeclaration.DESCRIPTOR.fields_by_name)
    _need(set(declaration) == proto_fields, "describe every UseDeclaration field once")
    judged = {field for spec in norms.values() for field in spec.judged_against}
    _need(judged <= set(declaration), "a norm is judged against an unknown field")
    _need(judged == set(declaration), "every declared field must be judged by some norm")
    unjudged = set(norms) - set(_RULES)
    _need(not unjudged, f"no judgement for {sorted(unjudged)}")
    return Vocabulary(
        version=version,
        title=_str(document, "title"),
        profile=_str(odrl, "profile"),
        prefix=_str(odrl, "prefix"),
        namespace=_str(odrl, "namespace"),
        norm_iri=_str(odrl, "norm_iri"),
        value_iri=_str(odrl, "value_iri"),
        hard_rule=_str(hard, "rule"),
        hard_action=_str(hard, "action"),
        priced_rule=_str(priced, "rule"),
        priced_action=_str(priced, "action"),
        norms=norms,
        enduring_values=values,
        declaration=declaration,
        description=_str(document, "description"),
        hard_description=_str(hard, "description"),
        priced_description=_str(priced, "description"),
    )


@cache
def _load(version: str) -> Vocabulary:
    if re.fullmatch(r"[1-9][0-9]{0,3}", version) is None:
        raise NormError(UNKNOWN_VOCABULARY, f"no norm vocabulary {version!r}", {"version": version})
    resource = resources.files("coalition").joinpath("data", f"norms-v{version}.json")
    if not resource.is_file():
        raise NormError(UNKNOWN_VOCABULARY, f"no norm vocabulary {version!r}", {"version": version})
    try:
        document = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VocabularyError(f"norms-v{version}.json is unreadable: {exc}") from None
    return _parse(_obj(document, "the vocabulary"), version)


# --- building norms ---------------------------------------------------------------------------

ParameterInput = str | bool | int | timedelta | datetime | Iterable[str]


def norm_value(value: ParameterInput) -> norms_pb2.NormValue:
    """A NormValue from a Python value: str -> text, bool -> flag, int -> number,
    timedelta -> duration, datetime (aware) -> time, any other iterable of str -> texts
    (sorted and deduplicated, so the result is canonical)."""
    result = norms_pb2.NormValue()
    if isinstance(value, str):
        result.text = value
    elif isinstance(value, bool):
        result.flag = value
    elif isinstance(value, int):
        result.number = value
    elif isinstance(value, timedelta):
        result.duration.FromTimedelta(value)
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time parameter needs a timezone")
        result.time.FromDatetime(value.astimezone(UTC))
    else:
        result.texts.values.extend(sorted(set(value)))
    return result


def make_norm(
    norm_id: str,
    stance: norms_pb2.NormStance.ValueType,
    parameters: Mapping[str, ParameterInput],
    *,
    premium: terms_pb2.Money | None = None,
    protects: norms_pb2.EnduringValue.ValueType = norms_pb2.ENDURING_VALUE_UNSPECIFIED,
) -> norms_pb2.Norm:
    """A Norm in canonical form (parameters sorted by name, lists sorted). Not validated:
    call :func:`validate_norms`."""
    norm = norms_pb2.Norm(norm_id=norm_id, stance=stance, protects=protects)
    for name in sorted(parameters):
        norm.parameters.add(name=name, value=norm_value(parameters[name]))
    if premium is not None:
        norm.premium_per_item.CopyFrom(premium)
    return norm


# --- validation -------------------------------------------------------------------------------


def _where(index: int | None, norm_id: str, parameter: str | None = None) -> dict[str, str]:
    metadata = {"norm_id": norm_id}
    if index is not None:
        metadata["norm_index"] = str(index)
    if parameter is not None:
        metadata["parameter"] = parameter
    return metadata


def _strictly_increasing(values: Sequence[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def _list_problem(spec: ParameterSpec, values: Sequence[str]) -> str | None:
    """Why a list of terms is not valid for ``spec`` (sorted, distinct, not nested), or None."""
    if spec.max_items is not None and len(values) > spec.max_items:
        return f"at most {spec.max_items} values"
    if not _strictly_increasing(values):
        return "values must be sorted and distinct"
    for term in values:
        problem = spec.term_problem(term)
        if problem is not None:
            return problem
    if spec.hierarchy is not None:
        for i, a in enumerate(values):
            for b in values[i + 1 :]:
                if spec.overlaps(a, b):
                    return f"{a!r} and {b!r} overlap: keep only the wider code"
    return None


def _value_problem(spec: ParameterSpec, value: norms_pb2.NormValue) -> str | None:
    """Why ``value`` is not a valid value of ``spec``, or None."""
    kind = value.WhichOneof("value")
    if kind != spec.type:
        return f"must be a {spec.type}, not {kind or 'nothing'}"
    if kind == "text":
        return spec.term_problem(value.text)
    if kind == "texts":
        if not value.texts.values:
            return "give at least one value"
        return _list_problem(spec, list(value.texts.values))
    if kind == "flag":
        if spec.allowed_flags is not None and value.flag not in spec.allowed_flags:
            return f"may only be {' or '.join(str(f).lower() for f in spec.allowed_flags)}"
        return None
    if kind == "number":
        if spec.minimum is not None and value.number < spec.minimum:
            return f"must be at least {spec.minimum}"
        if spec.maximum is not None and value.number > spec.maximum:
            return f"must be at most {spec.maximum}"
        return None
    if kind == "duration":
        seconds, nanos = value.duration.seconds, value.duration.nanos
        if nanos != 0:
            return "must be whole seconds"
        low = 0 if spec.minimum is None else spec.minimum
        high = MAX_DURATION_SECONDS if spec.maximum is None else spec.maximum
        if not low <= seconds <= high:
            return f"must be {low} to {high} seconds"
        return None
    seconds, nanos = value.time.seconds, value.time.nanos
    if not (_MIN_TIMESTAMP_SECONDS <= seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= nanos < 10**9):
        return "is not a valid time"
    return None


def _check_premium(norm: norms_pb2.Norm, currency: str, where: Mapping[str, str]) -> None:
    if norm.stance == HARD:
        if norm.HasField("premium_per_item"):
            raise NormError(BAD_PREMIUM, "a hard norm has no premium", where)
        return
    if norm.stance != PRICED:
        raise NormError(BAD_STANCE, "a norm is hard or priced", where)
    if not norm.HasField("premium_per_item") or norm.premium_per_item.micros == 0:
        raise NormError(MISSING_PREMIUM, "a priced norm needs a premium above zero", where)
    premium = norm.premium_per_item
    if premium.currency_code != currency:
        raise NormError(BAD_PREMIUM, f"premiums are in {currency}", {**where, "currency": currency})
    if premium.micros < 0:
        raise NormError(BAD_PREMIUM, "a premium must not be negative", where)
    if premium.micros > MAX_PREMIUM_MICROS:
        raise NormError(BAD_PREMIUM, "a premium is at most 10^9 units per item", where)


def validate_norm(
    norm: norms_pb2.Norm,
    currency: str,
    vocabulary: Vocabulary | None = None,
    *,
    index: int | None = None,
) -> None:
    """Refuse one malformed norm with a NormError (``index``: its place on the token, for
    the error's metadata). Does not look at the token's other norms: see validate_norms."""
    vocab = vocabulary or Vocabulary.load()
    where = _where(index, norm.norm_id)
    try:
        spec = vocab.norm(norm.norm_id)
    except NormError as exc:
        raise NormError(exc.reason, exc.message, where) from None
    _check_premium(norm, currency, where)
    if norm.protects != norms_pb2.ENDURING_VALUE_UNSPECIFIED and (
        norm.protects not in vocab.enduring_values
    ):
        raise NormError(UNKNOWN_ENDURING_VALUE, f"no enduring value {norm.protects}", where)
    names = [p.name for p in norm.parameters]
    for name in names:
        if spec.parameter(name) is None:
            raise NormError(
                UNKNOWN_PARAMETER,
                f"{spec.id} has no parameter {name!r}",
                _where(index, norm.norm_id, name),
            )
    if not _strictly_increasing(names):
        raise NormError(
            UNSORTED_PARAMETERS, "parameters must be sorted by name, each at most once", where
        )
    for parameter in spec.parameters:
        if parameter.required and parameter.name not in names:
            raise NormError(
                MISSING_PARAMETER,
                f"{spec.id} needs {parameter.name!r}",
                _where(index, norm.norm_id, parameter.name),
            )
    if len(names) < spec.min_parameters:
        raise NormError(
            MISSING_PARAMETER,
            f"{spec.id} needs at least {spec.min_parameters} of its parameters",
            where,
        )
    for given in norm.parameters:
        parameter_spec = spec.parameter(given.name)
        assert parameter_spec is not None
        problem = _value_problem(parameter_spec, given.value)
        if problem is not None:
            raise NormError(
                BAD_PARAMETER,
                f"{spec.id}.{given.name}: {problem}",
                _where(index, norm.norm_id, given.name),
            )


def _disjoint_values(spec: NormSpec, norm: norms_pb2.Norm) -> list[str]:
    assert spec.disjoint_on is not None
    for given in norm.parameters:
        if given.name == spec.disjoint_on:
            return list(given.value.texts.values)
    return []


def _stance_key(norm: norms_pb2.Norm) -> tuple[int, str, int, int]:
    premium = norm.premium_per_item
    return (norm.stance, premium.currency_code, premium.micros, norm.protects)


def norm_order_key(norm: norms_pb2.Norm) -> tuple[str, int, int, int]:
    """Where a norm goes on a token: by norm id (code-point order), then stance (hard before
    priced), premium micros and protected value (enum numbers). On a valid token no two norms
    share a key (they would be contradictory), so the keys strictly increase."""
    return (norm.norm_id, norm.stance, norm.premium_per_item.micros, norm.protects)


def canonical_norms(values: Iterable[norms_pb2.Norm]) -> list[norms_pb2.Norm]:
    """Norms in the order :func:`validate_norms` requires: sort them before signing a token."""
    return sorted(values, key=norm_order_key)


def validate_norms(
    norms: Sequence[norms_pb2.Norm],
    currency: str,
    vocabulary: Vocabulary | None = None,
) -> None:
    """Refuse a token's norms with a NormError unless each is well formed and together they
    are consistent: at most MAX_NORMS; a norm without repeats at most once; repeats of a
    repeatable norm share no value and differ in stance, premium or protected value; and
    in canonical order (:func:`norm_order_key`, else UNSORTED_NORMS)."""
    vocab = vocabulary or Vocabulary.load()
    if len(norms) > MAX_NORMS:
        raise NormError(TOO_MANY_NORMS, f"at most {MAX_NORMS} norms on a token")
    for index, norm in enumerate(norms):
        validate_norm(norm, currency, vocab, index=index)
    seen: dict[str, list[tuple[int, norms_pb2.Norm]]] = {}
    for index, norm in enumerate(norms):
        spec = vocab.norm(norm.norm_id)
        earlier = seen.setdefault(norm.norm_id, [])
        where = _where(index, norm.norm_id)
        for other_index, other in earlier:
            metadata = {**where, "other_norm_index": str(other_index)}
            if spec.disjoint_on is None:
                raise NormError(
                    CONTRADICTORY_NORMS, f"at most one {spec.id} norm on a token", metadata
                )
            parameter = spec.parameter(spec.disjoint_on)
            assert parameter is not None
            for a in _disjoint_values(spec, norm):
                for b in _disjoint_values(spec, other):
                    if parameter.overlaps(a, b):
                        raise NormError(
                            CONTRADICTORY_NORMS,
                            f"two {spec.id} norms both cover {min(a, b, key=len)!r}",
                            metadata,
                        )
            if _stance_key(norm) == _stance_key(other):
                raise NormError(
                    CONTRADICTORY_NORMS,
                    f"two {spec.id} norms with the same stance, premium and value: merge them",
                    metadata,
                )
        earlier.append((index, norm))
    # Checked last: a contradiction is the more useful answer than "out of order", and once
    # there is none, no two keys are equal.
    for index, (before, after) in enumerate(itertools.pairwise(norms), start=1):
        if norm_order_key(before) >= norm_order_key(after):
            raise NormError(
                UNSORTED_NORMS,
                "norms must be sorted by id, then stance (hard first), premium and value",
                {**_where(index, after.norm_id), "other_norm_index": str(index - 1)},
            )


def _field_error(reason: str, field: str, message: str) -> NormError:
    return NormError(reason, f"{field}: {message}", {"field": field})


def validate_declaration(
    declaration: terms_pb2.UseDeclaration, vocabulary: Vocabulary | None = None
) -> None:
    """Refuse a malformed use declaration with a NormError (MISSING_DECLARATION_FIELD or
    BAD_DECLARATION_FIELD, metadata ``field``)."""
    vocab = vocabulary or Vocabulary.load()
    spec = vocab.declaration
    release = spec["model_release"]
    if declaration.model_release == terms_pb2.MODEL_RELEASE_UNSPECIFIED:
        raise _field_error(MISSING_DECLARATION_FIELD, "model_release", "declare the release")
    if release.enum is None or declaration.model_release not in release.enum:
        raise _field_error(BAD_DECLARATION_FIELD, "model_release", "unknown release")
    for field in ("application_domains", "occupations", "jurisdictions"):
        values = list(getattr(declaration, field))
        if not values and spec[field].required:
            raise _field_error(MISSING_DECLARATION_FIELD, field, "give at least one value")
        problem = _list_problem(vocab.values_of(field), values)
        if problem is not None:
            raise _field_error(BAD_DECLARATION_FIELD, field, problem)
    share = declaration.public_benefit_share_basis_points
    fund = declaration.public_benefit_fund
    if share > 10_000:
        raise _field_error(
            BAD_DECLARATION_FIELD, "public_benefit_share_basis_points", "at most 10000"
        )
    if share > 0 and not fund:
        raise _field_error(
            MISSING_DECLARATION_FIELD, "public_benefit_fund", "name the fund the share goes to"
        )
    if fund:
        if share == 0:
            raise _field_error(
                BAD_DECLARATION_FIELD, "public_benefit_fund", "a fund needs a share above zero"
            )
        problem = vocab.values_of("public_benefit_fund").term_problem(fund)
        if problem is not None:
            raise _field_error(BAD_DECLARATION_FIELD, "public_benefit_fund", problem)
    commitments = declaration.withdrawal_commitments
    if commitments.HasField("exclude_from_models_released_after"):
        delay = commitments.exclude_from_models_released_after
        if delay.nanos != 0 or not 0 <= delay.seconds <= MAX_DURATION_SECONDS:
            raise _field_error(
                BAD_DECLARATION_FIELD,
                "withdrawal_commitments",
                "exclude_from_models_released_after must be 0 to 100 years, whole seconds",
            )


# --- the judgement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One norm (its spec and parameters) judged against one declaration."""

    vocabulary: Vocabulary
    spec: NormSpec
    parameters: Mapping[str, norms_pb2.NormValue]
    declaration: terms_pb2.UseDeclaration

    def has(self, name: str) -> bool:
        return name in self.parameters

    def _value(self, name: str, kind: ParameterType) -> norms_pb2.NormValue:
        value = self.parameters.get(name)
        if value is None:
            raise NormError(
                MISSING_PARAMETER,
                f"{self.spec.id} needs {name!r}",
                _where(None, self.spec.id, name),
            )
        if value.WhichOneof("value") != kind:
            raise NormError(
                BAD_PARAMETER,
                f"{self.spec.id}.{name} must be a {kind}",
                _where(None, self.spec.id, name),
            )
        return value

    def text(self, name: str) -> str:
        return self._value(name, "text").text

    def texts(self, name: str) -> list[str]:
        return list(self._value(name, "texts").texts.values)

    def flag(self, name: str) -> bool:
        return self._value(name, "flag").flag

    def number(self, name: str) -> int:
        return self._value(name, "number").number

    def nanos(self, name: str) -> int:
        duration = self._value(name, "duration").duration
        return duration.seconds * 10**9 + duration.nanos

    def parameter(self, name: str) -> ParameterSpec:
        found = self.spec.parameter(name)
        assert found is not None
        return found


def _breaks_model_release(case: _Case) -> bool:
    enum = case.vocabulary.declaration["model_release"].enum or {}
    return enum.get(case.declaration.model_release) != case.text("release")


def _breaks_prohibited_use(case: _Case) -> bool:
    forbidden = case.texts("domains")
    return any(domain in forbidden for domain in case.declaration.application_domains)


def _breaks_occupation(case: _Case) -> bool:
    codes = case.parameter("isco08")
    protected = case.texts("isco08")
    return any(
        codes.overlaps(mine, targeted)
        for mine in protected
        for targeted in case.declaration.occupations
    )


def _breaks_public_benefit(case: _Case) -> bool:
    declaration = case.declaration
    if declaration.public_benefit_share_basis_points < case.number("min_share_basis_points"):
        return True
    return case.has("fund") and declaration.public_benefit_fund != case.text("fund")


def _breaks_jurisdiction(case: _Case) -> bool:
    places = case.parameter("allowed")
    allowed = case.texts("allowed")
    declared = case.declaration.jurisdictions
    if not declared:
        return True
    return any(not any(places.covers(a, place) for a in allowed) for place in declared)


# The derivative uses the judgement knows, and the UseDeclaration flag each is declared by.
DERIVATIVE_FIELDS: Final[Mapping[str, str]] = {
    "distillation": "distillation",
    "third-party-fine-tunes": "third_party_fine_tunes",
}


def _breaks_derivatives(case: _Case) -> bool:
    for use in case.texts("forbidden"):
        field = DERIVATIVE_FIELDS.get(use)
        # A use the judgement does not know cannot be shown kept: fail closed.
        if field is None or getattr(case.declaration, field):
            return True
    return False


def _breaks_withdrawal_effect(case: _Case) -> bool:
    commitments = case.declaration.withdrawal_commitments
    if (
        case.has("exclude_from_next_training_run")
        and case.flag("exclude_from_next_training_run")
        and not commitments.exclude_from_next_training_run
    ):
        return True
    if case.has("exclude_from_models_released_after"):
        if not commitments.HasField("exclude_from_models_released_after"):
            return True
        delay = commitments.exclude_from_models_released_after
        return delay.seconds * 10**9 + delay.nanos > case.nanos(
            "exclude_from_models_released_after"
        )
    return False


_RULES: Final[Mapping[str, Callable[[_Case], bool]]] = {
    "model-release": _breaks_model_release,
    "prohibited-use": _breaks_prohibited_use,
    "occupation": _breaks_occupation,
    "public-benefit": _breaks_public_benefit,
    "jurisdiction": _breaks_jurisdiction,
    "derivatives": _breaks_derivatives,
    "withdrawal-effect": _breaks_withdrawal_effect,
}


def judged_norm_ids() -> frozenset[str]:
    """The norm ids :func:`breaks` has a rule for."""
    return frozenset(_RULES)


def breaks(
    norm: norms_pb2.Norm,
    declaration: terms_pb2.UseDeclaration,
    vocabulary: Vocabulary | None = None,
) -> bool:
    """Whether a use as declared breaks ``norm`` (whatever its stance). Expects a valid norm;
    an unknown norm or a missing or mistyped parameter it needs raises NormError. What the
    declaration leaves out counts against it (fail closed)."""
    vocab = vocabulary or Vocabulary.load()
    spec = vocab.norm(norm.norm_id)
    parameters = {p.name: p.value for p in norm.parameters}
    return _RULES[spec.id](_Case(vocab, spec, parameters, declaration))


@dataclass(frozen=True)
class Assessment:
    """A token's norms judged against a declaration."""

    hard_broken: list[norms_pb2.Norm]
    """Hard norms the use breaks: if any, the deal never covers the token's items."""
    priced_broken: list[norms_pb2.Norm]
    """Priced norms the use breaks: each adds its premium."""
    premium_micros: int
    """What a deal must pay per item over the member's floor: the sum of the premiums of
    ``priced_broken`` (in the coalition's currency)."""

    @property
    def admissible(self) -> bool:
        """Whether a deal under this declaration may cover the items at all."""
        return not self.hard_broken

    @property
    def broken_norm_ids(self) -> list[str]:
        """Ids of every broken norm, hard then priced, in token order, without repeats."""
        ids: list[str] = []
        for norm in [*self.hard_broken, *self.priced_broken]:
            if norm.norm_id not in ids:
                ids.append(norm.norm_id)
        return ids


def assess(
    norms: Sequence[norms_pb2.Norm],
    declaration: terms_pb2.UseDeclaration | None,
    vocabulary: Vocabulary | None = None,
) -> Assessment:
    """Judge every norm of a token against a declaration. Hard norms never add to the
    premium; a norm whose stance is neither hard nor priced raises NormError BAD_STANCE.

    ``None`` is terms without any declaration: they promise nothing about the use, so they
    break every norm (a lab cannot escape members' values by declaring nothing).
    """
    vocab = vocabulary or Vocabulary.load()
    hard: list[norms_pb2.Norm] = []
    priced: list[norms_pb2.Norm] = []
    for norm in norms:
        if norm.stance not in (HARD, PRICED):
            raise NormError(BAD_STANCE, "a norm is hard or priced", {"norm_id": norm.norm_id})
        if declaration is None or breaks(norm, declaration, vocab):
            (hard if norm.stance == HARD else priced).append(norm)
    premium = sum(norm.premium_per_item.micros for norm in priced)
    return Assessment(hard_broken=hard, priced_broken=priced, premium_micros=premium)


# --- norms on the command line ----------------------------------------------------------------

NORM_OPTION_SYNTAX: Final = "ID:hard|priced[:NAME=VALUE]...[:premium=AMOUNT][:protects=VALUE]"
# Keys of a norm option that are not parameters; no parameter may be named so.
OPTION_KEYS: Final = ("premium", "protects")
STANCE_NAMES: Final[Mapping[str, norms_pb2.NormStance.ValueType]] = {
    "hard": HARD,
    "priced": PRICED,
}
# A field starts at a colon followed by ``name=``: so values may hold colons (times do).
_OPTION_FIELD: Final = re.compile(r":(?=[a-z][a-z0-9_]*=)")
_OPTION_NUMBER: Final = re.compile(r"-?[0-9]{1,19}")
_OPTION_DURATION: Final = re.compile(r"([0-9]{1,12})([wdhms])")
_OPTION_AMOUNT: Final = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")
_DURATION_UNITS: Final[Mapping[str, int]] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}


def _option_value(
    spec: ParameterSpec, raw: str, fail: Callable[[str, str, str | None], NormError]
) -> norms_pb2.NormValue:
    """One parameter's value from its command-line text (type checks only; validate_norm
    does the rest)."""
    value = norms_pb2.NormValue()
    if spec.type == "text":
        value.text = raw
    elif spec.type == "texts":
        terms = raw.split(",")
        if any(not term for term in terms):
            raise fail(BAD_PARAMETER, f"{spec.name}: an empty value in {raw!r}", spec.name)
        # Sorted and distinct, as the encoding requires: the order typed carries no meaning.
        value.texts.values.extend(sorted(set(terms)))
    elif spec.type == "flag":
        if raw not in ("true", "false"):
            raise fail(BAD_PARAMETER, f"{spec.name} is true or false, not {raw!r}", spec.name)
        value.flag = raw == "true"
    elif spec.type == "number":
        if _OPTION_NUMBER.fullmatch(raw) is None:
            raise fail(BAD_PARAMETER, f"{spec.name} is a whole number, not {raw!r}", spec.name)
        value.number = int(raw)
    elif spec.type == "duration":
        match = _OPTION_DURATION.fullmatch(raw)
        if match is None:
            raise fail(
                BAD_PARAMETER,
                f"{spec.name} is a duration such as 90d, 2w, 12h, 30m or 0s, not {raw!r}",
                spec.name,
            )
        value.duration.seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        try:
            value.time.FromJsonString(raw)
        except ValueError:
            raise fail(
                BAD_PARAMETER,
                f"{spec.name} is an RFC 3339 time such as 2026-01-01T00:00:00Z, not {raw!r}",
                spec.name,
            ) from None
    return value


def parse_norm_option(
    text: str, currency: str, vocabulary: Vocabulary | None = None
) -> norms_pb2.Norm:
    """A norm from its command-line form (:data:`NORM_OPTION_SYNTAX`), canonical and
    checked by :func:`validate_norm`; NormError (with the usual reasons) otherwise.

    ``prohibited-use:hard:domains=military,mass-surveillance``,
    ``model-release:priced:release=open-weights:premium=3.00:protects=commons``. Fields are
    separated by colons; list values by commas (in any order: they are sorted); a premium
    is an amount per item in ``currency``; ``protects`` names an enduring value. Flags are
    ``true``/``false``, numbers whole, durations ``<n>w|d|h|m|s``, times RFC 3339."""
    vocab = vocabulary or Vocabulary.load()
    head, *fields = _OPTION_FIELD.split(text.strip())
    parts = head.split(":")
    norm_id = parts[0]

    def fail(reason: str, message: str, parameter: str | None = None) -> NormError:
        return NormError(reason, f"norm {text!r}: {message}", _where(None, norm_id, parameter))

    try:
        spec = vocab.norm(norm_id)
    except NormError:
        raise fail(
            UNKNOWN_NORM, f"no norm {norm_id!r}: use one of {', '.join(vocab.norms)}"
        ) from None
    if len(parts) < 2 or parts[1] not in STANCE_NAMES:
        raise fail(BAD_STANCE, f"say {norm_id}:hard or {norm_id}:priced ({NORM_OPTION_SYNTAX})")
    if len(parts) > 2:
        raise fail(
            BAD_PARAMETER, f"{':'.join(parts[2:])!r} is not NAME=VALUE ({NORM_OPTION_SYNTAX})"
        )
    stance = STANCE_NAMES[parts[1]]
    norm = norms_pb2.Norm(norm_id=norm_id, stance=stance)
    values: dict[str, norms_pb2.NormValue] = {}
    seen: set[str] = set()
    for field in fields:
        name, _, raw = field.partition("=")
        if name in seen:
            raise fail(UNSORTED_PARAMETERS, f"{name} given twice", name)
        seen.add(name)
        if name == "premium":
            if _OPTION_AMOUNT.fullmatch(raw) is None:
                raise fail(
                    BAD_PREMIUM,
                    f"the premium is an amount such as 3.00 (in {currency}), not {raw!r}",
                )
            micros = int(Decimal(raw).scaleb(_MICROS))
            norm.premium_per_item.CopyFrom(terms_pb2.Money(currency_code=currency, micros=micros))
        elif name == "protects":
            found = next((v for v in vocab.enduring_values.values() if v.id == raw), None)
            if found is None:
                ids = ", ".join(v.id for v in vocab.enduring_values.values())
                raise fail(UNKNOWN_ENDURING_VALUE, f"no enduring value {raw!r}: use one of {ids}")
            norm.protects = cast(norms_pb2.EnduringValue.ValueType, found.enum)
        else:
            parameter = spec.parameter(name)
            if parameter is None:
                names = ", ".join(p.name for p in spec.parameters)
                raise fail(UNKNOWN_PARAMETER, f"{spec.id} has no {name!r}: it has {names}", name)
            values[name] = _option_value(parameter, raw, fail)
    for name in sorted(values):
        norm.parameters.add(name=name, value=values[name])
    if stance == PRICED and not norm.HasField("premium_per_item"):
        raise fail(MISSING_PREMIUM, f"a priced norm needs :premium=AMOUNT (in {currency})")
    if stance == HARD and norm.HasField("premium_per_item"):
        raise fail(BAD_PREMIUM, "a hard norm has no premium: drop it, or make the norm priced")
    try:
        validate_norm(norm, currency, vocab)
    except NormError as exc:
        raise NormError(exc.reason, f"norm {text!r}: {exc.message}", exc.metadata) from None
    return norm


def _option_text(value: norms_pb2.NormValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "text":
        return value.text
    if kind == "texts":
        return ",".join(value.texts.values)
    if kind == "flag":
        return "true" if value.flag else "false"
    if kind == "number":
        return str(value.number)
    if kind == "duration":
        seconds = value.duration.seconds
        if value.duration.nanos:
            raise NormError(BAD_PARAMETER, "durations are whole seconds")
        unit = next((u for u, size in _DURATION_UNITS.items() if seconds % size == 0), "s")
        if seconds == 0:
            unit = "s"
        return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    if kind == "time":
        return value.time.ToJsonString()
    raise NormError(BAD_PARAMETER, "a parameter without a value")


def format_norm_option(norm: norms_pb2.Norm, vocabulary: Vocabulary | None = None) -> str:
    """A valid norm in its command-line form: :func:`parse_norm_option` reads it back as
    the same norm (premium in the token's currency)."""
    vocab = vocabulary or Vocabulary.load()
    stance = next((name for name, value in STANCE_NAMES.items() if value == norm.stance), None)
    if stance is None:
        raise NormError(BAD_STANCE, "a norm is hard or priced", {"norm_id": norm.norm_id})
    parts = [norm.norm_id, stance]
    parts += [f"{p.name}={_option_text(p.value)}" for p in norm.parameters]
    if norm.HasField("premium_per_item"):
        parts.append(f"premium={_decimal_string(norm.premium_per_item.micros)}")
    if norm.protects:
        value = vocab.enduring_values.get(norm.protects)
        if value is None:
            raise NormError(UNKNOWN_ENDURING_VALUE, f"no enduring value {norm.protects}")
        parts.append(f"protects={value.id}")
    return ":".join(parts)


# --- the ODRL profile document ----------------------------------------------------------------

# The exports' own terms (coalition_server.domain.exports), described here so that the client
# alone publishes the whole profile. tests/domain/test_exports.py checks that every
# ``coalition:`` IRI an export writes is defined by the profile. (local name, type, label,
# definition)
_EXPORT_TERMS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("train-ai", "RightOperand", "Train AI", "Purpose: training AI models."),
    (
        "train-genai",
        "RightOperand",
        "Train generative AI",
        "Purpose: training generative AI models.",
    ),
    (
        "ai-input",
        "RightOperand",
        "AI input",
        "Purpose: input to AI at inference time, e.g. retrieval-augmented generation.",
    ),
    (
        "ai-index",
        "RightOperand",
        "AI index",
        "Purpose: indexing for AI-powered search and answers.",
    ),
    ("search", "RightOperand", "Search", "Purpose: classic search indexing."),
    ("evaluation", "RightOperand", "Evaluation", "Purpose: benchmarks and evaluation of models."),
    (
        "paymentModel",
        "LeftOperand",
        "Payment model",
        "How a deal pays for the items: coalition:purchase, coalition:subscription or "
        "coalition:per-use.",
    ),
    ("purchase", "RightOperand", "Purchase", "A one-off price per item for the licence duration."),
    (
        "subscription",
        "RightOperand",
        "Subscription",
        "A price per item per period (timeInterval); the period is part of the price.",
    ),
    ("per-use", "RightOperand", "Per use", "A royalty per item per use."),
    (
        "tags",
        "LeftOperand",
        "Item tags",
        "The tags a member gave an item: hasPart <tag> refines a member's items to those "
        "with the tag.",
    ),
    (
        "leaseDuration",
        "LeftOperand",
        "Lease duration",
        "How long one lease of access lasts; renewing it re-checks consent.",
    ),
    ("item", "RightOperand", "Item", "Unit of count: one registered data item."),
    (
        "withdrawal-notice",
        "RightOperand",
        "Withdrawal notice",
        "The event: the coalition notifies a licensee that consent for items it holds was "
        "withdrawn.",
    ),
    (
        "coveredItemsRoot",
        "rdf:Property",
        "Covered items root",
        "RFC 6962 Merkle root over the ids of the items an agreement covers (sorted; leaf = "
        "the id's ASCII bytes), as xsd:hexBinary.",
    ),
    (
        "coveredItemCount",
        "rdf:Property",
        "Covered item count",
        "How many items an agreement covers.",
    ),
    ("negotiation", "rdf:Property", "Negotiation", "The negotiation that concluded an agreement."),
    (
        "useDeclaration",
        "rdf:Property",
        "Use declaration",
        "The lab's signed use declaration that an agreement binds (a coalition:UseDeclaration): "
        "the values of the left operands that members' norms constrain.",
    ),
    (
        "norm",
        "rdf:Property",
        "Norm",
        "The member's norm a rule expresses (a coalition:Norm).",
    ),
    (
        "protects",
        "rdf:Property",
        "Protects",
        "The enduring value a member's norm protects (a coalition:EnduringValue).",
    ),
    (
        "Norm",
        "rdfs:Class",
        "Norm",
        "An entry of the norm vocabulary: how members' data may be used.",
    ),
    (
        "EnduringValue",
        "rdfs:Class",
        "Enduring value",
        "A lasting value a norm protects, as opposed to a momentary price.",
    ),
    (
        "UseDeclaration",
        "rdfs:Class",
        "Use declaration",
        "A lab's statement, in the norm vocabulary, of how it will use licensed data. What it "
        "does not list, the lab commits not to do.",
    ),
)
# Open code sets: (scheme, label, definition).
_OPEN_SCHEMES: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "currency/",
        "Currencies",
        "coalition:currency/<code> is the currency with that ISO 4217 code (ODRL has no "
        "currency IRIs).",
    ),
)
_UNIT_DEFINITIONS: Final[Mapping[str, str]] = {
    "basis-point": "One hundredth of a percent: 10000 basis points are the whole.",
}
_READING_RULES: Final = (
    "Policies in this profile declare conflict prohibit: a prohibition wins over a permission.",
    "List-valued left operands hold every declared value: isAnyOf holds when some value "
    "matches a right operand; isNoneOf holds when some value matches none of them, or when "
    "no value is declared.",
    "Codes match through their hierarchies: an ISCO-08 code matches a code it prefixes or "
    "that prefixes it; a processing location matches an allowed ISO 3166 code that includes "
    "it (a country includes its subdivisions).",
    "Absent values fail closed: an absent value differs from every right operand (neq holds) "
    "and an absent duration is longer than any (gt holds).",
)
_PROFILE_CONTEXT: Final[JsonObject] = {"vann": "http://purl.org/vocab/vann/"}


def _parameter_summary(spec: ParameterSpec) -> str:
    need = "required" if spec.required else "optional"
    text = f"{spec.name} ({spec.type}, {need}): {spec.description}"
    if spec.allowed is not None:
        text += f" One of: {', '.join(spec.allowed)}."
    elif spec.pattern is not None:
        text += f" Matching {spec.pattern.pattern}."
    return text


def odrl_profile(vocabulary: Vocabulary | None = None) -> JsonObject:
    """The vocabulary as an ODRL 2.2 profile document (JSON-LD, ready for ``json.dumps``):
    an ``owl:Ontology`` at the profile IRI, and every ``coalition:`` term policies use
    (left operands, right operands and their schemes, norms, enduring values, properties,
    classes), each with a label and a definition. Built from the data file, plus the
    exports' own terms; publish it at the profile IRI."""
    vocab = vocabulary or Vocabulary.load()
    p = vocab.prefix
    defined_by = _ref(vocab.profile)
    graph: list[JsonObject] = []
    seen: set[str] = set()

    def add(iri: str, types: Sequence[str], label: str, definition: str, **extra: Any) -> None:
        if iri in seen:
            raise VocabularyError(f"the profile defines {iri} twice")
        seen.add(iri)
        node: JsonObject = {
            "@id": iri,
            "@type": list(types),
            "rdfs:label": label,
            "skos:definition": definition,
            "rdfs:isDefinedBy": defined_by,
        }
        # An empty list would vanish in JSON-LD: leave such a property out.
        node.update({key.replace("__", ":"): v for key, v in extra.items() if v != []})
        graph.append(node)

    graph.append(
        {
            "@id": vocab.profile,
            "@type": "owl:Ontology",
            "rdfs:label": vocab.title,
            "dct:title": vocab.title,
            "dct:description": vocab.description,
            "owl:versionInfo": vocab.version,
            "vann:preferredNamespacePrefix": p,
            "vann:preferredNamespaceUri": vocab.namespace,
            "skos:note": [vocab.hard_description, vocab.priced_description, *_READING_RULES],
            "rdfs:seeAlso": _ref("https://www.w3.org/TR/odrl-model/"),
        }
    )
    for name, kind, label, definition in _EXPORT_TERMS:
        add(f"{p}:{name}", [kind], label, definition)
    for scheme, label, definition in _OPEN_SCHEMES:
        add(f"{p}:{scheme}", ["skos:ConceptScheme"], label, definition)

    # Left operands: what a UseDeclaration field gives values to.
    fields_of: dict[str, list[DeclarationFieldSpec]] = {}
    for field_spec in vocab.declaration.values():
        for operand in field_spec.left_operands:
            fields_of.setdefault(operand, []).append(field_spec)
    breaches = [(spec, b) for spec in vocab.norms.values() for b in spec.odrl_breach]
    for operand, field_specs in fields_of.items():
        local = operand.removeprefix(p + ":")
        meaning = [
            f"{f.description} (UseDeclaration.{f.field})"
            if f.iri is None
            else f"Holds {f.iri} when the declaration says yes to {f.field}: {f.description}"
            for f in field_specs
        ]
        add(
            operand,
            ["LeftOperand"],
            re.sub(r"(?<!^)(?=[A-Z])", " ", local).lower().capitalize(),
            " ".join(meaning),
        )
    # Right operands: one scheme per IRI template; closed sets list their terms.
    for spec, breach in breaches:
        if breach.unit is not None and breach.unit not in seen:
            local = breach.unit.removeprefix(p + ":")
            add(
                breach.unit,
                ["skos:Concept"],
                local.replace("-", " ").capitalize(),
                _UNIT_DEFINITIONS.get(local, f"A unit of {breach.left_operand}."),
            )
        if breach.iri is None:
            continue
        parameter = spec.parameter(breach.parameter)
        assert parameter is not None  # checked at load
        scheme = breach.iri.removesuffix("{}")
        note = [] if parameter.pattern is None else [f"Codes match {parameter.pattern.pattern}."]
        add(
            scheme,
            ["skos:ConceptScheme"],
            f"{spec.title}: {parameter.name}",
            f"{breach.iri.replace('{}', '<term>')}: {parameter.description}",
            skos__note=note,
        )
        descriptions = parameter.allowed_descriptions or {}
        for term in parameter.allowed or ():
            add(
                breach.iri.format(term),
                ["RightOperand", "skos:Concept"],
                term,
                descriptions.get(term, f"{spec.title}: {term}."),
                skos__inScheme=_ref(scheme),
            )
    # The norms and the enduring values themselves.
    norm_scheme = vocab.norm_iri.removesuffix("{}")
    add(norm_scheme, ["skos:ConceptScheme"], "Norms", vocab.title)
    for spec in vocab.norms.values():
        notes = [f"Broken when {spec.breach}."]
        notes += [f"Parameter {_parameter_summary(parameter)}" for parameter in spec.parameters]
        if spec.disjoint_on is not None:
            notes.append(
                f"May appear more than once on a token, with no {spec.disjoint_on} in common."
            )
        add(
            vocab.norm_iri.format(spec.id),
            [f"{p}:Norm", "skos:Concept"],
            spec.title,
            spec.description,
            skos__inScheme=_ref(norm_scheme),
            skos__notation=spec.id,
            skos__note=notes,
        )
    value_scheme = vocab.value_iri.removesuffix("{}")
    add(value_scheme, ["skos:ConceptScheme"], "Enduring values", "Values a norm may protect.")
    for value in vocab.enduring_values.values():
        add(
            vocab.value_iri.format(value.id),
            [f"{p}:EnduringValue", "skos:Concept"],
            value.title,
            value.description,
            skos__inScheme=_ref(value_scheme),
            skos__notation=value.id,
        )
    return {"@context": [ODRL_CONTEXT, {p: vocab.namespace, **_PROFILE_CONTEXT}], "@graph": graph}


# --- ODRL -------------------------------------------------------------------------------------


def _decimal_string(micros: int) -> str:
    """Integer micros as an exact decimal string (``1500000`` -> ``"1.5"``)."""
    return format(Decimal(micros).scaleb(-_MICROS).normalize(), "f")


def _iso_duration(seconds: int, nanos: int = 0) -> str:
    """ISO 8601 / xsd:duration in days, hours, minutes and seconds (never years or months),
    as exports.iso_duration writes it."""
    total = seconds * 10**9 + nanos
    sign = "-" if total < 0 else ""
    whole, fraction_nanos = divmod(abs(total), 10**9)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    time_part = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs or fraction_nanos:
        fraction = f".{fraction_nanos:09d}".rstrip("0") if fraction_nanos else ""
        time_part += f"{secs}{fraction}S"
    date_part = f"{days}D" if days else ""
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


def _rfc3339(seconds: int, nanos: int) -> str:
    moment = _EPOCH + timedelta(seconds=seconds)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + "Z"


def _ref(iri: str) -> JsonObject:
    return {"@id": iri}


def _literal(value: str, datatype: str) -> JsonObject:
    return {"@value": value, "@type": datatype}


def _constraint(left: str, operator: str, right: Any) -> JsonObject:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def _right_operand(breach: OdrlBreach, value: norms_pb2.NormValue) -> Any:
    kind = value.WhichOneof("value")
    if breach.iri is not None:
        if kind == "texts":
            return [_ref(breach.iri.format(term)) for term in value.texts.values]
        if kind == "text":
            return _ref(breach.iri.format(value.text))
        raise VocabularyError(f"{breach.parameter}: an IRI needs a term, not a {kind}")
    datatype = breach.datatype or "xsd:string"
    if kind == "number":
        return _literal(str(value.number), datatype)
    if kind == "flag":
        return _literal("true" if value.flag else "false", datatype)
    if kind == "duration":
        return _literal(_iso_duration(value.duration.seconds, value.duration.nanos), datatype)
    if kind == "time":
        return _literal(_rfc3339(value.time.seconds, value.time.nanos), datatype)
    if kind == "text":
        return _literal(value.text, datatype)
    return [_literal(term, datatype) for term in value.texts.values]


def _breach_constraints(spec: NormSpec, norm: norms_pb2.Norm) -> list[JsonObject]:
    """The constraint that holds exactly when a use breaks the norm (ORed parts)."""
    values = {p.name: p.value for p in norm.parameters}
    parts: list[JsonObject] = []
    for breach in spec.odrl_breach:
        if breach.parameter not in values:
            continue
        constraint = _constraint(
            breach.left_operand, breach.operator, _right_operand(breach, values[breach.parameter])
        )
        if breach.unit is not None:
            constraint["unit"] = _ref(breach.unit)
        parts.append(constraint)
    if len(parts) <= 1:
        return parts
    return [{"or": {"@list": parts}}]


def norm_to_odrl(norm: norms_pb2.Norm, vocabulary: Vocabulary | None = None) -> JsonObject:
    """A norm as an ODRL 2.2 rule fragment in the ``coalition:`` profile:
    ``{"kind": "prohibition" | "duty", "rule": {...}}``.

    A hard norm is a ``prohibition`` of ``use`` under its breach constraint; the caller adds
    ``target`` and ``assigner`` and puts it in the policy's prohibitions. A priced norm is a
    ``compensate`` duty refined by ``payAmount gteq`` the premium per item, applying under
    the breach constraint; the caller adds ``compensatedParty`` and puts it among each
    permission's duties (it owes the premium on top of the floor's own compensate duty).
    Both carry ``coalition:norm`` (and ``coalition:protects`` when named)."""
    vocab = vocabulary or Vocabulary.load()
    spec = vocab.norm(norm.norm_id)
    rule: JsonObject = {}
    constraint = _breach_constraints(spec, norm)
    if norm.stance == HARD:
        kind = vocab.hard_rule
        rule["action"] = vocab.hard_action
    elif norm.stance == PRICED:
        kind = vocab.priced_rule
        premium = norm.premium_per_item
        pay_amount = _constraint(
            "payAmount", "gteq", _literal(_decimal_string(premium.micros), "xsd:decimal")
        )
        pay_amount["unit"] = _ref(f"{vocab.prefix}:currency/{premium.currency_code}")
        rule["action"] = [
            {
                "rdf:value": _ref(f"odrl:{vocab.priced_action}"),
                "refinement": [
                    pay_amount,
                    _constraint("unitOfCount", "eq", _ref(f"{vocab.prefix}:item")),
                ],
            }
        ]
    else:
        raise NormError(BAD_STANCE, "a norm is hard or priced", {"norm_id": norm.norm_id})
    rule["constraint"] = constraint
    rule[f"{vocab.prefix}:norm"] = _ref(vocab.norm_iri.format(spec.id))
    value = vocab.enduring_values.get(norm.protects)
    if value is not None:
        rule[f"{vocab.prefix}:protects"] = _ref(vocab.value_iri.format(value.id))
    return {"kind": kind, "rule": rule}


def declaration_to_odrl(
    declaration: terms_pb2.UseDeclaration, vocabulary: Vocabulary | None = None
) -> JsonObject:
    """A use declaration as a JSON-LD node of type ``coalition:UseDeclaration`` whose
    properties are the left operands norms constrain, with the declared values: the context
    against which an agreement's norm constraints are evaluated. Empty lists are left out
    (an absent property means "none"); so is an absent withdrawal delay (never)."""
    vocab = vocabulary or Vocabulary.load()
    spec = vocab.declaration
    p = vocab.prefix

    iris = {b.left_operand: b.iri for n in vocab.norms.values() for b in n.odrl_breach if b.iri}

    def term(operand: str, value: str) -> JsonObject:
        template = iris.get(operand)
        if template is None:
            raise VocabularyError(f"no IRI template for {operand}")
        return _ref(template.format(value))

    node: JsonObject = {"@type": f"{p}:UseDeclaration"}
    release = (spec["model_release"].enum or {}).get(declaration.model_release)
    if release is not None:
        node[spec["model_release"].left_operands[0]] = term(
            spec["model_release"].left_operands[0], release
        )
    for field in ("application_domains", "occupations", "jurisdictions"):
        operand = spec[field].left_operands[0]
        listed = [term(operand, value) for value in getattr(declaration, field)]
        if listed:
            node[operand] = listed
    share = str(declaration.public_benefit_share_basis_points)
    node[spec["public_benefit_share_basis_points"].left_operands[0]] = _literal(
        share, "xsd:integer"
    )
    if declaration.public_benefit_fund:
        operand = spec["public_benefit_fund"].left_operands[0]
        node[operand] = term(operand, declaration.public_benefit_fund)
    derivatives = [
        _ref(field_spec.iri)
        for field_spec in (spec["distillation"], spec["third_party_fine_tunes"])
        if field_spec.iri is not None and getattr(declaration, field_spec.field)
    ]
    if derivatives:
        node[spec["distillation"].left_operands[0]] = derivatives
    commitments = declaration.withdrawal_commitments
    next_run, delay = spec["withdrawal_commitments"].left_operands
    node[next_run] = _literal(
        "true" if commitments.exclude_from_next_training_run else "false", "xsd:boolean"
    )
    if commitments.HasField("exclude_from_models_released_after"):
        released = commitments.exclude_from_models_released_after
        node[delay] = _literal(_iso_duration(released.seconds, released.nanos), "xsd:duration")
    return node


# --- amending a declaration to keep a norm ----------------------------------------------------


def _copy_declaration(declaration: terms_pb2.UseDeclaration) -> terms_pb2.UseDeclaration:
    out = terms_pb2.UseDeclaration()
    out.CopyFrom(declaration)
    return out


def _replace_list(field: Any, values: Iterable[str]) -> None:
    chosen = sorted(set(values))  # before clearing: ``values`` may read ``field`` itself
    del field[:]
    field.extend(chosen)


def _keep_model_release(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    enum = case.vocabulary.declaration["model_release"].enum or {}
    wanted = next((number for number, term in enum.items() if term == case.text("release")), None)
    if wanted is None:
        return False
    amended.model_release = terms_pb2.ModelRelease.ValueType(wanted)
    return True


def _keep_prohibited_use(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    forbidden = set(case.texts("domains"))
    _replace_list(
        amended.application_domains, (d for d in amended.application_domains if d not in forbidden)
    )
    return True


def _keep_occupation(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    # Drop every targeted code that overlaps a protected one; a wider code is dropped whole
    # rather than split into invented narrower codes.
    codes = case.parameter("isco08")
    protected = case.texts("isco08")
    _replace_list(
        amended.occupations,
        (c for c in amended.occupations if not any(codes.overlaps(p, c) for p in protected)),
    )
    return True


def _keep_public_benefit(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    minimum = case.number("min_share_basis_points")
    amended.public_benefit_share_basis_points = max(
        amended.public_benefit_share_basis_points, minimum
    )
    if case.has("fund"):
        amended.public_benefit_fund = case.text("fund")
    # A share needs a fund; a norm naming none gives nothing to name.
    return bool(amended.public_benefit_fund)


def _keep_jurisdiction(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    places = case.parameter("allowed")
    allowed = case.texts("allowed")
    declared = list(amended.jurisdictions)
    # Narrow first: keep the declared places the norm allows, and narrow a declared country
    # to the allowed subdivisions inside it; only if nothing is left, move to the allowed ones.
    kept = {d for d in declared if any(places.covers(a, d) for a in allowed)}
    kept |= {a for a in allowed if any(places.covers(d, a) for d in declared)}
    _replace_list(amended.jurisdictions, kept or allowed)
    return True


def _keep_derivatives(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    for use in case.texts("forbidden"):
        field = DERIVATIVE_FIELDS.get(use)
        if field is None:
            return False
        setattr(amended, field, False)
    return True


def _keep_withdrawal_effect(case: _Case, amended: terms_pb2.UseDeclaration) -> bool:
    commitments = amended.withdrawal_commitments
    if case.has("exclude_from_next_training_run") and case.flag("exclude_from_next_training_run"):
        commitments.exclude_from_next_training_run = True
    if case.has("exclude_from_models_released_after"):
        longest = case.nanos("exclude_from_models_released_after")
        delay = commitments.exclude_from_models_released_after
        if (
            not commitments.HasField("exclude_from_models_released_after")
            or delay.seconds * 10**9 + delay.nanos > longest
        ):
            commitments.exclude_from_models_released_after.CopyFrom(
                case.parameters["exclude_from_models_released_after"].duration
            )
    return True


_AMENDERS: Final[Mapping[str, Callable[[_Case, terms_pb2.UseDeclaration], bool]]] = {
    "model-release": _keep_model_release,
    "prohibited-use": _keep_prohibited_use,
    "occupation": _keep_occupation,
    "public-benefit": _keep_public_benefit,
    "jurisdiction": _keep_jurisdiction,
    "derivatives": _keep_derivatives,
    "withdrawal-effect": _keep_withdrawal_effect,
}


def amend_to_keep(
    declaration: terms_pb2.UseDeclaration,
    norm: norms_pb2.Norm,
    vocabulary: Vocabulary | None = None,
) -> terms_pb2.UseDeclaration | None:
    """The least change to ``declaration`` that keeps ``norm`` (a copy; the declaration
    itself when it already keeps it), touching only the fields the norm is judged against.
    None when no valid declaration of that kind keeps it (a ``public-benefit`` norm without
    a fund against a declaration paying into none, a derivative use the judgement does not
    know).

    The changes, per norm: ``model-release`` switches the release; ``prohibited-use`` drops
    the forbidden domains; ``occupation`` drops every targeted code overlapping a protected
    one (a wider code whole); ``public-benefit`` raises the share to the minimum and names
    the norm's fund; ``jurisdiction`` keeps the allowed places (narrowing a country to the
    allowed subdivisions in it), or moves to the allowed places if none is left;
    ``derivatives`` says no to the forbidden uses; ``withdrawal-effect`` commits to what the
    norm asks (the shorter delay)."""
    vocab = vocabulary or Vocabulary.load()
    spec = vocab.norm(norm.norm_id)
    amended = _copy_declaration(declaration)
    if not breaks(norm, declaration, vocab):
        return amended
    parameters = {p.name: p.value for p in norm.parameters}
    if not _AMENDERS[spec.id](_Case(vocab, spec, parameters, amended), amended):
        return None
    return None if breaks(norm, amended, vocab) else amended


def _release_term(value: int, vocabulary: Vocabulary) -> str:
    enum = vocabulary.declaration["model_release"].enum or {}
    return enum.get(value, "undeclared")


def _delay_text(commitments: terms_pb2.WithdrawalCommitments) -> str:
    if not commitments.HasField("exclude_from_models_released_after"):
        return "never"
    delay = commitments.exclude_from_models_released_after
    return _iso_duration(delay.seconds, delay.nanos)


def declaration_changes(
    before: terms_pb2.UseDeclaration,
    after: terms_pb2.UseDeclaration,
    vocabulary: Vocabulary | None = None,
) -> list[str]:
    """What changed between two declarations, one short line per field, in field order:
    ``model_release: closed -> open-weights``, ``application_domains: -military``, ...
    Empty when they are the same."""
    vocab = vocabulary or Vocabulary.load()
    lines: list[str] = []
    if before.model_release != after.model_release:
        lines.append(
            f"model_release: {_release_term(before.model_release, vocab)} -> "
            f"{_release_term(after.model_release, vocab)}"
        )
    for field in ("application_domains", "occupations", "jurisdictions"):
        old, new = set(getattr(before, field)), set(getattr(after, field))
        if old != new:
            parts = [f"-{v}" for v in sorted(old - new)] + [f"+{v}" for v in sorted(new - old)]
            lines.append(f"{field}: {' '.join(parts)}")
    if (before.public_benefit_share_basis_points, before.public_benefit_fund) != (
        after.public_benefit_share_basis_points,
        after.public_benefit_fund,
    ):
        lines.append(
            f"public_benefit: {before.public_benefit_share_basis_points} bp "
            f"{before.public_benefit_fund or '-'} -> {after.public_benefit_share_basis_points} bp "
            f"{after.public_benefit_fund or '-'}"
        )
    for field in ("distillation", "third_party_fine_tunes"):
        if getattr(before, field) != getattr(after, field):
            lines.append(f"{field}: {getattr(before, field)} -> {getattr(after, field)}".lower())
    old_c, new_c = before.withdrawal_commitments, after.withdrawal_commitments
    if old_c.exclude_from_next_training_run != new_c.exclude_from_next_training_run:
        lines.append(
            f"exclude_from_next_training_run: {old_c.exclude_from_next_training_run} -> "
            f"{new_c.exclude_from_next_training_run}".lower()
        )
    if _delay_text(old_c) != _delay_text(new_c):
        lines.append(
            f"exclude_from_models_released_after: {_delay_text(old_c)} -> {_delay_text(new_c)}"
        )
    return lines


# --- what a lab may concede, and the declaration file -----------------------------------------


@dataclass(frozen=True)
class DeclarationLimits:
    """What a lab may concede on its own use declaration when the coalition proposes a
    change (see :meth:`refusal`). Everything not named here the lab does not concede; the
    default concedes nothing."""

    model_releases: frozenset[int] = frozenset()
    """Other model releases the lab may switch to (ModelRelease numbers)."""
    application_domains: frozenset[str] = frozenset()
    """Declared domains the lab may give up."""
    occupations: frozenset[str] = frozenset()
    """Declared ISCO-08 codes the lab may stop targeting."""
    jurisdictions: frozenset[str] = frozenset()
    """Declared places the lab may stop processing in (or narrow to a subdivision)."""
    more_jurisdictions: frozenset[str] = frozenset()
    """Places the lab may move processing to (their subdivisions included)."""
    max_public_benefit_share_basis_points: int = 0
    """The most the lab may pay into a commons fund, in basis points."""
    public_benefit_funds: frozenset[str] = frozenset()
    """Funds the lab may pay into besides its own."""
    distillation: bool = False
    """Whether the lab may give up distillation."""
    third_party_fine_tunes: bool = False
    """Whether the lab may give up fine-tuning for third parties."""
    exclude_from_next_training_run: bool = False
    """Whether the lab may commit to exclude withdrawn data from its next training run."""
    min_models_released_after: timedelta | None = None
    """The shortest exclusion delay for released models the lab may commit to (None: it
    commits to no delay shorter than its own)."""

    def refusal(
        self,
        own: terms_pb2.UseDeclaration,
        proposed: terms_pb2.UseDeclaration,
        vocabulary: Vocabulary | None = None,
    ) -> str | None:
        """Why the lab cannot take ``proposed`` instead of its ``own`` declaration (the
        first field it may not concede, in words), or None when it can. Changes that give
        the lab more room than it asked for (a domain added, a commitment dropped) are no
        concession and always acceptable."""
        vocab = vocabulary or Vocabulary.load()
        if proposed.model_release != own.model_release and (
            proposed.model_release not in self.model_releases
        ):
            return f"model_release {_release_term(proposed.model_release, vocab)}"
        kept_domains = set(proposed.application_domains)
        for domain in own.application_domains:
            if domain not in kept_domains and domain not in self.application_domains:
                return f"application_domains without {domain}"
        codes = vocab.values_of("occupations")
        for code in own.occupations:
            kept = any(codes.covers(p, code) for p in proposed.occupations)
            if not kept and code not in self.occupations:
                return f"occupations without {code}"
        places = vocab.values_of("jurisdictions")
        possible = [*own.jurisdictions, *self.more_jurisdictions]
        for place in proposed.jurisdictions:
            if not any(places.covers(p, place) for p in possible):
                return f"processing in {place}"
        for place in own.jurisdictions:
            if place not in proposed.jurisdictions and place not in self.jurisdictions:
                return f"jurisdictions without {place}"
        share = proposed.public_benefit_share_basis_points
        if share > own.public_benefit_share_basis_points and (
            share > self.max_public_benefit_share_basis_points
        ):
            return f"a public-benefit share of {share} basis points"
        if (
            share > 0
            and proposed.public_benefit_fund != own.public_benefit_fund
            and proposed.public_benefit_fund not in self.public_benefit_funds
        ):
            return f"paying into {proposed.public_benefit_fund}"
        for field in ("distillation", "third_party_fine_tunes"):
            if getattr(own, field) and not getattr(proposed, field) and not getattr(self, field):
                return f"no {field}"
        old, new = own.withdrawal_commitments, proposed.withdrawal_commitments
        if (
            new.exclude_from_next_training_run
            and not old.exclude_from_next_training_run
            and not self.exclude_from_next_training_run
        ):
            return "exclusion from the next training run"
        if new.HasField("exclude_from_models_released_after"):
            wanted = new.exclude_from_models_released_after.ToTimedelta()
            current = (
                old.exclude_from_models_released_after.ToTimedelta()
                if old.HasField("exclude_from_models_released_after")
                else None
            )
            shortest = self.min_models_released_after
            if (current is None or wanted < current) and (shortest is None or wanted < shortest):
                return f"exclusion from models released after {_delay_text(new)}"
        return None


@dataclass(frozen=True)
class DeclarationFile:
    """A lab's use declaration file, read by :func:`declaration_from_json`."""

    declaration: terms_pb2.UseDeclaration
    """The declaration, validated."""
    limits: DeclarationLimits
    """What the lab may concede (``mayConcede``); nothing when the file names nothing."""


# The keys of ``mayConcede`` and the DeclarationLimits field each sets.
_LIMIT_KEYS: Final[Mapping[str, str]] = {
    "modelRelease": "model_releases",
    "applicationDomains": "application_domains",
    "occupations": "occupations",
    "jurisdictions": "jurisdictions",
    "moreJurisdictions": "more_jurisdictions",
    "publicBenefitShareBasisPoints": "max_public_benefit_share_basis_points",
    "publicBenefitFunds": "public_benefit_funds",
    "distillation": "distillation",
    "thirdPartyFineTunes": "third_party_fine_tunes",
    "excludeFromNextTrainingRun": "exclude_from_next_training_run",
    "excludeFromModelsReleasedAfter": "min_models_released_after",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _file_error(message: str, field: str = "file") -> NormError:
    return NormError(BAD_DECLARATION_FIELD, message, {"field": field})


def _release_number(value: Any, vocabulary: Vocabulary) -> int:
    """A model release given as a term (``closed``), an enum name or its number."""
    enum = vocabulary.declaration["model_release"].enum or {}
    for number, term in enum.items():
        if value in (term, terms_pb2.ModelRelease.Name(terms_pb2.ModelRelease.ValueType(number))):
            return number
        if value == number and not isinstance(value, bool):
            return number
    raise _file_error(f"unknown model release {value!r}", "model_release")


def _duration_value(value: Any, field: str) -> timedelta:
    """``"7776000s"`` (protobuf JSON) or a whole number of seconds."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    # Bounded before int(): a huge digit string would raise ValueError, not our error.
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,15}s", value):
        seconds = int(value[:-1])
    if seconds is not None:
        try:
            return timedelta(seconds=seconds)
        except OverflowError:
            pass  # beyond timedelta's range (about 2.7 million years)
    raise _file_error(f'{field}: give a duration such as "7776000s"', field)


def _limits(raw: Any, vocabulary: Vocabulary) -> DeclarationLimits:
    if not isinstance(raw, Mapping):
        raise _file_error("mayConcede must be an object", "mayConcede")
    values: dict[str, Any] = {}
    for key, value in cast("Mapping[str, Any]", raw).items():
        name = _LIMIT_KEYS.get(_camel(str(key)))
        if name is None:
            raise _file_error(f"mayConcede has no {key!r}", f"mayConcede.{key}")
        where = f"mayConcede.{key}"
        if name == "model_releases":
            listed = value if isinstance(value, list) else [value]
            values[name] = frozenset(_release_number(v, vocabulary) for v in listed)
        elif name == "max_public_benefit_share_basis_points":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
                raise _file_error(f"{where} is 0 to 10000", where)
            values[name] = value
        elif name == "min_models_released_after":
            values[name] = _duration_value(value, where)
        elif name in ("distillation", "third_party_fine_tunes", "exclude_from_next_training_run"):
            if not isinstance(value, bool):
                raise _file_error(f"{where} is true or false", where)
            values[name] = value
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _file_error(f"{where} must list strings", where)
            values[name] = frozenset(cast("list[str]", value))
    return DeclarationLimits(**values)


def declaration_from_json(document: Any, vocabulary: Vocabulary | None = None) -> DeclarationFile:
    """A lab's use declaration file, parsed and validated (NormError otherwise).

    The file is the protobuf JSON form of a UseDeclaration (field names in lowerCamelCase
    or as in the proto), where ``modelRelease`` may also be the vocabulary's term
    (``closed``, ``open-weights``), plus an optional ``mayConcede`` object saying what the
    lab may concede when the coalition proposes a change (:class:`DeclarationLimits`):
    ``modelRelease`` (releases it may switch to), ``applicationDomains``, ``occupations``
    and ``jurisdictions`` (declared values it may give up), ``moreJurisdictions`` (places
    it may move to), ``publicBenefitShareBasisPoints`` (the most it pays),
    ``publicBenefitFunds``, ``distillation`` and ``thirdPartyFineTunes`` (true: it may give
    them up), ``excludeFromNextTrainingRun`` (true: it may commit) and
    ``excludeFromModelsReleasedAfter`` (the shortest delay it may commit to)."""
    from google.protobuf import json_format

    vocab = vocabulary or Vocabulary.load()
    if not isinstance(document, Mapping):
        raise _file_error("a declaration file holds one object")
    body = dict(document)
    raw_limits = body.pop("mayConcede", body.pop("may_concede", None))
    for key in ("modelRelease", "model_release"):
        if key in body:
            body[key] = terms_pb2.ModelRelease.Name(
                terms_pb2.ModelRelease.ValueType(_release_number(body[key], vocab))
            )
    declaration = terms_pb2.UseDeclaration()
    try:
        json_format.ParseDict(body, declaration)
    except json_format.ParseError as exc:
        raise _file_error(f"not a use declaration: {exc}") from None
    validate_declaration(declaration, vocab)
    limits = DeclarationLimits() if raw_limits is None else _limits(raw_limits, vocab)
    return DeclarationFile(declaration, limits)


def read_declaration(text: str, vocabulary: Vocabulary | None = None) -> DeclarationFile:
    """:func:`declaration_from_json` of a file's text: JSON, or YAML when PyYAML is
    installed (YAML is a superset of JSON, so either parses)."""
    try:
        document: Any = json.loads(text)
    except ValueError:
        try:
            import yaml  # optional: the client package does not depend on it
        except ImportError:
            raise _file_error("the file is not JSON (install PyYAML to read YAML)") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _file_error(f"the file is neither JSON nor YAML: {exc}") from None
    return declaration_from_json(document, vocabulary)


def load_declaration(path: str | os.PathLike[str]) -> DeclarationFile:
    """:func:`read_declaration` of the file at ``path`` (NormError if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _file_error(f"cannot read {path}: {exc}") from None
    return read_declaration(text)


def declaration_to_json(declaration: terms_pb2.UseDeclaration) -> dict[str, Any]:
    """A declaration in the file format :func:`declaration_from_json` reads (protobuf JSON,
    lowerCamelCase; fields at their defaults left out)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(declaration)
