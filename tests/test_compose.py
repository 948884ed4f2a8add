"""The deployment files, checked without a Docker engine (none runs here).

docker-compose.yml, the Dockerfile, .dockerignore and deploy/nginx.conf are parsed and held to
what the server actually is: every command and health check names a real ``coalition-server``
subcommand and real flags, every ``COALITION_*`` variable is one the settings read, the
replicas are interchangeable, and the image's build context holds what ``pip wheel`` needs.
Where the ``docker compose`` CLI exists, it validates the file too (no daemon needed).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url

from coalition_server.cli import app
from coalition_server.config import CONFIG_ENV, OPTIONS

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = ("coalition-1", "coalition-2")
GRPC_PORT = "50051"
METRICS_PORT = "9464"
KNOWN_ENV = {o.env for o in OPTIONS} | {CONFIG_ENV}

Service = dict[str, Any]


# --- reading the files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


def interpolate(value: str) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` as with no .env file and a clean shell."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def words(value: Any) -> list[str]:
    """A compose command/test/entrypoint, list or string form, as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list)
    return [str(v) for v in value]


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def depends_on(service: Service) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in deps.items()}


def volumes(service: Service) -> dict[str, tuple[str, bool]]:
    """Mount target -> (source, read-only)."""
    found = {}
    for spec in service.get("volumes", []):
        parts = str(spec).split(":")
        source, target = parts[0], parts[1]
        found[target] = (source, len(parts) > 2 and "ro" in parts[2].split(","))
    return found


def coalition_commands(service: Service) -> list[list[str]]:
    """The ``coalition-server`` argument lists a service runs (entrypoint + command)."""
    entrypoint = words(service.get("entrypoint"))
    command = words(service.get("command"))
    if entrypoint[:1] == ["/bin/sh"] or entrypoint[:1] == ["sh"]:
        script = " ".join(command)
        return [
            shlex.split(step)[1:]
            for step in re.split(r"&&|;|\|\|", script)
            if step.strip().startswith("coalition-server")
        ]
    if entrypoint and entrypoint != ["coalition-server"]:
        return []
    return [command]  # the image's ENTRYPOINT is coalition-server


# --- the CLI the files must match --------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> Any:
    return typer.main.get_command(app)


def check_invocation(cli: Any, args: list[str]) -> str:
    """Check ``coalition-server ARGS`` names real options and a real subcommand; return it."""

    def options(command: Any) -> dict[str, bool]:
        found = {"--help": True}  # click's own, not among the params
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                found[opt] = bool(getattr(param, "is_flag", False))
        return found

    top = options(cli)
    subcommand = "serve"  # no subcommand serves
    rest = iter(args)
    for word in rest:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            assert name in top, f"coalition-server has no option {name}"
            if not top[name] and "=" not in word:
                next(rest)
            continue
        subcommand = word
        break
    assert subcommand in cli.commands, f"coalition-server has no subcommand {subcommand!r}"
    sub = options(cli.commands[subcommand])
    for word in rest:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            assert name in sub, f"coalition-server {subcommand} has no option {name}"
    return subcommand


def test_check_invocation_catches_mistakes(cli: Any) -> None:
    assert check_invocation(cli, ["--db", "x", "migrate"]) == "migrate"
    assert check_invocation(cli, ["--auto-migrate", "serve"]) == "serve"
    assert check_invocation(cli, []) == "serve"
    with pytest.raises(AssertionError, match="no subcommand 'migrat'"):
        check_invocation(cli, ["migrat"])
    with pytest.raises(AssertionError, match="no option --dbb"):
        check_invocation(cli, ["--dbb", "x", "migrate"])
    with pytest.raises(AssertionError, match="health has no option --tagret"):
        check_invocation(cli, ["health", "--tagret", "x"])


# --- services -------------------------------------------------------------------------------


def test_the_services(services: dict[str, Service]) -> None:
    assert set(services) == {"postgres", "migrate", *REPLICAS, "gateway"}


