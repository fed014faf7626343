"""Peer links: the stage between the wire format and the gossip layer.

Data path, from a peer: socket -> TLS (:mod:`.tls`) -> one link
(:mod:`.protocol`: bytes to typed messages through :mod:`bitfitech.wire`)
-> the hub of live links (:mod:`.hub`) -> the gossip layer; to a peer, the
other way.  Around the links: where peers listen (:mod:`.addrbook`), whom
we dial and when (:mod:`.dialer`), bans and misbehaviour scores
(:mod:`.bans`, :mod:`.misbehaviour`), and the layer's service
(:mod:`.service`), which starts and stops them.  Nothing here knows orders
or events beyond their message shape.
"""
