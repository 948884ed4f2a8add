"""What a demo run found: plain, JSON-ready values the summary and the report are drawn from.

Nothing here refers to protobufs or the server, so a report can be rendered (and tested)
from a result built by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Move:
    """One move of a negotiation, as the lab's SDK reported it."""

    by: str
    """``lab`` or ``coalition``."""
    kind: str
    """``request``, ``offer``, ``accept``, ``terminate`` or ``sign``."""
    round: int
    price_micros: int | None


@dataclass(frozen=True)
class SupplyStep:
    """One point of the supply curve a lab was shown: at this price, this many items."""

    price_micros: int
    items: int
    members: int


@dataclass(frozen=True)
class Ballots:
    """How the covered members voted on one lab's deal (the coalition's signed result)."""

    approved: bool
    approving_members: int
    rejecting_members: int
    approving_items: int
    rejecting_items: int
    rejecting_reasons: dict[str, int] = field(default_factory=dict)
    """Reason (norm id) -> members who gave it; only reasons at least k members gave."""
    after_decision: int = 0
    """Ballots refused because the vote was already decided."""


@dataclass(frozen=True)
class LabResult:
    """One lab: how it bargained and what came of it."""

    name: str
    key_id: str
    strategy: str
    model_release: str
    opening_micros: int
    budget_micros: int
    reservation_micros: int | None
    """The reservation the lab's what-if (EstimateSupply) showed before it opened."""
    outcome: str
    """``finalized``, ``terminated`` or ``rejected`` (by the members' vote)."""
    reason: str = ""
    """Why it ended without a deal (``OVER_BUDGET``, ``RATIFICATION_REJECTED``, ...)."""
    price_micros: int | None = None
    covered_items: int = 0
    covered_members: int = 0
    agreement_id: str = ""
    moves: tuple[Move, ...] = ()
    supply: tuple[SupplyStep, ...] = ()
    ballots: Ballots | None = None
    payout_total_micros: int = 0
    payout_lines: int = 0
    fetched_items: int = 0
    fetched_bytes: int = 0
    answers_late: bool = False
    """This lab answers its withdrawal notices after their deadline."""

    @property
    def agreed(self) -> bool:
        """The lab holds a finalised agreement."""
        return self.outcome == "finalized" and bool(self.agreement_id)

    @property
    def rounds(self) -> int:
        """Moves made by either side, the opening request excluded."""
        return max((m.round for m in self.moves), default=0)


@dataclass(frozen=True)
class NoticeResult:
    """A withdrawal notice to a lab and its answer, on the ledger's clock."""

    lab: str
    cause: str
    """``withdrawal`` (a member withdrew) or ``strike`` (a strike executed)."""
    issued_s: float
    """Seconds after the first withdrawal of the run."""
    respond_by_s: float
    receipt_s: float | None
    state: str
    """``in_time``, ``late``, ``missing`` or ``pending`` (the compliance report's)."""


@dataclass(frozen=True)
class StrikeResult:
    """The strike against one lab."""

    target: str
    threshold: int
    """Members who must pledge before any pledge executes."""
    pledges: int
    active_before_last: int
    """Active pledges the public progress showed before the last one came in."""
    executed: bool
    executed_pledges: int


@dataclass(frozen=True)
class ComplianceRow:
    """One lab's line of the auditor's compliance table."""

    lab: str
    agreements: int
    releases: int
    notices: int
    in_time: int
    late: int
    missing: int
    pending: int
    releases_after_withdrawal: int

    @property
    def ok(self) -> bool:
        """No violation: nothing late, missing, or released after a withdrawal."""
        return not (self.late or self.missing or self.releases_after_withdrawal)


@dataclass(frozen=True)
class AuditResult:
    """What the auditor established by replaying the ledger."""

    entries: int
    root_hash: str
    """Hex of the recomputed root, equal to the signed checkpoint's."""
    verified: bool
    parties: int
    kinds: dict[str, int]
    compliance: tuple[ComplianceRow, ...]
    seconds: float = 0.0


@dataclass(frozen=True)
class DemoResult:
    """Everything the summary and the report show."""

    seed: int
    members: int
    items: int
    item_bytes: int
    consents: int
    norm_holders: dict[str, int]
    """Norm (``model-release (priced)``, ...) -> members holding it."""
    labs: tuple[LabResult, ...]
    earnings_checked: int
    """Members who verified their payout lines against the signed statements."""
    earnings_checked_micros: int
    withdrawn_items: int
    notices: tuple[NoticeResult, ...]
    strike: StrikeResult | None
    audit: AuditResult
    deletion_deadline_s: float
    phases: dict[str, float] = field(default_factory=dict)
    """Phase -> wall-clock seconds."""
    seconds: float = 0.0

    @property
    def agreements(self) -> tuple[LabResult, ...]:
        """The labs holding a finalised agreement."""
        return tuple(lab for lab in self.labs if lab.agreed)

    @property
    def payouts_total_micros(self) -> int:
        """Every payout statement's total."""
        return sum(lab.payout_total_micros for lab in self.labs)

    @property
    def receipts(self) -> int:
        """Notices answered with a deletion receipt (in time or late)."""
        return sum(1 for n in self.notices if n.state in ("in_time", "late"))

    @property
    def late(self) -> int:
        """Notices answered after their deadline."""
        return sum(1 for n in self.notices if n.state == "late")

    @property
    def outstanding(self) -> int:
        """Notices not answered yet (missing or still pending)."""
        return len(self.notices) - self.receipts

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, derived totals included."""
        data = dataclasses.asdict(self)
        data["totals"] = {
            "agreements": len(self.agreements),
            "payouts_total_micros": self.payouts_total_micros,
            "notices": len(self.notices),
            "receipts": self.receipts,
            "late": self.late,
            "outstanding": self.outstanding,
        }
        return data


def usd(micros: int | None) -> str:
    """``$1.25`` for 1 250 000 micros; ``-`` for None."""
    if micros is None:
        return "-"
    return f"${micros / 1_000_000:,.2f}"
