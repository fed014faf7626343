"""Frames to typed messages: the second step of the peer wire format.

:mod:`bitfitech.wire.framing` hands over a frame's command and payload;
:func:`decode_message` turns them into one of the frozen dataclasses below,
and :func:`encode_message` does the reverse for outgoing messages.  The
peer protocol only ever sees these typed, validated messages.

A payload is a UTF-8 JSON object whose keys are the dataclass field names.
Decoding is strict where it matters and lenient where the protocol must
grow: no NaN or Infinity, no duplicate keys, no bools or floats for
integers, no missing fields, every value range-checked; but unknown keys
are ignored, and an unknown command decodes to :class:`Unknown` without
being parsed.  Encoding is compact and deterministic (sorted keys, no
spaces).  Every message validates itself when built, so an invalid message
can be neither decoded nor sent.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, NoReturn, Self, TypeAlias, get_args

from bitfitech.address import AddressError, check_port, is_ip_literal, is_node_id, normalize_host
from bitfitech.wire.framing import MAX_PAYLOAD, is_command

PROTOCOL_VERSION: int = 4
"""The protocol version this code speaks."""

MIN_PROTOCOL_VERSION: int = 3
"""The oldest protocol version this code still talks to (version 2 cannot
read batch signatures, version 1 has no fair order)."""

FAIR_ORDER_VERSION: int = 2
"""The first protocol version whose ``version`` names the sender's witness set."""

BATCH_SIGNATURE_VERSION: int = 3
"""The first protocol version whose events may carry batch signatures."""

MARKETS_VERSION: int = 4
"""The first protocol version whose ``version`` may list several markets
and whose gossip messages may name the market they are about."""

MAX_PROTOCOL_VERSION: int = 2**32 - 1
"""The largest ``protocol_version`` a ``version`` message may carry."""

MAX_ADDRS: int = 1000
"""Most entries in one ``addr`` message."""

MAX_USER_AGENT: int = 256
"""Longest ``user_agent``, in characters."""

MAX_NETWORK: int = 64
"""Longest network name, in characters."""

MAX_PAIR: int = 32
"""Longest trading pair name, in characters."""

MAX_MARKETS: int = 16
"""Most markets (trading pairs) in the ``markets`` of one ``version`` message."""

MAX_SERVICES: int = 32
"""Most service names in one ``version`` message."""

MAX_SERVICE_NAME: int = 32
"""Longest service name, in characters."""

MAX_NONCE: int = 2**64 - 1
"""Largest nonce (``version``, ``ping``, ``pong``): an unsigned 64-bit integer."""

MAX_TIME: int = 2**40 - 1
"""Largest unix time in seconds a message may carry."""

MAX_INV: int = 1000
"""Most event ids in one ``inv`` or ``getdata`` message (at least one is required)."""

MAX_TTL: int = 255
"""Largest ``ttl`` (``inv``, ``events``): hops an announcement or event may still travel."""

MAX_EVENTS: int = 1000
"""Most events in one ``events`` message."""

MAX_EVENT_TEXT: int = 400
"""Longest event text, in characters, all printable ASCII (0x20 to 0x7e)."""

MAX_VECTOR: int = 10000
"""Most ``[author, seq]`` entries in one ``sync`` message."""

MAX_CHAINS: int = 5000
"""Most ``[author, digest]`` entries in the ``chains`` of one ``sync`` message."""

MAX_SEQ: int = 2**63 - 1
"""Largest sequence number in a ``sync`` vector: a signed 64-bit integer, not negative."""

MAX_STAMPS: int = 1000
"""Most witness stamps in one ``stamps`` message (the frame's size limit still applies)."""

MAX_STAMP_TEXT: int = 96_000
"""Longest witness stamp text, in characters, all printable ASCII."""

MAX_WITNESS_VECTOR: int = 31
"""Most ``[witness, seq]`` entries in the ``stamps`` of one ``sync`` message."""

MAX_SEEN_AS: int = 45
"""Longest ``seen_as`` of a ``version``: an IPv6 address in full."""

MAX_REASON: int = 256
"""Longest ``reason`` of a ``dialedback``."""

DIALBACK_SERVICE: str = "dialback"
"""The ``version`` service name of a node that answers ``dialback``."""

