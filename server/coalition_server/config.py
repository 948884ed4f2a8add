"""Server settings: flags, environment (``COALITION_*``), a TOML config file, defaults.

Every setting is one field of :class:`Settings`, and its field metadata names it everywhere
else: the command-line flag, the environment variable and the config-file key (the flag's
name without the dashes, ``-`` as ``_``). :data:`OPTIONS` is derived from those fields, so
the CLI, :func:`resolve`, the operator's guide (docs/operator.md) and docker-compose.yml are
all checked against one list.

Precedence, highest first: flags, environment, config file, defaults. An empty environment
variable counts as unset (so ``${VAR:-}`` in a compose file does not override the file).
Unknown config-file keys and values of the wrong type are errors (:class:`ConfigError`),
never silently ignored: a misspelt ``lsiten`` must not leave the server on the default port.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

from coalition_server import event_loop as event_loops
from coalition_server import logs

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path("coalition-data")
SQLITE_FILE = "coalition.db"
KEK_DIRECTORY = "keks"
CONFIG_ENV: Final = "COALITION_CONFIG"
ENV_PREFIX: Final = "COALITION_"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _meta(help: str, *, flag: str | None = None, env: str | None = None) -> dict[str, Any]:
    """A :class:`Settings` field's help text and, where not derived, its flag and env name.

    The flag defaults to the field name (``--max-batch``), the environment variable to
    ``COALITION_`` and the config key in upper case (``COALITION_MAX_BATCH``).
    """
    return {"help": help, "flag": flag, "env": env}


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to start."""

    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=_meta("HOST:PORT to serve gRPC on (port 0: any free port)."),
    )
    data_dir: Path = field(
        default=DEFAULT_DATA_DIR,
        metadata=_meta(
            "The server's signing keys (log.key, coalition.key) and the SQLite file live here."
        ),
    )
    db_url: str | None = field(
        default=None,
        metadata=_meta(
            "Database URL, sqlite:/// or postgresql://; default: SQLite in the data directory.",
            flag="--db",
            env="COALITION_DB_URL",
        ),
    )
    origin: str | None = field(
        default=None,
        metadata=_meta("The log's name in checkpoints; default: derived from the log key."),
    )
    tls_cert: Path | None = field(
        default=None, metadata=_meta("Server certificate chain (PEM); with --tls-key.")
    )
    tls_key: Path | None = field(
        default=None, metadata=_meta("Server private key (PEM); with --tls-cert.")
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata=_meta(
            "CA certificates (PEM) that sign clients' certificates: with it, mutual TLS, and "
            "a client without such a certificate is refused; needs --tls-cert and --tls-key."
        ),
    )
    max_batch: int = field(
        default=1024, metadata=_meta("Most appends sequenced in one batch (one checkpoint).")
    )
    auth_window_seconds: float = field(
        default=300.0,
        metadata=_meta("How far a signed call's timestamp may be from the server's clock."),
    )
    max_message_bytes: int = field(
        default=8 * 1024 * 1024, metadata=_meta("Largest gRPC message, in bytes.")
    )
    # The coalition's bargaining policy (YAML); None means the built-in defaults.
    policy_file: Path | None = field(
        default=None,
        metadata=_meta(
            "The coalition's bargaining policy (YAML); default: the built-in policy.",
            flag="--policy",
            env="COALITION_POLICY",
        ),
    )
    negotiation_sweep_seconds: float = field(
        default=5.0, metadata=_meta("How often negotiations past their deadline are terminated.")
    )
    follow_poll_seconds: float = field(
        default=0.5,
        metadata=_meta(
            "How long a feed (withdrawal notices, a negotiation's moves) waits for a commit "
            "before reading the log again. Commits of this process and, on PostgreSQL, "
            "announced commits of other replicas wake it at once; this bounds how late it "
            "sees one whose announcement was missed."
        ),
    )
    currency: str = field(
        default="USD", metadata=_meta("ISO 4217 currency of every price (integer micros).")
    )
    kek_dir: Path | None = field(
        default=None,
        metadata=_meta(
            "Key-encryption keys (shared by replicas, never backed up); default: DATA_DIR/keks."
        ),
    )
    kek_max_age: timedelta = field(
        default=timedelta(days=90),
        metadata=_meta(
            "Age at which a key-encryption key is rotated (retired, data keys re-wrapped)."
        ),
    )
    kek_retention: timedelta = field(
        default=timedelta(days=7),
        metadata=_meta("How long a retired key-encryption key is kept before destruction."),
    )
    retention_check_seconds: float = field(
        default=600.0,
        metadata=_meta("How often retired keys are emptied and, when due, destroyed."),
    )
    # SQLite (embedded default) is migrated on start; PostgreSQL needs `coalition-server migrate`.
    auto_migrate: bool | None = field(
        default=None,
        metadata=_meta("Migrate the database on start; default: only the embedded SQLite one."),
    )
    metrics_listen: str | None = field(
        default=None,
        metadata=_meta("HOST:PORT to serve Prometheus metrics on (/metrics); default: off."),
    )
    metrics_refresh_seconds: float = field(
        default=15.0,
        metadata=_meta(
            "How often the metrics read tree size and open withdrawal notices from the database."
        ),
    )
    log_level: str = field(
        default="INFO", metadata=_meta("Logging level: DEBUG, INFO, WARNING, ERROR, CRITICAL.")
    )
    log_format: str = field(
        default=logs.TEXT,
        metadata=_meta("Log lines as text (for a terminal) or json (one object per line)."),
    )
    event_loop: str = field(
        default=event_loops.AUTO,
        metadata=_meta(
            "The event loop: uvloop, asyncio (the standard library's) or auto (uvloop where "
            "installed)."
        ),
    )

    def database_url(self) -> str:
        """The database URL: the given one, or the SQLite file in the data directory."""
        # SQLAlchemy is imported where needed: `coalition-server health` runs every few
        # seconds in a container and has no use for it.
        from coalition_server.store.database import normalise_url, sqlite_url

        if self.db_url:
            return normalise_url(self.db_url).render_as_string(hide_password=False)
        return sqlite_url(str((self.data_dir / SQLITE_FILE).resolve())).render_as_string()

    def should_auto_migrate(self) -> bool:
        """Migrate on start: by default only for the embedded SQLite store."""
        from coalition_server.store.database import normalise_url

        if self.auto_migrate is not None:
            return self.auto_migrate
        return normalise_url(self.database_url()).get_backend_name() == "sqlite"

    def kek_directory(self) -> Path:
        """Where the file key provider keeps key-encryption keys."""
        return self.kek_dir if self.kek_dir is not None else self.data_dir / KEK_DIRECTORY


