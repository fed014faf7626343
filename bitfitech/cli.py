"""The ``bitfi`` command: a client of a node's HTTP API, for people and scripts.

Data path: the command line -> :func:`build_parser` (argparse: commands,
options, input checks) -> :class:`NodeClient` (one blocking HTTP request
with ``http.client``; no reactor) -> the node's JSON API -> the renderers
(aligned tables, prices and amounts as the API's decimal strings) or, with
``--json``, the node's answer unchanged -> stdout.  ``bitfi watch`` reads
the node's Server-Sent Events from ``GET /stream`` (:class:`EventStream`,
through :class:`EventStreamParser`, a small pure parser with bounded
lines), prints a line when one says something new (:class:`WatchLines`)
and follows the stream across reconnections (:func:`follow_stream`).
With ``--market PAIR`` (or ``$BITFI_MARKET``), a command about one market
(``book``, ``trades``, ``orders``, ``buy``, ``sell``, ``cancel``) uses that
market's routes, ``/markets/<slug>/...`` (:func:`market_path`); without it,
the node's first market's, at today's paths.  ``bitfi markets`` lists them.
Three commands need no node: ``bitfi token`` and ``bitfi node-id`` work on a
node's data directory (its API token, its key), and ``bitfi key`` on the
user's own key.

The user's own key: with ``--key PATH``, ``$BITFI_KEY`` or ``--user-key``,
``bitfi buy``, ``sell`` and ``cancel`` sign their event in this process
with the user's Ed25519 key (:class:`~bitfitech.userkey.UserKey`, a file
of the user's that only they can read) and send it signed (``POST
/events``): the node journals, applies and relays it but cannot alter,
forge or cancel it.  The secret is read from the file and used here, never
sent, printed or put in a message.
:class:`~bitfitech.userkey.SentEvents`, a file beside the key, remembers
the events signed lately, so that a seq is never signed twice and a node
that missed some of them gets them again (:func:`send_signed`).

Times: the API gives every instant as an integer of unix milliseconds
(UTC) and every duration in milliseconds, in a field named ``..._ms``;
they are shown as UTC times (:func:`utc_time_ms`) and short durations
(:func:`duration_ms`).

Exit status: 0 done; 1 the node answered an error (its ``{"error"}`` is
printed to stderr), or a local file (the user's key) cannot be used; 2 a
usage error or bad input, found before anything is sent; 3 the node cannot
be reached; 4 the node wants an API token (401).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO
from urllib.parse import quote, urlencode, urlsplit

from . import USER_AGENT, __version__
from .address import AddressError, parse_address
from .userkey import SentEvents, UserKey, UserKeyError, default_key_path, open_user_key

if TYPE_CHECKING:
    from .market.events import Author, Event

DEFAULT_NODE = "http://127.0.0.1:13000"
DEFAULT_TIMEOUT = 10.0
ORDER_TYPES = ("limit", "ioc", "fok", "post_only", "market")
ORDER_STATES = ("open", "closed", "all")
MAX_LIMIT = 1000
"""The largest ``--limit`` or ``--depth`` the API takes."""
MAX_ANSWER = 16 * 1024 * 1024
"""The largest answer body read from the node."""
MAX_EVENT_LINE = 1024 * 1024
"""The longest line :class:`EventStreamParser` accepts."""
STREAM_SILENCE = 60.0
"""Seconds a live stream may stay silent before it counts as lost (the node
sends a ``status`` event every 15 s as its keepalive)."""
RECONNECT_FIRST = 1.0
"""Seconds ``bitfi watch`` waits before its first attempt to reconnect."""
RECONNECT_MAX = 30.0
"""The longest wait between attempts: the wait doubles up to it."""

EXIT_OK = 0
EXIT_NODE_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4

_DECIMAL_RE = re.compile(r"\A[0-9]+(\.[0-9]+)?\Z")
_ORDER_ID_RE = re.compile(r"\A[0-9a-fA-F]{64}\Z")


# Errors: each one becomes a message on stderr and an exit status.


class CommandError(Exception):
    """
    A failure that ends the command.

    :ivar exit_status: the process exit status it gives.
    """

    exit_status = EXIT_NODE_ERROR


class NodeError(CommandError):
    """
    The node answered with an error status.

    :ivar status: the HTTP status.
    :ivar message: the node's ``error`` message.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        if status == http.client.UNAUTHORIZED:
            self.exit_status = EXIT_UNAUTHORIZED


class Unreachable(CommandError):
    """
    The node cannot be reached: refused, timed out, unknown host, not HTTP.

    :ivar reason: why, in a few words (``connection refused``).
    """

    exit_status = EXIT_UNREACHABLE

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the node at {url}: {reason}; is it running? (make run)")
        self.reason = reason


class StreamError(CommandError):
    """The event stream broke: its connection failed, it went silent, or it broke its format."""


class CommandUsageError(CommandError):
    """
    Bad input found after argparse: the message is printed as is.  (Not
    :class:`twisted.python.usage.UsageError`, which the node's options raise.)
    """

    exit_status = EXIT_USAGE


