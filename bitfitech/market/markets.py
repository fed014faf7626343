"""The markets of a node: one :class:`~bitfitech.market.service.MarketService` each, as one service.

Data path: the same as one market's (:mod:`bitfitech.market.service`),
once per market the node carries: each market's orders and events go to
its own service, which journals them in its own tables
(:meth:`bitfitech.storage.Storage.journal_tables`) and applies them to its
own ledger.  :class:`Markets` only holds them, in the node's order (the
first market is ``config.pair``), and starts and stops them together.

They start in that order, because the first to start adopts the journal
tables of a node that carried one market before (its historic ``events``
table goes to the pair its rows name, or to the first market asked).
They stop together: each journals what is on its way and writes its
checkpoint, and the stop of the set ends once every one has.  All their
journals are in one database, so they share one fsync thread
(:class:`~bitfitech.market.journal.SharedSyncer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from ..logs import logger
from .service import MarketService

log = logger(__name__)


class Markets(MultiService):
    """
    A node's markets, in its order: a service whose children are one
    :class:`MarketService` each.

    Named ``market``, as the one market of a node was before: the node's
    service tree keeps its names.

    :ivar by_name: each market's service, by pair (``BASE/QUOTE``), in order.
    """

    name = "market"

    def __init__(self, markets: Iterable[MarketService]) -> None:
        """
        :param markets: one service per market, the first market first.
        :raises ValueError: for no market, or a market given twice.
        """
        super().__init__()
        self.by_name: dict[str, MarketService] = {}
        for market in markets:
            if market.pair in self.by_name:
                raise ValueError(f"market {market.pair} given twice")
            self.by_name[market.pair] = market
            market.setServiceParent(self)
        if not self.by_name:
            raise ValueError("a node carries at least one market")

    @property
    def first(self) -> MarketService:
        """The first market's service (``config.pair``'s)."""
        return next(iter(self.by_name.values()))

    @property
    def names(self) -> tuple[str, ...]:
        """The markets, in order."""
        return tuple(self.by_name)

    def __getitem__(self, name: str) -> MarketService:
        """The service of market C{name} (``BASE/QUOTE``); :class:`KeyError` if not carried."""
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __iter__(self) -> Iterator[MarketService]:
        """The markets' services, in order."""
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def startService(self) -> None:
        """Start every market, in order: the first one adopts a one-market node's journal."""
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop every market at once; fires once each has journaled what was
        on its way and written its checkpoint.  A market whose stop fails
        is logged, and keeps no other from stopping.
        """
        Service.stopService(self)
        markets = list(self)
        stops = DeferredList([maybeDeferred(m.stopService) for m in markets], consumeErrors=True)

        def stopped(results: list[tuple[bool, Any]]) -> None:
            for market, (ok, result) in zip(markets, results, strict=True):
                if not ok:
                    log.failure("Stopping the market {market} failed", result,
                                market=market.pair)  # fmt: skip

        return stops.addCallback(stopped)
