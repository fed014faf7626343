"""The user's own key, for the ``bitfi`` command: its file, and the record of what it signed.

Data path: ``--key PATH``, ``$BITFI_KEY`` or :func:`default_key_path` ->
:func:`open_user_key` (reads the key file, making it first if asked) ->
:class:`UserKey` (the seed; :meth:`UserKey.author` signs) -> the command
(:func:`bitfitech.cli.send_signed`) picks the next seq with the key's lock
held, records the event in :class:`SentEvents`, and only then sends it
(``POST /events``).  Only :mod:`bitfitech.cli` uses this module; it runs
without Twisted, as the command does.

What is stored where:

- The key: ``$XDG_CONFIG_HOME/bitfi/key``, else ``~/.config/bitfi/key``,
  unless ``--key`` or ``$BITFI_KEY`` names another file.  It is a node key
  file (:mod:`bitfitech.identity`, whose helpers write and read it)::

      bitfi-ed25519-seed-v1
      <the 32-byte Ed25519 seed as 64 lowercase hex digits>

  so a node's ``node.key`` serves as a user's key.
- The record: ``<key file>.sent``, beside the key, JSON: the key's last
  events on each market (their text and signature, nothing secret).

Modes: a new key file is made with mode 0600 and published whole (a crash
never leaves half a key; an existing key is never replaced), its directory
with mode 0700; the record is written atomically with mode 0600.  A key
file that group or others may read is refused, as ssh refuses one: the
node tightens its own key's mode, but the user's file is the user's to
fix.

Locking: the key file stays open in its :class:`UserKey`, and an
exclusive ``flock`` on it (:meth:`UserKey.locked`) is held from choosing a
seq to recording the event, so that two ``bitfi`` commands never sign the
same seq.

The secret: read from the key file into its :class:`UserKey` and the
:class:`~bitfitech.market.events.Author` that signs with it, and nowhere
else: not in a repr, a message, a request or the record.  A message about
a damaged key file never quotes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import nacl.bindings

from .identity import (
    MAX_KEY_FILE_SIZE,
    SEED_LENGTH,
    CorruptKeyFileError,
    create_key_file,
    decode_key_file,
)

if TYPE_CHECKING:
    from .market.events import Author

MAX_EVENTS_BATCH = 100
"""The most events one ``POST /events/batch`` takes."""
KEPT_EVENTS = MAX_EVENTS_BATCH - 1
"""The events of each market that :class:`SentEvents` keeps: those a node
missed go again in one batch with the next event."""


class UserKeyError(Exception):
    """The user's key file, or the record of its events, cannot be used."""


def default_key_path(environ: Mapping[str, str]) -> str:
    """
    Where the user's key lives unless ``--key`` or ``$BITFI_KEY`` says:
    ``$XDG_CONFIG_HOME/bitfi/key``, else ``~/.config/bitfi/key`` (a relative
    ``$XDG_CONFIG_HOME`` is ignored, as the XDG spec says).

    :param environ: the environment.
    """
    config = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config):
        home = environ.get("HOME") or os.path.expanduser("~")
        config = os.path.join(home, ".config")
    return os.path.join(config, "bitfi", "key")


class UserKey:
    """
    The user's own Ed25519 key, read from its file (:func:`open_user_key`).

    It signs this user's events (:meth:`author`); its secret stays in this
    object and in the :class:`~bitfitech.market.events.Author` it makes,
    and is in no request, message or repr.  The open file also serves as a
    lock (:meth:`locked`), so that two ``bitfi`` commands never pick the
    same seq.  Close it when done (it is a context manager).

    :ivar path: the key file.
    :ivar public_key: the public key, 64 lowercase hex digits: the
        ``author`` of the events it signs.
    """

    def __init__(self, path: str, fd: int, seed: bytes) -> None:
        """
        :param path: the key file.
        :param fd: the key file, open; this object closes it.
        :param seed: the 32-byte Ed25519 seed.
        """
        self.path = path
        self._fd = fd
        self._seed = seed
        self.public_key: str = nacl.bindings.crypto_sign_seed_keypair(seed)[0].hex()

    def __repr__(self) -> str:
        return f"<UserKey {self.public_key} in {self.path}>"

    def __enter__(self) -> UserKey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def author(self, network: str, pair: str) -> Author:
        """The signer of this key's events on C{network}'s C{pair} market."""
        from .market.events import Author

        return Author(self._seed, network, pair)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the key's lock (waiting for another ``bitfi`` that holds it)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the key file (and so release the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_user_key(path: str, create: bool) -> tuple[UserKey, bool]:
    """
    The user's key in C{path}, made first if there is none and C{create}.

    A new key is 32 bytes from :func:`secrets.token_bytes`, written by
    :func:`~bitfitech.identity.create_key_file` (mode 0600, published
    whole, never replacing a key that is there); its directory is made
    with mode 0700.  A key file that group or others may read is refused,
    as ssh refuses one.

    :param path: the key file.
    :param create: whether to make the key if there is none.
    :return: the key, and whether it was made now.
    :raises UserKeyError: if there is no key and not C{create}, or the file
        cannot be made, read or used.
    """
    made = False
    try:
        fd, seed = _read_key(path)
    except FileNotFoundError:
        if not create:
            raise UserKeyError(
                f"there is no key in {path} yet: `bitfi key` makes one "
                "(or give the file of yours with --key PATH)"
            ) from None
        made = _create_key(path)
        try:
            fd, seed = _read_key(path)
        except FileNotFoundError:
            raise UserKeyError(f"your key file {path} vanished as it was made") from None
    return UserKey(path, fd, seed), made


