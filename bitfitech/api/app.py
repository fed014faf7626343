"""The whole HTTP surface of a node: the JSON API, its metrics and the dashboard.

Data path: :class:`~bitfitech.api.site.ApiSite` -> the root made here, which
is the JSON API's root (:func:`~bitfitech.api.resources.api_root`) with
``/metrics`` (Prometheus text, behind the token like the API) and the
dashboard (``/`` for browsers, ``/static/<name>``: public) mounted on it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime

from ..interfaces import INodeControl
from .dashboard import IndexPage, StaticFiles
from .metrics import MetricsResource
from .resources import Root, api_root


def site_root(
    node: INodeControl,
    *,
    clock: IReactorTime | None = None,
    token: str | None = None,
    registry: CollectorRegistry | None = None,
) -> Root:
    """
    The root resource of a node's HTTP site.

    :param clock: the live stream's timers (the global reactor if ``None``).
    :param token: the bearer token API requests must carry, or ``None``.
    :param registry: the node's metrics, served at ``/metrics`` (a 404 there
        if ``None``).
    """
    root = api_root(node, clock=clock, token=token)
    root.putChild(b"metrics", MetricsResource(registry))
    root.mount_public(b"static", StaticFiles())
    root.browser_index = IndexPage()
    return root
