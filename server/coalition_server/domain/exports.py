"""Consent tokens and agreements as ODRL 2.2 policies (JSON-LD) and RSL 1.0 licences (XML).

Pure functions, no I/O: the caller serialises (``json.dumps`` for ODRL) and serves the result
(media types :data:`ODRL_MEDIA_TYPE` and :data:`RSL_MEDIA_TYPE`). docs/exports.md has the
mapping tables and an example of each output; the decisions in short:

ODRL
  * A consent token is an ``Offer``: the member is the assigner, no assignee is named (any lab
    may accept through the coalition). An agreement is an ``Agreement``: coalition assigner,
    lab assignee. A ``Set`` would be wrong for both, since both name their parties.
  * Purposes are ``odrl:use`` with an ``odrl:purpose`` constraint (``eq coalition:train-ai``),
    one permission per purpose, not new actions. The purposes are *why* data is used, which is
    exactly what ``odrl:purpose`` means; the act is using it. So an evaluator that knows only the
    ODRL core vocabulary still reads the action, operators and operands, and compares purpose
    IRIs; a custom action (``coalition:train-ai includedIn odrl:use``) would make every rule
    unintelligible to anyone without our profile. Prohibitions (excluded labs now, hard norms
    later) prohibit ``use``, the same action, so rules compose without action reasoning.
  * Our own terms live under the ``coalition:`` prefix (:data:`VOCABULARY`), which is also the
    policies' ``profile``. The vocabulary is fixed project-wide; only instance IRIs (policies,
    parties, items) use the deployment's ``base_uri``.
  * Price floors: one ``compensate`` duty per payment model, each with a constraint
    ``coalition:paymentModel eq coalition:<model>`` so that exactly the duty of the model a deal
    uses applies (duties of one rule are conjunctive; floors are alternatives). The permission
    itself carries ``coalition:paymentModel isAnyOf`` the models that have a floor. The action
    is refined by ``payAmount`` (``gteq`` the floor for a consent, ``eq`` the price for an
    agreement, ``xsd:decimal``, exact) in ``unit`` currency, and ``unitOfCount eq coalition:item``
    (the price is per item); subscriptions add ``timeInterval eq`` their period.
  * Validity: ``dateTime gteq`` not_before and ``lt`` not_after (RFC 3339, ``xsd:dateTime``);
    maximum licence duration: ``elapsedTime lteq`` (ISO 8601, ``xsd:duration``).
  * Deletion: a ``delete`` duty constrained by ``event gt coalition:withdrawal-notice`` and
    ``elapsedTime lteq`` the deadline (unset in a token means the protocol default, 30 days).
  * Attribution: an ``attribute`` duty (member as attributed party; in an agreement, the
    contributors of the covered items as a PartyCollection).
  * Excluded labs: one ``prohibition`` of ``use`` per lab (the lab as assignee), with the
    policy's ``conflict`` strategy ``prohibit`` so that the prohibition wins over the open
    permission (ODRL's default strategy would make such a conflict void the policy).
  * Items: explicit ids are Assets ``partOf`` an AssetCollection (written with ``@reverse``);
    a tag is an AssetCollection whose ``source`` is the member's collection, refined by
    ``coalition:tags hasPart <tag>``; all items is the member's collection itself.

Members' norms and labs' use declarations (issue 9), in the vocabulary's own ODRL profile
(:func:`coalition.norms.odrl_profile`, the same ``coalition:`` namespace):
  * A hard norm is one more ``prohibition`` of ``use`` under the norm's breach constraint
    (:func:`coalition.norms.norm_to_odrl`), with the member as assigner: ``conflict: prohibit``
    makes it win over every permission, whatever is paid.
  * A priced norm is one more ``compensate`` duty in every permission, refined by ``payAmount
    gteq`` the premium per item and applying under the breach constraint, beside the floor's
    own duty (duties are conjunctive: a use that breaks the norm owes floor *and* premium).
    The premium adds to the floor in the floor's units, so there is one such duty per payment
    model, constrained like the floor's (``coalition:paymentModel eq``, and for a subscription
    ``timeInterval eq`` its period).
  * Both carry ``coalition:norm`` and, when named, ``coalition:protects``.
  * An agreement's use declaration is a ``coalition:UseDeclaration`` node of the policy
    (``coalition:useDeclaration``, uid ``<base>agreement/<id>/declaration``): the binding
    statement whose values the norms' left operands take. An agreement carries no norms: the
    coalition judged each covered item's norms against this declaration before covering it.

RSL
  * One ``<content>`` whose url pattern ``<base>consent/<id>/items/*`` matches each item the
    token names (RSL licenses assets by URL; it cannot list ids or express a tag), so an amount
    is per item, as in the token. One ``<license>`` per price floor (RSL allows one payment per
    licence: several licences are alternatives), each permitting the same usage tokens.
  * Purposes: train-ai -> ``ai-train``, ai-input -> ``ai-input``, ai-index -> ``ai-index``,
    search -> ``search``. RSL has no token as narrow as train-genai or evaluation, and the
    nearest ones (``ai-train``, ``ai-input``) would grant *more* than the member did; RSL 1.0
    lets a list carry extension tokens (QNames) that a processor must not interpret unless it
    knows them, so those two are ``coalition:train-genai`` / ``coalition:evaluation`` (train-genai
    folds into ``ai-train`` when train-ai is permitted too).
  * Payment: purchase -> ``purchase``, subscription -> ``subscription``, per-use -> ``use``,
    with ``<amount currency>`` exact; a zero floor is ``free`` (``attribution`` when required).
  * Lossy in RSL core, kept in a root-level ``<coalition:consent>`` extension element (which
    RSL processors ignore) and in full in the ODRL export linked from ``<terms>``: the explicit
    item ids or tag, the subscription period, attribution alongside a price, the maximum
    licence duration, the deletion deadline, excluded labs and the validity window.

There is deliberately no agreement-to-RSL: RSL cannot name a licensee, so a bilateral agreement
written as RSL would read as a public offer to everyone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coalition import norms
from coalition.v1 import access_pb2, consent_pb2, terms_pb2

JsonObject = dict[str, Any]

ODRL_CONTEXT: Final = "http://www.w3.org/ns/odrl.jsonld"
ODRL_MEDIA_TYPE: Final = "application/ld+json"
RSL_NAMESPACE: Final = "https://rslstandard.org/rsl"
RSL_MEDIA_TYPE: Final = "application/rsl+xml"
DEFAULT_BASE_URI: Final = "https://coalition.example/"
# Our ODRL profile, and the namespace of our own terms (the ``coalition:`` prefix).
PROFILE: Final = "https://coalition.example/ns/odrl/v1"
VOCABULARY: Final = PROFILE + "/"
PREFIX: Final = "coalition"
# terms.proto: an unset max_deletion_deadline means 30 days.
DEFAULT_DELETION_DEADLINE: Final = timedelta(days=30)

PURPOSE_NAMES: Final[dict[int, str]] = {
    terms_pb2.PURPOSE_TRAIN_AI: "train-ai",
    terms_pb2.PURPOSE_TRAIN_GENAI: "train-genai",
    terms_pb2.PURPOSE_AI_INPUT: "ai-input",
    terms_pb2.PURPOSE_AI_INDEX: "ai-index",
    terms_pb2.PURPOSE_SEARCH: "search",
    terms_pb2.PURPOSE_EVALUATION: "evaluation",
}
PAYMENT_MODEL_NAMES: Final[dict[int, str]] = {
    terms_pb2.PAYMENT_MODEL_PURCHASE: "purchase",
    terms_pb2.PAYMENT_MODEL_SUBSCRIPTION: "subscription",
    terms_pb2.PAYMENT_MODEL_PER_USE: "per-use",
}
# RSL 1.0 usage tokens for purposes that have an exact equivalent (see the module docstring).
RSL_USAGE_TOKENS: Final[dict[int, str]] = {
    terms_pb2.PURPOSE_TRAIN_AI: "ai-train",
    terms_pb2.PURPOSE_AI_INPUT: "ai-input",
    terms_pb2.PURPOSE_AI_INDEX: "ai-index",
    terms_pb2.PURPOSE_SEARCH: "search",
}
RSL_PAYMENT_TYPES: Final[dict[int, str]] = {
    terms_pb2.PAYMENT_MODEL_PURCHASE: "purchase",
    terms_pb2.PAYMENT_MODEL_SUBSCRIPTION: "subscription",
    terms_pb2.PAYMENT_MODEL_PER_USE: "use",
}

_MICROS: Final = 6
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --- values -----------------------------------------------------------------------------------


def decimal_string(micros: int) -> str:
    """Integer micros as an exact decimal string (``1500000`` -> ``"1.5"``), never a float."""
    value = Decimal(micros).scaleb(-_MICROS).normalize()
    return format(value, "f")


def iso_duration(value: Duration) -> str:
    """A protobuf duration as an ISO 8601 / xsd:duration string in days, hours, minutes and
    seconds (``P30D``, ``PT1H``, ``P1DT0.5S``): no years or months, whose length varies."""
    nanos_total = value.seconds * 10**9 + value.nanos
    sign = "-" if nanos_total < 0 else ""
    nanos_total = abs(nanos_total)
    seconds, nanos = divmod(nanos_total, 10**9)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    date_part = f"{days}D" if days else ""
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if seconds or nanos:
        fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
        time_part += f"{seconds}{fraction}S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


def rfc3339(value: Timestamp) -> str:
    """A protobuf timestamp as an RFC 3339 UTC string, fractional seconds only when present."""
    moment = _EPOCH + timedelta(seconds=value.seconds)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if value.nanos:
        text += f".{value.nanos:09d}".rstrip("0")
    return text + "Z"


def purpose_name(purpose: int) -> str:
    """Our vocabulary's name of a purpose (``train-ai``), or ValueError if it has none."""
    try:
        return PURPOSE_NAMES[purpose]
    except KeyError:
        raise ValueError(f"purpose {purpose} has no export mapping") from None