class ConfigError(ValueError):
    """A setting could not be read: unknown key, wrong type, bad value, unreadable file."""


Source = Literal["flag", "environment", "config file", "default"]


@dataclass(frozen=True)
class Option:
    """One setting as the outside world names it."""

    field: str
    flag: str
    env: str
    key: str
    kind: type
    optional: bool
    default: object
    help: str

    def describe_type(self) -> str:
        """The value's kind, as the docs and error messages name it."""
        return _TYPE_NAMES[self.kind]


_TYPE_NAMES: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    timedelta: "duration",
}


def _options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(Settings)
    options = []
    for f in dataclasses.fields(Settings):
        kind: Any = hints[f.name]
        optional = False
        if isinstance(kind, types.UnionType):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            assert len(args) == 1, f"setting {f.name}: one type, optionally None"
            kind, optional = args[0], True
        assert kind in _TYPE_NAMES, f"setting {f.name}: unsupported type {kind}"
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        key = flag.removeprefix("--").replace("-", "_")
        options.append(
            Option(
                field=f.name,
                flag=flag,
                env=f.metadata["env"] or ENV_PREFIX + key.upper(),
                key=key,
                kind=kind,
                optional=optional,
                default=f.default,
                help=f.metadata["help"],
            )
        )
    return tuple(options)


