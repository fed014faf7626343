"""
Tests for :mod:`bitfitech.userkey`: the user's own key file (made, read,
refused), where it lives by default, the key's lock, and the record of the
events it signed (:class:`~bitfitech.userkey.SentEvents`).  What the
``bitfi`` command makes of them is tested in ``tests/test_cli_keys.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat

import nacl.bindings
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.identity import KEY_FILE_HEADER, KEY_FILE_NAME, load_or_create_identity
from bitfitech.userkey import (
    KEPT_EVENTS,
    SentEvents,
    UserKey,
    UserKeyError,
    default_key_path,
    open_user_key,
)

NETWORK = "test"
PAIR = "BTC/USD"


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write(path: str, data: bytes) -> None:
    """Write C{data} to a new file C{path} that only its owner may read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class OpenUserKeyTests(SynchronousTestCase):
    """:func:`open_user_key`: a key made once and kept, and the files it refuses."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.directory, "bitfi", "key")

    def open(self, path: str, create: bool) -> tuple[UserKey, bool]:
        key, made = open_user_key(path, create)
        self.addCleanup(key.close)
        return key, made

    def test_made_on_first_use(self) -> None:
        key, made = self.open(self.path, create=True)
        self.assertTrue(made)
        self.assertEqual(key.path, self.path)
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(_mode(os.path.dirname(self.path)), 0o700)
        with open(self.path) as key_file:
            header, seed, *rest = key_file.read().split("\n")
        self.assertEqual((header, len(bytes.fromhex(seed)), rest), (KEY_FILE_HEADER, 32, [""]))
        public = nacl.bindings.crypto_sign_seed_keypair(bytes.fromhex(seed))[0].hex()
        self.assertEqual(key.public_key, public)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["key"])  # no temporary file left

        again, made = self.open(self.path, create=True)
        self.assertFalse(made)
        self.assertEqual(again.public_key, public)  # kept, not replaced
        with open(self.path) as key_file:
            self.assertEqual(key_file.read(), f"{KEY_FILE_HEADER}\n{seed}\n")

    def test_not_made_unless_asked(self) -> None:
        error = self.assertRaises(UserKeyError, open_user_key, self.path, False)
        self.assertEqual(
            str(error),
            f"there is no key in {self.path} yet: `bitfi key` makes one "
            "(or give the file of yours with --key PATH)",
        )
        self.assertFalse(os.path.exists(self.directory))

    def test_same_format_as_a_node_key(self) -> None:
        """A node's key serves as a user's key, and a user's key as a node's."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        identity = load_or_create_identity(data_dir)
        key, made = self.open(os.path.join(data_dir, KEY_FILE_NAME), create=False)
        self.assertEqual((key.public_key, made), (identity.public_key.hex(), False))

        user, _ = self.open(self.path, create=True)
        other_dir = os.path.abspath(self.mktemp())
        os.makedirs(other_dir)
        shutil.copyfile(self.path, os.path.join(other_dir, KEY_FILE_NAME))
        self.assertEqual(load_or_create_identity(other_dir).public_key.hex(), user.public_key)

    def test_refused_when_others_may_read_it(self) -> None:
        """Group or others may read it: refused, as ssh refuses one, and left as it is."""
        path = os.path.join(self.directory, "my keys", "key")
        self.open(path, create=True)[0].close()
        for mode in (0o644, 0o640, 0o604, 0o660, 0o610):
            os.chmod(path, mode)
            error = self.assertRaises(UserKeyError, open_user_key, path, True)
            self.assertEqual(
                str(error),
                f"your key file {path} may be read by others (mode {mode:04o}): it must be "
                f"yours alone; fix it with: chmod 600 '{path}'",
            )
            self.assertEqual(_mode(path), mode)
        for mode in (0o400, 0o700):
            os.chmod(path, mode)
            self.open(path, create=False)

    def test_damaged(self) -> None:
        """A file that is not a key is an error that never quotes the file, and is left as it is."""
        os.makedirs(self.directory)
        header = f"its first line is not {KEY_FILE_HEADER!r}"
        cases = [  # the file, and why it is no key file at all (None: a damaged one)
            (b"not a key at all\n", header),
            (b"", header),
            (f"{'ab' * 32}\n".encode(), header),
            (b"\xff\n", "it is not ASCII text"),
            (b"\xff" * 9000, "it is far too large"),
            (f"{KEY_FILE_HEADER}\n".encode(), None),
            (f"{KEY_FILE_HEADER}\nabc\n".encode(), None),
            (f"{KEY_FILE_HEADER}\n{'x' * 64}\n".encode(), None),
            (f"{KEY_FILE_HEADER}\n{'ab' * 32}\nmore\n".encode(), None),
            (f"{KEY_FILE_HEADER}\n{'ab' * 33}\n".encode(), None),
        ]
        for index, (data, foreign) in enumerate(cases):
            path = os.path.join(self.directory, f"key{index}")
            _write(path, data)
            error = self.assertRaises(UserKeyError, open_user_key, path, True)
            if foreign is None:
                expected = (
                    f"your key file {path} is damaged: its second line must be the 64 hex "
                    "digits of the seed, and nothing may follow"
                )
            else:
                expected = f"{path} is not a bitfi key file ({foreign})"
            self.assertEqual(str(error), expected, data)
            self.assertNotIn("ab" * 32, str(error))
            with open(path, "rb") as key_file:
                self.assertEqual(key_file.read(), data)

    def test_not_a_regular_file(self) -> None:
        os.makedirs(self.path)
        error = self.assertRaises(UserKeyError, open_user_key, self.path, True)
        self.assertEqual(str(error), f"your key file {self.path} is not a regular file")

    def test_cannot_read(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        _write(blocker, b"")
        path = os.path.join(blocker, "key")
        error = self.assertRaises(UserKeyError, open_user_key, path, True)
        self.assertEqual(str(error), f"cannot read your key file {path}: Not a directory")

    def test_cannot_make(self) -> None:
        """Its directory cannot be made (a dangling link is in the way)."""
        os.makedirs(self.directory)
        os.symlink(os.path.join(self.directory, "nowhere"), os.path.dirname(self.path))
        error = self.assertRaises(UserKeyError, open_user_key, self.path, True)
        self.assertEqual(str(error), f"cannot make your key file {self.path}: File exists")


class UserKeyTests(SynchronousTestCase):
    """A :class:`UserKey`: it signs, it locks, and it never shows its secret."""

    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "key")
        self.key, _ = open_user_key(self.path, create=True)
        self.addCleanup(self.key.close)
        with open(self.path) as key_file:
            self.seed = bytes.fromhex(key_file.read().splitlines()[1])

    def test_repr_hides_the_secret(self) -> None:
        shown = repr(self.key)
        self.assertEqual(shown, f"<UserKey {self.key.public_key} in {self.path}>")
        secret = nacl.bindings.crypto_sign_seed_keypair(self.seed)[1]
        for form in (self.seed, secret):
            self.assertNotIn(form.hex(), shown.lower())

    def test_author(self) -> None:
        """The key signs as itself: its events' author is its public key."""
        author = self.key.author(NETWORK, PAIR)
        self.assertEqual(author.author, self.key.public_key)
        event = author.order(1, 1, 1, "buy", "limit", "100", "1")
        self.assertEqual((event.author, event.seq), (self.key.public_key, 1))

    def test_locked(self) -> None:
        """The lock is the key file's: another open file of it cannot take it meanwhile."""
        other = os.open(self.path, os.O_RDONLY)
        self.addCleanup(os.close, other)
        with self.key.locked():
            self.assertRaises(OSError, fcntl.flock, other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)

    def test_close_releases_the_lock(self) -> None:
        key, _ = open_user_key(self.path, create=False)
        other = os.open(self.path, os.O_RDONLY)
        self.addCleanup(os.close, other)
        with key, key.locked():
            self.assertRaises(OSError, fcntl.flock, other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        key.close()  # again: nothing to do


class DefaultKeyPathTests(SynchronousTestCase):
    """Where the key lives unless the command is told: the XDG config directory."""

    def test_where(self) -> None:
        home = os.path.abspath(self.mktemp())
        cases = [
            ({"XDG_CONFIG_HOME": "/etc/xdg", "HOME": home}, "/etc/xdg/bitfi/key"),
            ({"XDG_CONFIG_HOME": "relative", "HOME": home},
             os.path.join(home, ".config", "bitfi", "key")),
            ({"XDG_CONFIG_HOME": "", "HOME": home}, os.path.join(home, ".config", "bitfi", "key")),
            ({"HOME": home}, os.path.join(home, ".config", "bitfi", "key")),
            ({}, os.path.join(os.path.expanduser("~"), ".config", "bitfi", "key")),
        ]  # fmt: skip
        for environ, where in cases:
            self.assertEqual(default_key_path(environ), where, environ)


class SentEventsTests(SynchronousTestCase):
    """The record of the events a key signed lately: ``<key file>.sent``."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "key.sent")

    def test_none_yet(self) -> None:
        record = SentEvents.load(self.path)
        self.assertEqual(record.events(NETWORK, PAIR), [])
        self.assertFalse(os.path.exists(self.path))

    def test_saved_and_loaded(self) -> None:
        record = SentEvents.load(self.path)
        record.set_events(NETWORK, PAIR, [("text 1", "sig 1"), ("text 2", "sig 2")])
        record.set_events("other", PAIR, [("text 3", "sig 3")])
        record.save()
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(os.listdir(self.directory), ["key.sent"])  # no temporary file left
        with open(self.path) as saved:
            document = json.load(saved)
        self.assertEqual(document["version"], SentEvents.VERSION)
        self.assertEqual(document["markets"][f"{NETWORK} {PAIR}"],
                         [["text 1", "sig 1"], ["text 2", "sig 2"]])  # fmt: skip

        loaded = SentEvents.load(self.path)
        self.assertEqual(loaded.events(NETWORK, PAIR), [("text 1", "sig 1"), ("text 2", "sig 2")])
        self.assertEqual(loaded.events("other", PAIR), [("text 3", "sig 3")])
        self.assertEqual(loaded.events(NETWORK, "ETH/USD"), [])

        loaded.set_events(NETWORK, PAIR, [])
        loaded.save()
        self.assertEqual(SentEvents.load(self.path).events(NETWORK, PAIR), [])

    def test_keeps_the_last(self) -> None:
        record = SentEvents.load(self.path)
        events = [(f"text {n}", f"sig {n}") for n in range(KEPT_EVENTS + 20)]
        record.set_events(NETWORK, PAIR, events)
        self.assertEqual(record.events(NETWORK, PAIR), events[-KEPT_EVENTS:])

    def test_not_a_record(self) -> None:
        contents = [
            b"{",
            b"[]",
            b'{"version": 2, "markets": {}}',
            b'{"version": 1}',
            b'{"version": 1, "markets": []}',
            b'{"version": 1, "markets": {"test BTC/USD": [["text"]]}}',
        ]
        for data in contents:
            with open(self.path, "wb") as record:
                record.write(data)
            error = self.assertRaises(UserKeyError, SentEvents.load, self.path)
            self.assertEqual(
                str(error),
                f"{self.path} is not a record of sent events (version 1); move it away to "
                "start afresh from what the node holds",
                data,
            )

    def test_cannot_read(self) -> None:
        os.makedirs(self.path)
        error = self.assertRaises(UserKeyError, SentEvents.load, self.path)
        self.assertEqual(str(error), f"cannot read {self.path}: Is a directory")

    def test_cannot_write(self) -> None:
        path = os.path.join(self.directory, "gone", "key.sent")
        record = SentEvents.load(path)
        record.set_events(NETWORK, PAIR, [("text", "sig")])
        error = self.assertRaises(UserKeyError, record.save)
        self.assertEqual(str(error), f"cannot write {path}: No such file or directory")
