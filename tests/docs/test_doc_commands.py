"""Every command shown in the docs runs, so the docs cannot rot.

The convention (each guide says it to its readers, under "Running the examples"):

* every fenced block tagged ``sh`` in README.md and docs/*.md is executable; output samples
  and anything else that must not run are fenced as ``text`` (formats, JSON and so on keep
  their own tags). Blocks tagged ``bash``, ``shell`` or ``console`` are refused: a command
  there would silently escape this test;
* a document's ``sh`` blocks run in order, as ONE bash script (``set -euo pipefail``), in a
  fresh directory, with ``coalition`` and ``coalition-server`` from this virtual environment
  first on PATH, ``COALITION_SERVER`` naming the test's server and a HOME of its own
  (nothing else: the reader's key is whatever the guide's own commands make and export).
  Ids are carried in shell variables that an earlier command of the same document sets
  (``AGREEMENT=$(coalition lab agreements --quiet)``), never placeholders; files a command
  reads are written by an earlier command (``cat > use.json <<'EOF'``);
* a few commands cannot run here (they serve forever, need Docker, or run the whole suite):
  they are listed in ``NOT_RUN`` with the reason, and the list must be exact (an entry that
  no longer appears in the docs fails the test);
* what a guide's story needs from the *other* parties (a lab striking a deal that covers the
  contributor's items, members voting, withdrawing, disputing) is done by ``world.py``, at
  points named in ``STAGE_DIRECTIONS`` (before a given command, or a comment line the
  reader sees, such as ``# Later, once the covered members have voted:``). A doc that is
  not a guide may need a set-up its examples assume (docs/norms.md: a joined member, a
  joined lab); that is a stage direction too. Every stage direction is printed in the
  script, and shown when it fails.

The documents run in ``ORDER`` against one server (SQLite, the policy in world.POLICY, the
pool seeded by world.seed): the contributor's, then the lab's, then the auditor's, who
audits what the others did. A failure names the file and line of the command, with the end
of the script's output.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.docs import world
from tests.docs.blocks import SHELL_TAGS, Command, fences, sh_blocks

ROOT: Final = Path(__file__).resolve().parents[2]
BIN: Final = Path(sys.executable).parent
"""The virtual environment's bin directory: ``coalition`` and ``coalition-server``."""
DOCS: Final = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))

ORDER: Final = (
    "docs/operator.md",
    "README.md",
    "docs/contributor.md",
    "docs/lab.md",
    "docs/auditor.md",
    "docs/norms.md",
    "docs/benchmarks.md",
)
"""The documents with ``sh`` blocks, in the order they run, one after the other (at the same
time they only compete for the CPU and the one SQLite writer: measured slower). The
auditor's guide comes after the contributor's and the lab's, to audit what they did."""

NOT_RUN: Final[dict[tuple[str, str], str]] = {
    ("README.md", "make serve"): (
        "serves until stopped; the test starts the same coalition-server itself"
    ),
    ("README.md", "make test"): "runs the whole suite, this test included",
    ("docs/operator.md", "docker compose up --build -d"): "needs a Docker engine",
    ("docs/operator.md", "coalition --server localhost:50051 audit checkpoint"): (
        "needs the compose stack's gateway on localhost:50051; the same command runs "
        "against the test's server in docs/auditor.md"
    ),
    ("docs/operator.md", "docker compose logs migrate"): "needs a Docker engine",
    ("docs/operator.md", "git pull && docker compose up --build -d"): (
        "needs a Docker engine (and would pull)"
    ),
    ("docs/operator.md", "coalition-server --config server.toml serve"): (
        "serves until stopped; the test's own server is started the same way"
    ),
    ("docs/benchmarks.md", "make bench"): "minutes at full scale",
    ("docs/benchmarks.md", 'make bench ARGS="--scale smoke --db sqlite"'): (
        "tests/test_bench_smoke.py runs the smoke scale"
    ),
    (
        "docs/benchmarks.md",
        ".venv/bin/python -m bench --only ingest,negotiation --db postgres --json results.json",
    ): "minutes at full scale, and needs PostgreSQL",
}
"""Commands shown in the docs that the test does not run, each with the reason."""


