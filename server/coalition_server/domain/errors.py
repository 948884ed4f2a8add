"""The closed hierarchy of errors the domain reports; the API maps each to a gRPC status.

Every error carries a ``reason`` (UPPER_SNAKE_CASE, sent as google.rpc.ErrorInfo.reason) and
optional metadata. Messages never contain key material.
"""

from __future__ import annotations

from collections.abc import Mapping

from grpc import StatusCode


class DomainError(Exception):
    """Base class: a request the server refuses, with a machine-readable reason."""

    code: StatusCode = StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidArgumentError(DomainError):
    """The request is malformed or violates a documented constraint."""

    code = StatusCode.INVALID_ARGUMENT


class UnauthenticatedError(DomainError):
    """The call is not signed, or its signature, key or freshness is wrong."""

    code = StatusCode.UNAUTHENTICATED


class PermissionDeniedError(DomainError):
    """The authenticated caller may not do this."""

    code = StatusCode.PERMISSION_DENIED


class NotFoundError(DomainError):
    """The named thing does not exist."""

    code = StatusCode.NOT_FOUND


class AlreadyExistsError(DomainError):
    """The thing to create exists already."""

    code = StatusCode.ALREADY_EXISTS


class FailedPreconditionError(DomainError):
    """The system is not in a state where this is allowed."""

    code = StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(DomainError):
    """A size or rate limit was exceeded."""

    code = StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(DomainError):
    """A dependency (the database) is unreachable; the call may be retried."""

    code = StatusCode.UNAVAILABLE
