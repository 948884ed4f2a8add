"""Real `coalition-server` processes for multi-process and crash tests."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER = [sys.executable, "-m", "coalition_server"]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
OUTPUT_LINES = 400
"""How many of a server's last output lines are kept (shown when a test fails)."""


@dataclass
class ServerProcess:
    """A server subprocess; ``target`` is its loopback address.

    Its output is drained by a thread into ``output`` (the last lines only): a server that
    logs a lot (a database outage) must never block on a full pipe.
    """

    process: subprocess.Popen[str]
    target: str
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=OUTPUT_LINES)
    )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, no warning and no cleanup (a crash), and reap the process."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the server wrote (for failure messages)."""
        return "".join(list(self.output)[-lines:])


def migrate(db_url: str, data_dir: Path) -> None:
    """Run `coalition-server migrate` on the database."""
    subprocess.run(
        [*SERVER, "--db", db_url, "--data-dir", str(data_dir), "migrate"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_server(
    db_url: str,
    data_dir: Path,
    *,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
    log_level: str = "WARNING",
) -> ServerProcess:
    """Start a server on 127.0.0.1 port 0 and wait until it reports its port."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            *SERVER,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--db",
            db_url,
            "--origin",
            "coalition.test/log",
            "--log-level",
            log_level,
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = _LISTENING.search(line)
        if match:
            server = ServerProcess(process, f"127.0.0.1:{match.group(2)}")
            server.output.extend(lines)
            threading.Thread(
                target=_drain, args=(process, server.output), daemon=True, name="server-output"
            ).start()
            return server
    process.kill()
    process.wait()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], output: collections.deque[str]) -> None:
    """Keep reading the server's output until it exits (EOF), remembering the last lines."""
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