OPTIONS: Final[tuple[Option, ...]] = _options()
BY_FIELD: Final[Mapping[str, Option]] = {o.field: o for o in OPTIONS}
BY_KEY: Final[Mapping[str, Option]] = {o.key: o for o in OPTIONS}

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s`` or a plain number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 90d, 12h, 30m, 45s)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling that :func:`parse_duration` reads back."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _from_text(option: Option, text: str) -> object:
    """A value of ``option``'s type from a string (environment variable or flag)."""
    kind = option.kind
    try:
        if kind is str:
            return text
        if kind is Path:
            return Path(text)
        if kind is bool:
            word = text.strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, 1/0, on/off)")
        if kind is timedelta:
            return parse_duration(text)
        return kind(text.strip())
    except ValueError as exc:
        if kind in (int, float):
            raise ValueError(f"{text!r} is not {_article(option)}") from None
        raise ValueError(str(exc)) from None


def _article(option: Option) -> str:
    name = option.describe_type()
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _from_toml(option: Option, value: object, base: Path) -> object:
    """A value of ``option``'s type from a TOML value; relative paths are from ``base``."""
    kind = option.kind
    # bool is an int in Python; in a config file `max_batch = true` is a mistake.
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is Path and isinstance(value, str):
        return base / Path(value).expanduser()
    if kind is timedelta:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            return parse_duration(value)
    extra = ' (a number of seconds or e.g. "90d")' if kind is timedelta else ""
    raise ValueError(f"must be {_article(option)}{extra}, not {_toml_type(value)}")


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def read_config_file(path: Path) -> dict[str, object]:
    """The settings in a TOML file, by field name; :class:`ConfigError` for any mistake."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Relative paths in the file mean the same wherever the server is started from.
    base = path.resolve().parent
    values: dict[str, object] = {}
    for key, value in document.items():
        option = BY_KEY.get(key)
        if option is None:
            raise ConfigError(f"config file {path}: unknown setting {key!r}{_suggest(key)}")
        try:
            values[option.field] = _from_toml(option, value, base)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {key} {exc}") from None
    return values


def _suggest(key: str) -> str:
    # Likely slips: the field's name (db_url for db), the flag's or the variable's spelling.
    if key in BY_FIELD:
        return f" (did you mean {BY_FIELD[key].key!r}?)"
    plain = key.lower().removeprefix("coalition_").removeprefix("--").replace("-", "_")
    if plain in BY_KEY:
        return f" (did you mean {plain!r}?)"
    close = difflib.get_close_matches(key, BY_KEY, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known settings: {', '.join(sorted(BY_KEY))}"


def read_environment(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings given as ``COALITION_*`` environment variables, by field name."""
    values: dict[str, object] = {}
    for option in OPTIONS:
        text = environ.get(option.env, "")
        if not text:
            continue
        try:
            values[option.field] = _from_text(option, text)
        except ValueError as exc:
            raise ConfigError(f"environment variable {option.env}: {exc}") from None
    return values


@dataclass(frozen=True)
class Resolved:
    """Settings with where each value came from."""

    settings: Settings
    sources: Mapping[str, Source]
    config_file: Path | None


