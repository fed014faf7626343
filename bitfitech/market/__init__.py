"""The market: the matching engine (:mod:`.book`) and, later, the ledger.

This package is the only writer of book state.  Everything in it is pure
Python with no Twisted, no clock and no I/O: time and ids come from the
caller.
"""
