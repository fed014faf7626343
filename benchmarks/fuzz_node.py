"""Fuzz a running node over real loopback links, then check that it still works.

Three ``twistd bitfi`` processes on 127.0.0.1 in a line, ``A - T - C``: A
and C each allow one link only, so every order between them travels
through T, the target.  Then several fuzzing threads connect to T over TLS
(each with a key and certificate of its own, as a peer would) and send at
least ``--frames`` malformed or mutated frames (100,000 by default),
reconnecting whenever T drops them.  A connection either sends malformed bytes before any
handshake, or completes the handshake and then sends a stream of frames
drawn from:

- frames with commands T does not know and random payloads (tolerated:
  forward compatibility), and valid messages (``ping``, ``getaddr``,
  ``inv``, ``getdata``, ``addr`` with random content);
- known commands with mutated payloads and a correct checksum;
- mutated raw frame bytes (header, magic, length, checksum);
- ``events`` messages whose well-formed events carry bad signatures.

Afterwards it checks that T's process runs and answers ``GET /status``,
that an order entered on A reaches C and one entered on C reaches A
(through T), and that no node logged an unhandled error (a traceback, or a
line at error or critical level).  T runs with ``--ban-duration 0``:
otherwise its first ban would shut out 127.0.0.1, the honest nodes too.

Run ``python benchmarks/fuzz_node.py [--frames N] [--threads N] [--seed N]``;
the exit status is 0 when every check passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from _cluster import (
    NETWORK,
    NodeProcess,
    cleanup_on_interrupt,
    client_tls_context,
    frame,
    machine_info,
    print_table,
    wait_api,
    wait_until,
)

from bitfitech.market.events import Author
from bitfitech.testing import free_ports
from bitfitech.wire.framing import encode_frame, network_magic
from bitfitech.wire.messages import (
    COMMANDS,
    PROTOCOL_VERSION,
    Addr,
    Events,
    GetAddr,
    GetData,
    Inv,
    Message,
    NetAddress,
    Ping,
    Verack,
    Version,
    encode_message,
)
from bitfitech.witnesses import WitnessSet

PAIR = "BTC/USD"

MAGIC = network_magic(NETWORK)
#: kinds of frame after which T drops the link (a mutated payload usually)
FATAL = frozenset({"mutated payload", "mutated frame", "bad signatures", "before handshake"})
#: lines of a node's log that mean an unhandled error
UNHANDLED = ("Traceback", "Unhandled", "#error]", "#critical]")


@dataclass
class Tally:
    """What the fuzzing threads did (shared; guarded by its lock)."""

    frames: int = 0
    bytes: int = 0
    connections: int = 0
    dropped: int = 0
    refused: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def fuzzed(self) -> int:
        """Frames sent that were malformed or mutated (all but the valid messages)."""
        return self.frames - self.kinds.get("valid message", 0)

    def add(self, frames: int, sent: int, kinds: dict[str, int], dropped: bool) -> None:
        with self.lock:
            self.frames += frames
            self.bytes += sent
            self.connections += 1
            self.dropped += dropped
            for kind, count in kinds.items():
                self.kinds[kind] = self.kinds.get(kind, 0) + count


def mutate(data: bytes, rng: random.Random) -> bytes:
    """C{data} with one to four random edits (replace, insert, delete, truncate)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        where = rng.randrange(len(out) + 1)
        if choice < 0.5 and out:
            out[min(where, len(out) - 1)] = rng.randrange(256)
        elif choice < 0.75:
            out[where:where] = rng.randbytes(rng.randint(1, 8))
        elif choice < 0.95 and out:
            del out[where : where + rng.randint(1, 8)]
        else:
            del out[where:]
    return bytes(out)


