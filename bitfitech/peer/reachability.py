"""Whether peers can reach this node, and how: the dial-back check.

Data path: each peer's ``version`` says the address it sees this node's
connection come from (``seen_as``: the external address, behind a NAT) ->
:class:`Reachability` counts them; on an outbound link to a peer offering
the ``dialback`` service it sends a ``dialback`` request (the port peers
should dial: the router's mapped port, else the listening port) -> the
peer's :class:`Reachability` dials the requester's own IP, as the link
shows it, at that port (:class:`DialBackProbe`), checks that the node
there proves the requester's node id, and answers ``dialedback`` -> on a
success the requester advertises that address to its peers (an ``addr``
naming itself), and not before; ``GET /status`` says ``reachability``.

A peer dials back only the address the request came from (never one the
request names, so a node cannot aim it at a third party), at most one
request per link per :data:`ANSWER_INTERVAL` and :data:`MAX_PROBES` at
once (as libp2p's AutoNAT does).

States (``reachability.state``):

``unknown``
    no dial-back answered yet.
``public``
    a peer reached the node at its listening port.
``mapped``
    a peer reached it at the port the router maps to it (UPnP-IGD or
    NAT-PMP: :mod:`bitfitech.nat`).
``outbound-only``
    peers could not reach it (:data:`FAILURES_FOR_UNREACHABLE` of them,
    with no success since): it still works fully over the links it dials.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..address import AddressError, PeerAddress, format_hostport, parse_address
from ..interfaces import unix_ms
from ..logs import logger
from ..wire.framing import FrameDecoder, FramingError
from ..wire.messages import (
    DIALBACK_SERVICE,
    Addr,
    DialBack,
    DialedBack,
    MessageError,
    NetAddress,
    Version,
    decode_message,
)
from .tls import LinkSecurity, proven_node_id

if TYPE_CHECKING:
    from .protocol import PeerProtocol

log = logger(__name__)

PROBE_TIMEOUT: Final = 10.0
"""Seconds a dial-back may take to connect and read the node's ``version``."""
ANSWER_WAIT: Final = 2 * PROBE_TIMEOUT + 5.0
"""Seconds a request waits for its ``dialedback`` before it counts as unanswered."""
ANSWER_INTERVAL: Final = 600.0
"""Least seconds between two requests of one link that this node answers."""
MAX_PROBES: Final = 4
"""Most dial-backs this node runs for its peers at once."""
RECHECK_INTERVAL: Final = 1800.0
"""Seconds between two checks of a node found reachable (or not)."""
RETRY_INTERVAL: Final = 60.0
"""Seconds between two checks while no peer has answered yet."""
FAILURES_FOR_UNREACHABLE: Final = 2
"""Distinct peers that must fail to reach the node before it says ``outbound-only``."""
MAX_OBSERVED: Final = 64
"""Most peers whose ``seen_as`` is kept."""
REFUSED: Final = "refused: "
"""How the reason of a dial-back refused (not tried) starts: it says nothing of reachability."""
REFUSED_TOO_SOON: Final = REFUSED + "one dial-back per 10 minutes per link"
REFUSED_BUSY: Final = REFUSED + "busy"


@dataclass
class _Check:
    """One dial-back this node asked a peer for."""

    link: PeerProtocol
    port: int
    sent_at: float
    timer: IDelayedCall


