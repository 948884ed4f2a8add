"""The vocabulary as an ODRL 2.2 profile document (odrl_profile): one defined, labelled term
for everything in the data file. (That it is lossless JSON-LD and covers every term the
exports write is tested with the exports, in tests/domain/test_exports.py.)"""

from __future__ import annotations

from typing import Any

from coalition import norms
from coalition.norms import Vocabulary

VOCAB = Vocabulary.load()
PROFILE = norms.odrl_profile()
GRAPH: list[dict[str, Any]] = PROFILE["@graph"]
BY_ID = {node["@id"]: node for node in GRAPH}


def test_the_profile_is_an_ontology_at_the_profile_iri() -> None:
    assert PROFILE["@context"][0] == norms.ODRL_CONTEXT
    assert PROFILE["@context"][1][VOCAB.prefix] == VOCAB.namespace
    ontology = BY_ID[VOCAB.profile]
    assert ontology["@type"] == "owl:Ontology"
    assert ontology["owl:versionInfo"] == VOCAB.version
    assert ontology["vann:preferredNamespacePrefix"] == VOCAB.prefix
    assert ontology["vann:preferredNamespaceUri"] == VOCAB.namespace
    # How to read the profile: the hard and priced mappings of the data file, and more.
    assert VOCAB.hard_description in ontology["skos:note"]
    assert VOCAB.priced_description in ontology["skos:note"]


def test_every_term_has_a_label_a_definition_and_the_profile() -> None:
    assert len(BY_ID) == len(GRAPH)  # no term twice
    for node in GRAPH:
        if node["@id"] == VOCAB.profile:
            continue
        assert node["rdfs:label"], node
        assert node["skos:definition"], node
        assert node["rdfs:isDefinedBy"] == {"@id": VOCAB.profile}
        assert node["@id"].startswith(VOCAB.prefix + ":"), node
        assert all(value != [] for value in node.values()), node


def test_every_norm_and_enduring_value_is_a_concept() -> None:
    for spec in VOCAB.norms.values():
        node = BY_ID[VOCAB.norm_iri.format(spec.id)]
        assert node["@type"] == [f"{VOCAB.prefix}:Norm", "skos:Concept"]
        assert (node["rdfs:label"], node["skos:definition"]) == (spec.title, spec.description)
        assert node["skos:notation"] == spec.id
        notes = "\n".join(node["skos:note"])
        assert spec.breach in notes
        assert all(f"Parameter {p.name} " in notes for p in spec.parameters)
    for value in VOCAB.enduring_values.values():
        node = BY_ID[VOCAB.value_iri.format(value.id)]
        assert node["@type"] == [f"{VOCAB.prefix}:EnduringValue", "skos:Concept"]
        assert node["skos:definition"] == value.description


def test_every_left_operand_and_closed_term_is_defined() -> None:
    operands = {o for f in VOCAB.declaration.values() for o in f.left_operands}
    operands |= {b.left_operand for s in VOCAB.norms.values() for b in s.odrl_breach}
    for operand in operands:
        assert BY_ID[operand]["@type"] == ["LeftOperand"]
    for spec in VOCAB.norms.values():
        for breach in spec.odrl_breach:
            if breach.unit is not None:
                assert breach.unit in BY_ID
            if breach.iri is None:
                continue
            scheme = breach.iri.removesuffix("{}")
            assert BY_ID[scheme]["@type"] == ["skos:ConceptScheme"]
            parameter = spec.parameter(breach.parameter)
            assert parameter is not None
            for term in parameter.allowed or ():
                node = BY_ID[breach.iri.format(term)]
                assert node["@type"] == ["RightOperand", "skos:Concept"]
                assert node["skos:inScheme"] == {"@id": scheme}
                descriptions = parameter.allowed_descriptions or {}
                if term in descriptions:
                    assert node["skos:definition"] == descriptions[term]
            if parameter.pattern is not None:
                assert parameter.pattern.pattern in "".join(BY_ID[scheme]["skos:note"])
    # The declaration's yes/no fields name terms of a closed scheme.
    for field in VOCAB.declaration.values():
        if field.iri is not None:
            assert field.iri in BY_ID
