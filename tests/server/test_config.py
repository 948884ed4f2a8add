"""Server settings: flags > environment > config file > defaults, and clear errors."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from coalition_server import cli, logs
from coalition_server import event_loop as event_loops
from coalition_server.config import (
    BY_FIELD,
    CONFIG_ENV,
    OPTIONS,
    ConfigError,
    Settings,
    check,
    format_duration,
    parse_duration,
    read_config_file,
    reference_table,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]
NO_ENV: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI (re)configures root logging; in-process that would unhook pytest's handlers.
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)
    # No setting leaks in from the developer's shell.
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run coalition-server in-process; exit code and stdout+stderr."""
    result = CliRunner().invoke(cli.app, args, env=env or {})
    return result.exit_code, result.output


# --- one list of settings, named the same everywhere --------------------------------------


def test_every_field_is_an_option_with_unique_names() -> None:
    assert [o.field for o in OPTIONS] == [f.name for f in dataclasses.fields(Settings)]
    for attribute in ("flag", "env", "key"):
        names = [getattr(o, attribute) for o in OPTIONS]
        assert len(names) == len(set(names)), attribute
    for option in OPTIONS:
        assert option.env.startswith("COALITION_")
        assert option.flag == "--" + option.key.replace("_", "-")
    # The names operators already use keep working.
    assert BY_FIELD["db_url"].env == "COALITION_DB_URL"
    assert BY_FIELD["db_url"].key == "db"
    assert BY_FIELD["policy_file"].flag == "--policy"


def test_the_cli_has_a_flag_for_every_setting() -> None:
    command = typer.main.get_command(cli.app)
    params = {p.name: p for p in command.params}
    # The callback hands ctx.params to resolve(): its parameter names are the field names.
    assert set(params) == set(BY_FIELD) | {"config"}
    for option in OPTIONS:
        assert option.flag in params[option.field].opts, option
        assert option.env in (getattr(params[option.field], "help", None) or ""), option


def test_the_operator_guide_documents_every_setting() -> None:
    guide = (ROOT / "docs" / "operator.md").read_text()
    table = reference_table()
    assert table in guide, (
        "docs/operator.md's settings table is out of date; replace it with:\n\n" + table
    )
    for option in OPTIONS:
        assert f"`{option.env}`" in guide, option
        assert f"`{option.key}`" in guide, option


# --- precedence ----------------------------------------------------------------------------


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path / "server.toml",
        'listen = "127.0.0.1:7001"\nmax_batch = 10\ncurrency = "EUR"\nlog_level = "DEBUG"\n',
    )
    env = {"COALITION_MAX_BATCH": "20", "COALITION_CURRENCY": "GBP"}
    resolved = resolve({"currency": "CHF"}, env, config)
    settings = resolved.settings
    assert settings.currency == "CHF"  # flag over environment and file
    assert settings.max_batch == 20  # environment over file
    assert settings.listen == "127.0.0.1:7001"  # file over default
    assert settings.log_level == "DEBUG"
    assert settings.auth_window_seconds == Settings().auth_window_seconds  # default
    assert resolved.sources["currency"] == "flag"
    assert resolved.sources["max_batch"] == "environment"
    assert resolved.sources["listen"] == "config file"
    assert resolved.sources["auth_window_seconds"] == "default"


def test_precedence_end_to_end_through_the_cli(tmp_path: Path) -> None:
    config = write(
        tmp_path / "server.toml",
        'listen = "127.0.0.1:7001"\nmax_batch = 10\ncurrency = "EUR"\nkek_max_age = "30d"\n',
    )
    code, output = invoke(
        ["--config", str(config), "--currency", "CHF", "show-config"],
        env={"COALITION_MAX_BATCH": "20", "COALITION_CURRENCY": "GBP"},
    )
    assert code == 0, output
    shown = tomllib.loads(output)  # show-config prints a usable TOML file
    assert shown["currency"] == "CHF"
    assert shown["max_batch"] == 20
    assert shown["listen"] == "127.0.0.1:7001"
    assert shown["kek_max_age"] == "30d"
    assert shown["kek_retention"] == "7d"
    assert 'currency = "CHF"  # flag' in output
    assert "max_batch = 20  # environment" in output
    assert 'listen = "127.0.0.1:7001"  # config file' in output
    assert 'currency = "USD"' not in output


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    by_env = write(tmp_path / "env.toml", "max_batch = 5\n")
    by_flag = write(tmp_path / "flag.toml", "max_batch = 6\n")
    assert resolve({}, {CONFIG_ENV: str(by_env)}).settings.max_batch == 5
    assert resolve({}, {CONFIG_ENV: str(by_env)}, by_flag).settings.max_batch == 6


