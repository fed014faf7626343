"""An in-process simulator of many nodes: the real gossip, sync and wire code
over in-memory links, on a simulated clock.

Data path of one simulated node, the same as a real node's below the
market::

    _Connection (latency, jitter, loss) -> _End (the transport)
    -> PeerProtocol (real: framing, codec, handshake, ping, rate limits)
    -> _SimOwner (what the hub does for gossip) -> Gossip (real)
    -> SimStore (a real Ledger behind IEventStore)

What is real and what is modelled:

* **Real**: :class:`~bitfitech.gossip.Gossip` (push and announce, dedup,
  ttl, ``getdata``, anti-entropy, gap repair, prompts, per-author rate
  limits), :class:`~bitfitech.peer.protocol.PeerProtocol` (the
  ``version``/``verack`` handshake, frames, the message codec, ping, the
  per-link token buckets), the events (signed by
  :class:`~bitfitech.market.events.Author`, parsed on every hop) and the
  :class:`~bitfitech.market.ledger.Ledger` (total order, rollback, trades,
  :meth:`~bitfitech.market.ledger.Ledger.state_hash`).
* **Modelled**: the network.  A link is one TCP connection: bytes arrive
  in order, ``latency`` plus up to ``jitter`` seconds after they were
  written.  TCP never loses bytes, so packet *loss* is modelled as TCP
  sees it: each write is lost with probability ``loss`` and retransmitted
  after ``rto`` (doubling on every further loss), and because TCP delivers
  in order, everything written after it on that connection waits too
  (head-of-line blocking).  Bandwidth is unlimited.  A link drop is a
  connection closed (its in-flight bytes still arrive, then both ends see
  ``connectionLost``); a node that *leaves* (churn) closes every link and
  stops its gossip; when it *rejoins*, it keeps its ledger (a restart with
  its journal), starts a new Gossip and redials its former neighbours, and
  the handshake's anti-entropy catches it up.  A *partition* closes every
  link between two sides; *healing* redials them.
* **Left out**: the hub's bans and address gossip, the dialer (the
  topology is fixed: a random graph of ``degree`` links a node, and links
  lost to churn are not replaced), TLS, SQLite and the market service's
  apply buffer (peers' events go into the ledger at once), and the DHT.
* **Signatures**: events are really signed, but checking 57 µs per event
  per node is most of the cost at 1,000 nodes; ``verify=False`` gives the
  gossip a verifier that accepts everything (events are still parsed), for
  scale.  Run small configurations with ``verify=True``.

The simulated clock starts at a real unix time (:data:`START`), because
gossip compares event timestamps with its clock.

:class:`Simulation` builds and drives a network; :func:`measure_spread`,
:func:`measure_churn` and :func:`measure_partition` run the scenarios that
``benchmarks/bench_sim.py`` reports and ``tests/test_simulation.py`` checks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from .address import PeerAddress
from .config import GossipTiming, LinkTiming
from .gossip import Gossip, Verifier, verify_inline
from .interfaces import ILinkOwner
from .market.events import Author, Event
from .market.interfaces import IEventPublisher, IEventStore
from .market.ledger import Ledger
from .market.stamps import Stamp
from .peer.protocol import LocalNode, PeerProtocol
from .testing import NO_WITNESSES, HeapClock, run_for
from .wire.messages import Events, Message
from .witnesses import WitnessSet

NETWORK = "sim"
"""The network name of simulated nodes."""

PAIR = "BTC/USD"
"""The pair simulated nodes trade."""

PORT = 3000
"""The port every simulated node listens on (each has an address of its own)."""

START = 1_700_000_000.0
"""Where the simulated clock starts (unix seconds)."""


# -- the clock


class SimClock(HeapClock):
    """A :class:`~bitfitech.testing.HeapClock` that starts at C{start} (unix seconds)."""

    def __init__(self, start: float = START) -> None:
        super().__init__()
        self.rightNow = start

    def run_for(self, seconds: float) -> None:
        """Run every call due within C{seconds}, each at its own time."""
        run_for(self, seconds)


# -- configuration


@dataclass(frozen=True)
class SimConfig:
    """
    One simulated network.

    :ivar nodes: how many nodes.
    :ivar degree: links per node (a random graph, as close to regular as
        the draw allows).
    :ivar latency: one-way delay of every link, seconds.
    :ivar jitter: up to this much more, uniformly drawn per write.
    :ivar loss: probability a write is lost once and retransmitted (see the
        module docstring).
    :ivar rto: the retransmission timeout, doubled on every further loss.
    :ivar verify: check signatures (``False``: accept every event unchecked).
    :ivar seed: seeds every random choice: same seed, same run.
    :ivar timing: the gossip's timing.
    :ivar link_timing: the links' timers and limits.
    """

    nodes: int = 100
    degree: int = 8
    latency: float = 0.04
    jitter: float = 0.02
    loss: float = 0.0
    rto: float = 0.2
    verify: bool = False
    seed: int = 0
    timing: GossipTiming = field(default_factory=GossipTiming)
    link_timing: LinkTiming = field(default_factory=LinkTiming)


def accept_all(events: list[Event]) -> Deferred[list[bool]]:
    """A verifier that accepts every signature unchecked (for scale only)."""
    return succeed([True] * len(events))


# -- one node


@implementer(IEventStore)
class LedgerStore:
    """
    An :class:`~bitfitech.market.interfaces.IEventStore` over a real
    :class:`Ledger`: what gossip reads comes from the ledger, and
    :meth:`receive` inserts at once (the market service buffers peers'
    events a few ms to insert them together; the log's order does not
    depend on it).  Subclasses say what else an insert does.

    :ivar ledger: the events held.
    :ivar publishers: where :meth:`publish` hands this node's events (the
        gossip, while it runs).
    """

    network: str = NETWORK
    pair: str = PAIR
    witnessing: bool = False

    def __init__(self, witnesses: WitnessSet | None = None) -> None:
        """:param witnesses: the network's witnesses (none: author-clock order)."""
        self.witnesses = witnesses if witnesses is not None else WitnessSet()
        self.ledger = Ledger(witnesses=self.witnesses)
        self.publishers: list[IEventPublisher] = []

    def add_publisher(self, publisher: IEventPublisher) -> Callable[[], None]:
        self.publishers.append(publisher)

        def remove() -> None:
            if publisher in self.publishers:
                self.publishers.remove(publisher)

        return remove

    def publish(self, events: Sequence[Event]) -> None:
        """Hand this node's new C{events} to the publishers, as the market does once applied."""
        for publisher in list(self.publishers):
            publisher.publish(events)

    def receive(self, events: Sequence[Event], arrived: float | None = None) -> None:
        self.ledger.insert(events)

    def receive_stamps(self, stamps: Sequence[Stamp]) -> None:
        self.ledger.insert_stamps(stamps)

    def has_stamp(self, stamp_id: str) -> bool:
        fair = self.ledger.fair
        return fair is not None and stamp_id in fair

    def get_stamp(self, stamp_id: str) -> Stamp | None:
        fair = self.ledger.fair
        return fair.get(stamp_id) if fair is not None else None

    def stamp_gap_marks(self) -> set[tuple[str, int]]:
        fair = self.ledger.fair
        return fair.gap_marks() if fair is not None else set()

    def stamp_vector(self) -> dict[str, int]:
        fair = self.ledger.fair
        return fair.vector() if fair is not None else {}

    def stamps_missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Stamp], bool]:
        fair = self.ledger.fair
        return fair.missing_for(vector, limit) if fair is not None else ([], False)

    def stamp_evidence(self) -> list[Stamp]:
        fair = self.ledger.fair
        return fair.evidence() if fair is not None else []

    def has(self, event_id: str) -> bool:
        return event_id in self.ledger

    def get(self, event_id: str) -> Event | None:
        return self.ledger.get(event_id)

    def vector(self) -> dict[str, int]:
        return self.ledger.vector()

    def digest(self) -> str:
        return self.ledger.log_hash

    def missing_for(self, vector: dict[str, int], limit: int) -> tuple[list[Event], bool]:
        return self.ledger.missing_for(vector, limit)

    def conflicts(self) -> list[Event]:
        return self.ledger.conflicts()

    def gaps(self) -> int:
        return self.ledger.gaps()

    def gap_marks(self) -> set[tuple[str, int]]:
        return self.ledger.gap_marks()

    def chain_digests(self) -> dict[str, str]:
        return self.ledger.chain_digests()

    def chain_of(self, author: str) -> list[Event]:
        return self.ledger.chain_of(author)