def payment_model_name(model: int) -> str:
    """Our vocabulary's name of a payment model (``per-use``), or ValueError."""
    try:
        return PAYMENT_MODEL_NAMES[model]
    except KeyError:
        raise ValueError(f"payment model {model} has no export mapping") from None


def rsl_usage_tokens(purposes: Iterable[int]) -> list[str]:
    """RSL ``<permits type="usage">`` tokens for purposes, in purpose order, never granting
    more than the purposes do (unmatched purposes become ``coalition:`` extension tokens)."""
    chosen = sorted(set(purposes))
    tokens: list[str] = []
    for purpose in chosen:
        if purpose in RSL_USAGE_TOKENS:
            token = RSL_USAGE_TOKENS[purpose]
        elif purpose == terms_pb2.PURPOSE_TRAIN_GENAI and terms_pb2.PURPOSE_TRAIN_AI in chosen:
            token = RSL_USAGE_TOKENS[terms_pb2.PURPOSE_TRAIN_AI]
        else:
            token = f"{PREFIX}:{purpose_name(purpose)}"
        if token not in tokens:
            tokens.append(token)
    return tokens


# --- IRIs -------------------------------------------------------------------------------------


class _Iris:
    """Instance IRIs under a deployment's base URI."""

    def __init__(self, base_uri: str) -> None:
        self.base = base_uri if base_uri.endswith("/") else base_uri + "/"

    def _path(self, *segments: str) -> str:
        return self.base + "/".join(quote(segment, safe="") for segment in segments)

    def party(self, key_id: str) -> str:
        return self._path("party", key_id)

    def member_items(self, key_id: str) -> str:
        return self._path("party", key_id, "items")

    def item(self, item_id: str) -> str:
        return self._path("item", item_id)

    def consent(self, consent_id: str) -> str:
        return self._path("consent", consent_id)

    def consent_items(self, consent_id: str) -> str:
        return self._path("consent", consent_id, "items")

    def agreement(self, agreement_id: str) -> str:
        return self._path("agreement", agreement_id)

    def agreement_items(self, agreement_id: str) -> str:
        return self._path("agreement", agreement_id, "items")

    def agreement_contributors(self, agreement_id: str) -> str:
        return self._path("agreement", agreement_id, "contributors")

    def agreement_declaration(self, agreement_id: str) -> str:
        return self._path("agreement", agreement_id, "declaration")

    def negotiation(self, negotiation_id: str) -> str:
        return self._path("negotiation", negotiation_id)


