"""Verifies the call signatures of coalition.auth (see there for the signed bytes)."""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from coalition import auth
from coalition.errors import CoalitionError
from coalition.keys import PublicKey
from coalition_server.domain.errors import (
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from coalition_server.store.parties import PartyRecord, PartyStore


class Policy(enum.Enum):
    """Who may call an RPC."""

    PUBLIC = "public"  # anyone, no signature needed
    SIGNED = "signed"  # a valid call signature by any key, registered or not
    PARTY = "party"  # a valid call signature by a registered party


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one RPC."""

    key_id: str
    public_key: PublicKey
    party: PartyRecord | None

    def require_party(self) -> PartyRecord:
        """The caller's registration, or PERMISSION_DENIED."""
        if self.party is None:
            raise PermissionDeniedError("NOT_REGISTERED", "register this key first")
        return self.party


class ReplayCache:
    """Nonces seen within the freshness window, per process.

    A call older than ``window`` is refused on its timestamp, so a nonce need only be
    remembered for twice the window; the cache is bounded and refuses new calls when full
    rather than forgetting nonces that could still be replayed.

    Kept compact because it grows with every signed call for twice the window (10 minutes
    by default): each call is remembered as a 16-byte BLAKE2b digest of its key id and nonce,
    in one set for lookups and in a list per :data:`BUCKETS`-th of the window for expiry
    (about 160 bytes a call, where an ordered map of the key ids and nonces took about 320:
    at 300 signed calls a second, 2.7 MiB a minute less).
    """

    BUCKETS = 30

    def __init__(self, window_seconds: float, max_entries: int = 1_000_000) -> None:
        self._window = window_seconds
        self._max = max_entries
        self._bucket_seconds = max(window_seconds / self.BUCKETS, 1e-3)
        self._seen: set[bytes] = set()
        # (bucket number, the digests first seen in it), oldest first.
        self._buckets: deque[tuple[int, list[bytes]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, key_id: str, nonce: bytes, now: float) -> None:
        """Record the nonce; UNAUTHENTICATED if it was seen before."""
        # Forget a bucket once all of it is older than twice the window.
        horizon = now - 2 * self._window
        while self._buckets and (self._buckets[0][0] + 1) * self._bucket_seconds <= horizon:
            self._seen.difference_update(self._buckets.popleft()[1])
        digest = hashlib.blake2b(
            key_id.encode() + b"\0" + nonce, digest_size=16, person=b"coalition-nonce"
        ).digest()
        if digest in self._seen:
            raise UnauthenticatedError("REPLAYED_REQUEST", "this call was already made (nonce)")
        if len(self._seen) >= self._max:
            raise ResourceExhaustedError("AUTH_CACHE_FULL", "too many calls; retry shortly")
        self._seen.add(digest)
        bucket = int(now // self._bucket_seconds)
        if not self._buckets or self._buckets[-1][0] < bucket:
            self._buckets.append((bucket, []))
        self._buckets[-1][1].append(digest)


class Authenticator:
    """Checks call signatures, freshness and replay, then looks the key up."""

    def __init__(self, parties: PartyStore, window_seconds: float = 300.0) -> None:
        self._parties = parties
        self._window = window_seconds
        self._replays = ReplayCache(window_seconds)

    async def authenticate(
        self, method: str, metadata: Mapping[str, str], request: bytes, policy: Policy
    ) -> Caller | None:
        """The caller, or None for an unsigned call to a public method."""
        if policy is Policy.PUBLIC and auth.SIGNATURE_HEADER not in metadata:
            return None
        try:
            public_key = PublicKey(
                base64.b64decode(metadata[auth.PUBLIC_KEY_HEADER], validate=True)
            )
            timestamp_ms = int(metadata[auth.TIMESTAMP_HEADER])
            nonce = base64.b64decode(metadata[auth.NONCE_HEADER], validate=True)
            signature = base64.b64decode(metadata[auth.SIGNATURE_HEADER], validate=True)
        except KeyError as exc:
            raise UnauthenticatedError(
                "MISSING_CREDENTIALS", f"this call must be signed (missing {exc.args[0]})"
            ) from None
        except (binascii.Error, ValueError, CoalitionError):
            raise UnauthenticatedError(
                "MALFORMED_CREDENTIALS", "call credentials are malformed"
            ) from None
        if len(nonce) < auth.NONCE_BYTES or len(nonce) > 64:
            raise UnauthenticatedError("MALFORMED_CREDENTIALS", "nonce must be 16 to 64 bytes")
        try:
            public_key.verify(signature, auth.call_message(method, timestamp_ms, nonce, request))
        except CoalitionError:
            raise UnauthenticatedError(
                "BAD_SIGNATURE", "the call signature does not verify"
            ) from None
        now = time.time()
        if abs(now - timestamp_ms / 1000) > self._window:
            raise UnauthenticatedError(
                "STALE_REQUEST", "the call's timestamp is outside the accepted window"
            )
        self._replays.check_and_add(public_key.key_id, nonce, now)
        party = await self._parties.get(public_key.key_id)
        if policy is Policy.PARTY and party is None:
            raise UnauthenticatedError("UNKNOWN_KEY", "this key is not registered")
        return Caller(public_key.key_id, public_key, party)
