"""Key-encryption keys (KEKs): the mechanism that wraps, unwraps and destroys data keys.

Every uploaded item is encrypted under its own random data key (DEK, see
:mod:`coalition.content`). The database never stores a DEK: it stores the DEK
wrapped by a KEK that belongs to the item's contributor (a :class:`WrappedKey`). Destroying the
KEK therefore shreds every DEK it wrapped, and with them the content, whatever copies of the
database or of the ciphertext survive.

Which KEK is current for a contributor, when one is retired and when a retired one is destroyed
is policy, kept by the database layer; this module provides the mechanism (:class:`KeyProvider`,
with :class:`FileKeyProvider` as the default) and the pure retention rule
(:class:`RetentionPolicy`).

Key material never appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DEFAULT_RETENTION",
    "DEK_SIZE",
    "KEK_SIZE",
    "FileKeyProvider",
    "KeyNotFoundError",
    "KeyProvider",
    "KeyProviderError",
    "RetentionPolicy",
    "UnwrapError",
    "WrappedKey",
]

DEK_SIZE: Final = 32
"""Bytes in a data key (AES-256)."""
KEK_SIZE: Final = 32
"""Bytes in a key-encryption key of the file provider (AES-256)."""
DEFAULT_RETENTION: Final = timedelta(days=7)
"""How long a retired KEK is kept before it is destroyed, unless configured otherwise."""

# Domain separation: a wrapped DEK can never be mistaken for any other AES-GCM output.
_WRAP_LABEL: Final = b"coalition-dek-v1"
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_WRAPPED_SIZE: Final = _NONCE_SIZE + DEK_SIZE + _TAG_SIZE

# KEK file: magic, owner (2-byte big-endian length, UTF-8), then the raw key.
_FILE_MAGIC: Final = b"coalition-kek-v1\n"
_FILE_SUFFIX: Final = ".kek"
_MAX_OWNER_BYTES: Final = 1024
# A KEK id doubles as a file name: only this shape is accepted, so no id can name a path.
_KEK_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_O_NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC: Final[int] = getattr(os, "O_CLOEXEC", 0)


class KeyProviderError(Exception):
    """Base of every error a key provider raises on purpose."""


class KeyNotFoundError(KeyProviderError):
    """The KEK is unknown or has been destroyed: what it wrapped is gone for good."""


class UnwrapError(KeyProviderError):
    """A wrapped key does not open: tampered, truncated, or other associated data."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a KEK: what the database stores, never the data key itself.

    ``ciphertext`` is opaque to everyone but the provider that made it (for
    :class:`FileKeyProvider`: nonce(12) || AES-256-GCM ciphertext and tag).
    """

    kek_id: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kek_id, str) or not self.kek_id:
            raise ValueError("a wrapped key names its KEK by a non-empty string id")
        if not isinstance(self.ciphertext, bytes) or not self.ciphertext:
            raise ValueError("a wrapped key's ciphertext is non-empty bytes")

    def __repr__(self) -> str:
        # The ciphertext is not secret, but it is noise in logs: its length says enough.
        return f"WrappedKey(kek_id={self.kek_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"


class KeyProvider(abc.ABC):
    """Creates, uses and destroys KEKs; implement it to keep KEKs in a KMS.

    An implementation must make :meth:`destroy_kek` final: once it returns, no later
    :meth:`unwrap` with that KEK may succeed, in this process or any other.
    """

    @abc.abstractmethod
    def create_kek(self, owner: str) -> str:
        """Create a new KEK for ``owner`` (a contributor's key id) and return its id."""

    @abc.abstractmethod
    def wrap(self, kek_id: str, dek: bytes, associated_data: bytes) -> WrappedKey:
        """Wrap the 32-byte ``dek`` under the KEK, binding ``associated_data``.

        ``associated_data`` must name what the DEK is for (the item and its contributor) so a
        wrapped key moved to another row does not unwrap. Raises KeyNotFoundError if the KEK
        is unknown or destroyed.
        """

    @abc.abstractmethod
    def unwrap(self, wrapped: WrappedKey, associated_data: bytes) -> bytes:
        """The data key inside ``wrapped``.

        Raises KeyNotFoundError if its KEK is unknown or destroyed, UnwrapError if
        ``wrapped`` was altered or ``associated_data`` differs from the one it was wrapped with.
        """

    @abc.abstractmethod
    def destroy_kek(self, kek_id: str) -> None:
        """Destroy the KEK, irreversibly. Destroying an absent KEK does nothing."""

    @abc.abstractmethod
    def kek_exists(self, kek_id: str) -> bool:
        """Whether the KEK exists (has been created and not destroyed)."""


class FileKeyProvider(KeyProvider):
    """KEKs as files in a directory of the server's data directory.

    One file per KEK, ``<kek_id>.kek``, created exclusively with mode 0600 inside a 0700
    directory, and fsync'd with its directory before its id is returned. Destroying a KEK
    overwrites the file with zeros, fsyncs it, unlinks it and fsyncs the directory.

    Overwriting is best effort: on copy-on-write or journaling file systems, SSDs and backups
    the old blocks may survive; an operator who needs a stronger guarantee plugs a KMS. Keys
    are read from disk on every use and not cached, so a KEK destroyed by one replica sharing
    the directory is gone for all of them at once.

    Wrapping is AES-256-GCM with a random 96-bit nonce; the stored ciphertext is
    nonce(12) || ciphertext || tag, with associated data ``b"coalition-dek-v1" +
    associated_data``.
    """

    __slots__ = ("_directory",)

    def __init__(self, directory: Path) -> None:
        """Use ``directory``, creating it (mode 0700) if missing.

        Raises KeyProviderError if it exists but is not a directory, or others may access it.
        """
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        else:
            # mkdir's mode is filtered by the umask; set it outright.
            os.chmod(directory, 0o700)
            _fsync_directory(directory.parent)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise KeyProviderError(f"{directory} is not a directory")
        if info.st_mode & 0o077:
            raise KeyProviderError(
                f"{directory} is accessible by others (mode {oct(info.st_mode & 0o777)}); "
                "chmod 700 it"
            )
        self._directory = directory

    @property
    def directory(self) -> Path:
        """The directory holding the KEK files."""
        return self._directory

    def __repr__(self) -> str:
        return f"FileKeyProvider(directory={str(self._directory)!r})"

    def create_kek(self, owner: str) -> str:
        """Create a new random KEK file for ``owner`` and return its id (32 hex digits)."""
        if not isinstance(owner, str) or not owner:
            raise ValueError("a KEK's owner is a non-empty string")
        owner_bytes = owner.encode("utf-8")
        if len(owner_bytes) > _MAX_OWNER_BYTES:
            raise ValueError(f"a KEK's owner is at most {_MAX_OWNER_BYTES} bytes")
        content = (
            _FILE_MAGIC
            + len(owner_bytes).to_bytes(2, "big")
            + owner_bytes
            + secrets.token_bytes(KEK_SIZE)
        )
        kek_id = secrets.token_hex(16)
        path = self._path(kek_id)
        # O_EXCL: never overwrite (a 128-bit random id cannot collide, but a bug could);
        # O_NOFOLLOW: never write through a planted symlink; 0600 from the first instant.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            _fsync_directory(self._directory)
        except BaseException:
            # Never leave a partial key behind: its id was not handed out.
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return kek_id

    def wrap(self, kek_id: str, dek: bytes, associated_data: bytes) -> WrappedKey:
        """Wrap ``dek`` under the KEK (see the class docstring for the format)."""
        if not isinstance(dek, bytes) or len(dek) != DEK_SIZE:
            raise ValueError(f"a data key is {DEK_SIZE} bytes")
        if not isinstance(associated_data, bytes):
            raise TypeError("associated data must be bytes")
        kek = self._load(kek_id)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = AESGCM(kek).encrypt(nonce, dek, _WRAP_LABEL + associated_data)
        return WrappedKey(kek_id, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, associated_data: bytes) -> bytes:
        """Open ``wrapped``; KeyNotFoundError if its KEK is gone, UnwrapError if altered."""
        if not isinstance(wrapped, WrappedKey):
            raise TypeError("expected a WrappedKey")
        if not isinstance(associated_data, bytes):
            raise TypeError("associated data must be bytes")
        kek = self._load(wrapped.kek_id)
        blob = wrapped.ciphertext
        if len(blob) != _WRAPPED_SIZE:
            raise UnwrapError(f"wrapped key under KEK {wrapped.kek_id} is malformed")
        try:
            dek = AESGCM(kek).decrypt(
                blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _WRAP_LABEL + associated_data
            )
        except InvalidTag:
            raise UnwrapError(
                f"wrapped key under KEK {wrapped.kek_id} does not open: "
                "altered, or other associated data"
            ) from None
        return dek

    def destroy_kek(self, kek_id: str) -> None:
        """Overwrite the KEK file with zeros, fsync, unlink, fsync the directory.

        Idempotent: an already destroyed KEK is fine. Raises KeyNotFoundError only for an
        id this provider could never have made (a bug in the caller, never silently ignored).
        """
        path = self._path(kek_id)
        try:
            fd = os.open(path, os.O_WRONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as e:
            raise KeyProviderError(f"KEK file {path} cannot be opened: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            written = 0
            zeros = bytes(size)
            while written < size:
                written += os.write(fd, zeros[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_directory(self._directory)

    def kek_exists(self, kek_id: str) -> bool:
        """Whether the KEK file exists; False for any id this provider could not have made."""
        if not _valid_kek_id(kek_id):
            return False
        return os.path.lexists(self._path(kek_id))

    def _path(self, kek_id: str) -> Path:
        if not _valid_kek_id(kek_id):
            # The id is not echoed: a caller mixing up arguments might pass anything here.
            raise KeyNotFoundError("malformed KEK id")
        return self._directory / f"{kek_id}{_FILE_SUFFIX}"

    def _load(self, kek_id: str) -> bytes:
        path = self._path(kek_id)
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            raise KeyNotFoundError(f"KEK {kek_id} does not exist or was destroyed") from None
        except OSError as e:
            # E.g. ELOOP: a symlink planted where a KEK file belongs.
            raise KeyProviderError(f"KEK file {path} cannot be opened: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
                raise KeyProviderError(f"KEK file {path} is not a private regular file")
            # Read at most one byte more than the largest valid file, to detect garbage.
            content = f.read(len(_FILE_MAGIC) + 2 + _MAX_OWNER_BYTES + KEK_SIZE + 1)
        return _parse_kek_file(content, path)


def _parse_kek_file(content: bytes, path: Path) -> bytes:
    head = len(_FILE_MAGIC)
    if len(content) < head + 2 or content[:head] != _FILE_MAGIC:
        raise KeyProviderError(f"KEK file {path} is corrupt")
    owner_len = int.from_bytes(content[head : head + 2], "big")
    if len(content) != head + 2 + owner_len + KEK_SIZE:
        raise KeyProviderError(f"KEK file {path} is corrupt")
    return content[-KEK_SIZE:]


def _valid_kek_id(kek_id: object) -> bool:
    return isinstance(kek_id, str) and _KEK_ID_RE.fullmatch(kek_id) is not None


def _fsync_directory(directory: Path) -> None:
    # Makes a file's creation or removal durable, not only its content.
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RetentionPolicy:
    """When a retired KEK is destroyed: at ``retired_at + retention``.

    Keeping a retired KEK for a while lets in-flight work that still holds its wrapped keys
    finish; destroying it afterwards bounds how long old key material lives.
    """

    retention: timedelta = DEFAULT_RETENTION

    def __post_init__(self) -> None:
        if not isinstance(self.retention, timedelta) or self.retention < timedelta(0):
            raise ValueError("retention is a non-negative timedelta")

    def destroy_at(self, retired_at: datetime) -> datetime:
        """When a KEK retired at ``retired_at`` is due for destruction."""
        _require_aware(retired_at)
        return retired_at + self.retention

    def destroy_due(self, retired_at: datetime, now: datetime) -> bool:
        """Whether a KEK retired at ``retired_at`` must be destroyed at ``now``.

        Both times must be timezone-aware (a naive time is ambiguous; see
        ``coalition_server.timeutil.as_utc``).
        """
        _require_aware(now)
        return now >= self.destroy_at(retired_at)


def _require_aware(value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")