def _term(name: str) -> str:
    """A compact IRI in our vocabulary."""
    return f"{PREFIX}:{name}"


def _ref(iri: str) -> JsonObject:
    return {"@id": iri}


def _currency(code: str) -> JsonObject:
    return _ref(_term("currency/" + quote(code, safe="")))


def _datetime_literal(value: Timestamp) -> JsonObject:
    return {"@value": rfc3339(value), "@type": "xsd:dateTime"}


def _duration_literal(value: Duration) -> JsonObject:
    return {"@value": iso_duration(value), "@type": "xsd:duration"}


def _decimal_literal(micros: int) -> JsonObject:
    return {"@value": decimal_string(micros), "@type": "xsd:decimal"}


def _constraint(left: str, operator: str, right: Any) -> JsonObject:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def _context() -> list[Any]:
    return [ODRL_CONTEXT, {PREFIX: VOCABULARY}]


# --- ODRL rules -------------------------------------------------------------------------------


def _purpose_constraint(purpose: int) -> JsonObject:
    return _constraint("purpose", "eq", _ref(_term(purpose_name(purpose))))


def _payment_model_ref(model: int) -> JsonObject:
    return _ref(_term(payment_model_name(model)))


def _compensate_duty(
    model: int,
    price: terms_pb2.Money,
    period: Duration | None,
    *,
    operator: str,
    compensated: str,
    compensating: str | None = None,
) -> JsonObject:
    """Pay ``price`` per item (``operator`` gteq for a floor, eq for an agreed price), applying
    when the deal uses ``model``; subscriptions recur every ``period``."""
    pay_amount = _constraint("payAmount", operator, _decimal_literal(price.micros))
    pay_amount["unit"] = _currency(price.currency_code)
    constraints = [_constraint(_term("paymentModel"), "eq", _payment_model_ref(model))]
    if period is not None:
        constraints.append(_constraint("timeInterval", "eq", _duration_literal(period)))
    duty: JsonObject = {
        "action": [
            {
                "rdf:value": _ref("odrl:compensate"),
                "refinement": [
                    pay_amount,
                    _constraint("unitOfCount", "eq", _ref(_term("item"))),
                ],
            }
        ],
        "compensatedParty": compensated,
        "constraint": constraints,
    }
    if compensating is not None:
        duty["compensatingParty"] = compensating
    return duty