class _ParserExit(Exception):
    """argparse is done: it printed help or a usage error."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# The HTTP client.


@dataclass(frozen=True)
class Answer:
    """
    A successful answer of the node.

    :ivar status: the HTTP status (2xx).
    :ivar document: the JSON body; non-integer numbers are
        :class:`~decimal.Decimal`, never floats.
    :ivar raw: the body as received.
    """

    status: int
    document: Any
    raw: bytes


def parse_json(raw: bytes | str) -> Any:
    """C{raw} as JSON, with non-integer numbers as :class:`~decimal.Decimal`."""
    return json.loads(raw, parse_float=Decimal)


class NodeClient:
    """
    Blocking requests to one node's HTTP API, one connection each.

    :ivar url: the node's base URL, without a trailing slash.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ca_bundle: str | None = None,
    ):
        """
        :param url: ``http://host:port`` or ``https://host:port``, optionally
            with a path prefix.
        :param token: the API token sent as ``Authorization: Bearer``.
        :param timeout: seconds to connect, and to wait for each read.
        :param ca_bundle: a PEM file of the certificates to trust for an
            ``https://`` node (a node's own, or its CA's) instead of the
            system's; unused for ``http://``.
        :raises ValueError: for a URL that is not http(s) with a host, or a
            C{ca_bundle} that cannot be loaded.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--node must be an http:// or https:// URL, not {url!r}")
        try:
            self._port = parts.port
        except ValueError:
            raise ValueError(f"--node has an invalid port: {url!r}") from None
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if self._https and ca_bundle:
            try:
                self._tls = ssl.create_default_context(cafile=ca_bundle)
            except ssl.SSLError:
                raise ValueError(f"--ca-bundle {ca_bundle}: no PEM certificate in it") from None
            except OSError as error:
                raise ValueError(f"--ca-bundle {ca_bundle}: {error.strerror}") from None

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {
            "Accept": accept,
            "Connection": "close",  # one request a connection
            "User-Agent": f"bitfi-cli/{USER_AGENT.partition('/')[2]}",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and read the answer's head; errors become :class:`Unreachable`."""
        connection = self._connection()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            return connection, connection.getresponse()
        except BaseException as error:
            connection.close()
            if isinstance(error, OSError | http.client.HTTPException):
                raise Unreachable(self.url, self._reason(error)) from None
            raise

    def _reason(self, error: BaseException) -> str:
        """Why a request failed, in a few words."""
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, TimeoutError):
            return f"no answer within {self._timeout:g} s (--timeout)"
        if isinstance(error, socket.gaierror):
            return f"cannot resolve {self._host}: {error.strerror}"
        if isinstance(error, http.client.RemoteDisconnected):
            return "it closed the connection without answering"
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"TLS failed: {error.verify_message or error.reason}; to trust the node's own "
                "certificate, pass it with --ca-bundle FILE (or BITFI_API_CA_BUNDLE)"
            )
        if isinstance(error, ssl.SSLError):
            return f"TLS failed: {error.reason or error}"
        if isinstance(error, http.client.HTTPException):
            return f"not an HTTP answer ({type(error).__name__})"
        if isinstance(error, OSError) and error.strerror:
            return error.strerror[0].lower() + error.strerror[1:]
        return str(error) or type(error).__name__

    def request(self, method: str, path: str, body: object = None) -> Answer:
        """
        Send one request and return the node's JSON answer.

        :param path: the path and query, from the API's root (``/book?depth=5``).
        :param body: a JSON-ready body, or ``None`` for none.
        :raises Unreachable: if no answer came.
        :raises NodeError: for an error status (its ``error`` message) or
            an answer that is not JSON.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        connection, response = self._send(method, path, data, self._headers("application/json"))
        raw, document = self._read(connection, response)
        if not 200 <= response.status < 300:
            raise NodeError(response.status, _error_message(response, document, raw))
        if document is None and raw.strip() != b"null":
            raise NodeError(response.status, f"the node's answer is not JSON: {raw[:80]!r}")
        return Answer(response.status, document, raw)

    def _read(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> tuple[bytes, Any]:
        """
        Read a whole answer and close its connection: its bytes, and its
        JSON document (``None`` if it is not JSON).

        :raises Unreachable: if the answer broke off.
        """
        try:
            raw: bytes = response.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as error:
            raise Unreachable(self.url, self._reason(error)) from None
        finally:
            connection.close()
        try:
            return raw, parse_json(raw)
        except ValueError:
            return raw, None

    def open_events(self, path: str, silence: float = STREAM_SILENCE) -> EventStream:
        """
        Open the Server-Sent Events at C{path}.

        The timeout covers connecting and the answer's head; then the
        stream counts as broken after C{silence} seconds without a byte.

        :raises Unreachable: if no answer came.
        :raises NodeError: for an error status.
        """
        connection, response = self._send("GET", path, None, self._headers("text/event-stream"))
        if not 200 <= response.status < 300:
            raw, document = self._read(connection, response)
            raise NodeError(response.status, _error_message(response, document, raw))
        if connection.sock is not None:
            connection.sock.settimeout(silence)
        return EventStream(connection, response, silence, self._reason)


class LiveEvents(Protocol):
    """An open stream of events (:class:`EventStream`, or a fake in tests)."""

    def __iter__(self) -> Iterator[ServerEvent]:
        """The events as they come, until the stream ends; :class:`StreamError` if it breaks."""

    def close(self) -> None:
        """Let the stream go."""


class EventStream:
    """
    An open ``text/event-stream`` answer: iterate over it for its events
    until the node ends it, and close it when done (:class:`LiveEvents`).
    """

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        silence: float,
        reason: Callable[[BaseException], str],
    ) -> None:
        """
        :param silence: the read timeout set on the connection, in seconds.
        :param reason: words for a failed read (:meth:`NodeClient._reason`).
        """
        self._connection = connection
        self._response = response
        self._silence = silence
        self._reason = reason

    def __iter__(self) -> Iterator[ServerEvent]:
        """
        The events, as they come; the iteration ends when the node ends the stream.

        :raises StreamError: if the connection fails, stays silent too long,
            or the stream breaks the SSE format.
        """
        parser = EventStreamParser()
        while True:
            try:
                data = self._response.read1(65536)
            except TimeoutError:
                raise StreamError(f"nothing heard for {self._silence:g} s") from None
            except (OSError, http.client.HTTPException) as error:
                raise StreamError(self._reason(error)) from None
            if not data:
                return
            yield from parser.feed(data)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def _error_message(response: http.client.HTTPResponse, document: Any, raw: bytes) -> str:
    """The message of an error answer: its ``error`` field, else the status's reason."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = raw.decode("utf-8", "replace").strip()
    return response.reason + (f": {text[:200]}" if text else "")


# Server-Sent Events.


@dataclass(frozen=True)
class ServerEvent:
    """
    One event of a Server-Sent Events stream.

    :ivar type: the ``event:`` field (``message`` when absent).
    :ivar data: the ``data:`` lines, joined with newlines.
    """

    type: str
    data: str


class EventStreamParser:
    """
    Bytes of a ``text/event-stream`` to :class:`ServerEvent`; pure and bounded.

    Lines end with LF or CRLF (a lone CR is not a line end here).  An event
    is dispatched at a blank line if it has data; comments (``:``), ``id``
    and ``retry`` are skipped, as are unknown fields.
    """

    def __init__(self, max_line: int = MAX_EVENT_LINE) -> None:
        self._max_line = max_line
        self._buffer = b""
        self._type = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[ServerEvent]:
        """
        Take the next bytes; return the events they complete.

        :raises StreamError: for a line longer than the limit, or an event
            whose data grows past it.
        """
        self._buffer += data
        events = []
        while True:
            line, found, rest = self._buffer.partition(b"\n")
            if not found:
                break
            self._buffer = rest
            event = self._line(line.removesuffix(b"\r").decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max_line:
            raise StreamError(f"the stream sent a line longer than {self._max_line} bytes")
        return events

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data:
                self._type = ""
                return None
            event = ServerEvent(self._type or "message", "\n".join(self._data))
            self._type, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
            if sum(len(d) for d in self._data) > self._max_line:
                raise StreamError(f"the stream sent an event larger than {self._max_line} bytes")
        return None


# Rendering: pure functions from the API's documents to text.


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """
    Lines of an aligned table.

    :param align: one letter per column: ``l`` left, ``r`` right, ``d``
        decimal strings lined up on their decimal point.
    """
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in headers]
    cells: list[list[str]] = []
    for kind, header, column in zip(align, headers, columns, strict=True):
        if kind == "d":
            whole = max((len(v.partition(".")[0]) for v in column), default=0)
            fraction = max((len(v) - len(v.partition(".")[0]) for v in column), default=0)
            values = [
                v.partition(".")[0].rjust(whole) + v[len(v.partition(".")[0]) :].ljust(fraction)
                for v in column
            ]
        else:
            values = list(column)
        width = max([len(header), *map(len, values)])
        justify = str.rjust if kind == "r" else str.ljust
        cells.append([justify(header, width), *(justify(v, width) for v in values)])
    return ["  ".join(row).rstrip() for row in zip(*cells, strict=True)]


def decimal_text(value: object) -> str:
    """A price or amount as the API wrote it (``-`` for none)."""
    return "-" if value is None else str(value)


def short(value: object, length: int = 12) -> str:
    """The first C{length} characters of an id (``-`` for none)."""
    return "-" if value is None else str(value)[:length]


