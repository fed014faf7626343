"""The mDNS responder: how this node makes its P2P address known on the LAN.

Data path: :class:`~bitfitech.discovery.mdns.service.MDNSProtocol` ->
:meth:`Responder.handle_query` / :meth:`Responder.handle_response` ->
answers, probes and announcements -> the protocol's ``send``.

The node owns one DNS-SD service instance, ``<node id>._bitfi._tcp.local.``
(RFC 6763), served by a host name ``bitfi-<first 12 hex of the id>.local.``:

* shared records: PTR ``_bitfi._tcp.local.`` -> the instance, and the
  service enumeration PTR ``_services._dns-sd._udp.local.`` -> the type;
* unique records (cache-flush bit set): SRV and TXT of the instance, A and
  AAAA of the host name (IPv4 and IPv6 addresses alike, whichever socket
  a packet goes out on: a record says nothing of the family it travels in).

Before answering for them the responder claims the unique names (RFC 6762
§8): three probe queries 250 ms apart with the proposed records in the
authority section.  A response naming them, or a simultaneous probe whose
records sort later (§8.2), is a conflict: the instance becomes
``<node id> (2)`` (the host ``bitfi-<...>-2``) and probing starts again.
Then it announces everything (§8.3) three times, 1 and 2 s apart, answers
queries (§6: known-answer suppression, QU and legacy unicast, a 20-120 ms
delay for shared answers, at most one multicast per record a second) and
says goodbye (TTL 0) on :meth:`Responder.stop`.  Additional records follow
RFC 6763 §12 (a PTR brings the SRV, the TXT and the addresses, an SRV the
addresses) and RFC 6762 §6.2: an address record of one family brings those
of the other, or, for a host of one family only, an NSEC record saying so.

Time comes from an injected :class:`~twisted.internet.interfaces.IReactorTime`;
the only I/O is the ``send`` callable.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ...logs import logger
from .codec import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_NSEC,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    AddressData,
    NSECData,
    Packet,
    PTRData,
    Question,
    Record,
    RecordKey,
    SRVData,
    TXTData,
    name_key,
    rdata_bytes,
)

log = logger(__name__)

SERVICE_TYPE = "_bitfi._tcp.local."
"""The DNS-SD service type of bitfi's P2P listener."""

SERVICE_ENUMERATION = "_services._dns-sd._udp.local."
"""The name that lists the service types on the link (RFC 6763 §9)."""

MDNS_PORT = 5353
"""The mDNS UDP port."""

HOST_TTL = 120
"""TTL of records naming a host, or pointing to one (A, AAAA, SRV: RFC 6762 §10)."""

OTHER_TTL = 4500
"""TTL of the other records (PTR, TXT)."""

LEGACY_TTL = 10
"""Largest TTL in answers to legacy unicast queries (RFC 6762 §6.7)."""

PROBE_WAIT = 0.25
"""Seconds between probes, and the largest random wait before the first."""

PROBE_COUNT = 3
"""Probes sent before a name is ours."""

PROBE_DEFER = 1.0
"""Seconds to wait before probing again after losing a tie-break (§8.2)."""

CONFLICT_WINDOW = 10.0
CONFLICT_LIMIT = 15
CONFLICT_BACKOFF = 5.0
"""After CONFLICT_LIMIT conflicts in CONFLICT_WINDOW s, wait CONFLICT_BACKOFF s
before each probe (§8.1)."""

ANNOUNCE_INTERVALS = (1.0, 2.0)
"""Seconds between announcements: three of them, the interval doubling."""

SHARED_DELAY = (0.02, 0.12)
"""Range of the random delay before multicasting shared answers (§6)."""

MULTICAST_INTERVAL = 1.0
"""Least seconds between two multicasts of one record (§6)."""

DEFENCE_INTERVAL = 0.25
"""... except when defending a name against a probe."""

Send = Callable[[Packet, "tuple[str, int] | None"], None]
"""C{send(packet, destination)}: a destination of ``None`` is the mDNS group."""


def instance_label(node_id: str, number: int) -> str:
    """The instance label: the node id, then ``<node id> (2)``, ``(3)``... after conflicts."""
    return node_id if number == 1 else f"{node_id} ({number})"


def host_name(node_id: str, number: int) -> str:
    """The host name: ``bitfi-<12 hex>.local.``, then ``bitfi-<12 hex>-2.local.``..."""
    base = f"bitfi-{node_id[:12]}"
    return f"{base}.local." if number == 1 else f"{base}-{number}.local."


