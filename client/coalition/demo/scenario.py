"""The demo's play: a coalition, its labs and an auditor, end to end over gRPC.

:func:`run_demo` starts a real :class:`~coalition_server.server.CoalitionServer` in this
process (127.0.0.1, port 0, SQLite in a temporary directory, a policy under which members
ratify every deal) and plays, through the public SDK only (:class:`~coalition.client.Client`,
:mod:`coalition.strategy`, :mod:`coalition.audit`, :mod:`coalition.compliance`):

1. members join, register and upload small items, and consent with varied floors (roughly
   log-normal) and, for some, norms (a hard ``prohibited-use``, a priced ``model-release``
   or ``derivatives``);
2. labs read the catalogue and their what-if (EstimateSupply), set a budget from the
   reservation it shows, and negotiate automatically (Conceder, Boulware, linear);
3. the covered members ratify each deal (ListRatifications, CastBallot), some rejecting
   with their norms as reasons; the payout statements are published and a few members
   verify their lines; each lab leases and fetches what it licensed;
4. a member withdraws everything: each lab holding their items gets a notice on its
   withdrawal feed and answers with a deletion receipt, one lab only after the (seconds
   long) deadline;
5. members covered by that lab pledge to strike against it until the threshold is met and
   every pledge executes at once;
6. an auditor, with no account and no trust in the server, replays the ledger (every
   signature, signer rule and the root against the signed checkpoint) and computes each
   lab's compliance.

Everything random comes from ``--seed`` (floors, norms, items, keys, votes); only timing
(which ballot lands after a vote is decided) varies between runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from coalition import dsse, statements
from coalition.audit import ExpectedKey, LedgerReplay
from coalition.checkpoint import verify_checkpoint
from coalition.client import (
    Client,
    NegotiationStep,
    ServerError,
    consent_token,
    lab_strategy,
    negotiation_state_name,
    price_floor,
)
from coalition.compliance import ComplianceReport, compliance_report
from coalition.demo.results import (
    AuditResult,
    Ballots,
    ComplianceRow,
    DemoResult,
    LabResult,
    Move,
    NoticeResult,
    StrikeResult,
    SupplyStep,
)
from coalition.keys import SigningKey
from coalition.norms import HARD, PRICED, breaks, make_norm
from coalition.note import NoteVerifier
from coalition.v1 import (
    access_pb2,
    ledger_pb2,
    negotiation_pb2,
    norms_pb2,
    party_pb2,
    terms_pb2,
)
from coalition_server.config import Settings
from coalition_server.server import CoalitionServer

T = TypeVar("T")
U = TypeVar("U")

USD: Final = 1_000_000
CENT: Final = 10_000
CURRENCY: Final = "USD"
DEFAULT_MEMBERS: Final = 300
DEFAULT_LABS: Final = 3
DEFAULT_SEED: Final = 7
DEFAULT_CONCURRENCY: Final = 32
MAX_ROUNDS: Final = 20
DELETION_DEADLINE: Final = timedelta(seconds=3)
"""Short, so that a late receipt happens within the demo (real deals say days)."""
LATE_BY: Final = 0.5
"""How long after a notice's deadline the late lab answers it."""
SETTLE_TIMEOUT: Final = 30.0
"""Most seconds to wait for the last receipts before the audit goes ahead regardless."""
EARNINGS_CHECKERS: Final = 5
UPLOADS_AT_ONCE: Final = 1
"""Uploads in flight at once. One: on SQLite every upload ends on the one writer connection,
so more in flight only queue (measured: 16 s for 865 uploads at the members' concurrency
against 10-13 s one at a time)."""
MEDIA_TYPE: Final = "application/octet-stream"
UPLOAD_ATTEMPTS: Final = 8

# Members ratify every deal; a deal needs 60% of its covered items to approve. The window
# is long enough for every ballot, short enough that nothing hangs if one is missing.
POLICY: Final = """\
ratification:
  required: true
  basis: items
  threshold: 0.6
  window_seconds: 120
catalogue:
  minimum_group_size: 5
"""

FIRST_NAMES: Final = (
    "Ada", "Alan", "Amara", "Ana", "Arjun", "Bea", "Chen", "Dara", "Emeka", "Eva", "Farah",
    "Hana", "Ines", "Ivan", "Jonas", "Kofi", "Lea", "Lin", "Maya", "Mateo", "Nia", "Omar",
    "Priya", "Rosa", "Sami", "Sofia", "Tariq", "Uma", "Yuki", "Zoe",
)  # fmt: skip
TAGS: Final = ("essays", "photos", "poems", "recipes", "code", "reviews", "field-notes")


