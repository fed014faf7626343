"""The mDNS browser: how this node learns other nodes' P2P addresses on the LAN.

Data path: :class:`~bitfitech.discovery.mdns.service.MDNSProtocol` ->
:meth:`Browser.handle_response` -> a bounded record cache -> one
:class:`_Instance` per ``_bitfi._tcp.local.`` instance -> ``found(host,
port, node_id, markets)`` -> the address book.  Queries go out through
``send``.

* **Browsing.**  A PTR query for the service type 20-120 ms after start,
  then after 1 s, the interval doubling up to 60 minutes (RFC 6762 §5.2),
  with the instances still known as known answers (§7.1; several packets
  with the TC bit when they do not fit in one).
* **Learning.**  Every response is read, asked for or not (announcements,
  answers to other hosts' queries): PTRs for the service type add
  instances, up to :data:`MAX_INSTANCES`; SRV and TXT records of known
  instances and A/AAAA records of their hosts fill them in.  The cache
  honours the cache-flush bit (§10.2) and goodbyes (TTL 0 means: gone in
  one second, §10.1), and asks again for the records it uses at 80, 85, 90
  and 95 % of their TTL (§5.2).
* **Resolving.**  An instance whose SRV, TXT or address is missing is
  asked for them (A and AAAA; up to three times, 1, 2 and 4 s apart).
* **Handing on.**  A complete instance whose TXT says ``id`` (40 lowercase
  hex, not ours), ``net`` (ours) and markets that share one with ours is
  handed to ``found`` with one address of each family it has: an IPv4
  address (A) and an IPv6 one (AAAA), each the address the instance's
  packets came from over that family when it is one of them, else the
  first; the preferred family first (IPv4, unless told otherwise).  Each
  (address, port) is handed on once, and again when the shared markets
  change.  Link-local IPv6 addresses (``fe80::/10``) are never handed on:
  they are dialled only with their interface's zone (``fe80::1%eth0``),
  which a packet's source does not carry (Twisted drops it) and which the
  peer layer's dialler would drop; an instance with no other address is
  ignored, with that reason.  An instance whose PTR or SRV expires or says
  goodbye is forgotten.
* **Markets in TXT** (:func:`instance_txt`, :func:`instance_markets`):
  ``pair`` is the first market (what browsers before markets read), and
  ``markets`` lists them all, comma-separated, continued in ``markets1``,
  ``markets2``... when one string would pass 255 bytes (RFC 6763 §6.1).
  An instance with no ``markets`` carries its ``pair`` only.

Pure apart from ``send``, ``found`` and the injected clock.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from ...address import format_hostport, is_node_id
from ...logs import logger
from .. import OnePeerFound, PeerFound, reporting
from .codec import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    AddressData,
    Packet,
    PTRData,
    Question,
    Record,
    RecordKey,
    SRVData,
    TXTData,
    encode_packet,
    make_txt,
    name_key,
    parse_txt,
)
from .responder import SERVICE_TYPE

log = logger(__name__)

MAX_INSTANCES = 256
"""Most service instances tracked at once; further ones are ignored."""

MAX_PER_NAME = 16
"""Most records kept for one name and type (a host's addresses, say)."""

FIRST_QUERY_DELAY = (0.02, 0.12)
"""Range of the random wait before the first browse query (§5.2)."""

FIRST_INTERVAL = 1.0
"""Seconds between the first and second browse queries; then it doubles."""

MAX_INTERVAL = 3600.0
"""Longest interval between browse queries (§5.2)."""

REFRESH_AT = (0.80, 0.85, 0.90, 0.95)
"""Fractions of a record's TTL at which it is asked for again (plus up to 2 %)."""

RESOLVE_TRIES = 3
"""Queries for the missing records of an instance before waiting for news."""

TICK = 1.0
"""Seconds between cache expiry and refresh checks."""

QUERY_PACKET = 1400
"""Largest query datagram built with known answers (fits an Ethernet frame)."""

TXT_STRING = 255
"""Longest character string of a TXT record, in bytes (RFC 6763 §6.1)."""

Send = Callable[[Packet, "tuple[str, int] | None"], None]


def instance_txt(node_id: str, network: str, markets: Sequence[str], version: int) -> TXTData:
    """
    The TXT data of our instance: ``id``, ``net``, ``pair`` (the first
    market), ``markets`` (every market, comma-separated; continued in
    ``markets1``, ``markets2``... so that no string passes
    :data:`TXT_STRING` bytes) and ``v``.

    :raises ValueError: for no market, a market with a comma, or a value
        too long for one string.
    """
    if not markets or any("," in market for market in markets):
        raise ValueError(f"markets must be one or more names without commas, not {markets!r}")
    pairs = {"id": node_id, "net": network, "pair": markets[0]}
    lists: list[list[str]] = [[]]
    for market in markets:
        key = f"markets{len(lists) - 1 or ''}"
        longer = f"{key}={','.join([*lists[-1], market])}"
        if lists[-1] and len(longer.encode()) > TXT_STRING:
            lists.append([])
        lists[-1].append(market)
    for number, names in enumerate(lists):
        pairs[f"markets{number or ''}"] = ",".join(names)
    pairs["v"] = str(version)
    return make_txt(pairs)


def instance_markets(pairs: Mapping[str, bytes | None]) -> tuple[str, ...]:
    """
    The markets an instance's parsed TXT data lists: ``markets``,
    ``markets1``... joined, else its ``pair`` alone, else none.
    """
    strings: list[bytes] = []
    while (value := pairs.get(f"markets{len(strings) or ''}")) is not None:
        strings.append(value)
    if not strings:
        pair = pairs.get("pair")
        strings = [pair] if pair else []
    names = b",".join(strings).decode("ascii", "replace").split(",")
    return tuple(dict.fromkeys(name for name in names if name))


@dataclass
class _Entry:
    record: Record
    received: float
    expires: float
    refresh: list[float] = field(default_factory=list)


@dataclass
class _Instance:
    """What is known of one service instance besides its cached records."""

    name: str
    sources: dict[int, str] = field(default_factory=dict)
    reported: tuple[tuple[str, int], ...] = ()
    markets: tuple[str, ...] = ()
    node_id: str | None = None
    ignored: str | None = None
    resolve_tries: int = 0
    resolve_after: float = 0.0


def _instance_label(name: str) -> str | None:
    """The instance label of a ``<label>._bitfi._tcp.local.`` name, or ``None``."""
    suffix = "." + SERVICE_TYPE
    key = name_key(name)
    if not key.endswith(suffix) or len(key) == len(suffix):
        return None
    return name[: len(name.rstrip(".")) - len(suffix) + 1]


class Browser:
    """
    Finds other bitfi nodes of our network that share a market with us through mDNS.

    :ivar markets: our markets.
    :ivar instances: the instances tracked, by folded name.
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Send,
        rng: random.Random,
        *,
        node_id: str,
        network: str,
        markets: Sequence[str] | None = None,
        pair: str | None = None,
        found: PeerFound | OnePeerFound,
        max_instances: int = MAX_INSTANCES,
        prefer_ipv6: bool = False,
    ) -> None:
        """
        :param clock: times queries, expiry and refreshes.
        :param send: sends a packet (destination ``None``: the group).
        :param rng: draws the random delays.
        :param node_id: our node id, never handed to C{found}.
        :param network: the network name instances must advertise.
        :param markets: our markets: an instance must carry one of them.
        :param pair: the older, one-market form of C{markets} (give one or
            the other).
        :param found: called with C{(host, port, node_id, markets)} for each
            peer, C{markets} being those of ours it carries; built with
            C{pair}, with C{(host, port, node_id)}.
        :param max_instances: most instances tracked.
        :param prefer_ipv6: hand an instance's IPv6 address on before its
            IPv4 one (mDNS runs on IPv6 only), rather than after.
        :raises ValueError: for both or neither of C{markets} and C{pair}.
        """
        if (markets is None) == (pair is None):
            raise ValueError("give markets or pair, not both or neither")
        self._clock = clock
        self._send = send
        self._rng = rng
        self._node_id = node_id
        self._network = network
        self.markets = tuple(markets) if markets is not None else (pair or "",)
        self._found = reporting(found, markets=markets is not None)
        self._max_instances = max_instances
        self._families = (6, 4) if prefer_ipv6 else (4, 6)
        self._cache: dict[tuple[str, int], dict[RecordKey, _Entry]] = {}
        self.instances: dict[str, _Instance] = {}
        self._interval = FIRST_INTERVAL
        self._query_call: IDelayedCall | None = None
        self._tick = LoopingCall(self.maintain)
        self._tick.clock = clock
        self._full_logged = False

    # -- life cycle

    def start(self) -> None:
        """Send the first browse query soon, and start the cache upkeep."""
        self._interval = FIRST_INTERVAL
        self._query_call = self._clock.callLater(
            self._rng.uniform(*FIRST_QUERY_DELAY), self._browse
        )
        self._tick.start(TICK, now=False)

    def stop(self) -> None:
        """Cancel every timer."""
        if self._query_call is not None and self._query_call.active():
            self._query_call.cancel()
        self._query_call = None
        if self._tick.running:
            self._tick.stop()

    def discovered(self) -> int:
        """How many other instances of our network that share a market are known now."""
        return sum(1 for instance in self.instances.values() if instance.reported)

    def discovered_by_market(self) -> dict[str, int]:
        """Each of our markets -> how many of the instances known now carry it."""
        counts = dict.fromkeys(self.markets, 0)
        for instance in self.instances.values():
            if instance.reported:
                for market in instance.markets:
                    counts[market] += 1
        return counts

    # -- browsing

    def _browse(self) -> None:
        now = self._clock.seconds()
        known = [
            entry.record.with_ttl(int(entry.expires - now))
            for entry in self._live(SERVICE_TYPE, TYPE_PTR, now)
            if entry.expires - now > entry.record.ttl / 2
        ]
        for packet in self._query_packets([Question(SERVICE_TYPE, TYPE_PTR)], known):
            self._send(packet, None)
        log.debug(
            "mDNS browse query with {known} known answers, next in {interval} s",
            known=len(known),
            interval=self._interval,
        )
        self._query_call = self._clock.callLater(self._interval, self._browse)
        self._interval = min(self._interval * 2, MAX_INTERVAL)

    @staticmethod
    def _query_packets(questions: Sequence[Question], known: Sequence[Record]) -> list[Packet]:
        """A query, split with the TC bit when its known answers do not fit in one packet."""
        packets: list[Packet] = []
        current = Packet(response=False, questions=tuple(questions))
        for record in known:
            bigger = Packet(
                response=False, questions=current.questions, answers=(*current.answers, record)
            )
            if current.answers and len(encode_packet(bigger)) > QUERY_PACKET:
                packets.append(Packet(False, current.questions, current.answers, truncated=True))
                current = Packet(response=False, answers=(record,))
            else:
                current = bigger
        packets.append(current)
        return packets

    # -- the cache

    def _live(self, name: str, rtype: int, now: float) -> list[_Entry]:
        entries = self._cache.get((name_key(name), rtype), {})
        return [entry for entry in entries.values() if entry.expires > now]

    def _add(self, record: Record, now: float) -> bool:
        """Cache C{record}; tell whether the cache changed in a way that matters."""
        slot = (name_key(record.name), record.rtype)
        entries = self._cache.setdefault(slot, {})
        if record.cache_flush:
            # §10.2: other records of this name and type received more than
            # a second ago are stale.
            for key, entry in entries.items():
                if key != record.key() and entry.received < now - 1 and entry.expires > now + 1:
                    entry.expires = now + 1
        key = record.key()
        old = entries.get(key)
        if record.ttl == 0:
            # §10.1: a goodbye: forget the record in one second.
            if old is not None and old.expires > now + 1:
                old.expires = now + 1
            return False
        # One PTR per instance under the service type: bounded by the
        # instance cap (checked before); other names by MAX_PER_NAME.
        if old is None and record.rtype != TYPE_PTR and len(entries) >= MAX_PER_NAME:
            return False
        jitter = self._rng.uniform(0, 0.02)
        entries[key] = _Entry(
            record,
            now,
            now + record.ttl,
            [now + record.ttl * (fraction + jitter) for fraction in REFRESH_AT],
        )
        return old is None

    def _drop(self, name: str) -> None:
        for rtype in (TYPE_SRV, TYPE_TXT):
            self._cache.pop((name_key(name), rtype), None)
        entries = self._cache.get((name_key(SERVICE_TYPE), TYPE_PTR), {})
        for key in [key for key, entry in entries.items() if _ptr_target(entry) == name_key(name)]:
            del entries[key]

    # -- received packets

    def handle_response(self, packet: Packet, source: tuple[str, int]) -> None:
        """Learn what C{packet} says about ``_bitfi._tcp`` instances."""
        now = self._clock.seconds()
        records = packet.answers + packet.additional
        touched: set[str] = set()
        # PTRs first: they make the SRV and TXT in the same packet relevant,
        # and SRVs make the addresses of their targets relevant.
        for record in sorted(records, key=_learning_order):
            self._learn(record, now, source[0], touched)
        for name in touched:
            self._evaluate(name, now)
        self._resolve(now)

    def _learn(self, record: Record, now: float, source: str, touched: set[str]) -> None:
        data = record.data
        key = name_key(record.name)
        if record.rtype == TYPE_PTR and isinstance(data, PTRData):
            target = name_key(data.target)
            if key != SERVICE_TYPE or _instance_label(data.target) is None:
                return
            if target not in self.instances:
                if record.ttl == 0:
                    return
                if len(self.instances) >= self._max_instances:
                    if not self._full_logged:
                        log.debug(
                            "mDNS: {count} instances tracked, ignoring more",
                            count=len(self.instances),
                        )
                        self._full_logged = True
                    return
                self.instances[target] = _Instance(data.target.rstrip(".") + ".")
            if self._add(record, now):
                self._progress(target)
            touched.add(target)
        elif record.rtype in (TYPE_SRV, TYPE_TXT) and key in self.instances:
            if self._add(record, now):
                self._progress(key)
            if record.rtype == TYPE_SRV:
                self.instances[key].sources[_family(source)] = source
            touched.add(key)
        elif record.rtype in (TYPE_A, TYPE_AAAA):
            users = [name for name in self.instances if self._host_of(name, now) == key]
            if users:
                if self._add(record, now):
                    for name in users:
                        self._progress(name)
                touched.update(users)

    def _progress(self, name: str) -> None:
        """A record new to the cache arrived for C{name}: it may be resolved at once."""
        instance = self.instances[name]
        instance.resolve_tries = 0
        instance.resolve_after = 0.0

    def _host_of(self, instance: str, now: float) -> str | None:
        srv = self._srv(instance, now)
        return None if srv is None else name_key(srv.target)

    def _srv(self, instance: str, now: float) -> SRVData | None:
        # The lowest priority; among equals the latest received.
        best: SRVData | None = None
        for entry in sorted(self._live(instance, TYPE_SRV, now), key=lambda e: -e.received):
            data = entry.record.data
            if isinstance(data, SRVData) and (best is None or data.priority < best.priority):
                best = data
        return best

    def _addresses(self, instance: _Instance, host: str, now: float) -> tuple[list[str], bool]:
        """
        The addresses to hand on for C{instance}, served by C{host}: one of
        each family it has, the preferred family first; and whether
        link-local IPv6 addresses were left out.
        """
        chosen: list[str] = []
        link_local = False
        for family in self._families:
            usable = []
            for entry in self._live(host, TYPE_A if family == 4 else TYPE_AAAA, now):
                data = entry.record.data
                if not isinstance(data, AddressData) or _family(data.address) != family:
                    continue
                if family == 6 and ipaddress.ip_address(data.address).is_link_local:
                    link_local = True
                    continue
                usable.append(data.address)
            if usable:
                source = instance.sources.get(family)
                chosen.append(source if source in usable else usable[0])
        return chosen, link_local

    def _evaluate(self, name: str, now: float) -> None:
        """Hand C{name} on if it is complete, new or changed, and of our network."""
        instance = self.instances.get(name)
        if instance is None:
            return
        if not any(_ptr_target(entry) == name for entry in self._live(SERVICE_TYPE, TYPE_PTR, now)):
            self._forget(name, "goodbye or expiry")
            return
        srv = self._srv(name, now)
        if srv is None:
            if instance.reported:
                self._forget(name, "its SRV record expired")
            return
        txts = self._live(name, TYPE_TXT, now)
        txt = max(txts, key=lambda entry: entry.received).record.data if txts else None
        if not isinstance(txt, TXTData):
            return
        node_id, shared, ignored = self._check_txt(txt)
        addresses: list[str] = []
        if ignored is None:
            addresses, link_local = self._addresses(instance, name_key(srv.target), now)
            if not addresses and link_local:
                ignored = "only link-local IPv6 addresses, not dialled without their zone"
        if ignored != instance.ignored and ignored is not None:
            log.debug("mDNS: ignoring {instance}: {why}", instance=instance.name, why=ignored)
        instance.ignored = ignored
        if ignored is not None or not addresses:
            instance.reported = ()
            return
        current = tuple((address, srv.port) for address in addresses)
        if current == instance.reported and shared == instance.markets:
            return
        if shared == instance.markets:
            handed = tuple(pair for pair in current if pair not in instance.reported)
        else:
            handed = current
        where = ", ".join(format_hostport(address, port) for address, port in handed)
        if handed and not instance.reported:
            log.info("mDNS discovered {instance} at {where}", instance=instance.name, where=where)
        elif handed and shared != instance.markets:
            log.debug(
                "mDNS: {instance} now shares {markets}",
                instance=instance.name,
                markets=", ".join(shared),
            )
        elif handed:
            log.debug("mDNS: {instance} now at {where}", instance=instance.name, where=where)
        instance.reported = current
        instance.markets = shared
        instance.node_id = node_id
        instance.resolve_tries = 0
        for address, port in handed:
            self._found(address, port, node_id, shared)

    def _check_txt(self, txt: TXTData) -> tuple[str, tuple[str, ...], str | None]:
        """
        The node id in an instance's TXT data, the markets of ours it
        carries, and why it is not handed on (or ``None``).
        """
        pairs = parse_txt(txt)
        raw = pairs.get("id") or b""
        node_id = raw.decode("ascii", "replace")
        if not is_node_id(node_id):
            return node_id, (), "malformed TXT id"
        if node_id == self._node_id:
            return node_id, (), "ourselves"
        if pairs.get("net") != self._network.encode():
            return node_id, (), "another network"
        theirs = set(instance_markets(pairs))
        shared = tuple(market for market in self.markets if market in theirs)
        if not shared:
            return node_id, (), "no shared market"
        return node_id, shared, None

    def _forget(self, name: str, why: str) -> None:
        instance = self.instances.pop(name, None)
        self._drop(name)
        if instance is not None and instance.reported:
            log.debug("mDNS forgot {instance}: {why}", instance=instance.name, why=why)

    def _resolve(self, now: float) -> None:
        """Ask for the records that incomplete instances miss."""
        questions: list[Question] = []
        for name, instance in self.instances.items():
            if instance.ignored is not None or instance.reported:
                continue
            if instance.resolve_tries >= RESOLVE_TRIES or now < instance.resolve_after:
                continue
            missing = []
            srv = self._srv(name, now)
            if srv is None:
                missing.append(Question(instance.name, TYPE_SRV))
            if not self._live(name, TYPE_TXT, now):
                missing.append(Question(instance.name, TYPE_TXT))
            if srv is not None and not self._addresses(instance, name_key(srv.target), now)[0]:
                missing += [
                    Question(srv.target, TYPE_A if family == 4 else TYPE_AAAA)
                    for family in self._families
                ]
            if missing:
                instance.resolve_tries += 1
                instance.resolve_after = now + 2.0 ** (instance.resolve_tries - 1)
                questions.extend(missing)
        if questions:
            self._send_questions(questions)

    def _send_questions(self, questions: Iterable[Question]) -> None:
        unique = list(dict.fromkeys(questions))
        for start in range(0, len(unique), 32):
            self._send(Packet(response=False, questions=tuple(unique[start : start + 32])), None)

    # -- upkeep

    def maintain(self) -> None:
        """Expire records, forget what went with them, and refresh records in use."""
        now = self._clock.seconds()
        touched: set[str] = set()
        questions: list[Question] = []
        for slot in list(self._cache):
            entries = self._cache[slot]
            for key, entry in list(entries.items()):
                if entry.expires <= now:
                    del entries[key]
                    touched.update(self._users(entry.record))
                    continue
                due = False
                while entry.refresh and entry.refresh[0] <= now:
                    entry.refresh.pop(0)
                    due = True
                if due and any(
                    self.instances[name].reported
                    for name in self._users(entry.record)
                    if name in self.instances
                ):
                    questions.append(Question(entry.record.name, entry.record.rtype))
            if not entries:
                del self._cache[slot]
        for name in touched:
            self._evaluate(name, now)
        if questions:
            self._send_questions(questions)
        self._resolve(now)

    def _users(self, record: Record) -> list[str]:
        """The instances a cached record is about."""
        key = name_key(record.name)
        if record.rtype == TYPE_PTR:
            target = _ptr_target_of(record)
            return [target] if target is not None else []
        if record.rtype in (TYPE_SRV, TYPE_TXT):
            return [key]
        now = self._clock.seconds()
        return [name for name in self.instances if self._host_of(name, now) == key]


def _family(address: str) -> int:
    """4 or 6: the family of an IP literal."""
    return 6 if ":" in address else 4


def _learning_order(record: Record) -> int:
    return {TYPE_PTR: 0, TYPE_SRV: 1, TYPE_TXT: 1}.get(record.rtype, 2)


def _ptr_target_of(record: Record) -> str | None:
    return name_key(record.data.target) if isinstance(record.data, PTRData) else None


def _ptr_target(entry: _Entry) -> str | None:
    return _ptr_target_of(entry.record)