class FrameSource:
    """Draws the frames one fuzzing connection sends."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.author = Author(rng.randbytes(32), NETWORK, PAIR)
        self.seq = 0

    def _random_hex(self) -> str:
        return self.rng.randbytes(32).hex()

    def valid(self) -> Message:
        """A well-formed message with random content."""
        rng = self.rng
        pick = rng.randrange(5)
        if pick == 0:
            return Ping(rng.randrange(2**64))
        if pick == 1:
            return GetAddr()
        if pick == 2:
            return Inv(tuple(self._random_hex() for _ in range(rng.randint(1, 20))), 3)
        if pick == 3:
            return GetData(tuple(self._random_hex() for _ in range(rng.randint(1, 20))))
        entries = tuple(
            NetAddress(
                f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                rng.randint(1, 65535),
                None,
                int(time.time()),
            )  # fmt: skip
            for _ in range(rng.randint(1, 10))
        )
        return Addr(entries)

    def unknown(self) -> bytes:
        """A frame with a command T does not know and a random payload."""
        rng = self.rng
        while True:
            command = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_")
                              for _ in range(rng.randint(1, 12)))  # fmt: skip
            if command not in COMMANDS:
                return encode_frame(MAGIC, command, rng.randbytes(rng.randint(0, 512)))

    def mutated_payload(self) -> bytes:
        """A known command whose payload is mutated, with a correct checksum."""
        command, payload = encode_message(self.valid())
        return encode_frame(MAGIC, command, mutate(payload, self.rng)[:4096])

    def mutated_frame(self) -> bytes:
        """A valid frame with random edits anywhere, header included."""
        return mutate(frame(self.valid()), self.rng)

    def forged_events(self) -> bytes:
        """An ``events`` message of well-formed events with bad signatures."""
        events = []
        for _ in range(self.rng.randint(1, 5)):
            self.seq += 1
            event = self.author.order(self.seq, self.seq, int(time.time() * 1000), "buy",
                                      "limit", "50000", "0.5")  # fmt: skip
            bad = bytearray(bytes.fromhex(event.sig))
            bad[self.rng.randrange(64)] ^= 1 << self.rng.randrange(8)
            events.append((event.text, bad.hex()))
        return frame(Events(tuple(events), 3, False))

    def next(self) -> tuple[str, bytes]:
        """One frame to send and its kind."""
        roll = self.rng.random()
        if roll < 0.80:
            return "unknown command", self.unknown()
        if roll < 0.97:
            return "valid message", frame(self.valid())
        if roll < 0.985:
            return "mutated payload", self.mutated_payload()
        if roll < 0.995:
            return "mutated frame", self.mutated_frame()
        return "bad signatures", self.forged_events()


def drain(sock: ssl.SSLSocket) -> bool:
    """Read whatever T sent, without waiting; C{False} once T closed the link."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return False
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return True
    except (OSError, ssl.SSLError):
        return False
    finally:
        sock.setblocking(True)


def fuzz_connection(
    port: int, context: ssl.SSLContext, node_id: str, rng: random.Random, budget: int, tally: Tally
) -> None:
    """One connection to T: garbage before a handshake, or a handshake and then frames."""
    source = FrameSource(rng)
    kinds: dict[str, int] = {}
    frames = sent = 0
    dropped = False
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        with tally.lock:
            tally.refused += 1
        return
    try:
        sock = context.wrap_socket(raw)
    except (OSError, ssl.SSLError):
        raw.close()
        with tally.lock:
            tally.refused += 1
        return
    with contextlib.closing(sock):
        try:
            if rng.random() < 0.05:
                chunk = mutate(frame(source.valid()), rng) + rng.randbytes(rng.randint(0, 64))
                sock.sendall(chunk)
                frames, sent, kinds = 1, len(chunk), {"before handshake": 1}
            else:
                hello = frame(Version(PROTOCOL_VERSION, NETWORK, PAIR, node_id, 0, "bitfi-fuzz/0",
                                      (), rng.randrange(1, 2**64), int(time.time()),
                                      WitnessSet().digest))  # fmt: skip
                sock.sendall(hello + frame(Verack()))
                while frames < budget:
                    kind, data = source.next()
                    sock.sendall(data)
                    frames += 1
                    sent += len(data)
                    kinds[kind] = kinds.get(kind, 0) + 1
                    if kind in FATAL:
                        break  # T drops the link now: what follows would go unread
                    if frames % 16 == 0 and not drain(sock):
                        dropped = True
                        break
            dropped = dropped or not drain(sock)
        except (OSError, ssl.SSLError):
            dropped = True
    tally.add(frames, sent, kinds, dropped)


