"""Changing a use declaration to keep a norm, what a lab may concede, and the declaration
file (coalition.norms, pure)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings

from coalition import norms
from coalition.norms import DeclarationLimits, NormError
from coalition.v1 import norms_pb2, terms_pb2
from tests.norms.test_judgement import declarations, norm_sets

HARD = norms_pb2.NORM_STANCE_HARD
OPEN = terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS
CLOSED = terms_pb2.MODEL_RELEASE_CLOSED
DAY = timedelta(days=1)


def hard(norm_id: str, **parameters: Any) -> norms_pb2.Norm:
    return norms.make_norm(norm_id, HARD, parameters)


def use(**fields: Any) -> terms_pb2.UseDeclaration:
    """A closed model processed in Germany, with ``fields`` changed."""
    base: dict[str, Any] = {"model_release": CLOSED, "jurisdictions": ["DE"]}
    base.update(fields)
    return terms_pb2.UseDeclaration(**base)


# (norm, declaration, the changes amend_to_keep makes)
AMENDMENTS: list[tuple[norms_pb2.Norm, terms_pb2.UseDeclaration, list[str]]] = [
    (
        hard("model-release", release="open-weights"),
        use(),
        ["model_release: closed -> open-weights"],
    ),
    (
        hard("prohibited-use", domains=["mass-surveillance", "military"]),
        use(application_domains=["military", "targeted-advertising"]),
        ["application_domains: -military"],
    ),
    (
        # A wider targeted code is dropped whole; unrelated codes stay.
        hard("occupation", isco08=["2166"]),
        use(occupations=["21", "3"]),
        ["occupations: -21"],
    ),
    (
        hard("jurisdiction", allowed=["DE-BY", "FR"]),
        use(jurisdictions=["DE", "FR", "US"]),
        ["jurisdictions: -DE -US +DE-BY"],
    ),
    (
        # Nothing declared is allowed: processing moves to the allowed places.
        hard("jurisdiction", allowed=["CA"]),
        use(jurisdictions=["US"]),
        ["jurisdictions: -US +CA"],
    ),
    (
        hard("public-benefit", fund="open-knowledge", min_share_basis_points=250),
        use(public_benefit_share_basis_points=100, public_benefit_fund="other"),
        ["public_benefit: 100 bp other -> 250 bp open-knowledge"],
    ),
    (
        # No fund named: the declared fund stays, the share rises.
        hard("public-benefit", min_share_basis_points=250),
        use(public_benefit_share_basis_points=100, public_benefit_fund="other"),
        ["public_benefit: 100 bp other -> 250 bp other"],
    ),
    (
        hard("derivatives", forbidden=["distillation", "third-party-fine-tunes"]),
        use(distillation=True, third_party_fine_tunes=True),
        ["distillation: true -> false", "third_party_fine_tunes: true -> false"],
    ),
    (
        hard(
            "withdrawal-effect",
            exclude_from_models_released_after=90 * DAY,
            exclude_from_next_training_run=True,
        ),
        use(),
        [
            "exclude_from_next_training_run: false -> true",
            "exclude_from_models_released_after: never -> P90D",
        ],
    ),
]


@pytest.mark.parametrize(("norm", "declared", "changes"), AMENDMENTS)
def test_amend_to_keep_makes_the_least_change(
    norm: norms_pb2.Norm, declared: terms_pb2.UseDeclaration, changes: list[str]
) -> None:
    assert norms.breaks(norm, declared)
    amended = norms.amend_to_keep(declared, norm)
    assert amended is not None
    assert not norms.breaks(norm, amended)
    norms.validate_declaration(amended)
    assert norms.declaration_changes(declared, amended) == changes
    assert norms.breaks(norm, declared)  # the input is left alone


def test_a_shorter_withdrawal_delay_is_kept_and_a_longer_one_shortened() -> None:
    norm = hard("withdrawal-effect", exclude_from_models_released_after=90 * DAY)
    shorter = use()
    shorter.withdrawal_commitments.exclude_from_models_released_after.FromTimedelta(30 * DAY)
    amended = norms.amend_to_keep(shorter, norm)
    assert amended == shorter
    longer = use()
    longer.withdrawal_commitments.exclude_from_models_released_after.FromTimedelta(400 * DAY)
    amended = norms.amend_to_keep(longer, norm)
    assert amended is not None
    assert amended.withdrawal_commitments.exclude_from_models_released_after.ToTimedelta() == (
        90 * DAY
    )


def test_a_fundless_share_cannot_be_declared() -> None:
    """A share needs a fund: a norm naming none cannot be kept by a declaration paying
    into none."""
    assert norms.amend_to_keep(use(), hard("public-benefit", min_share_basis_points=1)) is None


@settings(max_examples=300, deadline=None)
@given(norm_sets(), declarations())
def test_amend_to_keep_keeps_the_norm_and_touches_only_its_fields(
    token: list[norms_pb2.Norm], declared: terms_pb2.UseDeclaration
) -> None:
    vocabulary = norms.Vocabulary.load()
    for norm in token:
        amended = norms.amend_to_keep(declared, norm)
        if amended is None:
            assert norm.norm_id in ("public-benefit", "derivatives")
            continue
        assert not norms.breaks(norm, amended)
        norms.validate_declaration(amended)
        judged = set(vocabulary.norm(norm.norm_id).judged_against)
        for field in terms_pb2.UseDeclaration.DESCRIPTOR.fields_by_name:
            if field not in judged:
                assert getattr(amended, field) == getattr(declared, field), field
        if not norms.breaks(norm, declared):
            assert amended == declared


# --- what a lab may concede -----------------------------------------------------------------


def test_limits_concede_nothing_by_default() -> None:
    own = use(application_domains=["military"], distillation=True)
    limits = DeclarationLimits()
    assert limits.refusal(own, own) is None
    assert limits.refusal(own, use(model_release=OPEN, application_domains=["military"]))
    assert limits.refusal(own, use(distillation=True)) == "application_domains without military"
    assert limits.refusal(own, use(application_domains=["military"])) == "no distillation"


def test_limits_allow_what_they_name_and_nothing_else() -> None:
    own = use(
        application_domains=["military", "targeted-advertising"],
        occupations=["2166"],
        jurisdictions=["DE", "US"],
        distillation=True,
    )
    limits = DeclarationLimits(
        model_releases=frozenset({OPEN}),
        application_domains=frozenset({"military"}),
        occupations=frozenset({"2166"}),
        jurisdictions=frozenset({"US", "DE"}),
        more_jurisdictions=frozenset({"FR"}),
        max_public_benefit_share_basis_points=300,
        public_benefit_funds=frozenset({"open-knowledge"}),
        distillation=True,
        exclude_from_next_training_run=True,
        min_models_released_after=60 * DAY,
    )
    conceded = use(
        model_release=OPEN,
        application_domains=["targeted-advertising"],
        jurisdictions=["DE-BY", "FR"],
        public_benefit_share_basis_points=300,
        public_benefit_fund="open-knowledge",
    )
    conceded.withdrawal_commitments.exclude_from_next_training_run = True
    conceded.withdrawal_commitments.exclude_from_models_released_after.FromTimedelta(60 * DAY)
    assert limits.refusal(own, conceded) is None

    def changed(**fields: Any) -> terms_pb2.UseDeclaration:
        out = terms_pb2.UseDeclaration()
        out.CopyFrom(conceded)
        for name, value in fields.items():
            if isinstance(value, list):
                out.ClearField(name)  # type: ignore[arg-type]
                getattr(out, name).extend(value)
            else:
                setattr(out, name, value)
        return out

    assert limits.refusal(own, changed(application_domains=[])) == (
        "application_domains without targeted-advertising"
    )
    assert limits.refusal(own, changed(jurisdictions=["GB"])) == "processing in GB"
    assert limits.refusal(own, changed(public_benefit_share_basis_points=301)) == (
        "a public-benefit share of 301 basis points"
    )
    assert limits.refusal(own, changed(public_benefit_fund="x")) == "paying into x"
    shorter = changed()
    shorter.withdrawal_commitments.exclude_from_models_released_after.FromTimedelta(59 * DAY)
    assert limits.refusal(own, shorter) == "exclusion from models released after P59D"
    # More room than asked for is no concession.
    assert limits.refusal(own, changed(third_party_fine_tunes=True, distillation=True)) is None


# --- the declaration file -------------------------------------------------------------------

EXAMPLE: dict[str, Any] = {
    "modelRelease": "closed",
    "applicationDomains": ["targeted-advertising"],
    "occupations": ["2166", "2642"],
    "jurisdictions": ["DE-BY", "FR"],
    "publicBenefitShareBasisPoints": 100,
    "publicBenefitFund": "open-knowledge",
    "thirdPartyFineTunes": True,
    "withdrawalCommitments": {
        "excludeFromNextTrainingRun": True,
        "excludeFromModelsReleasedAfter": "15552000s",
    },
    "mayConcede": {
        "modelRelease": ["open-weights"],
        "applicationDomains": ["targeted-advertising"],
        "thirdPartyFineTunes": True,
        "excludeFromModelsReleasedAfter": "7776000s",
    },
}


def test_the_declaration_file_reads_json_and_yaml() -> None:
    parsed = norms.read_declaration(json.dumps(EXAMPLE))
    assert parsed.declaration.model_release == CLOSED
    assert list(parsed.declaration.occupations) == ["2166", "2642"]
    assert parsed.declaration.withdrawal_commitments.exclude_from_models_released_after.seconds == (
        15_552_000
    )
    assert parsed.limits == DeclarationLimits(
        model_releases=frozenset({OPEN}),
        application_domains=frozenset({"targeted-advertising"}),
        third_party_fine_tunes=True,
        min_models_released_after=90 * DAY,
    )
    yaml_text = (
        "model_release: MODEL_RELEASE_OPEN_WEIGHTS\n"
        "jurisdictions: [DE]\n"
        "may_concede:\n  distillation: true\n"
    )
    from_yaml = norms.read_declaration(yaml_text)
    assert from_yaml.declaration == use(model_release=OPEN)
    assert from_yaml.limits == DeclarationLimits(distillation=True)
    assert norms.read_declaration(json.dumps({"modelRelease": 2, "jurisdictions": ["DE"]})) == (
        norms.DeclarationFile(use(), DeclarationLimits())
    )


@pytest.mark.parametrize(
    ("document", "reason", "field"),
    [
        ({"jurisdictions": ["DE"]}, "MISSING_DECLARATION_FIELD", "model_release"),
        ({"modelRelease": "closed"}, "MISSING_DECLARATION_FIELD", "jurisdictions"),
        ({"modelRelease": "shared", "jurisdictions": ["DE"]}, "BAD_DECLARATION_FIELD", None),
        ({"modelRelease": "closed", "jurisdictions": ["Germany"]}, "BAD_DECLARATION_FIELD", None),
        (
            {"modelRelease": "closed", "jurisdictions": ["DE"], "colour": "blue"},
            "BAD_DECLARATION_FIELD",
            "file",
        ),
        (
            {"modelRelease": "closed", "jurisdictions": ["DE"], "mayConcede": {"x": 1}},
            "BAD_DECLARATION_FIELD",
            "mayConcede.x",
        ),
        (
            {
                "modelRelease": "closed",
                "jurisdictions": ["DE"],
                "mayConcede": {"distillation": "yes"},
            },
            "BAD_DECLARATION_FIELD",
            "mayConcede.distillation",
        ),
        (["closed"], "BAD_DECLARATION_FIELD", "file"),
        # Found by review after the fuzzer's 4,300-digit checkpoint size: huge numbers are
        # refused with the file's own error, not a ValueError or OverflowError.
        *(
            (
                {
                    "modelRelease": "closed",
                    "jurisdictions": ["DE"],
                    "mayConcede": {"excludeFromModelsReleasedAfter": huge},
                },
                "BAD_DECLARATION_FIELD",
                "mayConcede.excludeFromModelsReleasedAfter",
            )
            for huge in ("9" * 5000 + "s", "9" * 15 + "s", 10**20)
        ),
    ],
)
def test_bad_declaration_files_are_refused(document: Any, reason: str, field: str | None) -> None:
    with pytest.raises(NormError) as refused:
        norms.read_declaration(json.dumps(document))
    assert refused.value.reason == reason
    if field is not None:
        assert refused.value.metadata["field"] == field


def test_a_file_that_is_neither_json_nor_yaml_is_refused() -> None:
    with pytest.raises(NormError, match="neither JSON nor YAML"):
        norms.read_declaration("{unbalanced: [")
