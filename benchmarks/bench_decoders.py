"""Benchmark: what one hostile input costs each decoder that reads the network.

The fuzz tests in ``tests/security/`` check that the frame decoder, the
message codec, the event parser and the peer protocol take whatever bytes
a peer sends without raising anything but their own error; how long one
input takes is measured here instead.  Per decoder, inputs like the tests'
(random bytes, and valid encodings damaged by one to four random edits:
bytes replaced, inserted, deleted, duplicated or the end cut off), each
timed alone:

- frames: a stream of up to five frames fed to a ``FrameDecoder`` in
  random chunks, drained after each;
- messages: the payload of a real message of every kind, decoded under
  its command (and deep JSON nesting, just under and over the parser's
  limit);
- events: a real signed event's text parsed, and its signature checked
  when it parses;
- protocol: a stream of frames fed to a ``PeerProtocol`` past its
  handshake, over a ``StringTransport`` and a fake clock.

Figures: the mean and the worst time per input.  Target: the worst under
500 ms, the per-example deadline the fuzz tests once had ("far below any
hang or quadratic blow-up").

Run ``python benchmarks/bench_decoders.py [--inputs N] [--seed N] [--quick]
[--json PATH]`` (default 5,000 inputs per decoder; ``--quick``: 500).
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from collections.abc import Callable

from _cluster import machine_info, percentile, print_table
from _results import Results, add_arguments
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bitfitech.config import LinkTiming
from bitfitech.market.events import Author, EventError, parse_event, verify_event
from bitfitech.peer.protocol import PeerProtocol
from bitfitech.testing import (
    EDITS,
    SPECIAL_BYTES,
    TEST_NETWORK,
    TEST_PAIR,
    RecordingOwner,
    edited,
    frame_of,
    local_node,
    node_id_of,
    version_of,
)
from bitfitech.wire.framing import FrameDecoder, FramingError, encode_frame, network_magic
from bitfitech.wire.messages import (
    Addr,
    Events,
    GetAddr,
    Inv,
    Message,
    MessageError,
    NetAddress,
    Ping,
    Pong,
    Sync,
    Verack,
    decode_message,
    encode_message,
)

MAGIC = network_magic(TEST_NETWORK)
#: the worst time one input may take (the fuzz tests' old per-example deadline)
TARGET_MS = 500.0
TIMING = LinkTiming(handshake_timeout=10.0, ping_interval=30.0, ping_timeout=20.0)


def mutated(rng: random.Random, original: bytes) -> bytes:
    """C{original} changed by one to four random edits (as the tests' strategy does)."""
    value = original
    for _ in range(rng.randint(1, 4)):
        start = rng.randint(0, len(value))
        end = rng.randint(start, min(len(value), start + 16))
        piece = (
            rng.choice(SPECIAL_BYTES) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 8))
        )
        value = edited(value, rng.choice(EDITS), start, end, functools.partial(bytes, piece))
    return value


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    """C{data} in random pieces of 1 to 64 bytes, or all at once."""
    if rng.random() < 0.2:
        return [data]
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1, 64)
        chunks.append(data[at : at + size])
        at += size
    return chunks


def sample_messages(rng: random.Random, author: Author) -> list[Message]:
    """A real message of every kind the protocol sends."""
    events = [author.order(seq, seq, 1_700_000_000_000, "buy", "limit", "100", "1")
              for seq in range(1, 4)]  # fmt: skip
    ids = tuple(event.id for event in events)
    addrs = tuple(NetAddress("127.0.0.1", 3000 + n, node_id_of(n), 1_700_000_000) for n in range(3))
    return [
        version_of(2, nonce=rng.randrange(1, 2**63)),
        Verack(),
        GetAddr(),
        Ping(rng.randrange(2**63)),
        Pong(rng.randrange(2**63)),
        Addr(addrs),
        Inv(ids, 3),
        Events(tuple((event.text, event.sig) for event in events), 3, False),
        Sync(((author.author, 3),), "ab" * 32),
    ]


def timed(inputs: list[bytes], run: Callable[[bytes], None]) -> list[float]:
    """Seconds each input took through C{run}."""
    times = []
    for data in inputs:
        started = time.perf_counter()
        run(data)
        times.append(time.perf_counter() - started)
    return times


