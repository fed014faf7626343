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
error for the operator to resolve, not something to overwrite.
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
_MAX_KEY_FILE_SIZE = 4096


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


def _encode_key_file(seed: bytes) -> bytes:
    return f"{KEY_FILE_HEADER}\n{seed.hex()}\n".encode("ascii")


def _decode_key_file(path: str, data: bytes) -> bytes:
    """Return the seed in C{data}, or raise L{IdentityError} naming C{path}."""
    prefix = f"identity key file {path!r} is corrupt"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityError(f"{prefix}: it is not ASCII text") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != KEY_FILE_HEADER:
        raise IdentityError(f"{prefix}: its first line is not {KEY_FILE_HEADER!r}")
    if len(lines) < 2:
        raise IdentityError(f"{prefix}: the seed line is missing")
    if any(line.strip() for line in lines[2:]):
        raise IdentityError(f"{prefix}: unexpected text after the seed line")
    seed_hex = lines[1].strip()
    if len(seed_hex) != 2 * SEED_LENGTH:
        raise IdentityError(
            f"{prefix}: the seed must be {2 * SEED_LENGTH} hex digits, not {len(seed_hex)}"
        )
    try:
        return binascii.unhexlify(seed_hex)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{prefix}: the seed is not hexadecimal") from None


def _read_key_file(path: str) -> bytes:
    """Read C{path}, tightening a mode broader than 0600 first."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & ~_KEY_FILE_MODE & 0o777:
            os.chmod(path, _KEY_FILE_MODE)
        with open(path, "rb") as key_file:
            data = key_file.read(_MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise IdentityError(f"cannot read identity key file {path!r}: {e.strerror or e}") from e
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise IdentityError(f"identity key file {path!r} is corrupt: it is far too large")
    return _decode_key_file(path, data)


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


def _create_key_file(path: str, seed: bytes) -> None:
    """
    Write a new key file at C{path} atomically, never replacing an existing one.

    If another process creates the file first, its key is kept and C{seed}
    is dropped.
    """
    directory = os.path.dirname(path)
    temp_path = os.path.join(directory, f".{KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_FILE_MODE)
        try:
            os.write(fd, _encode_key_file(seed))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # A hard link publishes the complete file and fails if a key
            # already exists, so a concurrent creator's key is never replaced.
            os.link(temp_path, path)
        except FileExistsError:
            return
        except OSError:
            # Filesystems without hard links: fall back to an atomic rename.
            if os.path.lexists(path):
                return
            os.replace(temp_path, path)
        _fsync_directory(directory)
    except OSError as e:
        raise IdentityError(f"cannot create identity key file {path!r}: {e.strerror or e}") from e
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
        _create_key_file(path, secrets.token_bytes(SEED_LENGTH))
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