def utc_time_ms(milliseconds: object) -> str:
    """
    An instant of the API, unix time in C{milliseconds}, as ``2025-01-31
    12:00:00`` (UTC, to the second; ``-`` for none).
    """
    if milliseconds is None:
        return "-"
    seconds = int(Decimal(str(milliseconds))) // 1000
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration_ms(milliseconds: object) -> str:
    """A duration of the API, in C{milliseconds}, as :func:`duration` shows it."""
    return duration(int(Decimal(str(milliseconds or 0))) // 1000)


def duration(seconds: object) -> str:
    """C{seconds} as ``2d 3h``, ``3h 4m``, ``4m 5s`` or ``5s``."""
    total = int(Decimal(str(seconds or 0)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _reach_summary(reach: Mapping[str, Any] | None) -> str:
    """Whether peers can dial the node, in a few words."""
    if not reach:
        return "unknown"
    state = str(reach.get("state"))
    seen = reach.get("observed") or []
    seen_as = f"; peers see it as {', '.join(map(str, seen))}" if seen else ""
    udp = reach.get("nat_udp") or {}
    dht = (
        f"; the DHT's UDP port is mapped too ({udp.get('external_port')})"
        if udp.get("state") == "mapped"
        else ""
    )
    if state in ("public", "mapped"):
        how = "through the router's port mapping" if state == "mapped" else "directly"
        return f"{state}: peers reach it at {reach.get('address')} ({how}){dht}"
    if state == "outbound-only":
        return (f"outbound-only: peers cannot dial it ({reach.get('reason')}); it works over "
                f"the links it dials{seen_as}")  # fmt: skip
    checking = ", checking" if reach.get("checking") else ""
    return f"unknown (no dial-back answered yet{checking}){seen_as}"


def _listening(p2p: Mapping[str, Any]) -> str:
    """Where the P2P listener listens: every address, else ``host:port``."""
    listening = p2p.get("listening")
    if listening:
        return ", ".join(map(str, listening))
    return f"{p2p.get('host')}:{p2p.get('port')}"


def _markets_summary(status: Mapping[str, Any]) -> str:
    """The markets carried, and those stored but not carried (their history kept)."""
    carried = [str(m) for m in status.get("markets") or [status.get("pair")]]
    kept = [str(m) for m in status.get("stored_markets") or [] if m not in carried]
    text = ", ".join(carried)
    return f"{text}  (also stored, not carried: {', '.join(kept)})" if kept else text


def render_status(status: Mapping[str, Any], now: float) -> list[str]:
    """
    A compact summary of ``GET /status``.

    :param now: unix time, for the age of each witness's last stamp.
    """
    peers = status.get("peers") or {}
    market = status.get("market") or {}
    p2p = status.get("p2p") or {}
    state_hash = status.get("state_hash")
    lines = [
        ("node", f"{status.get('node_id')}  ({status.get('user_agent', '?')}, "
                 f"up {duration_ms(status.get('uptime_ms'))})"),
        ("network", f"{status.get('network')}  {_markets_summary(status)}"),
        ("p2p", f"{_listening(p2p)}  "
                f"{'TLS' if p2p.get('tls') else 'plain TCP (no TLS)'}"),
        ("reach", _reach_summary(status.get("reachability"))),
        ("peers", f"{peers.get('inbound', 0)} in, {peers.get('outbound', 0)} out, "
                  f"{peers.get('handshaking', 0)} handshaking; "
                  f"{peers.get('known_addresses', 0)} known addresses; "
                  f"{peers.get('bans', 0)} bans"),
        ("events", f"{status.get('events', 0)} from {status.get('authors', 0)} authors; "
                   f"lamport {status.get('lamport', 0)}; "
                   f"{market.get('open_orders', 0)} open orders; "
                   f"{market.get('trades', 0)} trades"),
        ("sync", _sync_summary(status.get("sync"))),
        *_order_summary(status, state_hash, now),
        ("mdns", _mdns_summary(status.get("mdns"))),
        ("dht", _dht_summary(status.get("dht"))),
    ]  # fmt: skip
    width = max(len(name) for name, _ in lines)
    return [f"{name.ljust(width)}  {value}" for name, value in lines]


def _sync_summary(sync: Mapping[str, Any] | None) -> str:
    """The ``sync`` line of ``bitfi status``: how far the node is behind its peers."""
    if not sync:
        return "unknown"
    state = sync.get("state")
    if state != "syncing":
        return f"{state} ({sync.get('events', 0):,} events)"
    events, known = sync.get("events", 0), sync.get("known", 0)
    eta = sync.get("eta_ms")
    left = f"about {duration_ms(eta)} left" if eta is not None else "time left unknown"
    percent = 100 * events / known if known else 0
    return (f"syncing: {events:,} of {known:,} events ({percent:.0f} %), "
            f"{sync.get('rate', 0):,.0f} events/s, {left}")  # fmt: skip


def _order_summary(
    status: Mapping[str, Any], state_hash: object, now: float
) -> list[tuple[str, str]]:
    """
    The ``state`` and ``order`` lines of ``bitfi status``, and one
    ``witness`` line per witness on a network with fair order.
    """
    witnesses = status.get("witnesses") or {}
    if status.get("ordering") != "fair" or not witnesses:
        settled = status.get("settled_through_ms")
        return [
            ("state", f"{short(state_hash, 16)}  "
                      + ("nothing settled yet" if settled is None
                         else f"settled through {_horizon(settled)}")),
            ("order", "author clocks (no witnesses): trades settle, never final"),
        ]  # fmt: skip
    n, f, me = witnesses.get("n", 0), witnesses.get("f", 0), witnesses.get("me")
    order = (
        f"fair, {n} witness{'' if n == 1 else 'es'} "
        + (f"(up to {f} may be faulty); " if f else "(no fault tolerated); ")
        + ("this node is not one" if me is None else f"this node is witness {me + 1} of {n}")
    )
    waiting = witnesses.get("waiting_events", 0)
    if waiting:
        order += f"; {waiting} event{'' if waiting == 1 else 's'} wait for a fair time"
    flagged = len(witnesses.get("flagged") or {})
    if flagged:
        order += f"; {flagged} flagged faulty"
    lines = [
        ("state", f"{short(state_hash, 16)}  settled {witnesses.get('settled_events', 0)} events "
                  f"through {_horizon(witnesses.get('settled_through_ms'))}; final "
                  f"{witnesses.get('final_events', 0)} through "
                  f"{_horizon(witnesses.get('final_through_ms'))}"),
        ("order", order),
    ]  # fmt: skip
    for chain in witnesses.get("chains") or ():
        lines.append(("witness", _witness_summary(chain, now)))
    return lines


def _horizon(milliseconds: object) -> str:
    """A settled or final point: its UTC time to the millisecond, or ``none yet``."""
    if milliseconds is None:
        return "none yet"
    ms = int(Decimal(str(milliseconds)))
    return f"{utc_time_ms(ms)}.{ms % 1000:03d} UTC"


def _witness_summary(chain: Mapping[str, Any], now: float) -> str:
    """One witness of ``GET /status``: its id, stamps held, last stamp's age, lag, and faults."""
    parts = [f"{short(chain.get('node_id'), 16)}  {chain.get('seq', 0)} stamps"]
    t = chain.get("t")
    parts.append("none yet" if t is None else f"last {_age(now - int(t) / 1000)} ago")
    lag = chain.get("lag_ms")
    if lag is not None:
        parts.append(f"lag {lag} ms")
    if chain.get("waiting"):
        parts.append(f"{chain['waiting']} past a gap")
    if chain.get("flagged"):
        parts.append(f"FLAGGED: {chain['flagged']}")
    return ", ".join(parts)


def _age(seconds: float) -> str:
    """A short age: ``0.3 s`` under a minute, else as :func:`duration`."""
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f} s"
    return duration(seconds)


def _mdns_summary(mdns: Mapping[str, Any] | None) -> str:
    if not mdns:
        return "off"
    return f"on ({mdns.get('interface')}), {mdns.get('discovered', 0)} nodes discovered"


def _dht_summary(dht: Mapping[str, Any] | None) -> str:
    if not dht:
        return "off"
    announced = dht.get("announced_at")
    when = "not announced yet" if announced is None else f"announced {utc_time_ms(announced)} UTC"
    families = dht.get("families") or {}
    by_family = ", ".join(
        f"{name.replace('ipv', 'IPv')} {family.get('routing_table_size', 0)}"
        for name, family in families.items()
    )
    return (
        f"on (UDP port {dht.get('port')}), {dht.get('routing_table_size', 0)} in the routing "
        f"table{f' ({by_family})' if len(families) > 1 else ''}"
        f"{' over IPv6' if list(families) == ['ipv6'] else ''}, "
        f"{dht.get('peers_found', 0)} peers found, {when}"
    )


def render_peers(rows: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    """
    ``GET /peers`` as a table.

    :param now: unix time in seconds, for how long each peer has been linked.
    """
    if not rows:
        return ["no peers linked"]
    body = [
        [
            str(row.get("node_id")),
            str(row.get("address")),
            str(row.get("direction")),
            str(row.get("tls") or "plain"),
            "-" if row.get("rtt_ms") is None else f"{row['rtt_ms']} ms",
            "-" if row.get("connected_since") is None
            else duration(now - int(row["connected_since"]) / 1000),
            str(row.get("source", "-")),
            str(row.get("user_agent", "-")),
        ]
        for row in rows
    ]  # fmt: skip
    headers = ["NODE ID", "ADDRESS", "DIR", "TLS", "RTT", "LINKED", "SOURCE", "AGENT"]
    return table(headers, body, "lllllrll")


def render_book(book: Mapping[str, Any]) -> list[str]:
    """``GET /book``: asks above bids, best prices by the spread line."""
    asks = list(book.get("asks") or [])
    bids = list(book.get("bids") or [])
    if not asks and not bids:
        return ["the book is empty"]
    rows = [["ask", *map(str, level)] for level in reversed(asks)]
    rows += [["bid", *map(str, level)] for level in bids]
    lines = table(["SIDE", "PRICE", "AMOUNT", "ORDERS"], rows, "lddr")
    lines.insert(1 + len(asks), f"----  {_spread(asks, bids)}")
    return lines


def _spread(asks: Sequence[Sequence[Any]], bids: Sequence[Sequence[Any]]) -> str:
    if not asks:
        return "no asks"
    if not bids:
        return "no bids"
    ask, bid = Decimal(str(asks[0][0])), Decimal(str(bids[0][0]))
    spread = ask - bid
    mid = (ask + bid) / 2
    if mid > 0:
        percent = (spread / mid * 100).quantize(Decimal("0.001"))
        return f"spread {spread} ({percent}%)"
    return f"spread {spread}"


def render_markets(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``GET /markets`` as a table, the node's first market first."""
    body = [
        [
            str(row.get("market")),
            decimal_text(row.get("best_bid")),
            decimal_text(row.get("best_ask")),
            decimal_text(row.get("last")),
            str(row.get("trades", 0)),
            str(row.get("open_orders", 0)),
            short(row.get("state_hash"), 16),
        ]
        for row in rows
    ]
    headers = ("MARKET", "BID", "ASK", "LAST", "TRADES", "OPEN", "STATE")
    return table(headers, body, "ldddrrl")


def render_trades(trades: Sequence[Mapping[str, Any]]) -> list[str]:
    """``GET /trades`` as a table, newest first."""
    if not trades:
        return ["no trades"]
    rows = [
        [
            utc_time_ms(t.get("time")),
            str(t.get("side")),
            decimal_text(t.get("price")),
            decimal_text(t.get("amount")),
            trade_status(t),
            short(t.get("id")),
            short(t.get("taker")),
            short(t.get("maker")),
        ]
        for t in trades
    ]
    headers = ["TIME (UTC)", "TAKER", "PRICE", "AMOUNT", "STATUS", "TRADE", "TAKER ORDER",
               "MAKER ORDER"]  # fmt: skip
    return table(headers, rows, "llddllll")


def trade_status(trade: Mapping[str, Any]) -> str:
    """
    A trade's ``status``: ``tentative``, ``settled`` or ``final`` (from
    ``settled`` for a node that does not say).
    """
    status = trade.get("status")
    if status is None and trade.get("settled") is not None:
        status = "settled" if trade["settled"] else "tentative"
    return "-" if status is None else str(status)


def order_state(order: Mapping[str, Any]) -> str:
    """An order's status, with its reason if it has one (``cancelled (self_trade)``)."""
    reason = order.get("reason")
    return f"{order.get('status')}" + (f" ({reason})" if reason else "")


def render_orders(orders: Sequence[Mapping[str, Any]]) -> list[str]:
    """``GET /orders`` as a table, newest first."""
    if not orders:
        return ["no orders"]
    rows = [
        [
            utc_time_ms(o.get("created_at")),
            str(o.get("side")),
            str(o.get("type")),
            decimal_text(o.get("price")),
            decimal_text(o.get("amount")),
            decimal_text(o.get("filled")),
            order_state(o),
            str(o.get("id")),
        ]
        for o in orders
    ]
    headers = ["CREATED (UTC)", "SIDE", "TYPE", "PRICE", "AMOUNT", "FILLED", "STATUS", "ID"]
    return table(headers, rows, "llldddll")


def render_order(order: Mapping[str, Any]) -> list[str]:
    """One order document: what it is, where it stands, its trades."""
    price = order.get("price")
    what = f"{order.get('side')} {order.get('type')} {order.get('amount')}"
    what += " at market" if price is None else f" @ {price}"
    lines = [
        f"order {order.get('id')}",
        f"{what}: {order_state(order)}; filled {order.get('filled')}, "
        f"remaining {order.get('remaining')}",
    ]
    if order.get("status") == "pending":
        lines[1] = f"{what}: pending (not in the book yet: it waits for its fair time)"
    for trade in order.get("trades") or ():
        lines.append(
            f"  trade {short(trade.get('id'))}: {trade.get('amount')} @ {trade.get('price')}"
            f" ({trade_status(trade)})"
        )
    return lines


def render_signed_order(sent: Mapping[str, Any]) -> list[str]:
    """The node's answer to an order signed by your key: the order, then who signed it."""
    order = sent.get("order")
    lines = render_order(order) if isinstance(order, Mapping) else [f"order {sent.get('id')}"]
    lines.append(_signed_by(sent))
    return lines


def render_signed_cancel(sent: Mapping[str, Any], order_id: str) -> list[str]:
    """The node's answer to a cancel signed by your key: the order it cancels, then the cancel."""
    order = sent.get("order")
    if isinstance(order, Mapping):
        lines = render_order(order)
    else:
        lines = [f"order {order_id}: this node does not hold it (yet); the cancel counts "
                 "wherever it is"]  # fmt: skip
    lines.append(f"cancel {sent.get('id')}")
    lines.append(_signed_by(sent))
    return lines


def _signed_by(sent: Mapping[str, Any]) -> str:
    return (
        f"signed by your key {short(sent.get('author'), 16)}, seq {sent.get('seq')}: "
        f"{sent.get('status')}"
    )


def render_peer(row: Mapping[str, Any]) -> list[str]:
    """The row of a newly linked peer."""
    return [
        f"linked to node {row.get('node_id')} at {row.get('address')} "
        f"({row.get('direction')}, {row.get('tls') or 'plain TCP'}, {row.get('user_agent')})"
    ]


def render_bans(bans: Sequence[Mapping[str, Any]]) -> list[str]:
    """``GET /peers/banned`` as a table, newest first."""
    if not bans:
        return ["no bans in force"]
    rows = [
        [
            str(b.get("address")),
            short(b.get("node_id"), 40),
            utc_time_ms(b.get("banned_at")),
            utc_time_ms(b.get("until")),
            str(b.get("reason")),
        ]
        for b in bans
    ]
    headers = ["ADDRESS", "NODE ID (CLAIMED)", "BANNED AT (UTC)", "UNTIL (UTC)", "REASON"]
    return table(headers, rows, "lllll")


def render_event(event: ServerEvent, now: float, gist: str | None = None) -> str:
    """
    One line for one event of ``GET /stream``: its local time, type and gist.

    :param now: unix time in seconds.
    :param gist: the event's :func:`event_gist`, if known already.
    """
    clock = datetime.datetime.fromtimestamp(now).strftime("%H:%M:%S")
    return f"{clock}  {event.type:<6}  {event_gist(event) if gist is None else gist}"


def event_gist(event: ServerEvent) -> str:
    """What one event of ``GET /stream`` says, in a few words (its compact JSON if unknown)."""
    try:
        data = parse_json(event.data)
    except ValueError:
        data = event.data
    gist = None
    if isinstance(data, dict):
        try:
            gist = _EVENT_GISTS.get(event.type, _no_gist)(data)
        except Exception:  # a shape this version does not know: show the JSON
            gist = None
    if gist is None:
        gist = data if isinstance(data, str) else _compact(data)
    return gist


def _compact(data: object) -> str:
    return json.dumps(data, default=str, separators=(",", ":"), sort_keys=True)


def _no_gist(data: Mapping[str, Any]) -> str | None:
    return None


def _trade_gist(data: Mapping[str, Any]) -> str:
    status = trade_status(data)
    return (
        f"{data.get('side', '?')} {data['amount']} @ {data['price']}"
        + ("" if status == "-" else f" {status}")
        + f" (trade {short(data.get('id'))}, taker {short(data.get('taker'))}, "
        f"maker {short(data.get('maker'))})"
    )


def _order_gist(data: Mapping[str, Any]) -> str:
    order = data.get("order", data)
    price = order.get("price")
    where = "at market" if price is None else f"@ {price}"
    return (
        f"{order['side']} {order.get('type', 'limit')} {order['amount']} {where}: "
        f"{order_state(order)}, filled {order.get('filled', '?')} ({short(order.get('id'))})"
    )


def _book_gist(data: Mapping[str, Any]) -> str:
    book = data.get("book", data)
    bids, asks = book["bids"], book["asks"]
    bid = f"{bids[0][1]} @ {bids[0][0]}" if bids else "none"
    ask = f"{asks[0][1]} @ {asks[0][0]}" if asks else "none"
    return f"best bid {bid}, best ask {ask}; {_spread(asks, bids)}"


def _peer_gist(data: Mapping[str, Any]) -> str:
    what = data.get("event") or data.get("action") or data.get("state") or "peer"
    return (
        f"{what} {data['node_id']} {data.get('address', '')} {data.get('direction', '')}"
    ).rstrip()


def _status_gist(data: Mapping[str, Any]) -> str:
    peers = data.get("peers")
    if isinstance(peers, dict):
        peers = f"{peers.get('inbound', 0)} in / {peers.get('outbound', 0)} out"
    return f"{data['events']} events, {peers} peers, state {short(data.get('state_hash'), 16)}"


_EVENT_GISTS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "trade": _trade_gist,
    "order": _order_gist,
    "book": _book_gist,
    "peer": _peer_gist,
    "status": _status_gist,
}


# Input checks, as argparse types: a bad value is a usage error (exit 2).


def decimal_argument(text: str) -> str:
    """A price or amount: a positive decimal such as ``0.25``, passed on as written."""
    if not _DECIMAL_RE.match(text) or Decimal(text) == 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive decimal such as 0.25 or 50000.5 (digits and one point), "
            f"not {text!r}"
        )
    return text


def order_id_argument(text: str) -> str:
    """An order id: 64 hex digits."""
    if not _ORDER_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"an order id is 64 hex digits, not {text!r}")
    return text.lower()


def peer_address_argument(text: str) -> str:
    """A peer address: ``host:port``, ``[v6]:port`` or ``NODEID@host:port``."""
    try:
        parse_address(text)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def ip_argument(text: str) -> str:
    """An IP address, v4 or v6."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address such as 192.0.2.7 or 2001:db8::1, not {text!r}"
        ) from None


def market_argument(text: str) -> str:
    """A market: a pair ``BASE/QUOTE`` such as ``ETH/USD`` (upper-cased)."""
    from .config import coerce_pair

    try:
        return coerce_pair(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def count_argument(text: str) -> int:
    """A count from 1 to :data:`MAX_LIMIT`."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def seconds_argument(text: str) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(
            f"must be seconds, more than 0 and at most 3600, not {text!r}"
        )
    return seconds


