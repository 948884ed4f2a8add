"""The negotiation state machine and the validation of proposed terms (pure).

States follow the Dataspace Protocol's contract negotiation: REQUESTED -> OFFERED /
COUNTERED (alternating signed moves) -> AGREED -> (RATIFYING ->) FINALIZED, or TERMINATED
by either side or the deadline. Whose turn it is follows from the state: the coalition
answers REQUESTED and COUNTERED, the lab answers OFFERED.
"""

from __future__ import annotations

from datetime import timedelta

from coalition.v1 import negotiation_pb2, terms_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import FailedPreconditionError, InvalidArgumentError
from coalition_server.domain.statements import check_tag

REQUESTED = negotiation_pb2.NEGOTIATION_STATE_REQUESTED
OFFERED = negotiation_pb2.NEGOTIATION_STATE_OFFERED
COUNTERED = negotiation_pb2.NEGOTIATION_STATE_COUNTERED
AGREED = negotiation_pb2.NEGOTIATION_STATE_AGREED
RATIFYING = negotiation_pb2.NEGOTIATION_STATE_RATIFYING
FINALIZED = negotiation_pb2.NEGOTIATION_STATE_FINALIZED
TERMINATED = negotiation_pb2.NEGOTIATION_STATE_TERMINATED

OFFER = negotiation_pb2.MOVE_KIND_OFFER
ACCEPT = negotiation_pb2.MOVE_KIND_ACCEPT
TERMINATE = negotiation_pb2.MOVE_KIND_TERMINATE

OPEN_STATES = frozenset((REQUESTED, OFFERED, COUNTERED, AGREED, RATIFYING))
MAX_LEASE = timedelta(days=7)
MAX_SCOPE_TAGS = 32


def lab_move_state(state: int, kind: int) -> int:
    """The state after a lab's move, or FAILED_PRECONDITION if the move is not allowed now."""
    if kind == TERMINATE and state in OPEN_STATES - {RATIFYING}:
        return TERMINATED
    if state != OFFERED:
        raise FailedPreconditionError(
            "OUT_OF_TURN",
            f"the lab cannot {_kind_name(kind)} in state {_state_name(state)}",
            {"state": _state_name(state)},
        )
    if kind == OFFER:
        return COUNTERED
    if kind == ACCEPT:
        return AGREED
    raise InvalidArgumentError("BAD_MOVE", "a move is an offer, an acceptance or a termination")


def coalition_move_state(state: int, kind: int) -> int:
    """The state after the coalition's move (the coalition answers REQUESTED and COUNTERED)."""
    if kind == TERMINATE and state in OPEN_STATES:
        return TERMINATED
    if state not in (REQUESTED, COUNTERED):
        raise FailedPreconditionError("OUT_OF_TURN", "it is not the coalition's turn")
    return OFFERED if kind == OFFER else AGREED


def check_terms(terms: terms_pb2.LicenceTerms, currency: str, max_price_micros: int) -> None:
    """Refuse terms outside the vocabulary, with negative or absurd prices or durations."""
    purposes = list(terms.purposes)
    if not purposes:
        raise InvalidArgumentError("MISSING_PURPOSES", "terms need at least one purpose")
    if any(p not in rules.KNOWN_PURPOSES for p in purposes):
        raise InvalidArgumentError("UNKNOWN_PURPOSE", "a purpose is not in the vocabulary")
    if len(set(purposes)) != len(purposes):
        raise InvalidArgumentError("BAD_PURPOSES", "a purpose appears twice")
    if terms.payment_model not in rules.KNOWN_PAYMENT_MODELS:
        raise InvalidArgumentError("UNKNOWN_PAYMENT_MODEL", "payment model not in the vocabulary")
    rules.check_money(terms.price_per_item, currency, "price_per_item")
    if terms.price_per_item.micros > max_price_micros:
        raise InvalidArgumentError("ABSURD_PRICE", "the price is above the coalition's bound")
    subscription = terms.payment_model == terms_pb2.PAYMENT_MODEL_SUBSCRIPTION
    period = rules.duration(terms.subscription_period, "subscription_period")
    if subscription and period < timedelta(hours=1):
        raise InvalidArgumentError("BAD_PERIOD", "a subscription needs a period of an hour or more")
    if not subscription and terms.HasField("subscription_period"):
        raise InvalidArgumentError("BAD_PERIOD", "only subscriptions have a period")
    if rules.duration(terms.licence_duration, "licence_duration") <= timedelta(0):
        raise InvalidArgumentError("BAD_DURATION", "licence_duration must be positive")
    if rules.duration(terms.deletion_deadline, "deletion_deadline") <= timedelta(0):
        raise InvalidArgumentError("BAD_DURATION", "deletion_deadline must be positive")
    lease = rules.duration(terms.lease_duration, "lease_duration")
    if not timedelta(0) < lease <= MAX_LEASE:
        raise InvalidArgumentError(
            "BAD_DURATION", "lease_duration must be positive, at most 7 days"
        )
    if terms.HasField("declaration"):
        rules.check_declaration(terms.declaration)
    scope = terms.scope
    if len(scope.tags) > MAX_SCOPE_TAGS or len(scope.media_types) > MAX_SCOPE_TAGS:
        raise InvalidArgumentError("BAD_SCOPE", "at most 32 tags and 32 media types")
    for tag in scope.tags:
        check_tag(tag)
    if scope.max_item_count and scope.max_item_count < scope.min_item_count:
        raise InvalidArgumentError("BAD_SCOPE", "max_item_count is below min_item_count")


def _state_name(state: int) -> str:
    return negotiation_pb2.NegotiationState.Name(negotiation_pb2.NegotiationState.ValueType(state))


def _kind_name(kind: int) -> str:
    if kind in negotiation_pb2.MoveKind.values():
        return negotiation_pb2.MoveKind.Name(negotiation_pb2.MoveKind.ValueType(kind)).lower()
    return "move"