@dataclass(frozen=True)
class DemoConfig:
    """How big a coalition to play, and how."""

    members: int = DEFAULT_MEMBERS
    labs: int = DEFAULT_LABS
    seed: int = DEFAULT_SEED
    concurrency: int = DEFAULT_CONCURRENCY
    """Members acting at once (a bounded semaphore), so the run is fast but not a flood."""

    def __post_init__(self) -> None:
        if self.members < 10:
            raise ValueError("a demo coalition needs at least 10 members")
        if not 1 <= self.labs <= len(LAB_PLANS):
            raise ValueError(f"between 1 and {len(LAB_PLANS)} labs")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


@dataclass(frozen=True)
class LabPlan:
    """A lab's character: how it bargains and what it declares it will do."""

    name: str
    strategy: str
    release: terms_pb2.ModelRelease.ValueType
    domains: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    distillation: bool
    public_benefit_basis_points: int
    public_benefit_fund: str
    opening_factor: float
    """Opening bid, times the reservation its what-if shows."""
    budget_factor: float
    """Budget, times that reservation: below 1, no deal is possible."""

    def declaration(self) -> terms_pb2.UseDeclaration:
        """Its use declaration, in the norms' vocabulary."""
        return terms_pb2.UseDeclaration(
            model_release=self.release,
            application_domains=sorted(self.domains),
            jurisdictions=sorted(self.jurisdictions),
            distillation=self.distillation,
            public_benefit_share_basis_points=self.public_benefit_basis_points,
            public_benefit_fund=self.public_benefit_fund,
        )

    @property
    def release_name(self) -> str:
        """``open weights`` or ``closed``."""
        return "open weights" if self.release == terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS else "closed"


LAB_PLANS: Final = (
    # Open weights, pays into a commons fund, concedes early, a moderate budget.
    LabPlan(
        name="Open Commons AI",
        strategy="conceder",
        release=terms_pb2.MODEL_RELEASE_OPEN_WEIGHTS,
        domains=(),
        jurisdictions=("DE", "FR"),
        distillation=False,
        public_benefit_basis_points=250,
        public_benefit_fund="open-knowledge",
        opening_factor=0.4,
        budget_factor=1.4,
    ),
    # Closed, distils, advertises; holds firm (Boulware) but can pay well. Answers late.
    LabPlan(
        name="Acme Models",
        strategy="boulware",
        release=terms_pb2.MODEL_RELEASE_CLOSED,
        domains=("targeted-advertising",),
        jurisdictions=("US",),
        distillation=True,
        public_benefit_basis_points=0,
        public_benefit_fund="",
        opening_factor=0.3,
        budget_factor=1.9,
    ),
    # Closed, for surveillance, which some members rule out; a budget below the
    # reservation, conceded linearly.
    LabPlan(
        name="Sentinel Analytics",
        strategy="linear",
        release=terms_pb2.MODEL_RELEASE_CLOSED,
        domains=("mass-surveillance",),
        jurisdictions=("US",),
        distillation=False,
        public_benefit_basis_points=0,
        public_benefit_fund="",
        opening_factor=0.3,
        budget_factor=0.85,
    ),
)


@dataclass
class Member:
    """A contributor: what it brings and, once joined, its client and item ids."""

    index: int
    name: str
    key: SigningKey
    floor_micros: int
    contents: list[bytes]
    tag: str
    purposes: list[str]
    norms: list[norms_pb2.Norm]
    norm_labels: list[str]
    vote_draws: tuple[float, ...]
    client: Client | None = None
    item_ids: list[str] = field(default_factory=list)

    @property
    def key_id(self) -> str:
        """Its key id."""
        return self.key.key_id

    def connected(self) -> Client:
        """Its client (it has joined)."""
        assert self.client is not None, "the member has not joined"
        return self.client


@dataclass
class Lab:
    """A lab: its plan, key and, as the play goes on, what happened to it."""

    index: int
    plan: LabPlan
    key: SigningKey
    client: Client | None = None
    steps: list[NegotiationStep] = field(default_factory=list)
    supply: list[SupplyStep] = field(default_factory=list)
    reservation_micros: int | None = None
    opening_micros: int = 0
    budget_micros: int = 0
    negotiation_id: str = ""
    state: int = 0
    reason: str = ""
    price_micros: int | None = None
    covered: list[str] = field(default_factory=list)
    agreement_id: str = ""
    ballots: Ballots | None = None
    after_decision: int = 0
    payout_total_micros: int = 0
    payout_lines: int = 0
    fetched_items: int = 0
    fetched_bytes: int = 0
    answers_late: bool = False
    receipts: int = 0

    @property
    def key_id(self) -> str:
        """Its key id."""
        return self.key.key_id

    def connected(self) -> Client:
        """Its client (it has joined)."""
        assert self.client is not None, "the lab has not joined"
        return self.client


