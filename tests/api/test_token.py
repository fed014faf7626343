"""Tests for :mod:`bitfitech.api.token`: the API token, required beyond loopback."""

from __future__ import annotations

import io
import os
import stat
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.api.token import (
    TOKEN_FILE,
    TokenError,
    api_token,
    check_binding,
    check_token,
    is_loopback,
    main,
    read_token_file,
    token_matches,
    write_token_file,
)
from bitfitech.listening import StartupError
from bitfitech.testing import ClusterTestCase, loopback_config

TOKEN = "a-good-token-0123456789"


class BindingTests(SynchronousTestCase):
    """Which API addresses need a token."""

    def test_loopback(self) -> None:
        for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "[::1]"):
            self.assertTrue(is_loopback(host), host)
            check_binding(host, None, "/d")
        for host in ("0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "example.com"):
            self.assertFalse(is_loopback(host), host)

    def test_refused_without_token(self) -> None:
        for host in ("0.0.0.0", "::", "192.0.2.1", "node.example"):
            error = self.assertRaises(TokenError, check_binding, host, None, "/srv/node")
            message = str(error)
            self.assertIn("requires a token", message)
            self.assertIn("--api-token", message)
            self.assertIn("python -m bitfitech.api.token --data-dir /srv/node", message)
            check_binding(host, TOKEN, "/srv/node")

    def test_config(self) -> None:
        data_dir = self.mktemp()
        config = loopback_config(data_dir, api_host="0.0.0.0")
        self.assertRaises(TokenError, api_token, config)
        self.assertEqual(api_token(config.with_changes(api_token=TOKEN)), TOKEN)
        self.assertIsNone(api_token(loopback_config(data_dir)))
        written = write_token_file(data_dir)
        self.assertEqual(api_token(config), written)
        self.assertEqual(api_token(loopback_config(data_dir)), written)  # used on loopback too
        # The option wins over the file.
        self.assertEqual(api_token(config.with_changes(api_token=TOKEN)), TOKEN)

    def test_token_not_in_repr(self) -> None:
        config = loopback_config("/d", api_token=TOKEN)
        self.assertNotIn(TOKEN, repr(config))


class TokenFileTests(SynchronousTestCase):
    """The token file: random, private, checked when read."""

    def test_write_and_read(self) -> None:
        data_dir = os.path.join(self.mktemp(), "node")
        token = write_token_file(data_dir)
        self.assertGreaterEqual(len(token), 40)
        path = os.path.join(data_dir, TOKEN_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(read_token_file(data_dir), token)
        self.assertNotEqual(write_token_file(data_dir), token)
        self.assertEqual(os.listdir(data_dir), [TOKEN_FILE])

    def test_missing(self) -> None:
        self.assertIsNone(read_token_file(self.mktemp()))

    def test_bad_file(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, TOKEN_FILE), "w") as f:
            f.write("short\n")
        error = self.assertRaises(TokenError, read_token_file, data_dir)
        self.assertIn("no valid token", str(error))

    def test_check_token(self) -> None:
        self.assertEqual(check_token(TOKEN), TOKEN)
        for bad in ("", "short", "x" * 257, "with space 0123456789", "t\u00f6ken-0123456789abc"):
            self.assertRaises(ValueError, check_token, bad)

    def test_matches(self) -> None:
        self.assertTrue(token_matches(TOKEN, f"Bearer {TOKEN}".encode()))
        self.assertTrue(token_matches(TOKEN, f"bearer {TOKEN} ".encode()))
        for header in (None, b"", TOKEN.encode(), f"Basic {TOKEN}".encode(), b"Bearer x",
                       f"Bearer {TOKEN[:-1]}".encode()):  # fmt: skip
            self.assertFalse(token_matches(TOKEN, header), header)

    def run_main(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    def test_main(self) -> None:
        data_dir = self.mktemp()
        code, out, _ = self.run_main("--data-dir", data_dir)
        self.assertEqual(code, 0)
        self.assertEqual(read_token_file(data_dir), out.strip())
        code, _, err = self.run_main("--data-dir", data_dir)
        self.assertEqual(code, 1)
        self.assertIn("--force", err)
        code, again, _ = self.run_main("--data-dir", data_dir, "--force")
        self.assertEqual(code, 0)
        self.assertNotEqual(again, out)
        self.assertRaises(SystemExit, self.run_main)


class StartTests(ClusterTestCase):
    """A node refuses to start its API beyond loopback without a token."""

    def test_refused(self) -> None:
        error = self.assertRaises(StartupError, self.cluster.start_node, api_host="0.0.0.0")
        self.assertIn("requires a token", str(error))
        self.flushLoggedErrors()

    def test_started_with_token(self) -> None:
        node = self.cluster.start_node(api_host="0.0.0.0", api_token=TOKEN)
        assert node.api is not None
        self.assertEqual(node.api.token, TOKEN)
        self.assertGreater(node.api.listen_port, 0)
