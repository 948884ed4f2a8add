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
  ``coalition:`` profile, for the exports.

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
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final, Literal, cast

from coalition.errors import CoalitionError
from coalition.v1 import norms_pb2, terms_pb2

__all__ = [
    "NORM_REASONS",
    "Assessment",
    "DeclarationFieldSpec",
    "EnduringValueSpec",
    "NormError",
    "NormSpec",
    "OdrlBreach",
    "ParameterSpec",
    "Vocabulary",
    "VocabularyError",
    "assess",
    "breaks",
    "declaration_to_odrl",
    "judged_norm_ids",
    "make_norm",
    "norm_to_odrl",
    "norm_value",
    "validate_declaration",
    "validate_norm",
    "validate_norms",
]

DEFAULT_VERSION: Final = "1"
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


def validate_norms(
    norms: Sequence[norms_pb2.Norm],
    currency: str,
    vocabulary: Vocabulary | None = None,
) -> None:
    """Refuse a token's norms with a NormError unless each is well formed and together they
    are consistent: at most MAX_NORMS; a norm without repeats at most once; repeats of a
    repeatable norm share no value and differ in stance, premium or protected value."""
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
    declaration: terms_pb2.UseDeclaration,
    vocabulary: Vocabulary | None = None,
) -> Assessment:
    """Judge every norm of a token against a declaration. Hard norms never add to the
    premium; a norm whose stance is neither hard nor priced raises NormError BAD_STANCE."""
    vocab = vocabulary or Vocabulary.load()
    hard: list[norms_pb2.Norm] = []
    priced: list[norms_pb2.Norm] = []
    for norm in norms:
        if norm.stance not in (HARD, PRICED):
            raise NormError(BAD_STANCE, "a norm is hard or priced", {"norm_id": norm.norm_id})
        if breaks(norm, declaration, vocab):
            (hard if norm.stance == HARD else priced).append(norm)
    premium = sum(norm.premium_per_item.micros for norm in priced)
    return Assessment(hard_broken=hard, priced_broken=priced, premium_micros=premium)


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
