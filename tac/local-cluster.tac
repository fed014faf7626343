"""A demo: four connected bitfi nodes in one process, on 127.0.0.1, in fair order.

Node 1 listens on ``$BASE_PORT`` (3100 by default), nodes 2 to 4 on the
next three ports, and all bootstrap to node 1 (by TCP, and by the DHT, which
each node runs on UDP at its P2P port number, bound to 127.0.0.1).  mDNS is
off, so nothing leaves loopback.  APIs at port + 10000 (13100 to 13103).
Nodes 1 to 3 are the network's witnesses (n = 3, f = 1): every node names
them with ``--witness NODEID@127.0.0.1:port``, and their stamps give every
event its fair time (``docs/consistency.rst``, "Fair order"); node 4 is a
plain node.  Data directories ``node1`` to ``node4`` under
``$BITFI_DATA_DIR``, else under ``$XDG_DATA_HOME/bitfi/local-cluster-<BASE_PORT>``
(``~/.local/share/...``): kept across restarts, so the nodes keep their
keys and events.  A witness is named by its node id, so loading this file
makes the witnesses' directories and keys (``node.key``) if they have none
yet; nothing else is touched before the nodes start.  Every other variable
of ``twistd bitfi --help`` (``LOG_LEVEL``, ``BITFI_NETWORK``,
``EXCHANGE_PAIR``, ...) applies to all four nodes (``WITNESSES`` is
overridden: the cluster names its own); each node's settings go through the
plugin's Options, so a bad value stops the load with the option's name.
From a checkout::

    PYTHONPATH=. twistd -ny tac/local-cluster.tac --pidfile= --logfile=-
    curl http://127.0.0.1:13103/status    # "ordering": "fair", "witnesses": {...}

``BITFI_LOG_FORMAT=json`` writes JSON lines to stdout, as with ``node.tac``.
"""

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver

from bitfitech.address import PeerAddress
from bitfitech.config import coerce_path, coerce_port
from bitfitech.identity import IdentityError, identity_before_start
from bitfitech.logs import json_file_observer
from bitfitech.tap import makeService, tac_options, tac_usage_error

NODES = 4
WITNESSES = 3  # the first three nodes: n = 2f + 1 with f = 1


def _setting(name, coerce, default):
    """An environment variable of this file, coerced; a bad value stops the load."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return coerce(raw)
    except ValueError as e:
        raise tac_usage_error(__file__, f"${name}: {e}") from None


base_port = _setting("BASE_PORT", coerce_port, 3100)
if not 1 <= base_port <= 65535 - NODES - 10000:
    raise tac_usage_error(
        __file__, f"$BASE_PORT: must be from 1 to {65535 - NODES - 10000}, not {base_port}"
    )
xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
data_root = _setting(
    "BITFI_DATA_DIR", coerce_path, os.path.join(xdg, "bitfi", f"local-cluster-{base_port}")
)


def _data_dir(number):
    return os.path.join(data_root, f"node{number}")


# The witnesses' keys must exist before any node's settings name them.
witnesses = []
for number in range(1, WITNESSES + 1):
    try:
        node_id = identity_before_start(_data_dir(number)).node_id
    except IdentityError as e:
        raise tac_usage_error(__file__, f"witness node{number}: {e}") from None
    witnesses.append(str(PeerAddress("127.0.0.1", base_port + number - 1, node_id)))

application = service.Application("bitfi-local-cluster")
nodes = []
for number in range(1, NODES + 1):
    port = base_port + number - 1
    args = [
        "--host", "127.0.0.1", "--port", str(port),
        "--api-host", "127.0.0.1", "--api-port", str(port + 10000),
        "--data-dir", _data_dir(number),
        "--no-mdns", "--dht-port", str(port),
        # the nodes share 127.0.0.1: the per-address limits must not bite
        "--max-inbound-per-ip", "64", "--max-handshakes-per-ip", "64",
        "--witness", ",".join(witnesses),
    ]  # fmt: skip
    if number > 1:
        args += ["--bootstrap", f"127.0.0.1:{base_port}"]
        args += ["--dht-bootstrap", f"127.0.0.1:{base_port}"]
    options = tac_options(__file__, args)  # the rest from the environment; a bad value exits
    # Every line this node logs carries its name (docs/operations.rst, "Logs").
    node = makeService(options, log_tag=f"node{number}")
    node.setName(f"node{number}")
    node.setServiceParent(application)
    nodes.append(node)

if options.config.log_format == "json":
    application.setComponent(ILogObserver, json_file_observer(sys.stdout))