def test_postgres(compose: dict[str, Any], services: dict[str, Service]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(words(postgres["healthcheck"]["test"]))
    source, read_only = volumes(postgres)["/var/lib/postgresql/data"]
    assert source in compose["volumes"]
    assert not read_only


def test_every_long_running_service_has_a_health_check(services: dict[str, Service]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert not check.get("disable"), f"{name}'s health check is disabled"
        assert words(check["test"])[0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval"), name
        assert check.get("retries"), name


def test_start_order(services: dict[str, Service]) -> None:
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    for name in REPLICAS:
        assert depends_on(services[name]) == {
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert depends_on(services["gateway"]) == dict.fromkeys(REPLICAS, "service_healthy")
    assert services["migrate"]["restart"] == "no"


def test_the_replicas_are_interchangeable(services: dict[str, Service]) -> None:
    first, second = (services[name] for name in REPLICAS)
    assert first == second  # image, command, environment, volumes, health: all of it
    assert first["image"] == services["migrate"]["image"]
    assert first["build"] == services["migrate"]["build"]
    assert first["build"]["context"] == "."
    assert (ROOT / first["build"].get("dockerfile", "Dockerfile")).is_file()
    # Only the gateway is published: clients have one address.
    for name in REPLICAS:
        assert "ports" not in services[name], name
        assert {str(p) for p in services[name]["expose"]} == {GRPC_PORT, METRICS_PORT}


def test_the_environment_names_real_settings(services: dict[str, Service]) -> None:
    for name in ("migrate", *REPLICAS):
        env = environment(services[name])
        assert env, name
        unknown = {k for k in env if k.startswith("COALITION_")} - KNOWN_ENV
        assert not unknown, f"{name}: config.py reads no {sorted(unknown)}"
    # The migrate step and the replicas see the same database, origin and directories.
    assert environment(services["migrate"]) == environment(services[REPLICAS[0]])


def test_the_database_url_points_at_the_postgres_service(services: dict[str, Service]) -> None:
    postgres = environment(services["postgres"])
    for name in ("migrate", *REPLICAS):
        url = make_url(environment(services[name])["COALITION_DB_URL"])
        assert url.get_backend_name() == "postgresql"
        assert (url.host, url.port) == ("postgres", 5432)
        assert url.username == postgres["POSTGRES_USER"]
        assert url.password == postgres["POSTGRES_PASSWORD"]
        assert url.database == postgres["POSTGRES_DB"]
    # Both fall back to the same password when POSTGRES_PASSWORD is not set.
    raw = (ROOT / "docker-compose.yml").read_text()
    assert set(re.findall(r"\$\{POSTGRES_PASSWORD:-([^}]*)\}", raw)) == {"coalition"}


def test_commands_name_real_subcommands_and_flags(services: dict[str, Service], cli: Any) -> None:
    migrate_steps = [check_invocation(cli, a) for a in coalition_commands(services["migrate"])]
    # Keys first: the replicas mount them read-only and must never make their own.
    assert migrate_steps == ["init-keys", "migrate"]
    for name in REPLICAS:
        (args,) = coalition_commands(services[name])
        assert check_invocation(cli, args) == "serve"
        assert args[args.index("--metrics-listen") + 1] == f"0.0.0.0:{METRICS_PORT}"
        test = words(services[name]["healthcheck"]["test"])
        assert test[:3] == ["CMD", "coalition-server", "health"]
        assert check_invocation(cli, test[2:]) == "health"
        listen = environment(services[name])["COALITION_LISTEN"]
        assert listen == f"0.0.0.0:{GRPC_PORT}"
        assert test[test.index("--target") + 1] == f"127.0.0.1:{GRPC_PORT}"


def test_both_replicas_use_one_set_of_keys(
    compose: dict[str, Any], services: dict[str, Service]
) -> None:
    top = set(compose["volumes"])
    migrate_env = environment(services["migrate"])
    keys_source, read_only = volumes(services["migrate"])[migrate_env["COALITION_DATA_DIR"]]
    assert keys_source in top
    assert not read_only  # init-keys writes them here
    for name in REPLICAS:
        env = environment(services[name])
        mounts = volumes(services[name])
        # The signing keys: the ones migrate made, read-only.
        assert mounts[env["COALITION_DATA_DIR"]] == (keys_source, True), name
        # Key-encryption keys: shared and writable (either replica creates and destroys).
        kek_source, kek_read_only = mounts[env["COALITION_KEK_DIR"]]
        assert kek_source in top, name
        assert kek_source != keys_source, name
        assert not kek_read_only, name


# --- the gateway ----------------------------------------------------------------------------


def nginx_conf() -> str:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_the_gateway_is_the_one_address(services: dict[str, Service]) -> None:
    gateway = services["gateway"]
    assert str(gateway["image"]).startswith("nginx:")
    assert [str(p) for p in gateway["ports"]] == [f"{GRPC_PORT}:{GRPC_PORT}"]
    source, read_only = volumes(gateway)["/etc/nginx/nginx.conf"]
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx.conf"
    assert read_only
    test = words(gateway["healthcheck"]["test"])
    conf = nginx_conf()
    # The probe asks the gateway's own status server, on a port nginx.conf listens on.
    health_url = urlsplit(next(w for w in test if w.startswith("http://")))
    assert re.search(rf"listen\s+{re.escape(health_url.netloc)};", conf)
    assert re.search(rf"location\s*=\s*{re.escape(health_url.path)}\s*\{{", conf)


def test_the_gateway_balances_over_both_replicas() -> None:
    conf = nginx_conf()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream is not None
    name, body = upstream.groups()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", body, re.M)
    assert sorted(servers) == [(replica, GRPC_PORT) for replica in REPLICAS]
    assert re.search(rf"grpc_pass\s+grpc://{name};", conf)
    assert re.search(rf"listen\s+{GRPC_PORT};", conf)
    assert re.search(r"http2\s+on;", conf)  # gRPC is HTTP/2


# --- the image ------------------------------------------------------------------------------


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [line[len(name) :].strip() for line in dockerfile() if line.startswith(name + " ")]


def test_the_image(cli: Any) -> None:
    assert all(base.startswith("python:3.11-slim") for base in instruction("FROM"))
    users = instruction("USER")
    assert users, "the image runs as root"
    assert users[-1] not in ("root", "0"), users
    assert set(" ".join(instruction("EXPOSE")).split()) == {GRPC_PORT, METRICS_PORT}
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    assert json.loads(entrypoint) == ["coalition-server"]
    assert check_invocation(cli, json.loads(cmd)) == "serve"
    (health,) = instruction("HEALTHCHECK")
    probe = json.loads(health.split(" CMD ", 1)[1])
    assert probe[:2] == ["coalition-server", "health"]
    assert check_invocation(cli, probe[1:]) == "health"
    env_names = set(re.findall(r"(COALITION_\w+)=", " ".join(instruction("ENV"))))
    assert env_names
    assert env_names <= KNOWN_ENV, env_names - KNOWN_ENV
    # The probe finds the port from COALITION_LISTEN: it must be the exposed one.
    assert f"COALITION_LISTEN=0.0.0.0:{GRPC_PORT}" in " ".join(instruction("ENV"))


def dockerignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching rule wins)."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*", "\0").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace("\0/", "(?:.*/)?").replace("\0", ".*")
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(matches(pattern, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def build_context(root: Path) -> list[str]:
    lines = (root / ".dockerignore").read_text().splitlines()
    rules = [
        (line.startswith("!"), line.removeprefix("!").strip())
        for line in (raw.strip() for raw in lines)
        if line and not line.startswith("#")
    ]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        if rel_dir in (".git", ".venv", "node_modules") or "/node_modules" in rel_dir:
            dirnames.clear()
            continue
        for filename in filenames:
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            if not dockerignored(rel, rules):
                files.append(rel)
    return sorted(files)


def test_dockerignore_matching() -> None:
    rules = [(False, "*"), (True, "server/"), (False, "**/__pycache__")]
    assert dockerignored("README.md", rules)
    assert not dockerignored("server/x/y.py", rules)
    assert dockerignored("server/x/__pycache__/y.pyc", rules)


@pytest.mark.slow
def test_the_build_context_builds_the_wheel(tmp_path: Path) -> None:
    # What the Dockerfile's build stage does, on exactly the files Docker would send.
    files = build_context(ROOT)
    assert "pyproject.toml" in files
    assert not [f for f in files if f.startswith(("tests/", ".git/", "coalition-data/"))]
    assert not [f for f in files if fnmatch.fnmatch(f, "*.key") or "__pycache__" in f]
    for line in instruction("COPY"):
        if "--from" not in line:
            *sources, _ = line.split()
            for source in sources:
                assert any(f == source or f.startswith(source + "/") for f in files), source
    context = tmp_path / "context"
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(tmp_path / "wheels"), str(context)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheels").glob("coalition-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "coalition_server/cli.py" in names
    assert any(n.startswith("coalition_server/store/migrations/versions/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "coalition-server = coalition_server.cli:main" in (
        zipfile.ZipFile(wheel).read(entry_points).decode()
    )


# --- docker compose itself, where its CLI is installed -----------------------------------


def _compose_cli() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return "the docker CLI has no compose plugin (`docker compose version` failed)"
    return None


def test_docker_compose_accepts_the_file() -> None:
    reason = _compose_cli()
    if reason:
        pytest.skip(f"{reason}; the structure is checked by the tests above")
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- the operator's guide ---------------------------------------------------------------------


def test_the_operator_guide_shows_real_commands(cli: Any) -> None:
    guide = (ROOT / "docs" / "operator.md").read_text()
    shown = re.findall(r"`(coalition-server [^`]+)`", guide)
    shown += re.findall(r"^(coalition-server [^\n]+)$", guide, re.M)
    assert len(shown) >= 10
    for command in shown:
        check_invocation(cli, shlex.split(command.replace("...", "x"))[1:])
