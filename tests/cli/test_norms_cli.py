"""``coalition norms``: the vocabulary as a table or JSON, one norm in full, and the ODRL
profile document. All local: no server, no key."""

from __future__ import annotations

import json
from pathlib import Path

from coalition import norms
from coalition.norms import Vocabulary
from tests.cli.helpers import invoke

VOCAB = Vocabulary.load()


def test_list_json_describes_every_norm_value_and_stance() -> None:
    result = invoke("norms", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["version"] == VOCAB.version
    assert listed["profile"] == VOCAB.profile
    assert [n["id"] for n in listed["norms"]] == list(VOCAB.norms)
    for entry in listed["norms"]:
        spec = VOCAB.norm(entry["id"])
        assert [p["name"] for p in entry["parameters"]] == [p.name for p in spec.parameters]
        for given, parameter in zip(entry["parameters"], spec.parameters, strict=True):
            assert given["type"] == parameter.type
            assert given["required"] == parameter.required
            if parameter.allowed is not None:
                assert given["allowed"] == list(parameter.allowed)
            if parameter.pattern is not None:
                assert given["pattern"] == parameter.pattern.pattern
        assert entry["repeatable"] == (spec.disjoint_on is not None)
        assert entry["breach"] == spec.breach
    by_id = {n["id"]: n for n in listed["norms"]}
    delay = by_id["withdrawal-effect"]["parameters"][0]
    assert (delay["minimum_seconds"], delay["maximum_seconds"]) == (0, 3650 * 86_400)
    share = by_id["public-benefit"]["parameters"][1]
    assert (share["minimum"], share["maximum"]) == (1, 10_000)
    assert by_id["withdrawal-effect"]["parameters"][1]["allowed"] == [True]
    assert [v["id"] for v in listed["enduring_values"]] == [
        v.id for v in VOCAB.enduring_values.values()
    ]
    assert [(s["id"], s["premium"]) for s in listed["stances"]] == [
        ("hard", False),
        ("priced", True),
    ]
    assert listed["option_syntax"] == norms.NORM_OPTION_SYNTAX


def test_list_table_shows_ids_parameters_values_and_stances() -> None:
    result = invoke("norms", "list")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for spec in VOCAB.norms.values():
        assert spec.id in text
        for parameter in spec.parameters:
            assert parameter.name in text
    # Patterns print as they are (not eaten as rich markup).
    assert "^[a-z0-9]+(-[a-z0-9]+)*$" in text
    assert "open-weights" in text
    assert "0s..3650d" in text
    for value in VOCAB.enduring_values.values():
        assert value.id in text
    assert "priced" in text
    assert norms.NORM_OPTION_SYNTAX in text


def test_show_one_norm_with_an_example_that_parses() -> None:
    for spec in VOCAB.norms.values():
        result = invoke("norms", "show", spec.id, "--json")
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert shown["id"] == spec.id
        assert shown["iri"] == VOCAB.namespace + "norm/" + spec.id
        assert norms.parse_norm_option(shown["example"], "USD").norm_id == spec.id
    text = invoke("norms", "show", "prohibited-use").stdout
    assert "military" in text
    assert "Military and defence uses" in text  # each domain's meaning
    assert "--norm 'prohibited-use:hard:domains=" in text


def test_show_an_unknown_norm_fails() -> None:
    result = invoke("norms", "show", "mind-control")
    assert result.exit_code == 2
    assert "no norm 'mind-control'" in result.stderr
    assert "prohibited-use" in result.stderr


def test_an_unknown_vocabulary_version_fails() -> None:
    result = invoke("norms", "list", "--vocabulary", "9")
    assert result.exit_code == 2
    assert "no norm vocabulary" in result.stderr


def test_profile_prints_or_writes_the_odrl_profile(tmp_path: Path) -> None:
    result = invoke("norms", "profile")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == norms.odrl_profile()
    out = tmp_path / "profile.jsonld"
    written = invoke("norms", "profile", "--out", str(out))
    assert written.exit_code == 0, written.output
    assert written.stdout == ""
    assert json.loads(out.read_text()) == norms.odrl_profile()