class Phases:
    """One rich progress task per phase, with its wall-clock time recorded."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[PhaseTask]:
        """A phase of ``total`` steps; when it ends well, it is shown complete (its total is
        what it did: a phase may find less to do than it planned)."""
        task = PhaseTask(self.progress, self.progress.add_task(name, total=total, note=""))
        started = time.perf_counter()
        try:
            yield task
        except BaseException:
            self.progress.update(task.task_id, note="[red]failed")
            self.progress.stop_task(task.task_id)
            raise
        finally:
            self.seconds[name] = time.perf_counter() - started
        done = max(1, next(t.completed for t in self.progress.tasks if t.id == task.task_id))
        self.progress.update(task.task_id, total=done, completed=done)


@dataclass
class PhaseTask:
    """A handle to advance one phase's progress and attach a note to it."""

    progress: Progress
    task_id: TaskID

    def advance(self, steps: int = 1) -> None:
        """``steps`` more done."""
        self.progress.advance(self.task_id, steps)

    def total(self, total: int) -> None:
        """Set the number of steps once it is known."""
        self.progress.update(self.task_id, total=total)

    def note(self, text: str) -> None:
        """A short note after the bar."""
        self.progress.update(self.task_id, note=text)


def cents(micros: float) -> int:
    """``micros`` rounded to a whole cent (prices people would quote)."""
    return max(CENT, round(micros / CENT) * CENT)


def plan_members(count: int, rng: random.Random) -> list[Member]:
    """``count`` members with seeded keys, floors, items and norms.

    Floors are log-normal around 0.80 USD (most ask little, a few ask a lot). About a
    fifth hold a hard ``prohibited-use`` norm (never surveillance or war), a quarter a
    priced ``model-release`` norm (closed models pay a premium), a tenth a priced
    ``derivatives`` norm (distilling pays a premium).
    """
    members = []
    for index in range(count):
        floor = cents(USD * 0.8 * math.exp(rng.gauss(0.0, 0.55)))
        contents = [
            rng.randbytes(rng.randint(120, 1500)) for _ in range(rng.choice((1, 2, 2, 3, 3, 4, 5)))
        ]
        purposes = ["train-genai"] + (["search"] if rng.random() < 0.3 else [])
        norms: list[norms_pb2.Norm] = []
        labels: list[str] = []
        if rng.random() < 0.2:
            norms.append(
                make_norm(
                    "prohibited-use",
                    HARD,
                    {"domains": ["mass-surveillance", "military"]},
                    protects=norms_pb2.ENDURING_VALUE_SAFETY,
                )
            )
            labels.append("prohibited-use (hard)")
        if rng.random() < 0.25:
            premium = cents(USD * rng.uniform(0.2, 0.8))
            norms.append(
                make_norm(
                    "model-release",
                    PRICED,
                    {"release": "open-weights"},
                    premium=terms_pb2.Money(currency_code=CURRENCY, micros=premium),
                    protects=norms_pb2.ENDURING_VALUE_COMMONS,
                )
            )
            labels.append("model-release (priced)")
        if rng.random() < 0.1:
            premium = cents(USD * rng.uniform(0.1, 0.4))
            norms.append(
                make_norm(
                    "derivatives",
                    PRICED,
                    {"forbidden": ["distillation"]},
                    premium=terms_pb2.Money(currency_code=CURRENCY, micros=premium),
                )
            )
            labels.append("derivatives (priced)")
        members.append(
            Member(
                index=index,
                name=f"{rng.choice(FIRST_NAMES)} #{index + 1:03d}",
                key=SigningKey.from_seed(rng.randbytes(32)),
                floor_micros=floor,
                contents=contents,
                tag=rng.choice(TAGS),
                purposes=purposes,
                norms=norms,
                norm_labels=labels,
                vote_draws=tuple(rng.random() for _ in LAB_PLANS),
            )
        )
    return members


def lab_terms(plan: LabPlan) -> terms_pb2.LicenceTerms:
    """What a lab asks for: generative training, bought outright, its declaration, and a
    deletion deadline of seconds (so the demo can show a late receipt)."""
    terms = terms_pb2.LicenceTerms(
        purposes=[terms_pb2.PURPOSE_TRAIN_GENAI],
        payment_model=terms_pb2.PAYMENT_MODEL_PURCHASE,
        price_per_item=terms_pb2.Money(currency_code=CURRENCY, micros=0),
        declaration=plan.declaration(),
    )
    terms.licence_duration.FromTimedelta(timedelta(days=365))
    terms.deletion_deadline.FromTimedelta(DELETION_DEADLINE)
    terms.lease_duration.FromTimedelta(timedelta(hours=1))
    return terms