def _matches(question: Question, record: Record) -> bool:
    return name_key(question.name) == name_key(record.name) and question.qtype in (
        TYPE_ANY,
        record.rtype,
    )


def _probe_order(records: Sequence[Record]) -> list[tuple[int, bytes]]:
    # All records are class IN: sort by type, then raw rdata (§8.2).
    return sorted((record.rtype, rdata_bytes(record)) for record in records)


class Responder:
    """
    Claims, announces and defends this node's DNS-SD records.

    :ivar state: ``idle``, ``probing``, ``announcing`` (the records are ours
        and being announced), ``announced`` or ``stopped``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Send,
        rng: random.Random,
        *,
        node_id: str,
        txt: TXTData,
        port: int,
        addresses: Sequence[str],
        mdns_port: int = MDNS_PORT,
    ) -> None:
        """
        :param clock: schedules probes, announcements and delayed answers.
        :param send: sends a packet to the group or to one address.
        :param rng: draws the random delays.
        :param node_id: the node id, 40 lowercase hex digits.
        :param txt: the instance's TXT data.
        :param port: the node's TCP P2P port, for the SRV record.
        :param addresses: IP literals for the A and AAAA records.
        :param mdns_port: the multicast port: queries from other ports are
            legacy unicast queries.
        """
        self._clock = clock
        self._send = send
        self._rng = rng
        self._node_id = node_id
        self._txt = txt
        self._port = port
        self._addresses = tuple(addresses)
        self._mdns_port = mdns_port
        self._instance_number = 1
        self._host_number = 1
        self.state = "idle"
        self._timer: IDelayedCall | None = None
        self._probes_sent = 0
        self._conflicts: deque[float] = deque(maxlen=CONFLICT_LIMIT)
        self._last_multicast: dict[RecordKey, float] = {}
        self._pending: dict[RecordKey, Record] = {}
        self._pending_call: IDelayedCall | None = None

    # -- names and records

    @property
    def instance_name(self) -> str:
        """The full instance name now used (it changes after a conflict)."""
        return f"{instance_label(self._node_id, self._instance_number)}.{SERVICE_TYPE}"

    @property
    def host_name(self) -> str:
        """The host name now used as SRV target."""
        return host_name(self._node_id, self._host_number)

    def unique_records(self) -> list[Record]:
        """The records only this node may answer for: SRV, TXT, A, AAAA."""
        instance, host = self.instance_name, self.host_name
        records = [
            Record(instance, TYPE_SRV, HOST_TTL, SRVData(0, 0, self._port, host), True),
            Record(instance, TYPE_TXT, OTHER_TTL, self._txt, True),
        ]
        for address in self._addresses:
            rtype = TYPE_AAAA if ":" in address else TYPE_A
            records.append(Record(host, rtype, HOST_TTL, AddressData(address), True))
        return records

    def records(self) -> list[Record]:
        """Every record this node answers with: shared PTRs first, then the unique ones."""
        shared = [
            Record(SERVICE_TYPE, TYPE_PTR, OTHER_TTL, PTRData(self.instance_name)),
            Record(SERVICE_ENUMERATION, TYPE_PTR, OTHER_TTL, PTRData(SERVICE_TYPE)),
        ]
        return shared + self.unique_records()

    def _unique_names(self) -> tuple[str, str]:
        return (name_key(self.instance_name), name_key(self.host_name))

    # -- life cycle

    def start(self) -> None:
        """Start probing for the names, then announce."""
        if self.state == "idle":
            self._probe_again(self._rng.uniform(0, PROBE_WAIT))

    def stop(self) -> None:
        """Cancel every timer and, if the records were announced, send goodbyes."""
        if self.state in ("announcing", "announced"):
            goodbyes = tuple(record.with_ttl(0) for record in self.records())
            self._send(Packet(response=True, answers=goodbyes), None)
            log.debug("mDNS goodbye for {instance}", instance=self.instance_name)
        self.state = "stopped"
        self._cancel()

    def _cancel(self) -> None:
        for call in (self._timer, self._pending_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._pending_call = None
        self._pending.clear()

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, action)

    def _probe_again(self, delay: float) -> None:
        self._cancel()
        self.state = "probing"
        self._probes_sent = 0
        now = self._clock.seconds()
        if len(self._conflicts) == CONFLICT_LIMIT and now - self._conflicts[0] < CONFLICT_WINDOW:
            delay = max(delay, CONFLICT_BACKOFF)
        self._schedule(delay, self._send_probe)

    def _send_probe(self) -> None:
        first = self._probes_sent == 0
        questions = tuple(
            Question(name, TYPE_ANY, unicast=first) for name in (self.instance_name, self.host_name)
        )
        self._send(
            Packet(response=False, questions=questions, authority=tuple(self.unique_records())),
            None,
        )
        self._probes_sent += 1
        if self._probes_sent < PROBE_COUNT:
            self._schedule(PROBE_WAIT, self._send_probe)
        else:
            self._schedule(PROBE_WAIT, self._probed)

    def _probed(self) -> None:
        log.debug(
            "mDNS names claimed: {instance} on {host}",
            instance=self.instance_name,
            host=self.host_name,
        )
        self.state = "announcing"
        self._announce(0)

    def _announce(self, count: int) -> None:
        records = tuple(self.records())
        self._multicast(records, self._additional(records, {}))
        if count < len(ANNOUNCE_INTERVALS):
            self._schedule(ANNOUNCE_INTERVALS[count], lambda: self._announce(count + 1))
        else:
            self._timer = None
            self.state = "announced"

    # -- conflicts

    def _conflict(self, name: str) -> None:
        """Another host holds C{name} (an instance or host name key): rename and probe again."""
        self._conflicts.append(self._clock.seconds())
        old = self.instance_name if name == self._unique_names()[0] else self.host_name
        if name == self._unique_names()[0]:
            self._instance_number += 1
            new = self.instance_name
        else:
            self._host_number += 1
            new = self.host_name
        log.info("mDNS name conflict: {old} is taken, trying {new}", old=old, new=new)
        self._probe_again(self._rng.uniform(0, PROBE_WAIT))

    def _conflicting(self, records: Sequence[Record], *, same_type_only: bool) -> str | None:
        """The first of our unique names that C{records} contradict, or ``None``."""
        names = self._unique_names()
        mine = self.unique_records()
        keys = {record.key() for record in mine}
        types = {(name_key(record.name), record.rtype) for record in mine}
        for record in records:
            name = name_key(record.name)
            if name not in names or record.ttl == 0 or record.key() in keys:
                continue
            if same_type_only and (name, record.rtype) not in types:
                continue
            return name
        return None

    def _tie_break(self, probe: Packet) -> None:
        """Compare a simultaneous probe for our names with ours (§8.2): defer if we lose."""
        if self._probes_sent == 0:
            return
        mine = self.unique_records()
        for name in self._unique_names():
            theirs = [record for record in probe.authority if name_key(record.name) == name]
            if not theirs:
                continue
            ours = [record for record in mine if name_key(record.name) == name]
            if _probe_order(ours) < _probe_order(theirs):
                log.debug("mDNS probe tie-break for {name} lost: probing again", name=name)
                self._probe_again(PROBE_DEFER)
                return

    # -- received packets

    def handle_response(self, packet: Packet, source: tuple[str, int]) -> None:
        """Look for conflicts with our unique records in a response."""
        records = packet.answers + packet.additional
        if self.state == "probing" and self._probes_sent > 0:
            name = self._conflicting(records, same_type_only=False)
            if name is not None:
                self._conflict(name)
        elif self.state in ("announcing", "announced"):
            name = self._conflicting(records, same_type_only=True)
            if name is not None:
                # §9: probe again; a host still holding the name then answers.
                log.debug("mDNS record conflict for {name}: probing again", name=name)
                self._probe_again(self._rng.uniform(0, PROBE_WAIT))

    def handle_query(self, packet: Packet, source: tuple[str, int]) -> None:
        """Answer a query for our records, or break a probe tie while probing."""
        if self.state == "probing":
            if packet.authority:
                self._tie_break(packet)
            return
        if self.state not in ("announcing", "announced"):
            return
        legacy = source[1] != self._mdns_port
        probe = bool(packet.authority)
        known: dict[RecordKey, int] = {}
        for record in packet.answers:
            known[record.key()] = max(record.ttl, known.get(record.key(), 0))
        now = self._clock.seconds()
        unicast: dict[RecordKey, Record] = {}
        multicast: dict[RecordKey, Record] = {}
        for question in packet.questions:
            for record in self.records():
                key = record.key()
                if not _matches(question, record) or known.get(key, -1) >= record.ttl / 2:
                    continue
                recent = now - self._last_multicast.get(key, -1e18) < record.ttl / 4
                if legacy or (question.unicast and recent and not probe):
                    unicast[key] = record
                else:
                    multicast[key] = record
        if legacy and unicast:
            answers = tuple(
                record.with_ttl(min(record.ttl, LEGACY_TTL), cache_flush=False)
                for record in unicast.values()
            )
            additional = tuple(
                record.with_ttl(min(record.ttl, LEGACY_TTL), cache_flush=False)
                for record in self._additional(answers, known)
            )
            reply = Packet(
                response=True,
                id=packet.id,
                questions=packet.questions,
                answers=answers,
                additional=additional,
            )
            self._send(reply, source)
        elif unicast:
            answers = tuple(unicast.values())
            reply = Packet(
                response=True, answers=answers, additional=self._additional(answers, known)
            )
            self._send(reply, source)
        if not multicast:
            return
        if all(record.cache_flush for record in multicast.values()):
            # Only unique records: we are the sole answerer, answer now.
            interval = DEFENCE_INTERVAL if probe else MULTICAST_INTERVAL
            answers = self._not_recent(multicast.values(), interval)
            if answers:
                self._multicast(answers, self._additional(answers, known))
            return
        self._pending.update(multicast)
        if self._pending_call is None or not self._pending_call.active():
            self._pending_call = self._clock.callLater(
                self._rng.uniform(*SHARED_DELAY), self._send_pending
            )

    def _send_pending(self) -> None:
        self._pending_call = None
        answers = self._not_recent(self._pending.values(), MULTICAST_INTERVAL)
        self._pending.clear()
        if answers:
            self._multicast(answers, self._additional(answers, {}))

    def _not_recent(self, records: Iterable[Record], interval: float) -> tuple[Record, ...]:
        now = self._clock.seconds()
        return tuple(
            record
            for record in records
            if now - self._last_multicast.get(record.key(), -1e18) >= interval
        )

    def _additional(
        self, answers: Sequence[Record], known: dict[RecordKey, int]
    ) -> tuple[Record, ...]:
        """
        Records the querier will want next, not already sent or known: the
        SRV, TXT and addresses of an instance given by PTR, the addresses of
        a host given by SRV (RFC 6763 §12), and with addresses of one family
        those of the other, or an NSEC record when the host has none of
        that family (RFC 6762 §6.2).
        """
        mine = self.records()
        host = name_key(self.host_name)
        wanted: set[tuple[str, int]] = set()
        for record in answers:
            data = record.data
            if record.rtype == TYPE_PTR and isinstance(data, PTRData):
                target = name_key(data.target)
                wanted |= {(target, TYPE_SRV), (target, TYPE_TXT)}
                for other in mine:
                    if name_key(other.name) == target and isinstance(other.data, SRVData):
                        wanted |= {(name_key(other.data.target), TYPE_A)}
            elif record.rtype == TYPE_SRV and isinstance(data, SRVData):
                wanted |= {(name_key(data.target), TYPE_A)}
            elif record.rtype in (TYPE_A, TYPE_AAAA):
                wanted |= {(name_key(record.name), TYPE_A)}
        if (host, TYPE_A) in wanted:
            wanted |= {(host, TYPE_AAAA), (host, TYPE_NSEC)}
        sent = {record.key() for record in answers}
        nsec = self._address_nsec()
        return tuple(
            record
            for record in (*mine, *([nsec] if nsec is not None else []))
            if (name_key(record.name), record.rtype) in wanted
            and record.key() not in sent
            and known.get(record.key(), -1) < record.ttl / 2
        )

    def _address_nsec(self) -> Record | None:
        """
        For a host with addresses of one family only, the NSEC record that
        says it has no others (RFC 6762 §6.2); else ``None``.
        """
        types = tuple(
            sorted({record.rtype for record in self.unique_records()} & {TYPE_A, TYPE_AAAA})
        )
        if len(types) != 1:
            return None
        host = self.host_name
        return Record(host, TYPE_NSEC, HOST_TTL, NSECData(host, types), True)

    def _multicast(self, answers: Sequence[Record], additional: Sequence[Record]) -> None:
        packet = Packet(response=True, answers=tuple(answers), additional=tuple(additional))
        self._send(packet, None)
        now = self._clock.seconds()
        for record in (*answers, *additional):
            self._last_multicast[record.key()] = now