# The user's own key: orders and cancels signed in this process.


Draft = Callable[["Author", int, int, int], "Event"]
"""Makes one signed event: ``(author, seq, lamport, ts)`` to the event."""


@dataclass(frozen=True)
class Sent:
    """
    What :func:`send_signed` sent, and the node's answer for it.

    :ivar document: the node's answer for the new event (``id``, ``author``,
        ``seq``, ``kind``, ``status``, ``order``).
    :ivar raw: the answer as received (a batch's holds every event's).
    :ivar resent: the ``(seq, id)`` of earlier events sent again with it.
    """

    document: Mapping[str, Any]
    raw: bytes
    resent: Sequence[tuple[int, str]]


def key_chain(client: NodeClient, public_key: str, root: str = "") -> tuple[str, str, int, int]:
    """
    ``GET /keys/{key}``: the node's network and the market's pair, the seq
    the key's next event must have as the node sees the key's chain on that
    market, and a Lamport time above every one the node holds.

    :param root: the market's routes (``/markets/ETH-USD``), or ``""`` for
        the node's first market (:func:`market_path`).
    :raises CommandError: for an answer without them.
    """
    try:
        answer = client.request("GET", f"{root}/keys/{public_key}")
    except NodeError as error:
        if error.status == http.client.NOT_FOUND and not root:
            raise CommandError(
                f"{error}: this node does not take events signed by your own key "
                "(it has no /keys API: it is older than this bitfi)"
            ) from None
        raise
    document = answer.document
    try:
        network, pair = document["network"], document["pair"]
        next_seq, lamport = document["next_seq"], document["lamport"]
        if not (isinstance(network, str) and isinstance(pair, str)):
            raise TypeError
        if type(next_seq) is not int or type(lamport) is not int or next_seq < 1 or lamport < 0:
            raise TypeError
    except (KeyError, TypeError):
        raise CommandError(
            f"the node's answer to GET /keys/{public_key} lacks a network, pair, next_seq "
            "or lamport"
        ) from None
    return network, pair, next_seq, lamport


