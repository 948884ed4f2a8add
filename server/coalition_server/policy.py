"""The coalition's policy: how it bargains, from a YAML file the operator controls.

    # coalition-policy.yaml
    negotiation:
      quorum_fraction: 0.5        # never cover less than half of the eligible items
      min_items: 1
      aspiration_multiplier: 2.0  # open at twice the reservation
      beta: 0.5                   # < 1 Boulware (concede late), > 1 Conceder
      max_rounds: 20
      deadline_seconds: 86400
      max_declaration_changes: 2  # changes to a lab's use declaration per counter (0: none)
    catalogue:
      minimum_group_size: 5       # k-anonymity: smaller groups are not shown
    ratification:
      required: false             # members covered by a deal vote before it is final
      basis: items                # the threshold counts covered items, or members
      threshold: 0.5              # fraction of the basis that must approve
      window_seconds: 172800
    payouts:
      rule: pro-rata-items

Every field is optional; the defaults are the values above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from coalition_server.domain.bargaining import BargainingPolicy
from coalition_server.domain.payouts import PAYOUT_RULES
from coalition_server.domain.reservation import QuorumRule


class PolicyError(ValueError):
    """The policy file is malformed."""


@dataclass(frozen=True)
class CataloguePolicy:
    """How much of the pool the catalogue shows."""

    minimum_group_size: int = 5

    def __post_init__(self) -> None:
        if self.minimum_group_size < 1:
            raise PolicyError("catalogue.minimum_group_size must be at least 1")


@dataclass(frozen=True)
class RatificationPolicy:
    """Whether and how members ratify agreements."""

    required: bool = False
    basis: str = "items"
    threshold: float = 0.5
    window: timedelta = timedelta(days=2)

    def __post_init__(self) -> None:
        if self.basis not in ("items", "members"):
            raise PolicyError("ratification.basis is items or members")
        if not 0 < self.threshold <= 1:
            raise PolicyError("ratification.threshold is in (0, 1]")
        if self.window <= timedelta(0):
            raise PolicyError("ratification.window_seconds must be positive")

    def needed(self, total: int) -> int:
        """Approvals needed out of ``total`` (items or members)."""
        return max(1, math.ceil(self.threshold * total))


@dataclass(frozen=True)
class CoalitionPolicy:
    """Everything the operator decides about bargaining."""

    negotiation: BargainingPolicy = field(
        default_factory=lambda: BargainingPolicy(
            quorum=QuorumRule(fraction=0.5, min_items=1),
            aspiration_multiplier=2.0,
            beta=0.5,
            max_rounds=20,
            deadline=timedelta(days=1),
        )
    )
    catalogue: CataloguePolicy = field(default_factory=CataloguePolicy)
    ratification: RatificationPolicy = field(default_factory=RatificationPolicy)
    payout_rule: str = "pro-rata-items"

    def __post_init__(self) -> None:
        if self.payout_rule not in PAYOUT_RULES:
            raise PolicyError(f"unknown payout rule {self.payout_rule!r}")

    @classmethod
    def load(cls, path: Path | None) -> CoalitionPolicy:
        """The policy in ``path``, or the defaults when there is none."""
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from None
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Any) -> CoalitionPolicy:
        """Build from parsed YAML, refusing unknown keys (a typo must not pass silently)."""
        if not isinstance(raw, dict):
            raise PolicyError("the policy is a mapping")
        _only(raw, {"negotiation", "catalogue", "ratification", "payouts"}, "policy")
        negotiation = raw.get("negotiation") or {}
        catalogue = raw.get("catalogue") or {}
        ratification = raw.get("ratification") or {}
        payouts = raw.get("payouts") or {}
        _only(ratification, {"required", "basis", "threshold", "window_seconds"}, "ratification")
        _only(payouts, {"rule"}, "payouts")
        _only(
            negotiation,
            {
                "quorum_fraction",
                "min_items",
                "aspiration_multiplier",
                "beta",
                "max_rounds",
                "deadline_seconds",
                "max_declaration_changes",
            },
            "negotiation",
        )
        _only(catalogue, {"minimum_group_size"}, "catalogue")
        try:
            return cls(
                negotiation=BargainingPolicy(
                    quorum=QuorumRule(
                        fraction=float(negotiation.get("quorum_fraction", 0.5)),
                        min_items=int(negotiation.get("min_items", 1)),
                    ),
                    aspiration_multiplier=float(negotiation.get("aspiration_multiplier", 2.0)),
                    beta=float(negotiation.get("beta", 0.5)),
                    max_rounds=int(negotiation.get("max_rounds", 20)),
                    deadline=timedelta(seconds=float(negotiation.get("deadline_seconds", 86400))),
                    max_declaration_changes=int(negotiation.get("max_declaration_changes", 2)),
                ),
                catalogue=CataloguePolicy(int(catalogue.get("minimum_group_size", 5))),
                ratification=RatificationPolicy(
                    required=bool(ratification.get("required", False)),
                    basis=str(ratification.get("basis", "items")),
                    threshold=float(ratification.get("threshold", 0.5)),
                    window=timedelta(seconds=float(ratification.get("window_seconds", 172800))),
                ),
                payout_rule=str(payouts.get("rule", "pro-rata-items")),
            )
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"invalid policy: {exc}") from None


def _only(section: Any, allowed: set[str], name: str) -> None:
    if not isinstance(section, dict):
        raise PolicyError(f"{name} must be a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise PolicyError(f"unknown {name} setting(s): {', '.join(sorted(unknown))}")
