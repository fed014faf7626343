"""Peer links: after storage and the wire format, before the market.

Where peers listen (:mod:`bitfitech.peer.addrbook`), how we reach them and
how long we wait before trying again.
"""
