"""The HTTP API's service: the listener at the end of the data path.

Data path: TCP on ``api_host:api_port`` -> :class:`~bitfitech.api.site.ApiSite`
-> the site's root (:func:`~bitfitech.api.app.site_root`: the JSON API,
``/metrics`` and the dashboard) -> the API's view of the node
(:class:`~bitfitech.api.control.NodeControl`).  The root and the site are
built with the node; :class:`ApiService` reads the API's token at start
(``--api-token``, else the data directory's ``api.token``), listens, and at
stop ends the live streams and stops listening.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from ..address import format_hostport
from ..config import NodeConfig
from ..listening import ListeningService, StartupError, listen_now, tcp_server_endpoint
from ..logs import logger
from .resources import Root
from .site import ApiSite
from .token import TokenError, api_token

log = logger(__name__)


class ApiService(ListeningService):
    """
    The HTTP API listener.

    :ivar root: the site's root resource.
    :ivar token: the bearer token requests must carry (read at start), or ``None``.
    """

    name = "api"

    def __init__(
        self,
        config: NodeConfig,
        root: Root,
        reactor: Any,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """
        :param root: the site's root (:func:`~bitfitech.api.app.site_root`).
        :param reactor: listens (``IReactorTCP``) and times the requests.
        :param registry: the node's metrics, where the site observes request latency.
        """
        super().__init__()
        self.config = config
        self.root = root
        self.reactor = reactor
        self.site = ApiSite(root, reactor=reactor, registry=registry)
        self.token: str | None = None

    def startService(self) -> None:
        """
        Read the token and listen for HTTP on the API address.

        :raises StartupError: for a non-loopback address without a token
            (``--api-token`` or the data directory's ``api.token``), an
            unreadable token file, or a port that cannot be listened on.
        """
        config = self.config
        try:
            self.token = api_token(config)
        except TokenError as e:
            raise StartupError(str(e)) from None
        self.root.token = self.token
        where = format_hostport(config.api_host, config.api_port)
        self.port = listen_now(
            tcp_server_endpoint(self.reactor, config.api_host, config.api_port),
            self.site,
            f"the HTTP API on {where}",
        )
        super().startService()
        log.info("HTTP API on http://{where}/", where=format_hostport(
            config.api_host, self.listen_port))  # fmt: skip

    def stopService(self) -> Deferred[Any] | None:
        """End the live streams and stop listening."""
        super().stopService()
        self.root.feed.close_all()
        return self.stop_listening()
