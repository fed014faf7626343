"""Gossip: how events travel between nodes, and how nodes catch up.

Data path: :class:`~bitfitech.peer.hub.PeerHub` -> :class:`GossipRouter`
(by market) -> :class:`Gossip` (one per market) ->
the market (:class:`~bitfitech.market.interfaces.IEventStore`); and the
market -> :meth:`Gossip.publish` (as its
:class:`~bitfitech.market.interfaces.IEventPublisher`, added at
:meth:`Gossip.start`) -> peer links (:class:`~bitfitech.interfaces.IPeerLink`).
``docs/consistency.rst`` has the rules; in short:

* **Push and announce.**  A new event (this node's, or one first received
  with ``ttl`` > 0) goes in full to up to ``fanout`` peers that are not
  known to have it, and as an ``inv`` (its id) to the others; a peer that
  lacks an announced event asks for it with ``getdata`` unless a push
  brings it within ``fetch_delay``.  Only the author and the nodes within
  ``push_hops`` of it push; further out, where most peers already have
  the event, nodes only announce it, and an ``inv`` from there is asked
  for at once.  Every node thus receives about one full copy of each
  event instead of one per link.
* **Prune and graft.**  A push of an event already held sends the pusher
  a ``prune``: the link is lazy both ways (relays are announced on it,
  not pushed) until either side asks the other for an event, which makes
  it eager again.  The author's own events are pushed on lazy links too.
* **Dedup and hop limit.**  An event already held, or seen recently (a
  bounded cache, which also remembers invalid events), is not processed or
  relayed again; ``ttl`` drops by one per hop and 0 is never relayed.
* **Rate per author.**  New events relayed to this node (``ttl`` > 0)
  count against their author's token bucket (``author_rate`` a second,
  bursts of ``author_burst``; :mod:`bitfitech.ratelimit`), so that one
  key cannot take the whole node.  The excess is dropped before its
  signatures are checked and not marked seen, and the peer that relayed
  it is pulled from at the next gap check: anti-entropy answers, which
  come at the receiver's own pace and are not limited, bring it a second
  or two later.  A
  peer is scored ``RATE_EXCEEDED`` (at most once a second) only if it
  alone relayed more of one author than the limit allows (with
  :data:`PEER_SLACK` seconds to spare), which an honest peer with the
  same limits never does: it relays only what its own bucket let in.
  This node's own events are never limited.
* **Verification before relay.**  Events are parsed and their signatures
  checked (a message's events as one batch, large batches in threads)
  before anything else happens; a bad signature disconnects the peer
  (honest nodes never relay one), a malformed event marks it.
* **Anti-entropy.**  After the handshake and every ``sync_interval``, peers
  exchange version vectors (``sync``); each side answers with what the other
  lacks (but what it just sent it by gossip), in bursts of
  :data:`SYNC_BURST` messages of at most :data:`SYNC_CHUNK` events in key
  order, with ``more`` on the last while there is more; the receiver then
  asks again.  A node that repaired old events this way prompts its other
  peers, and a node with a gap that outlasts the usual delivery delay asks
  one peer at a time, so partitions heal and new nodes catch up without
  a busy network being loaded with repairs of events that are only late.
* **One market each.**  A :class:`Gossip` spreads one market's events
  and stamps, over the links whose peers carry that market too (the
  :class:`GossipRouter` hands it only those), and names the market in
  every message to a peer that reads it (``docs/protocol.rst``, "Markets").
* Events, announcements and requests are never sent from inside a
  protocol callback: they are queued per link and written at the next
  reactor turn (a busy node: every ``flush_interval``), batched.
  (Anti-entropy answers go out at once: they are answers to one peer, not
  relays.)
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from .config import GossipTiming
from .interfaces import IGossip, IPeerLink
from .logs import logger
from .market.events import (
    SIGNATURE_LENGTH,
    Event,
    EventError,
    event_id,
    parse_event,
    verify_event,
)
from .market.interfaces import IEventPublisher, IEventStore
from .market.stamps import Stamp, StampError, parse_stamp, stamp_id, verify_stamp
from .peer import misbehaviour
from .ratelimit import BucketTable
from .wire.messages import (
    MAX_CHAINS,
    MAX_EVENTS,
    MAX_INV,
    MAX_STAMPS,
    MAX_TTL,
    MAX_VECTOR,
    MAX_WITNESS_VECTOR,
    Events,
    GetData,
    Inv,
    Message,
    Prune,
    Stamps,
    Sync,
    event_fragment,
)

log = logger(__name__)

SYNC_CHUNK = 1000
"""Most events in one ``events`` message of an anti-entropy answer."""

SYNC_STAMPS = 2000
"""Most witness stamps in one anti-entropy answer."""

STAMP_BYTES = 1_000_000
"""Most bytes of stamp text in one ``stamps`` message (frames are at most 2 MiB)."""

SYNC_BURST = 4
"""Most ``events`` messages in one anti-entropy answer: while the receiver
verifies one (in threads), it decodes and applies the others."""

SEEN_CACHE = 65536
"""Ids remembered for dedup beyond the events held (invalid ones included)."""

FRAGMENTS = 8192
"""Events whose JSON fragment is kept for the next peer they are sent to."""

KNOWN_PER_PEER = 16384
"""Ids remembered per peer as already held by it."""

PULL_INTERVAL = 0.25
"""Least seconds between two unprompted ``sync`` requests to one peer."""

PROMPT_DELAY = 0.1
"""Seconds after learning events by anti-entropy before prompting other peers."""

PROMPT_INTERVAL = 2.0
"""Least seconds between two prompts of the other peers."""

GAP_CHECK = 1.0
"""Seconds between checks for gaps in the event chains."""

MAX_LAG = 30.0
"""Largest arrival age counted (seconds): clocks may be wrong."""

BUSY_RATE = 1000
"""Items (events, announced or requested ids) sent a second above which a
node is busy and batches its sends (see ``GossipTiming.flush_interval``)."""

UNSENT = 4096
"""Most of this node's own events kept, while it has no peers, to push to
the first peer that comes (older ones reach peers by anti-entropy)."""

AUTHOR_BUCKETS = 65536
"""Most authors whose rate is tracked at once (all peers together)."""

AUTHOR_BUCKETS_PER_PEER = 4096
"""Most authors whose rate is tracked at once for one peer."""

AUTHOR_PRUNE = 2.0
"""Seconds between two clean-ups of the authors' buckets that filled up again."""

RATE_REPORT_INTERVAL = 1.0
"""Least seconds between two ``RATE_EXCEEDED`` reports of one peer."""

PEER_SLACK = 2.0
"""Seconds of an author's rate a peer may relay beyond the author's burst
before it is scored: events travel with varying delays, and an honest
peer may deliver in a bunch what it took in over a longer time."""

AHEAD_PATIENCE = 0.5
"""Least seconds a peer's ``sync`` may show events we lack before we pull them."""

REPAIR_AGE = 2.0
"""Seconds after its timestamp from which an event learned by anti-entropy
was a repair (and prompts the other peers), not an event still travelling."""


