"""Call authentication: every mutating or private gRPC call is signed by the caller's key.

The caller sends four metadata entries; the signature covers the full method name, the
timestamp, a fresh nonce and the SHA-256 of the exact request bytes on the wire, so a
captured call cannot be replayed (nonce, time window) or altered (request digest).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Final

from coalition.keys import SigningKey

PUBLIC_KEY_HEADER: Final = "coalition-public-key"
TIMESTAMP_HEADER: Final = "coalition-timestamp"
NONCE_HEADER: Final = "coalition-nonce"
SIGNATURE_HEADER: Final = "coalition-signature"
DOMAIN: Final = b"coalition-call-v1"
NONCE_BYTES: Final = 16


def call_message(method: str, timestamp_ms: int, nonce: bytes, request: bytes) -> bytes:
    """The exact bytes a call signature covers."""
    return b"\n".join(
        (
            DOMAIN,
            method.encode(),
            str(timestamp_ms).encode(),
            base64.b64encode(nonce),
            hashlib.sha256(request).hexdigest().encode(),
        )
    )


@dataclass(frozen=True)
class CallSigner:
    """Produces the authentication metadata for calls made with one key."""

    key: SigningKey

    def metadata(self, method: str, request: bytes) -> tuple[tuple[str, str], ...]:
        """Metadata for one call of ``method`` whose serialised request is ``request``."""
        timestamp_ms = time.time_ns() // 1_000_000
        nonce = os.urandom(NONCE_BYTES)
        signature = self.key.sign(call_message(method, timestamp_ms, nonce, request))
        return (
            (PUBLIC_KEY_HEADER, base64.b64encode(self.key.public_key.raw).decode()),
            (TIMESTAMP_HEADER, str(timestamp_ms)),
            (NONCE_HEADER, base64.b64encode(nonce).decode()),
            (SIGNATURE_HEADER, base64.b64encode(signature).decode()),
        )
