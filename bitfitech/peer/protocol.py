"""One peer link: bytes from a socket to typed messages, and back.

Data path: socket -> TLS (:mod:`bitfitech.peer.tls`, unless the node runs
plain TCP) -> :class:`PeerProtocol` (framing, codec, handshake with the
check that the peer's certificate proves the node id it claims, liveness)
-> the link owner (:class:`~bitfitech.peer.hub.PeerHub`).  The protocol is
glue: it feeds bytes to the pure frame decoder, decodes frames
to messages, runs the ``version``/``verack`` handshake and ``ping``/``pong``,
and hands every other message to its owner.  The handshake also says which
markets each end carries (:attr:`PeerProtocol.shared_markets`); a peer of
other markets is linked all the same, for address exchange.  A protocol violation closes
this link only and is reported to the owner; nothing raises out of
:meth:`PeerProtocol.dataReceived`.  Time comes from an injected clock.

Flow control, both ways (``docs/security.rst``): the messages and bytes a
link receives are counted in token buckets (:mod:`bitfitech.ratelimit`,
figures in :class:`~bitfitech.config.LinkLimits`); past a rate the link
stops reading until the debt is repaid (backpressure: the peer's TCP
window fills; nothing is dropped) and the peer is scored
``RATE_EXCEEDED``, at most once a second.  The protocol is also the
streaming producer of what it writes: a peer that leaves our write buffer
full for ``stall_timeout``, or for which more than ``max_queued`` bytes
pile up meanwhile, is dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from ..address import AddressError, PeerAddress, format_hostport, is_ip_literal, normalize_host
from ..config import LinkTiming
from ..interfaces import ILinkOwner, IPeerLink, unix_ms
from ..logs import logger
from ..ratelimit import TokenBucket
from ..wire.framing import MAX_PAYLOAD, FrameDecoder, FramingError, encode_frame, network_magic
from ..wire.messages import (
    BATCH_SIGNATURE_VERSION,
    FAIR_ORDER_VERSION,
    MARKETS_VERSION,
    MAX_SEEN_AS,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Message,
    MessageError,
    Ping,
    Pong,
    Verack,
    Version,
    decode_message,
    encode_message,
)
from . import misbehaviour
from .tls import negotiated_tls_version, proven_node_id

log = logger(__name__)

Direction = Literal["inbound", "outbound"]

#: close reasons that say something about an address rather than a failure
REASON_SELF = "connected to self"
REASON_DUPLICATE = "duplicate link"

#: how the close reason of a link whose peer names other witnesses begins
REASON_WITNESSES = "wrong witness set"

#: close reason of a link whose peer leaves what we write unread
REASON_STALLED = "peer does not read"

#: least seconds between two ``RATE_EXCEEDED`` reports of one link
RATE_REPORT_INTERVAL = 1.0

#: least seconds a link stops reading for once a rate limit is in debt
MIN_PAUSE = 0.01


def unsupported_version(protocol_version: int) -> str:
    """The close reason for a peer that speaks only C{protocol_version}, too old for us."""
    reason = (
        f"unsupported protocol version {protocol_version} "
        f"(this node needs {MIN_PROTOCOL_VERSION} or newer"
    )
    if protocol_version < FAIR_ORDER_VERSION:
        reason += f": version {protocol_version} has no fair order"
    elif protocol_version < BATCH_SIGNATURE_VERSION:
        reason += f": version {protocol_version} cannot read batch signatures"
    return reason + ")"


class LinkClosed(ConnectionError):
    """A link closed before its handshake finished; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LocalNode:
    """
    What this node says about itself in ``version``.

    :ivar network: network name (also gives the wire magic).
    :ivar pair: trading pair: the first of :attr:`markets`.
    :ivar node_id: this node's id.
    :ivar listen_port: P2P port peers can dial back, 0 if not listening.
    :ivar user_agent: software name and version.
    :ivar witnesses: the digest of the network's witness set
        (:attr:`bitfitech.witnesses.WitnessSet.digest`, as
        :func:`bitfitech.node.build_node` hands it over): a peer that names
        another set is refused, like one of another network.
    :ivar services: service names offered.
    :ivar tls: whether links run over TLS, where each peer must prove the
        node id its ``version`` claims with the key of its certificate (a
        link without that proof is dropped).
    :ivar markets: every market (trading pair) this node carries, in its
        order, :attr:`pair` first; given empty, just :attr:`pair`.
    """

    network: str
    pair: str
    node_id: str
    listen_port: int
    user_agent: str
    witnesses: str
    services: tuple[str, ...] = ()
    tls: bool = False
    markets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """:raises ValueError: for markets that do not start with the pair."""
        if not self.markets:
            object.__setattr__(self, "markets", (self.pair,))
        elif self.markets[0] != self.pair:
            raise ValueError(f"the first market {self.markets[0]!r} is not the pair {self.pair!r}")

    @property
    def magic(self) -> bytes:
        """The 4-byte wire magic of the network."""
        return network_magic(self.network)


