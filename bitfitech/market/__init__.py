"""The market: signed events, their total order, and the book they make.

Data path: an order from the API, or events from the gossip layer ->
:mod:`.service` (signs this node's orders, journals in :mod:`.journal`,
buffers peers' events) -> :mod:`.ledger` (every event in one total order,
rollback and replay of late ones) -> :mod:`.book` (the matching engine) ->
trades and the book, read by the API.  :mod:`.events` is the signed event
format; :mod:`.interfaces` the market's seams with the gossip layer.

This package is the only writer of book state.  :mod:`.events`,
:mod:`.ledger` and :mod:`.book` are pure Python: no Twisted, no clock and
no I/O; time and ids come from the caller.  The journal and the service
are the Twisted side, which does the I/O and owns the timers.
"""
