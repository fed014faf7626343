"""Tests for :mod:`bitfitech.identity`: the node key file and node ids."""

from __future__ import annotations

import hashlib
import os
import stat

import nacl.exceptions
import nacl.signing
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.address import is_node_id
from bitfitech.identity import (
    KEY_FILE_HEADER,
    KEY_FILE_NAME,
    IdentityError,
    NodeIdentity,
    identity_before_start,
    load_or_create_identity,
    node_id_from_public_key,
)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class NodeIdTests(SynchronousTestCase):
    """Node ids are the first 20 bytes of sha256(public key), in lowercase hex."""

    def test_format(self) -> None:
        node_id = node_id_from_public_key(b"\x01" * 32)
        self.assertEqual(len(node_id), 40)
        self.assertTrue(is_node_id(node_id))
        self.assertEqual(node_id, hashlib.sha256(b"\x01" * 32).hexdigest()[:40])

    def test_from_seed(self) -> None:
        identity = NodeIdentity.from_seed(b"\x02" * 32)
        self.assertEqual(len(identity.public_key), 32)
        self.assertEqual(identity.node_id, node_id_from_public_key(identity.public_key))

    def test_repr_hides_key(self) -> None:
        identity = NodeIdentity.from_seed(b"\x03" * 32)
        self.assertNotIn("signing_key", repr(identity))


class LoadOrCreateTests(SynchronousTestCase):
    """Creating, reloading and refusing key files."""

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        os.mkdir(self.data_dir)
        self.path = os.path.join(self.data_dir, KEY_FILE_NAME)

    def test_create_then_reload(self) -> None:
        first = load_or_create_identity(self.data_dir)
        second = load_or_create_identity(self.data_dir)
        self.assertEqual(first.node_id, second.node_id)
        self.assertEqual(first.public_key, second.public_key)
        self.assertTrue(is_node_id(first.node_id))

    def test_file_format_and_mode(self) -> None:
        load_or_create_identity(self.data_dir)
        self.assertEqual(_mode(self.path), 0o600)
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], KEY_FILE_HEADER)
        self.assertEqual(len(bytes.fromhex(lines[1])), 32)
        # No temporary files left behind.
        self.assertEqual(os.listdir(self.data_dir), [KEY_FILE_NAME])

    def test_loose_mode_tightened(self) -> None:
        identity = load_or_create_identity(self.data_dir)
        os.chmod(self.path, 0o644)
        self.assertEqual(load_or_create_identity(self.data_dir).node_id, identity.node_id)
        self.assertEqual(_mode(self.path), 0o600)

    def test_sign_verify(self) -> None:
        identity = load_or_create_identity(self.data_dir)
        signature = identity.sign(b"hello")
        self.assertEqual(len(signature), 64)
        verify_key = nacl.signing.VerifyKey(identity.public_key)
        self.assertEqual(verify_key.verify(b"hello", signature), b"hello")
        self.assertRaises(nacl.exceptions.BadSignatureError, verify_key.verify, b"hellO", signature)

    def _assert_corrupt(self, content: bytes, reason: str) -> None:
        with open(self.path, "wb") as f:
            f.write(content)
        os.chmod(self.path, 0o600)
        error = self.assertRaises(IdentityError, load_or_create_identity, self.data_dir)
        self.assertIn(self.path, str(error))
        self.assertIn(reason, str(error))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_corrupt_header(self) -> None:
        self._assert_corrupt(b"something else\n" + b"ab" * 32 + b"\n", "first line")

    def test_corrupt_short_seed(self) -> None:
        self._assert_corrupt(f"{KEY_FILE_HEADER}\nabcd\n".encode(), "64 hex digits")

    def test_corrupt_not_hex(self) -> None:
        self._assert_corrupt(f"{KEY_FILE_HEADER}\n{'zz' * 32}\n".encode(), "not hexadecimal")

    def test_corrupt_missing_seed(self) -> None:
        self._assert_corrupt(f"{KEY_FILE_HEADER}\n".encode(), "missing")

    def test_corrupt_empty(self) -> None:
        self._assert_corrupt(b"", "first line")

    def test_corrupt_binary(self) -> None:
        self._assert_corrupt(os.urandom(32) + b"\xff", "corrupt")

    def test_corrupt_trailing_text(self) -> None:
        self._assert_corrupt(f"{KEY_FILE_HEADER}\n{'ab' * 32}\nmore\n".encode(), "unexpected")

    def test_unreadable_is_directory(self) -> None:
        os.mkdir(self.path)
        error = self.assertRaises(IdentityError, load_or_create_identity, self.data_dir)
        self.assertIn(self.path, str(error))

    def test_missing_data_dir(self) -> None:
        missing = os.path.join(self.data_dir, "nope")
        error = self.assertRaises(IdentityError, load_or_create_identity, missing)
        self.assertIn("does not exist", str(error))
        self.assertFalse(os.path.exists(missing))


class BeforeStartTests(SynchronousTestCase):
    """A node's id before its first start: the directory and key made as the node makes them."""

    def test_makes_directory_and_key(self) -> None:
        data_dir = os.path.join(self.mktemp(), "main-3001")
        identity = identity_before_start(data_dir)
        self.assertEqual(_mode(data_dir), 0o700)
        self.assertEqual(_mode(os.path.join(data_dir, KEY_FILE_NAME)), 0o600)
        self.assertEqual(identity.node_id, load_or_create_identity(data_dir).node_id)
        self.assertEqual(identity_before_start(data_dir).node_id, identity.node_id)

    def test_directory_cannot_be_made(self) -> None:
        blocker = self.mktemp()
        with open(blocker, "w"):
            pass
        error = self.assertRaises(IdentityError, identity_before_start, os.path.join(blocker, "d"))
        self.assertIn("cannot create data directory", str(error))
