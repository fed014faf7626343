"""mDNS packets as typed values: the first layer above the multicast socket.

Data path: datagram -> :func:`decode_packet` -> :class:`Packet` -> the
responder and the browser; and their :class:`Packet` -> :func:`encode_packet`
-> datagram.  The wire format itself is :mod:`twisted.names.dns`; this module
only adds what multicast DNS changes (RFC 6762 §18): the top bit of a
question's class asks for a unicast response (QU), the top bit of a record's
class flushes the receivers' caches of other records of that name and type.

Everything the rest of the package needs is reduced to frozen values here:
names are text with a trailing dot (compared with :func:`name_key`), record
data is one of :class:`PTRData`, :class:`SRVData`, :class:`TXTData` or
:class:`AddressData` (A and AAAA alike: the address's text tells the
family), and, to send only, :class:`NSECData` (RFC 6762 §6.1: which types a
name has, so that an IPv4-only host can say it has no AAAA record).
Records of other types and classes, NSEC included, are dropped on
decoding.  :func:`decode_packet` is total: on any input it returns a packet
or raises :class:`MDNSDecodeError`, never anything else.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.names import dns

MAX_PACKET = 9000
"""Largest mDNS datagram accepted or sent (RFC 6762 §17)."""

TYPE_A = dns.A
TYPE_PTR = dns.PTR
TYPE_TXT = dns.TXT
TYPE_AAAA = dns.AAAA
TYPE_SRV = dns.SRV
TYPE_NSEC = 47
TYPE_ANY = dns.ALL_RECORDS
CLASS_IN = dns.IN
CLASS_ANY = dns.ANY

_TOP_BIT = 0x8000
_MAX_LABEL = 63
_MAX_NAME = 255


class MDNSDecodeError(ValueError):
    """A datagram that is not a well-formed DNS message (or is too large)."""


@dataclass(frozen=True)
class PTRData:
    """A PTR record's data: the name it points to."""

    target: str


@dataclass(frozen=True)
class SRVData:
    """An SRV record's data (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class TXTData:
    """A TXT record's data: its character strings, in order."""

    strings: tuple[bytes, ...]


@dataclass(frozen=True)
class AddressData:
    """An A or AAAA record's data: an IP literal."""

    address: str


@dataclass(frozen=True)
class NSECData:
    """
    An NSEC record's data as mDNS uses it (RFC 6762 §6.1): the next name
    is the record's own name, and C{types} are those the name has (no
    other exists).
    """

    next_name: str
    types: tuple[int, ...]


RData = PTRData | SRVData | TXTData | AddressData | NSECData

RecordKey = tuple[str, int, RData]
"""What identifies a record apart from its TTL and flags: see :meth:`Record.key`."""


@dataclass(frozen=True)
class Question:
    """
    One question of a query.

    :ivar name: the name asked about.
    :ivar qtype: the record type asked for (``TYPE_ANY`` for all).
    :ivar unicast: the QU bit: the querier asks for a unicast answer.
    """

    name: str
    qtype: int
    unicast: bool = False


@dataclass(frozen=True)
class Record:
    """
    One resource record of class IN.

    :ivar name: the record's owner name.
    :ivar rtype: ``TYPE_PTR``, ``TYPE_SRV``, ``TYPE_TXT``, ``TYPE_A``,
        ``TYPE_AAAA`` or (sent only) ``TYPE_NSEC``.
    :ivar ttl: seconds the record may be cached; 0 is a goodbye.
    :ivar data: the record's data, of the class that goes with C{rtype}.
    :ivar cache_flush: the cache-flush bit, set on unique records.
    """

    name: str
    rtype: int
    ttl: int
    data: RData
    cache_flush: bool = False

    def key(self) -> RecordKey:
        """What identifies the record apart from its TTL and flags (names folded)."""
        return (name_key(self.name), self.rtype, _data_key(self.data))

    def with_ttl(self, ttl: int, *, cache_flush: bool | None = None) -> Record:
        """This record with another TTL (and optionally another cache-flush bit)."""
        flush = self.cache_flush if cache_flush is None else cache_flush
        return Record(self.name, self.rtype, ttl, self.data, flush)


@dataclass(frozen=True)
class Packet:
    """
    A DNS message as mDNS uses it.

    :ivar id: the message id: 0 on multicast, echoed in legacy unicast answers.
    :ivar response: the QR bit.
    :ivar truncated: the TC bit (a query whose known answers continue).
    :ivar opcode: must be 0 (standard query) for mDNS to look at the packet.
    :ivar rcode: must be 0 for mDNS to look at the packet.
    """

    response: bool
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    id: int = 0
    truncated: bool = False
    opcode: int = 0
    rcode: int = 0