def frames_inputs(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, and streams of valid frames damaged."""
    inputs = []
    for n in range(count):
        if n % 3 == 0:
            inputs.append(rng.randbytes(rng.randint(0, 2000)))
            continue
        frames = [encode_frame(MAGIC, rng.choice(("ping", "events", "zz_unknown")),
                               rng.randbytes(rng.randint(0, 512)))
                  for _ in range(rng.randint(1, 5))]  # fmt: skip
        inputs.append(mutated(rng, b"".join(frames)))
    return inputs


def decode_frames(rng: random.Random) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        decoder = FrameDecoder(MAGIC)
        try:
            for chunk in chunked(rng, data):
                decoder.feed(chunk)
                while decoder.next_frame() is not None:
                    pass
        except FramingError:
            pass

    return run


def message_inputs(rng: random.Random, count: int, author: Author) -> list[tuple[str, bytes]]:
    """Payloads of real messages damaged, random bytes, and deep JSON nesting."""
    samples = [encode_message(message) for message in sample_messages(rng, author)]
    inputs: list[tuple[str, bytes]] = []
    for depth in (900, 1000, 5000, 100_000):
        inputs.append(("ping", b'{"nonce": ' + b"[" * depth + b"]" * depth + b"}"))
    while len(inputs) < count:
        command, payload = rng.choice(samples)
        if rng.random() < 0.2:
            inputs.append((command, rng.randbytes(rng.randint(0, 300))))
        else:
            inputs.append((command, mutated(rng, payload)))
    return inputs


def decode_messages(pairs: list[tuple[str, bytes]]) -> list[float]:
    times = []
    for command, payload in pairs:
        started = time.perf_counter()
        try:
            decode_message(command, payload)
        except MessageError:
            pass
        times.append(time.perf_counter() - started)
    return times


def event_inputs(rng: random.Random, count: int, author: Author) -> list[tuple[str, str]]:
    """Texts of real signed events damaged (with their signature), or signatures damaged."""
    inputs = []
    for seq in range(1, count + 1):
        event = author.order(seq, seq, 1_700_000_000_000, rng.choice(("buy", "sell")), "limit",
                             f"{rng.randint(1, 99999)}.{rng.randint(0, 99)}", "0.5")  # fmt: skip
        if rng.random() < 0.7:
            text = mutated(rng, event.text.encode("ascii")).decode("latin-1")
            inputs.append((text, event.sig))
        else:
            sig = mutated(rng, event.sig.encode("ascii")).decode("latin-1")
            inputs.append((event.text, sig))
    return inputs


def parse_events(pairs: list[tuple[str, str]]) -> list[float]:
    times = []
    for text, sig in pairs:
        started = time.perf_counter()
        try:
            verify_event(parse_event(text, sig, TEST_NETWORK, TEST_PAIR))
        except EventError:
            pass
        times.append(time.perf_counter() - started)
    return times


def protocol_inputs(rng: random.Random, count: int, author: Author) -> list[bytes]:
    """Streams of one to three real frames damaged, and random bytes behind the magic."""
    messages = sample_messages(rng, author)
    inputs = []
    for n in range(count):
        if n % 4 == 0:
            inputs.append(MAGIC + rng.randbytes(rng.randint(20, 1000)))
            continue
        stream = b"".join(frame_of(rng.choice(messages)) for _ in range(rng.randint(1, 3)))
        inputs.append(mutated(rng, stream))
    return inputs


def feed_protocol(rng: random.Random, inputs: list[bytes]) -> list[float]:
    times = []
    for data in inputs:
        protocol = PeerProtocol(local_node(1), RecordingOwner(), Clock(), "inbound",
                                timing=TIMING, nonce=77)  # type: ignore[arg-type]  # fmt: skip
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(frame_of(version_of(2)) + frame_of(Verack()))
        chunks = chunked(rng, data)
        started = time.perf_counter()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, help="inputs per decoder [5000; quick 500]")
    parser.add_argument("--seed", type=int, default=1, help="random seed [1]")
    add_arguments(parser)
    args = parser.parse_args(argv)
    count = args.inputs or (500 if args.quick else 5000)
    rng = random.Random(args.seed)
    author = Author(rng.randbytes(32), TEST_NETWORK, TEST_PAIR)
    measured = {
        "frames": timed(frames_inputs(rng, count), decode_frames(rng)),
        "messages": decode_messages(message_inputs(rng, count, author)),
        "events": parse_events(event_inputs(rng, count, author)),
        "protocol": feed_protocol(rng, protocol_inputs(rng, count, author)),
    }
    rows = [("inputs per decoder", f"{count:,}")]
    report = Results("bench_decoders", quick=args.quick)
    report.add("hostile inputs per decoder", count, "inputs")
    worst_of_all = 0.0
    for name, times in measured.items():
        mean_us = statistics.mean(times) * 1e6
        worst_ms = max(times) * 1000
        worst_of_all = max(worst_of_all, worst_ms)
        rows += [
            (f"{name}: mean (us)", f"{mean_us:,.1f}"),
            (f"{name}: p99 (us)", f"{percentile(times, 0.99) * 1e6:,.1f}"),
            (f"{name}: max (ms)", f"{worst_ms:,.2f}"),
        ]
        report.add(f"{name}: time per hostile input, mean", round(mean_us, 1), "us")
        report.add(f"{name}: time per hostile input, max", round(worst_ms, 2), "ms",
                   f"<= {TARGET_MS:g} ms", worst_ms <= TARGET_MS)  # fmt: skip
    print_table(f"decoders ({'quick; ' if args.quick else ''}{machine_info()})", rows)
    verdict = "met" if worst_of_all <= TARGET_MS else "MISSED"
    print_table("targets", [(f"every input <= {TARGET_MS:g} ms", f"{worst_of_all:.2f} ms: "
                                                               f"{verdict}")])  # fmt: skip
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