@implementer(IPushProducer, IPeerLink)
class PeerProtocol(Protocol):
    """
    One link to a peer (over TLS, or plain TCP), in either direction.

    States: ``handshaking`` (only ``version`` and ``verack`` are allowed),
    ``ready`` (everything else; handed to the owner), ``closed``.

    :ivar direction: ``inbound`` or ``outbound``.
    :ivar dialed: the address dialled (outbound), possibly pinned to a node id.
    :ivar remote: the peer's ``version`` once received.
    :ivar protocol_version: the version both ends speak: the lower of
        theirs and ours, once the peer's ``version`` was accepted.
    :ivar connected_since: clock time the handshake finished.
    :ivar rtt: last ping round-trip time in seconds, or ``None``.
    :ivar tls_version: the negotiated TLS version once the peer proved its
        node id, ``None`` on a plain link.
    :ivar throttled: how many times reading paused for a rate limit.
    """

    def __init__(
        self,
        local: LocalNode,
        owner: ILinkOwner,
        clock: IReactorTime,
        direction: Direction,
        *,
        dialed: PeerAddress | None = None,
        timing: LinkTiming = LinkTiming(),
        nonce: int | None = None,
        rng: random.Random | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.local = local
        self.owner = owner
        self.clock = clock
        self.direction: Direction = direction
        self.dialed = dialed
        self.timing = timing
        self._rng = rng or random.SystemRandom()
        self.nonce = self._rng.getrandbits(64) if nonce is None else nonce
        self.state: Literal["connecting", "handshaking", "ready", "closed"] = "connecting"
        self.remote: Version | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.connected_since: float | None = None
        self.rtt: float | None = None
        self.tls_version: str | None = None
        self.close_reason: str | None = None
        self._verack_received = False
        # Frames carry checksums until the handshake; on TLS, not after it.
        self._checksummed = True
        self._decoder = FrameDecoder(local.magic, max_payload)
        self._handshake_timer: IDelayedCall | None = None
        self._pinger: LoopingCall | None = None
        self._ping_sent: tuple[int, float] | None = None
        self._pong_timer: IDelayedCall | None = None
        self._ready_waiters: list[Deferred[PeerProtocol]] = []
        self._lost_waiters: list[Deferred[None]] = []
        self.connection_lost = False
        self.getaddr_answered = False
        limits = timing.limits
        now = clock.seconds()
        self._messages_in = TokenBucket(limits.msg_rate, limits.msg_burst, now)
        self._bytes_in = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self._throttle_timer: IDelayedCall | None = None
        self._last_rate_report = float("-inf")
        self.throttled = 0
        self._producing = False
        self._stall_timer: IDelayedCall | None = None
        self._queued = 0

    # -- what the rest of the node reads

    @property
    def closed(self) -> bool:
        """Whether the link is closed (or closing)."""
        return self.state == "closed"

    @property
    def node_id(self) -> str | None:
        """The peer's node id once its ``version`` arrived."""
        return self.remote.node_id if self.remote else None

    @property
    def markets(self) -> tuple[str, ...]:
        """
        The markets the peer carries, once its ``version`` arrived: those it
        announced, or just its ``pair`` (a version 3 peer announces none).
        """
        if self.remote is None:
            return ()
        return self.remote.markets or (self.remote.pair,)

    @property
    def shared_markets(self) -> tuple[str, ...]:
        """
        The markets both ends carry, in this node's order: those whose
        gossip the link carries.  Empty for a peer of other markets only: the
        link then serves address exchange alone.
        """
        theirs = self.markets
        return tuple(market for market in self.local.markets if market in theirs)

    @property
    def names_markets(self) -> bool:
        """
        Whether the peer reads the ``market`` of gossip messages (both ends
        speak protocol version 4 or later): messages to it name their
        market.  A version 3 peer takes every gossip message as being about
        its own ``pair``, and is sent no other.
        """
        return self.remote is not None and self.protocol_version >= MARKETS_VERSION

    @property
    def peer_host(self) -> str:
        """The remote IP address of the connection."""
        peer = self.transport.getPeer() if self.transport else None
        host = getattr(peer, "host", "")
        try:
            return normalize_host(host)
        except ValueError:
            return str(host)

    @property
    def listen_address(self) -> PeerAddress | None:
        """
        Where the peer accepts connections: the dialled address (outbound), or
        the connection's remote IP with the port from its ``version`` (inbound).
        Never the ephemeral source port of an inbound connection.
        """
        if self.direction == "outbound" and self.dialed is not None:
            return PeerAddress(self.dialed.host, self.dialed.port, self.node_id)
        if self.remote is None or self.remote.port == 0 or not self.peer_host:
            return None
        return PeerAddress(self.peer_host, self.remote.port, self.node_id)

    def describe(self) -> str:
        """A short name for logs: node id prefix and address."""
        peer = self.transport.getPeer() if self.transport else None
        where = format_hostport(self.peer_host, getattr(peer, "port", 0)) if peer else "unconnected"
        who = self.node_id[:12] if self.node_id else "?"
        return f"{who}@{where} ({self.direction})"

    def when_ready(self) -> Deferred[PeerProtocol]:
        """
        A new Deferred that fires with this link once the owner admits it,
        or fails with :class:`LinkClosed` if it closes first.
        """
        d: Deferred[PeerProtocol] = Deferred()
        if self.state == "ready":
            d.callback(self)
        elif self.state == "closed":
            d.errback(LinkClosed(self.close_reason or "closed"))
        else:
            self._ready_waiters.append(d)
        return d

    def when_lost(self) -> Deferred[None]:
        """A new Deferred that fires once the connection is gone."""
        d: Deferred[None] = Deferred()
        if self.connection_lost or self.transport is None:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    # -- sending

    @property
    def write_stalled(self) -> bool:
        """Whether our write buffer for this link is full (the peer reads too slowly)."""
        return self._stall_timer is not None

    def send(self, message: Message) -> None:
        """
        Frame and write one message (dropped silently once the link is closed).

        While the peer does not read, at most ``max_queued`` bytes more are
        written; past that the link is dropped at once.
        """
        if self.state == "closed" or self.transport is None:
            return
        command, payload = encode_message(message)
        frame = encode_frame(self.local.magic, command, payload, checksummed=self._checksummed)
        if self._stall_timer is not None:
            self._queued += len(frame)
            if self._queued > self.timing.limits.max_queued:
                log.info("{peer} does not read: over {cap} bytes queued; disconnecting",
                         peer=self.describe(), cap=self.timing.limits.max_queued)  # fmt: skip
                self.close(REASON_STALLED, abort=True)
                return
        self.transport.write(frame)

    def close(self, reason: str, *, abort: bool = False) -> None:
        """
        Close the link, recording why.

        :param abort: drop it at once instead of flushing what is queued
            (for peers that stopped answering or broke the protocol).
        """
        if self.state == "closed":
            return
        self._set_closed(reason)
        if self.transport is not None:
            if self._producing:
                # A transport waits for its producer before it closes.
                self._producing = False
                self._stream.unregisterProducer()
            if abort:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                self.transport.loseConnection()

    def abort(self, reason: str = "aborted") -> None:
        """
        Drop the connection at once, even one already closing: what its
        close left queued, and a TLS handshake or shutdown under way, are
        given up.
        """
        if self.state != "closed":
            self.close(reason, abort=True)
        elif self.transport is not None and not self.connection_lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def violation(self, reason: str) -> None:
        """The peer broke the protocol: log, report to the owner, drop the link."""
        if self.state == "closed":
            return
        log.warn(
            "Protocol violation by {peer}: {reason}; disconnecting",
            peer=self.describe(),
            reason=reason,
        )
        self.owner.link_misbehaved(self, reason, misbehaviour.VIOLATION)
        self.close(f"protocol violation: {reason}", abort=True)

    def misbehaved(self, reason: str, score: int) -> None:
        """
        The peer misbehaved without breaking the protocol (the gossip layer
        found a malformed event, or too many of one author): report it to
        the owner, which scores it and may ban the peer's address.
        """
        self.owner.link_misbehaved(self, reason, score)

    # -- Twisted callbacks

    def connectionMade(self) -> None:
        self.state = "handshaking"
        # Small messages (an order, a stamp) go out at once: with Nagle's
        # algorithm a node's own order waited up to ~40 ms behind
        # unacknowledged data, time a front-runner gained at the witnesses.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._stream.registerProducer(self, True)
        self._producing = True
        self._handshake_timer = self.clock.callLater(
            self.timing.handshake_timeout, self._handshake_timed_out
        )
        self.send(
            Version(
                protocol_version=PROTOCOL_VERSION,
                network=self.local.network,
                pair=self.local.pair,
                node_id=self.local.node_id,
                port=self.local.listen_port,
                user_agent=self.local.user_agent,
                services=self.local.services,
                nonce=self.nonce,
                time=int(self.clock.seconds()),
                witnesses=self.local.witnesses,
                markets=self.local.markets,
                seen_as=_seen_as(self.peer_host),
            )
        )

    def dataReceived(self, data: bytes) -> None:
        if self.state == "closed":
            return
        self._bytes_in.spend(self.clock.seconds(), len(data))
        self._decoder.feed(data)
        self._read_frames()

    def pauseProducing(self) -> None:
        """Twisted: our write buffer is full; the peer must read within ``stall_timeout``."""
        if self.state == "closed" or self._stall_timer is not None:
            return
        self._queued = 0
        self._stall_timer = self.clock.callLater(self.timing.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        """Twisted: the peer read what we wrote."""
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        self._queued = 0

    def stopProducing(self) -> None:
        """Twisted: the connection is going away."""
        self.resumeProducing()
        self._producing = False

    def _read_frames(self) -> None:
        """Handle the buffered frames, until the decoder is empty or a rate limit pauses reading."""
        while not self.closed and self._throttle_timer is None:
            now = self.clock.seconds()
            wait = max(self._messages_in.wait(now), self._bytes_in.wait(now))
            if wait > 0:
                self._throttle(now, wait)
                return
            command = "(frame)"
            try:
                frame = self._decoder.next_frame()
                if frame is None:
                    return
                self._messages_in.spend(now, 1)
                command = frame.command
                message = decode_message(frame.command, frame.payload)
            except (FramingError, MessageError) as e:
                self.violation(str(e))
                return
            except Exception:
                # A decoder bug, not the peer's fault: keep the node up, drop the link.
                log.failure("Error decoding {command} from {peer}", command=command,
                            peer=self.describe())  # fmt: skip
                self.close("internal error", abort=True)
                return
            try:
                self._handle(message)
            except Exception:
                # A bug of ours, not the peer's fault: keep the node up, drop the link.
                log.failure("Error handling {command} from {peer}", command=frame.command,
                            peer=self.describe())  # fmt: skip
                self.close("internal error")
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_ready = self.state == "ready"
        self._set_closed(self.close_reason or reason.getErrorMessage() or "connection lost")
        if was_ready:
            log.info("Link to {peer} closed: {reason}", peer=self.describe(),
                     reason=self.close_reason)  # fmt: skip
        self.connection_lost = True
        self.owner.link_closed(self, self.close_reason or "connection lost")
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    # -- internals

    @property
    def _stream(self) -> Any:
        """The transport as consumer of our writes and producer of our reads
        (TCP and TLS transports are both; ``ITransport`` does not say so)."""
        return self.transport

    def _throttle(self, now: float, wait: float) -> None:
        """
        A rate limit is in debt: stop reading for C{wait} seconds (what is
        buffered waits too), and score the peer at most once a second.
        """
        self.throttled += 1
        self._stream.pauseProducing()
        self._throttle_timer = self.clock.callLater(max(wait, MIN_PAUSE), self._unthrottle)
        if now - self._last_rate_report < RATE_REPORT_INTERVAL:
            return
        self._last_rate_report = now
        limits = self.timing.limits
        log.info("{peer} sends over {msg_rate:g} messages or {byte_rate:g} bytes a second; "
                 "not reading it for {wait:.3f}s", peer=self.describe(), wait=wait,
                 msg_rate=limits.msg_rate, byte_rate=limits.byte_rate)  # fmt: skip
        self.owner.link_misbehaved(self, "rate limit exceeded", misbehaviour.RATE_EXCEEDED)

    def _unthrottle(self) -> None:
        self._throttle_timer = None
        if self.state == "closed":
            return
        self._stream.resumeProducing()
        self._read_frames()

    def _stalled(self) -> None:
        self._stall_timer = None
        log.info("{peer} read nothing we wrote for {timeout}s; disconnecting",
                 peer=self.describe(), timeout=self.timing.stall_timeout)  # fmt: skip
        self.close(REASON_STALLED, abort=True)

    def _set_closed(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        for timer in (self._handshake_timer, self._pong_timer, self._throttle_timer,
                      self._stall_timer):  # fmt: skip
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._pong_timer = None
        self._throttle_timer = self._stall_timer = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(LinkClosed(reason))

    def _handle(self, message: Message) -> None:
        if self.state == "handshaking":
            if isinstance(message, Version):
                self._on_version(message)
            elif isinstance(message, Verack):
                if self.remote is None or self._verack_received:
                    self.violation("verack before version" if self.remote is None
                                   else "duplicate verack")  # fmt: skip
                    return
                self._verack_received = True
                if self.local.tls:
                    # TLS authenticates every byte; the peer's later frames
                    # carry no checksum (docs/protocol.rst, "Frames").
                    self._decoder.checksummed = False
                self._maybe_ready()
            else:
                self.violation(f"{type(message).__name__.lower()} before handshake")
            return
        if isinstance(message, (Version, Verack)):
            self.violation(f"{type(message).__name__.lower()} after handshake")
        elif isinstance(message, Ping):
            self.send(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            self._on_pong(message)
        else:
            self.owner.link_message(self, message)

    def _on_version(self, version: Version) -> None:
        if self.remote is not None:
            self.violation("duplicate version")
            return
        if self.local.tls and not self._proves(version.node_id):
            return
        self.remote = version
        if version.network != self.local.network:
            self._refuse(f"wrong network {version.network!r}")
            return
        # A peer of other markets is linked too, for address exchange: the
        # gossip layer hands it only the markets both carry (none, maybe).
        if version.protocol_version < MIN_PROTOCOL_VERSION:
            self._refuse(unsupported_version(version.protocol_version))
            return
        if version.witnesses != self.local.witnesses:
            # Another witness set orders events otherwise: a configuration
            # mismatch, as another network is, not misbehaviour.
            self._refuse(
                f"{REASON_WITNESSES} {version.witnesses[:16]}... "
                f"(ours is {self.local.witnesses[:16]}...: all nodes of a network "
                "must name the same --witness set)"
            )
            return
        if version.node_id == self.local.node_id or self.owner.is_own_nonce(version.nonce):
            log.debug("Connected to myself through {peer}; dropping", peer=self.describe())
            self.close(REASON_SELF)
            return
        pinned = self.dialed.node_id if self.dialed else None
        if pinned is not None and version.node_id != pinned:
            log.warn("{peer} is node {node_id}, not the pinned {pinned}; disconnecting",
                     peer=self.describe(), node_id=version.node_id, pinned=pinned)  # fmt: skip
            self.close(f"node id {version.node_id} is not the pinned {pinned}", abort=True)
            return
        self.protocol_version = min(PROTOCOL_VERSION, version.protocol_version)
        self.send(Verack())
        if self.local.tls:
            self._checksummed = False
        self._maybe_ready()

    def _refuse(self, reason: str) -> None:
        """
        Close a link whose peer is configured for another network (another
        network, protocol version or witness set): no misbehaviour.
        """
        log.info("Refusing {peer}: {reason}", peer=self.describe(), reason=reason)
        self.close(reason)

    def _proves(self, claimed: str) -> bool:
        """
        Whether the peer's certificate proves the node id its ``version``
        claims; if not, that is a protocol violation and the link is dropped.
        """
        proven = proven_node_id(self.transport)
        if proven == claimed:
            self.tls_version = negotiated_tls_version(self.transport)
            return True
        if proven is None:
            self.violation(f"no Ed25519 certificate proves node id {claimed}")
        else:
            self.violation(f"version claims node id {claimed}, its certificate proves {proven}")
        return False

    def _maybe_ready(self) -> None:
        if self.remote is None or not self._verack_received or self.state != "handshaking":
            return
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        refusal = self.owner.link_ready(self)
        if refusal is not None:
            self.close(refusal)
            return
        self.state = "ready"
        self.connected_since = self.clock.seconds()
        self._pinger = LoopingCall(self._send_ping)
        self._pinger.clock = self.clock
        self._pinger.start(self.timing.ping_interval, now=False)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        log.info("Handshake with {peer} timed out", peer=self.describe())
        self.close("handshake timeout", abort=True)

    def _send_ping(self) -> None:
        if self._ping_sent is not None:
            return  # still waiting for the previous pong; its timer will decide
        nonce = self._rng.getrandbits(64)
        self._ping_sent = (nonce, self.clock.seconds())
        self._pong_timer = self.clock.callLater(self.timing.ping_timeout, self._pong_timed_out)
        self.send(Ping(nonce=nonce))

    def _on_pong(self, pong: Pong) -> None:
        if self._ping_sent is None or pong.nonce != self._ping_sent[0]:
            return  # unsolicited or stale: ignored
        self.rtt = self.clock.seconds() - self._ping_sent[1]
        self._ping_sent = None
        if self._pong_timer is not None and self._pong_timer.active():
            self._pong_timer.cancel()
        self._pong_timer = None

    def _pong_timed_out(self) -> None:
        self._pong_timer = None
        log.info("No pong from {peer} in {timeout}s; disconnecting", peer=self.describe(),
                 timeout=self.timing.ping_timeout)  # fmt: skip
        self.close("ping timeout", abort=True)


def link_info(link: PeerProtocol, source: str | None) -> dict[str, Any]:
    """
    One ``GET /peers`` row for a ready link.

    :param source: where the peer's address came from, per the address book.
    """
    address = link.listen_address
    peer = link.transport.getPeer() if link.transport else None
    return {
        "node_id": link.node_id,
        "address": str(PeerAddress(address.host, address.port)) if address else None,
        "remote": format_hostport(link.peer_host, getattr(peer, "port", 0)),
        "family": "ipv6" if ":" in link.peer_host else "ipv4",
        "direction": link.direction,
        "connected_since": unix_ms(link.connected_since),
        "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 3),
        "source": source,
        "user_agent": link.remote.user_agent if link.remote else None,
        "protocol_version": link.protocol_version,
        "markets": list(link.markets),
        "shared_markets": list(link.shared_markets),
        "tls": link.tls_version,
        "throttled": link.throttled,
    }


def _seen_as(host: str) -> str:
    """C{host} as a ``version``'s ``seen_as`` (an IP address in canonical form), else ``""``."""
    try:
        canonical = normalize_host(host)
    except (AddressError, ValueError):
        return ""
    ok = canonical == host and is_ip_literal(host) and len(host) <= MAX_SEEN_AS
    return host if ok else ""