_SERVICE_RE = re.compile(r"[a-z0-9_]{1,32}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_SIG_RE = re.compile(r"[0-9a-f]{128}")
_EVENT_SIG_RE = re.compile(r"[0-9a-f]{128}|b[0-9][0-9a-f.]{130,777}")
"""An event's signature, by shape: its own (128 hex digits) or a batch
signature (``b<size>.<index>.<hex>``, at most 779 characters); the event
module checks the rest."""
_SHOWN = 60


class MessageError(ValueError):
    """
    A payload or message that is malformed; says which command and field.

    :ivar problem: what is wrong.
    :ivar command: the command concerned, if known.
    :ivar field: the field concerned (``addrs[3].port``), if any.
    """

    def __init__(
        self, problem: str, *, command: str | None = None, field: str | None = None
    ) -> None:
        """
        :param problem: what is wrong.
        :param command: the command concerned, if known.
        :param field: the field concerned, if any.
        """
        self.problem = problem
        self.command = command
        self.field = field
        parts = [part for part in (command, field) if part]
        super().__init__(": ".join([*parts, problem]))


def _show(value: object) -> str:
    """A short ``repr`` of a value for error messages (peers send large junk)."""
    try:
        text = repr(value)
    except RecursionError:
        # JSON nested almost as deep as the parser allows: repr needs a few more frames.
        text = f"<deeply nested {type(value).__name__}>"
    if isinstance(value, bool):
        text += " (a bool)"
    elif isinstance(value, float):
        text += " (a float)"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _int(value: object, low: int, high: int, command: str, field: str) -> int:
    """Check an integer field: a real ``int`` (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(
            f"must be an integer from {low} to {high}, not {_show(value)}",
            command=command,
            field=field,
        )
    return value


def _str(value: object, min_len: int, max_len: int, command: str, field: str) -> str:
    """Check a text field: a ``str`` of ``min_len`` to ``max_len`` characters, UTF-8 encodable."""
    if not isinstance(value, str):
        raise MessageError(f"must be a string, not {_show(value)}", command=command, field=field)
    if not min_len <= len(value) <= max_len:
        raise MessageError(
            f"must be {min_len} to {max_len} characters long, not {len(value)}",
            command=command,
            field=field,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON escapes can smuggle in lone surrogates that UTF-8 cannot carry.
        raise MessageError(
            f"is not valid Unicode text: {_show(value)}", command=command, field=field
        ) from None
    return value


def _node_id(value: object, command: str, field: str) -> str:
    """Check a node id: 40 lowercase hex digits."""
    if not isinstance(value, str) or not is_node_id(value):
        raise MessageError(
            f"must be a node id (40 lowercase hex digits), not {_show(value)}",
            command=command,
            field=field,
        )
    return value


def _hex64(value: object, what: str, command: str, field: str) -> str:
    """Check a 64-digit lowercase hex string, such as an event id; ``what`` names it."""
    if not isinstance(value, str) or _HEX64_RE.fullmatch(value) is None:
        raise MessageError(
            f"must be {what} (64 lowercase hex digits), not {_show(value)}",
            command=command,
            field=field,
        )
    return value


def _tuple(value: object, low: int, high: int, command: str, field: str) -> tuple[object, ...]:
    """Check a sequence field: a ``tuple`` of ``low`` to ``high`` entries."""
    if not isinstance(value, tuple):
        raise MessageError(f"must be a tuple, not {_show(value)}", command=command, field=field)
    _count(len(value), low, high, command, field)
    return value


def _list(obj: Mapping[str, object], key: str, low: int, high: int, command: str) -> list[object]:
    """Get a required JSON array field of ``low`` to ``high`` entries, counted up front."""
    value = _require(obj, key, command)
    if not isinstance(value, list):
        raise MessageError(f"must be a list, not {_show(value)}", command=command, field=key)
    _count(len(value), low, high, command, key)
    return value


def _count(size: int, low: int, high: int, command: str, field: str) -> None:
    """Check the number of entries of a sequence field."""
    if not low <= size <= high:
        raise MessageError(
            f"must hold {low} to {high} entries, not {size}", command=command, field=field
        )


def _pairs(
    raw: list[object], what: str, command: str, field: str
) -> tuple[tuple[object, object], ...]:
    """Turn a JSON array of two-element arrays into a tuple of pairs (entries unchecked)."""
    pairs = []
    for index, item in enumerate(raw):
        if not isinstance(item, list) or len(item) != 2:
            raise MessageError(
                f"must be an array {what}, not {_show(item)}",
                command=command,
                field=f"{field}[{index}]",
            )
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def _keyed_pairs(
    items: object,
    high: int,
    command: str,
    field: str,
    names: tuple[str, str, str],
    check_value: Callable[[object, str], object],
) -> None:
    """
    Check a tuple of at most C{high} ``(key, value)`` pairs: each key a
    public key (64 lowercase hex digits), none twice; each value by
    C{check_value(value, field)}.

    :param names: for the errors, what a key is (``"author"``, ``"an
        author key"``) and what a pair is (``"(author, seq)"``).
    """
    key_name, key_what, pair = names
    seen: set[str] = set()
    for index, entry in enumerate(_tuple(items, 0, high, command, field)):
        if not isinstance(entry, tuple) or len(entry) != 2:
            _bad_pair(entry, pair, command, f"{field}[{index}]")
        key, value = entry
        _hex64(key, key_what, command, f"{field}[{index}][0]")
        if key in seen:
            raise MessageError(
                f"duplicate {key_name} {key}", command=command, field=f"{field}[{index}][0]"
            )
        seen.add(key)
        check_value(value, f"{field}[{index}][1]")


def _bad_pair(entry: object, what: str, command: str, field: str) -> NoReturn:
    """Refuse an entry that is not a pair."""
    raise MessageError(f"must be a pair {what}, not {_show(entry)}", command=command, field=field)


def _check_market(value: object, command: str) -> None:
    """
    Check the ``market`` of a gossip message: ``""`` (the sender's
    ``pair``) or a trading pair name of 1 to :data:`MAX_PAIR` characters.
    """
    _str(value, 0, MAX_PAIR, command, "market")


def _with_market(out: dict[str, object], market: str) -> dict[str, object]:
    """``out`` with a ``market`` key added, unless ``market`` is empty (then the JSON has none)."""
    if market:
        out["market"] = market
    return out


def _market_of(obj: Mapping[str, object]) -> object:
    """The ``market`` of a gossip payload, not checked yet: ``""`` when the key is absent."""
    return obj.get("market", "")


def _port(value: object, command: str, field: str, *, allow_zero: bool) -> int:
    """Check a TCP port with :func:`bitfitech.address.check_port`."""
    if isinstance(value, bool) or not isinstance(value, int):
        # Refused here: check_port's message would repr peer junk of any depth.
        raise MessageError(f"must be an integer, not {_show(value)}", command=command, field=field)
    try:
        return check_port(value, allow_zero=allow_zero)  # type: ignore[arg-type]
    except AddressError as error:
        raise MessageError(str(error), command=command, field=field) from None


def _ip(value: object, command: str, field: str) -> str:
    """An IP address in canonical form (as ``normalize_host`` gives), of at most 45 characters."""
    text = _str(value, 2, MAX_SEEN_AS, command, field)
    try:
        canonical = normalize_host(text)
    except (AddressError, ValueError):
        canonical = ""
    if canonical != text or not is_ip_literal(text):
        raise MessageError(
            f"must be an IP address in canonical form, not {_show(value)}",
            command=command,
            field=field,
        )
    return text


@dataclass(frozen=True)
class Version:
    """
    The first message on a link: who the sender is and what it speaks.

    :ivar protocol_version: the newest protocol version the sender speaks, >= 1
        (a peer below :data:`MIN_PROTOCOL_VERSION` is refused by the handshake,
        not by the codec: every version's ``version`` must decode).
    :ivar network: the network name, 1 to 64 characters.
    :ivar pair: the trading pair, such as ``"BTC/USD"``, 1 to 32 characters:
        the sender's only market, or the first of :attr:`markets`.
    :ivar node_id: the sender's node id, 40 lowercase hex digits.
    :ivar port: the sender's listening TCP port, or 0 if it accepts no
        connections.
    :ivar user_agent: free text naming the software, at most 256 characters.
    :ivar services: optional features, at most 32 names of 1 to 32 of
        ``[a-z0-9_]``.
    :ivar nonce: a random number identifying this link, ``0 <= nonce < 2**64``,
        to detect connections to oneself.
    :ivar time: the sender's clock in unix seconds, ``0 <= time < 2**40``.
    :ivar witnesses: the digest of the sender's witness set
        (:attr:`bitfitech.witnesses.WitnessSet.digest`), 64 lowercase hex
        digits; required from :data:`FAIR_ORDER_VERSION` on.  A version 1
        ``version`` has none: it decodes with ``""`` here (a key sent
        anyway is ignored, as version 1 knows no such field).
    :ivar markets: every market (trading pair) the sender carries, in its
        order, from :data:`MARKETS_VERSION` on: empty, or 1 to
        :data:`MAX_MARKETS` distinct names of 1 to 32 characters, the first
        one :attr:`pair`.  Empty means the sender carries exactly
        :attr:`pair`.  Below :data:`MARKETS_VERSION` it is always empty (a
        key sent anyway is ignored, as those versions know no such field).
    :ivar seen_as: the IP address the sender sees the connection come
        from: the receiver's address as the sender sees it (its external
        address, behind a NAT), in canonical form; ``""`` (absent from the
        JSON) when not said.  Any version may send it.
    """

    command: ClassVar[str] = "version"

    protocol_version: int
    network: str
    pair: str
    node_id: str
    port: int
    user_agent: str
    services: tuple[str, ...]
    nonce: int
    time: int
    witnesses: str
    markets: tuple[str, ...] = ()
    seen_as: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for any field out of its type or range."""
        c = self.command
        _int(self.protocol_version, 1, MAX_PROTOCOL_VERSION, c, "protocol_version")
        if self.protocol_version >= FAIR_ORDER_VERSION:
            _hex64(self.witnesses, "a witness set digest", c, "witnesses")
        elif self.witnesses != "":
            raise MessageError(
                f"must be empty below protocol version {FAIR_ORDER_VERSION}, "
                f"not {_show(self.witnesses)}",
                command=c,
                field="witnesses",
            )
        _str(self.network, 1, MAX_NETWORK, c, "network")
        _str(self.pair, 1, MAX_PAIR, c, "pair")
        _node_id(self.node_id, c, "node_id")
        _port(self.port, c, "port", allow_zero=True)
        _str(self.user_agent, 0, MAX_USER_AGENT, c, "user_agent")
        if not isinstance(self.services, tuple):
            raise MessageError(
                f"must be a tuple, not {_show(self.services)}", command=c, field="services"
            )
        if len(self.services) > MAX_SERVICES:
            raise MessageError(
                f"at most {MAX_SERVICES} names allowed, not {len(self.services)}",
                command=c,
                field="services",
            )
        for index, name in enumerate(self.services):
            if not isinstance(name, str) or _SERVICE_RE.fullmatch(name) is None:
                raise MessageError(
                    f"must be 1 to {MAX_SERVICE_NAME} of [a-z0-9_], not {_show(name)}",
                    command=c,
                    field=f"services[{index}]",
                )
        _int(self.nonce, 0, MAX_NONCE, c, "nonce")
        _int(self.time, 0, MAX_TIME, c, "time")
        self._check_markets()
        if self.seen_as != "":
            _ip(self.seen_as, c, "seen_as")

    def _check_markets(self) -> None:
        """
        :raises MessageError: for markets that are not a tuple of distinct
            pair names led by :attr:`pair`, too many of them, or any below
            :data:`MARKETS_VERSION`.
        """
        c = self.command
        markets = _tuple(self.markets, 0, MAX_MARKETS, c, "markets")
        if not markets:
            return
        if self.protocol_version < MARKETS_VERSION:
            raise MessageError(
                f"must be empty below protocol version {MARKETS_VERSION}, not {_show(markets)}",
                command=c,
                field="markets",
            )
        seen: set[object] = set()
        for index, market in enumerate(markets):
            field = f"markets[{index}]"
            _str(market, 1, MAX_PAIR, c, field)
            if market in seen:
                raise MessageError(f"duplicate market {_show(market)}", command=c, field=field)
            seen.add(market)
        if markets[0] != self.pair:
            raise MessageError(
                f"must be the pair {_show(self.pair)}, not {_show(markets[0])}",
                command=c,
                field="markets[0]",
            )

    def _to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "protocol_version": self.protocol_version,
            "network": self.network,
            "pair": self.pair,
            "node_id": self.node_id,
            "port": self.port,
            "user_agent": self.user_agent,
            "services": list(self.services),
            "nonce": self.nonce,
            "time": self.time,
        }
        if self.witnesses:
            out["witnesses"] = self.witnesses
        if self.markets:
            out["markets"] = list(self.markets)
        if self.seen_as:
            out["seen_as"] = self.seen_as
        return out

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        protocol_version = _int(
            _require(obj, "protocol_version", c), 1, MAX_PROTOCOL_VERSION, c, "protocol_version"
        )
        witnesses: object = ""
        if protocol_version >= FAIR_ORDER_VERSION:
            witnesses = _require(obj, "witnesses", c)
        markets: tuple[object, ...] = ()
        if protocol_version >= MARKETS_VERSION and "markets" in obj:
            markets = tuple(_list(obj, "markets", 0, MAX_MARKETS, c))
        services = _require(obj, "services", c)
        if not isinstance(services, list):
            raise MessageError(
                f"must be a list, not {_show(services)}", command=c, field="services"
            )
        return cls(
            protocol_version=protocol_version,
            network=_require(obj, "network", c),  # type: ignore[arg-type]
            pair=_require(obj, "pair", c),  # type: ignore[arg-type]
            node_id=_require(obj, "node_id", c),  # type: ignore[arg-type]
            port=_require(obj, "port", c),  # type: ignore[arg-type]
            user_agent=_require(obj, "user_agent", c),  # type: ignore[arg-type]
            services=tuple(services),
            nonce=_require(obj, "nonce", c),  # type: ignore[arg-type]
            time=_require(obj, "time", c),  # type: ignore[arg-type]
            witnesses=witnesses,  # type: ignore[arg-type]
            markets=markets,  # type: ignore[arg-type]
            seen_as=obj.get("seen_as", ""),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class _EmptyMessage:
    """The shape shared by :class:`Verack` and :class:`GetAddr`: no fields, payload ``{}``."""

    command: ClassVar[str]

    def _to_json(self) -> dict[str, object]:
        return {}

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        return cls()


@dataclass(frozen=True)
class Verack(_EmptyMessage):
    """The answer to a valid ``version``: the handshake may complete."""

    command: ClassVar[str] = "verack"


@dataclass(frozen=True)
class GetAddr(_EmptyMessage):
    """A request for the addresses of other nodes the peer knows."""

    command: ClassVar[str] = "getaddr"


@dataclass(frozen=True)
class Prune:
    """
    Stop pushing events of a market to me in full; announce them (``inv``) instead.

    Sent to a peer whose push brought an event already held: the link
    becomes lazy both ways, for that market, until either side asks the
    other for an event of it (``getdata``), which makes it eager again
    (``docs/consistency.rst``).
    A peer that does not know the command ignores it and keeps pushing.

    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "prune"

    market: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a bad market."""
        _check_market(self.market, self.command)

    def _to_json(self) -> dict[str, object]:
        return _with_market({}, self.market)

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        return cls(market=_market_of(obj))  # type: ignore[arg-type]


@dataclass(frozen=True)
class NetAddress:
    """
    One entry of an ``addr`` message: where a node listens.

    The host is normalized when the entry is built (IPv6 without brackets,
    names lowercased), so equal addresses compare equal.

    :ivar host: the host name or IP literal.
    :ivar port: the listening TCP port, 1 to 65535.
    :ivar node_id: the node's id (40 lowercase hex digits), or ``None`` if
        unknown.
    :ivar time: unix seconds when the node was last seen, ``0 <= time < 2**40``.
    """

    host: str
    port: int
    node_id: str | None
    time: int

    def __post_init__(self) -> None:
        """:raises MessageError: for any field out of its type or range."""
        c = Addr.command
        if not isinstance(self.host, str):
            raise MessageError(f"must be a string, not {_show(self.host)}", command=c, field="host")
        try:
            host = normalize_host(self.host)
        except AddressError as error:
            raise MessageError(str(error), command=c, field="host") from None
        object.__setattr__(self, "host", host)
        _port(self.port, c, "port", allow_zero=False)
        if self.node_id is not None:
            _node_id(self.node_id, c, "node_id")
        _int(self.time, 0, MAX_TIME, c, "time")

    def _to_json(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "node_id": self.node_id, "time": self.time}

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = Addr.command
        return cls(
            host=_require(obj, "host", c),  # type: ignore[arg-type]
            port=_require(obj, "port", c),  # type: ignore[arg-type]
            node_id=obj.get("node_id"),  # type: ignore[arg-type]
            time=_require(obj, "time", c),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Addr:
    """
    Addresses of listening nodes: the answer to ``getaddr``, or an announcement.

    :ivar addrs: at most :data:`MAX_ADDRS` entries.
    """

    command: ClassVar[str] = "addr"

    addrs: tuple[NetAddress, ...]

    def __post_init__(self) -> None:
        """:raises MessageError: for too many entries or an entry that is not a NetAddress."""
        c = self.command
        if not isinstance(self.addrs, tuple):
            raise MessageError(
                f"must be a tuple, not {_show(self.addrs)}", command=c, field="addrs"
            )
        if len(self.addrs) > MAX_ADDRS:
            raise MessageError(
                f"at most {MAX_ADDRS} entries allowed, not {len(self.addrs)}",
                command=c,
                field="addrs",
            )
        for index, entry in enumerate(self.addrs):
            if not isinstance(entry, NetAddress):
                raise MessageError(
                    f"must be a NetAddress, not {_show(entry)}", command=c, field=f"addrs[{index}]"
                )

    def _to_json(self) -> dict[str, object]:
        return {"addrs": [entry._to_json() for entry in self.addrs]}

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        raw = _require(obj, "addrs", c)
        if not isinstance(raw, list):
            raise MessageError(f"must be a list, not {_show(raw)}", command=c, field="addrs")
        if len(raw) > MAX_ADDRS:
            raise MessageError(
                f"at most {MAX_ADDRS} entries allowed, not {len(raw)}", command=c, field="addrs"
            )
        entries = []
        for index, item in enumerate(raw):
            where = f"addrs[{index}]"
            if not isinstance(item, dict):
                raise MessageError(f"must be an object, not {_show(item)}", command=c, field=where)
            try:
                entries.append(NetAddress._from_json(item))
            except MessageError as error:
                field = f"{where}.{error.field}" if error.field else where
                raise MessageError(error.problem, command=c, field=field) from None
        return cls(tuple(entries))


@dataclass(frozen=True)
class _NonceMessage:
    """
    The shape shared by :class:`Ping` and :class:`Pong`: one 64-bit nonce.

    :ivar nonce: ``0 <= nonce < 2**64``.
    """

    command: ClassVar[str]

    nonce: int

    def __post_init__(self) -> None:
        """:raises MessageError: for a nonce out of range."""
        _int(self.nonce, 0, MAX_NONCE, self.command, "nonce")

    def _to_json(self) -> dict[str, object]:
        return {"nonce": self.nonce}

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        return cls(_require(obj, "nonce", cls.command))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Ping(_NonceMessage):
    """A liveness probe; the peer answers with a :class:`Pong` carrying the same nonce."""

    command: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Pong(_NonceMessage):
    """The answer to a :class:`Ping`, with the nonce of the ping answered."""

    command: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Inv:
    """
    An announcement of events the sender holds, by id.

    :ivar ids: 1 to :data:`MAX_INV` event ids, each 64 lowercase hex digits.
    :ivar ttl: hops the announcement may still travel, 0 to :data:`MAX_TTL`.
    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "inv"

    ids: tuple[str, ...]
    ttl: int
    market: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a bad count, a bad id, a ttl out of range or a bad market."""
        _check_ids(self.ids, self.command)
        _int(self.ttl, 0, MAX_TTL, self.command, "ttl")
        _check_market(self.market, self.command)

    def _to_json(self) -> dict[str, object]:
        return _with_market({"ids": list(self.ids), "ttl": self.ttl}, self.market)

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        return cls(
            ids=tuple(_list(obj, "ids", 1, MAX_INV, c)),  # type: ignore[arg-type]
            ttl=_require(obj, "ttl", c),  # type: ignore[arg-type]
            market=_market_of(obj),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class GetData:
    """
    A request for events by id, typically those of an ``inv`` the receiver lacks.

    :ivar ids: 1 to :data:`MAX_INV` event ids, each 64 lowercase hex digits.
    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "getdata"

    ids: tuple[str, ...]
    market: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a bad count, a bad id or a bad market."""
        _check_ids(self.ids, self.command)
        _check_market(self.market, self.command)

    def _to_json(self) -> dict[str, object]:
        return _with_market({"ids": list(self.ids)}, self.market)

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        return cls(
            ids=tuple(_list(obj, "ids", 1, MAX_INV, cls.command)),  # type: ignore[arg-type]
            market=_market_of(obj),  # type: ignore[arg-type]
        )


def _check_ids(ids: object, command: str) -> None:
    """Check the ``ids`` of an ``inv`` or ``getdata``."""
    for index, event_id in enumerate(_tuple(ids, 1, MAX_INV, command, "ids")):
        _hex64(event_id, "an event id", command, f"ids[{index}]")


@dataclass(frozen=True)
class Events:
    """
    Signed events, pushed for relay or sent as an answer.

    The wire layer checks only the shape of each event; what the text means
    and whether the signature is valid is for the receiver to decide.

    :ivar events: at most :data:`MAX_EVENTS` pairs ``(text, sig)``: ``text``
        is 1 to :data:`MAX_EVENT_TEXT` printable ASCII characters (0x20 to
        0x7e), ``sig`` is 128 lowercase hex digits or a batch signature
        (``b`` then digits, dots and hex digits, at most 779 characters).
        May be empty.
    :ivar ttl: hops the events may still be relayed, 0 to :data:`MAX_TTL`;
        0 means do not relay.
    :ivar more: ``True`` when the sender has more events for the receiver in
        an anti-entropy exchange.
    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "events"

    events: tuple[tuple[str, str], ...]
    ttl: int
    more: bool
    market: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a bad count, a malformed event, a bad ttl, more or market."""
        c = self.command
        _check_signed_texts(self.events, MAX_EVENTS, MAX_EVENT_TEXT, c, "events", _EVENT_SIG_RE)
        _int(self.ttl, 0, MAX_TTL, c, "ttl")
        if type(self.more) is not bool:
            raise MessageError(
                f"must be true or false, not {_show(self.more)}", command=c, field="more"
            )
        _check_market(self.market, c)

    def _to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "events": [[text, sig] for text, sig in self.events],
            "ttl": self.ttl,
            "more": self.more,
        }
        return _with_market(out, self.market)

    @classmethod
    def prepared(
        cls,
        events: tuple[tuple[str, str], ...],
        fragments: Sequence[str],
        ttl: int,
        more: bool,
        market: str = "",
    ) -> Events:
        """
        An ``events`` message of events the node has parsed and checked
        already, with each one's :func:`event_fragment`: not checked again,
        and :func:`encode_message` joins the fragments instead of encoding
        the events (a relayed event is encoded once, not once per peer).

        The caller vouches for the rest: at most :data:`MAX_EVENTS`
        events, C{ttl} from 0 to :data:`MAX_TTL`.  The market, one per
        message, is checked.

        :raises MessageError: for a bad C{market}.
        """
        _check_market(market, cls.command)
        message = object.__new__(cls)
        object.__setattr__(message, "events", events)
        object.__setattr__(message, "ttl", ttl)
        object.__setattr__(message, "more", more)
        object.__setattr__(message, "market", market)
        # The keys in encode_message's order (sorted): events, market, more, ttl.
        named = b'"market":%s,' % _json_text(market).encode("utf-8") if market else b""
        payload = b'{"events":[%s],%s"more":%s,"ttl":%d}' % (
            ",".join(fragments).encode("utf-8"),
            named,
            b"true" if more else b"false",
            ttl,
        )
        object.__setattr__(message, "_payload", payload)
        return message

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        raw = _list(obj, "events", 0, MAX_EVENTS, c)
        return cls(
            events=_pairs(raw, "[text, sig]", c, "events"),  # type: ignore[arg-type]
            ttl=_require(obj, "ttl", c),  # type: ignore[arg-type]
            more=_require(obj, "more", c),  # type: ignore[arg-type]
            market=_market_of(obj),  # type: ignore[arg-type]
        )


def _check_signed_texts(
    entries: object,
    max_count: int,
    max_text: int,
    command: str,
    field: str,
    sig_shape: re.Pattern[str],
) -> None:
    """
    Check the ``(text, sig)`` pairs of an ``events`` or ``stamps`` message:
    0 to C{max_count} of them, each text 1 to C{max_text} printable ASCII
    characters, each sig of C{sig_shape}.
    """
    # Up to 1000 entries per message, on the hot path: plain loops, no per-entry objects.
    for index, entry in enumerate(_tuple(entries, 0, max_count, command, field)):
        if not isinstance(entry, tuple) or len(entry) != 2:
            _bad_pair(entry, "(text, sig)", command, f"{field}[{index}]")
        text, sig = entry
        if (
            not isinstance(text, str)
            or not 1 <= len(text) <= max_text
            or not text.isascii()
            or not text.isprintable()
        ):
            _bad_event_text(text, command, f"{field}[{index}][0]", max_text)
        if not isinstance(sig, str) or sig_shape.fullmatch(sig) is None:
            shape = "128 lowercase hex digits"
            if sig_shape is _EVENT_SIG_RE:
                shape += " or a batch signature"
            raise MessageError(
                f"must be a signature ({shape}), not {_show(sig)}",
                command=command,
                field=f"{field}[{index}][1]",
            )


def _bad_event_text(
    text: object, command: str, field: str, max_text: int = MAX_EVENT_TEXT
) -> NoReturn:
    """Say what is wrong with an event's (or stamp's) text that failed the fast check."""
    if not isinstance(text, str):
        problem = f"must be a string, not {_show(text)}"
    elif not 1 <= len(text) <= max_text:
        problem = f"must be 1 to {max_text} characters long, not {len(text)}"
    else:
        problem = f"must be printable ASCII (0x20 to 0x7e), not {_show(text)}"
    raise MessageError(problem, command=command, field=field)


@dataclass(frozen=True)
class Stamps:
    """
    Witness stamps, spread as they are signed or sent as an anti-entropy answer.

    The wire layer checks only their shape; what a stamp says and whether
    its signature is valid is for the receiver to decide.

    :ivar stamps: 0 to :data:`MAX_STAMPS` pairs ``(text, sig)``: ``text`` is
        1 to :data:`MAX_STAMP_TEXT` printable ASCII characters, ``sig`` 128
        lowercase hex digits.
    :ivar more: ``True`` when the sender has more stamps for the receiver
        in an anti-entropy exchange.
    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "stamps"

    stamps: tuple[tuple[str, str], ...]
    more: bool
    market: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a bad count, a malformed stamp, a bad more or market."""
        c = self.command
        _check_signed_texts(self.stamps, MAX_STAMPS, MAX_STAMP_TEXT, c, "stamps", _SIG_RE)
        if type(self.more) is not bool:
            raise MessageError(
                f"must be true or false, not {_show(self.more)}", command=c, field="more"
            )
        _check_market(self.market, c)

    def _to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "stamps": [[text, sig] for text, sig in self.stamps],
            "more": self.more,
        }
        return _with_market(out, self.market)

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        raw = _list(obj, "stamps", 0, MAX_STAMPS, c)
        return cls(
            stamps=_pairs(raw, "[text, sig]", c, "stamps"),  # type: ignore[arg-type]
            more=_require(obj, "more", c),  # type: ignore[arg-type]
            market=_market_of(obj),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Sync:
    """
    An anti-entropy summary of the events the sender has applied.

    :ivar vector: at most :data:`MAX_VECTOR` pairs ``(author, seq)``:
        ``author`` is an Ed25519 public key, 64 lowercase hex digits, unique
        within the message; ``seq`` is 0 to :data:`MAX_SEQ`.  May be empty.
    :ivar digest: a hash of the sender's applied event set, 64 lowercase hex
        digits, for receivers to compare with their own.
    :ivar chains: optional, at most :data:`MAX_CHAINS` pairs ``(author,
        digest)``: a hash of each author's chain (64 lowercase hex digits,
        authors unique), sent when the receiver's last ``digest`` differed
        although the vectors agreed; absent from the JSON when empty.
    :ivar stamps: optional, at most :data:`MAX_WITNESS_VECTOR` pairs
        ``(witness, seq)``: per witness key (64 lowercase hex digits,
        unique), the highest seq of its stamps the sender holds without a
        gap; absent from the JSON when empty.
    :ivar market: the market the message is about: a trading pair of 1 to
        :data:`MAX_PAIR` characters, or ``""`` (absent from the JSON) for the
        sender's ``pair``.
    """

    command: ClassVar[str] = "sync"

    vector: tuple[tuple[str, int], ...]
    digest: str
    chains: tuple[tuple[str, str], ...] = ()
    stamps: tuple[tuple[str, int], ...] = ()
    market: str = ""

    def __post_init__(self) -> None:
        """
        :raises MessageError: for a bad count, a malformed or repeated
            entry, a bad digest or a bad market.
        """
        c = self.command
        _keyed_pairs(
            self.vector,
            MAX_VECTOR,
            c,
            "vector",
            ("author", "an author key", "(author, seq)"),
            lambda seq, field: _int(seq, 0, MAX_SEQ, c, field),
        )
        _hex64(self.digest, "a digest", c, "digest")
        _keyed_pairs(
            self.chains,
            MAX_CHAINS,
            c,
            "chains",
            ("author", "an author key", "(author, digest)"),
            lambda digest, field: _hex64(digest, "a digest", c, field),
        )
        _keyed_pairs(
            self.stamps,
            MAX_WITNESS_VECTOR,
            c,
            "stamps",
            ("witness", "a witness key", "(witness, seq)"),
            lambda seq, field: _int(seq, 0, MAX_SEQ, c, field),
        )
        _check_market(self.market, c)

    def _to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "vector": [[author, seq] for author, seq in self.vector],
            "digest": self.digest,
        }
        if self.chains:
            out["chains"] = [[author, digest] for author, digest in self.chains]
        if self.stamps:
            out["stamps"] = [[witness, seq] for witness, seq in self.stamps]
        return _with_market(out, self.market)

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        raw = _list(obj, "vector", 0, MAX_VECTOR, c)
        chains: tuple[tuple[object, object], ...] = ()
        if "chains" in obj:
            chains = _pairs(_list(obj, "chains", 0, MAX_CHAINS, c), "[author, digest]", c, "chains")
        stamps: tuple[tuple[object, object], ...] = ()
        if "stamps" in obj:
            stamps = _pairs(
                _list(obj, "stamps", 0, MAX_WITNESS_VECTOR, c), "[witness, seq]", c, "stamps"
            )
        return cls(
            vector=_pairs(raw, "[author, seq]", c, "vector"),  # type: ignore[arg-type]
            digest=_require(obj, "digest", c),  # type: ignore[arg-type]
            chains=chains,  # type: ignore[arg-type]
            stamps=stamps,  # type: ignore[arg-type]
            market=_market_of(obj),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class DialBack:
    """
    A request to dial the sender back: "open a connection to my address as
    you see it (the link's remote IP) at C{port}, and tell me whether my
    node answered there" (the answer is a :class:`DialedBack`).  Sent only
    to a peer whose ``version`` lists the ``dialback`` service.

    :ivar nonce: names the request in its answer, ``0 <= nonce < 2**64``.
    :ivar port: the TCP port to dial, 1 to 65535.
    """

    command: ClassVar[str] = "dialback"

    nonce: int
    port: int

    def __post_init__(self) -> None:
        """:raises MessageError: for a nonce or port out of range."""
        _int(self.nonce, 0, MAX_NONCE, self.command, "nonce")
        _port(self.port, self.command, "port", allow_zero=False)

    def _to_json(self) -> dict[str, object]:
        return {"nonce": self.nonce, "port": self.port}

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        return cls(_require(obj, "nonce", c), _require(obj, "port", c))  # type: ignore[arg-type]


@dataclass(frozen=True)
class DialedBack:
    """
    The answer to a :class:`DialBack`.

    :ivar nonce: the request's nonce.
    :ivar address: the address dialled, ``host:port`` (``[v6]:port``), at
        most 64 characters.
    :ivar ok: whether a node proving the requester's node id answered there.
    :ivar reason: why not, in a few words (``""`` when ``ok``), at most
        :data:`MAX_REASON` characters.
    """

    command: ClassVar[str] = "dialedback"

    nonce: int
    address: str
    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        """:raises MessageError: for a field out of its type or range."""
        c = self.command
        _int(self.nonce, 0, MAX_NONCE, c, "nonce")
        _str(self.address, 1, 64, c, "address")
        if not isinstance(self.ok, bool):
            raise MessageError(f"must be true or false, not {_show(self.ok)}", command=c,
                               field="ok")  # fmt: skip
        _str(self.reason, 0, MAX_REASON, c, "reason")

    def _to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"nonce": self.nonce, "address": self.address, "ok": self.ok}
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def _from_json(cls, obj: Mapping[str, object]) -> Self:
        c = cls.command
        return cls(
            _require(obj, "nonce", c),  # type: ignore[arg-type]
            _require(obj, "address", c),  # type: ignore[arg-type]
            _require(obj, "ok", c),  # type: ignore[arg-type]
            obj.get("reason", ""),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Unknown:
    """
    A message whose command this version does not know, kept unparsed.

    Newer peers may send commands we do not know; the protocol ignores them
    after the handshake.

    :ivar command: a valid frame command that is not one of :data:`COMMANDS`.
    :ivar payload: the raw payload, at most :data:`~bitfitech.wire.framing.MAX_PAYLOAD` bytes.
    """

    command: str
    payload: bytes

    def __post_init__(self) -> None:
        """:raises MessageError: for an invalid or known command, or a bad payload."""
        if not is_command(self.command):
            raise MessageError(
                f"invalid command {_show(self.command)} (expected 1 to 12 of [a-z0-9_])"
            )
        if self.command in COMMANDS:
            raise MessageError("is a known command, not an unknown one", command=self.command)
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_PAYLOAD:
            raise MessageError(
                f"payload must be at most {MAX_PAYLOAD} bytes, not {_show(self.payload)}",
                command=self.command,
            )


KnownMessage: TypeAlias = (
    Version
    | Verack
    | GetAddr
    | Addr
    | Ping
    | Pong
    | Inv
    | GetData
    | Events
    | Sync
    | Prune
    | Stamps
    | DialBack
    | DialedBack
)
"""A message of a command this version knows."""

_KNOWN_CLASSES: tuple[type[KnownMessage], ...] = get_args(KnownMessage)
"""The classes of :data:`KnownMessage`: a new message is added to that union only."""

Message: TypeAlias = KnownMessage | Unknown
"""Any message that can travel in a frame."""

COMMANDS: Mapping[str, type[KnownMessage]] = MappingProxyType(
    {cls.command: cls for cls in _KNOWN_CLASSES}
)
"""The known commands and the message class of each."""


def describe(message: Message) -> str:
    """
    Name a message for logs.

    :return: its command name, such as ``"version"``.
    """
    return message.command


def event_fragment(text: str, sig: str) -> str:
    """One event's ``[text, sig]`` entry in an ``events`` payload, as encode_message writes it."""
    return json.dumps([text, sig], separators=(",", ":"), ensure_ascii=False)


def _json_text(value: str) -> str:
    """A string as a JSON string, as :func:`encode_message` writes it (raw UTF-8, not escaped)."""
    return json.dumps(value, ensure_ascii=False)


def encode_message(message: Message) -> tuple[str, bytes]:
    """
    Turn a message into a frame's command and payload.

    :return: the command and the compact, deterministic UTF-8 JSON payload
        (the raw payload for :class:`Unknown`, the joined fragments for
        :meth:`Events.prepared`).
    :raises TypeError: for something that is not a message.
    """
    if isinstance(message, Unknown):
        return message.command, message.payload
    if type(message) is Events and "_payload" in message.__dict__:
        return message.command, message.__dict__["_payload"]
    if not isinstance(message, _KNOWN_CLASSES):
        raise TypeError(f"not a message: {_show(message)}")
    text = json.dumps(message._to_json(), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return message.command, text.encode("utf-8")


def decode_message(command: str, payload: bytes) -> Message:
    """
    Turn a frame's command and payload into a typed message.

    :param command: the frame's command.
    :param payload: the frame's payload.
    :return: the message; :class:`Unknown` for a command not in
        :data:`COMMANDS` (its payload is not parsed).
    :raises MessageError: for a malformed payload or an invalid command.
    """
    cls = COMMANDS.get(command)
    if cls is None:
        return Unknown(command, payload)
    return cls._from_json(_parse_object(command, payload))


def _require(obj: Mapping[str, object], key: str, command: str) -> object:
    """Get a required field of a JSON object."""
    if key not in obj:
        raise MessageError("missing", command=command, field=key)
    return obj[key]


class _DuplicateKey(Exception):
    """Raised by :func:`_unique_object`; :func:`_parse_object` names the command."""


class _BadConstant(Exception):
    """Raised by :func:`_reject_constant`; :func:`_parse_object` names the command."""


def _reject_constant(name: str) -> NoReturn:
    raise _BadConstant(name)


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_object)
"""One strict decoder for every payload (``json.loads`` with options makes one a call)."""


def _parse_object(command: str, payload: bytes) -> dict[str, object]:
    """
    Parse a payload as a strict UTF-8 JSON object.

    :raises MessageError: for invalid UTF-8, invalid JSON, NaN or Infinity,
        duplicate keys, nesting too deep, or a top level other than an object.
    """
    if not isinstance(payload, bytes):
        raise MessageError(f"payload must be bytes, not {type(payload).__name__}", command=command)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MessageError(f"payload is not UTF-8: {error}", command=command) from None
    try:
        obj = _DECODER.decode(text)
    except _DuplicateKey as duplicate:
        raise MessageError(f"duplicate key {_show(duplicate.args[0])}", command=command) from None
    except _BadConstant as constant:
        raise MessageError(f"{constant.args[0]} is not allowed in JSON", command=command) from None
    except RecursionError:
        raise MessageError("payload JSON is nested too deeply", command=command) from None
    except ValueError as error:
        # json.JSONDecodeError, and integers longer than Python's digit limit.
        raise MessageError(f"payload is not valid JSON: {error}", command=command) from None
    if not isinstance(obj, dict):
        raise MessageError(
            f"payload must be a JSON object, not {type(obj).__name__}", command=command
        )
    return obj
