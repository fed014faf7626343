"""The seams between stages of the data path, and the errors that cross them.

Where a stage must call one that comes after it on the path, it calls
through one of these interfaces, and :mod:`bitfitech.node` hands it the
implementation: a peer link reports to its owner (:class:`ILinkOwner`, the
hub), the hub tells the gossip layer of ready links (:class:`IGossip`), and
the HTTP resources read and steer the node (:class:`INodeControl`).  So no
module imports one that comes after it.  The gossip layer, in turn, writes
to links through :class:`IPeerLink`, not the concrete protocol class.  The
market's own seams (what the gossip layer may ask of it, and where it
hands events to spread) are in :mod:`bitfitech.market.interfaces`.  This
module imports nothing of bitfi's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from twisted.internet.defer import Deferred


@overload
def unix_ms(seconds: float) -> int: ...
@overload
def unix_ms(seconds: None) -> None: ...
@overload
def unix_ms(seconds: float | None) -> int | None: ...
def unix_ms(seconds: float | None) -> int | None:
    """
    A clock time in seconds as the API states every time: integer unix
    milliseconds (``None`` stays ``None``).  Durations go out in
    milliseconds too, under names ending ``_ms``.
    """
    return None if seconds is None else round(seconds * 1000)


class ILinkOwner(Interface):
    """What one peer link reports to and asks of the live-link registry (the hub)."""

    def is_own_nonce(nonce: int) -> bool:
        """Whether C{nonce} was sent in a ``version`` by this node (a link to itself)."""

    def link_ready(link: Any) -> str | None:
        """
        The link finished its handshake: admit it.

        :return: ``None`` when admitted, else why it must close.
        """

    def link_message(link: Any, message: Any) -> None:
        """A message after the handshake that the link itself does not handle."""

    def link_closed(link: Any, reason: str) -> None:
        """The link is gone (whether or not it was ever ready)."""

    def link_misbehaved(link: Any, reason: str, score: int) -> None:
        """
        The peer behaved badly: count C{score} against it
        (:mod:`bitfitech.peer.misbehaviour`).  For a protocol violation the
        link is closing already.
        """


class ServiceUnavailable(Exception):
    """The node cannot take orders now (not started, stopping, or its journal failed)."""


class KeyRateLimited(Exception):
    """
    A key sent more events than its author's rate allows (``POST /events``):
    none of the request's events was taken.

    :ivar retry_after: seconds until the key's events are taken again.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(
            f"rate_limited: key {key[:16]}... sends events faster than peers relay an "
            f"author's; try again in {retry_after:.1f} s"
        )
        self.key = key
        self.retry_after = retry_after


class BatchRejected(ValueError):
    """
    A batch of orders (or events) refused as a whole: one of them is
    invalid, and none of them was signed (or taken).

    :ivar index: the position of the first invalid one in the batch.
    :ivar reason: why it is refused (``"price_not_tick_multiple: ..."``).
    """

    def __init__(self, index: int, reason: str, items: str = "orders") -> None:
        """:param items: what the batch holds, as its field names them."""
        super().__init__(f"{items}[{index}]: {reason}")
        self.index = index
        self.reason = reason


