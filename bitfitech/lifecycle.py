"""A node's start and stop, as a whole: the line that says it runs, and a stop bounded in time.

Not a stage of the data path but what :class:`bitfitech.node.Node` does
with all of them at once: once every service has started,
:func:`announce_running` says in one line where the dashboard and the data
directory are; at stop, :func:`stop_in_order` stops the services so that
no peer or client can hold the stop, nor keep the markets from writing
their checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .logs import logger

log = logger(__name__)

#: seconds a stop may wait for peer links and API clients to close, from
#: SIGTERM (or ``stopService``); the markets' journals and checkpoints are
#: written before, and the storage closed after, whatever is still open
STOP_DEADLINE = 4.0


def announce_running(url: str | None, data_dir: str) -> None:
    """
    Log the one line a newcomer needs once the node runs: the dashboard's
    address (C{url}, ``None`` without the HTTP API) and the data directory.
    """
    if url is not None:
        log.info("bitfi is running: open the dashboard at {url} (data directory {data_dir})",
                 url=url, data_dir=data_dir)  # fmt: skip
    else:
        log.info("bitfi is running without its HTTP API (data directory {data_dir})",
                 data_dir=data_dir)  # fmt: skip


async def stop_in_order(
    clock: IReactorTime,
    *,
    facing: Sequence[IService],
    disk: IService,
    last: IService,
    still_open: Callable[[], dict[str, int]],
) -> None:
    """
    Stop a node's services in a bounded time, whatever peers and clients do.

    1. The services C{facing} the network are told to stop at once, and not
       waited for yet (the API drops its clients, the peer layer asks every
       link to close and aborts those still open after a grace).
    2. C{disk} (the markets) journals what is on its way and writes the
       checkpoints: it waits on the disk only, never on the network, so a
       stuck peer cannot cost the next start a full replay.
    3. The C{facing} services get what is left of :data:`STOP_DEADLINE` to
       finish; what has not is logged and left behind.
    4. C{last} (the storage) stops, once nothing writes to it.

    :param still_open: the ``links`` and API ``clients`` still open, for
        the log line of a stop that did not wait for them.
    """
    deadline = clock.seconds() + STOP_DEADLINE
    closing = DeferredList([_stopped(service) for service in facing], consumeErrors=True)
    await _stopped(disk)
    if not await _within(closing, deadline - clock.seconds(), clock):
        log.warn(
            "Stopping without waiting longer for {links} peer links and {clients} API "
            "connections to close ({seconds:g} s deadline)",
            seconds=STOP_DEADLINE, **still_open(),
        )  # fmt: skip
    await _stopped(last)


def _stopped(service: IService) -> Deferred[None]:
    """Stop C{service}; fires once it has stopped (a failure is logged, not passed on)."""
    d: Deferred[None] = maybeDeferred(service.stopService)
    d.addErrback(_stop_failed, service)
    return d


def _stop_failed(failure: Failure, service: IService) -> None:
    log.failure("Stopping the {name} service failed", failure, name=service.name)


def _within(waited: Deferred[Any], seconds: float, clock: IReactorTime) -> Deferred[bool]:
    """
    Fires with ``True`` once C{waited} fires, or with ``False`` after
    C{seconds} if it has not (C{waited} is left alone: a Deferred that
    cannot be cancelled would complain when it fires later).
    """
    result: Deferred[bool] = Deferred()

    def expired() -> None:
        if not result.called:
            result.callback(False)

    timer = clock.callLater(max(0.0, seconds), expired)

    def finished(_: object) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(True)

    waited.addBoth(finished)
    return result
