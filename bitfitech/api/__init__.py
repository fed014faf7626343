"""The HTTP API: the end of the data path, where a user reads and steers the node.

JSON over twisted.web, bound to 127.0.0.1 by default.  It talks to the node
only through :class:`~bitfitech.interfaces.INodeControl`.
"""