class SimStore(LedgerStore):
    """A simulated node's events: each insert reports what it added."""

    def __init__(self, clock: Clock, on_new: Callable[[list[Event]], None]) -> None:
        """:param on_new: called with the events each insert added."""
        super().__init__()
        self.clock = clock
        self.on_new = on_new

    def add(self, events: Sequence[Event]) -> None:
        """Insert this node's own C{events}."""
        self.on_new(self.ledger.insert(events, self.clock.seconds()).new)

    def receive(self, events: Sequence[Event], arrived: float | None = None) -> None:
        self.add(events)


@implementer(ILinkOwner)
class _SimOwner:
    """What the hub does for gossip: admit links, hand messages on, count."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    def is_own_nonce(self, nonce: int) -> bool:
        return False

    def link_ready(self, link: PeerProtocol) -> str | None:
        gossip = self.node.gossip
        if gossip is None:
            return "node offline"
        gossip.link_ready(link)
        return None

    def link_message(self, link: PeerProtocol, message: Message) -> None:
        node = self.node
        if isinstance(message, Events):
            node.copies += len(message.events)
        if node.gossip is not None:
            node.gossip.link_message(link, message)

    def link_closed(self, link: PeerProtocol, reason: str) -> None:
        node = self.node
        if node.gossip is not None:
            node.gossip.link_closed(link)

    def link_misbehaved(self, link: PeerProtocol, reason: str, score: int) -> None:
        self.node.misbehaved.append((reason, score))


class SimNode:
    """
    One simulated node.

    :ivar index: its number in the simulation.
    :ivar store: its events.
    :ivar gossip: its gossip while online, else ``None``.
    :ivar copies: full copies of events received from peers, ever.
    :ivar misbehaved: ``(reason, score)`` its links reported (none, in an
        honest network).
    """

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.node_id = f"{index + 1:040x}"
        self.host = f"10.{(index + 1) >> 16 & 255}.{(index + 1) >> 8 & 255}.{(index + 1) & 255}"
        self.local = LocalNode(network=NETWORK, pair=PAIR, node_id=self.node_id,
                               listen_port=PORT, user_agent="bitfi-sim/0",
                               witnesses=NO_WITNESSES)  # fmt: skip
        self.author = Author(sim.rng.randbytes(32), NETWORK, PAIR)
        self.store = SimStore(sim.clock, self._arrived)
        self.owner = _SimOwner(self)
        self.gossip: Gossip | None = None
        self.online = False
        self.copies = 0
        self.misbehaved: list[tuple[str, int]] = []
        self.next_seq = 1

    def _arrived(self, events: list[Event]) -> None:
        now = self.sim.clock.seconds()
        arrivals = self.sim.arrivals
        for event in events:
            arrivals.setdefault(event.id, {})[self.index] = now

    def start(self) -> None:
        """Come online: a new Gossip over the kept store."""
        sim = self.sim
        config = sim.config
        verifier: Verifier = verify_inline if config.verify else accept_all
        rng = random.Random(sim.rng.getrandbits(64))
        self.gossip = Gossip(self.store, sim.clock, config.timing, rng, verifier)
        self.gossip.start()
        self.online = True

    def stop(self) -> None:
        """Go offline (after the links are closed)."""
        if self.gossip is not None:
            self.gossip.stop()
        self.gossip = None
        self.online = False

    def sign(self, side: str, price: int) -> Event:
        """A new limit order of this node's author, stamped with the simulated clock."""
        now_ms = int(self.sim.clock.seconds() * 1000)
        lamport = max(self.store.ledger.lamport + 1, now_ms)
        event = self.author.order(self.next_seq, lamport, now_ms, side, "limit", str(price), "1")
        self.next_seq += 1
        return event

    @property
    def state_hash(self) -> str:
        """The ledger's state hash (book and trades)."""
        return self.store.ledger.state_hash()