def _world(action: str, *args: str) -> str:
    return " ".join(
        [f"PYTHONPATH={shlex.quote(str(ROOT))}", "python -m tests.docs.world", action, *args]
    )


@dataclass(frozen=True)
class Stage:
    """What happens off the page: ``lines``, run just before the first command that starts
    with ``before`` (as a whole word), or the comment line that is ``before``."""

    before: str
    lines: tuple[str, ...]
    why: str

    def at(self, point: str) -> bool:
        """Whether ``point`` (a command's key, or a comment line) is where this happens."""
        if self.before.startswith("#"):
            return point == self.before
        return point == self.before or point.startswith(self.before + " ")


def _declaration_example() -> str:
    """docs/norms.md's declaration file (the JSON block under "The declaration file")."""
    path = ROOT / "docs" / "norms.md"
    heading = next(
        (
            number
            for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if text.strip() == "### The declaration file"
        ),
        None,
    )
    example = next((f for f in fences(path, "docs/norms.md") if f.line > (heading or 0)), None)
    if heading is None or example is None or example.info != "json":
        raise AssertionError("docs/norms.md: the declaration file example moved")
    return "\n".join(example.lines)


STAGE_DIRECTIONS: Final[dict[str, tuple[Stage, ...]]] = {
    "docs/contributor.md": (
        Stage(
            "coalition ratifications",
            (_world("lab-deal-awaiting-votes"),),
            "a lab strikes a deal that covers the poems; it goes to the covered members' "
            "vote, and some approve",
        ),
        Stage(
            "# Later, once the members' vote is over:",
            (_world("members-approve", '"$NEGOTIATION"'),),
            "the other covered members approve: the deal passes",
        ),
    ),
    "docs/lab.md": (
        Stage(
            "# Later, once the covered members have voted:",
            (_world("members-approve", '"$NEGOTIATION"'),),
            "the covered members approve the deal",
        ),
        Stage(
            "# Later, a member withdraws:",
            (_world("member-withdraws", '"$AGREEMENT"'),),
            "a member the agreement covers withdraws everything",
        ),
        Stage(
            "# Later, a member files a dispute:",
            (_world("member-disputes", '"$AGREEMENT"'),),
            "a member the agreement covers disputes it",
        ),
    ),
    "docs/norms.md": (
        Stage(
            "coalition consent grant",
            (
                "coalition keys new member.key",
                "export COALITION_KEY=member.key",
                'coalition join --role contributor --name "Norma"',
            ),
            "the example is a member's: a joined contributor",
        ),
        Stage(
            "coalition lab catalogue",
            (
                "coalition keys new lab.key",
                "export COALITION_KEY=lab.key",
                'coalition join --role lab --name "Norms Lab"',
                "cat > use.json <<'EOF'",
                _declaration_example(),
                "EOF",
            ),
            "the examples are a lab's: a joined lab, and the declaration file shown above them",
        ),
    ),
}

DOC_TIMEOUT: Final = 240.0
SERVER_START_TIMEOUT: Final = 60.0
TAIL_LINES: Final = 80
FAILED = re.compile(r"^::doc-failed line=(\d+) status=(\d+)$", re.MULTILINE)
LISTENING = re.compile(r"listening on (\S+):(\d+)")


# --- reading the docs -----------------------------------------------------------------------


def _commands(doc: str) -> list[Command]:
    return [c for b in sh_blocks(ROOT / doc, doc) for c in b.commands]


def _comment_lines(doc: str) -> list[str]:
    return [
        line.strip()
        for b in sh_blocks(ROOT / doc, doc)
        for line in b.lines
        if line.strip().startswith("#")
    ]