def _floor_duties(floor: terms_pb2.FloorTerms, member: str) -> list[JsonObject]:
    duties = []
    for price in floor.prices:
        subscription = price.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION
        duties.append(
            _compensate_duty(
                price.payment_model,
                price.minimum_per_item,
                price.period if subscription else None,
                operator="gteq",
                compensated=member,
            )
        )
    return duties


def _attribute_duty(attributed: str | JsonObject) -> JsonObject:
    return {"action": "attribute", "attributedParty": attributed}


def _delete_duty(deadline: Duration) -> JsonObject:
    """Delete within ``deadline`` of a withdrawal notice."""
    return {
        "action": "delete",
        "constraint": [
            _constraint("event", "gt", _ref(_term("withdrawal-notice"))),
            _constraint("elapsedTime", "lteq", _duration_literal(deadline)),
        ],
    }


def _norm_fragments(token: consent_pb2.ConsentToken, kind: str) -> list[JsonObject]:
    """The ODRL rules of the token's norms of one kind (``prohibition``: hard, ``duty``:
    priced), in token order, fresh on every call (rules must not share dicts)."""
    fragments = [norms.norm_to_odrl(norm) for norm in token.norms]
    return [fragment["rule"] for fragment in fragments if fragment["kind"] == kind]


def _premium_duties(token: consent_pb2.ConsentToken, member: str) -> list[JsonObject]:
    """Each priced norm as a compensate duty per payment model with a floor: the premium
    adds to that floor, in its units (per period for a subscription), when the use breaks
    the norm."""
    duties = []
    for price in token.floor.prices:
        for rule in _norm_fragments(token, "duty"):
            constraints = [
                _constraint(_term("paymentModel"), "eq", _payment_model_ref(price.payment_model))
            ]
            if price.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
                constraints.append(
                    _constraint("timeInterval", "eq", _duration_literal(price.period))
                )
            duty: JsonObject = {
                "action": rule.pop("action"),
                "compensatedParty": member,
                "constraint": constraints + rule.pop("constraint"),
            }
            duty.update(rule)  # coalition:norm, coalition:protects
            duties.append(duty)
    return duties