async def bounded(limit: int, values: Iterable[T], action: Callable[[T], Awaitable[U]]) -> list[U]:
    """``action`` on every value, at most ``limit`` at a time; results in order. The first
    failure cancels the rest and is raised."""
    semaphore = asyncio.Semaphore(limit)

    async def one(value: T) -> U:
        async with semaphore:
            return await action(value)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(v)) for v in values]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def _leaf_statement(leaf: bytes) -> dsse.Envelope:
    return dsse.Envelope.from_proto(ledger_pb2.LedgerLeaf.FromString(leaf).envelope)


class Play:
    """One run of the scenario against a server at ``target``."""

    def __init__(self, config: DemoConfig, target: str, phases: Phases) -> None:
        self.config = config
        self.target = target
        self.phases = phases
        rng = random.Random(config.seed)
        self.members = plan_members(config.members, rng)
        self.labs = [
            Lab(i, plan, SigningKey.from_seed(rng.randbytes(32)))
            for i, plan in enumerate(LAB_PLANS[: config.labs])
        ]
        self.owner: dict[str, Member] = {}
        self.public = Client(target)
        self.withdrawn_items = 0
        self.withdrawal_id = ""
        self.strike: StrikeResult | None = None
        self.expected_notices = 0
        self._answers: set[asyncio.Task[None]] = set()
        self._watchers: list[asyncio.Task[None]] = []
        self._failures: list[asyncio.Task[None]] = []
        self.earnings_checked = 0
        self.earnings_checked_micros = 0
        self.withdrawer: Member | None = None
        self.upload_retries = 0

    async def close(self) -> None:
        """Stop the labs' feeds and close every connection."""
        for task in [*self._watchers, *self._answers]:
            task.cancel()
        await asyncio.gather(*self._watchers, *self._answers, return_exceptions=True)
        clients = [m.client for m in self.members] + [lab.client for lab in self.labs]
        await asyncio.gather(*(c.close() for c in clients if c is not None), self.public.close())

    async def run(self) -> DemoResult:
        """Play every phase; the result the summary and the report show."""
        started = time.perf_counter()
        await self.join()
        await self.negotiate()
        await self.ratify()
        await self.pay_and_fetch()
        await self.withdraw()
        await self.strike_against()
        await self.settle()
        audit, report = await self.audit()
        return self.result(audit, report, time.perf_counter() - started)

    # --- 1. members join ----------------------------------------------------------------

    async def join(self) -> None:
        """Every member registers, registers its items, uploads them, and consents."""
        with self.phases.phase("members join and register items", len(self.members)) as task:

            async def join_one(member: Member) -> None:
                client = member.client = Client(self.target, key=member.key)
                await client.register(party_pb2.ROLE_CONTRIBUTOR, member.name)
                # One batched call per member for all its items (one signed statement each).
                registered = await client.register_items(
                    [
                        (hashlib.sha256(c).digest(), len(c), MEDIA_TYPE, [member.tag])
                        for c in member.contents
                    ]
                )
                member.item_ids = [item.item_id for item in registered.items]
                task.advance()

            await bounded(self.config.concurrency, self.members, join_one)
            self.owner = {i: m for m in self.members for i in m.item_ids}
            task.note(f"{len(self.owner)} items")

        uploads = [
            (member, item_id, content)
            for member in self.members
            for item_id, content in zip(member.item_ids, member.contents, strict=True)
        ]
        with self.phases.phase("members upload their items", len(uploads)) as task:

            async def upload_one(upload: tuple[Member, str, bytes]) -> None:
                member, item_id, content = upload
                await self.upload(member.connected(), item_id, content)
                task.advance()

            # One at a time: see UPLOADS_AT_ONCE.
            await bounded(UPLOADS_AT_ONCE, uploads, upload_one)
            size = sum(len(c) for _, _, c in uploads)
            retried = f", {self.upload_retries} retried" if self.upload_retries else ""
            task.note(f"{size / 1024:,.0f} KiB, encrypted at rest{retried}")

        with self.phases.phase("members consent", len(self.members)) as task:

            async def consent(member: Member) -> None:
                await member.connected().grant_consent(
                    consent_token(
                        item_ids=member.item_ids,
                        purposes=member.purposes,
                        floors=[price_floor("purchase", member.floor_micros, currency=CURRENCY)],
                        norms=member.norms,
                    )
                )
                task.advance()

            await bounded(self.config.concurrency, self.members, consent)
            with_norms = sum(1 for m in self.members if m.norms)
            task.note(f"{with_norms} with norms beyond price")

    async def upload(self, client: Client, item_id: str, content: bytes) -> None:
        """Upload one item, retrying with a growing pause while the server says UNAVAILABLE
        (retryable by definition), as any client should."""
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                await client.upload(item_id, content)
                return
            except ServerError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE or attempt == UPLOAD_ATTEMPTS - 1:
                    raise
                self.upload_retries += 1
                await asyncio.sleep(0.02 * 2**attempt * (1 + random.random()))

    # --- 2. labs negotiate --------------------------------------------------------------

    async def negotiate(self) -> None:
        """Each lab reads the catalogue and its what-if, then bargains automatically."""
        with self.phases.phase("labs read the catalogue and negotiate", len(self.labs)) as task:
            catalogue = await self.public.catalogue()
            median = next(
                (
                    row.floor_quantiles_micros[2]
                    for row in catalogue.rows
                    if row.purpose == terms_pb2.PURPOSE_TRAIN_GENAI
                    and row.payment_model == terms_pb2.PAYMENT_MODEL_PURCHASE
                    and len(row.floor_quantiles_micros) == 5
                ),
                USD,
            )

            async def negotiate_one(lab: Lab) -> None:
                client = lab.client = Client(self.target, key=lab.key)
                await client.register(party_pb2.ROLE_LAB, lab.plan.name)
                terms = lab_terms(lab.plan)
                what_if = await client.estimate_supply(terms)
                lab.supply = [
                    SupplyStep(p.price_per_item_micros, p.item_count, p.member_count)
                    for p in what_if.supply
                ]
                if what_if.HasField("reservation_price_micros"):
                    lab.reservation_micros = what_if.reservation_price_micros
                # A lab budgets from what it was shown: the reservation, else the median floor.
                base = lab.reservation_micros or median
                lab.opening_micros = cents(base * lab.plan.opening_factor)
                lab.budget_micros = max(lab.opening_micros, cents(base * lab.plan.budget_factor))
                strategy = lab_strategy(
                    lab.plan.strategy, lab.opening_micros, lab.budget_micros, max_rounds=MAX_ROUNDS
                )
                final = await client.negotiate_auto(terms, strategy, on_step=lab.steps.append)
                lab.negotiation_id = final.negotiation_id
                lab.state = final.state
                lab.price_micros = final.current_terms.price_per_item.micros
                lab.agreement_id = final.agreement_id
                if final.agreement_draft:
                    draft = access_pb2.Agreement.FromString(final.agreement_draft)
                    lab.covered = list(draft.covered_item_ids)
                else:
                    lab.reason = next(
                        (s.reason for s in reversed(lab.steps) if s.kind == "terminate"), ""
                    )
                    lab.price_micros = None
                task.advance()

            await bounded(len(self.labs), self.labs, negotiate_one)
            ratifying = sum(1 for lab in self.labs if lab.covered)
            task.note(f"{ratifying} deal(s) put to the members")

    # --- 3. members ratify; payouts; labs fetch --------------------------------------------

    async def ratify(self) -> None:
        """Every covered member lists its open ratifications and votes on each."""
        by_negotiation = {lab.negotiation_id: lab for lab in self.labs if lab.covered}
        voters = sorted(
            {self.owner[i].index for lab in by_negotiation.values() for i in lab.covered}
        )
        with self.phases.phase("covered members ratify", len(voters)) as task:

            async def vote(index: int) -> None:
                member = self.members[index]
                client = member.connected()
                for open_ in await client.ratifications():
                    lab = by_negotiation.get(open_.negotiation_id)
                    if lab is None:
                        continue
                    approve, reasons = self.ballot(member, lab)
                    try:
                        await client.cast_ballot(open_.negotiation_id, approve, reasons=reasons)
                    except ServerError as exc:
                        # The vote was decided meanwhile: the ballot came too late to count.
                        if exc.reason not in ("NOT_RATIFYING", "RATIFICATION_CLOSED"):
                            raise
                        lab.after_decision += 1
                task.advance()

            await bounded(self.config.concurrency, voters, vote)
            for lab in by_negotiation.values():
                negotiation = await lab.connected().negotiation(lab.negotiation_id)
                lab.state = negotiation.state
                lab.agreement_id = negotiation.agreement_id
                if negotiation.state == negotiation_pb2.NEGOTIATION_STATE_TERMINATED:
                    lab.reason = "RATIFICATION_REJECTED"
                lab.ballots = await self.ballots_of(lab)
            agreed = sum(1 for lab in self.labs if lab.agreement_id)
            task.note(f"{agreed} of {len(by_negotiation)} ratified")

    def ballot(self, member: Member, lab: Lab) -> tuple[bool, list[str]]:
        """How a member votes on a lab's deal: a norm the lab's declaration breaks (a
        priced one, since hard ones keep the member out) often makes it reject, naming
        it; a few reject anyway; the rest approve."""
        draw = member.vote_draws[lab.index]
        declaration = lab.plan.declaration()
        broken = sorted({n.norm_id for n in member.norms if breaks(n, declaration)})
        if broken and draw < 0.6:
            return False, broken
        if draw < 0.06:
            return False, []
        return True, []

    async def ballots_of(self, lab: Lab) -> Ballots | None:
        """The tally the coalition published (its signed RatificationResult), if any."""
        async for entry in self.public.entries_by_subject(lab.key_id, "RatificationResult"):
            envelope = _leaf_statement(entry.leaf)
            result = statements.parse_payload(negotiation_pb2.RatificationResult, envelope.payload)
            if result.negotiation_id != lab.negotiation_id:
                continue
            return Ballots(
                approved=result.approved,
                approving_members=result.approving_members,
                rejecting_members=result.rejecting_members,
                approving_items=result.approving_items,
                rejecting_items=result.rejecting_items,
                rejecting_reasons={r.norm_id: r.members for r in result.rejecting_reasons},
                after_decision=lab.after_decision,
            )
        return None

    async def pay_and_fetch(self) -> None:
        """Read each deal's payout statement, let a few members verify their lines, and let
        each lab lease and fetch (decrypt and verify) what it licensed."""
        agreed = [lab for lab in self.labs if lab.agreement_id]
        total = sum(len(lab.covered) for lab in agreed)
        with self.phases.phase("payouts published; labs lease and fetch", total) as task:
            for lab in agreed:
                response = await self.public.payout_statement(lab.agreement_id)
                payout = statements.parse_payload(
                    negotiation_pb2.PayoutStatement, response.statement.payload
                )
                lab.payout_total_micros = payout.total.micros
                lab.payout_lines = len(payout.lines)
            covered = {self.owner[i].index for lab in agreed for i in lab.covered}
            for index in sorted(covered)[:EARNINGS_CHECKERS]:
                # verified_earnings checks each line against the coalition-signed statement.
                earned = await self.members[index].connected().verified_earnings()
                self.earnings_checked += 1
                self.earnings_checked_micros += sum(e.line.amount.micros for e in earned)

            async def fetch(lab: Lab) -> None:
                client = lab.connected()
                lease = await client.take_lease(lab.agreement_id)
                async for content in client.fetch_items(lease.lease.lease_id):
                    lab.fetched_items += 1
                    lab.fetched_bytes += len(content.data)
                    task.advance()

            await asyncio.gather(*(fetch(lab) for lab in agreed))
            paid = sum(lab.payout_total_micros for lab in agreed) / USD
            task.note(f"${paid:,.2f} paid out; {self.earnings_checked} members verified theirs")

    # --- 4. a withdrawal, notices and receipts ---------------------------------------------

    def _start_watching(self, agreed: Sequence[Lab]) -> None:
        for lab in agreed:
            self._watchers.append(asyncio.create_task(self._watch(lab)))

    async def _watch(self, lab: Lab) -> None:
        # Each notice is answered in its own task, so a lab that sits on one (the late lab)
        # still reads the next from its feed.
        async for notice in lab.connected().watch_withdrawals(0):
            answer = asyncio.create_task(self._answer(lab, notice))
            self._answers.add(answer)
            answer.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failures.append(task)

    def _raise_background_failure(self) -> None:
        """Raise what made a lab's feed or answer fail, rather than wait for it in vain."""
        for task in [*self._failures, *self._watchers]:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error

    async def _answer(self, lab: Lab, notice: access_pb2.WatchWithdrawalsResponse) -> None:
        if lab.answers_late:
            statement = access_pb2.WithdrawalNotice.FromString(notice.notice.payload)
            due = statement.respond_by.ToDatetime(tzinfo=UTC)
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + LATE_BY)
        await lab.connected().acknowledge(notice)
        lab.receipts += 1

    async def _wait_for(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not done():
            self._raise_background_failure()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def withdraw(self) -> None:
        """The member covered by the most deals withdraws everything; the labs answer."""
        agreed = [lab for lab in self.labs if lab.agreement_id]
        if not agreed:
            return
        # The lab that answers late: the Boulware one (closed, slow to give), else the last.
        late = next((lab for lab in agreed if lab.plan.strategy == "boulware"), agreed[-1])
        late.answers_late = True
        self._start_watching(agreed)
        covered_by = {lab.index: set(lab.covered) for lab in agreed}
        member = max(
            self.members,
            key=lambda m: (
                sum(1 for ids in covered_by.values() if ids & set(m.item_ids)),
                len(m.item_ids),
                -m.index,
            ),
        )
        with self.phases.phase("a member withdraws; labs answer", len(agreed)) as task:
            response = await member.connected().withdraw(everything=True)
            self.withdrawal_id = statements.statement_id(_leaf_statement(response.receipt.leaf))
            self.withdrawn_items = len(member.item_ids)
            self.expected_notices = response.notified_labs
            task.total(response.notified_labs)
            self.withdrawer = member

            def answered_in_time() -> int:
                return sum(lab.receipts for lab in agreed if not lab.answers_late)

            mine = set(member.item_ids)
            on_time = sum(
                1 for lab in agreed if not lab.answers_late and covered_by[lab.index] & mine
            )
            await self._wait_for(lambda: answered_in_time() >= on_time, SETTLE_TIMEOUT)
            task.advance(answered_in_time())
            task.note(
                f"{late.plan.name} has not answered yet (due in {DELETION_DEADLINE.seconds}s)"
            )

    # --- 5. a strike ------------------------------------------------------------------------

    async def strike_against(self) -> None:
        """Members covered by the late lab's deal pledge to strike against it; the pledge
        that meets the threshold executes them all at once."""
        target = next((lab for lab in self.labs if lab.answers_late), None)
        if target is None:
            return
        withdrawer = self.withdrawer
        pledgers = sorted(
            {self.owner[i].index for i in target.covered}
            - ({withdrawer.index} if withdrawer is not None else set())
        )
        if len(pledgers) < 2:
            return
        threshold = max(2, len(pledgers) // 4)
        chosen = pledgers[:threshold]
        week = timedelta(days=7)
        with self.phases.phase(f"strike against {target.plan.name}", threshold) as task:

            async def pledge(index: int) -> bool:
                response = (
                    await self.members[index]
                    .connected()
                    .pledge(target.key_id, min_members=threshold, expires_in=week)
                )
                task.advance()
                return response.executed

            executed_early = await bounded(self.config.concurrency, chosen[:-1], pledge)
            progress = await self.public.strikes()
            active = next(
                (row.active_pledges for row in progress if row.target_lab_key_id == target.key_id),
                0,
            )
            last = (
                await self.members[chosen[-1]]
                .connected()
                .pledge(target.key_id, min_members=threshold, expires_in=week)
            )
            task.advance()
            self.expected_notices += last.executed_pledges
            self.strike = StrikeResult(
                target=target.plan.name,
                threshold=threshold,
                pledges=len(chosen),
                active_before_last=active,
                executed=last.executed or any(executed_early),
                executed_pledges=last.executed_pledges,
            )
            task.note(f"{last.executed_pledges} pledges executed together")

    async def settle(self) -> None:
        """Wait until every notice was answered (the late lab answers after its deadline)."""
        if not self.expected_notices:
            return
        labs = [lab for lab in self.labs if lab.agreement_id]

        def receipts() -> int:
            return sum(lab.receipts for lab in labs)

        with self.phases.phase(
            "waiting for the last deletion receipts", self.expected_notices
        ) as task:
            task.advance(receipts())
            seen = receipts()
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while receipts() < self.expected_notices and time.monotonic() < deadline:
                self._raise_background_failure()
                await asyncio.sleep(0.05)
                now = receipts()
                task.advance(now - seen)
                seen = now
            late = next((lab.plan.name for lab in labs if lab.answers_late), "")
            task.note(f"{late} answered after the deadline" if late else "")

    # --- 6. the audit ---------------------------------------------------------------------

    async def audit(self) -> tuple[AuditResult, ComplianceReport]:
        """An auditor with no account replays the whole ledger and checks each lab."""
        auditor = self.public
        info = await auditor.log_info()
        response = await auditor.checkpoint()
        # The log's key is taken from the server here (trust on first use); a real auditor
        # pins it (`coalition audit verify` keeps it in a state file).
        checkpoint = verify_checkpoint(
            response.checkpoint, NoteVerifier.parse(info.verifier_key), info.origin
        )
        with self.phases.phase("auditor replays and verifies the ledger", checkpoint.size) as task:
            started = time.perf_counter()
            replay = LedgerReplay(
                expected_coalition_keys=[
                    ExpectedKey("the server's GetLogInfo", bytes(info.coalition_public_key))
                ]
            )
            leaves: list[tuple[int, bytes]] = []
            async for entry in auditor.entries(0, checkpoint.size):
                replay.feed(entry.index, entry.leaf, leaf_hash=entry.leaf_hash)
                leaves.append((entry.index, bytes(entry.leaf)))
                task.advance()
            result = replay.finish(checkpoint)
            assert result.coalition_key is not None  # finish() requires entry 0's registration
            report = compliance_report(leaves, coalition_key_id=result.coalition_key.key_id)
            names = {lab.key_id: lab.plan.name for lab in self.labs}
            order = {lab.key_id: lab.index for lab in self.labs}
            audit = AuditResult(
                entries=result.size,
                root_hash=result.root_hash.hex(),
                verified=True,
                parties=result.parties,
                kinds=dict(result.kinds),
                compliance=tuple(
                    ComplianceRow(
                        lab=names.get(row.lab_key_id, row.name or row.lab_key_id[:12]),
                        agreements=row.agreements,
                        releases=row.releases,
                        notices=row.notices,
                        in_time=row.receipts_in_time,
                        late=row.receipts_late,
                        missing=row.missing,
                        pending=row.pending,
                        releases_after_withdrawal=row.releases_after_withdrawal,
                    )
                    for row in sorted(report.labs, key=lambda r: order.get(r.lab_key_id, 99))
                ),
                seconds=time.perf_counter() - started,
            )
            task.note(f"{result.size} entries, root and signatures verified")
        return audit, report

    # --- the result -------------------------------------------------------------------------

    def result(self, audit: AuditResult, report: ComplianceReport, seconds: float) -> DemoResult:
        """Everything the run found, as plain values."""
        names = {lab.key_id: lab.plan.name for lab in self.labs}
        start = min((n.issued_time for n in report.notices), default=None)

        def after(moment: datetime) -> float:
            return (moment - start).total_seconds() if start is not None else 0.0

        notices = tuple(
            NoticeResult(
                lab=names.get(n.lab_key_id, n.lab_key_id[:12]),
                cause="withdrawal" if n.withdrawal_id == self.withdrawal_id else "strike",
                issued_s=after(n.issued_time),
                respond_by_s=after(n.respond_by),
                receipt_s=after(n.receipt_time) if n.receipt_time is not None else None,
                state=n.state.value,
            )
            for n in report.notices
        )
        holders: dict[str, int] = {}
        for member in self.members:
            for label in member.norm_labels:
                holders[label] = holders.get(label, 0) + 1
        return DemoResult(
            seed=self.config.seed,
            members=len(self.members),
            items=len(self.owner),
            item_bytes=sum(len(c) for m in self.members for c in m.contents),
            consents=len(self.members),
            norm_holders=dict(sorted(holders.items())),
            labs=tuple(self.lab_result(lab) for lab in self.labs),
            earnings_checked=self.earnings_checked,
            earnings_checked_micros=self.earnings_checked_micros,
            withdrawn_items=self.withdrawn_items,
            notices=notices,
            strike=self.strike,
            audit=audit,
            deletion_deadline_s=DELETION_DEADLINE.total_seconds(),
            phases=dict(self.phases.seconds),
            seconds=seconds,
        )

    def lab_result(self, lab: Lab) -> LabResult:
        """One lab's outcome."""
        state = negotiation_state_name(lab.state)
        outcome = "rejected" if lab.reason == "RATIFICATION_REJECTED" else state
        covered_members = len({self.owner[i].index for i in lab.covered})
        return LabResult(
            name=lab.plan.name,
            key_id=lab.key_id,
            strategy=lab.plan.strategy,
            model_release=lab.plan.release_name,
            opening_micros=lab.opening_micros,
            budget_micros=lab.budget_micros,
            reservation_micros=lab.reservation_micros,
            outcome=outcome,
            reason=lab.reason,
            price_micros=lab.price_micros,
            covered_items=len(lab.covered),
            covered_members=covered_members,
            agreement_id=lab.agreement_id,
            moves=tuple(Move(s.by, s.kind, s.round, s.price_micros) for s in lab.steps),
            supply=tuple(lab.supply),
            ballots=lab.ballots,
            payout_total_micros=lab.payout_total_micros,
            payout_lines=lab.payout_lines,
            fetched_items=lab.fetched_items,
            fetched_bytes=lab.fetched_bytes,
            answers_late=lab.answers_late,
        )


def progress_bar(console: Console) -> Progress:
    """The run's progress display: one line per phase, kept when done."""
    return Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[note]}"),
        console=console,
    )


async def run_demo(config: DemoConfig, console: Console | None = None) -> DemoResult:
    """Start a server in a temporary directory, play the scenario, stop the server."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="coalition-demo-") as tmp:
        root = Path(tmp)
        policy = root / "policy.yaml"
        policy.write_text(POLICY)
        settings = Settings(
            listen="127.0.0.1:0",
            data_dir=root / "data",
            origin="coalition.demo/log",
            auto_migrate=True,
            policy_file=policy,
            negotiation_sweep_seconds=0.5,
        )
        with progress_bar(console) as progress:
            phases = Phases(progress)
            server = CoalitionServer(settings)
            with phases.phase("server starts (SQLite, temporary directory)", 1) as task:
                port = await server.start()
                task.advance()
                task.note(f"127.0.0.1:{port}")
            play = Play(config, f"127.0.0.1:{port}", phases)
            try:
                return await play.run()
            finally:
                await play.close()
                await server.stop(grace=1.0)