def test_every_sh_block_runs_or_is_listed_with_a_reason() -> None:
    """The convention holds: nothing escapes the run unseen."""
    problems = []
    for doc in DOCS:
        for fence in fences(ROOT / doc, doc):
            if fence.info in SHELL_TAGS:
                problems.append(
                    f"{doc}:{fence.line}: a `{fence.info}` block: tag it `sh` (it runs) or "
                    "`text` (an output sample)"
                )
        if _commands(doc) and doc not in ORDER:
            problems.append(f"{doc} has sh blocks: add it to ORDER in {Path(__file__).name}")
    for doc in ORDER:
        if not (ROOT / doc).exists():
            problems.append(f"ORDER names {doc}, which does not exist")
    for (doc, command), reason in NOT_RUN.items():
        if not reason.strip():
            problems.append(f"NOT_RUN: {doc}: {command!r} needs a reason")
        if doc in ORDER and command not in {c.key for c in _commands(doc)}:
            problems.append(f"NOT_RUN: {doc} no longer shows {command!r}: drop it from the list")
    for doc, stages in STAGE_DIRECTIONS.items():
        points = [c.key for c in _commands(doc)] + _comment_lines(doc)
        for stage in stages:
            if not any(stage.at(point) for point in points):
                problems.append(f"STAGE_DIRECTIONS: {doc} no longer shows {stage.before!r}")
    assert problems == [], "\n".join(problems)


# --- the script -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a line of the script comes from."""

    where: str
    command: str


@dataclass(frozen=True)
class Script:
    """A document's script and, for each of its lines, where it comes from."""

    text: str
    origins: dict[int, Origin]
    skipped: tuple[str, ...]


def build_script(doc: str) -> Script:
    """The document's sh blocks as one bash script, with the stage directions in place and
    the NOT_RUN commands replaced by a note."""
    lines: list[str] = []
    origins: dict[int, Origin] = {}
    skipped: list[str] = []
    stages = list(STAGE_DIRECTIONS.get(doc, ()))

    def emit(text: str, origin: Origin | None = None) -> None:
        for line in text.split("\n"):
            lines.append(line)
            if origin is not None:
                origins[len(lines)] = origin

    def stage_before(point: str) -> None:
        for stage in [s for s in stages if s.at(point)]:
            stages.remove(stage)
            origin = Origin(f"stage direction before {point!r} ({stage.why})", stage.why)
            emit(f"# --- off the page: {stage.why}", origin)
            emit("\n".join(stage.lines), origin)

    emit("set -euo pipefail")
    emit("trap 'status=$?; echo \"::doc-failed line=$LINENO status=$status\" >&2' ERR")
    emit("PS4='+ [${EPOCHREALTIME%????}] '")
    emit("set -x")
    for block in sh_blocks(ROOT / doc, doc):
        emit(f"# --- {doc}:{block.line}")
        by_line = {c.line: c for c in block.commands}
        number = block.first_body_line
        index = 0
        while index < len(block.lines):
            text = block.lines[index]
            command = by_line.get(number + index)
            if command is None:
                if text.strip().startswith("#"):
                    stage_before(text.strip())
                emit(text, Origin(f"{doc}:{number + index}", text))
                index += 1
                continue
            stage_before(command.key)
            origin = Origin(f"{doc}:{command.line}", command.text)
            reason = NOT_RUN.get((doc, command.key))
            if reason is not None:
                skipped.append(command.key)
                emit(f": not run: {shlex.quote(command.key)}: {shlex.quote(reason)}", origin)
            else:
                emit(command.text, origin)
            index += len(command.text.split("\n"))
    assert not stages, f"{doc}: stage directions never reached: {[s.before for s in stages]}"
    return Script("\n".join(lines) + "\n", origins, tuple(skipped))


# --- the server and the run -------------------------------------------------------------------


@dataclass
class Server:
    """The test's coalition-server process."""

    process: subprocess.Popen[str]
    target: str
    output: deque[str]


