"""Benchmark: how many events a second one node takes in from its peers, on one core.

One real ``twistd bitfi`` process (TLS on, ``--no-mdns --no-dht``), every
thread of it pinned to CPU 0 once it is up, is fed by this process,
pinned to the other CPUs, over ``--links`` real TLS peer links (default
4).  Before the clock starts this process signs the events (orders of
``--authors`` keys near one price, so that some cross) and frames them as
``events`` messages of ``--per-message`` events each (4: live gossip
carries one to a few), ``ttl`` as an author's node sends its own, so the
node pushes each in full to the other links: every event is parsed,
signature-checked, applied, journaled and relayed, the whole hot path
of a node one hop from the authors.  Each author's events go down one
link, in order.  ``--signed-together N`` has each author sign N of its
events at a time under one batch signature, as a node signs a group
commit (default 1: every event signed alone, the costliest mix).

The links then send everything as fast as the node reads (TCP's own
backpressure, and the node's per-link rate limits, which this feed stays
under), taking turns 16 frames at a time so that they move through the
events' Lamport times together, as concurrent events reach a node; a
thread per link reads and counts what the node relays.
Measured: events/s from the first byte sent until ``GET /status`` says
the node holds and has applied them all (polled every 0.2 s, so good to
that), the node's CPU time per event, and what it relayed.  Zero loss:
the node ends holding every event fed, all applied.

Target (``docs/benchmarks.rst``): 10,000 events/s.  The machine must have
at least two CPUs (one for the node, one for the feed).

Run ``python benchmarks/bench_ingest.py [--events N] [--quick] [--json PATH]``;
full: 40,000 events, about 30 s; ``--quick``: 4,000 events, about 10 s.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from _cluster import (
    NETWORK,
    NodeProcess,
    add_signed_together,
    cleanup_on_interrupt,
    client_tls_context,
    frame,
    machine_info,
    pin,
    print_table,
    wait_api,
    wait_until,
)
from _results import Results, add_arguments

from bitfitech.config import GossipTiming
from bitfitech.market.events import Author, Event
from bitfitech.testing import free_ports
from bitfitech.wire.messages import (
    PROTOCOL_VERSION,
    Events,
    Verack,
    Version,
)
from bitfitech.witnesses import WitnessSet

PAIR = "BTC/USD"
TARGET = 10_000
"""Events a second the node should take in (the replication hot path's target)."""
POLL_S = 0.2


def sign_events(count: int, authors: int, seed: int, together: int = 1) -> list[list[Event]]:
    """
    C{count} orders of C{authors} keys, per author in its own order: buys
    and sells around one price, so that about a third of them cross.  Each
    author signs C{together} of its events at a time (one batch signature,
    as a node signs a group commit); 1 signs every event alone.
    """
    rng = random.Random(seed)
    keys = [Author(rng.randbytes(32), NETWORK, PAIR) for _ in range(authors)]
    chains: list[list[Event]] = [[] for _ in keys]
    now_ms = int(time.time() * 1000)
    for n in range(count):
        index = n % authors
        chain = chains[index]
        side = "buy" if rng.random() < 0.5 else "sell"
        offset = rng.randint(-20, 20) + (5 if side == "buy" else -5)
        price = str(Decimal(50_000 + offset))
        amount = str(Decimal(rng.randint(1, 50)) / 100)
        chain.append(
            keys[index].draft_order(len(chain) + 1, n + 1, now_ms, side, "limit", price, amount)
        )
    for key, chain in zip(keys, chains, strict=True):
        for start in range(0, len(chain), together):
            key.sign(chain[start : start + together])
    return chains


def feed_frames(chains: Sequence[list[Event]], links: int, per_message: int) -> list[list[bytes]]:
    """Per link, the frames it sends: its authors' events, interleaved, in chain order."""
    ttl = GossipTiming().ttl
    out: list[list[bytes]] = [[] for _ in range(links)]
    for link in range(links):
        mine = [chain for index, chain in enumerate(chains) if index % links == link]
        longest = max(map(len, mine), default=0)
        interleaved = [chain[i] for i in range(longest) for chain in mine if i < len(chain)]
        for start in range(0, len(interleaved), per_message):
            part = interleaved[start : start + per_message]
            out[link].append(frame(Events(tuple(e.wire for e in part), ttl=ttl, more=False)))
    return out


@dataclass
class Link:
    """One feeding link: its socket, what it sends, what it read back."""

    sock: ssl.SSLSocket
    frames: list[bytes]
    received: int = 0
    error: str = ""
    reader: threading.Thread | None = field(default=None, repr=False)

    def read(self) -> None:
        """Count what the node sends until it closes the link."""
        try:
            while data := self.sock.recv(1 << 16):
                self.received += len(data)
        except (OSError, ssl.SSLError) as e:
            self.error = self.error or f"read: {e}"


CHUNK = 16
"""Frames a link sends at a time before the next link's turn."""


def send_all(links: Sequence[Link]) -> None:
    """
    Send every link's frames, the links taking turns a chunk at a time, so
    that they move through the events' Lamport times together, as a
    network's concurrent events arrive (links that drifted apart would
    have the node replay thousands of events at each late one).
    """
    rounds = max((len(link.frames) for link in links), default=0)
    for start in range(0, rounds, CHUNK):
        for link in links:
            chunk = link.frames[start : start + CHUNK]
            if not chunk or link.error:
                continue
            try:
                link.sock.sendall(b"".join(chunk))
            except (OSError, ssl.SSLError) as e:
                link.error = f"send: {e}"


def connect(port: int, directory: str, rng: random.Random, frames: list[bytes]) -> Link:
    """A link to the node, past its handshake, reading in a thread of its own."""
    context, node_id = client_tls_context(directory, rng)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = context.wrap_socket(raw)
    hello = Version(PROTOCOL_VERSION, NETWORK, PAIR, node_id, 0, "bitfi-bench-ingest/0", (),
                    rng.randrange(1, 2**64), int(time.time()), WitnessSet().digest)  # fmt: skip
    sock.sendall(frame(hello) + frame(Verack()))
    link = Link(sock, frames)
    link.reader = threading.Thread(target=link.read, daemon=True)
    link.reader.start()
    return link


def trace_line(at: float, status: dict[str, Any]) -> str:
    """One line of ``--trace``: the node's progress at C{at} seconds."""
    market = status["market"]
    return (
        f"{at:6.2f} s: held {status['events']:,}, applied {market['applied']:,}, buffered "
        f"{market['buffered']:,}; rollbacks {market['rollbacks']:,} replaying "
        f"{market['replayed']:,}; apply delay {market['apply_delay_ms']} ms"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="events fed [40,000; quick 4,000]")
    parser.add_argument("--authors", type=int, default=200, help="signing keys [200]")
    parser.add_argument("--links", type=int, default=4, help="feeding peer links [4]")
    parser.add_argument("--per-message", type=int, default=4, help="events per events message [4]")  # noqa: E501
    add_signed_together(parser)
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait, s [120]")
    parser.add_argument(
        "--trace", action="store_true",
        help="print the node's progress at every poll (held, applied, rollbacks, apply delay)",
    )  # fmt: skip
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 4_000 if args.quick else 40_000
    if args.events < 1 or args.authors < 1 or args.links < 1 or not 1 <= args.per_message <= 100:
        parser.error("--events, --authors and --links at least 1; --per-message 1 to 100")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error(f"needs two CPUs, one for the node and one for the feed; this has {cpus}")
    report = Results("bench_ingest", quick=args.quick)
    rng = random.Random(7)
    prepared = time.monotonic()
    chains = sign_events(args.events, args.authors, seed=7, together=args.signed_together)
    feeds = feed_frames(chains, args.links, args.per_message)
    prepared = time.monotonic() - prepared
    fed_bytes = sum(len(data) for feed in feeds for data in feed)
    base = tempfile.mkdtemp(prefix="bitfi-ingest-")
    api_port, port = free_ports(2)
    node = NodeProcess(0, base, port, api_port, outbound=0, max_peers=args.links + 4)
    # The feed comes from one address, as fast as the node reads it.
    node.args += ["--ban-duration", "0"]
    links: list[Link] = []
    with cleanup_on_interrupt():
        try:
            node.start()
            wait_api(node)
            threads = pin(node.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
            links = [connect(node.port, base, rng, feed) for feed in feeds]
            wait_until(lambda: len(node.api.get("/peers")) == args.links, 30, "the links")
            pin(node.pid, {cpus[0]})  # threads started since
            cpu_before = node.cpu_seconds()
            started = time.monotonic()
            sender = threading.Thread(target=send_all, args=(links,), daemon=True)
            sender.start()
            held = applied = 0
            deadline = started + args.timeout
            while time.monotonic() < deadline:
                status = node.api.get("/status")
                held, applied = status["events"], status["market"]["applied"]
                if args.trace:
                    print(trace_line(time.monotonic() - started, status), flush=True)
                if held >= args.events and applied >= args.events:
                    break
                time.sleep(POLL_S)
            took = time.monotonic() - started
            cpu = node.cpu_seconds() - cpu_before
            sender.join(timeout=5)
            status = node.api.get("/status")
            problems = node.log_problems()
        finally:
            for link in links:
                link.sock.close()
            node.stop()
    errors = [link.error for link in links if link.error]
    lost = args.events - min(held, applied)
    rate = min(held, applied) / took if took else float("nan")
    relayed = sum(link.received for link in links)
    gossip = status.get("gossip", {})
    market = status.get("market", {})
    rows = [
        ("events fed; authors; links; events per message",
         f"{args.events:,}; {args.authors}; {args.links}; {args.per_message}"),
        ("events per signature", f"{args.signed_together}"),
        ("signing and framing them, before the clock (s)", f"{prepared:.1f}"),
        ("bytes fed (frames, before TLS)", f"{fed_bytes:,}"),
        ("node threads pinned to CPU", f"{threads} to CPU {cpus[0]}; feed on {cpus[1:]}"),
        ("first byte sent to all held and applied (s)", f"{took:.2f}"),
        ("events/s taken in", f"{rate:,.0f}"),
        ("node CPU per event (us)", f"{cpu / max(1, applied) * 1e6:.0f}"),
        ("node CPU busy (of the time)", f"{cpu / took:.0%}" if took else "-"),
        ("bytes relayed back to the links (after TLS)", f"{relayed:,}"),
        ("events held / applied at the end", f"{held:,} / {applied:,}"),
        ("lost (fed, not held and applied)", f"{lost:,}"),
        ("ledger rollbacks / events replayed",
         f"{market.get('rollbacks', 0):,} / {market.get('replayed', 0):,}"),
        ("journal writes; apply delay at the end (ms)",
         f"{market.get('journal_writes', 0):,}; {market.get('apply_delay_ms', 0)}"),
        ("events pushed / announced by the node",
         f"{gossip.get('events_pushed', 0):,} / {gossip.get('inv_sent', 0):,}"),
        ("link errors", "; ".join(errors) or "none"),
        ("node log: warnings and errors", str(len(problems))),
    ]  # fmt: skip
    print_table(f"one node taking in events: {machine_info()}", rows)
    for line in problems[:5]:
        print(f"  {line[:200]}")
    met = rate >= TARGET and lost == 0
    report.add("events/s taken in by one node on one core (TLS, 4 links, relayed)",
               round(rate), "events/s", f">= {TARGET:,} events/s", rate >= TARGET)  # fmt: skip
    report.add("events lost", lost, "events", "0", lost == 0)
    report.add("node CPU per event", round(cpu / max(1, applied) * 1e6), "us")
    report.add("events replayed by rollbacks per event", round(
        market.get("replayed", 0) / max(1, applied), 2), "events")  # fmt: skip
    report.write(args.json)
    print_table("targets", [
        (f"events/s >= {TARGET:,}", f"{rate:,.0f}: {'met' if rate >= TARGET else 'MISSED'}"),
        ("lost = 0", f"{lost}: {'met' if lost == 0 else 'MISSED'}"),
    ])  # fmt: skip
    if met or not problems:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0 if lost == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