def send_signed(
    client: NodeClient,
    key: UserKey,
    draft: Draft,
    clock: Callable[[], float] = time.time,
    root: str = "",
) -> Sent:
    """
    Sign one event with C{key} and send it, with the key's lock held.

    The event's seq follows both the key's chain as the node sees it
    (:func:`key_chain`) and the events of C{key}'s :class:`SentEvents`: a
    node that misses some of those gets them again, in one
    ``POST /events/batch`` with the new event (if it misses more than
    :data:`~bitfitech.userkey.KEPT_EVENTS`, nothing is sent).  Its Lamport time is above the
    node's, this machine's clock in unix ms, and the key's last event.  The
    event is recorded before it is sent, so its seq is never signed again
    even if its answer is lost; a node that refuses it (4xx) took nothing,
    and the record forgets it.

    :param draft: signs the event, given the author, seq, Lamport time and ts.
    :param clock: unix time in seconds.
    :param root: the market's routes (``/markets/ETH-USD``), or ``""`` for
        the node's first market: the record is kept by network and pair, so
        each market's chain is its own.
    :raises CommandError: as the requests do, or if the node is too far behind.
    """
    from .market.events import EventError, parse_event

    with key.locked():
        network, pair, next_seq, node_lamport = key_chain(client, key.public_key, root)
        record = SentEvents.load(key.path + ".sent")
        kept = record.events(network, pair)
        try:
            parsed = [parse_event(text, sig, network, pair) for text, sig in kept]
        except EventError as error:
            raise UserKeyError(f"{record.path} holds an event that is not one: {error}") from None
        last_seq = parsed[-1].seq if parsed else 0
        last_lamport = parsed[-1].lamport if parsed else 0
        missing = [event for event in parsed if event.seq >= next_seq]
        if next_seq <= last_seq and parsed[0].seq > next_seq:
            raise CommandError(
                f"the node holds your key's events on {network} {pair} up to seq "
                f"{next_seq - 1}, but this key signed up to seq {last_seq}, and {record.path} "
                "no longer keeps all those it misses: send to a node that holds them, or "
                "wait for this one to catch up"
            )
        seq = max(next_seq, last_seq + 1)
        now = int(clock() * 1000)
        lamport = max(node_lamport, now, last_lamport + 1)
        try:
            event = draft(key.author(network, pair), seq, lamport, now)
        except EventError as error:
            raise CommandError(f"cannot sign this event: {error}") from None
        chain = kept if seq == last_seq + 1 else []
        record.set_events(network, pair, [*chain, event.wire])
        record.save()
        batch = [*missing, event]
        try:
            if len(batch) == 1:
                body = {"text": event.text, "sig": event.sig}
                answer = client.request("POST", f"{root}/events", body)
                document = answer.document
            else:
                many = {"events": [{"text": e.text, "sig": e.sig} for e in batch]}
                answer = client.request("POST", f"{root}/events/batch", many)
                document = answer.document["events"][-1]
        except NodeError as error:
            if 400 <= error.status < 500:
                # Refused: the node took none of it.  A 400 for a batch with
                # earlier events means the node holds others at their seqs
                # (seq_taken): the record is wrong, and is dropped so that
                # the next event follows what the node holds.
                disagree = missing and error.status == http.client.BAD_REQUEST
                record.set_events(network, pair, [] if disagree else chain)
                record.save()
            raise
        except (KeyError, IndexError, TypeError):
            raise CommandError("the node's answer to POST /events/batch has no events") from None
        if not isinstance(document, Mapping):
            raise CommandError("the node's answer to POST /events is not an object")
        return Sent(document, answer.raw, [(e.seq, e.id) for e in missing])


# Commands.