def _read_key(path: str) -> tuple[int, bytes]:
    """
    Open the key file C{path}, check its mode and read its seed.

    :return: the open file, and the seed.
    :raises FileNotFoundError: if there is no such file.
    :raises UserKeyError: if it cannot be used.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise UserKeyError(f"cannot read your key file {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserKeyError(f"your key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise UserKeyError(
                f"your key file {path} may be read by others (mode {mode:04o}): it must be "
                f"yours alone; fix it with: chmod 600 {shlex.quote(path)}"
            )
        chunks = []
        size = 0
        while size <= MAX_KEY_FILE_SIZE:
            chunk = os.read(fd, MAX_KEY_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return fd, _decode_key(path, b"".join(chunks))
    except OSError as error:
        os.close(fd)
        raise UserKeyError(f"cannot read your key file {path}: {error.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def _decode_key(path: str, data: bytes) -> bytes:
    """
    The seed in C{data}, read as a node's key is
    (:func:`~bitfitech.identity.decode_key_file`); the messages never quote
    the file.

    :raises UserKeyError: if C{data} is not a key file's text, or is too long.
    """
    if len(data) > MAX_KEY_FILE_SIZE:
        raise UserKeyError(f"{path} is not a bitfi key file (it is far too large)")
    try:
        return decode_key_file(path, data)
    except CorruptKeyFileError as error:
        if error.foreign:
            raise UserKeyError(f"{path} is not a bitfi key file ({error.reason})") from None
        raise UserKeyError(
            f"your key file {path} is damaged: its second line must be the "
            f"{2 * SEED_LENGTH} hex digits of the seed, and nothing may follow"
        ) from None


def _create_key(path: str) -> bool:
    """
    Write a new key to C{path} unless a key is there: whether this made it.

    :raises UserKeyError: if the file or its directory cannot be made.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return create_key_file(path, secrets.token_bytes(SEED_LENGTH))
    except OSError as error:
        raise UserKeyError(f"cannot make your key file {path}: {error.strerror}") from None


class SentEvents:
    """
    The events a key signed lately, per market: ``<key file>.sent`` beside
    the key, JSON, mode 0600 (no secret in it, but it tells what you traded)::

        {"version": 1, "markets": {"<network> <pair>": [[text, sig], ...]}}

    The events of a market are the key's last ones on it, seq after seq
    (at most :data:`KEPT_EVENTS`).  They are what the command knows of its
    own chain when the node it talks to does not hold all of it (another
    node took them and has not relayed them yet): it never signs a seq it
    signed before, keeps its Lamport times rising, and sends the node the
    events it misses (:func:`bitfitech.cli.send_signed`).

    :ivar path: the file.
    """

    VERSION = 1

    def __init__(self, path: str, markets: dict[str, list[tuple[str, str]]]) -> None:
        """
        :param path: the file.
        :param markets: the events of each market (``"<network> <pair>"``),
            oldest first, as ``(text, sig)``.
        """
        self.path = path
        self._markets = markets

    @classmethod
    def load(cls, path: str) -> SentEvents:
        """
        The record in C{path} (an empty one if there is no file).

        :raises UserKeyError: if the file cannot be read or is not a record.
        """
        try:
            with open(path, "rb") as record:
                data = record.read(64 * 1024 * 1024)
        except FileNotFoundError:
            return cls(path, {})
        except OSError as error:
            raise UserKeyError(f"cannot read {path}: {error.strerror}") from None
        try:
            document = json.loads(data)
            if document["version"] != cls.VERSION:
                raise ValueError("another version")
            markets = {
                str(market): [(str(text), str(sig)) for text, sig in events]
                for market, events in document["markets"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserKeyError(
                f"{path} is not a record of sent events (version {cls.VERSION}); move it away "
                "to start afresh from what the node holds"
            ) from None
        return cls(path, markets)

    def events(self, network: str, pair: str) -> list[tuple[str, str]]:
        """The events of the market C{pair} on C{network}, oldest first: ``(text, sig)``."""
        return list(self._markets.get(f"{network} {pair}", ()))

    def set_events(self, network: str, pair: str, events: Sequence[tuple[str, str]]) -> None:
        """Make C{events} (the last :data:`KEPT_EVENTS` of them) the market's record."""
        self._markets[f"{network} {pair}"] = list(events)[-KEPT_EVENTS:]

    def save(self) -> None:
        """
        Write the record, atomically, mode 0600.

        :raises UserKeyError: if it cannot be written.
        """
        document = {
            "version": self.VERSION,
            "markets": {name: [list(e) for e in events] for name, events in self._markets.items()},
        }
        temporary = f"{self.path}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as record:
                    json.dump(document, record, separators=(",", ":"))
                    record.write("\n")
                    record.flush()
                    os.fsync(record.fileno())
                os.replace(temporary, self.path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        except OSError as error:
            raise UserKeyError(f"cannot write {self.path}: {error.strerror}") from None