def test_an_empty_variable_is_unset(tmp_path: Path) -> None:
    config = write(tmp_path / "server.toml", 'origin = "file.example/log"\n')
    env = {"COALITION_ORIGIN": "", "COALITION_MAX_BATCH": ""}
    settings = resolve({}, env, config).settings
    assert settings.origin == "file.example/log"
    assert settings.max_batch == 1024


def test_environment_values_are_typed() -> None:
    env = {
        "COALITION_MAX_BATCH": "64",
        "COALITION_AUTH_WINDOW_SECONDS": "12.5",
        "COALITION_AUTO_MIGRATE": "no",
        "COALITION_KEK_RETENTION": "36h",
        "COALITION_POLICY": "policy.yaml",
    }
    settings = resolve({}, env).settings
    assert settings.max_batch == 64
    assert settings.auth_window_seconds == 12.5
    assert settings.auto_migrate is False
    assert settings.kek_retention == timedelta(hours=36)
    assert settings.policy_file == Path("policy.yaml")


def test_relative_paths_in_the_file_are_from_its_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = write(
        tmp_path / "etc" / "server.toml", 'data_dir = "state"\npolicy = "/abs/policy.yaml"\n'
    )
    settings = resolve({}, NO_ENV, config).settings
    assert settings.data_dir == (tmp_path / "etc" / "state").resolve()
    assert settings.policy_file == Path("/abs/policy.yaml")
    # Given as a flag, a relative path is the caller's, as for any command.
    assert resolve({"data_dir": Path("here")}, NO_ENV, config).settings.data_dir == Path("here")


def test_durations() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("1.5m") == timedelta(seconds=90)
    assert parse_duration("45") == timedelta(seconds=45)
    for text in ("", "d", "5 weeks", "-3d"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(text)
    for value in (timedelta(days=7), timedelta(hours=5), timedelta(seconds=90), timedelta(0)):
        assert parse_duration(format_duration(value)) == value
    assert format_duration(timedelta(seconds=1.5)) == "1.5s"


def test_every_file_type_is_accepted(tmp_path: Path) -> None:
    config = write(
        tmp_path / "server.toml",
        "auth_window_seconds = 30\n"  # an integer where a number is expected is fine
        "auto_migrate = true\n"
        "kek_max_age = 3600\n"  # seconds
        'kek_retention = "2d"\n',
    )
    values = read_config_file(config)
    assert values == {
        "auth_window_seconds": 30.0,
        "auto_migrate": True,
        "kek_max_age": timedelta(hours=1),
        "kek_retention": timedelta(days=2),
    }


def test_the_example_config_file_is_valid() -> None:
    example = ROOT / "deploy" / "coalition.example.toml"
    values = read_config_file(example)
    assert values["listen"] == "0.0.0.0:50051"
    check(dataclasses.replace(Settings(), **values))  # type: ignore[arg-type]


# --- errors: exit code 2 and a message that says what to fix -------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lsiten = "0.0.0.0:1"\n', "unknown setting 'lsiten' (did you mean 'listen'?)"),
        ('db_url = "sqlite:///x"\n', "unknown setting 'db_url' (did you mean 'db'?)"),
        ('data-dir = "x"\n', "unknown setting 'data-dir' (did you mean 'data_dir'?)"),
        ('COALITION_ORIGIN = "x"\n', "(did you mean 'origin'?)"),
        ("zzz = 1\n", "unknown setting 'zzz'; known settings: auth_window_seconds"),
        ('max_batch = "big"\n', "max_batch must be an integer, not a string"),
        ("max_batch = true\n", "max_batch must be an integer, not a boolean"),
        ("listen = 50051\n", "listen must be a string, not an integer"),
        ('auto_migrate = "yes"\n', "auto_migrate must be a boolean, not a string"),
        ("kek_max_age = [1]\n", "kek_max_age must be a duration"),
        ('kek_max_age = "soon"\n', "'soon' is not a duration"),
        ("[server]\nlisten = 1\n", "unknown setting 'server'"),
        ("listen = \n", "is not valid TOML"),
    ],
)
def test_config_file_mistakes_are_errors(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "server.toml", text)
    with pytest.raises(ConfigError, match="config file"):
        resolve({}, NO_ENV, config)
    code, output = invoke(["--config", str(config), "show-config"])
    assert code == 2, output
    assert message in output
    assert str(config) in output


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    code, output = invoke(["show-config"], env={CONFIG_ENV: str(tmp_path / "nope.toml")})
    assert code == 2
    assert "nope.toml does not exist" in output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COALITION_MAX_BATCH": "lots"}, "COALITION_MAX_BATCH: 'lots' is not an integer"),
        ({"COALITION_AUTO_MIGRATE": "maybe"}, "COALITION_AUTO_MIGRATE: 'maybe' is not a boolean"),
        ({"COALITION_KEK_MAX_AGE": "1y"}, "COALITION_KEK_MAX_AGE: '1y' is not a duration"),
    ],
)
def test_environment_mistakes_are_errors(env: dict[str, str], message: str) -> None:
    code, output = invoke(["show-config"], env=env)
    assert code == 2
    assert message in output