def resolve(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> Resolved:
    """Merge flags > environment > config file > defaults, then check the result.

    ``flags`` maps field names to the values given on the command line (absent or None: not
    given); a string for a non-string setting is parsed as the environment's would be.
    ``config_file`` is the ``--config`` flag; without it ``COALITION_CONFIG`` names the file.
    """
    unknown = set(flags) - set(BY_FIELD)
    assert not unknown, f"not settings: {unknown}"
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    layers: list[tuple[Source, Mapping[str, object]]] = [
        ("flag", _from_flags(flags)),
        ("environment", read_environment(environ)),
        ("config file", read_config_file(config_file) if config_file is not None else {}),
    ]
    values: dict[str, object] = {}
    sources: dict[str, Source] = {}
    for option in OPTIONS:
        for source, layer in layers:
            if option.field in layer:
                values[option.field] = layer[option.field]
                sources[option.field] = source
                break
        else:
            sources[option.field] = "default"
    settings = Settings(**values)  # type: ignore[arg-type]
    check(settings)
    return Resolved(settings, sources, config_file)


def _from_flags(flags: Mapping[str, object]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, value in flags.items():
        if value is None:
            continue
        option = BY_FIELD[name]
        if isinstance(value, str) and option.kind is not str:
            try:
                value = _from_text(option, value)
            except ValueError as exc:
                raise ConfigError(f"{option.flag}: {exc}") from None
        values[name] = value
    return values


def check(settings: Settings) -> None:
    """Values each of the right type can still be wrong together or alone: say which."""
    problems: list[str] = []
    for name in ("listen", "metrics_listen"):
        address = getattr(settings, name)
        if address is not None and not _is_address(address):
            problems.append(f"{_name(name)} must be HOST:PORT, not {address!r}")
    # Every number setting is a size, a count or an interval: positive and finite (TOML and
    # float() both read nan and inf).
    for option in OPTIONS:
        if option.kind in (int, float):
            number = getattr(settings, option.field)
            if not (math.isfinite(number) and number > 0):
                problems.append(f"{_name(option.field)} must be positive")
    if settings.kek_max_age <= timedelta(0):
        problems.append(f"{_name('kek_max_age')} must be positive")
    if settings.kek_retention < timedelta(0):
        problems.append(f"{_name('kek_retention')} must not be negative")
    if not re.fullmatch(r"[A-Z]{3}", settings.currency):
        problems.append(f"{_name('currency')} must be an ISO 4217 code such as USD")
    if settings.log_level.upper() not in LOG_LEVELS:
        problems.append(f"{_name('log_level')} must be one of {', '.join(LOG_LEVELS)}")
    if settings.log_format not in logs.FORMATS:
        problems.append(f"{_name('log_format')} must be one of {', '.join(logs.FORMATS)}")
    if settings.event_loop not in event_loops.CHOICES:
        problems.append(f"{_name('event_loop')} must be one of {', '.join(event_loops.CHOICES)}")
    elif settings.event_loop == event_loops.UVLOOP and not event_loops.uvloop_installed():
        problems.append(
            f"{_name('event_loop')} must be auto or asyncio here: uvloop is not installed"
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        problems.append("tls_cert and tls_key go together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        # Client certificates are part of the TLS handshake: no server TLS, no mutual TLS.
        problems.append(f"{_name('tls_client_ca')} needs tls_cert and tls_key (TLS) too")
    if settings.db_url:
        from coalition_server.store.database import normalise_url

        try:
            normalise_url(settings.db_url)
        except Exception as exc:
            problems.append(f"{_name('db_url')} is not a usable database URL ({exc})")
    if problems:
        raise ConfigError("; ".join(problems))


def _name(field: str) -> str:
    option = BY_FIELD[field]
    return f"{option.key} ({option.flag}, {option.env})"


def _is_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def render(resolved: Resolved) -> str:
    """The effective settings as a TOML config file, each line commented with its source.

    The database password is masked: the output is for reading and sharing, and a copy
    meant as a config file takes the URL from the environment instead.
    """
    lines = []
    if resolved.config_file is not None:
        lines.append(f"# config file: {resolved.config_file}")
    for option in OPTIONS:
        value = getattr(resolved.settings, option.field)
        source = resolved.sources[option.field]
        if value is None:
            lines.append(f"# {option.key} is unset ({source})")
            continue
        if option.field == "db_url":
            from sqlalchemy.engine import make_url

            value = make_url(str(value)).render_as_string(hide_password=True)
        lines.append(f"{option.key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        value = format_duration(value)
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_default(option: Option) -> str:
    """An option's default as the docs and ``--help`` show it."""
    default = option.default
    if default is None:
        return "unset"
    if isinstance(default, timedelta):
        return format_duration(default)
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def reference_table() -> str:
    """The Markdown table of every setting, as docs/operator.md carries it (a test checks)."""
    rows = [
        "| config key | flag | environment variable | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        flag = option.flag
        if option.kind is bool:
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        meaning = option.help.replace("|", "\\|")
        rows.append(
            f"| `{option.key}` | `{flag}` | `{option.env}` | {option.describe_type()} "
            f"| `{format_default(option)}` | {meaning} |"
        )
    return "\n".join(rows) + "\n"
