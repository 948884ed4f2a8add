"""What the servicers share: the database, the sequencer and the coalition's keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from coalition.keys import SigningKey
from coalition_server.keys.provider import KeyProvider
from coalition_server.policy import CoalitionPolicy
from coalition_server.store.database import Database
from coalition_server.store.pool import PoolCache
from coalition_server.store.sequencer import Sequencer


@dataclass(frozen=True)
class ServerContext:
    """The long-lived parts of one server process."""

    database: Database
    sequencer: Sequencer
    coalition_key: SigningKey
    key_provider: KeyProvider
    # Prices are integer micros of this ISO 4217 currency.
    currency: str = "USD"
    # How the coalition bargains (the operator's policy file).
    policy: CoalitionPolicy = field(default_factory=CoalitionPolicy)
    # Longest wait of a feed for a commit before it reads the log again (Settings).
    follow_poll_seconds: float = 0.5
    # The pool as of its latest version, shared by every move (store/pool.py).
    pools: PoolCache = field(default_factory=PoolCache)
