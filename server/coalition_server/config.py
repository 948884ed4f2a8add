"""Server settings: flags and environment (COALITION_*), with embedded defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from coalition_server.store.database import normalise_url, sqlite_url

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path("coalition-data")
SQLITE_FILE = "coalition.db"


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to start."""

    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str | None = None
    origin: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_batch: int = 1024
    auth_window_seconds: float = 300.0
    max_message_bytes: int = 8 * 1024 * 1024
    # The coalition's bargaining policy (YAML); None means the built-in defaults.
    policy_file: Path | None = None
    # How often negotiations past their deadline are terminated.
    negotiation_sweep_seconds: float = 5.0
    # Prices are integer micros of this ISO 4217 currency.
    currency: str = "USD"
    # Key-encryption keys are rotated (retired, data keys re-wrapped) at this age.
    kek_max_age: timedelta = timedelta(days=90)
    # A retired key-encryption key is destroyed this long after retirement.
    kek_retention: timedelta = timedelta(days=7)
    # How often retired keys are emptied (data keys re-wrapped) and, when due, destroyed.
    retention_check_seconds: float = 600.0
    # SQLite (embedded default) is migrated on start; PostgreSQL needs `coalition-server migrate`.
    auto_migrate: bool | None = None

    def database_url(self) -> str:
        """The database URL: the given one, or the SQLite file in the data directory."""
        if self.db_url:
            return normalise_url(self.db_url).render_as_string(hide_password=False)
        return sqlite_url(str((self.data_dir / SQLITE_FILE).resolve())).render_as_string()

    def should_auto_migrate(self) -> bool:
        """Migrate on start: by default only for the embedded SQLite store."""
        if self.auto_migrate is not None:
            return self.auto_migrate
        return normalise_url(self.database_url()).get_backend_name() == "sqlite"
