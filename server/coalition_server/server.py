"""Assembles the gRPC server: services, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from coalition.v1 import (
    access_pb2,
    consent_pb2,
    disputes_pb2,
    items_pb2,
    ledger_pb2,
    negotiation_pb2,
    party_pb2,
    strike_pb2,
)
from coalition_server.api.access import AccessServicer
from coalition_server.api.auth import Authenticator
from coalition_server.api.consent import ConsentServicer
from coalition_server.api.dispatch import Dispatcher
from coalition_server.api.disputes import DisputeServicer
from coalition_server.api.items import ItemServicer
from coalition_server.api.ledger import LedgerServicer
from coalition_server.api.negotiation import NegotiationServicer
from coalition_server.api.party import PartyServicer
from coalition_server.api.strikes import StrikeServicer
from coalition_server.config import Settings
from coalition_server.context import ServerContext
from coalition_server.keys.provider import FileKeyProvider
from coalition_server.keys.server_keys import ServerKeys
from coalition_server.metrics import ServerMetrics
from coalition_server.policy import CoalitionPolicy
from coalition_server.store import migrate
from coalition_server.store.commit_notices import CommitNotices
from coalition_server.store.database import Database
from coalition_server.store.items import destroy_retired_keks, retire_aged_keks
from coalition_server.store.ledger import LedgerStore, LogIdentity, StoredCheckpoint
from coalition_server.store.parties import PartyStore, register_coalition
from coalition_server.store.sequencer import Commit, Sequencer
from coalition_server.store.tree_cache import TreeCache
from coalition_server.timeutil import utcnow

log = logging.getLogger(__name__)

SERVICES = (
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    party_pb2.DESCRIPTOR.services_by_name["PartyService"],
    items_pb2.DESCRIPTOR.services_by_name["ItemService"],
    consent_pb2.DESCRIPTOR.services_by_name["ConsentService"],
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
    negotiation_pb2.DESCRIPTOR.services_by_name["NegotiationService"],
    strike_pb2.DESCRIPTOR.services_by_name["StrikeService"],
    disputes_pb2.DESCRIPTOR.services_by_name["DisputeService"],
)


class NotMigratedError(Exception):
    """The database schema is not at this server's revision."""


