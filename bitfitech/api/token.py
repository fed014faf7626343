"""The HTTP API's bearer token: where it comes from, and when it is required.

Data path: ``--api-token`` / ``$BITFI_API_TOKEN`` or the data directory's
``api.token`` -> :func:`api_token` (at the API's start) -> the resources,
which then ask every request for ``Authorization: Bearer <token>``.

An API bound to loopback (127.0.0.0/8, ``::1``, ``localhost``) may run
without a token; bound to any other address it refuses to start without
one.  ``python -m bitfitech.api.token --data-dir DIR`` makes one.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

# What a token looks like is a configuration rule: config checks --api-token
# and $BITFI_API_TOKEN by it, and the token file here by the same rule.
# check_token stays importable from this module (re-exported by name).
from ..config import MAX_TOKEN_LENGTH
from ..config import check_token as check_token

if TYPE_CHECKING:
    from ..config import NodeConfig

TOKEN_FILE: Final = "api.token"
"""The token file's name, in the data directory."""


class TokenError(ValueError):
    """No usable token where one is required, or an unreadable token file."""


def new_token() -> str:
    """A new random token (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def token_path(data_dir: str) -> str:
    """The token file of the node whose data directory is C{data_dir}."""
    return os.path.join(data_dir, TOKEN_FILE)


def read_token_file(data_dir: str) -> str | None:
    """
    The token in C{data_dir}'s token file, ``None`` if there is no file.

    :raises TokenError: if the file cannot be read or holds no valid token.
    """
    path = token_path(data_dir)
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(MAX_TOKEN_LENGTH + 2).strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"cannot read the API token file {path}: {e}") from None
    try:
        return check_token(text)
    except ValueError as e:
        raise TokenError(f"the API token file {path} holds no valid token: {e}") from None


def write_token_file(data_dir: str, token: str | None = None) -> str:
    """
    Write a token (a new random one unless C{token} is given) to
    C{data_dir}'s token file, readable by its owner only (mode 0600), and
    return it.  The directory is made (mode 0700) if missing.
    """
    token = check_token(token) if token is not None else new_token()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = token_path(data_dir)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return token


def is_loopback(host: str) -> bool:
    """Whether C{host} (an IP literal or ``localhost``) is a loopback address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, data_dir: str) -> None:
    """
    Refuse an API on a non-loopback C{host} without a token.

    :raises TokenError: saying how to make a token.
    """
    if token is None and not is_loopback(host):
        raise TokenError(
            f"the HTTP API on {host} (not loopback) requires a token: give --api-token "
            f"(or $BITFI_API_TOKEN), or make the token file {token_path(data_dir)} with "
            f"`python -m bitfitech.api.token --data-dir {data_dir}` (or `bitfi token`); "
            "clients then send 'Authorization: Bearer <token>'"
        )


def api_token(config: NodeConfig) -> str | None:
    """
    The token of a node's API: ``config.api_token``, else the data
    directory's token file, else ``None`` (allowed on loopback only).

    :raises TokenError: for a non-loopback API without a token, or an
        unreadable token file.
    """
    token = config.api_token or read_token_file(config.data_dir)
    check_binding(config.api_host, token, config.data_dir)
    return token


def token_matches(expected: str, authorization: bytes | None) -> bool:
    """
    Whether an ``Authorization`` header value carries C{expected} as a
    bearer token (compared in constant time).
    """
    if authorization is None:
        return False
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), expected.encode("ascii"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bitfitech.api.token --data-dir DIR``: make a token file and print the token."""
    parser = argparse.ArgumentParser(
        prog="python -m bitfitech.api.token",
        description=f"Write a new random HTTP API token to DIR/{TOKEN_FILE} (mode 0600) "
        "and print it.",
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("BITFI_DATA_DIR"),
        help="the node's data directory [env $BITFI_DATA_DIR]",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing token file")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir is required")
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    path = token_path(data_dir)
    if os.path.exists(path) and not args.force:
        print(f"{path} exists already; use --force to replace it", file=sys.stderr)
        return 1
    print(write_token_file(data_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