class DialBackProbe(Protocol):
    """
    The connection of one dial-back: reads the first frame the node there
    sends, which must be its ``version``, then closes.

    :ivar done: fires with ``None`` when a node proving C{node_id} answered,
        else with the reason in a few words.
    """

    def __init__(self, magic: bytes, node_id: str, tls: bool) -> None:
        self.node_id = node_id
        self.tls = tls
        self.done: Deferred[str | None] = Deferred()
        self._decoder = FrameDecoder(magic)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self._decoder.feed(data)
            frame = self._decoder.next_frame()
            if frame is None:
                return
            message = decode_message(frame.command, frame.payload)
        except (FramingError, MessageError) as e:
            self._finish(f"not a bitfi node there ({e})")
            return
        if not isinstance(message, Version):
            self._finish(f"sent {frame.command} before version")
        elif message.node_id != self.node_id:
            self._finish(f"node {message.node_id[:12]} answered there")
        elif self.tls and proven_node_id(self.transport) != self.node_id:
            self._finish("no certificate proves the node id")
        else:
            self._finish(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback("closed before its version")

    def _finish(self, outcome: str | None) -> None:
        if not self.done.called:
            self.done.callback(outcome)
        if self.transport is not None:
            self.transport.loseConnection()


Probe = Callable[[str, int, str], "Deferred[str | None]"]
"""Dials ``(host, port)`` expecting node id ...: ``None`` if it answered, else why not."""


class TCPProbe:
    """Dial-backs over TCP (and TLS, as the node's links): a :data:`Probe`."""

    def __init__(self, reactor: Any, security: LinkSecurity, magic: bytes) -> None:
        self.reactor = reactor
        self.security = security
        self.magic = magic

    def __call__(self, host: str, port: int, node_id: str) -> Deferred[str | None]:
        tls = self.security.tls is not None
        probe = DialBackProbe(self.magic, node_id, tls)
        factory = self.security.wrap(Factory.forProtocol(lambda: probe), client=True)
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=PROBE_TIMEOUT)
        connecting: Deferred[Any] = endpoint.connect(factory)

        def failed(failure: Failure) -> str | Failure:
            if failure.check(TimeoutError):
                return "timed out"
            if failure.check(CancelledError):
                return failure  # the node is stopping
            return f"cannot connect: {failure.getErrorMessage()}"

        def close(result: object) -> object:
            if probe.transport is not None:
                probe.transport.loseConnection()
            return result

        connecting.addCallback(lambda _: probe.done)
        connecting.addTimeout(PROBE_TIMEOUT, self.reactor)
        connecting.addErrback(failed)
        connecting.addBoth(close)
        return cast("Deferred[str | None]", connecting)


