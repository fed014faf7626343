"""The live peer links of a node, and the messages they share.

Data path: :class:`~bitfitech.peer.protocol.PeerProtocol` -> :class:`PeerHub`
-> (address book, and later the gossip layer).  The hub admits links
(connection limits when a connection arrives, one link per node id), keeps
the ready ones by node id, answers ``getaddr`` and learns from ``addr``,
relays newly learned addresses to a few peers, and tells its subscribers
(the dialer) when links or addresses change.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..address import AddressError, PeerAddress, is_ip_literal
from ..config import LinkTiming
from ..interfaces import IGossip, ILinkOwner
from ..logs import logger
from ..wire.messages import MAX_ADDRS, Addr, GetAddr, Message, NetAddress, Unknown
from .addrbook import AddressBook
from .protocol import REASON_DUPLICATE, Direction, LocalNode, PeerProtocol, link_info

log = logger(__name__)

#: an ``addr`` this small is an announcement and its new addresses are relayed
RELAY_MAX_ADDRS = 10
#: how many peers each newly learned address is relayed to
RELAY_FANOUT = 2

_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


def _initiator_key(link: PeerProtocol, own_id: str) -> tuple[str, int]:
    """
    The (node id, nonce) of the side that opened C{link}: both ends of a link
    compute the same key, so both keep the same one of two duplicate links.
    """
    assert link.remote is not None
    if link.direction == "outbound":
        return (own_id, link.nonce)
    return (link.remote.node_id, link.remote.nonce)


@implementer(ILinkOwner)
class PeerHub:
    """
    Registry of this node's peer links.

    :ivar links: ready links by the peer's node id.
    :ivar pending: links still in their handshake.
    """

    def __init__(
        self,
        local: LocalNode,
        addrbook: AddressBook,
        clock: IReactorTime,
        *,
        max_peers: int,
        max_inbound: int,
        timing: LinkTiming = LinkTiming(),
        rng: random.Random | None = None,
    ) -> None:
        self.local = local
        self.addrbook = addrbook
        self.clock = clock
        self.max_peers = max_peers
        self.max_inbound = max_inbound
        self.timing = timing
        self._rng = rng or random.Random()
        self.links: dict[str, PeerProtocol] = {}
        self.pending: set[PeerProtocol] = set()
        self._nonces: set[int] = set()
        self._subscribers: list[Callable[[], None]] = []
        self.misbehaviour_count = 0
        self.refused_inbound = 0
        self.gossip: IGossip | None = None

    # -- subscriptions and queries

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call C{callback} (with no arguments) whenever links or known addresses change."""
        self._subscribers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._subscribers):
            callback()

    def _all_links(self) -> Iterable[PeerProtocol]:
        yield from self.links.values()
        yield from self.pending

    def count(self, direction: Direction | None = None) -> int:
        """Links, ready or handshaking, optionally of one direction."""
        return sum(1 for link in self._all_links() if direction in (None, link.direction))

    def ready_count(self, direction: Direction) -> int:
        """Ready links of one direction."""
        return sum(1 for link in self.links.values() if link.direction == direction)

    def connected_endpoints(self) -> set[tuple[str, int]]:
        """Listening addresses of all links, ready or dialled and handshaking."""
        out = set()
        for link in self._all_links():
            address = link.listen_address
            if address is not None:
                out.add(address.endpoint)
        return out

    # -- building links

    def build_link(
        self, direction: Direction, dialed: PeerAddress | None = None
    ) -> PeerProtocol | None:
        """
        A new link if the limits allow one, else ``None`` (Twisted then
        closes an inbound connection at once).
        """
        total = self.count()
        if total >= self.max_peers or (
            direction == "inbound" and self.count("inbound") >= self.max_inbound
        ):
            if direction == "inbound":
                self.refused_inbound += 1
                log.debug("Inbound connection refused: {total} links", total=total)
            return None
        nonce = self._rng.getrandbits(64)
        while nonce in self._nonces:
            nonce = self._rng.getrandbits(64)
        link = PeerProtocol(
            self.local, self, self.clock, direction, dialed=dialed, timing=self.timing,
            nonce=nonce, rng=self._rng,
        )  # fmt: skip
        self._nonces.add(nonce)
        self.pending.add(link)
        return link

    # -- ILinkOwner

    def is_own_nonce(self, nonce: int) -> bool:
        """Whether C{nonce} is one of the nonces this node sent."""
        return nonce in self._nonces

    def link_ready(self, link: PeerProtocol) -> str | None:
        """Admit a link whose handshake finished, unless it duplicates a better one."""
        node_id = link.node_id
        assert node_id is not None
        existing = self.links.get(node_id)
        if existing is not None:
            own = self.local.node_id
            if _initiator_key(existing, own) <= _initiator_key(link, own):
                return REASON_DUPLICATE
            existing.close(REASON_DUPLICATE)
        self.pending.discard(link)
        self.links[node_id] = link
        log.info("Peer {peer} connected ({count} links)", peer=link.describe(),
                 count=len(self.links))  # fmt: skip
        address = link.listen_address
        if link.direction == "inbound" and address is not None:
            if self._learn(address, "inbound", int(self.clock.seconds())):
                self._relay([address], exclude=link)
        link.send(GetAddr())
        if self.gossip is not None:
            self.gossip.link_ready(link)
        self._changed()
        return None

    def link_message(self, link: PeerProtocol, message: Message) -> None:
        """Handle what a ready link does not: ``getaddr``, ``addr``, unknown commands."""
        if isinstance(message, GetAddr):
            if link.getaddr_answered:
                return  # answered once per connection
            link.getaddr_answered = True
            link.send(Addr(addrs=tuple(self._addresses_for(link))))
        elif isinstance(message, Addr):
            self._on_addr(link, message)
        elif self.gossip is not None and self.gossip.link_message(link, message):
            pass
        elif isinstance(message, Unknown):
            log.debug("Ignoring unknown command {command} from {peer}",
                      command=message.command, peer=link.describe())  # fmt: skip

    def link_closed(self, link: PeerProtocol, reason: str) -> None:
        """Forget a closed link."""
        self.pending.discard(link)
        self._nonces.discard(link.nonce)
        if self.gossip is not None:
            self.gossip.link_closed(link)
        if link.node_id is not None and self.links.get(link.node_id) is link:
            del self.links[link.node_id]
            log.info("Peer {peer} disconnected: {reason} ({count} links)",
                     peer=link.describe(), reason=reason, count=len(self.links))  # fmt: skip
        self._changed()

    def link_misbehaved(self, link: PeerProtocol, reason: str, score: int) -> None:
        """Count a protocol violation (scores and bans build on this)."""
        self.misbehaviour_count += 1

    # -- commands

    def disconnect(self, node_id: str, reason: str = "disconnected by user") -> bool:
        """Close the link to C{node_id}; ``False`` if there is none."""
        link = self.links.get(node_id)
        if link is None:
            return False
        link.close(reason)
        return True

    def close_all(self, reason: str = "node stopping") -> None:
        """Close every link (on stop)."""
        for link in list(self._all_links()):
            link.close(reason)

    # -- addresses

    def _learn(self, address: PeerAddress, source: str, seen: int) -> bool:
        """Put one address in the book; ``True`` if new.  Own and unusable ones are skipped."""
        if address.node_id == self.local.node_id or address.host in _UNSPECIFIED:
            return False
        try:
            return self.addrbook.add(
                address.host, address.port, source=source, now=self.clock.seconds(),
                node_id=address.node_id, seen=seen,
            )  # fmt: skip
        except (ValueError, AddressError):
            return False

    def _on_addr(self, link: PeerProtocol, message: Addr) -> None:
        new = [
            PeerAddress(a.host, a.port, a.node_id)
            for a in message.addrs
            if self._learn(PeerAddress(a.host, a.port, a.node_id), "addr", a.time)
        ]
        if not new:
            return
        log.debug("Learned {count} new addresses from {peer}", count=len(new),
                  peer=link.describe())  # fmt: skip
        if len(message.addrs) <= RELAY_MAX_ADDRS:
            self._relay(new, exclude=link)
        self._changed()

    def _relay(self, addresses: list[PeerAddress], exclude: PeerProtocol) -> None:
        """Announce newly learned addresses to a few random other peers."""
        others = [other for other in self.links.values() if other is not exclude]
        if not others:
            return
        now = int(self.clock.seconds())
        message = Addr(addrs=tuple(NetAddress(a.host, a.port, a.node_id, now) for a in addresses))
        for other in self._rng.sample(others, min(RELAY_FANOUT, len(others))):
            other.send(message)

    def _addresses_for(self, asker: PeerProtocol) -> list[NetAddress]:
        """Up to ``MAX_ADDRS`` listening addresses for a ``getaddr`` answer."""
        now = self.clock.seconds()
        skip_ids = {self.local.node_id} | ({asker.node_id} if asker.node_id else set())
        out: dict[tuple[str, int], NetAddress] = {}
        for link in self.links.values():
            address = link.listen_address
            if link is not asker and address is not None and is_ip_literal(address.host):
                out[address.endpoint] = NetAddress(address.host, address.port, link.node_id,
                                                   int(now))  # fmt: skip
        for entry in self.addrbook.sample(MAX_ADDRS, now, exclude_node_ids=skip_ids):
            if len(out) >= MAX_ADDRS:
                break
            if entry.key not in out and entry.node_id not in skip_ids:
                out[entry.key] = NetAddress(entry.host, entry.port, entry.node_id,
                                            int(entry.last_seen))  # fmt: skip
        return list(out.values())[:MAX_ADDRS]

    def link_rows(self) -> list[dict[str, Any]]:
        """``GET /peers`` rows for every ready link, oldest first."""
        rows = []
        for link in sorted(self.links.values(), key=lambda lk: lk.connected_since or 0.0):
            address = link.listen_address
            entry = self.addrbook.get(address.host, address.port) if address else None
            rows.append(link_info(link, entry.source if entry else None))
        return rows
