"""A consent token's checks: the fast reading of its timestamps equals protobuf's, and the
floors and norms a request remembers as valid change no outcome."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from coalition.v1 import consent_pb2, terms_pb2
from coalition_server.domain import consent as rules
from coalition_server.domain.errors import DomainError, InvalidArgumentError

from ..integration.builders import consent_token, now, ts

Edit = Callable[[consent_pb2.ConsentToken], None]


@given(st.integers(-62_135_596_800, 253_402_300_799), st.integers(0, 999_999_999))
def test_the_fast_timestamp_reading_equals_protobufs(seconds: int, nanos: int) -> None:
    value = Timestamp(seconds=seconds, nanos=nanos)
    read = rules._instant(value, "t")
    assert read == value.ToDatetime(tzinfo=UTC)
    assert read.tzinfo is UTC


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 10**9)]
)
def test_a_timestamp_out_of_range_is_refused_as_before(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        rules._instant(Timestamp(seconds=seconds, nanos=nanos), "not_after")
    assert refused.value.reason == "BAD_TIMESTAMP"


def _currency(token: consent_pb2.ConsentToken) -> None:
    token.floor.prices[0].minimum_per_item.currency_code = "EUR"


def _model(token: consent_pb2.ConsentToken) -> None:
    token.floor.prices[0].payment_model = terms_pb2.PaymentModel.ValueType(999)


def _stale(token: consent_pb2.ConsentToken) -> None:
    token.created_time.CopyFrom(ts(now() - timedelta(hours=1)))


def _unset(field: str) -> Edit:
    return lambda token: token.ClearField(field)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "edits",
    [
        [None, None, _currency, _currency, None, _model, None],
        [_currency, None, _currency, None],
        [_stale, None, _unset("created_time"), None, _unset("not_after"), None],
    ],
)
def test_remembered_floors_change_no_outcome(edits: list[Edit | None]) -> None:
    valid: set[bytes] = set()
    at = now()
    for edit in edits:
        token = consent_token(item_ids=["ab" * 16])
        if edit is not None:
            edit(token)
        outcomes = []
        for remembered in (None, valid):
            try:
                rules.check_token(token, "USD", at, remembered)
                outcomes.append("ok")
            except DomainError as error:
                outcomes.append(error.reason)
        assert outcomes[0] == outcomes[1]
        assert (outcomes[0] == "ok") == (edit is None)