Verifier = Callable[[list[Event]], "Deferred[list[bool]]"]
"""Checks the signatures of a batch of events: one bool per event, in order."""


def verify_inline(events: list[Event]) -> Deferred[list[bool]]:
    """Check C{events}' signatures now, in this thread."""
    return succeed([verify_event(event) for event in events])


def _verify_all(events: list[Event]) -> list[bool]:
    return [verify_event(event) for event in events]


class ThreadedVerifier:
    """
    Checks large batches of signatures in threads, on several cores at once.

    PyNaCl releases the GIL while libsodium verifies, so a batch split over
    ``threads`` threads takes about ``1 / threads`` of the time.  Batches
    with fewer than ``threshold`` events signed alone (batch-signed events
    cost a few hashes each) are checked at once, in the reactor thread:
    live gossip stays as prompt as it was, and catching up (anti-entropy
    answers of up to 1,000 events) uses every core.
    """

    def __init__(self, reactor: Any, threads: int = 2, threshold: int = 64) -> None:
        """
        :param reactor: provides the thread pool and runs the callbacks.
        :param threads: parts each large batch is split into.
        :param threshold: the smallest batch sent to threads.
        """
        self.reactor = reactor
        self.threads = threads
        self.threshold = threshold

    def __call__(self, events: list[Event]) -> Deferred[list[bool]]:
        # Only an event's own signature is worth a thread: a batch-signed
        # event costs a few hashes (its batch's signature is checked once),
        # Python work that would only contend for the GIL there.
        if sum(len(event.sig) == SIGNATURE_LENGTH for event in events) < self.threshold:
            return verify_inline(events)
        size = -(-len(events) // self.threads)
        pool = self.reactor.getThreadPool()
        parts = [
            deferToThreadPool(self.reactor, pool, _verify_all, events[start : start + size])
            for start in range(0, len(events), size)
        ]
        return gatherResults(parts).addCallback(
            lambda results: [good for part in results for good in part]
        )


class _Outbox:
    """Items queued for one message to one peer, and the smallest ttl among them."""

    __slots__ = ("items", "ttl")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.ttl = MAX_TTL

    def add(self, item: Any, ttl: int) -> None:
        self.items.append(item)
        if ttl < self.ttl:
            self.ttl = ttl

    def take(self) -> tuple[list[Any], int]:
        """The queued items and their ttl: a batch travels as far as its
        most travelled member, never further."""
        items, ttl = self.items, self.ttl
        self.items, self.ttl = [], MAX_TTL
        return items, ttl


class _Peer:
    """What gossip keeps about one ready link."""

    __slots__ = (
        "link",
        "known",
        "lazy",
        "asked",
        "pushes",
        "answers",
        "announcements",
        "out_getdata",
        "last_pull",
        "last_chains",
        "ahead",
        "ahead_since",
        "last_answer",
        "in_order",
        "queued",
        "authors",
        "last_rate_report",
        "stamps_out",
        "claims",
        "market",
    )

    def __init__(self, link: IPeerLink, authors: BucketTable, market: str = "") -> None:
        """
        :param authors: the new events of each author this peer relays.
        :param market: the ``market`` of every message sent to this peer:
            the store's pair, or ``""`` for a peer that reads no market
            (its pair is ours, or the link would not be here).
        """
        self.link = link
        self.market = market
        self.authors = authors
        self.last_rate_report = float("-inf")
        self.known: OrderedDict[str, None] = OrderedDict()
        # Pruned: the link carries announcements only, until either side
        # asks the other for an event (see Gossip._spread).
        self.lazy = False
        # Ids asked of this peer and not yet received from it: its answers
        # are not pushes, and a late one is no reason to prune the link.
        self.asked: set[str] = set()
        # Pushed events and getdata answers travel in separate messages,
        # and answers one message per ttl: an answer may carry ttl 0 (an
        # event learned by anti-entropy), which must not stop the pushes or
        # the other answers batched with it from spreading on.
        self.pushes = _Outbox()
        self.answers: dict[int, list[Event]] = {}
        self.announcements = _Outbox()
        self.out_getdata: list[str] = []
        self.last_pull = float("-inf")
        self.last_chains = float("-inf")
        # Authors whose events the peer's last sync showed beyond ours.
        self.ahead: dict[str, int] = {}
        self.ahead_since = 0.0
        self.last_answer = float("-inf")
        # While events messages are being handled: fires once they all are.
        self.in_order: Deferred[Any] | None = None
        self.queued = 0
        # Witness stamps to send at the next flush.
        self.stamps_out: list[Stamp] = []
        # What its last sync said it holds, author -> seq (None: no sync
        # yet): how far behind this node is (Gossip.progress).
        self.claims: dict[str, int] | None = None

    def knows(self, event_id: str) -> None:
        known = self.known
        if event_id in known:
            return
        known[event_id] = None
        if len(known) > KNOWN_PER_PEER:
            known.popitem(last=False)


class _Request:
    """An event asked for with ``getdata``: whom, by when, and who else announced it."""

    __slots__ = ("deadline", "asked", "others")

    def __init__(self, deadline: float, asked: IPeerLink) -> None:
        self.deadline = deadline
        self.asked: IPeerLink | None = asked
        self.others: list[IPeerLink] = []


@implementer(IEventPublisher, IGossip)
class Gossip:
    """
    Spreads events to peers and keeps this node's events in sync with theirs.

    :ivar stats: counters shown in ``GET /status``.
    """

    def __init__(
        self,
        store: IEventStore,
        clock: IReactorTime,
        timing: GossipTiming | None = None,
        rng: random.Random | None = None,
        verifier: Verifier | None = None,
        witnesses: frozenset[str] | tuple[str, ...] = (),
    ) -> None:
        """
        :param verifier: checks batches of signatures (:func:`verify_inline`
            by default; a node uses a :class:`ThreadedVerifier`).
        :param witnesses: the node ids of the network's witnesses: this
            node's own events are pushed to each of them first, whatever
            the fanout (their receipts give the events their fair time).
        """
        self.store = store
        self.witnesses = frozenset(witnesses)
        self.witnesses_missing: set[str] = set()
        """Witnesses last seen linked without this market: they never stamp its events."""
        self.clock = clock
        self.timing = timing or GossipTiming()
        self._rng = rng or random.Random()
        self.peers: dict[IPeerLink, _Peer] = {}
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._fragments: OrderedDict[str, str] = OrderedDict()
        self._requested: dict[str, _Request] = {}
        self._to_fetch: deque[tuple[float, str]] = deque()
        self._fetch_call: IDelayedCall | None = None
        self._flush_call: IDelayedCall | None = None
        self._last_flush = float("-inf")
        self._busy = False
        self._window_start = 0.0
        self._window_items = 0
        self._prompt_call: IDelayedCall | None = None
        self._ahead_call: IDelayedCall | None = None
        self._loops: list[LoopingCall] = []
        self._stop_publishing: Callable[[], None] | None = None
        self._verify: Verifier = verifier or verify_inline
        # This node's events published while it had no peer to send them to.
        self._unsent: deque[Event] = deque(maxlen=UNSENT)
        self._verifying: set[str] = set()
        self._prompt_skip: set[IPeerLink] = set()
        # Gap marks (see IEventStore.gap_marks) and when each was first seen.
        self._gap_marks: dict[tuple[str, int], float] = {}
        self._gap_turn = 0
        self._last_prompt = float("-inf")
        self._authors = BucketTable(
            self.timing.author_rate, self.timing.author_burst, AUTHOR_BUCKETS
        )
        self._lag = 0.0
        self._ages = 0.0
        self._aged = 0
        # Sync progress: (when, events held) at the last looks; since when,
        # and from how many events held, this node is catching up (None:
        # it is not); when that was last logged.
        self._held_samples: deque[tuple[float, int]] = deque(maxlen=PROGRESS_SAMPLES)
        self._catching_up: tuple[float, int] | None = None
        self._progress_logged = float("-inf")
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "events_received", "events_new", "events_duplicate", "events_invalid",
                "events_pushed", "inv_sent", "inv_received", "getdata_sent", "sync_sent",
                "sync_received", "sync_events_sent", "requests_expired", "requests_dropped",
                "events_rate_limited", "prunes_sent", "stamps_received", "stamps_new",
                "stamps_duplicate", "stamps_invalid", "stamps_sent",
            ),
            0,
        )  # fmt: skip

    # -- lifecycle

    def start(self) -> None:
        """
        Take this node's new events from the store (see
        :meth:`~bitfitech.market.interfaces.IEventStore.add_publisher`) and
        start the periodic anti-entropy, gap and request checks.
        """
        if self._stop_publishing is None:
            self._stop_publishing = self.store.add_publisher(self)
        for interval, call in (
            (self.timing.sync_interval, self._sync_all),
            (GAP_CHECK, self._check_gaps),
            (self.timing.request_timeout / 4, self._expire_requests),
            (AUTHOR_PRUNE, self._prune_authors),
            (PROGRESS_CHECK, self._check_progress),
        ):
            loop = LoopingCall(call)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        """Stop taking new events and stop every timer; queued messages are dropped."""
        if self._stop_publishing is not None:
            self._stop_publishing()
            self._stop_publishing = None
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for call in (self._flush_call, self._prompt_call, self._fetch_call, self._ahead_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._prompt_call = self._fetch_call = self._ahead_call = None
        self.peers.clear()

    # -- IGossip: what the hub reports

    def link_ready(self, link: IPeerLink) -> None:
        """A new peer: start by exchanging version vectors."""
        timing = self.timing
        authors = BucketTable(
            timing.author_rate,
            timing.author_burst + PEER_SLACK * timing.author_rate,
            AUTHOR_BUCKETS_PER_PEER,
        )
        market = self.store.pair if link.names_markets else ""
        peer = self.peers[link] = _Peer(link, authors, market)
        self._pull(peer)
        if self._unsent:
            # Pushed now, they spread as any new event; the peer would
            # otherwise get them only in its sync answer, which is not
            # relayed, and the rest of the network at the next sync.
            unsent, self._unsent = list(self._unsent), deque(maxlen=UNSENT)
            for event in unsent:
                self._spread(event, self.timing.ttl, None)

    def link_closed(self, link: IPeerLink) -> None:
        """A peer left: ask other announcers for what it was asked for."""
        self.peers.pop(link, None)
        reask = False
        for request in self._requested.values():
            if link in request.others:
                request.others.remove(link)
            if request.asked is link:
                request.asked = None
                request.deadline = float("-inf")
                reask = True
        if reask:
            self._expire_requests()

    def link_message(self, link: IPeerLink, message: Message) -> bool:
        """Handle a gossip message; ``False`` if it is not one."""
        peer = self.peers.get(link)
        if isinstance(message, Events):
            if peer is not None:
                self._on_events(peer, message)
        elif isinstance(message, Inv):
            if peer is not None:
                self._on_inv(peer, message)
        elif isinstance(message, GetData):
            if peer is not None:
                self._on_getdata(peer, message)
        elif isinstance(message, Sync):
            if peer is not None:
                self._on_sync(peer, message)
        elif isinstance(message, Prune):
            if peer is not None:
                peer.lazy = True
        elif isinstance(message, Stamps):
            if peer is not None:
                self._on_stamps(peer, message)
        else:
            return False
        return True

    # -- IEventPublisher

    def publish(self, events: Sequence[Event]) -> None:
        """
        Spread this node's new events (or equivocation evidence) with the full ttl.

        With witnesses they go out at the next reactor turn even on a busy
        node (which otherwise batches its sends): the witnesses' receipts
        of them are their place in the queue.
        """
        for event in events:
            self._spread(event, self.timing.ttl, None)
        if self.witnesses and events:
            self._flush_at_once()

    def _flush_at_once(self) -> None:
        """Flush at the next reactor turn, even if a later flush is scheduled."""
        call = self._flush_call
        if call is not None and call.active() and call.getTime() > self.clock.seconds():
            call.reset(0)

    def publish_stamps(self, stamps: Sequence[Stamp]) -> None:
        """Spread witness stamps (this node's own, or evidence against a witness) to every peer."""
        for stamp in stamps:
            self._spread_stamp(stamp, None)

    # -- witness stamps

    def _spread_stamp(self, stamp: Stamp, source: _Peer | None) -> None:
        """
        Send C{stamp} on.  Every node keeps a link to every witness, so a
        witness's own stamps (and evidence this node found) go in full to
        every peer not known to hold them; a stamp from a peer is only
        announced (``inv``): the peers linked to its witness have it
        already, and the others ask for it (``getdata``).
        """
        ident = stamp.id
        self._remember(ident, 0)
        ttl = self.timing.ttl
        for peer in self.peers.values():
            if peer is not source and ident not in peer.known:
                peer.knows(ident)
                if source is None:
                    peer.stamps_out.append(stamp)
                else:
                    peer.announcements.add(ident, ttl)
        self._flush_soon()

    def _on_stamps(self, peer: _Peer, message: Stamps) -> None:
        """Dedup, parse and verify witness stamps; hand the new ones on and spread them."""
        stats, store, seen = self.stats, self.store, self._seen
        witnesses = store.witnesses
        new: list[Stamp] = []
        requested = self._requested
        for text, sig in message.stamps:
            stats["stamps_received"] += 1
            ident = stamp_id(text)
            peer.knows(ident)
            requested.pop(ident, None)
            if ident in seen or store.has_stamp(ident):
                stats["stamps_duplicate"] += 1
                continue
            try:
                stamp = parse_stamp(text, sig, store.network, store.pair, witnesses)
            except StampError as e:
                stats["stamps_invalid"] += 1
                self._remember(ident, -1)
                peer.link.misbehaved(f"malformed stamp: {e}", misbehaviour.MALFORMED_EVENT)
                continue
            if not verify_stamp(stamp):
                # Not remembered: a forged copy must not shut out the genuine stamp.
                stats["stamps_invalid"] += 1
                peer.link.violation(f"bad signature on stamp {ident}")
                return
            self._remember(ident, 0)
            new.append(stamp)
        if new:
            stats["stamps_new"] += len(new)
            store.receive_stamps(new)
            for stamp in new:
                self._spread_stamp(stamp, peer)
        if message.more and not peer.link.closed:
            self._pull(peer)

    def _send_stamps(self, peer: _Peer, stamps: list[Stamp], more: bool = False) -> None:
        """Send C{stamps} in messages within :data:`MAX_STAMPS` and :data:`STAMP_BYTES`."""
        self.stats["stamps_sent"] += len(stamps)
        part: list[tuple[str, str]] = []
        size = 0
        for stamp in stamps:
            if part and (len(part) >= MAX_STAMPS or size + len(stamp.text) > STAMP_BYTES):
                peer.link.send(Stamps(tuple(part), more=False, market=peer.market))
                part, size = [], 0
            part.append(stamp.wire)
            size += len(stamp.text)
        if part:
            peer.link.send(Stamps(tuple(part), more=more, market=peer.market))

    # -- receiving

    def _on_events(self, peer: _Peer, message: Events) -> None:
        """Dedup and parse the events of a message, then verify them as one batch."""
        stats = self.stats
        if not message.ttl:
            peer.last_answer = self.clock.seconds()
        store, seen, verifying = self.store, self._seen, self._verifying
        network, pair = store.network, store.pair
        now = self.clock.seconds()
        limited = message.ttl > 0
        excess = ""
        parsed: list[Event] = []
        asked = peer.asked
        pushed_twice = False
        for text, sig in message.events:
            stats["events_received"] += 1
            try:
                ident = event_id(text)
            except UnicodeEncodeError:
                ident = ""
            answer = ident in asked
            if answer:
                asked.discard(ident)
            if ident and (ident in seen or ident in verifying or store.has(ident)):
                stats["events_duplicate"] += 1
                peer.knows(ident)
                pushed_twice = pushed_twice or not answer
                continue
            try:
                event = parse_event(text, sig, network, pair)
            except EventError as e:
                stats["events_invalid"] += 1
                if ident:
                    self._remember(ident, -1)
                peer.link.misbehaved(f"malformed event: {e}", misbehaviour.MALFORMED_EVENT)
                continue
            if limited and not self._admit(peer, event, now):
                if not excess and peer.authors.bucket(event.author, now).available(now) < 0:
                    excess = event.author
                continue
            verifying.add(ident)
            parsed.append(event)
        if excess:
            self._report_excess(peer, excess, now)
        if pushed_twice and limited and not peer.lazy:
            self._prune(peer)
        if not parsed and not message.more:
            return
        # Verification may take longer for one message than for the next
        # (threads): results are handled in the order the messages came, so
        # an anti-entropy answer's chunks apply in key order and its last
        # chunk (``more``) asks for the next burst only after the others.
        verified = self._verify(parsed) if parsed else succeed([])
        if peer.in_order is None:
            results = verified
        else:
            results = peer.in_order.addCallback(lambda _: verified)
        peer.queued += 1
        peer.in_order = results
        results.addCallback(self._verified, peer, parsed, message, now)
        results.addErrback(self._verify_failed, peer, parsed)
        results.addCallback(self._handled, peer)

    def _admit(self, peer: _Peer, event: Event, now: float) -> bool:
        """
        Whether a new event relayed by C{peer} is within its author's rate.

        Every such event also counts in the peer's own bucket of the author,
        which goes into debt only if the peer alone relays more than the
        limit allows (see :meth:`_report_excess`).  An event refused is not
        remembered; the peer is marked as ahead on its author, so that the
        next gap check pulls it by anti-entropy.
        """
        author = event.author
        peer.authors.bucket(author, now).spend(now, 1)
        if self._authors.take(author, now):
            return True
        self.stats["events_rate_limited"] += 1
        peer.knows(event.id)
        # The peer holds events of this author that we lack: a gap check
        # pulls them from it (an anti-entropy answer, not limited) once they
        # are no longer in flight, which its answer would leave out.
        ahead = peer.ahead
        if event.seq > ahead.get(author, 0) and len(ahead) < AUTHOR_BUCKETS_PER_PEER:
            since = peer.ahead_since if ahead else float("-inf")
            peer.ahead_since = max(since, now + self._in_flight())
            ahead[author] = event.seq
        return False

    def _report_excess(self, peer: _Peer, author: str, now: float) -> None:
        """Score C{peer} for relaying too many events of C{author}, at most once a second."""
        if now - peer.last_rate_report < RATE_REPORT_INTERVAL:
            return
        peer.last_rate_report = now
        timing = self.timing
        reason = f"over {timing.author_rate:g} new events a second of author {author[:16]}"
        log.info("{peer} relays {reason}; the excess is dropped", peer=peer.link,
                 reason=reason)  # fmt: skip
        peer.link.misbehaved(reason, misbehaviour.RATE_EXCEEDED)

    def _prune_authors(self) -> None:
        """Forget the authors' buckets that filled up again (they are as new)."""
        now = self.clock.seconds()
        self._authors.prune(now)
        for peer in self.peers.values():
            peer.authors.prune(now)

    @staticmethod
    def _handled(_: object, peer: _Peer) -> None:
        peer.queued -= 1
        if not peer.queued:
            peer.in_order = None

    def _verify_failed(self, failure: Any, peer: _Peer, parsed: list[Event]) -> None:
        """Log a failure to check or take a message's events; they may come again."""
        self._verifying.difference_update(event.id for event in parsed)
        log.failure("Handling events from {peer} failed", failure, peer=peer.link)

    def _verified(
        self,
        results: list[bool],
        peer: _Peer,
        parsed: list[Event],
        message: Events,
        arrived: float,
    ) -> None:
        """
        Take the events whose signatures verified; a bad one costs the peer its link.

        :param arrived: when their message was read (the market's receipt
            time: checking signatures may take longer for one message than
            for a later one).
        """
        relay_ttl = message.ttl - 1
        new: list[Event] = []
        forged: list[str] = []
        self._verifying.difference_update(event.id for event in parsed)
        for event, good in zip(parsed, results, strict=True):
            ident = event.id
            if not good:
                # Not remembered: the id covers the text only, and a forged
                # copy must not shut out the genuine event.
                forged.append(ident)
                continue
            self._remember(ident, relay_ttl)
            peer.knows(ident)
            self._requested.pop(ident, None)
            new.append(event)
        if forged:
            self.stats["events_invalid"] += len(forged)
            peer.link.violation(f"bad signature on event {forged[0]}")
        if new:
            self.stats["events_new"] += len(new)
            self.store.receive(new, arrived)
            now = self.clock.seconds()
            if relay_ttl >= 0:
                self._observe_lag(now, new)
                for event in new:
                    self._spread(event, relay_ttl, peer)
            else:
                # An anti-entropy answer: prompt the other peers if it
                # repaired something old.  Recent events in an answer are
                # mostly on their way by gossip too, and prompting for them
                # set off a cascade of syncs under load.
                old = self._in_flight_since(now)
                if any(event.ts < old for event in new):
                    self._prompt_soon(peer)
        if message.more and not peer.link.closed:
            if new or self.clock.seconds() - peer.last_pull >= PULL_INTERVAL:
                self._pull(peer)

    def _on_inv(self, peer: _Peer, message: Inv) -> None:
        self.stats["inv_received"] += len(message.ids)
        store, seen, requested = self.store, self._seen, self._requested
        now = self.clock.seconds()
        timing = self.timing
        # Pushes reach only the nodes within push_hops of the author: an
        # announcer further away got the event after every push was sent,
        # so there is nothing to wait for.
        beyond = timing.ttl - message.ttl > timing.push_hops
        delay = 0.0 if beyond else timing.fetch_delay
        deadline = now + delay + timing.request_timeout
        for ident in message.ids:
            peer.knows(ident)
            if ident in seen or store.has(ident) or store.has_stamp(ident):
                continue
            request = requested.get(ident)
            if request is not None:
                if peer.link is not request.asked and peer.link not in request.others:
                    request.others.append(peer.link)
                continue
            requested[ident] = _Request(deadline, peer.link)
            if delay:
                self._to_fetch.append((now + delay, ident))
            else:
                peer.out_getdata.append(ident)
        if self._to_fetch and self._fetch_call is None:
            wait = self._to_fetch[0][0] - now
            self._fetch_call = self.clock.callLater(max(0.0, wait), self._fetch)
        self._flush_soon()

    def _fetch(self) -> None:
        """
        Ask for the announced events that did not arrive within
        ``fetch_delay``: a push racing the announcement is not fetched too.
        """
        self._fetch_call = None
        now = self.clock.seconds()
        queue, requested = self._to_fetch, self._requested
        while queue and queue[0][0] <= now:
            _, ident = queue.popleft()
            request = requested.get(ident)
            if request is None:
                continue  # it arrived
            peer = self.peers.get(request.asked) if request.asked is not None else None
            if peer is not None:
                peer.out_getdata.append(ident)
        if queue:
            self._fetch_call = self.clock.callLater(queue[0][0] - now, self._fetch)
        self._flush_soon()

    def _on_getdata(self, peer: _Peer, message: GetData) -> None:
        self._graft(peer)
        store = self.store
        for ident in message.ids:
            event = store.get(ident)
            if event is not None:
                peer.answers.setdefault(max(self._seen.get(ident, 0), 0), []).append(event)
                peer.knows(ident)
            elif (stamp := store.get_stamp(ident)) is not None:
                peer.stamps_out.append(stamp)
                peer.knows(ident)
        self._flush_soon()

    def _on_sync(self, peer: _Peer, message: Sync) -> None:
        self.stats["sync_received"] += 1
        first = peer.claims is None
        peer.claims = dict(message.vector)
        if first and self._catching_up is None:
            self._check_progress()  # a first look at once, not at the next tick
        store = self.store
        if message.chains:
            self._send_differing_chains(peer, message)
        if store.witnesses:
            stamps, more_stamps = store.stamps_missing_for(dict(message.stamps), SYNC_STAMPS)
            evidence = [s for s in store.stamp_evidence() if s.id not in peer.known]
            for stamp in evidence:
                peer.knows(stamp.id)
            if stamps or evidence or more_stamps:
                self._send_stamps(peer, evidence + stamps, more_stamps)
        theirs = dict(message.vector)
        events, more = store.missing_for(theirs, SYNC_CHUNK * SYNC_BURST)
        if events:
            # Leave out what we recently pushed or announced to the peer
            # (or got from it): it is on its way, and a busy peer that asks
            # because it is behind would only get it twice.
            known = peer.known
            recent = self._in_flight_since(self.clock.seconds())
            events = [e for e in events if e.ts < recent or e.id not in known]
        parts = _chunks(events, SYNC_CHUNK)
        for index, part in enumerate(parts):
            self._send_answer(peer, part, more and index == len(parts) - 1)
        ours = store.vector()
        now = self.clock.seconds()
        ahead = {author: seq for author, seq in message.vector if seq > ours.get(author, 0)}
        if ahead:
            # The peer holds events we lack.  Under load most of them are
            # on their way to us by gossip; pull only if some are still
            # missing at the next gap check (answering every such sync at
            # once made two busy peers pull each other four times a second).
            if not peer.ahead:
                peer.ahead_since = now
            peer.ahead = ahead
            # A peer prompted by repairs is ahead by events nobody is
            # sending us: check well before the next gap check.
            if self._ahead_call is None:
                wait = peer.ahead_since + self._ahead_patience() - now
                self._ahead_call = self.clock.callLater(max(0.0, wait), self._check_ahead)
        elif not events and theirs == ours and message.digest != store.digest():
            # Same vectors, different logs: each holds another side of an
            # equivocation.  Show the peer our chains; it sends the ones
            # that differ, and we will do the same for it.
            if now - peer.last_chains >= PULL_INTERVAL:
                peer.last_chains = now
                self._pull(peer, chains=True)

    def _send_differing_chains(self, peer: _Peer, message: Sync) -> None:
        """Send every chain whose digest differs from the peer's, with its evidence."""
        ours = self.store.chain_digests()
        for author, digest in message.chains:
            if ours.get(author, digest) != digest:
                chain = self.store.chain_of(author)
                for part in _chunks(chain, SYNC_CHUNK):
                    self._send_answer(peer, part, False)

    def _send_answer(self, peer: _Peer, events: list[Event], more: bool) -> None:
        self.stats["sync_events_sent"] += len(events)
        # Answers are one peer's: their fragments are not kept for others.
        wire = tuple(event.wire for event in events)
        fragments = [event_fragment(*w) for w in wire]
        peer.link.send(Events.prepared(wire, fragments, 0, more, peer.market))

    def _events_message(self, events: list[Event], ttl: int, market: str) -> Events:
        """
        An ``events`` message relaying C{events}: each event's JSON is
        built once and kept (the last :data:`FRAGMENTS`), since the same
        event goes to several peers in messages of their own.

        :param market: the message's ``market`` (see :class:`_Peer`).
        """
        kept = self._fragments
        fragments = []
        for event in events:
            fragment = kept.get(event.id)
            if fragment is None:
                fragment = kept[event.id] = event_fragment(event.text, event.sig)
                if len(kept) > FRAGMENTS:
                    kept.popitem(last=False)
            fragments.append(fragment)
        wire = tuple(event.wire for event in events)
        return Events.prepared(wire, fragments, ttl, False, market)

    # -- sending

    def _spread(self, event: Event, ttl: int, source: _Peer | None) -> None:
        """
        Push C{event} to up to ``fanout`` eager peers if it is within
        ``push_hops`` of its author, and announce it to the rest.
        """
        ident = event.id
        self._remember(ident, ttl)
        targets = [
            peer for peer in self.peers.values() if peer is not source and ident not in peer.known
        ]
        if not targets:
            if source is None and not self.peers:
                self._unsent.append(event)
            return
        timing = self.timing
        eager: list[_Peer] = []
        if timing.ttl - ttl < timing.push_hops:
            # A pruned link is skipped for relays only: no peer can have
            # this node's own new event from anyone else.
            eager = [peer for peer in targets if source is None or not peer.lazy]
            if source is not None and self._busy and self.store.witnessing:
                # A busy witness relays others' events to other witnesses
                # only by push: every node links to it and sends it its
                # events first, so it would be every push tree's root, and
                # the load would delay its stamps past the counting window.
                # (An idle one pushes: fetching after an announcement
                # would add to every event's way a round trip.)
                witnesses = self.witnesses
                eager = [peer for peer in eager if peer.link.node_id in witnesses]
            if len(eager) > timing.fanout:
                eager = self._rng.sample(eager, timing.fanout)
        if source is None and self.witnesses:
            # This node's own event goes to every witness at once: the
            # sooner they see it, the sooner (and fairer) its fair time.
            witnesses = self.witnesses
            first = [peer for peer in targets if peer.link.node_id in witnesses]
            eager = first + [peer for peer in eager if peer not in first]
        for peer in targets:
            peer.knows(ident)
            if peer in eager:
                peer.pushes.add(event, ttl)
            else:
                peer.announcements.add(ident, ttl)
        self._flush_soon()

    def _prune(self, peer: _Peer) -> None:
        """
        C{peer} pushed an event already held: ask it to announce events
        instead, and do the same towards it.  The eager links that remain
        form a tree over which a push reaches each node about once; a node
        the tree misses asks for the event (``getdata``), which makes that
        link eager again (see :meth:`_graft`).
        """
        peer.lazy = True
        self.stats["prunes_sent"] += 1
        peer.link.send(Prune(market=peer.market))

    @staticmethod
    def _graft(peer: _Peer) -> None:
        """An event was asked of C{peer}, or C{peer} asked us for one: push to it again."""
        peer.lazy = False

    def _remember(self, ident: str, ttl: int) -> None:
        seen = self._seen
        seen[ident] = ttl
        seen.move_to_end(ident)
        if len(seen) > SEEN_CACHE:
            seen.popitem(last=False)

    def _flush_soon(self) -> None:
        """
        Flush at the next reactor turn; on a busy node (more than
        :data:`BUSY_RATE` items sent a second), no sooner than
        ``flush_interval`` after the last flush, so that it sends fewer,
        larger messages.  A lightly loaded node always sends at once: a
        relay path waits for several flushes (push, ``getdata``, answer).
        """
        if self._flush_call is None:
            wait = 0.0
            if self._busy:
                wait = self._last_flush + self.timing.flush_interval - self.clock.seconds()
            self._flush_call = self.clock.callLater(max(0.0, wait), self._flush)

    def _count_sent(self, items: int, now: float) -> None:
        """Count items sent, and every second decide whether the node is busy."""
        self._window_items += items
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._busy = self._window_items > BUSY_RATE * elapsed
            self._window_start, self._window_items = now, 0

    def _flush(self) -> None:
        """Write every queued message, batched per link."""
        self._flush_call = None
        now = self._last_flush = self.clock.seconds()
        stats = self.stats
        sent = self._items_sent()
        peers = list(self.peers.values())
        if self.witnesses:
            # Witnesses first: their receipts time this node's events.
            witnesses = self.witnesses
            peers.sort(key=lambda peer: peer.link.node_id not in witnesses)
        for peer in peers:
            link = peer.link
            if peer.stamps_out:
                stamps, peer.stamps_out = peer.stamps_out, []
                self._send_stamps(peer, stamps)
            if peer.out_getdata:
                ids, peer.out_getdata = peer.out_getdata, []
                stats["getdata_sent"] += len(ids)
                self._graft(peer)
                if len(peer.asked) > KNOWN_PER_PEER:
                    peer.asked.clear()  # answers that never came
                peer.asked.update(ids)
                for chunk in _chunks(ids, MAX_INV):
                    link.send(GetData(tuple(chunk), market=peer.market))
            batches = list(peer.answers.items())
            peer.answers = {}
            if peer.pushes.items:
                pushed, ttl = peer.pushes.take()
                batches.append((ttl, pushed))
            for ttl, events in batches:
                stats["events_pushed"] += len(events)
                for part in _chunks(events, MAX_EVENTS):
                    link.send(self._events_message(part, ttl, peer.market))
            if peer.announcements.items:
                idents, ttl = peer.announcements.take()
                stats["inv_sent"] += len(idents)
                for chunk in _chunks(idents, MAX_INV):
                    link.send(Inv(tuple(chunk), ttl=ttl, market=peer.market))
        self._count_sent(self._items_sent() - sent, now)

    def _items_sent(self) -> int:
        """Events, announced ids and requested ids sent so far."""
        stats = self.stats
        return stats["events_pushed"] + stats["inv_sent"] + stats["getdata_sent"]

    def _pull(self, peer: _Peer, *, chains: bool = False) -> None:
        """
        Send C{peer} our version vector: it answers with what we lack.

        :param chains: add our chain digests (see :meth:`_on_sync`).
        """
        peer.last_pull = self.clock.seconds()
        vector = self.store.vector()
        entries = tuple(_vector_entries(vector, MAX_VECTOR))
        digests: tuple[tuple[str, str], ...] = ()
        if chains:
            listed = {author for author, _ in entries}
            digests = tuple(
                (author, digest)
                for author, digest in self.store.chain_digests().items()
                if author in listed
            )[:MAX_CHAINS]
        stamps: tuple[tuple[str, int], ...] = ()
        if self.store.witnesses:
            stamps = tuple(self.store.stamp_vector().items())[:MAX_WITNESS_VECTOR]
        self.stats["sync_sent"] += 1
        digest = self.store.digest()
        sync = Sync(
            vector=entries, digest=digest, chains=digests, stamps=stamps, market=peer.market
        )
        peer.link.send(sync)

    def _sync_all(self, exclude: set[IPeerLink] | frozenset[IPeerLink] = frozenset()) -> None:
        """Pull from every peer except those in C{exclude}."""
        for peer in list(self.peers.values()):
            if peer.link not in exclude:
                self._pull(peer)

    def _prompt_soon(self, source: _Peer) -> None:
        """
        After learning events from C{source}'s anti-entropy answer, let the
        other peers pull them soon.
        """
        self._prompt_skip.add(source.link)
        if self._prompt_call is None:
            wait = self._last_prompt + PROMPT_INTERVAL - self.clock.seconds()
            self._prompt_call = self.clock.callLater(max(PROMPT_DELAY, wait), self._prompt)

    def _prompt(self) -> None:
        self._prompt_call = None
        self._last_prompt = self.clock.seconds()
        skip, self._prompt_skip = self._prompt_skip, set()
        self._sync_all(exclude=skip)

    def _observe_lag(self, now: float, events: list[Event]) -> None:
        """Add the ages of pushed events on arrival to this gap check's tally."""
        total = 0.0
        for event in events:
            total += min(MAX_LAG, max(0.0, now - event.ts / 1000))
        self._ages += total
        self._aged += len(events)

    def _update_lag(self) -> None:
        """
        The usual age of pushed events on arrival: their mean age since the
        last gap check, or half the previous figure if none came (a network
        that went quiet has nothing late on its way any more).
        """
        self._lag = self._ages / self._aged if self._aged else self._lag / 2
        self._ages, self._aged = 0.0, 0

    def _in_flight(self) -> float:
        """
        Seconds within which a missing event may still be on its way:
        :data:`REPAIR_AGE`, or twice the usual age of pushed events on
        arrival if that is longer (a busy network delivers late, and
        treating late events as lost would load it further with repairs).
        """
        return max(REPAIR_AGE, 2 * self._lag)

    def _in_flight_since(self, now: float) -> float:
        """The timestamp (unix ms) from which events may still be on their way."""
        return (now - self._in_flight()) * 1000

    def _check_gaps(self) -> None:
        """
        Pull from one peer (a different one each time) when a gap outlives
        one check and the time events take to arrive: shorter gaps are
        events overtaking each other on their way, and fill by themselves.
        Also pull from a peer whose ``sync`` showed events we still lack
        after that time.
        """
        now = self.clock.seconds()
        self._update_lag()
        patience = max(GAP_CHECK, 2 * self._lag)
        marks = self.store.gap_marks()
        if self.store.witnesses:
            # A witness's stamps held beyond a missing one: the same repair.
            marks |= {(f"stamps:{w}", seq) for w, seq in self.store.stamp_gap_marks()}
        first_seen = self._gap_marks
        self._gap_marks = {mark: first_seen.get(mark, now) for mark in marks}
        # A peer whose anti-entropy answers are still coming is left alone:
        # asking it again would only bring the same events twice.
        peers = [peer for peer in self.peers.values() if now - peer.last_answer >= GAP_CHECK]
        if not peers:
            return
        if any(now - since >= patience for since in self._gap_marks.values()):
            self._gap_turn = (self._gap_turn + 1) % len(peers)
            self._pull(peers[self._gap_turn])
            return
        self._pull_ahead(now, peers)

    def _ahead_patience(self) -> float:
        """
        Seconds a peer may stay ahead of us before we pull from it: twice
        the usual age of pushed events on arrival (what is on its way comes
        by then), and at least :data:`AHEAD_PATIENCE`.
        """
        return max(AHEAD_PATIENCE, 2 * self._lag)

    def _check_ahead(self) -> None:
        """Pull from the peers that have stayed ahead of us long enough, now."""
        self._ahead_call = None
        now = self.clock.seconds()
        # Left to the gap check: peers whose answers are still coming.
        peers = [peer for peer in self.peers.values() if now - peer.last_answer >= GAP_CHECK]
        self._pull_ahead(now, peers)

    def _pull_ahead(self, now: float, peers: list[_Peer]) -> None:
        """
        Pull from those of C{peers} whose ``sync`` showed events we still
        lack after :meth:`_ahead_patience`; forget it of those that no
        longer have any.  A peer asked less than a gap check ago whose
        answer has not begun is asked at a later check: a large answer (to
        a node joining) takes a while to start.
        """
        patience = self._ahead_patience()
        ours = self.store.vector()
        for peer in peers:
            if not any(seq > ours.get(author, 0) for author, seq in peer.ahead.items()):
                peer.ahead = {}
                continue
            waiting = now - peer.last_pull < GAP_CHECK and peer.last_answer <= peer.last_pull
            if now - peer.ahead_since >= patience and not waiting:
                peer.ahead = {}
                self._pull(peer)

    def _expire_requests(self) -> None:
        """Ask the next announcer for events whose ``getdata`` went unanswered."""
        now = self.clock.seconds()
        for ident, request in list(self._requested.items()):
            if request.deadline > now:
                continue
            self.stats["requests_expired"] += 1
            peer = None
            while request.others and peer is None:
                peer = self.peers.get(request.others.pop(0))
            if peer is None or self.store.has(ident):
                del self._requested[ident]
                if peer is None and not self.store.has(ident):
                    self.stats["requests_dropped"] += 1
                continue
            request.asked = peer.link
            request.deadline = now + self.timing.request_timeout
            peer.out_getdata.append(ident)
        self._flush_soon()

    # -- sync progress

    def _check_progress(self) -> None:
        """
        Every :data:`PROGRESS_CHECK`: look how far this node is behind its
        peers, and log it when it is :data:`PROGRESS_LOG_MIN` events behind
        or more: then, every :data:`PROGRESS_INTERVAL` while it is behind,
        and as soon as it has caught up.
        """
        now = self.clock.seconds()
        held, behind, heard = self._measure()
        samples = self._held_samples
        samples.append((now, held))
        started = self._catching_up
        if behind >= PROGRESS_LOG_MIN and started is None:
            self._catching_up = (now, held)
            self._progress_logged = now
            log.info("Syncing with peers: {behind} events to fetch, {held} held",
                     behind=behind, held=held)  # fmt: skip
        elif behind and started is not None and now - self._progress_logged >= PROGRESS_INTERVAL:
            self._progress_logged = now
            rate = self._rate()
            left = f"about {behind / rate:.0f} s left" if rate > 0 else "time left unknown"
            log.info(
                "Syncing: {held} of {known} events ({percent:.0f} %), {rate:.0f} events/s, "
                "{left}", held=held, known=held + behind, percent=100 * held / (held + behind),
                rate=rate, left=left,
            )  # fmt: skip
        elif not behind and started is not None:
            self._catching_up = None
            log.info("Synced: {fetched} events in {seconds:.1f} s; {held} events held",
                     fetched=held - started[1], seconds=now - started[0], held=held)  # fmt: skip

    def _measure(self) -> tuple[int, int, bool]:
        """
        Events held (without gaps), how many more the peers' last syncs
        said they hold, and whether any peer has sent one yet.
        """
        ours = self.store.vector()
        claimed: dict[str, int] = {}
        heard = False
        for peer in self.peers.values():
            if peer.claims is None:
                continue
            heard = True
            for author, seq in peer.claims.items():
                if seq > claimed.get(author, 0):
                    claimed[author] = seq
        behind = sum(max(0, seq - ours.get(author, 0)) for author, seq in claimed.items())
        return sum(ours.values()), behind, heard

    def _rate(self) -> float:
        """Events gained per second over the last looks (:data:`PROGRESS_SAMPLES`)."""
        samples = self._held_samples
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        return max(0.0, (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]))

    def progress(self) -> dict[str, Any]:
        """
        The ``sync`` part of ``GET /status``, measured now: ``state``
        (``syncing``, ``synced`` or ``waiting for peers``), the ``events``
        held, those ``known`` to exist from the peers' last syncs, how many
        this node is ``behind`` by, the ``rate`` it gained events at lately
        (events/s) and the estimated time left (``eta_ms``, milliseconds;
        ``None`` if unknown).
        """
        held, behind, heard = self._measure()
        rate = self._rate()
        return {
            "state": "syncing" if behind else ("synced" if heard else "waiting for peers"),
            "events": held,
            "known": held + behind,
            "behind": behind,
            "rate": round(rate, 1),
            "eta_ms": round(behind / rate * 1000) if behind and rate > 0 else None,
        }

    def summary(self) -> dict[str, Any]:
        """The gossip part of ``GET /status``."""
        return {**self.stats, "requests_in_flight": len(self._requested),
                "fanout": self.timing.fanout}  # fmt: skip