def name_key(name: str) -> str:
    """C{name} folded for comparison: DNS names ignore ASCII case and the final dot."""
    folded = name.rstrip(".").translate(_ASCII_LOWER)
    return folded + "."


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _data_key(data: RData) -> RData:
    if isinstance(data, PTRData):
        return PTRData(name_key(data.target))
    if isinstance(data, SRVData):
        return SRVData(data.priority, data.weight, data.port, name_key(data.target))
    if isinstance(data, NSECData):
        return NSECData(name_key(data.next_name), data.types)
    return data


def _wire_name(name: str) -> bytes:
    wire = name.rstrip(".").encode("utf-8")
    labels = wire.split(b".") if wire else []
    if len(wire) + 2 > _MAX_NAME or any(not 0 < len(label) <= _MAX_LABEL for label in labels):
        raise ValueError(f"not an encodable DNS name: {name!r}")
    return wire


def _text_name(wire: bytes) -> str:
    """A decoded name as text, or ValueError if it could not be sent back."""
    text = wire.decode("utf-8") + "."
    # Twisted joins labels with dots: a label holding a dot, or one longer
    # than 63 bytes (lengths 64-191 are read as lengths too), cannot be
    # told apart or encoded again.
    _wire_name(text)
    return text


def _nsec_rdata(data: NSECData) -> bytes:
    """
    NSEC record data (RFC 4034 §4.1): the next name, never compressed
    (§4.1.1), then the type bit maps, one per window of 256 types in use.
    """
    wire = _wire_name(data.next_name)
    name = b"".join(bytes([len(label)]) + label for label in wire.split(b".") if label) + b"\0"
    windows: dict[int, bytearray] = {}
    for rtype in data.types:
        if not 0 < rtype < 65536:
            raise ValueError(f"not a record type: {rtype}")
        window, low = divmod(rtype, 256)
        windows.setdefault(window, bytearray(32))[low // 8] |= 0x80 >> (low % 8)
    maps = b""
    for window in sorted(windows):
        bitmap = bytes(windows[window]).rstrip(b"\0")
        maps += bytes([window, len(bitmap)]) + bitmap
    return name + maps


def _payload(record: Record) -> Any:
    data = record.data
    if record.rtype == TYPE_PTR and isinstance(data, PTRData):
        return dns.Record_PTR(_wire_name(data.target), ttl=record.ttl)
    if record.rtype == TYPE_SRV and isinstance(data, SRVData):
        return dns.Record_SRV(
            data.priority, data.weight, data.port, _wire_name(data.target), ttl=record.ttl
        )
    if record.rtype == TYPE_TXT and isinstance(data, TXTData):
        return dns.Record_TXT(*(data.strings or (b"",)), ttl=record.ttl)
    if record.rtype == TYPE_A and isinstance(data, AddressData):
        return dns.Record_A(data.address, ttl=record.ttl)
    if record.rtype == TYPE_AAAA and isinstance(data, AddressData):
        return dns.Record_AAAA(data.address, ttl=record.ttl)
    if record.rtype == TYPE_NSEC and isinstance(data, NSECData):
        # twisted.names has no NSEC type: its raw data goes out as is.
        return dns.UnknownRecord(_nsec_rdata(data), ttl=record.ttl)
    raise ValueError(f"record data {data!r} does not go with type {record.rtype}")


def _header(record: Record) -> dns.RRHeader:
    cls = CLASS_IN | (_TOP_BIT if record.cache_flush else 0)
    return dns.RRHeader(
        _wire_name(record.name), record.rtype, cls, record.ttl, payload=_payload(record)
    )


def rdata_bytes(record: Record) -> bytes:
    """
    C{record}'s data in wire form with names uncompressed, as the probe
    tie-break compares it (RFC 6762 §8.2).
    """
    out = BytesIO()
    _payload(record).encode(out, None)
    return out.getvalue()


def encode_packet(packet: Packet) -> bytes:
    """
    The datagram for C{packet} (names compressed, never truncated).

    Responses carry the AA bit, as RFC 6762 §18.4 asks.

    :raises ValueError: for a name that cannot be encoded (a label over 63
        bytes) or record data that does not match its type.
    """
    message = dns.Message(
        id=packet.id,
        answer=int(packet.response),
        opCode=packet.opcode,
        auth=packet.response,
        trunc=int(packet.truncated),
        maxSize=0,
    )
    for question in packet.questions:
        cls = CLASS_IN | (_TOP_BIT if question.unicast else 0)
        message.queries.append(dns.Query(_wire_name(question.name), question.qtype, cls))
    message.answers = [_header(record) for record in packet.answers]
    message.authority = [_header(record) for record in packet.authority]
    message.additional = [_header(record) for record in packet.additional]
    encoded: bytes = message.toStr()
    return encoded


def _record(header: dns.RRHeader) -> Record | None:
    """Our view of one decoded record, or ``None`` for one we do not use."""
    if header.cls & ~_TOP_BIT != CLASS_IN:
        return None
    payload = header.payload
    data: RData
    if isinstance(payload, dns.Record_PTR) and header.type == TYPE_PTR:
        data = PTRData(_text_name(payload.name.name))
    elif isinstance(payload, dns.Record_SRV) and header.type == TYPE_SRV:
        data = SRVData(
            payload.priority, payload.weight, payload.port, _text_name(payload.target.name)
        )
    elif isinstance(payload, dns.Record_TXT) and header.type == TYPE_TXT:
        data = TXTData(tuple(bytes(s) for s in payload.data))
    elif isinstance(payload, dns.Record_A) and header.type == TYPE_A:
        data = AddressData(socket.inet_ntop(socket.AF_INET, payload.address))
    elif isinstance(payload, dns.Record_AAAA) and header.type == TYPE_AAAA:
        data = AddressData(socket.inet_ntop(socket.AF_INET6, payload.address))
    else:
        return None
    return Record(
        _text_name(header.name.name),
        header.type,
        int(header.ttl),
        data,
        cache_flush=bool(header.cls & _TOP_BIT),
    )


def _records(headers: list[dns.RRHeader]) -> tuple[Record, ...]:
    records = []
    for header in headers:
        try:
            record = _record(header)
        except (ValueError, OSError, AttributeError, TypeError):
            # A name that is not UTF-8 or cannot be sent back, an address
            # of the wrong length: that record only is unusable.
            continue
        if record is not None:
            records.append(record)
    return tuple(records)


def decode_packet(datagram: bytes) -> Packet:
    """
    Decode one mDNS datagram.

    Records whose class is not IN, whose type is not PTR, SRV, TXT, A or
    AAAA (an NSEC record too: nothing here reads one), or whose names are
    not UTF-8, are left out; so are questions of
    other classes.  A message cut short keeps what was read before the cut
    (as Twisted reads it).

    :raises MDNSDecodeError: for a datagram over :data:`MAX_PACKET` bytes or
        one that is not a DNS message; never any other exception.
    """
    if len(datagram) > MAX_PACKET:
        raise MDNSDecodeError(f"datagram of {len(datagram)} bytes, over {MAX_PACKET}")
    message = dns.Message()
    try:
        message.fromStr(datagram)
        questions = []
        for query in message.queries:
            if query.cls & ~_TOP_BIT not in (CLASS_IN, CLASS_ANY):
                continue
            try:
                name = _text_name(query.name.name)
            except ValueError:
                continue
            questions.append(Question(name, query.type, bool(query.cls & _TOP_BIT)))
        return Packet(
            response=bool(message.answer),
            questions=tuple(questions),
            answers=_records(message.answers),
            authority=_records(message.authority),
            additional=_records(message.additional),
            id=message.id,
            truncated=bool(message.trunc),
            opcode=message.opCode,
            rcode=message.rCode,
        )
    except Exception as error:
        # twisted.names raises struct.error, EOFError, IndexError,
        # ValueError, UnicodeDecodeError, DNSDecodeError...: whatever it
        # is, the datagram is not one we can use.
        raise MDNSDecodeError(f"not a DNS message: {error!r}") from error


def parse_txt(data: TXTData) -> dict[str, bytes | None]:
    """
    A TXT record's ``key=value`` pairs (RFC 6763 §6).

    Keys are folded to lowercase; the first occurrence of a key wins; a
    string without ``=`` is a boolean attribute (value ``None``); empty
    strings, strings starting with ``=`` and keys that are not printable
    ASCII are skipped.
    """
    pairs: dict[str, bytes | None] = {}
    for string in data.strings:
        raw_key, sep, value = string.partition(b"=")
        if not raw_key or any(not 0x20 <= byte <= 0x7E for byte in raw_key):
            continue
        key = raw_key.decode("ascii").lower()
        if key not in pairs:
            pairs[key] = value if sep else None
    return pairs


def make_txt(pairs: dict[str, str]) -> TXTData:
    """
    TXT data holding C{pairs} as ``key=value`` strings, in the order given.

    :raises ValueError: for a string over 255 bytes or a key with ``=``.
    """
    strings = []
    for key, value in pairs.items():
        if not key or "=" in key:
            raise ValueError(f"invalid TXT key {key!r}")
        string = f"{key}={value}".encode()
        if len(string) > 255:
            raise ValueError(f"TXT string for {key!r} over 255 bytes")
        strings.append(string)
    return TXTData(tuple(strings))
