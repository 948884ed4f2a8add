"""open_batch: a large batch is opened on the server's own verification threads, in order."""

from __future__ import annotations

import threading
from typing import Any, cast

from coalition.client import consent_token, price_floor
from coalition.keys import SigningKey
from coalition.statements import sign_statement
from coalition.v1 import consent_pb2
from coalition_server.api.auth import Caller
from coalition_server.api.dispatch import Call
from coalition_server.api.mutations import PARALLEL_BATCH, open_batch


async def test_a_large_batch_is_opened_in_order_on_the_verify_threads() -> None:
    key = SigningKey.generate()
    statements = [
        consent_token(tag=f"t{i}", purposes=["train-ai"], floors=[price_floor("purchase", 1)])
        for i in range(4 * PARALLEL_BATCH)
    ]
    envelopes = [sign_statement(statement, key).to_proto() for statement in statements]
    call = Call("/test", b"", Caller(key.key_id, key.public_key, None), cast(Any, None))
    threads: set[str] = set()

    def check(statement: consent_pb2.ConsentToken) -> None:
        threads.add(threading.current_thread().name)

    opened = await open_batch(envelopes, "tokens", consent_pb2.ConsentToken, call, check)
    assert [statement for _, statement in opened] == statements
    # The dedicated pool (named "verify"), not the event loop's default executor.
    assert threads
    assert all(name.startswith("verify") for name in threads)
