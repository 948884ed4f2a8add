"""The server's own signing keys, kept in the data directory with 0600 permissions.

``log.key`` signs checkpoints (the note key named by the log's origin); ``coalition.key``
signs the coalition's own statements. Every replica of one ledger must hold the same two
files; the database records the log's identity and refuses a replica with other keys.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from coalition.keys import SigningKey
from coalition.note import NoteSigner

LOG_KEY_FILE = "log.key"
COALITION_KEY_FILE = "coalition.key"


def load_or_create(path: Path) -> SigningKey:
    """Load the key at ``path``, creating it (0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A sibling replica may create it at the same moment: then we load theirs.
        with contextlib.suppress(FileExistsError):
            SigningKey.generate().save(path)
    ensure_private(path)
    return SigningKey.load(path)


@dataclass(frozen=True)
class ServerKeys:
    """The log's note signer and the coalition's statement key."""

    log_signer: NoteSigner
    coalition_key: SigningKey

    @classmethod
    def load(cls, data_dir: Path, origin: str | None) -> ServerKeys:
        """Load or create both keys; ``origin`` defaults to one derived from the log key."""
        log_key = load_or_create(data_dir / LOG_KEY_FILE)
        coalition_key = load_or_create(data_dir / COALITION_KEY_FILE)
        name = origin or f"coalition.local/log/{log_key.key_id[:16]}"
        return cls(NoteSigner(name, log_key), coalition_key)


def ensure_private(path: Path) -> None:
    """Refuse key files that others can read."""
    mode = os.stat(path).st_mode & 0o077
    if mode:
        raise PermissionError(f"{path} is readable by others (mode {oct(mode)}); chmod 600 it")