def _deletion_deadline(floor: terms_pb2.FloorTerms) -> Duration:
    if floor.HasField("max_deletion_deadline"):
        return floor.max_deletion_deadline
    default = Duration()
    default.FromTimedelta(DEFAULT_DELETION_DEADLINE)
    return default


def _consent_target(
    iris: _Iris, consent_id: str, contributor_key_id: str, items: terms_pb2.ItemSelector
) -> JsonObject:
    selector = items.WhichOneof("selector")
    if selector == "item_ids":
        return {
            "@type": "AssetCollection",
            "uid": iris.consent_items(consent_id),
            "@reverse": {"partOf": [iris.item(i) for i in items.item_ids.item_ids]},
        }
    if selector == "tag":
        return {
            "@type": "AssetCollection",
            "uid": iris.consent_items(consent_id),
            "source": iris.member_items(contributor_key_id),
            "refinement": [_constraint(_term("tags"), "hasPart", items.tag)],
        }
    if selector == "all_items" and items.all_items:
        return {"@type": "AssetCollection", "uid": iris.member_items(contributor_key_id)}
    raise ValueError("the token names no items")


def _validity_constraints(
    token: consent_pb2.ConsentToken, sequenced_at: datetime | None
) -> list[JsonObject]:
    constraints = []
    if token.HasField("not_before"):
        constraints.append(_constraint("dateTime", "gteq", _datetime_literal(token.not_before)))
    elif sequenced_at is not None:
        start = Timestamp()
        start.FromDatetime(sequenced_at)
        constraints.append(_constraint("dateTime", "gteq", _datetime_literal(start)))
    constraints.append(_constraint("dateTime", "lt", _datetime_literal(token.not_after)))
    return constraints


def consent_to_odrl(
    consent_id: str,
    contributor_key_id: str,
    token: consent_pb2.ConsentToken,
    *,
    base_uri: str = DEFAULT_BASE_URI,
    sequenced_at: datetime | None = None,
) -> JsonObject:
    """A member's consent token as an ODRL 2.2 ``Offer`` (compacted JSON-LD, ready for
    ``json.dumps``). ``sequenced_at`` (the token's ledger time) is the start of validity when
    the token sets no not_before; without either the policy has no lower time bound. Hard
    norms are prohibitions, priced norms premium duties in every permission."""
    iris = _Iris(base_uri)
    member = iris.party(contributor_key_id)
    target = _consent_target(iris, consent_id, contributor_key_id, token.items)
    target_iri: str = target["uid"]
    floor = token.floor
    models = [_payment_model_ref(price.payment_model) for price in floor.prices]

    def permission(purpose: int) -> JsonObject:
        constraints = [_purpose_constraint(purpose)]
        if models:
            constraints.append(_constraint(_term("paymentModel"), "isAnyOf", models))
        constraints.extend(_validity_constraints(token, sequenced_at))
        if floor.HasField("max_licence_duration"):
            constraints.append(
                _constraint("elapsedTime", "lteq", _duration_literal(floor.max_licence_duration))
            )
        duties = _floor_duties(floor, member) + _premium_duties(token, member)
        if floor.attribution_required:
            duties.append(_attribute_duty(member))
        duties.append(_delete_duty(_deletion_deadline(floor)))
        return {
            "target": target_iri,
            "assigner": member,
            "action": "use",
            "constraint": constraints,
            "duty": duties,
        }

    def prohibition(lab_key_id: str) -> JsonObject:
        return {
            "target": target_iri,
            "assigner": member,
            "assignee": iris.party(lab_key_id),
            "action": "use",
        }

    def hard_norm(rule: JsonObject) -> JsonObject:
        # No assignee: a hard norm binds whoever uses the items.
        return {"target": target_iri, "assigner": member, **rule}

    policy: JsonObject = {
        "@context": _context(),
        "@type": "Offer",
        "uid": iris.consent(consent_id),
        "profile": PROFILE,
        "conflict": "prohibit",
        "assigner": member,
        "target": target,
    }
    if token.HasField("created_time"):
        policy["dct:issued"] = _datetime_literal(token.created_time)
    policy["permission"] = [permission(p) for p in token.purposes]
    prohibitions = [prohibition(lab) for lab in token.excluded_lab_key_ids]
    prohibitions += [hard_norm(rule) for rule in _norm_fragments(token, "prohibition")]
    if prohibitions:
        policy["prohibition"] = prohibitions
    return policy


