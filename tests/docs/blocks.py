"""Reading the docs' shell examples: fenced ``sh`` blocks, split into commands.

A *command* is one logical line of a block: lines ending in a backslash are joined with the
next, and a heredoc (``cat > f <<'EOF'`` ... ``EOF``) belongs to the command that opens it.
Comment lines and blank lines are kept (they are part of what the reader sees) but are not
commands. Each command remembers where it is in its file, so a failure can point there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

RUN_TAG: Final = "sh"
"""The info string of a block that runs."""
SHELL_TAGS: Final = frozenset({"bash", "shell", "console", "zsh", "shell-session", "shellsession"})
"""Tags that would hide commands from the test: the docs use ``sh`` or ``text`` instead."""

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)\1")
_COMMENT = re.compile(r"\s+#\s.*$")


@dataclass(frozen=True)
class Command:
    """One logical command of a block, as written, and the line of the file it starts on.

    ``head`` is the command line itself (continuation lines included); ``text`` adds the
    body of any heredoc it opens.
    """

    doc: str
    line: int
    head: str
    text: str

    @property
    def key(self) -> str:
        """The command on one line: continuations joined, a trailing ``# comment`` and
        runs of spaces dropped. This is how the allow-list and stage directions name it."""
        joined = " ".join(part.strip().removesuffix("\\").strip() for part in self.head.split("\n"))
        match = _COMMENT.search(joined)
        if match and _balanced(joined[: match.start()]):
            joined = joined[: match.start()]
        return " ".join(joined.split())


def _balanced(text: str) -> bool:
    return text.count("'") % 2 == 0 and text.count('"') % 2 == 0


@dataclass(frozen=True)
class Block:
    """A fenced ``sh`` block: its lines as written, and the commands among them."""

    doc: str
    line: int
    """The line of the opening fence."""
    lines: tuple[str, ...]
    commands: tuple[Command, ...] = field(default=())

    @property
    def first_body_line(self) -> int:
        """The file's line number of the block's first line."""
        return self.line + 1


@dataclass(frozen=True)
class Fence:
    """Any fenced block: its tag and where it starts (for the checks on tags)."""

    doc: str
    line: int
    info: str
    lines: tuple[str, ...]


def fences(path: Path, name: str) -> list[Fence]:
    """Every fenced block of a Markdown file, in order."""
    out: list[Fence] = []
    opened: tuple[str, int, str] | None = None
    body: list[str] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(text)
        if opened is None:
            if match:
                opened = (match.group("fence"), number, match.group("info").lower())
                body = []
            continue
        fence, start, info = opened
        if match and match.group("fence").startswith(fence) and not match.group("info"):
            out.append(Fence(name, start, info, tuple(body)))
            opened = None
            continue
        body.append(text)
    if opened is not None:
        raise ValueError(f"{name}:{opened[1]}: a fenced block is never closed")
    return out


def commands_of(doc: str, first_line: int, lines: tuple[str, ...]) -> tuple[Command, ...]:
    """The logical commands among a block's lines (``first_line``: the file's line number
    of ``lines[0]``)."""
    out: list[Command] = []
    index = 0
    while index < len(lines):
        text = lines[index]
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start = index
        parts = [text]
        while parts[-1].rstrip().endswith("\\") and index + 1 < len(lines):
            index += 1
            parts.append(lines[index])
        head = "\n".join(parts)
        terminators = [m.group("word") for part in parts for m in _HEREDOC.finditer(part)]
        for word in terminators:
            while index + 1 < len(lines):
                index += 1
                parts.append(lines[index])
                if lines[index].strip() == word:
                    break
            else:
                raise ValueError(f"{doc}:{first_line + start}: heredoc {word} is never closed")
        out.append(Command(doc, first_line + start, head, "\n".join(parts)))
        index += 1
    return tuple(out)


def sh_blocks(path: Path, name: str) -> list[Block]:
    """The file's ``sh`` blocks, each with its commands."""
    return [
        Block(f.doc, f.line, f.lines, commands_of(f.doc, f.line + 1, f.lines))
        for f in fences(path, name)
        if f.info == RUN_TAG
    ]