@dataclass
class Console:
    """
    Where a command writes, and how.

    :ivar as_json: print the node's JSON instead of tables.
    """

    stdout: TextIO
    stderr: TextIO
    as_json: bool = False

    def lines(self, lines: Sequence[str]) -> None:
        """Print C{lines} to stdout."""
        for line in lines:
            self.stdout.write(line + "\n")
        self.stdout.flush()

    def answer(self, answer: Answer, render: Callable[[Any], list[str]]) -> int:
        """Print C{answer}: its raw JSON with ``--json``, else rendered; return 0."""
        if self.as_json:
            self.stdout.write(answer.raw.decode("utf-8").rstrip("\n") + "\n")
            self.stdout.flush()
        else:
            self.lines(render(answer.document))
        return EXIT_OK

    def sent(self, sent: Sent, render: Callable[[Mapping[str, Any]], list[str]]) -> int:
        """
        Print the node's answer for a signed event (its JSON with ``--json``),
        after a note on stderr for each earlier event sent again; return 0.
        """
        for seq, event_id in sent.resent:
            self.stderr.write(
                f"bitfi: sent again your event {event_id} (seq {seq}), which this node "
                "did not hold yet\n"
            )
        if self.as_json and not sent.resent:
            self.answer(Answer(201, sent.document, sent.raw), render)
        elif self.as_json:
            self.stdout.write(json.dumps(sent.document, default=str) + "\n")
            self.stdout.flush()
        else:
            self.lines(render(sent.document))
        return EXIT_OK


def market_path(args: argparse.Namespace, path: str) -> str:
    """
    C{path} (``/book?depth=5``) of the market ``--market`` names, under
    ``/markets/<slug>``; without ``--market``, C{path} itself (the node's
    first market's).
    """
    from .config import market_slug

    market: str | None = getattr(args, "market", None)
    if market is None:
        return path
    return f"/markets/{market_slug(market)}{path}"


