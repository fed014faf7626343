"""bitfi: a peer-to-peer exchange node on Twisted.

Every node keeps a full replica of its network's orderbook; see
``docs/`` and ``README.rst``.  An order from a user goes :mod:`.api` ->
:mod:`.market` -> :mod:`.gossip` -> :mod:`.peer` -> :mod:`.wire` -> the
network, and an order from a peer the other way; :mod:`.discovery` finds
peers; ``docs/reading.rst`` follows one order module by module.  Beneath
the stages: :mod:`.config`, :mod:`.identity`, :mod:`.storage`,
:mod:`.address`, :mod:`.logs`, :mod:`.listening`, :mod:`.ratelimit` and
:mod:`.interfaces` (the seams).  Only :mod:`bitfitech.tap` and
:mod:`bitfitech.node` know every part; ``make lint`` checks that no module
imports a later stage.
"""

__version__ = "0.1.0"
USER_AGENT = f"bitfi/{__version__}"