def _start_server(directory: Path) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "policy.yaml"
    policy.write_text(world.POLICY, encoding="utf-8")
    process = subprocess.Popen(
        [
            str(BIN / "coalition-server"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(directory / "data"),
            "--policy",
            str(policy),
            "--origin",
            "docs.coalition.test/log",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_clean_environment(), "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output: deque[str] = deque(maxlen=400)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = LISTENING.search(line)
        if match:
            threading.Thread(
                target=lambda: output.extend(process.stdout or ()), daemon=True
            ).start()
            return Server(process, f"127.0.0.1:{match.group(2)}", output)
    process.kill()
    process.wait()
    raise RuntimeError("coalition-server did not start:\n" + "".join(output))


def _clean_environment() -> dict[str, str]:
    """This process's environment without the reader's Coalition settings or terminal size."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("COALITION_") and name not in ("COLUMNS", "LINES")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Outcome:
    """How a document's script ended."""

    doc: str
    script: Script
    returncode: int
    output: str
    seconds: float
    directory: Path


class Docs:
    """Runs the documents in ORDER against one seeded server, each once, in order."""

    def __init__(self, server: Server, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.outcomes: dict[str, Outcome] = {}

    def outcome(self, doc: str) -> Outcome:
        """``doc``'s outcome, running it (and every document before it) first if need be."""
        for earlier in ORDER[: ORDER.index(doc) + 1]:
            if earlier not in self.outcomes:
                self.outcomes[earlier] = self._run(earlier)
        return self.outcomes[doc]

    def _run(self, doc: str) -> Outcome:
        name = doc.replace("/", "-").removesuffix(".md")
        work = self.directory / name
        home = self.directory / f"{name}-home"
        work.mkdir()
        home.mkdir()
        script = build_script(doc)
        path = self.directory / f"{name}.sh"
        path.write_text(script.text, encoding="utf-8")
        env = {
            **_clean_environment(),
            "COALITION_SERVER": self.server.target,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
        }
        started = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", str(path)],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=DOC_TIMEOUT,
            )
            returncode, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as exc:
            returncode = -1
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
            output += f"\n::doc-timeout after {DOC_TIMEOUT:.0f} s"
        (self.directory / f"{name}.log").write_text(output, encoding="utf-8")
        return Outcome(doc, script, returncode, output, time.monotonic() - started, work)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docs]:
    """A server on SQLite with the docs' policy, its pool seeded by world.seed."""
    directory = tmp_path_factory.mktemp("docs")
    server = _start_server(directory / "server")
    try:
        asyncio.run(world.seed(server.target))
        yield Docs(server, directory)
    finally:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _failure(outcome: Outcome, server: Server) -> str:
    """Where the script failed, the command, and the end of its output."""
    tail = "\n".join(outcome.output.rstrip("\n").split("\n")[-TAIL_LINES:])
    found = FAILED.findall(outcome.output)
    if found:
        line, status = found[-1]
        origin = outcome.script.origins.get(int(line))
        where = (
            f"{origin.where}: exit status {status}\n{origin.command}"
            if origin is not None
            else f"script line {line}"
        )
    else:
        where = f"the script ended with status {outcome.returncode}"
    log = outcome.directory.parent / f"{outcome.directory.name}.log"
    return (
        f"{outcome.doc}: a command failed at {where}\n"
        f"--- the last {TAIL_LINES} lines of output (all of it: {log}) ---\n{tail}\n"
        f"--- the server's last lines ---\n{''.join(list(server.output)[-20:])}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("doc", ORDER)
def test_the_docs_commands_run(docs: Docs, doc: str) -> None:
    """Every sh block of ``doc``, in order, as one script; every command succeeds."""
    outcome = docs.outcome(doc)
    if outcome.returncode != 0:
        pytest.fail(_failure(outcome, docs.server), pytrace=False)


# --- links ----------------------------------------------------------------------------------

GUIDES: Final = ("README.md", "docs/contributor.md", "docs/lab.md", "docs/auditor.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", GUIDES)
def test_the_guides_links_resolve(doc: str) -> None:
    """Every relative link of a guide names a file that exists, and a heading in it."""
    broken = []
    for target in LINK.findall((ROOT / doc).read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (ROOT / doc).parent / name if name else ROOT / doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert broken == [], f"{doc}: broken links {broken}"