def agreement_to_odrl(
    agreement_id: str,
    agreement: access_pb2.Agreement,
    coalition_key_id: str,
    *,
    base_uri: str = DEFAULT_BASE_URI,
) -> JsonObject:
    """A signed agreement as an ODRL 2.2 ``Agreement`` (compacted JSON-LD): the coalition
    assigns the covered items, named and committed to by their Merkle root, to the lab,
    under the lab's use declaration (``coalition:useDeclaration``) when the terms carry one."""
    iris = _Iris(base_uri)
    coalition = iris.party(coalition_key_id)
    lab = iris.party(agreement.lab_key_id)
    terms = agreement.terms
    items_iri = iris.agreement_items(agreement_id)
    target: JsonObject = {
        "@type": "AssetCollection",
        "uid": items_iri,
        _term("coveredItemsRoot"): {
            "@value": agreement.covered_items_root.hex(),
            "@type": "xsd:hexBinary",
        },
        _term("coveredItemCount"): agreement.covered_item_count,
        "@reverse": {"partOf": [iris.item(i) for i in agreement.covered_item_ids]},
    }
    subscription = terms.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION

    def permission(purpose: int) -> JsonObject:
        constraints = [
            _purpose_constraint(purpose),
            _constraint(_term("paymentModel"), "eq", _payment_model_ref(terms.payment_model)),
        ]
        if agreement.HasField("expiry_time"):
            constraints.append(
                _constraint("dateTime", "lt", _datetime_literal(agreement.expiry_time))
            )
        if terms.HasField("licence_duration"):
            constraints.append(
                _constraint("elapsedTime", "lteq", _duration_literal(terms.licence_duration))
            )
        if terms.HasField("lease_duration"):
            constraints.append(
                _constraint(_term("leaseDuration"), "lteq", _duration_literal(terms.lease_duration))
            )
        duties = [
            _compensate_duty(
                terms.payment_model,
                terms.price_per_item,
                terms.subscription_period if subscription else None,
                operator="eq",
                compensated=coalition,
                compensating=lab,
            )
        ]
        if terms.attribution:
            duties.append(
                _attribute_duty(
                    {"@type": "PartyCollection", "uid": iris.agreement_contributors(agreement_id)}
                )
            )
        duties.append(_delete_duty(terms.deletion_deadline))
        return {
            "target": items_iri,
            "assigner": coalition,
            "assignee": lab,
            "action": "use",
            "constraint": constraints,
            "duty": duties,
        }

    policy: JsonObject = {
        "@context": _context(),
        "@type": "Agreement",
        "uid": iris.agreement(agreement_id),
        "profile": PROFILE,
        "assigner": coalition,
        "assignee": lab,
        "target": target,
    }
    if agreement.HasField("created_time"):
        policy["dct:issued"] = _datetime_literal(agreement.created_time)
    if agreement.negotiation_id:
        policy[_term("negotiation")] = _ref(iris.negotiation(agreement.negotiation_id))
    if terms.HasField("declaration"):
        policy[_term("useDeclaration")] = {
            "uid": iris.agreement_declaration(agreement_id),
            **norms.declaration_to_odrl(terms.declaration),
        }
    policy["permission"] = [permission(p) for p in terms.purposes]
    return policy


# --- RSL --------------------------------------------------------------------------------------