class CoalitionServer:
    """One server process. ``start`` binds and serves; ``stop`` drains and closes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        # Prometheus metrics, only when served (--metrics-listen); metrics_port is the bound port.
        self.metrics: ServerMetrics | None = None
        self.metrics_port: int | None = None
        self._db: Database | None = None
        self._sequencer: Sequencer | None = None
        self.commit_notices: CommitNotices | None = None
        self._background: list[asyncio.Task[None]] = []
        # The tree's hashes in memory, for proofs (filled in the background at start).
        self.tree: TreeCache | None = None

    async def start(self) -> int:
        """Open the database, check the log, bind and start serving; return the port."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = self._db = Database.connect(settings.database_url())
        if settings.should_auto_migrate():
            await migrate.upgrade(db)
        elif not await migrate.is_current(db):
            raise NotMigratedError(
                "the database is not migrated to this version: run `coalition-server migrate`"
            )
        keys = ServerKeys.load(settings.data_dir, settings.origin)
        tree = self.tree = TreeCache()
        ledger = LedgerStore(db, tree)
        await ledger.initialise(
            LogIdentity(
                origin=keys.log_signer.name,
                verifier_key=keys.log_signer.verifier.verifier_key,
                coalition_public_key=keys.coalition_key.public_key.raw,
            ),
            keys.log_signer,
        )
        metrics = self.metrics = ServerMetrics() if settings.metrics_listen else None

        def committed(commit: Commit) -> None:
            tree.extend(commit.old_size, commit.new_size, commit.nodes)
            ledger.saw_checkpoint(StoredCheckpoint(commit.new_size, commit.root_hash, commit.note))
            notices.announce(commit.new_size)

        sequencer = self._sequencer = Sequencer(
            db, keys.log_signer, max_batch=settings.max_batch, metrics=metrics, on_commit=committed
        )
        # Other replicas' commits wake this process's followers (PostgreSQL only).
        notices = self.commit_notices = CommitNotices(db.url, sequencer.wake_followers)
        sequencer.start()
        notices.start()
        parties = self.parties = PartyStore(db)
        dispatcher = Dispatcher(
            Authenticator(parties, settings.auth_window_seconds), observer=metrics
        )
        self.context = ServerContext(
            database=db,
            sequencer=sequencer,
            coalition_key=keys.coalition_key,
            key_provider=FileKeyProvider(settings.kek_directory()),
            currency=settings.currency,
            policy=CoalitionPolicy.load(settings.policy_file),
            follow_poll_seconds=settings.follow_poll_seconds,
        )
        await register_coalition(sequencer, parties, keys.coalition_key, keys.log_signer.name)
        self.negotiations = NegotiationServicer(self.context)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(
                _every(settings.retention_check_seconds, self.destroy_retired_keys),
                name="kek-retention",
            ),
            loop.create_task(
                _every(settings.negotiation_sweep_seconds, self.negotiations.expire_due),
                name="negotiation-deadlines",
            ),
            loop.create_task(ledger.warm(), name="tree-cache-warm-up"),
        ]
        if metrics is not None:
            metrics.declare_methods(SERVICES)
            self._background.append(
                loop.create_task(
                    _every(settings.metrics_refresh_seconds, self.refresh_metrics),
                    name="metrics-refresh",
                )
            )

        server = self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        servicers = (
            LedgerServicer(ledger),
            PartyServicer(parties, sequencer),
            ItemServicer(self.context),
            ConsentServicer(self.context, ledger),
            AccessServicer(self.context),
            self.negotiations,
            StrikeServicer(self.context, parties),
            DisputeServicer(self.context),
        )
        server.add_generic_rpc_handlers(
            tuple(
                dispatcher.handler(service, servicer)
                for service, servicer in zip(SERVICES, servicers, strict=True)
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [service.full_name for service in SERVICES]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        self.port = self._bind(server)
        if metrics is not None and settings.metrics_listen:
            self.metrics_port = metrics.serve(settings.metrics_listen)
        await server.start()
        for service in SERVICES:
            await self._health.set(service.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("coalition-server listening on %s (port %d)", settings.listen, self.port)
        return self.port

    def _bind(self, server: grpc.aio.Server) -> int:
        settings = self.settings
        if settings.tls_cert and settings.tls_key:
            # With a client CA, mutual TLS: the handshake fails unless the client presents a
            # certificate that CA signed, before any call reaches a servicer.
            client_ca = settings.tls_client_ca
            credentials = grpc.ssl_server_credentials(
                [(_read(settings.tls_key), _read(settings.tls_cert))],
                root_certificates=_read(client_ca) if client_ca is not None else None,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(settings.listen, credentials)
        else:
            port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise OSError(f"could not bind {settings.listen}")
        return port

    @property
    def sequencer_batches(self) -> int:
        """How many batches (signed checkpoints) this process has sequenced."""
        return self._sequencer.batches if self._sequencer is not None else 0

    async def wait(self) -> None:
        """Serve until the server is stopped."""
        assert self._server is not None
        await self._server.wait_for_termination()

    async def destroy_retired_keys(self) -> list[str]:
        """Rotate old KEKs, re-wrap data keys off retired ones, destroy those past retention.

        Returns the ids of the KEKs destroyed.
        """
        context = self.context
        now = utcnow()
        async with context.database.read_write.begin() as conn:
            # Rotation by age, then moving data keys off retired KEKs, then destruction.
            await retire_aged_keks(conn, now - self.settings.kek_max_age, now)
            return await destroy_retired_keks(
                conn, context.key_provider, now - self.settings.kek_retention, now
            )

    async def refresh_metrics(self) -> None:
        """Re-read the database-backed gauges (tree size, open withdrawal notices)."""
        if self.metrics is not None and self._db is not None:
            await self.metrics.refresh(self._db)

    async def stop(self, grace: float = 5.0) -> None:
        """Go NOT_SERVING, let in-flight calls finish within ``grace``, then close."""
        await self._health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
        # Wait for them to unwind: a job cancelled mid-query still closes its connection,
        # which needs the database (disposed below); an orphaned task would hang the loop's
        # shutdown forever.
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self._server is not None:
            await self._server.stop(grace)
        if self._sequencer is not None:
            await self._sequencer.stop()
        if self.commit_notices is not None:
            await self.commit_notices.stop()
        if self.metrics is not None:
            # The exporter's shutdown waits for its poll loop: not on the event loop.
            await asyncio.to_thread(self.metrics.close)
        if self._db is not None:
            await self._db.dispose()


async def _every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``seconds`` until cancelled; a failure is logged and retried."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("background job %s failed; will retry", getattr(job, "__name__", job))
        await asyncio.sleep(seconds)


def _read(path: Path) -> bytes:
    return Path(path).read_bytes()