class IMarketControl(Interface):
    """
    What the HTTP API and the CLI may read and do in one market of a node
    (``/markets/{market}/...``; today's paths are the first market's).
    """

    def submit_order(
        side: str, price: str | None, amount: str, order_type: str
    ) -> Deferred[dict[str, Any]]:
        """
        Sign, journal and apply a new order of this node (``POST /orders``).

        :param side: ``"buy"`` or ``"sell"``.
        :param price: a decimal string as the user wrote it, or ``None`` for a
            market order.
        :param amount: a decimal string as the user wrote it.
        :param order_type: ``limit``, ``ioc``, ``fok``, ``post_only`` or ``market``.
        :return: fires with the order document once the order is durably
            journaled; fails with :class:`ServiceUnavailable` when the node
            cannot take orders now.
        :raises ValueError: synchronously, for input the book would reject,
            with a message fit to show the user (``"invalid_price: price
            50000.555 is not a multiple of the tick 0.01"``); nothing is
            journaled then.

        An order document is ``{"id": hex64, "side", "type", "price": str |
        None, "amount": str, "remaining": str, "filled": str, "status":
        "open" | "filled" | "cancelled" | "rejected" | "pending" (held,
        waiting for an earlier event of its author), "reason": str | None,
        "author": hex64, "seq": int, "lamport": int, "created_at": int (unix
        ms, the author's clock), "applied_at": int | None (unix ms, when
        this node first applied it; remembered for recent events only),
        "settled": bool, "trades": [trade, ...]}``, and a trade document ``{"id": hex64,
        "price": str, "amount": str, "side": "buy" | "sell" (the taker's),
        "taker": hex64, "maker": hex64, "lamport": int, "time": int (unix
        ms), "settled": bool, "status": "tentative" | "settled"}``.
        """

    def submit_orders(
        orders: Sequence[tuple[str, str | None, str, str]],
    ) -> Deferred[list[dict[str, Any]]]:
        """
        Sign, journal and apply several new orders of this node, all or none
        (``POST /orders/batch``).

        Every order is checked before any is signed; then they are signed in
        the order given (consecutive seqs) and journaled in one group commit.

        :param orders: ``(side, price, amount, order_type)`` each, as for
            :meth:`submit_order`.
        :return: fires with the order documents, in the order given, once
            every order is durably journaled; fails with
            :class:`ServiceUnavailable` when the node cannot take orders now.
        :raises BatchRejected: synchronously, naming the first order the
            book would reject; nothing is journaled then.
        """

    def cancel_order(order_id: str) -> Deferred[dict[str, Any]]:
        """
        Sign, journal and apply a cancel of one of this node's orders
        (``DELETE /orders/{id}``).

        :param order_id: 64 lowercase hex digits.
        :return: fires with the order document once the cancel event is
            journaled; its status is the order's after the cancel, which may
            still be ``"open"`` if the cancel did not take effect.  Fails
            with :class:`ServiceUnavailable` when the node cannot take
            cancels now.
        :raises KeyError: synchronously, if no such order is known.
        :raises PermissionError: synchronously, if the order was not placed
            by this node.
        """

    def order(order_id: str) -> dict[str, Any] | None:
        """The document of order C{order_id} (``GET /orders/{id}``), ``None`` if unknown."""

    def orders(state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """
        This node's own orders, newest first (``GET /orders``).

        :param state: ``"open"``, ``"closed"`` (filled, cancelled or
            rejected) or ``"all"``.
        :param limit: at most this many documents.
        :param offset: skip this many matching orders first.
        """

    def book(depth: int) -> dict[str, Any]:
        """
        The aggregated book (``GET /book``): ``{"bids": [[price, amount,
        count], ...], "asks": [...]}``, best level first, at most C{depth}
        levels a side; price and amount are decimal strings, count an int.
        """

    def submit_events(signed: Sequence[tuple[str, str]]) -> Deferred[list[dict[str, Any]]]:
        """
        Take events their authors signed (``POST /events``), each a
        ``(text, sig)``: every one is checked as an event from a peer is
        (form, network, pair, signature) and against what this node holds,
        then all are journaled, applied and relayed unchanged.

        :return: fires once all are durable, with one ``{"id", "author",
            "seq", "kind": "order" | "cancel", "status": "applied" |
            "pending", "order": order document | None}`` each (``order``:
            the order itself, or the one a cancel cancels).
        :raises BatchRejected: synchronously, naming the first event
            refused (``events[i]: bad_signature: ...``); none is taken.
        :raises KeyRateLimited: synchronously, when a key's events come
            faster than peers relay one author's (5,000 a second, bursts
            of 20,000); none is taken.
        """

    def key(key: str) -> dict[str, Any]:
        """
        What a client signing for key C{key} needs (``GET /keys/{key}``):
        ``{"key", "network", "pair", "next_seq", "lamport", "events"}``.
        """

    def key_orders(key: str, state: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Key C{key}'s orders, newest first, as ``GET /orders`` lists this node's."""

    def key_trades(key: str, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """The trades of key C{key}'s orders (taker or maker), newest first."""

    def ticker() -> dict[str, Any]:
        """
        The market over the last 24 hours (``GET /ticker``): ``{"pair",
        "last", "open", "change", "change_pct", "high", "low", "volume",
        "quote_volume", "trades", "best_bid", "best_ask", "spread", "mid",
        "window_ms", "at"}``; prices and amounts are decimal strings (``null``
        where there is none), ``trades`` a count, times unix ms.
        """

    def trades(limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """
        Trade documents of the book, newest first (``GET /trades``): at
        most C{limit}, after skipping the C{offset} newest.
        """

    def trade_count() -> int:
        """How many trades the book holds (the total of ``GET /trades``)."""

    def watch(observer: Callable[[str, dict[str, Any] | None], None]) -> Callable[[], None]:
        """
        Call C{observer(kind, document)} on changes (the live stream):
        ``("book", None)`` when the book may have changed, ``("trade",
        trade)`` when a trade appears or settles, ``("order", order)`` when
        one of this node's orders is created or changes; the node's own
        (:class:`INodeControl`) also tells of links, as
        :meth:`INodeControl.watch_links`.

        :return: a function that stops the calls.
        """


class INodeControl(IMarketControl):
    """
    What the HTTP API and the CLI may read and do on a node.  Its market
    methods (those of :class:`IMarketControl`) are the first market's: the
    market of today's paths (``/orders``, ``/book``, ...).
    """

    def status() -> dict[str, Any]:
        """A JSON-ready summary of the node (``GET /status``)."""

    def peers() -> list[dict[str, Any]]:
        """JSON-ready rows, one per live peer link (``GET /peers``)."""

    def connect(address: str) -> Deferred[dict[str, Any]]:
        """
        Dial C{address} now (``host:port`` or ``NODEID@host:port``).

        :return: fires with the peer's row once linked; fails with
            :class:`ValueError` for a bad address or :class:`ConnectionError`.
        :raises PermissionError: synchronously, if the address is banned
            (nothing is dialled).
        """

    def disconnect(node_id: str) -> bool:
        """Close the link to C{node_id} and rest its addresses; ``False`` if not linked."""

    def banned() -> list[dict[str, Any]]:
        """
        The bans in force, newest first (``GET /peers/banned``): ``{"address":
        IP, "node_id": hex40 | None, "reason": str, "banned_at": int,
        "until": int}`` each, times in unix ms.
        """

    def unban(address: str) -> dict[str, Any] | None:
        """
        Lift the ban on IP address C{address} and reset its misbehaviour
        score (``DELETE /peers/banned/{address}``).

        :return: the row of the ban lifted, or ``None`` if it was not banned.
        :raises ValueError: if C{address} is not an IP address.
        """

    def discovery() -> dict[str, Any]:
        """
        The discovery services (``GET /discovery``): ``{"mdns": status |
        None, "dht": status | None}``, ``None`` for a service that is off.
        """

    def watch_links(observer: Callable[[str, dict[str, Any] | None], None]) -> Callable[[], None]:
        """
        Call C{observer("peer", {"event": "joined" | "left", "node_id",
        "address", "direction"})} when a peer link comes or goes.

        :return: a function that stops the calls.
        """

    def markets() -> list[dict[str, Any]]:
        """
        One row per market the node carries, in its order, the first first
        (``GET /markets``): ``{"market": "BTC/USD", "slug": "BTC-USD",
        "best_bid", "best_ask", "last" (decimal strings or ``null``),
        "state_hash", "events", "trades", "open_orders", "ordering",
        "witnesses_missing" (node ids of witnesses seen without it)}``.
        """

    def market(name: str) -> IMarketControl:
        """
        The control of market C{name} (``BASE/QUOTE``).

        :raises KeyError: if the node does not carry it.
        """


class IPeerLink(Interface):
    """What the gossip layer may do with one ready peer link."""

    closed = Attribute("Whether the link is closed (or closing).")
    node_id = Attribute("The peer's node id (a ready link has one).")
    markets = Attribute(
        "The markets the peer carries, its pair first (a tuple of pair names): those its "
        "version announced, or its pair alone."
    )
    shared_markets = Attribute(
        "The markets both ends carry, in this node's order (a tuple): the gossip the link "
        "carries.  Empty: the link serves address exchange only."
    )
    names_markets = Attribute(
        "Whether the peer reads the market named in gossip messages (protocol version 4 on). "
        "If not, it takes every gossip message as about its pair: messages to it name none."
    )

    def send(message: Any) -> None:
        """Frame and write one wire message (dropped once the link is closed)."""

    def violation(reason: str) -> None:
        """The peer broke the protocol: report it, and drop the link."""

    def misbehaved(reason: str, score: int) -> None:
        """
        The peer misbehaved without breaking the protocol (a malformed
        event, too many events of one author): count C{score} against it
        (:mod:`bitfitech.peer.misbehaviour`); the link stays up unless the
        score bans the peer's address.
        """


class IGossip(Interface):
    """
    What the hub tells the gossip layer about ready links, and what the
    peer layer's service does with it as it starts and stops.
    """

    def start() -> None:
        """The peer layer started: start the periodic checks."""

    def stop() -> None:
        """The peer layer is stopping: stop every timer and forget the links."""

    def link_ready(link: Any) -> None:
        """A link finished its handshake and was admitted."""

    def link_closed(link: Any) -> None:
        """A ready link closed."""

    def link_message(link: Any, message: Any) -> bool:
        """Handle a message of a ready link; ``False`` if it is not a gossip message."""
