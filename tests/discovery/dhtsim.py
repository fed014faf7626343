"""A fast fake clock for simulations of many DHT nodes, and a way to run it.

:class:`twisted.internet.task.Clock` keeps its calls in a list it sorts on
every ``callLater``; with a few hundred nodes, each holding a housekeeping
timer and a timeout per pending query, sorting costs more than the DHT.
:class:`HeapClock` is a Clock with the calls in a heap instead.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock


class HeapClock(Clock):
    """A :class:`~twisted.internet.task.Clock` with O(log n) ``callLater``."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._sequence = 0

    def _push(self, call: DelayedCall) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (call.getTime(), self._sequence, call))

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> DelayedCall:
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            lambda c: None,
            self._push,
            seconds=self.seconds,
        )
        self._push(call)
        return call

    def _due(self, entry: tuple[float, int, DelayedCall]) -> bool:
        when, _, call = entry
        return not (call.cancelled or call.called) and when == call.getTime()

    def getDelayedCalls(self) -> list[DelayedCall]:  # type: ignore[override]
        return [entry[2] for entry in self._heap if self._due(entry)]

    def next_time(self) -> float | None:
        """When the next live call is due, or ``None``."""
        while self._heap and not self._due(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while (when := self.next_time()) is not None and when <= self.rightNow:
            _, _, call = heapq.heappop(self._heap)
            call.called = 1
            call.func(*call.args, **call.kw)


def run_for(clock: HeapClock, seconds: float) -> None:
    """Advance C{clock} by C{seconds}, running every call due on the way, in order."""
    end = clock.seconds() + seconds
    while (when := clock.next_time()) is not None and when <= end:
        clock.advance(max(0.0, when - clock.seconds()))
    clock.advance(end - clock.seconds())
