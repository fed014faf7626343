"""The node's long-term identity: its key and node id, read before any stage starts.

A node is its Ed25519 key.  Its node id (40 hex digits, the first 20 bytes of
``sha256(public key)``) names it in peer handshakes, addresses
(``NODEID@host:port``) and the DHT, and its signatures vouch for what it
says.  The key lives in ``node.key`` in the data directory, a small text
file::

    bitfi-ed25519-seed-v1
    <the 32-byte Ed25519 seed as 64 lowercase hex digits>

The file is created atomically with mode 0600 (a crash never leaves half a
key behind) and is never replaced: a file that cannot be read as a key is an
error for the operator to resolve, not something to overwrite.  A user's
own key (:mod:`bitfitech.userkey`) is kept in the same format, written and
read with the helpers here (:func:`encode_key_file`, :func:`decode_key_file`,
:func:`create_key_file`).
"""

from __future__ import annotations

import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field

import nacl.signing

KEY_FILE_NAME = "node.key"
KEY_FILE_HEADER = "bitfi-ed25519-seed-v1"
SEED_LENGTH = 32
NODE_ID_BYTES = 20
_KEY_FILE_MODE = 0o600
MAX_KEY_FILE_SIZE = 4096
"""The most bytes read from a key file."""


class IdentityError(Exception):
    """The identity key file is missing its directory, unreadable or corrupt."""


def node_id_from_public_key(public_key: bytes) -> str:
    """
    Derive a node id from a raw Ed25519 public key.

    :param public_key: the 32 raw bytes of the public key.
    :return: 40 lowercase hex digits: ``sha256(public_key)[:20]``.
    """
    return hashlib.sha256(public_key).digest()[:NODE_ID_BYTES].hex()


@dataclass(frozen=True)
class NodeIdentity:
    """
    This node's signing key and the names derived from it.

    :ivar signing_key: the private Ed25519 key.
    :ivar public_key: the 32 raw bytes of the public key.
    :ivar node_id: :func:`node_id_from_public_key` of ``public_key``.
    """

    signing_key: nacl.signing.SigningKey = field(repr=False)
    public_key: bytes
    node_id: str

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """
        Build an identity from a 32-byte Ed25519 seed.

        :param seed: the private seed.
        :return: the identity with its public key and node id filled in.
        """
        signing_key = nacl.signing.SigningKey(seed)
        public_key = bytes(signing_key.verify_key)
        return cls(signing_key, public_key, node_id_from_public_key(public_key))

    def sign(self, message: bytes) -> bytes:
        """
        Sign C{message}.

        :param message: the bytes to sign.
        :return: the 64-byte detached Ed25519 signature.
        """
        signature: bytes = self.signing_key.sign(message).signature
        return signature


class CorruptKeyFileError(IdentityError):
    """
    A key file's text is not a key (:func:`decode_key_file`).  Neither the
    message nor C{reason} quotes the file.

    :ivar reason: what is wrong, in a few words.
    :ivar foreign: true if the text is no key file at all (it is not ASCII,
        or its first line is not :data:`KEY_FILE_HEADER`), false if it is
        a key file whose seed line is damaged.
    """

    def __init__(self, path: str, reason: str, foreign: bool) -> None:
        super().__init__(f"identity key file {path!r} is corrupt: {reason}")
        self.reason = reason
        self.foreign = foreign


def encode_key_file(seed: bytes) -> bytes:
    """
    The text of a key file: :data:`KEY_FILE_HEADER`, then the seed in hex.

    :param seed: the 32-byte Ed25519 seed.
    """
    return f"{KEY_FILE_HEADER}\n{seed.hex()}\n".encode("ascii")