def run_markets(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi markets``: the markets the node carries (``GET /markets``)."""
    return console.answer(client.request("GET", "/markets"), render_markets)


def run_status(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi status``."""
    now = time.time()
    return console.answer(client.request("GET", "/status"), lambda doc: render_status(doc, now))


def run_peers(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi peers``."""
    now = time.time()
    return console.answer(client.request("GET", "/peers"), lambda rows: render_peers(rows, now))


def run_connect(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi connect ADDR``."""
    answer = client.request("POST", "/peers", {"address": args.address})
    return console.answer(answer, render_peer)


def run_book(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi book [--depth N]``."""
    answer = client.request("GET", market_path(args, "/book?") + urlencode({"depth": args.depth}))
    return console.answer(answer, render_book)


def run_trades(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi trades [--limit N] [--mine]``: the node's trades, or those of your key's orders."""
    where = f"/keys/{_public_key(args)}/trades" if args.mine else "/trades"
    query = urlencode({"limit": args.limit})
    answer = client.request("GET", market_path(args, f"{where}?{query}"))
    return console.answer(answer, lambda doc: render_trades(doc["trades"]))


def run_orders(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """
    ``bitfi orders [--state open|closed|all] [--limit N] [--mine]``: the
    node's own orders, or with ``--mine`` those your key signed (as this
    node holds them: any node can list them).
    """
    where = f"/keys/{_public_key(args)}/orders" if args.mine else "/orders"
    query = urlencode({"state": args.state, "limit": args.limit})
    answer = client.request("GET", market_path(args, f"{where}?{query}"))
    return console.answer(answer, lambda doc: render_orders(doc["orders"]))


def _public_key(args: argparse.Namespace) -> str:
    """The public key in the user's key file (which must exist)."""
    key, _ = open_user_key(args.key_path, create=False)
    with key:
        return key.public_key


def run_place(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """
    ``bitfi buy|sell AMOUNT PRICE [--type TYPE]``: the node signs the
    order (``POST /orders``), or with your key, this command does
    (``POST /events``).
    """
    if args.signer is not None:
        return _place_signed(client, args, console)
    body: dict[str, str] = {"side": args.command, "amount": args.amount, "type": args.type}
    if args.price is not None:
        body["price"] = args.price
    return console.answer(client.request("POST", market_path(args, "/orders"), body), render_order)


def _place_signed(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi buy|sell`` with your own key."""

    def draft(author: Author, seq: int, lamport: int, ts: int) -> Event:
        return author.order(seq, lamport, ts, args.command, args.type, args.price, args.amount)

    key, made = open_user_key(args.signer, create=True)
    with key:
        if made:
            _note_new_key(console, key)
        sent = send_signed(client, key, draft, root=market_path(args, ""))
    return console.sent(sent, render_signed_order)


def run_cancel(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """
    ``bitfi cancel ID``: the node signs the cancel (``DELETE /orders/ID``),
    or with your key, this command does (``POST /events``).
    """
    if args.signer is None:
        answer = client.request("DELETE", market_path(args, f"/orders/{args.order_id}"))
        return console.answer(answer, render_order)
    order_id: str = args.order_id

    def draft(author: Author, seq: int, lamport: int, ts: int) -> Event:
        return author.cancel(seq, lamport, ts, order_id)

    key, _ = open_user_key(args.signer, create=False)
    with key:
        _check_own_order(client, key, order_id, market_path(args, ""))
        sent = send_signed(client, key, draft, root=market_path(args, ""))
    return console.sent(sent, lambda doc: render_signed_cancel(doc, order_id))


def _check_own_order(client: NodeClient, key: UserKey, order_id: str, root: str = "") -> None:
    """
    Refuse to cancel an order the node knows another key placed: such a
    cancel has no effect anywhere, and would cost a seq of your chain.
    """
    try:
        order = client.request("GET", f"{root}/orders/{order_id}").document
    except NodeError as error:
        if error.status == http.client.NOT_FOUND:
            return  # not here (yet): the cancel counts wherever the order is
        raise
    author = order.get("author") if isinstance(order, dict) else None
    if isinstance(author, str) and author != key.public_key:
        raise CommandError(
            f"order {order_id} was placed by the key {author}, not by yours "
            f"({key.public_key}): only its own key can cancel it"
        )


def _note_new_key(console: Console, key: UserKey) -> None:
    console.stderr.write(
        f"bitfi: made your key in {key.path} (mode 0600; public key {key.public_key}); "
        "keep it and back it up: it alone can cancel the orders it signs\n"
    )


def run_key(args: argparse.Namespace, console: Console, environ: Mapping[str, str]) -> int:
    """
    ``bitfi key``: print the public key of your own key (the ``author`` of
    the events it signs), making the key if there is none, and where it is.
    """
    key, made = open_user_key(args.key_path, create=True)
    with key:
        if console.as_json:
            console.stdout.write(json.dumps({"key": key.public_key, "path": key.path}) + "\n")
        else:
            console.stdout.write(key.public_key + "\n")
        if made:
            _note_new_key(console, key)
        elif not console.as_json:
            console.stderr.write(f"bitfi: your key is in {key.path}\n")
    return EXIT_OK


def run_banned(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi banned``."""
    return console.answer(client.request("GET", "/peers/banned"), render_bans)


def run_unban(client: NodeClient, args: argparse.Namespace, console: Console) -> int:
    """``bitfi unban ADDRESS``."""
    answer = client.request("DELETE", "/peers/banned/" + quote(args.address, safe=""))
    return console.answer(
        answer, lambda row: [f"lifted the ban on {row.get('address')} ({row.get('reason')})"]
    )


class WatchLines:
    """
    The lines of ``bitfi watch``: one per event that says something new.

    The node sends the book and its status again and again (at each
    connection, after each change, every 15 s as a keepalive), often
    unchanged; an event is printed only when what its line says differs
    from the last line printed for its type.  With ``--json`` the line is
    the event as JSON, and its data is what must differ.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.time) -> None:
        """
        :param clock: unix time in seconds, for the time at the start of each line.
        """
        self._console = console
        self._clock = clock
        self._last: dict[str, str] = {}

    def show(self, event: ServerEvent) -> None:
        """Print C{event}'s line, unless its type's last line said the same."""
        said = event.data if self._console.as_json else event_gist(event)
        if self._last.get(event.type) == said:
            return
        self._last[event.type] = said
        if self._console.as_json:
            data = event.data if _is_json(event.data) else json.dumps(event.data)
            line = f'{{"event":{json.dumps(event.type)},"data":{data}}}'
        else:
            line = render_event(event, self._clock(), said)
        self._console.lines([line])


def follow_stream(
    open_stream: Callable[[], LiveEvents],
    show: Callable[[ServerEvent], None],
    note: Callable[[str], None],
    sleep: Callable[[float], None],
) -> NoReturn:
    """
    Follow a live stream until Ctrl-C, reconnecting whenever it is lost.

    The first connection must succeed: its errors are raised, as every
    command raises them.  Once the stream has been open, a stream that ends
    or breaks, and a node that cannot be reached or answers 429 or 5xx, are
    waited out: :data:`RECONNECT_FIRST` seconds, doubling up to
    :data:`RECONNECT_MAX`, back to the first wait once a stream delivers an
    event.  Each loss and each failed attempt is one C{note}, and so is the
    reconnection.

    :param open_stream: opens the stream (:meth:`NodeClient.open_events`).
    :param show: takes each event.
    :param note: takes a one-line note for stderr.
    :param sleep: waits that many seconds (:func:`time.sleep`; a fake in tests).
    :raises NodeError: for an answer that will not change by waiting (401,
        404, other 4xx), or any error of the first connection.
    :raises Unreachable: if the first connection fails.
    :raises KeyboardInterrupt: at Ctrl-C: this never returns.
    """
    delay = RECONNECT_FIRST
    attempt = 0  # openings tried since the stream was last open: 0 before the first
    while True:
        try:
            stream = open_stream()
        except (Unreachable, NodeError) as error:
            if attempt == 0 or not _worth_retrying(error):
                raise
            reason = error.reason if isinstance(error, Unreachable) else str(error)
            note(f"cannot reconnect ({reason}); trying again in {delay:g} s")
        else:
            if attempt:
                note("reconnected")
            attempt = 0
            with contextlib.closing(stream):
                try:
                    for event in stream:
                        delay = RECONNECT_FIRST
                        show(event)
                    reason = "the node ended it"
                except StreamError as error:
                    reason = str(error)
            note(f"stream lost ({reason}); reconnecting in {delay:g} s")
        sleep(delay)
        attempt += 1
        delay = min(delay * 2, RECONNECT_MAX)


def _worth_retrying(error: CommandError) -> bool:
    """Whether waiting may change C{error}: the node is away, busy or failing, not refusing."""
    if isinstance(error, NodeError):
        return error.status == 429 or error.status >= 500
    return isinstance(error, Unreachable)


def run_watch(
    client: NodeClient,
    args: argparse.Namespace,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """
    ``bitfi watch``: one line per change the node's ``GET /stream`` (or
    ``/markets/<market>/stream`` with ``--market``) tells
    (:class:`WatchLines`), until Ctrl-C; a lost stream is reopened
    (:func:`follow_stream`), with a note on stderr.
    """
    path = market_path(args, "/stream")
    lines = WatchLines(console)

    def note(text: str) -> None:
        console.stderr.write(f"bitfi: {text}\n")
        console.stderr.flush()

    follow_stream(lambda: client.open_events(path), lines.show, note, sleep)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return "\n" not in text


def run_token(args: argparse.Namespace, console: Console, environ: Mapping[str, str]) -> int:
    """
    ``bitfi token --data-dir DIR``: write a new API token to DIR/api.token
    (mode 0600) with :mod:`bitfitech.api.token`, and print the token.
    """
    from .api.token import token_path, write_token_file

    data_dir = args.data_dir or environ.get("BITFI_DATA_DIR")
    if not data_dir:
        raise CommandUsageError("bitfi token: error: --data-dir is required (or $BITFI_DATA_DIR)")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    path = token_path(data_dir)
    if os.path.exists(path) and not args.force:
        raise CommandError(f"{path} exists already; pass --force to replace its token")
    try:
        token = write_token_file(data_dir)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror or error}") from None
    if console.as_json:
        console.stdout.write(json.dumps({"path": path, "token": token}) + "\n")
    else:
        console.stdout.write(token + "\n")
        console.stderr.write(
            f"bitfi: wrote a new API token to {path} (mode 0600); the node reads it when it "
            "starts; give it to bitfi with --token or BITFI_API_TOKEN\n"
        )
    return EXIT_OK


def run_node_id(args: argparse.Namespace, console: Console, environ: Mapping[str, str]) -> int:
    """
    ``bitfi node-id [--port PORT] [--network NAME] [--data-dir DIR] [--host HOST]``:
    print the node id of the key in the data directory that ``twistd bitfi``
    would use with the same options and environment, making the key now if
    there is none (the node then starts with it).  With ``--host``, print
    the address to pin the node by, ``NODEID@HOST:PORT``, as ``--witness``
    and ``--bootstrap`` take it.
    """
    from .address import PeerAddress, normalize_host
    from .config import ConfigError, config_from_options
    from .identity import KEY_FILE_NAME, IdentityError, identity_before_start

    given = {"port": args.port, "network": args.network, "data-dir": args.data_dir}
    try:
        config = config_from_options(given, None, False, environ)
        host = None if args.host is None else normalize_host(args.host)
    except (ConfigError, AddressError) as error:
        raise CommandUsageError(f"bitfi node-id: error: {error}") from None
    if host is not None and config.port == 0:
        raise CommandUsageError("bitfi node-id: error: --host needs the node's --port (not 0)")
    key_file = os.path.join(config.data_dir, KEY_FILE_NAME)
    made = not os.path.lexists(key_file)
    try:
        identity = identity_before_start(config.data_dir)
    except IdentityError as error:
        raise CommandError(str(error)) from None
    address = None if host is None else str(PeerAddress(host, config.port, identity.node_id))
    if console.as_json:
        document = {"node_id": identity.node_id, "data_dir": config.data_dir, "address": address}
        console.stdout.write(json.dumps(document) + "\n")
    else:
        console.stdout.write((address or identity.node_id) + "\n")
    if made:
        console.stderr.write(f"bitfi: made a new node key in {key_file}\n")
    return EXIT_OK


Runner = Callable[[NodeClient, argparse.Namespace, Console], int]
LocalRunner = Callable[[argparse.Namespace, Console, Mapping[str, str]], int]


class _Parser(argparse.ArgumentParser):
    """
    An ArgumentParser that raises instead of exiting, writes to
    :attr:`streams` instead of ``sys.stdout`` and ``sys.stderr``, and
    reports a usage error in one line and a hint (not under the usage).
    """

    streams: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            (self.streams[1] if file is sys.stderr else self.streams[0]).write(message)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\ntry '{self.prog} --help'\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise _ParserExit(status)


def build_parser(stdout: TextIO, stderr: TextIO) -> argparse.ArgumentParser:
    """The ``bitfi`` command line: global options, then one command and its options."""

    class Parser(_Parser):
        streams = (stdout, stderr)

    # Global options are accepted before and after the command: each
    # subparser repeats them, with defaults that do not override.
    common = Parser(add_help=False)
    common.add_argument(
        "--node", metavar="URL", default=argparse.SUPPRESS,
        help=f"the node's API (default: $BITFI_NODE or {DEFAULT_NODE})",
    )  # fmt: skip
    common.add_argument(
        "--token", default=argparse.SUPPRESS,
        help="API token, sent as Authorization: Bearer (default: $BITFI_API_TOKEN)",
    )  # fmt: skip
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print the node's JSON answers unchanged, for scripts",
    )  # fmt: skip
    common.add_argument(
        "--timeout", type=seconds_argument, metavar="SECONDS", default=argparse.SUPPRESS,
        help=f"seconds to wait for the node (default: {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    common.add_argument(
        "--ca-bundle", metavar="FILE", default=argparse.SUPPRESS,
        help="PEM certificates to trust for an https:// node, such as its own self-signed "
        "one (default: $BITFI_API_CA_BUNDLE, else the system's)",
    )  # fmt: skip
    common.add_argument(
        "--market", metavar="PAIR", type=market_argument, default=argparse.SUPPRESS,
        help="the market of book, trades, orders, buy, sell, cancel and watch, such as ETH/USD "
        "(default: $BITFI_MARKET, else the node's first market)",
    )  # fmt: skip
    common.add_argument(
        "--key", metavar="PATH", default=argparse.SUPPRESS,
        help="your own key file: buy, sell and cancel are signed with it here, not by the "
        "node (default: $BITFI_KEY; without either, the node signs)",
    )  # fmt: skip
    common.add_argument(
        "--user-key", action="store_true", default=argparse.SUPPRESS,
        help="sign buy, sell and cancel with your own key in its default file "
        "($XDG_CONFIG_HOME/bitfi/key, else ~/.config/bitfi/key; made on first use)",
    )  # fmt: skip
    parser = Parser(
        prog="bitfi",
        description="Talk to a bitfi node through its HTTP API.",
        epilog="Exit status: 0 ok, 1 the node answered an error (or your key file cannot be "
        "used), 2 usage error, 3 cannot reach the node, 4 unauthorized (pass --token).",
        parents=[common],
    )
    parser.add_argument(
        "--version", action="version", version=f"bitfi {__version__}",
        help="print the version of this bitfi and exit",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, runner: Runner | None, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        sub.set_defaults(runner=runner)
        return sub

    command("status", run_status, "a summary of the node")
    command("markets", run_markets, "the markets the node carries, its first first")
    command("peers", run_peers, "the peers linked now")
    sub = command("connect", run_connect, "dial a peer now")
    sub.add_argument("address", metavar="ADDR", type=peer_address_argument,
                     help="host:port, [v6]:port or NODEID@host:port")  # fmt: skip
    sub = command("book", run_book, "the orderbook: asks above bids")
    sub.add_argument("--depth", type=count_argument, default=20, help="price levels a side (20)")
    sub = command("trades", run_trades, "the last trades, newest first")
    sub.add_argument("--limit", type=count_argument, default=50, help="how many (50)")
    sub.add_argument("--mine", action="store_true",
                     help="the trades of the orders your own key signed")  # fmt: skip
    sub = command("orders", run_orders, "this node's orders, newest first")
    sub.add_argument("--state", choices=ORDER_STATES, default="open", help="which (open)")
    sub.add_argument("--limit", type=count_argument, default=100, help="how many (100)")
    sub.add_argument("--mine", action="store_true",
                     help="the orders your own key signed, not the node's")  # fmt: skip
    for side in ("buy", "sell"):
        sub = command(side, run_place, f"place a {side} order")
        sub.add_argument("amount", metavar="AMOUNT", type=decimal_argument)
        sub.add_argument("price", metavar="PRICE", type=decimal_argument, nargs="?",
                         help="the limit price; none for a market order")  # fmt: skip
        sub.add_argument("--type", choices=ORDER_TYPES, default="limit", help="(limit)")
    sub = command("cancel", run_cancel, "cancel one of this node's orders (with --key: yours)")
    sub.add_argument("order_id", metavar="ID", type=order_id_argument, help="64 hex digits")
    command("watch", run_watch, "follow the live events of the node (of --market) until Ctrl-C")
    command("banned", run_banned, "the IP addresses banned for misbehaviour")
    sub = command("unban", run_unban, "lift the ban on an IP address")
    sub.add_argument("address", metavar="ADDRESS", type=ip_argument)
    sub = command(
        "key", None,
        "print your own public key (the author of the orders you sign), making the key "
        "if there is none",
    )  # fmt: skip
    sub.set_defaults(local=run_key)
    sub = command("token", None, "make a new API token file in a node's data directory")
    sub.set_defaults(local=run_token)
    sub.add_argument(
        "--data-dir", metavar="DIR", help="the node's data directory ($BITFI_DATA_DIR)"
    )
    sub.add_argument("--force", action="store_true", help="replace an existing token file")
    sub = command(
        "node-id", None,
        "print a node's id, making its key if it has none yet (to name it as a witness)",
    )  # fmt: skip
    sub.set_defaults(local=run_node_id)
    sub.add_argument("--port", help="the node's P2P port, as for twistd bitfi ($P2P_PORT, 3000)")
    sub.add_argument("--network", metavar="NAME", help="its network ($BITFI_NETWORK, main)")
    sub.add_argument(
        "--data-dir", metavar="DIR",
        help="its data directory ($BITFI_DATA_DIR; by default the one twistd bitfi "
        "derives from the port and network)",
    )  # fmt: skip
    sub.add_argument(
        "--host", help="print NODEID@HOST:PORT, the address other nodes pin it by "
        "(--witness, --bootstrap)",
    )  # fmt: skip
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    Run one ``bitfi`` command and return its exit status.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :param environ: the environment read for ``BITFI_NODE``,
        ``BITFI_MARKET``, ``BITFI_API_TOKEN``, ``BITFI_API_CA_BUNDLE``, ``BITFI_KEY`` and where the
        user's key is by default (default: ``os.environ``).
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    env = os.environ if environ is None else environ
    parser = build_parser(out, err)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        if args.command is None:
            err.write(parser.format_help())
            return EXIT_USAGE
        if args.command in ("buy", "sell"):
            _check_order(parser, args)
        if getattr(args, "market", None) is None:
            args.market = _market_from(parser, env.get("BITFI_MARKET") or None)
    except _ParserExit as done:
        return done.status
    console = Console(out, err, as_json=getattr(args, "json", False))
    # The user's key: the file --key or $BITFI_KEY names signs; --user-key
    # signs with the default file; bitfi key and --mine read either.
    named = getattr(args, "key", None) or env.get("BITFI_KEY") or None
    args.key_path = os.path.abspath(os.path.expanduser(named or default_key_path(env)))
    args.signer = args.key_path if named or getattr(args, "user_key", False) else None
    try:
        if args.runner is None:
            local: LocalRunner = args.local
            return local(args, console, env)
        try:
            client = NodeClient(
                getattr(args, "node", None) or env.get("BITFI_NODE") or DEFAULT_NODE,
                token=getattr(args, "token", None) or env.get("BITFI_API_TOKEN") or None,
                timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
                ca_bundle=getattr(args, "ca_bundle", None) or env.get("BITFI_API_CA_BUNDLE"),
            )
        except ValueError as error:
            err.write(f"bitfi: {error}\n")
            return EXIT_USAGE
        runner: Runner = args.runner
        return runner(client, args, console)
    except NodeError as error:
        hint = ""
        if error.exit_status == EXIT_UNAUTHORIZED:
            hint = "; pass the node's API token with --token or BITFI_API_TOKEN"
        err.write(f"bitfi: {error}{hint}\n")
        return error.exit_status
    except CommandUsageError as error:
        err.write(f"{error}\n")
        return error.exit_status
    except CommandError as error:
        err.write(f"bitfi: {error}\n")
        return error.exit_status
    except UserKeyError as error:
        err.write(f"bitfi: {error}\n")
        return EXIT_NODE_ERROR
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130
    except BrokenPipeError:
        # The reader went away (bitfi watch | head): stop quietly.
        _silence_stdout(out)
        return EXIT_OK


def _market_from(parser: argparse.ArgumentParser, text: str | None) -> str | None:
    """The market ``$BITFI_MARKET`` names (C{text}), if any; a usage error if it is not one."""
    if text is None:
        return None
    try:
        return market_argument(text)
    except argparse.ArgumentTypeError as error:
        parser.exit(EXIT_USAGE, f"bitfi: error: $BITFI_MARKET: {error}\n")


def _check_order(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-check PRICE and --type of ``buy`` and ``sell`` (a usage error if they disagree)."""
    sub = f"bitfi {args.command}"
    if args.type == "market" and args.price is not None:
        parser.exit(EXIT_USAGE, f"{sub}: error: a market order takes no PRICE\n")
    if args.type != "market" and args.price is None:
        parser.exit(
            EXIT_USAGE,
            f"{sub}: error: a {args.type} order needs a PRICE "
            f"(or use --type market: bitfi {args.command} {args.amount} --type market)\n",
        )


def _silence_stdout(out: TextIO) -> None:
    """After a broken pipe, point stdout at /dev/null so the exit flush does not fail."""
    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