# -- links


@implementer(ITransport, IConsumer, IPushProducer)
class _End:
    """One end of a simulated TCP connection: the transport of one protocol."""

    def __init__(self, connection: _Connection, node: SimNode, port: int) -> None:
        self.connection = connection
        self.node = node
        self.port = port
        self.protocol: PeerProtocol | None = None
        self.other: _End | None = None
        self.connected = False
        self.lost = False
        self.paused = False
        self.inbox: list[bytes] = []
        self.last_arrival = 0.0  # of bytes travelling to this end

    # ITransport / IConsumer: what the protocol does to us
    def write(self, data: bytes) -> None:
        if not self.connection.closed and self.other is not None:
            self.connection.carry(self.other, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.connection.close()

    def abortConnection(self) -> None:
        self.connection.close()

    def getPeer(self) -> IPv4Address:
        assert self.other is not None
        return IPv4Address("TCP", self.other.node.host, self.other.port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.node.host, self.port)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # bandwidth is unlimited: our write buffer never fills

    def unregisterProducer(self) -> None:
        pass

    # IPushProducer: the protocol stops and resumes reading (rate limits)
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.inbox:
            self.connection.sim.clock.callLater(0, self._drain)

    def stopProducing(self) -> None:
        self.connection.close()

    # what the connection does to us
    def connect(self) -> None:
        """The connection is up at this end."""
        assert self.protocol is not None
        self.connected = True
        self.protocol.makeConnection(self)
        self._drain()

    def receive(self, data: bytes) -> None:
        """Bytes arrive from the other end."""
        if self.lost:
            return
        self.inbox.append(data)
        self._drain()

    def _drain(self) -> None:
        if self.connected and not self.paused and not self.lost and self.inbox:
            data = b"".join(self.inbox)
            self.inbox.clear()
            assert self.protocol is not None
            self.protocol.dataReceived(data)

    def lose(self) -> None:
        """The connection is gone at this end."""
        if self.lost:
            return
        self.lost = True
        if self.connected and self.protocol is not None:
            self.protocol.connectionLost(Failure(ConnectionDone("connection closed")))


class _Connection:
    """A simulated TCP connection between two nodes; see the module docstring."""

    def __init__(self, sim: Simulation, dialer: SimNode, listener: SimNode) -> None:
        self.sim = sim
        self.closed = False
        self.out = _End(self, dialer, 40000 + listener.index % 20000)
        self.into = _End(self, listener, PORT)
        self.out.other, self.into.other = self.into, self.out
        timing = sim.config.link_timing
        self.out.protocol = PeerProtocol(
            dialer.local, dialer.owner, sim.clock, "outbound", timing=timing,
            dialed=PeerAddress(listener.host, PORT, listener.node_id), rng=sim.rng,
        )  # fmt: skip
        self.into.protocol = PeerProtocol(
            listener.local, listener.owner, sim.clock, "inbound", timing=timing, rng=sim.rng
        )
        # SYN reaches the listener after one latency; SYN-ACK the dialer after two.
        latency = sim.config.latency
        sim.clock.callLater(latency, self.into.connect)
        sim.clock.callLater(2 * latency, self.out.connect)

    def carry(self, to: _End, data: bytes) -> None:
        """Send C{data} to C{to}: delayed, retransmitted if lost, in order."""
        sim = self.sim
        config = sim.config
        rng = sim.rng
        delay = config.latency + (rng.random() * config.jitter if config.jitter else 0.0)
        if config.loss:
            rto = config.rto
            while rng.random() < config.loss:
                delay += rto
                rto *= 2
                sim.retransmits += 1
        now = sim.clock.seconds()
        arrival = max(now + delay, to.last_arrival)
        to.last_arrival = arrival
        sim.bytes_sent += len(data)
        sim.writes += 1
        sim.clock.callLater(arrival - now, to.receive, data)

    def close(self) -> None:
        """Close: bytes in flight still arrive, then each end sees ``connectionLost``."""
        if self.closed:
            return
        self.closed = True
        clock = self.sim.clock
        now = clock.seconds()
        for end in (self.out, self.into):
            at = max(now + self.sim.config.latency, end.last_arrival)
            clock.callLater(at - now, end.lose)

    def ends_of(self, node: SimNode) -> _End:
        """The end at C{node}."""
        return self.out if self.out.node is node else self.into


# -- the network


class Simulation:
    """
    A network of :class:`SimNode` on one :class:`SimClock`.

    :ivar nodes: every node, by index.
    :ivar edges: the topology: ``(a, b)`` with ``a < b``.
    :ivar cut: edges a partition closed.
    :ivar published: event id -> ``(origin, time)``.
    :ivar arrivals: event id -> node index -> the time it first held it.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.clock = SimClock()
        self.nodes = [SimNode(self, n) for n in range(config.nodes)]
        self.edges = random_graph(config.nodes, config.degree, self.rng)
        self.cut: set[tuple[int, int]] = set()
        self.connections: dict[tuple[int, int], _Connection] = {}
        self.published: dict[str, tuple[int, float]] = {}
        self.arrivals: dict[str, dict[int, float]] = {}
        self.bytes_sent = 0
        self.writes = 0
        self.retransmits = 0

    # -- building

    def start(self, settle: float = 1.0) -> None:
        """Bring every node online, link the topology, run C{settle} seconds."""
        for node in self.nodes:
            node.start()
        for a, b in sorted(self.edges):
            self.connect(a, b)
        self.run_for(settle)

    def connect(self, a: int, b: int) -> None:
        """Node C{a} dials node C{b} (both online, not linked yet)."""
        key = (min(a, b), max(a, b))
        if key in self.connections:
            return
        self.connections[key] = _Connection(self, self.nodes[a], self.nodes[b])

    def disconnect(self, a: int, b: int, reason: str = "disconnected") -> None:
        """Node C{a} closes its link to C{b}, through its real protocol."""
        connection = self.connections.pop((min(a, b), max(a, b)), None)
        if connection is None:
            return
        protocol = connection.ends_of(self.nodes[a]).protocol
        if protocol is not None and protocol.transport is not None:
            protocol.close(reason, abort=True)
        connection.close()

    def neighbours(self, index: int) -> list[int]:
        """C{index}'s neighbours in the topology."""
        return sorted(b if a == index else a for a, b in self.edges if index in (a, b))

    def linked(self, index: int) -> int:
        """How many ready links C{index}'s gossip has."""
        gossip = self.nodes[index].gossip
        return 0 if gossip is None else len(gossip.peers)

    def run_for(self, seconds: float) -> None:
        """Let C{seconds} of simulated time pass."""
        self.clock.run_for(seconds)

    @property
    def now(self) -> float:
        """The simulated time."""
        return self.clock.seconds()

    # -- events

    def publish(self, index: int) -> Event:
        """
        Node C{index} takes a new order (buy or sell near 102, so orders
        cross and make trades), applies it and gossips it.
        """
        node = self.nodes[index]
        assert node.gossip is not None, "an offline node takes no orders"
        rng = self.rng
        event = node.sign(rng.choice(("buy", "sell")), 100 + rng.randrange(5))
        self.published[event.id] = (index, self.now)
        node.store.add([event])
        node.store.publish([event])
        return event

    # -- churn and partitions

    def leave(self, index: int) -> None:
        """Node C{index} goes offline: every link closes, its gossip stops."""
        node = self.nodes[index]
        for other in self.neighbours(index):
            self.disconnect(index, other, "node left")
        node.stop()

    def rejoin(self, index: int) -> None:
        """Node C{index} comes back with its ledger and redials its neighbours."""
        node = self.nodes[index]
        node.start()
        for other in self.neighbours(index):
            key = (min(index, other), max(index, other))
            if self.nodes[other].online and key not in self.cut:
                self.connect(index, other)

    def partition(self, side: set[int]) -> int:
        """
        Close every link between C{side} and the other nodes.

        :return: how many links were cut.
        """
        for a, b in sorted(self.edges):
            if (a in side) != (b in side):
                self.cut.add((a, b))
                self.disconnect(a, b, "partition")
        return len(self.cut)

    def heal(self, links: int | None = None) -> None:
        """
        Redial the links a partition cut.

        :param links: redial only this many of them, drawn at random (the
            others stay cut); ``None``: all.
        """
        chosen = sorted(self.cut)
        if links is not None:
            chosen = sorted(self.rng.sample(chosen, min(links, len(chosen))))
        self.cut.difference_update(chosen)
        for a, b in chosen:
            if self.nodes[a].online and self.nodes[b].online:
                self.connect(a, b)

    # -- observations

    def online(self) -> list[SimNode]:
        """The nodes online now."""
        return [node for node in self.nodes if node.online]

    def state_hashes(self) -> set[str]:
        """The distinct state hashes of the online nodes (one when converged)."""
        return {node.state_hash for node in self.online()}

    def holding_all(self) -> int:
        """How many online nodes hold every event published."""
        total = len(self.published)
        return sum(1 for node in self.online() if len(node.store.ledger) == total)

    def misbehaviour(self) -> list[tuple[str, int]]:
        """Every misbehaviour any link reported."""
        return [report for node in self.nodes for report in node.misbehaved]

    def copies(self) -> int:
        """Full copies of events received over all links, ever."""
        return sum(node.copies for node in self.nodes)


def random_graph(size: int, degree: int, rng: random.Random) -> set[tuple[int, int]]:
    """
    A connected random graph in which almost every node has C{degree}
    links: each node in turn links to random nodes that still have room.
    """
    if size < 2:
        return set()
    degree = min(degree, size - 1)
    for _ in range(100):
        edges: set[tuple[int, int]] = set()
        links = [0] * size
        order = list(range(size))
        rng.shuffle(order)
        for a in order:
            room = [b for b in range(size) if b != a and links[b] < degree]
            rng.shuffle(room)
            for b in room:
                if links[a] >= degree:
                    break
                key = (min(a, b), max(a, b))
                if key in edges:
                    continue
                edges.add(key)
                links[a] += 1
                links[b] += 1
        if _connected(size, edges):
            return edges
    raise ValueError(f"no connected graph of {size} nodes with degree {degree}")


def _connected(size: int, edges: set[tuple[int, int]]) -> bool:
    return _connected_within(set(range(size)), edges)


def _connected_within(members: set[int], edges: set[tuple[int, int]]) -> bool:
    """Whether C{members} reach each other over C{edges} between members."""
    adjacent: dict[int, list[int]] = {n: [] for n in members}
    for a, b in edges:
        if a in members and b in members:
            adjacent[a].append(b)
            adjacent[b].append(a)
    if not members:
        return True
    start = next(iter(sorted(members)))
    seen, todo = {start}, [start]
    while todo:
        for b in adjacent[todo.pop()]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return len(seen) == len(members)


def halves(members: Sequence[int], edges: set[tuple[int, int]], rng: random.Random) -> set[int]:
    """
    One side of a cut of C{members} in two halves that are each connected:
    a region grown breadth-first from a random node, in random order (as a
    network splits between places, not at random).
    """
    pool = set(members)
    adjacent: dict[int, list[int]] = {n: [] for n in pool}
    for a, b in sorted(edges):
        if a in pool and b in pool:
            adjacent[a].append(b)
            adjacent[b].append(a)
    for _ in range(100):
        start = rng.choice(sorted(pool))
        side, frontier = {start}, [start]
        while frontier and len(side) < len(pool) // 2:
            current = frontier.pop(0)
            neighbours = adjacent[current][:]
            rng.shuffle(neighbours)
            for b in neighbours:
                if b not in side and len(side) < len(pool) // 2:
                    side.add(b)
                    frontier.append(b)
        if _connected_within(pool - side, edges):
            return side
    raise ValueError("no split in two connected halves found")


# -- scenarios


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank C{fraction} percentile of C{values} (``nan`` if none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class SpreadResult:
    """
    How a stream of new events spread (times in simulated seconds).

    :ivar events: events published.
    :ivar coverage: the fraction of (node, event) pairs held at the horizon,
        over the nodes online throughout.
    :ivar reached_all: the fraction of events every such node held.
    :ivar reach_p50: the median time from publication to the last node.
    :ivar reach_p99: its 99th percentile (over events that reached all).
    :ivar delivery_p50: the median time from publication to one node.
    :ivar delivery_p99: its 99th percentile.
    :ivar copies: full copies received per node per event (1.0: no duplicate).
    :ivar bytes: bytes sent per node per event, every message included.
    """

    events: int
    coverage: float
    reached_all: float
    reach_p50: float
    reach_p99: float
    delivery_p50: float
    delivery_p99: float
    copies: float
    bytes: float


def measure_spread(
    sim: Simulation, events: int, interval: float, horizon: float = 3.0
) -> SpreadResult:
    """
    Publish C{events} new events from random online nodes, one every
    C{interval} seconds, then wait C{horizon} seconds, and see how they spread.
    """
    watched = {node.index for node in sim.online()}
    copies, sent = sim.copies(), sim.bytes_sent
    ids = []
    for _ in range(events):
        ids.append(sim.publish(sim.rng.choice(sorted(watched))).id)
        sim.run_for(interval)
    sim.run_for(horizon)
    return _spread(sim, ids, watched, sim.copies() - copies, sim.bytes_sent - sent)


def _spread(
    sim: Simulation, ids: list[str], watched: set[int], copies: int, sent: int
) -> SpreadResult:
    held = reached = 0
    reach: list[float] = []
    delivery: list[float] = []
    for ident in ids:
        _, at = sim.published[ident]
        arrivals = sim.arrivals.get(ident, {})
        times = [arrivals[n] - at for n in watched if n in arrivals]
        held += len(times)
        delivery.extend(times)
        if len(times) == len(watched):
            reached += 1
            reach.append(max(times))
    pairs = max(1, len(ids) * len(watched))
    return SpreadResult(
        events=len(ids),
        coverage=held / pairs,
        reached_all=reached / max(1, len(ids)),
        reach_p50=percentile(reach, 0.5),
        reach_p99=percentile(reach, 0.99),
        delivery_p50=percentile(delivery, 0.5),
        delivery_p99=percentile(delivery, 0.99),
        copies=copies / pairs,
        bytes=sent / pairs,
    )


@dataclass
class ChurnResult:
    """
    How events spread while nodes left and came back.

    :ivar spread: the spread over the nodes online throughout.
    :ivar left: how many nodes left (and came back).
    :ivar coverage: the fraction of (node, event) pairs held at the end, over
        every node.
    :ivar catch_up_p50: the median time a rejoined node took to hold every
        event published before it rejoined.
    :ivar catch_up_p99: its 99th percentile.
    :ivar caught_up: the fraction of rejoined nodes that caught up.
    """

    spread: SpreadResult
    left: int
    coverage: float
    catch_up_p50: float
    catch_up_p99: float
    caught_up: float


def measure_churn(
    sim: Simulation,
    events: int,
    interval: float,
    fraction: float,
    downtime: float,
    horizon: float = 3.0,
) -> ChurnResult:
    """
    Publish as in :func:`measure_spread` while C{fraction} of the nodes
    each leave once, at a random time, for C{downtime} seconds.
    """
    rng = sim.rng
    duration = events * interval
    churners = rng.sample(range(len(sim.nodes)), round(fraction * len(sim.nodes)))
    rejoins: list[tuple[int, float]] = []
    for index in churners:
        leave = rng.uniform(0.0, max(0.0, duration - downtime))
        sim.clock.callLater(leave, sim.leave, index)
        sim.clock.callLater(leave + downtime, sim.rejoin, index)
        rejoins.append((index, sim.now + leave + downtime))
    watched = {node.index for node in sim.online()} - set(churners)
    copies, sent = sim.copies(), sim.bytes_sent
    ids = []
    for _ in range(events):
        ids.append(sim.publish(rng.choice([n.index for n in sim.online()])).id)
        sim.run_for(interval)
    sim.run_for(max(horizon, downtime))
    spread = _spread(sim, ids, watched, sim.copies() - copies, sim.bytes_sent - sent)
    everyone = range(len(sim.nodes))
    held = sum(1 for ident in ids for n in everyone if n in sim.arrivals.get(ident, {}))
    catch_up: list[float] = []
    for index, back in rejoins:
        before = [ident for ident in ids if sim.published[ident][1] < back]
        times = [sim.arrivals.get(ident, {}).get(index) for ident in before]
        if all(t is not None for t in times):
            catch_up.append(max([0.0] + [t - back for t in times if t is not None]))
    return ChurnResult(
        spread=spread,
        left=len(churners),
        coverage=held / max(1, len(ids) * len(sim.nodes)),
        catch_up_p50=percentile(catch_up, 0.5),
        catch_up_p99=percentile(catch_up, 0.99),
        caught_up=len(catch_up) / max(1, len(rejoins)),
    )


@dataclass
class PartitionResult:
    """
    How a network split in two converged once healed.

    :ivar cut: links the partition closed.
    :ivar events: events published during the partition (both sides).
    :ivar sides_converged: whether each side alone held all its own events
        when the partition healed.
    :ivar converged: whether every node held every event before the limit.
    :ivar heal_links: links redialled to heal it.
    :ivar heal_time: seconds from healing to the last node holding every
        event (``nan`` if it never did).
    :ivar heal_p50: the median over nodes of the time from healing until
        the node held every event.
    :ivar far_nodes: nodes with no redialled link of their own (they learn
        the other side's events from their neighbours).
    :ivar equal_hashes: whether every node's state hash was then the same.
    :ivar rollbacks: ledger rollbacks, all nodes, during the heal.
    """

    cut: int
    events: int
    sides_converged: bool
    converged: bool
    heal_links: int
    heal_time: float
    heal_p50: float
    far_nodes: int
    equal_hashes: bool
    rollbacks: int


def measure_partition(
    sim: Simulation,
    events: int,
    duration: float = 5.0,
    limit: float = 60.0,
    step: float = 0.1,
    heal_links: int | None = None,
) -> PartitionResult:
    """
    Split the online nodes into two connected halves (:func:`halves`), publish C{events} events
    on both sides (alternately, over the first half of C{duration}), heal
    after C{duration} seconds and run until every node holds every event
    (or C{limit} seconds pass).

    :param heal_links: heal through only this many links (``None``: every
        link cut).
    """
    rng = sim.rng
    online = [node.index for node in sim.online()]
    side = halves(online, sim.edges, rng)
    sides = [sorted(side), sorted(set(online) - side)]
    cut = sim.partition(side)
    sim.run_for(2 * sim.config.latency + sim.config.jitter + 0.01)  # the links close
    ids: list[str] = []
    spacing = duration / 2 / max(1, events)
    for n in range(events):
        ids.append(sim.publish(rng.choice(sides[n % 2])).id)
        sim.run_for(spacing)
    sim.run_for(duration - events * spacing)
    own = [{i for i in ids if sim.published[i][0] in members} for members in sides]
    sides_converged = all(
        all(n in sim.arrivals[i] for i in own[s] for n in members)
        for s, members in enumerate(sides)
    )
    rollbacks = sum(node.store.ledger.rollbacks for node in sim.nodes)
    healed = sim.now
    cut_before = set(sim.cut)
    sim.heal(heal_links)
    redialled = cut_before - sim.cut
    near = {n for edge in redialled for n in edge}
    converged = False
    while sim.now - healed < limit:
        sim.run_for(step)
        if sim.holding_all() == len(online):
            converged = True
            break
    done = [max(sim.arrivals[i].get(n, math.inf) for i in ids) - healed for n in online]
    last = max(done, default=0.0)
    return PartitionResult(
        cut=cut,
        events=len(ids),
        sides_converged=sides_converged,
        converged=converged,
        heal_links=len(redialled),
        heal_time=max(0.0, last) if converged else math.nan,
        heal_p50=max(0.0, percentile(done, 0.5)),
        far_nodes=len(set(online) - near),
        equal_hashes=converged and len(sim.state_hashes()) == 1,
        rollbacks=sum(node.store.ledger.rollbacks for node in sim.nodes) - rollbacks,
    )
