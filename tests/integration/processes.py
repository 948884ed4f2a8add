"""Real `coalition-server` processes for multi-process and crash tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SERVER = [sys.executable, "-m", "coalition_server"]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class ServerProcess:
    """A server subprocess; ``target`` is its loopback address."""

    process: subprocess.Popen[str]
    target: str

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def migrate(db_url: str, data_dir: Path) -> None:
    """Run `coalition-server migrate` on the database."""
    subprocess.run(
        [*SERVER, "--db", db_url, "--data-dir", str(data_dir), "migrate"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_server(db_url: str, data_dir: Path, *, timeout: float = 30.0) -> ServerProcess:
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
            "WARNING",
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
            return ServerProcess(process, f"127.0.0.1:{match.group(2)}")
    process.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))