def test_a_bad_duration_flag_is_an_error() -> None:
    code, output = invoke(["--kek-retention", "a week", "show-config"])
    assert code == 2
    assert "--kek-retention: 'a week' is not a duration" in output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"listen": "50051"}, "listen (--listen, COALITION_LISTEN) must be HOST:PORT"),
        ({"metrics_listen": "0.0.0.0:http"}, "metrics_listen"),
        ({"max_batch": 0}, "max_batch (--max-batch, COALITION_MAX_BATCH) must be positive"),
        ({"retention_check_seconds": -1.0}, "retention_check_seconds"),
        ({"auth_window_seconds": float("nan")}, "auth_window_seconds"),
        ({"metrics_refresh_seconds": float("inf")}, "metrics_refresh_seconds"),
        ({"kek_retention": timedelta(seconds=-1)}, "kek_retention"),
        ({"kek_max_age": timedelta(0)}, "kek_max_age"),
        ({"currency": "euro"}, "ISO 4217"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"log_format": "xml"}, "log_format"),
        ({"event_loop": "trio"}, "event_loop (--event-loop, COALITION_EVENT_LOOP) must be one of"),
        ({"tls_cert": Path("cert.pem")}, "tls_cert and tls_key go together"),
        ({"db_url": "mysql://x/y"}, "not a usable database URL"),
    ],
)
def test_values_are_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"must|together|usable") as info:
        check(dataclasses.replace(Settings(), **change))  # type: ignore[arg-type]
    assert message in str(info.value)


def test_the_defaults_pass_the_checks_and_keep_their_values() -> None:
    settings = resolve({}, NO_ENV).settings
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.kek_directory() == Path("coalition-data") / "keks"
    assert dataclasses.replace(settings, kek_dir=Path("/k")).kek_directory() == Path("/k")
    assert settings.should_auto_migrate()  # SQLite
    assert not dataclasses.replace(settings, db_url="postgresql://h/d").should_auto_migrate()


def test_show_config_masks_the_database_password() -> None:
    code, output = invoke(
        ["--db", "postgresql://coalition:s3cret@db:5432/coalition", "show-config"]
    )
    assert code == 0, output
    assert "s3cret" not in output
    assert 'db = "postgresql://coalition:***@db:5432/coalition"  # flag' in output


def test_uvloop_asked_for_where_it_is_not_installed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loops, "uvloop_installed", lambda: False)
    with pytest.raises(ConfigError, match="must be auto or asyncio here: uvloop is not installed"):
        check(dataclasses.replace(Settings(), event_loop="uvloop"))
    check(dataclasses.replace(Settings(), event_loop="auto"))  # auto falls back to asyncio