def _rsl_payments(floor: terms_pb2.FloorTerms) -> list[tuple[str, terms_pb2.Money | None]]:
    """(RSL payment type, amount) per floor, in floor order, without duplicates."""
    payments: list[tuple[str, terms_pb2.Money | None]] = []
    seen: set[tuple[str, str, int]] = set()
    for price in floor.prices:
        money = price.minimum_per_item
        if money.micros == 0:
            kind = "attribution" if floor.attribution_required else "free"
            amount = None
        else:
            try:
                kind = RSL_PAYMENT_TYPES[price.payment_model]
            except KeyError:
                raise ValueError(
                    f"payment model {price.payment_model} has no export mapping"
                ) from None
            amount = money
        key = (kind, money.currency_code, money.micros) if amount is not None else (kind, "", 0)
        if key not in seen:
            seen.add(key)
            payments.append((kind, amount))
    return payments


def _element(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _rsl_extension(
    root: ET.Element,
    iris: _Iris,
    consent_id: str,
    contributor_key_id: str,
    token: consent_pb2.ConsentToken,
) -> None:
    """What RSL core cannot say, for readers that know our namespace."""
    attrs = {"id": consent_id, "policy": iris.consent(consent_id)}
    attrs["contributor"] = iris.party(contributor_key_id)
    if token.HasField("not_before"):
        attrs["notBefore"] = rfc3339(token.not_before)
    attrs["notAfter"] = rfc3339(token.not_after)
    ext = _element(root, f"{PREFIX}:consent", **attrs)
    items = token.items
    selector = items.WhichOneof("selector")
    if selector == "item_ids":
        listing = _element(ext, f"{PREFIX}:items", selector="item-ids")
        for item_id in items.item_ids.item_ids:
            _element(listing, f"{PREFIX}:item", item_id)
    elif selector == "tag":
        _element(ext, f"{PREFIX}:items", items.tag, selector="tag")
    elif selector == "all_items" and items.all_items:
        _element(ext, f"{PREFIX}:items", selector="all")
    else:
        raise ValueError("the token names no items")
    _element(ext, f"{PREFIX}:purposes", " ".join(purpose_name(p) for p in token.purposes))
    floor = token.floor
    for price in floor.prices:
        price_attrs = {
            "model": payment_model_name(price.payment_model),
            "currency": price.minimum_per_item.currency_code,
        }
        if price.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION:
            price_attrs["period"] = iso_duration(price.period)
        _element(
            ext, f"{PREFIX}:price", decimal_string(price.minimum_per_item.micros), **price_attrs
        )
    _element(
        ext, f"{PREFIX}:attribution", required="true" if floor.attribution_required else "false"
    )
    if floor.HasField("max_licence_duration"):
        _element(ext, f"{PREFIX}:maxLicenceDuration", iso_duration(floor.max_licence_duration))
    _element(ext, f"{PREFIX}:maxDeletionDeadline", iso_duration(_deletion_deadline(floor)))
    for lab in token.excluded_lab_key_ids:
        _element(ext, f"{PREFIX}:excludedLab", lab)


def consent_to_rsl(
    consent_id: str,
    contributor_key_id: str,
    token: consent_pb2.ConsentToken,
    *,
    base_uri: str = DEFAULT_BASE_URI,
) -> str:
    """A member's consent token as an RSL 1.0 licence document (XML text with declaration)."""
    iris = _Iris(base_uri)
    # Namespaces are declared literally so the RSL one is the default namespace (no prefix)
    # and extension tokens in text can use the ``coalition:`` prefix they are declared with.
    root = ET.Element("rsl", {"xmlns": RSL_NAMESPACE, f"xmlns:{PREFIX}": VOCABULARY})
    content = _element(root, "content", url=iris.consent_items(consent_id) + "/*")
    usage = " ".join(rsl_usage_tokens(token.purposes))
    payments = _rsl_payments(token.floor)
    if not payments:
        # A licence without <payment> would mean "free": never export more than was granted.
        raise ValueError("the token has no price floor")
    for kind, amount in payments:
        licence = _element(content, "license")
        _element(licence, "permits", usage, type="usage")
        payment = _element(licence, "payment", type=kind)
        if amount is not None:
            _element(
                payment, "amount", decimal_string(amount.micros), currency=amount.currency_code
            )
    _element(content, "copyright", iris.party(contributor_key_id))
    _element(content, "terms", iris.consent(consent_id))
    _rsl_extension(root, iris, consent_id, contributor_key_id, token)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
