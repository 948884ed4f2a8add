"""``coalition norms``: the norm vocabulary members attach to consent, and its ODRL profile.

Everything here is local: the vocabulary ships with the package (``coalition/data``), so no
server or key is needed. ``list`` shows every norm with its parameters, the enduring values
and the stances; ``show`` one norm in full, with the ``--norm`` syntax of ``consent grant``;
``profile`` prints the vocabulary as an ODRL 2.2 profile document (JSON-LD).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.table import Table

from coalition import norms
from coalition.cli.common import EXIT_UNUSABLE, JsonOpt, console, fail, note, print_json
from coalition.norms import NormError, NormSpec, ParameterSpec, Vocabulary

app = typer.Typer(
    no_args_is_help=True,
    help="The norm vocabulary: what members may require of a deal beyond price.",
)

STANCES: Final = (
    {
        "id": "hard",
        "premium": False,
        "description": "Never waived: a deal whose use declaration breaks it never covers "
        "the items, whatever the price.",
    },
    {
        "id": "priced",
        "premium": True,
        "description": "Waived for a premium: a deal that breaks it pays the member's floor "
        "plus premium=AMOUNT per item (in the coalition's currency).",
    },
)
VersionOpt = Annotated[str, typer.Option("--vocabulary", help="The vocabulary's version.")]


def _vocabulary(version: str) -> Vocabulary:
    try:
        return Vocabulary.load(version)
    except NormError as exc:
        fail(exc.message, EXIT_UNUSABLE)


def parameter_json(spec: ParameterSpec) -> dict[str, Any]:
    """A parameter's type and the values it takes, for ``--json``."""
    out: dict[str, Any] = {
        "name": spec.name,
        "type": spec.type,
        "required": spec.required,
        "description": spec.description,
    }
    if spec.allowed is not None:
        out["allowed"] = list(spec.allowed)
        if spec.allowed_descriptions:
            out["allowed_descriptions"] = dict(spec.allowed_descriptions)
    if spec.allowed_flags is not None:
        out["allowed"] = list(spec.allowed_flags)
    if spec.pattern is not None:
        out["pattern"] = spec.pattern.pattern
    # Duration bounds are seconds: say so in the name.
    unit = "_seconds" if spec.type == "duration" else ""
    for key in ("minimum", "maximum"):
        if getattr(spec, key) is not None:
            out[key + unit] = getattr(spec, key)
    for key in ("max_length", "max_items", "hierarchy"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    return out


def norm_json(spec: NormSpec, vocabulary: Vocabulary) -> dict[str, Any]:
    """One norm of the vocabulary, for ``--json``."""
    return {
        "id": spec.id,
        "title": spec.title,
        "description": spec.description,
        "parameters": [parameter_json(p) for p in spec.parameters],
        "min_parameters": spec.min_parameters,
        "repeatable": spec.disjoint_on is not None,
        "disjoint_on": spec.disjoint_on,
        "judged_against": list(spec.judged_against),
        "breach": spec.breach,
        "iri": vocabulary.expand_iri(vocabulary.norm_iri.format(spec.id)),
    }


def _values_text(spec: ParameterSpec) -> str:
    """What a parameter takes, briefly: ``closed | open-weights``, a pattern, ``1..10000``."""
    if spec.allowed is not None:
        return " | ".join(spec.allowed)
    if spec.allowed_flags is not None:
        return " | ".join(str(f).lower() for f in spec.allowed_flags)
    if spec.pattern is not None:
        return spec.pattern.pattern
    if spec.type == "duration":
        return f"{_duration_text(spec.minimum or 0)}..{_duration_text(spec.maximum or 0)}"
    if spec.minimum is not None or spec.maximum is not None:
        return f"{'' if spec.minimum is None else spec.minimum}..{spec.maximum or ''}"
    return ""


def _duration_text(seconds: int) -> str:
    """Seconds in the largest unit that divides them, as ``--norm`` takes durations."""
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parameter_text(spec: ParameterSpec) -> str:
    optional = "" if spec.required else "?"
    values = _values_text(spec)
    return f"{spec.name}{optional}: {spec.type}" + (f" ({values})" if values else "")


def _cell(text: str) -> str:
    # Patterns such as [a-z0-9]+ would otherwise be read as rich markup and vanish.
    return escape(text)


# Sample values of parameters whose values are codes (a pattern, not a closed list).
_SAMPLES: Final = {"isco08": "2166", "allowed": "DE", "fund": "open-knowledge"}


def _example(spec: NormSpec) -> str:
    """A --norm option for this norm (hard), with each required parameter's first value."""
    parts = [spec.id, "hard"]
    chosen = [p for p in spec.parameters if p.required] or spec.parameters[: spec.min_parameters]
    for parameter in chosen:
        if parameter.allowed:
            value = parameter.allowed[0]
        elif parameter.allowed_flags:
            value = str(parameter.allowed_flags[0]).lower()
        elif parameter.type == "duration":
            value = "90d"
        elif parameter.type == "number":
            value = str(parameter.minimum or 1)
        else:
            value = _SAMPLES.get(parameter.name, "VALUE")
        parts.append(f"{parameter.name}={value}")
    return ":".join(parts)


@app.command("list")
def list_norms(version: VersionOpt = norms.DEFAULT_VERSION, json_output: JsonOpt = False) -> None:
    """List the vocabulary: each norm with its parameters, the enduring values a norm may
    protect, and the stances (hard or priced).

    Attach norms to consent with `consent grant --norm ID:hard|priced:NAME=VALUE...`
    (see `norms show ID`).
    """
    vocab = _vocabulary(version)
    if json_output:
        print_json(
            {
                "version": vocab.version,
                "profile": vocab.profile,
                "norms": [norm_json(spec, vocab) for spec in vocab.norms.values()],
                "enduring_values": [
                    {"id": v.id, "title": v.title, "description": v.description}
                    for v in vocab.enduring_values.values()
                ],
                "stances": list(STANCES),
                "option_syntax": norms.NORM_OPTION_SYNTAX,
            }
        )
        return
    out = console()
    table = Table(title=f"{vocab.title} ({vocab.profile})")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("parameters (? optional)")
    table.add_column("repeatable")
    table.add_column("description")
    for spec in vocab.norms.values():
        table.add_row(
            spec.id,
            _cell("\n".join(_parameter_text(p) for p in spec.parameters)),
            f"yes, disjoint {spec.disjoint_on}" if spec.disjoint_on else "no",
            spec.description,
        )
    out.print(table)
    values = Table(title="enduring values (protects=ID)")
    values.add_column("id", style="bold")
    values.add_column("description")
    for value in vocab.enduring_values.values():
        values.add_row(value.id, value.description)
    out.print(values)
    stances = Table(title="stances")
    stances.add_column("stance", style="bold")
    stances.add_column("premium")
    stances.add_column("meaning")
    for stance in STANCES:
        stances.add_row(
            str(stance["id"]),
            "required" if stance["premium"] else "none",
            str(stance["description"]),
        )
    out.print(stances)
    out.print(f"--norm syntax: {norms.NORM_OPTION_SYNTAX}")


@app.command("show")
def show(
    norm_id: Annotated[str, typer.Argument(metavar="ID", help="The norm's id, e.g. occupation.")],
    version: VersionOpt = norms.DEFAULT_VERSION,
    json_output: JsonOpt = False,
) -> None:
    """Show one norm in full: what it means, its parameters and their values, when a use
    declaration breaks it, and how to attach it with `consent grant --norm`."""
    vocab = _vocabulary(version)
    spec = vocab.norms.get(norm_id)
    if spec is None:
        fail(f"no norm {norm_id!r}: use one of {', '.join(vocab.norms)}", EXIT_UNUSABLE)
    example = _example(spec)
    if json_output:
        print_json({**norm_json(spec, vocab), "example": example})
        return
    out = console()
    table = Table(show_header=False, box=None, title=f"{spec.id}: {spec.title}")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("means", spec.description)
    table.add_row("broken when", spec.breach)
    table.add_row("judged against", ", ".join(f"UseDeclaration.{f}" for f in spec.judged_against))
    table.add_row(
        "repeatable",
        f"yes: instances share no {spec.disjoint_on}" if spec.disjoint_on else "no: at most once",
    )
    table.add_row("iri", vocab.expand_iri(vocab.norm_iri.format(spec.id)))
    table.add_row("example", f"--norm '{example}'")
    out.print(table)
    parameters = Table(title="parameters")
    parameters.add_column("name", style="bold")
    parameters.add_column("type")
    parameters.add_column("required")
    parameters.add_column("values")
    parameters.add_column("description")
    for parameter in spec.parameters:
        values = _values_text(parameter)
        if parameter.allowed_descriptions:
            values = "\n".join(
                f"{term}: {text}" for term, text in parameter.allowed_descriptions.items()
            )
        parameters.add_row(
            parameter.name,
            parameter.type,
            "yes" if parameter.required else "no",
            _cell(values),
            _cell(parameter.description),
        )
    out.print(parameters)


@app.command("profile")
def profile(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the document here instead.")
    ] = None,
    version: VersionOpt = norms.DEFAULT_VERSION,
) -> None:
    """Print the vocabulary as an ODRL 2.2 profile document (JSON-LD): every `coalition:`
    term the exports use, with a label and a definition. Publish it at the profile IRI."""
    document = json.dumps(norms.odrl_profile(_vocabulary(version)), indent=2) + "\n"
    if out is None:
        typer.echo(document, nl=False)
        return
    try:
        out.write_text(document, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc}", EXIT_UNUSABLE)
    note(f"wrote the ODRL profile to {out}")
