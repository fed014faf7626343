"""One bitfi node, configured entirely from environment variables.

The same :class:`bitfitech.tap.Options` as ``twistd bitfi`` reads and
validates the settings, so every variable of ``twistd bitfi --help`` works
here (``P2P_PORT``, ``BOOTSTRAP_PEERS``, ``BITFI_DATA_DIR``, ``API_PORT``,
``LOG_LEVEL``, ...) and a bad value stops the load with one line that names
the variable and its option, and exit status 1.
Run from a checkout, one node per shell::

    PYTHONPATH=. P2P_PORT=3000 twistd -ny tac/node.tac --pidfile= --logfile=-
    PYTHONPATH=. P2P_PORT=3001 BOOTSTRAP_PEERS=127.0.0.1:3000 \\
        twistd -ny tac/node.tac --pidfile= --logfile=-

Each port gets its own data directory and API port (3001: 13001) by default.
A network with witnesses names them in ``WITNESSES`` (comma-separated
``NODEID@host:port``, the same list on every node), as ``--witness`` does.

``BITFI_LOG_FORMAT=json`` writes one JSON object per line to stdout: a
``.tac`` cannot see twistd's ``--logfile``, so the JSON observer it sets
on the application (which twistd prefers to ``--logfile``) always writes
to stdout; run it with ``-n`` and let the supervisor keep the output.
"""

import sys

from twisted.application import service
from twisted.logger import ILogObserver

from bitfitech.logs import json_file_observer
from bitfitech.tap import makeService, tac_options

options = tac_options(__file__)  # everything from the environment; a bad value exits
assert options.config is not None

application = service.Application("bitfi")
if options.config.log_format == "json":
    application.setComponent(ILogObserver, json_file_observer(sys.stdout))
node = makeService(options)
node.setName("node")
node.setServiceParent(application)
