"""The benchmark runner's command line: what it hands every server under test."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import cli


@pytest.mark.parametrize(("argv", "loop"), [([], "auto"), (["--event-loop", "asyncio"], "asyncio")])
def test_every_server_under_test_gets_the_event_loop_asked_for(
    argv: list[str], loop: str, tmp_path: Path
) -> None:
    args = cli._parser().parse_args(argv)
    ctx = cli.context(args, tmp_path, "postgresql://unused")
    assert ctx.server_args == ("--event-loop", loop)


def test_an_unknown_event_loop_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli._parser().parse_args(["--event-loop", "trio"])
    assert exit_.value.code == 2
