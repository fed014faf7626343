"""The seams between stages of the data path.

Each stage talks to the next through one of these interfaces, and
:mod:`bitfitech.node` injects the implementations, so no module needs to
import one that comes after it on the path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class ILinkOwner(Interface):
    """What one peer link reports to and asks of the live-link registry (the hub)."""

    def is_own_nonce(nonce: int) -> bool:
        """Whether C{nonce} was sent in a ``version`` by this node (a link to itself)."""

    def link_ready(link: Any) -> str | None:
        """
        The link finished its handshake: admit it.

        :return: ``None`` when admitted, else why it must close.
        """

    def link_message(link: Any, message: Any) -> None:
        """A message after the handshake that the link itself does not handle."""

    def link_closed(link: Any, reason: str) -> None:
        """The link is gone (whether or not it was ever ready)."""

    def link_misbehaved(link: Any, reason: str) -> None:
        """The peer broke the protocol; the link is closing."""


class INodeControl(Interface):
    """What the HTTP API and the CLI may read and do on a node."""

    def status() -> dict[str, Any]:
        """A JSON-ready summary of the node (``GET /status``)."""

    def peers() -> list[dict[str, Any]]:
        """JSON-ready rows, one per live peer link (``GET /peers``)."""

    def connect(address: str) -> Deferred[dict[str, Any]]:
        """
        Dial C{address} now (``host:port`` or ``NODEID@host:port``).

        :return: fires with the peer's row once linked; fails with
            :class:`ValueError` for a bad address or :class:`ConnectionError`.
        """

    def disconnect(node_id: str) -> bool:
        """Close the link to C{node_id} and rest its addresses; ``False`` if not linked."""
