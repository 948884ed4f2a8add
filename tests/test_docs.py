"""The docs stay true to the code: every error reason the server can send is documented."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAISED = re.compile(
    r"(?:InvalidArgument|Unauthenticated|PermissionDenied|NotFound|AlreadyExists"
    r"|FailedPrecondition|ResourceExhausted|Unavailable)Error\(\s*\"([A-Z_]+)\""
)
# Raised only between the server's own components, never sent to a client.
INTERNAL = {"NOT_CLOSED", "NOT_EXPIRED"}


def test_every_error_reason_is_documented() -> None:
    documented = (ROOT / "docs" / "protocol.md").read_text()
    raised = {
        reason
        for path in (ROOT / "server" / "coalition_server").rglob("*.py")
        for reason in RAISED.findall(path.read_text())
    }
    assert len(raised) > 50  # the pattern still finds the server's errors
    missing = sorted(r for r in raised - INTERNAL if f"`{r}`" not in documented)
    assert missing == [], f"document these reasons in docs/protocol.md: {missing}"


def test_the_threat_model_cites_tests_that_exist() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(cited) > 20  # the pattern still finds the citations
    missing = []
    for path, name in cited:
        source = ROOT / path
        if not source.exists() or not re.search(
            rf"^(?:async )?def {name}\(", source.read_text(), re.MULTILINE
        ):
            missing.append(f"{path}::{name}")
    assert missing == [], f"docs/threat-model.md cites tests that do not exist: {missing}"