def fuzz(port: int, frames: int, threads: int, seed: int, directory: str) -> Tally:
    """Fuzz T from C{threads} threads until C{frames} malformed or mutated frames are sent."""
    tally = Tally()

    def worker(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        context, node_id = client_tls_context(directory, rng)
        while tally.fuzzed < frames:
            fuzz_connection(port, context, node_id, rng, rng.randint(50, 500), tally)

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return tally


def order_travels(source: NodeProcess, target: NodeProcess, price: str, timeout: float) -> float:
    """Place an order on C{source}; return the seconds until C{target} holds it."""
    started = time.monotonic()
    code, doc = source.api.request(
        "POST", "/orders", {"side": "buy", "price": price, "amount": "0.1", "type": "limit"}
    )
    if code != 201:
        raise RuntimeError(f"order refused by node {source.index}: {code} {doc}")

    def arrived() -> bool:
        code, _ = target.api.request("GET", f"/orders/{doc['id']}")
        return code == 200

    wait_until(arrived, timeout, f"order {doc['id'][:12]} on node {target.index}")
    return time.monotonic() - started


def unhandled(node: NodeProcess) -> list[str]:
    """The lines of C{node}'s log that mean an unhandled error."""
    return [line for line in node.log_problems() if any(sign in line for sign in UNHANDLED)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="bitfi-fuzz-")
    ports = free_ports(6)
    target = NodeProcess(1, base, ports[2], ports[3], outbound=0, max_peers=50, log_level="info")
    target.args += ["--ban-duration", "0"]  # A and C share 127.0.0.1 with the fuzzer
    honest = [
        NodeProcess(
            index,
            base,
            ports[2 * slot],
            ports[2 * slot + 1],
            bootstrap=[target.port],
            outbound=1,
            max_peers=1,
        )  # fmt: skip
        for index, slot in ((0, 0), (2, 2))
    ]
    nodes = [honest[0], target, honest[1]]
    failures: list[str] = []
    with cleanup_on_interrupt():
        try:
            target.start()
            wait_api(target)
            for node in honest:
                node.start()
            for node in honest:
                wait_api(node)
            wait_until(lambda: len(target.api.get("/peers")) == 2, 30, "A and C linked to T")
            before = target.api.get("/status")["peers"]["protocol_violations"]
            started = time.monotonic()
            tally = fuzz(target.port, args.frames, args.threads, args.seed, base)
            took = time.monotonic() - started
            alive = target.exited() is None
            if not alive:
                failures.append(f"T exited with status {target.exited()}")
            status = target.api.get("/status") if alive else {}
            violations = status.get("peers", {}).get("protocol_violations", 0) - before
            wait_until(lambda: len(target.api.get("/peers")) >= 2, 30, "A and C still linked")
            a_to_c = order_travels(honest[0], honest[1], "49000", 20)
            c_to_a = order_travels(honest[1], honest[0], "49001", 20)
            errors = {node.index: unhandled(node) for node in nodes}
            for index, lines in errors.items():
                if lines:
                    failures.append(f"node {index} logged {len(lines)} unhandled errors: "
                                    f"{lines[:3]}")  # fmt: skip
        finally:
            for node in nodes:
                node.stop()
    rows = [
        ("frames sent to T", f"{tally.frames:,}"),
        ("  of them malformed or mutated", f"{tally.fuzzed:,}"),
        ("bytes sent", f"{tally.bytes:,}"),
        (
            "connections (dropped by T early / refused)",
            f"{tally.connections:,} ({tally.dropped:,} / {tally.refused:,})",
        ),
        ("fuzzing time (s)", f"{took:.1f}"),
        ("frames/s", f"{tally.frames / took:,.0f}"),
        ("protocol violations T counted", f"{violations:,}"),
        ("T answers /status", "yes" if status else "no"),
        ("order A -> C through T (s)", f"{a_to_c:.3f}"),
        ("order C -> A through T (s)", f"{c_to_a:.3f}"),
        ("unhandled errors logged", str(sum(len(lines) for lines in errors.values()))),
    ]
    rows += [(f"  frames: {kind}", f"{count:,}") for kind, count in sorted(tally.kinds.items())]
    print(machine_info())
    print_table("fuzzing one node over real loopback links", rows)
    print(json.dumps({"failures": failures}))
    if not failures:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"logs kept in {base}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
