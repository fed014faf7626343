"""The live peer links of a node, and the messages they share.

Data path: :class:`~bitfitech.peer.protocol.PeerProtocol` -> :class:`PeerHub`
-> the address book, and the gossip layer (:class:`~bitfitech.interfaces.IGossip`).
The hub admits links (bans and connection limits, overall and per remote
IP address, when a connection arrives; one link per node id), keeps the
ready ones by node id, answers ``getaddr`` and learns from ``addr``, and
tells its subscribers (the dialer) when links or addresses change.  It
knows the network's witnesses by node id (:meth:`PeerHub.is_witness_link`):
the dialer keeps a link to each, past ``max_peers`` if need be, and those
links fill the outbound target as outbound links do, whichever end dialled
them (:meth:`PeerHub.target_count`).

Markets: a ready link fills the target only if its peer carries one of
this node's markets (:attr:`~bitfitech.peer.protocol.PeerProtocol.shared_markets`),
so that links to nodes of other markets cannot starve this node's own
(:meth:`PeerHub.links_by_market` says how many links each market has).
An inbound link with no shared market stays up, for address exchange; an
outbound one is a *feeler*: it is closed (:data:`REASON_NO_SHARED_MARKET`)
once the peer has answered our ``getaddr``, or after
:data:`FEELER_TIMEOUT` if it never does.  That is no failure of the
address: the dial reached it, and the book notes the markets its
``version`` announced (:meth:`~bitfitech.peer.addrbook.AddressBook.record_markets`).

Address hygiene: whatever arrives (``addr``, an inbound link's listening
address) is only a candidate in the address book, and an address learned
from an ``addr`` is never relayed.  A node passes on only the addresses
it vouches for: those of the peers linked to it now, and those the book
says a dial reached within :data:`~bitfitech.peer.addrbook.SHARE_WINDOW`
(and not failed since).  They go into ``getaddr`` answers, and a few
peers are told unasked (:meth:`PeerHub.announce`) of a peer that has just
linked in and of an address the dialer has just reached.  So an address
travels one hop beyond the nodes that reached it, and one that no node
can reach dies out instead of spreading.

Misbehaviour reported by a link is scored against the link's remote IP
address (:class:`~bitfitech.peer.misbehaviour.ScoreBoard`); an address
whose score reaches :data:`~bitfitech.peer.misbehaviour.BAN_THRESHOLD`
loses every link and is banned for ``ban_duration`` seconds
(:class:`~bitfitech.peer.bans.BanList`, persisted).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..address import AddressError, PeerAddress, format_hostport, is_ip_literal
from ..config import (
    DEFAULT_BAN_DURATION,
    DEFAULT_MAX_HANDSHAKES_PER_IP,
    DEFAULT_MAX_INBOUND_PER_IP,
    LinkTiming,
)
from ..interfaces import IGossip, ILinkOwner
from ..logs import logger
from ..wire.messages import (
    MAX_ADDRS,
    Addr,
    DialBack,
    DialedBack,
    GetAddr,
    Message,
    NetAddress,
    Unknown,
)
from .addrbook import AddressBook
from .bans import Ban, BanList, ban_address
from .misbehaviour import BAN_THRESHOLD, ScoreBoard
from .protocol import REASON_DUPLICATE, Direction, LocalNode, PeerProtocol, link_info

if TYPE_CHECKING:
    from .reachability import Reachability

log = logger(__name__)

#: how many peers are told of a peer just linked in, or an address just reached
RELAY_FANOUT = 2

#: close reason of an outbound link with no shared market, once it gave us addresses
REASON_NO_SHARED_MARKET = "no shared market"

#: seconds a feeler (outbound, no shared market) waits for its ``addr`` answer
FEELER_TIMEOUT = 30.0

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


def _canonical_host(host: str) -> str:
    """C{host} as bans and per-address limits key it (as given if not an IP literal)."""
    try:
        return ban_address(host)
    except ValueError:
        return host


@implementer(ILinkOwner)
class PeerHub:
    """
    Registry of this node's peer links.

    :ivar links: ready links by the peer's node id.
    :ivar pending: links still in their handshake.
    :ivar witnesses: the node ids of the network's witnesses (empty
        without witnesses; this node's own id may be among them).
    :ivar bans: the banned IP addresses.
    :ivar scores: misbehaviour scores by remote IP address.
    :ivar misbehaviour_count: misbehaviour reports, ever.
    :ivar refused_inbound: inbound connections refused by a connection limit.
    :ivar refused_banned: inbound connections refused because their address is banned.
    :ivar banned_count: bans this hub imposed, ever.
    """

    def __init__(
        self,
        addrbook: AddressBook,
        clock: IReactorTime,
        *,
        gossip: IGossip | None = None,
        max_peers: int,
        max_inbound: int,
        timing: LinkTiming = LinkTiming(),
        rng: random.Random | None = None,
        max_inbound_per_ip: int = DEFAULT_MAX_INBOUND_PER_IP,
        max_handshakes_per_ip: int = DEFAULT_MAX_HANDSHAKES_PER_IP,
        bans: BanList | None = None,
        ban_duration: float = DEFAULT_BAN_DURATION,
        scores: ScoreBoard | None = None,
        witnesses: Collection[str] = (),
    ) -> None:
        """
        :param gossip: told of ready links and handed the messages the hub
            does not handle itself (the gossip layer), or ``None``.
        :param max_peers: cap on all links.
        :param max_inbound: cap on inbound links.
        :param max_inbound_per_ip: cap on inbound links from one IP address.
        :param max_handshakes_per_ip: cap on inbound links from one IP
            address still in their handshake.
        :param bans: the ban list (loaded); an empty one in memory if ``None``.
        :param ban_duration: seconds an address reaching the threshold is
            banned; 0 never bans (scores are still kept and logged).
        :param scores: the scoreboard; a default one if ``None``.
        :param witnesses: the node ids of the network's witnesses: an
            outbound link dialled to one of them (pinned to its id) is
            admitted past C{max_peers}.
        """
        self._local: LocalNode | None = None
        self.addrbook = addrbook
        self.clock = clock
        self.max_peers = max_peers
        self.max_inbound = max_inbound
        self.max_inbound_per_ip = max_inbound_per_ip
        self.max_handshakes_per_ip = max_handshakes_per_ip
        self.bans = bans if bans is not None else BanList()
        self.ban_duration = ban_duration
        self.scores = scores if scores is not None else ScoreBoard()
        self.timing = timing
        self._rng = rng or random.Random()
        self.links: dict[str, PeerProtocol] = {}
        self.pending: set[PeerProtocol] = set()
        self._nonces: set[int] = set()
        self._subscribers: list[Callable[[], None]] = []
        self._hosts: dict[PeerProtocol, str] = {}
        self._feelers: dict[PeerProtocol, IDelayedCall] = {}
        self.misbehaviour_count = 0
        self.refused_inbound = 0
        self.refused_banned = 0
        self.banned_count = 0
        self.gossip = gossip
        self.witnesses = frozenset(witnesses)
        self.reachability: Reachability | None = None
        """Answers and asks for dial-backs (``dialback``, ``dialedback``), if set."""

    def start(self, local: LocalNode) -> None:
        """
        Admit links from now on, saying C{local} about this node in their
        ``version`` (its id and listening port are known only once the
        node has started).
        """
        self._local = local

    @property
    def local(self) -> LocalNode:
        """What this node says about itself (only once started)."""
        if self._local is None:
            raise RuntimeError("the peer hub has not started")
        return self._local

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

    def target_count(self, *, ready: bool = False) -> int:
        """
        Links that fill the outbound target (``--outbound``): every outbound
        link, and every link with a witness, whichever end dialled it.  The
        dialer dials a witness only while no link with it exists, so a link
        the witness dialled stands for the one this node would have dialled,
        and counts the same.  Inbound links from other nodes do not count,
        nor does a link whose peer carries none of this node's markets
        (once its ``version`` said so: a link whose peer has not said yet
        counts while its handshake lasts).

        :param ready: count only ready links, not those in their handshake.
        """
        links = self.links.values() if ready else self._all_links()
        return sum(
            1
            for link in links
            if (link.direction == "outbound" or self.is_witness_link(link))
            and (link.remote is None or link.shared_markets)
        )

    def links_by_market(self) -> dict[str, int]:
        """The ready links sharing each of this node's markets, by market (0 for none)."""
        counts = dict.fromkeys(self.local.markets, 0)
        for link in self.links.values():
            for market in link.shared_markets:
                counts[market] += 1
        return counts

    def is_feeler(self, link: PeerProtocol) -> bool:
        """
        Whether C{link} is a feeler: a ready outbound link, not to a
        witness, whose peer carries none of this node's markets.  It is
        kept only until the peer has answered our ``getaddr``.
        """
        return (
            link.direction == "outbound"
            and link.remote is not None
            and not link.shared_markets
            and not self.is_witness_link(link)
        )

    def is_witness_link(self, link: PeerProtocol) -> bool:
        """
        Whether C{link} leads to one of the network's witnesses: its peer's
        node id (once its ``version`` arrived), or before that the node id
        the dialled address is pinned to, is a witness's.
        """
        node_id = link.node_id
        if node_id is None and link.dialed is not None:
            node_id = link.dialed.node_id
        return node_id is not None and node_id in self.witnesses

    def connected_endpoints(self) -> set[tuple[str, int]]:
        """Listening addresses of all links, ready or dialled and handshaking."""
        out = set()
        for link in self._all_links():
            address = link.listen_address
            if address is not None:
                out.add(address.endpoint)
        return out

    def host_of(self, link: PeerProtocol) -> str:
        """The remote IP address of C{link}, as bans key it ("" if unknown)."""
        host = self._hosts.get(link)
        return host if host is not None else _canonical_host(link.peer_host)

    def is_banned(self, host: str) -> bool:
        """Whether C{host} (an IP address; a host name never is) is banned now."""
        return self.bans.get(host, self.clock.seconds()) is not None

    # -- building links

    def build_link(
        self, direction: Direction, dialed: PeerAddress | None = None, *, host: str | None = None
    ) -> PeerProtocol | None:
        """
        A new link if no ban and no limit forbids it, else ``None`` (Twisted
        then closes the connection at once, before any TLS work).

        :param host: the remote IP address of the connection, when known:
            a banned one is refused, and inbound links from one address
            are limited.
        """
        if host is not None:
            host = _canonical_host(host)
            if self.is_banned(host):
                where = format_hostport(host, dialed.port) if dialed else host
                if direction == "inbound":
                    self.refused_banned += 1
                log.debug("{direction} connection with banned {where} refused",
                          direction=direction.capitalize(), where=where)  # fmt: skip
                return None
        total = self.count()
        to_witness = (
            direction == "outbound" and dialed is not None and (dialed.node_id in self.witnesses)
        )
        if (total >= self.max_peers and not to_witness) or (
            direction == "inbound" and self.count("inbound") >= self.max_inbound
        ):
            if direction == "inbound":
                self.refused_inbound += 1
                log.debug("Inbound connection refused: {total} links", total=total)
            return None
        if direction == "inbound" and host is not None:
            from_host = [
                lk for lk, h in self._hosts.items() if h == host and lk.direction == direction
            ]
            handshaking = sum(1 for lk in from_host if lk in self.pending)
            if (
                len(from_host) >= self.max_inbound_per_ip
                or handshaking >= self.max_handshakes_per_ip
            ):
                self.refused_inbound += 1
                log.debug(
                    "Inbound connection from {host} refused: {count} links from it, "
                    "{handshaking} in their handshake",
                    host=host, count=len(from_host), handshaking=handshaking,
                )  # fmt: skip
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
        if host is not None:
            self._hosts[link] = host
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
            # A candidate to dial (the port is the peer's claim); told to a
            # few peers while the link lives, never relayed on by them.
            if self.learn(address, "inbound", int(self.clock.seconds())):
                if is_ip_literal(address.host):
                    self.announce(address)
        if address is not None:
            self.addrbook.record_markets(address.host, address.port, link.markets)
        if self.is_feeler(link):
            self._feelers[link] = self.clock.callLater(
                FEELER_TIMEOUT, self._feeler_done, link, "no addr answer"
            )
        link.send(GetAddr())
        if self.reachability is not None:
            self.reachability.link_ready(link)
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
        elif isinstance(message, DialBack):
            if self.reachability is not None:
                self.reachability.on_dialback(link, message)
        elif isinstance(message, DialedBack):
            if self.reachability is not None:
                self.reachability.on_dialed_back(link, message)
        elif self.gossip is not None and self.gossip.link_message(link, message):
            pass
        elif isinstance(message, Unknown):
            log.debug("Ignoring unknown command {command} from {peer}",
                      command=message.command, peer=link.describe())  # fmt: skip

    def link_closed(self, link: PeerProtocol, reason: str) -> None:
        """Forget a closed link."""
        self.pending.discard(link)
        self._hosts.pop(link, None)
        self._nonces.discard(link.nonce)
        timer = self._feelers.pop(link, None)
        if timer is not None and timer.active():
            timer.cancel()
        if self.gossip is not None:
            self.gossip.link_closed(link)
        if self.reachability is not None:
            self.reachability.link_closed(link)
        if link.node_id is not None and self.links.get(link.node_id) is link:
            del self.links[link.node_id]
            level = log.debug if reason == REASON_NO_SHARED_MARKET else log.info
            level("Peer {peer} disconnected: {reason} ({count} links)",
                  peer=link.describe(), reason=reason, count=len(self.links))  # fmt: skip
        self._changed()

    def _feeler_done(self, link: PeerProtocol, why: str) -> None:
        """Close a feeler: its peer answered our ``getaddr`` (C{why}), or never did."""
        timer = self._feelers.pop(link, None)
        if timer is not None and timer.active():
            timer.cancel()
        log.debug("Closing feeler {peer}, which shares no market with us ({why})",
                  peer=link.describe(), why=why)  # fmt: skip
        link.close(REASON_NO_SHARED_MARKET)

    def link_misbehaved(self, link: PeerProtocol, reason: str, score: int) -> None:
        """
        Count C{score} against the remote IP address of C{link}; at
        :data:`~bitfitech.peer.misbehaviour.BAN_THRESHOLD`, ban the address
        and drop every link with it (unless bans are off).
        """
        self.misbehaviour_count += 1
        host = self.host_of(link)
        if not is_ip_literal(host):
            log.info("Misbehaviour by {peer}: {reason} (no address to score)",
                     peer=link.describe(), reason=reason)  # fmt: skip
            return
        now = self.clock.seconds()
        total = self.scores.add(host, score, now)
        log.info("Misbehaviour by {peer}: {reason} (+{score}, score of {host} now {total})",
                 peer=link.describe(), reason=reason, score=score, host=host,
                 total=round(total, 1))  # fmt: skip
        if total < BAN_THRESHOLD:
            return
        if self.ban_duration <= 0:
            log.warn("{host} reached misbehaviour score {total} ({reason}); not banned: "
                     "bans are off (--ban-duration 0)", host=host, total=round(total, 1),
                     reason=reason)  # fmt: skip
            return
        self.ban(host, reason, node_id=link.node_id)

    # -- bans

    def ban(self, host: str, reason: str, *, node_id: str | None = None) -> Ban:
        """
        Ban the IP address C{host} for :attr:`ban_duration` seconds and
        abort every link with it, inbound and outbound.

        :raises ValueError: if C{host} is not an IP address.
        """
        now = self.clock.seconds()
        ban = self.bans.add(host, reason=reason, now=now, until=now + self.ban_duration,
                            node_id=node_id)  # fmt: skip
        self.banned_count += 1
        self.scores.reset(ban.address)
        doomed = [link for link in self._all_links() if self.host_of(link) == ban.address]
        log.warn("Banned {host} for {duration}s (misbehaviour: {reason}); dropping its "
                 "{count} links", host=ban.address, duration=self.ban_duration, reason=reason,
                 count=len(doomed))  # fmt: skip
        for link in doomed:
            link.close(f"banned for misbehaviour: {reason}", abort=True)
        return ban

    def unban(self, host: str) -> Ban | None:
        """
        Lift the ban on C{host} and forget its score.

        :return: the ban lifted, or ``None`` if C{host} was not banned.
        :raises ValueError: if C{host} is not an IP address.
        """
        address = ban_address(host)
        self.scores.reset(address)
        if self.bans.get(address, self.clock.seconds()) is None:
            return None  # never banned, or the ban expired
        ban = self.bans.remove(address)
        if ban is not None:
            log.info("Ban of {host} lifted", host=ban.address)
            self._changed()
        return ban

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

    def learn(
        self,
        address: PeerAddress,
        source: str,
        seen: int | None = None,
        *,
        markets: Collection[str] = (),
    ) -> bool:
        """
        Put one address in the book as a candidate to dial; ``True`` if new.
        Own and unusable ones are skipped.  Nothing is passed on to peers.

        :param seen: when the address was last heard of (a peer's claim), if not now.
        :param markets: the markets the node there is said to carry (by discovery).
        """
        if address.node_id == self.local.node_id or address.host in _UNSPECIFIED:
            return False
        try:
            return self.addrbook.add(
                address.host, address.port, source=source, now=self.clock.seconds(),
                node_id=address.node_id, seen=seen, markets=markets,
            )  # fmt: skip
        except (ValueError, AddressError):
            return False

    def _on_addr(self, link: PeerProtocol, message: Addr) -> None:
        """
        Learn the addresses of an ``addr`` as candidates (whether an answer
        or an announcement), and have the dialer look at the new ones.
        None is relayed: this node has not reached them.  A feeler
        (:meth:`is_feeler`) has done its work: it is closed.
        """
        new = 0
        for a in message.addrs:
            if self.learn(PeerAddress(a.host, a.port, a.node_id), "addr", a.time):
                new += 1
        if new:
            log.debug("Learned {count} new addresses from {peer}", count=new,
                      peer=link.describe())  # fmt: skip
        if link in self._feelers:
            self._feeler_done(link, f"{len(message.addrs)} addresses given")
        elif new:
            self._changed()

    def announce(self, address: PeerAddress) -> None:
        """
        Tell up to :data:`RELAY_FANOUT` random ready peers, the node itself
        left out, of an address this node has just come to vouch for: one
        the dialer has just reached (it was not shareable before), or the
        listening address of a peer that has just linked in.  These are the
        only addresses this node sends unasked.

        :param address: the address, with the node id proven there.
        """
        if address.node_id == self.local.node_id or address.host in _UNSPECIFIED:
            return
        others = [link for node_id, link in self.links.items() if node_id != address.node_id]
        if not others:
            return
        now = int(self.clock.seconds())
        message = Addr(addrs=(NetAddress(address.host, address.port, address.node_id, now),))
        for other in self._rng.sample(others, min(RELAY_FANOUT, len(others))):
            other.send(message)

    def _vouched_link_address(self, link: PeerProtocol) -> PeerAddress | None:
        """
        The listening address of a ready link, if a ``getaddr`` answer may
        name it: an outbound link's is the address dialled and reached; an
        inbound link's (its remote IP with the port its ``version`` claims)
        only while the book holds it with no failed dial of ours since its
        last success (an address our own dials fail is not passed on, nor
        one aged out of the book).  Only IP literals.
        """
        address = link.listen_address
        if address is None or not is_ip_literal(address.host):
            return None
        if link.direction == "inbound":
            entry = self.addrbook.get(address.host, address.port)
            if entry is None or entry.failures > 0:
                return None
        return address

    def _addresses_for(self, asker: PeerProtocol) -> list[NetAddress]:
        """
        Up to ``MAX_ADDRS`` listening addresses for a ``getaddr`` answer: the
        peers linked now (:meth:`_vouched_link_address`), then addresses the
        book vouches for (:meth:`~bitfitech.peer.addrbook.AddressBook.sample`:
        reached within :data:`~bitfitech.peer.addrbook.SHARE_WINDOW`).
        """
        now = self.clock.seconds()
        skip_ids = {self.local.node_id} | ({asker.node_id} if asker.node_id else set())
        out: dict[tuple[str, int], NetAddress] = {}
        for link in self.links.values():
            address = self._vouched_link_address(link) if link is not asker else None
            if address is not None:
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
