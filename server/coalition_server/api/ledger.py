"""LedgerService: public reads of entries, checkpoints and proofs."""

from __future__ import annotations

from coalition.keys import key_id
from coalition.v1 import ledger_pb2
from coalition_server.api.auth import Policy
from coalition_server.api.dispatch import Call, rpc
from coalition_server.domain.errors import InvalidArgumentError
from coalition_server.domain.pagination import decode_token, encode_token, page_size
from coalition_server.store.ledger import LedgerStore, StoredEntry

MAX_KIND_LENGTH = 128


def _entry(entry: StoredEntry) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(index=entry.index, leaf=entry.leaf, leaf_hash=entry.leaf_hash)


class LedgerServicer:
    """Serves the public ledger."""

    def __init__(self, ledger: LedgerStore) -> None:
        self._ledger = ledger

    @rpc(Policy.PUBLIC)
    async def GetLogInfo(
        self, request: ledger_pb2.GetLogInfoRequest, call: Call
    ) -> ledger_pb2.GetLogInfoResponse:
        identity = await self._ledger.identity()
        return ledger_pb2.GetLogInfoResponse(
            origin=identity.origin,
            verifier_key=identity.verifier_key,
            coalition_key_id=key_id(identity.coalition_public_key),
            coalition_public_key=identity.coalition_public_key,
        )

    @rpc(Policy.PUBLIC)
    async def GetCheckpoint(
        self, request: ledger_pb2.GetCheckpointRequest, call: Call
    ) -> ledger_pb2.GetCheckpointResponse:
        latest = await self._ledger.latest_checkpoint()
        return ledger_pb2.GetCheckpointResponse(
            checkpoint=latest.note, tree_size=latest.tree_size, root_hash=latest.root_hash
        )

    @rpc(Policy.PUBLIC)
    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, call: Call
    ) -> ledger_pb2.ListEntriesResponse:
        start = decode_token(request.page_token) if request.page_token else request.start
        latest = await self._ledger.latest_checkpoint()
        end = min(request.end or latest.tree_size, latest.tree_size)
        if request.end and request.end < request.start:
            raise InvalidArgumentError("BAD_RANGE", "end must not be before start")
        size = page_size(request.page_size)
        entries = await self._ledger.entries(start, end, size) if start < end else []
        next_index = start + len(entries)
        token = encode_token(next_index) if entries and next_index < end else ""
        return ledger_pb2.ListEntriesResponse(
            entries=[_entry(e) for e in entries], next_page_token=token
        )

    @rpc(Policy.PUBLIC)
    async def GetEntry(
        self, request: ledger_pb2.GetEntryRequest, call: Call
    ) -> ledger_pb2.GetEntryResponse:
        selector = request.WhichOneof("selector")
        if selector == "index":
            entry = await self._ledger.entry(index=request.index)
        elif selector == "leaf_hash":
            entry = await self._ledger.entry(leaf_hash=request.leaf_hash)
        else:
            raise InvalidArgumentError("MISSING_SELECTOR", "give an index or a leaf_hash")
        return ledger_pb2.GetEntryResponse(entry=_entry(entry))

    @rpc(Policy.PUBLIC)
    async def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, call: Call
    ) -> ledger_pb2.GetInclusionProofResponse:
        selector = request.WhichOneof("selector")
        if selector == "index":
            entry = await self._ledger.entry(index=request.index)
        elif selector == "leaf_hash":
            entry = await self._ledger.entry(leaf_hash=request.leaf_hash)
        else:
            raise InvalidArgumentError("MISSING_SELECTOR", "give an index or a leaf_hash")
        size, proof, latest = await self._ledger.inclusion_proof(entry.index, request.tree_size)
        return ledger_pb2.GetInclusionProofResponse(
            index=entry.index,
            tree_size=size,
            proof=proof,
            leaf=entry.leaf,
            checkpoint=latest.note if request.tree_size == 0 else "",
        )

    @rpc(Policy.PUBLIC)
    async def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, call: Call
    ) -> ledger_pb2.GetConsistencyProofResponse:
        size, proof, latest = await self._ledger.consistency_proof(
            request.first_size, request.second_size
        )
        return ledger_pb2.GetConsistencyProofResponse(
            first_size=request.first_size,
            second_size=size,
            proof=proof,
            checkpoint=latest.note if request.second_size == 0 else "",
        )

    @rpc(Policy.PUBLIC)
    async def ListEntriesBySubject(
        self, request: ledger_pb2.ListEntriesBySubjectRequest, call: Call
    ) -> ledger_pb2.ListEntriesBySubjectResponse:
        if not request.subject_key_id and not request.kind:
            raise InvalidArgumentError("MISSING_FILTER", "give subject_key_id and/or kind")
        if len(request.subject_key_id) > 64 or len(request.kind) > MAX_KIND_LENGTH:
            raise InvalidArgumentError("BAD_FILTER", "subject_key_id or kind is too long")
        start = decode_token(request.page_token) if request.page_token else 0
        size = page_size(request.page_size)
        entries = await self._ledger.entries_by_subject(
            request.subject_key_id, request.kind, start, size + 1
        )
        more = len(entries) > size
        entries = entries[:size]
        token = encode_token(entries[-1].index + 1) if more else ""
        return ledger_pb2.ListEntriesBySubjectResponse(
            entries=[_entry(e) for e in entries], next_page_token=token
        )
