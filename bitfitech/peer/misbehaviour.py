"""Misbehaviour scores: how much each kind of bad behaviour counts against a peer.

Data path: a link or the gossip notices bad behaviour -> the link owner's
``link_misbehaved(link, reason, score)`` (:class:`~bitfitech.peer.hub.PeerHub`)
-> the peer's score; past :data:`BAN_THRESHOLD`, disconnect and a
time-limited ban (``docs/security.rst``).
"""

from __future__ import annotations

#: the score at which a peer is disconnected and banned
BAN_THRESHOLD = 100

#: a protocol violation: a malformed frame or message, an event with a bad
#: signature, a certificate that does not prove the node id claimed.  No
#: honest peer sends these, so one is enough for a ban.
VIOLATION = 100

#: an event that is malformed (but came in a well-formed message)
MALFORMED_EVENT = 20

#: one time a peer went past a rate limit (messages, bytes, or events of one author)
RATE_EXCEEDED = 10