class Reachability:
    """
    This node's reachability, and the dial-backs it answers for its peers.

    :ivar state: ``unknown``, ``public`` or ``outbound-only`` (``status()``
        says ``mapped`` for ``public`` when the port reached is the router's).
    :ivar address: the address a peer reached (``host:port``), or ``None``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        probe: Probe,
        *,
        listen_port: Callable[[], int],
        mapped: Callable[[], tuple[str, int] | None] = lambda: None,
        advertise: Callable[[PeerAddress], None] = lambda address: None,
        rng: random.Random | None = None,
    ) -> None:
        """
        :param probe: dials back for peers (:class:`TCPProbe`).
        :param listen_port: the P2P listening port.
        :param mapped: the router's mapping of it, ``(external host,
            external port)``, or ``None``.
        :param advertise: tells peers this node's address, once reached.
        """
        self.clock = clock
        self.probe = probe
        self.listen_port = listen_port
        self.mapped = mapped
        self.advertise = advertise
        self._rng = rng or random.Random()
        self.node_id = ""
        self.state = "unknown"
        self.address: str | None = None
        self.checked_at: float | None = None
        self._checked_port = 0
        self._reached_port = 0
        self.reason: str | None = None
        self._observed: dict[str, str] = {}
        self._failed_by: set[str] = set()
        self._checks: dict[int, _Check] = {}
        self._answered_at: dict[PeerProtocol, float] = {}
        self._probes: set[Deferred[str | None]] = set()
        self._links: list[PeerProtocol] = []
        self._loop: LoopingCall | None = None
        self.answered = 0
        """Dial-backs run for peers that reached the requester."""
        self.refused = 0
        """Dial-back requests refused (too soon on a link, or too many under way)."""

    # -- lifecycle

    def start(self, node_id: str) -> None:
        """Check now and then (more often until a peer has answered)."""
        self.node_id = node_id
        loop = self._loop = LoopingCall(self._tick)
        loop.clock = self.clock
        loop.start(RETRY_INTERVAL, now=False)

    def stop(self) -> None:
        """Stop checking; forget the links and the checks under way."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for check in self._checks.values():
            if check.timer.active():
                check.timer.cancel()
        self._checks.clear()
        self._links.clear()
        self._answered_at.clear()
        for probe in list(self._probes):
            probe.cancel()

    # -- links

    def link_ready(self, link: PeerProtocol) -> None:
        """Note what a new link's peer sees this node as; ask it to dial back if one is due."""
        remote = link.remote
        if remote is None or link.node_id is None:
            return
        if remote.seen_as and (link.node_id in self._observed or
                               len(self._observed) < MAX_OBSERVED):  # fmt: skip
            self._observed[link.node_id] = remote.seen_as
        self._links.append(link)
        if self.address is not None:
            self._advertise_to(link)
        if self._due():
            self._ask(link)

    def link_closed(self, link: PeerProtocol) -> None:
        """Forget a closed link, and the check asked of it (the next tick asks another)."""
        if link in self._links:
            self._links.remove(link)
        self._answered_at.pop(link, None)
        for nonce, check in list(self._checks.items()):
            if check.link is link:
                del self._checks[nonce]
                if check.timer.active():
                    check.timer.cancel()

    def _can_answer(self, link: PeerProtocol) -> bool:
        return link.remote is not None and DIALBACK_SERVICE in link.remote.services

    # -- asking

    def port(self) -> int:
        """The port peers should dial: the router's mapped one, else the listening port."""
        mapping = self.mapped()
        return mapping[1] if mapping is not None else self.listen_port()

    def _due(self) -> bool:
        if self._checks:
            return False
        if self.checked_at is None or self._checked_port != self.port():
            return True  # never checked, or the router's mapping came, went or moved
        wait = RECHECK_INTERVAL if self.state != "unknown" else RETRY_INTERVAL
        return self.clock.seconds() - self.checked_at >= wait

    def _tick(self) -> None:
        if not self._due():
            return
        outbound = [link for link in self._links if link.direction == "outbound"]
        if outbound:
            self._ask(self._rng.choice(outbound))

    def _ask(self, link: PeerProtocol) -> None:
        """Ask C{link}'s peer to dial this node back, if it offers to (outbound links only)."""
        port = self.port()
        if link.direction != "outbound" or not self._can_answer(link) or port == 0:
            return
        nonce = self._rng.getrandbits(64)
        now = self.clock.seconds()
        timer = self.clock.callLater(ANSWER_WAIT, self._unanswered, nonce)
        self._checks[nonce] = _Check(link, port, now, timer)
        self.checked_at = now
        self._checked_port = port
        link.send(DialBack(nonce=nonce, port=port))

    def _unanswered(self, nonce: int) -> None:
        check = self._checks.pop(nonce, None)
        if check is not None:
            log.debug("{peer} did not answer a dial-back request", peer=check.link.describe())

    def on_dialed_back(self, link: PeerProtocol, answer: DialedBack) -> None:
        """The answer of a peer this node asked: note it, and advertise the address reached."""
        check = self._checks.get(answer.nonce)
        if check is None or check.link is not link:
            log.debug("Ignoring a dialedback nobody asked {peer} for", peer=link.describe())
            return
        del self._checks[answer.nonce]
        if check.timer.active():
            check.timer.cancel()
        self.checked_at = self.clock.seconds()
        assert link.node_id is not None
        if answer.ok:
            self._reached(answer.address, check.port)
            return
        if answer.reason.startswith(REFUSED):
            log.debug("{peer} refused a dial-back: {reason}", peer=link.describe(),
                      reason=answer.reason)  # fmt: skip
            return  # says nothing of this node's reachability
        self.reason = answer.reason or "unreachable"
        self._failed_by.add(link.node_id)
        log.info("{peer} could not reach this node at {address}: {reason}",
                 peer=link.describe(), address=answer.address, reason=self.reason)  # fmt: skip
        if self.address is None and len(self._failed_by) >= FAILURES_FOR_UNREACHABLE:
            if self.state != "outbound-only":
                log.warn("Peers cannot reach this node ({reason}): it runs on the links it "
                         "dials (outbound only); forward TCP port {port} to it, or let the "
                         "router map it (UPnP / NAT-PMP), to take inbound links",
                         reason=self.reason, port=check.port)  # fmt: skip
            self.state = "outbound-only"

    def _reached(self, address: str, port: int) -> None:
        first = self.address != address
        self.state, self.address, self.reason = "public", address, None
        self._reached_port = port
        state = self._state()
        self._failed_by.clear()
        if first:
            log.info("Peers can reach this node at {address} ({state})", address=address,
                     state=state)  # fmt: skip
            for link in list(self._links):
                self._advertise_to(link)

    def _advertise_to(self, link: PeerProtocol) -> None:
        """Tell C{link}'s peer this node's reached address (an ``addr`` naming it)."""
        host_port = self._split(self.address)
        if host_port is None or not self.node_id:
            return
        host, port = host_port
        address = NetAddress(host, port, self.node_id, int(self.clock.seconds()))
        link.send(Addr(addrs=(address,)))

    @staticmethod
    def _split(address: str | None) -> tuple[str, int] | None:
        if address is None:
            return None
        try:
            parsed = parse_address(address)
        except AddressError:
            return None
        return parsed.host, parsed.port

    # -- answering

    def on_dialback(self, link: PeerProtocol, request: DialBack) -> None:
        """
        Dial the requester back at its own IP and the port asked, and
        answer; a request too soon after the link's last one, or past
        :data:`MAX_PROBES` under way, is answered at once as refused.
        """
        host = link.peer_host
        address = format_hostport(host, request.port)
        now = self.clock.seconds()
        last = self._answered_at.get(link)
        if last is not None and now - last < ANSWER_INTERVAL:
            self.refused += 1
            self._answer(link, request.nonce, address, REFUSED_TOO_SOON)
            return
        if len(self._probes) >= MAX_PROBES or link.node_id is None or not host:
            self.refused += 1
            self._answer(link, request.nonce, address, REFUSED_BUSY)
            return
        self._answered_at[link] = now
        d = self.probe(host, request.port, link.node_id)
        self._probes.add(d)

        def answered(outcome: str | None) -> None:
            self._probes.discard(d)
            if outcome is None:
                self.answered += 1
            self._answer(link, request.nonce, address, outcome)

        def failed(failure: Failure) -> None:
            self._probes.discard(d)
            if failure.check(CancelledError):
                return  # stopping
            if not failure.check(TimeoutError):
                log.failure("A dial-back failed", failure)
            self._answer(link, request.nonce, address, "failed")

        d.addCallbacks(answered, failed)

    def _answer(self, link: PeerProtocol, nonce: int, address: str, reason: str | None) -> None:
        if not link.closed:
            link.send(DialedBack(nonce=nonce, address=address, ok=reason is None,
                                 reason=reason or ""))  # fmt: skip

    # -- status

    def observed(self) -> list[str]:
        """The addresses peers see this node as, the most said first."""
        counts: dict[str, int] = {}
        for seen in self._observed.values():
            counts[seen] = counts.get(seen, 0) + 1
        return sorted(counts, key=lambda seen: (-counts[seen], seen))

    def _state(self) -> str:
        """:attr:`state`, ``mapped`` when the port reached is the one the router maps now."""
        if self.state not in ("public", "mapped"):
            return self.state
        mapping = self.mapped()
        return "mapped" if mapping is not None and mapping[1] == self._reached_port else "public"

    def status(self) -> dict[str, Any]:
        """The ``reachability`` part of ``GET /status``."""
        return {
            "state": self._state(),
            "address": self.address,
            "observed": self.observed(),
            "checked_at": None if self.checked_at is None else unix_ms(self.checked_at),
            "checking": bool(self._checks),
            "reason": self.reason,
            "dialbacks_answered": self.answered,
        }
