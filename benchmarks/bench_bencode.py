"""Benchmark: the DHT's bencode codec, ours against fastbencode, on typical KRPC messages.

The DHT decodes every datagram it reads and encodes every one it sends
(:mod:`bitfitech.discovery.kademlia.bencode`).  Both have two paths: this
project's pure-Python codec (``pure_decode`` and ``encode``, the
reference) and fastbencode's compiled one, used when installed for the
input it judges exactly as the reference does.  Per message kind, timed
in this one process:

- ``ours``: ``pure_decode`` and ``encode``;
- ``fastbencode``: its compiled ``bdecode`` and ``bencode`` called
  directly, without our guards (when installed);
- ``in use``: ``decode`` and ``encode_plain`` as the DHT calls them: the
  fast path with its guards (a scan for overlong digit runs, the depth
  bound, a fallback to ours).

Messages: the KRPC queries and replies a node exchanges (a ``get_peers``
reply with 8 nodes, 50 peers and a token is the largest), and one a
misbehaving client sends: a reply whose keys are out of order, which
fastbencode refuses and ours then decodes (the cost of the fallback).

Figures: microseconds per message (best of five runs) and the speed-up of
``in use`` over ``ours``.  No target: the DHT's own figure is the CPU time
of ``bench_dht.py``.

Run ``python benchmarks/bench_bencode.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from collections.abc import Callable
from typing import Any

from _results import Results, add_arguments

from bitfitech.discovery.kademlia import bencode
from bitfitech.discovery.kademlia.krpc import (
    AnnouncePeer,
    ErrorReply,
    FindNode,
    GetPeers,
    Message,
    NodeInfo,
    Ping,
    Response,
    encode_message,
)

VERSION = b"BF\x00\x01"


def _fastbencode() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """fastbencode's compiled decoder and encoder, or None."""
    try:
        from fastbencode import bdecode, bencode  # type: ignore[attr-defined]
    except ImportError:
        return None
    if bdecode.__module__ != "fastbencode._bencode_rs":
        return None
    return bdecode, bencode


def messages(rng: random.Random) -> dict[str, bytes]:
    """Typical KRPC datagrams by kind, and one with its keys out of order."""

    def node_id() -> bytes:
        return rng.randbytes(20)

    nodes = tuple(NodeInfo(node_id(), f"10.0.{n}.{n + 1}", 6881 + n) for n in range(8))
    peers = tuple((f"10.1.{n}.7", 9000 + n) for n in range(50))
    kinds: dict[str, Message] = {
        "ping query": Ping(b"aa", node_id()),
        "find_node query": FindNode(b"aa", node_id(), node_id()),
        "get_peers query": GetPeers(b"aa", node_id(), node_id()),
        "announce_peer query": AnnouncePeer(b"aa", node_id(), node_id(), 9000, b"tok4"),
        "find_node reply, 8 nodes": Response(b"aa", node_id(), nodes, with_nodes=True),
        "get_peers reply, 50 peers": Response(b"aa", node_id(), nodes, peers, b"tok4", True),
        "error": ErrorReply(b"aa", 203, "bad token"),
    }
    data = {name: encode_message(message, version=VERSION) for name, message in kinds.items()}
    reply = bencode.pure_decode(data["find_node reply, 8 nodes"])
    assert isinstance(reply, dict)
    # Hand-built: y, t, r, v is not the sorted order; ours accepts it.
    data["find_node reply, keys unsorted"] = b"".join(
        [b"d1:y1:r1:t2:aa1:rd5:nodes208:", reply[b"r"][b"nodes"], b"2:id20:"]
        + [reply[b"r"][b"id"], b"e1:v4:", VERSION, b"e"]
    )
    return data


def per_call(function: Callable[[Any], Any], argument: Any, seconds: float) -> float:
    """
    Microseconds per call of C{function(argument)}, best of five runs of
    about C{seconds} each (sized by a calibration of some 10 ms, where
    ``timeit``'s ``autorange`` would spend 0.2 s).
    """
    timer = timeit.Timer(lambda: function(argument))
    number = 1
    while (took := timer.timeit(number)) < 0.01:
        number *= 10
    number = max(1, int(number * seconds / took))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    seconds = 0.05 if args.quick else 0.2
    results = Results("bench_bencode", quick=args.quick)
    fast = _fastbencode()
    print(f"bench_bencode on {results.machine}")
    print(
        f"fastbencode's compiled codec: {'installed' if fast else 'not installed'}; "
        f"the DHT's fast path {'on' if bencode.COMPILED else 'off'}\n"
    )
    header = (
        f"{'µs per message':<32} {'bytes':>5}  {'decode: ours':>12} {'fastbencode':>11} "
        f"{'in use':>7} {'x':>5}  {'encode: ours':>12} {'fastbencode':>11} {'in use':>7} "
        f"{'x':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, data in messages(random.Random(args.seed)).items():
        value = bencode.decode(data)
        assert value == bencode.pure_decode(data)
        decode_ours = per_call(bencode.pure_decode, data, seconds)
        decode_used = per_call(bencode.decode, data, seconds)
        encode_ours = per_call(bencode.encode, value, seconds)
        encode_used = per_call(bencode.encode_plain, value, seconds)
        decode_raw = encode_raw = None
        if fast is not None:
            if _decodes(fast[0], data):
                decode_raw = per_call(fast[0], data, seconds)
            encode_raw = per_call(fast[1], value, seconds)
        print(
            f"{name:<32} {len(data):>5}  {decode_ours:>12.2f} {_cell(decode_raw):>11} "
            f"{decode_used:>7.2f} {decode_ours / decode_used:>5.1f}  {encode_ours:>12.2f} "
            f"{_cell(encode_raw):>11} {encode_used:>7.2f} {encode_ours / encode_used:>5.1f}"
        )
        for what, ours, used in (
            ("decode", decode_ours, decode_used),
            ("encode", encode_ours, encode_used),
        ):
            results.add(f"{what} {name}: ours", round(ours, 2), "µs")
            results.add(f"{what} {name}: in use", round(used, 2), "µs")
    print("\n(fastbencode's decode is '-' where it refuses the input: ours decodes it.)\n")
    results.write(args.json)
    return 0


def _decodes(decode: Callable[..., Any], data: bytes) -> bool:
    try:
        decode(data)
    except ValueError:
        return False
    return True


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
