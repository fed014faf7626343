"""The peer wire format: the layer between a TCP link's bytes and typed messages.

Bytes from a peer go through :mod:`bitfitech.wire.framing` (bytes to
frames: magic, command, length, checksum, payload) and then through
:mod:`bitfitech.wire.messages` (a frame's payload to a typed message);
outgoing messages take the same road backwards.  Both modules are pure:
no Twisted, no I/O, no clocks, and every input is bounded.  The peer
protocol in :mod:`bitfitech.peer` is the glue that feeds them bytes.  The
format itself is documented in ``docs/protocol.rst``.
"""
