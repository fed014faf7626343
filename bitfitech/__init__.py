"""bitfi: a peer-to-peer exchange node on Twisted.

Every node keeps a full replica of its network's orderbook; see
``docs/`` and ``README.rst``.  The package reads in data-path order:
configuration and identity, storage, the wire format, peer links, the
market, discovery, and the HTTP API.  Only :mod:`bitfitech.tap` and
:mod:`bitfitech.node` know every part.
"""

__version__ = "0.1.0"
USER_AGENT = f"bitfi/{__version__}"