GOSSIP_MESSAGES = (Events, Inv, GetData, Sync, Prune, Stamps)
"""The message classes of the gossip layer: each is about one market."""

GossipMessage = Events | Inv | GetData | Sync | Prune | Stamps
"""A message of :data:`GOSSIP_MESSAGES`."""


@implementer(IGossip)
class GossipRouter:
    """
    The gossip layer of a node of one or more markets: one :class:`Gossip`
    per market, and what the hub reports fanned out to them.

    A ready link is handed to the Gossip of each market both ends carry
    (:attr:`~bitfitech.interfaces.IPeerLink.shared_markets`), and to no
    other: so a Gossip sends a peer only what is about a market the peer
    carries, and a version 3 peer, which takes every gossip message as
    about its own pair, only messages about that pair.  A link that shares
    no market stays up for address exchange (which the hub handles) and
    reaches no Gossip.

    A gossip message is about the market its ``market`` names or, without
    one (and always from a version 3 peer, which knows no such key), the
    sender's pair (``docs/protocol.rst``, "Markets"): it goes to that
    market's Gossip; one about a market the sender did not announce is a
    protocol violation; one about a market it announced and this node does
    not carry is ignored.

    :ivar gossips: one Gossip per market, in the node's order.
    :ivar messages_in: per market, the gossip messages handed to its Gossip.
    :ivar ignored: gossip messages about markets this node does not carry.
    """

    def __init__(self, gossips: Mapping[str, Gossip]) -> None:
        """
        :param gossips: the Gossip of each market the node carries, the
            first market first.
        :raises ValueError: for no market.
        """
        if not gossips:
            raise ValueError("a gossip router needs at least one market")
        self.gossips: dict[str, Gossip] = dict(gossips)
        self.messages_in: dict[str, int] = dict.fromkeys(self.gossips, 0)
        self.ignored = 0
        # The markets whose Gossip each ready link was handed to.
        self._links: dict[IPeerLink, tuple[str, ...]] = {}

    @property
    def first(self) -> Gossip:
        """The Gossip of the node's first market."""
        return next(iter(self.gossips.values()))

    # -- IGossip

    def start(self) -> None:
        """Start every market's Gossip."""
        for gossip in self.gossips.values():
            gossip.start()

    def stop(self) -> None:
        """Stop every market's Gossip and forget the links."""
        for gossip in self.gossips.values():
            gossip.stop()
        self._links.clear()

    def link_ready(self, link: IPeerLink) -> None:
        """Hand a new link to the Gossip of each market both ends carry (maybe none)."""
        markets = tuple(market for market in link.shared_markets if market in self.gossips)
        self._links[link] = markets
        self._check_witness(link, markets)
        if not markets:
            log.info("Peer {node_id} carries none of our markets (it carries {theirs}); the "
                     "link serves address exchange only", node_id=link.node_id,
                     theirs=", ".join(link.markets))  # fmt: skip
        for market in markets:
            self.gossips[market].link_ready(link)

    def link_closed(self, link: IPeerLink) -> None:
        """Tell the Gossips that had the link that it is gone."""
        for market in self._links.pop(link, ()):
            self.gossips[market].link_closed(link)

    def link_message(self, link: IPeerLink, message: Message) -> bool:
        """
        Hand a gossip message to its market's Gossip (see the class
        docstring); ``False`` if it is not a gossip message.
        """
        if not isinstance(message, GOSSIP_MESSAGES):
            return False
        market = self.market_of(link, message)
        if market not in link.markets:
            link.violation(f"{message.command} about market {market!r}, which it did not announce")
            return True
        if market not in self._links.get(link, ()):
            self.ignored += 1
            return True
        self.messages_in[market] += 1
        self.gossips[market].link_message(link, message)
        return True

    def _check_witness(self, link: IPeerLink, markets: tuple[str, ...]) -> None:
        """
        Note which of this node's markets a witness's link lacks: the
        witness never stamps that market's events, so they get no fair time
        and never settle (the witnesses must carry every market of their
        network).  An error is logged once per witness and market.
        """
        if link.node_id not in self.first.witnesses:  # one witness set for every market
            return
        for market, gossip in self.gossips.items():
            if market in markets:
                gossip.witnesses_missing.discard(link.node_id)
            elif link.node_id not in gossip.witnesses_missing:
                gossip.witnesses_missing.add(link.node_id)
                log.error("Witness {node_id} does not carry {market} (it carries {theirs}): "
                          "{market}'s events get no fair time from it, and none settles "
                          "while more than f witnesses lack it; every witness must carry "
                          "every market of the network", node_id=link.node_id, market=market,
                          theirs=", ".join(link.markets))  # fmt: skip

    @staticmethod
    def market_of(link: IPeerLink, message: GossipMessage) -> str:
        """
        The market C{message} from C{link} is about: the one it names, if
        the peer reads (and so sends) markets; else the peer's pair.
        """
        named = message.market if link.names_markets else ""
        return named or link.markets[0]

    # -- status

    def summary(self) -> dict[str, Any]:
        """
        The gossip part of ``GET /status``: the first market's counters
        (:meth:`Gossip.summary`), as a node of one market shows them; the
        gossip messages ``ignored`` (about markets this node does not
        carry); and under ``markets``, each market's ``messages_in``.
        """
        return {
            **self.first.summary(),
            "ignored": self.ignored,
            "markets": {
                market: {"messages_in": self.messages_in[market]} for market in self.gossips
            },
        }

    def progress(self) -> dict[str, Any]:
        """The ``sync`` part of ``GET /status``: the first market's (:meth:`Gossip.progress`)."""
        return self.first.progress()


def _vector_entries(vector: dict[str, int], limit: int) -> list[tuple[str, int]]:
    """At most C{limit} ``(author, seq)`` entries of C{vector}, largest seq first."""
    items = list(vector.items())
    if len(items) > limit:
        items.sort(key=lambda item: -item[1])
        del items[limit:]
    return items


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


#: seconds between two looks at how far this node is behind its peers
#: (its rate is taken over the last PROGRESS_SAMPLES looks), and between
#: two log lines while it catches up
PROGRESS_CHECK = 1.0
PROGRESS_SAMPLES = 30
PROGRESS_INTERVAL = 5.0

#: events behind from which catching up is logged (fewer are the events in
#: flight on a busy network, not a node catching up)
PROGRESS_LOG_MIN = 500