def decode_key_file(path: str, data: bytes) -> bytes:
    """
    The seed in the text of a key file (what :func:`encode_key_file` writes).

    :param path: the file, for the message.
    :param data: its text.
    :return: the 32-byte seed.
    :raises CorruptKeyFileError: if C{data} is not a key file's text.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CorruptKeyFileError(path, "it is not ASCII text", foreign=True) from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != KEY_FILE_HEADER:
        raise CorruptKeyFileError(path, f"its first line is not {KEY_FILE_HEADER!r}", foreign=True)
    if len(lines) < 2:
        raise CorruptKeyFileError(path, "the seed line is missing", foreign=False)
    if any(line.strip() for line in lines[2:]):
        raise CorruptKeyFileError(path, "unexpected text after the seed line", foreign=False)
    seed_hex = lines[1].strip()
    if len(seed_hex) != 2 * SEED_LENGTH:
        raise CorruptKeyFileError(
            path,
            f"the seed must be {2 * SEED_LENGTH} hex digits, not {len(seed_hex)}",
            foreign=False,
        )
    try:
        return binascii.unhexlify(seed_hex)
    except (binascii.Error, ValueError):
        raise CorruptKeyFileError(path, "the seed is not hexadecimal", foreign=False) from None


def _read_key_file(path: str) -> bytes:
    """Read C{path}, tightening a mode broader than 0600 first."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & ~_KEY_FILE_MODE & 0o777:
            os.chmod(path, _KEY_FILE_MODE)
        with open(path, "rb") as key_file:
            data = key_file.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise IdentityError(f"cannot read identity key file {path!r}: {e.strerror or e}") from e
    if len(data) > MAX_KEY_FILE_SIZE:
        raise IdentityError(f"identity key file {path!r} is corrupt: it is far too large")
    return decode_key_file(path, data)


def _fsync_directory(directory: str) -> None:
    """Make a rename or link in C{directory} durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_key_file(path: str, seed: bytes) -> bool:
    """
    Write a new key file at C{path} atomically, with mode 0600, never
    replacing an existing one.

    The file is written whole under a temporary name in the same directory
    (which must exist), then published; if another process creates C{path}
    first, its key is kept and C{seed} is dropped.

    :param path: the key file.
    :param seed: the 32-byte Ed25519 seed.
    :return: whether this call made the file (false: a key was there).
    :raises OSError: if the file cannot be made.
    """
    directory = os.path.dirname(path) or "."
    temp_path = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _KEY_FILE_MODE)
        try:
            os.write(fd, encode_key_file(seed))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # A hard link publishes the complete file and fails if a key
            # already exists, so a concurrent creator's key is never replaced.
            os.link(temp_path, path)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: fall back to an atomic rename.
            if os.path.lexists(path):
                return False
            os.replace(temp_path, path)
        _fsync_directory(directory)
        return True
    finally:
        try:
            os.unlink(temp_path)
        except OSError:
            pass


def load_or_create_identity(data_dir: str) -> NodeIdentity:
    """
    Load the node's identity from C{data_dir}, creating a new key if none exists.

    :param data_dir: the node's data directory; it must already exist.
    :return: the node's identity.
    :raises IdentityError: if C{data_dir} is not a directory, or the key file
        cannot be read or is corrupt (it is then left untouched).
    """
    if not os.path.isdir(data_dir):
        raise IdentityError(f"data directory {data_dir!r} does not exist")
    path = os.path.join(data_dir, KEY_FILE_NAME)
    if not os.path.lexists(path):
        try:
            create_key_file(path, secrets.token_bytes(SEED_LENGTH))
        except OSError as e:
            raise IdentityError(
                f"cannot create identity key file {path!r}: {e.strerror or e}"
            ) from e
    # Always read back what is on disk, whoever wrote it.
    return NodeIdentity.from_seed(_read_key_file(path))


def identity_before_start(data_dir: str) -> NodeIdentity:
    """
    The identity of the node that will use C{data_dir}, made now if it has
    none: for naming a node (``--witness NODEID@host:port``) before it first
    starts.  The directory is made as the node's storage makes it (mode
    0700); the node then loads the same key.

    :raises IdentityError: if the directory cannot be made, or as
        :func:`load_or_create_identity` does.
    """
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise IdentityError(f"cannot create data directory {data_dir!r}: {e.strerror or e}") from e
    return load_or_create_identity(data_dir)
