"""The HTTP API's service: the listener at the end of the data path.

Data path: TCP on ``api_host:api_port`` -> :class:`~bitfitech.api.site.ApiSite`
-> the site's root (:func:`~bitfitech.api.app.site_root`: the JSON API,
``/metrics`` and the dashboard) -> the API's view of the node
(:class:`~bitfitech.api.control.NodeControl`).  The root and the site are
built with the node; :class:`ApiService` reads the API's token at start
(``--api-token``, else the data directory's ``api.token``), listens, and at
stop stops listening, ends the live streams and closes every HTTP
connection, within about two seconds whatever the clients do
(:meth:`~bitfitech.api.site.ApiSite.close_connections`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, gatherResults

from ..address import format_hostport
from ..config import NodeConfig
from ..listening import ListeningService, StartupError, listen_now, tcp_server_endpoint
from ..logs import logger
from .resources import Root
from .site import CLOSE_GRACE, ApiSite
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
        :param reactor: listens (``IReactorTCP``), times the requests and
            the connections' timeouts.
        :param registry: the node's metrics, where the site observes request
            latency and counts its connections.
        """
        super().__init__()
        self.config = config
        self.root = root
        self.reactor = reactor
        self.site = ApiSite(
            root,
            reactor=reactor,
            registry=registry,
            max_connections=config.api_max_connections,
            idle_timeout=config.api_idle_timeout,
        )
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
        log.info("HTTP API and dashboard on {url}", url=self.url)

    @property
    def url(self) -> str | None:
        """The API's address while it listens (browsers get the dashboard there), or ``None``."""
        if self.port is None:
            return None
        return f"http://{format_hostport(self.config.api_host, self.listen_port)}/"

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting connections, end the live streams, then close every
        HTTP connection: idle ones at once, one being answered once its
        answer is written; what is still open after
        :data:`~bitfitech.api.site.CLOSE_GRACE` seconds is aborted.

        :return: fires once the port is closed and every connection gone,
            after about two seconds at the latest whatever the clients do.
        """
        super().stopService()
        listening = self.stop_listening()
        self.root.streams.close_all()
        closing = self.site.close_connections(CLOSE_GRACE)
        waits: list[Deferred[Any]] = [closing] if listening is None else [listening, closing]
        stopped: Deferred[None] = gatherResults(waits).addCallback(lambda _: None)
        return stopped
