"""
Tests for the user's own key in :mod:`bitfitech.cli`: ``bitfi key``,
orders and cancels signed by the command (``--key``, ``--user-key``,
``$BITFI_KEY``), ``--mine``, and ``--ca-bundle`` for a node behind TLS.
The key file and the record of sent events themselves
(:mod:`bitfitech.userkey`) are tested in ``tests/test_userkey.py``.

Most run :func:`~bitfitech.cli.main` in a thread against :class:`FakeNode`,
a small HTTP server in the reactor that checks signed events as a node
does (the real :func:`~bitfitech.market.events.decode_event`) and records
every byte it receives; :class:`RealNodeTests` run it against real nodes
of a :class:`~bitfitech.testing.LocalCluster`.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import nacl.bindings
from twisted.internet import ssl as twisted_ssl
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bitfitech import cli, userkey
from bitfitech.config import parse_market_slug
from bitfitech.identity import KEY_FILE_HEADER
from bitfitech.market.events import Author, Event, EventError, decode_event, parse_event
from bitfitech.node import Node
from bitfitech.testing import (
    HANG_GUARD,
    CertificateAuthority,
    ClusterTestCase,
    global_reactor,
    poll_until,
    wait_for,
    write_pem,
)
from bitfitech.userkey import open_user_key

from .test_cli import FakeServer, Run, bitfi, run_local, url_of

NETWORK = "test"
PAIR = "BTC/USD"


def key_env(test: SynchronousTestCase) -> dict[str, str]:
    """An environment whose default key file is under a new directory of C{test}'s."""
    return {"XDG_CONFIG_HOME": os.path.abspath(test.mktemp())}


def seed_of(path: str) -> bytes:
    """The seed in the key file C{path}."""
    with open(path) as key_file:
        return bytes.fromhex(key_file.read().splitlines()[1])


def public_of(path: str) -> str:
    """The public key of the key file C{path}."""
    return nacl.bindings.crypto_sign_seed_keypair(seed_of(path))[0].hex()


def secrets_of(path: str) -> list[bytes]:
    """Every form of the key file C{path}'s secret that must never leave the command."""
    seed = seed_of(path)
    secret = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
    forms = [seed, secret, secret[:32]]
    return [*forms, *(f.hex().encode() for f in forms), *(f.hex().upper().encode() for f in forms)]


class FakeNode:
    """
    An HTTP server in the reactor that takes signed events as a node's API
    does: ``GET /keys/{key}``, ``POST /events``, ``POST /events/batch``,
    ``GET /keys/{key}/orders``, ``GET /keys/{key}/trades``,
    ``GET /orders/{id}``, each also under ``/markets/{slug}`` for that
    market (today's paths are :data:`PAIR`'s).  Events are checked with the real
    :func:`~bitfitech.market.events.decode_event`; an author's chain must go
    on without gaps.

    :ivar received: every request, as the bytes of its method, URI,
        headers and body.
    :ivar paths: every request, as ``METHOD URI``.
    :ivar events: the events taken, in order.
    :ivar cancelled: the ids of the orders a cancel was taken for.
    :ivar foreign: orders held as another key's: id to author.
    :ivar refuse: an error that ``POST /events`` (and the batch) answers
        with 400, if set.
    :ivar hang: if true, ``POST /events`` never answers.
    :ivar lamport: the Lamport time ``GET /keys`` reports, if set (else one
        above the last event's).
    """

    def __init__(self, test: TestCase) -> None:
        self.received: list[bytes] = []
        self.paths: list[str] = []
        self.events: list[Event] = []
        self.cancelled: set[str] = set()
        self.refuse: str | None = None
        self.hang = False
        self.lamport: int | None = None
        self.foreign: dict[str, str] = {}
        self._open: list[Request] = []
        node = self

        class Root(Resource):
            isLeaf = True

            def render(self, request: Request) -> Any:
                return node._render(request)

        self.port = global_reactor().listenTCP(0, Site(Root()), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        test.addCleanup(self.close)

    async def close(self) -> None:
        for request in self._open:
            if not request.finished and not request._disconnected:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
        await self.port.stopListening()

    def chain(self, author: str, pair: str = PAIR) -> list[Event]:
        """The events of C{author} taken on C{pair}, in seq order."""
        return [e for e in self.events if e.author == author and e.pair == pair]

    def _render(self, request: Request) -> Any:
        assert request.content is not None
        body = request.content.read()
        headers = b"".join(
            name + b": " + b", ".join(values) + b"\n"
            for name, values in request.requestHeaders.getAllRawHeaders()
        )
        self.received.append(request.method + b" " + request.uri + b"\n" + headers + body)
        path = request.path.decode()
        self.paths.append(f"{request.method.decode()} {request.uri.decode()}")
        request.setHeader(b"content-type", b"application/json")
        status, document = self._answer(request, request.method.decode(), path, body)
        if status == 0:
            self._open.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        return json.dumps(document).encode()

    def _answer(self, request: Request, method: str, path: str, body: bytes) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        pair = PAIR
        if parts[0] == "markets" and len(parts) > 2:
            pair = parse_market_slug(parts[1])
            parts = parts[2:]
            path = "/" + "/".join(parts)
        if method == "GET" and parts[0] == "keys" and len(parts) == 2:
            chain = self.chain(parts[1], pair)
            lamport = self.lamport or max((e.lamport for e in self.events), default=0) + 1
            return 200, {"key": parts[1], "network": NETWORK, "pair": pair, "lamport": lamport,
                         "next_seq": len(chain) + 1, "events": len(chain)}  # fmt: skip
        if method == "GET" and parts[0] == "keys" and parts[2:] == ["orders"]:
            orders = [self.order_doc(e) for e in reversed(self.chain(parts[1])) if e.is_order]
            return 200, {"orders": orders}
        if method == "GET" and parts[0] == "keys" and parts[2:] == ["trades"]:
            return 200, {"trades": []}
        if method == "GET" and parts[0] == "orders" and len(parts) == 2:
            if parts[1] in self.foreign:
                foreign = {"id": parts[1], "author": self.foreign[parts[1]]}
                return 200, {**self.order_doc(None), **foreign}
            for event in self.events:
                if event.id == parts[1]:
                    return 200, self.order_doc(event)
            return 404, {"error": f"no order {parts[1]}"}
        if method == "POST" and path in ("/events", "/events/batch"):
            if self.hang:
                return 0, None
            if self.refuse is not None:
                return 400, {"error": self.refuse}
            given = json.loads(body)
            batch = given["events"] if path == "/events/batch" else [given]
            try:
                documents = self.take(batch, pair)
            except EventError as error:
                return 400, {"error": str(error)}
            return 201, {"events": documents} if path == "/events/batch" else documents[0]
        return 404, {"error": "no such page"}

    def take(self, batch: list[dict[str, str]], pair: str = PAIR) -> list[dict[str, Any]]:
        """Check every event of C{batch} on C{pair}, then take them all (or raise EventError)."""
        decoded: list[Event] = []
        for index, entry in enumerate(batch):
            try:
                event = decode_event(entry["text"], entry["sig"], NETWORK, pair)
            except EventError as error:
                raise EventError(f"bad_signature: events[{index}]: {error}") from None
            held = self.chain(event.author, pair) + [e for e in decoded if e.author == event.author]
            if event.seq <= len(held) and held[event.seq - 1] != event:
                raise EventError(f"seq_taken: seq {event.seq} is another event's")
            if event.seq > len(held) + 1:
                raise EventError(f"seq_gap: seq {event.seq} after {len(held)}")
            if event.seq == len(held) + 1:
                decoded.append(event)
        documents = []
        for event in decoded:
            self.events.append(event)
            if not event.is_order:
                self.cancelled.add(event.target)
            target = event if event.is_order else self.held(event.target)
            documents.append({
                "id": event.id, "author": event.author, "seq": event.seq, "kind": event.kind,
                "status": "applied", "order": None if target is None else self.order_doc(target),
            })  # fmt: skip
        return documents

    def held(self, order_id: str) -> Event | None:
        """The order C{order_id}, if taken."""
        return next((e for e in self.events if e.id == order_id), None)

    def order_doc(self, event: Event | None) -> dict[str, Any]:
        """An order document, as ``GET /orders/{id}`` gives it."""
        if event is None:
            return {"id": "0" * 64, "side": "buy", "type": "limit", "price": "1", "amount": "1",
                    "remaining": "1", "filled": "0", "status": "open", "reason": None,
                    "author": "f" * 64, "seq": 1, "created_at": 0, "trades": []}  # fmt: skip
        cancelled = event.id in self.cancelled
        return {"id": event.id, "side": event.side, "type": event.order_type,
                "price": event.price, "amount": event.amount, "remaining": event.amount,
                "filled": "0", "status": "cancelled" if cancelled else "open",
                "reason": "user" if cancelled else None, "author": event.author,
                "seq": event.seq, "created_at": event.ts, "trades": []}  # fmt: skip


class KeyFileTests(SynchronousTestCase):
    """
    ``bitfi key``: what it prints, which file the command uses, and a key
    file it cannot use (exit 1).  The file itself is tested in
    ``tests/test_userkey.py``.
    """

    def test_made_on_first_use(self) -> None:
        env = key_env(self)
        run = run_local("key", environ=env)
        path = os.path.join(env["XDG_CONFIG_HOME"], "bitfi", "key")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(run.out, public_of(path) + "\n")
        self.assertIn(f"bitfi: made your key in {path} (mode 0600; public key", run.err)

        again = run_local("key", "--json", environ=env)
        self.assertEqual((again.code, again.err), (0, ""))
        self.assertEqual(again.json(), {"key": run.out.strip(), "path": path})
        self.assertEqual(run_local("key", environ=env).err, f"bitfi: your key is in {path}\n")

    def test_where(self) -> None:
        """--key, then $BITFI_KEY, then the default file (:func:`default_key_path`)."""
        home = os.path.abspath(self.mktemp())
        chosen = os.path.join(os.path.abspath(self.mktemp()), "deep", "mine.key")
        cases = [
            (["--key", chosen], {"HOME": home}, chosen),
            (["--key", chosen], {"BITFI_KEY": "elsewhere", "HOME": home}, chosen),
            ([], {"BITFI_KEY": chosen, "XDG_CONFIG_HOME": "/nowhere"}, chosen),
            ([], {"HOME": home}, os.path.join(home, ".config", "bitfi", "key")),
        ]
        for argv, env, where in cases:
            run = run_local("key", "--json", *argv, environ=env)
            self.assertEqual(run.code, 0, (argv, env, run))
            self.assertEqual(run.json()["path"], where, (argv, env))
            self.assertEqual(run.json()["key"], public_of(where))

    def test_refused_when_others_may_read_it(self) -> None:
        env = key_env(self)
        self.assertEqual(run_local("key", environ=env).code, 0)
        path = os.path.join(env["XDG_CONFIG_HOME"], "bitfi", "key")
        os.chmod(path, 0o644)
        for argv in (["key"], ["--user-key", "buy", "1", "100"], ["orders", "--mine"]):
            run = run_local("--node", "http://127.0.0.1:1", *argv, environ=env)
            self.assertEqual((run.code, run.out), (1, ""), argv)
            self.assertEqual(run.err, f"bitfi: your key file {path} may be read by others "
                                      f"(mode 0644): it must be yours alone; fix it "
                                      f"with: chmod 600 {path}\n")  # fmt: skip

    def test_damaged(self) -> None:
        """A file that is not a key: exit 1, with a message that never quotes the file."""
        path = os.path.join(os.path.abspath(self.mktemp()), "key")
        os.makedirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, f"{KEY_FILE_HEADER}\n{'ab' * 32}\nmore\n".encode())
        os.close(fd)
        run = run_local("key", "--key", path)
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(run.err, f"bitfi: your key file {path} is damaged: its second line must "
                                  "be the 64 hex digits of the seed, and nothing may "
                                  "follow\n")  # fmt: skip

    def test_no_key_to_read(self) -> None:
        """--mine and cancel need a key that exists (a new key has no orders)."""
        path = os.path.join(os.path.abspath(self.mktemp()), "key")
        for argv in (["orders", "--mine"], ["trades", "--mine"], ["cancel", "ab" * 32]):
            run = run_local("--node", "http://127.0.0.1:1", "--key", path, *argv)
            self.assertEqual((run.code, run.out), (1, ""), argv)
            self.assertEqual(run.err, f"bitfi: there is no key in {path} yet: `bitfi key` "
                                      "makes one (or give the file of yours with --key "
                                      "PATH)\n")  # fmt: skip
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    def test_help(self) -> None:
        run = run_local("--help")
        for text in ("--key PATH", "--user-key", "--ca-bundle FILE", "key "):
            self.assertIn(text, run.out)
        self.assertIn("--mine", run_local("orders", "--help").out)


class SigningTests(TestCase):
    """``buy``, ``sell`` and ``cancel`` signed by the user's key, against a :class:`FakeNode`."""

    timeout = 30

    def setUp(self) -> None:
        self.node = FakeNode(self)
        self.env = key_env(self)
        self.path = os.path.join(self.env["XDG_CONFIG_HOME"], "bitfi", "key")

    def signed(self, index: int = -1) -> Event:
        """The event the node took at C{index}, checked again here."""
        event = self.node.events[index]
        checked = parse_event(event.text, event.sig, NETWORK, PAIR)
        self.assertTrue(decode_event(checked.text, checked.sig, NETWORK, PAIR))
        return checked

    async def on(self, *argv: str, node: FakeNode | None = None) -> Run:
        return await bitfi("--node", (node or self.node).url, *argv, environ=self.env)

    async def test_buy_signed_by_the_user(self) -> None:
        before = int(time.time() * 1000)
        run = await self.on("--user-key", "buy", "0.5", "100")
        self.assertEqual(run.code, 0, run)
        author = public_of(self.path)
        event = self.signed()
        self.assertEqual((event.author, event.seq, event.kind), (author, 1, "order"))
        self.assertEqual((event.side, event.order_type, event.price, event.amount),
                         ("buy", "limit", "100", "0.5"))  # fmt: skip
        self.assertGreaterEqual(event.lamport, before)
        self.assertGreaterEqual(event.ts, before)
        self.assertEqual(self.node.paths[:2], [f"GET /keys/{author}", "POST /events"])
        self.assertEqual(run.out.splitlines(), [
            f"order {event.id}",
            "buy limit 0.5 @ 100: open; filled 0, remaining 0.5",
            f"signed by your key {author[:16]}, seq 1: applied",
        ])  # fmt: skip
        self.assertIn("made your key", run.err)

        run = await self.on("--user-key", "sell", "2", "--type", "market", "--json")
        self.assertEqual((run.code, run.err), (0, ""))
        event = self.signed()
        self.assertEqual((event.seq, event.side, event.order_type, event.price),
                         (2, "sell", "market", None))  # fmt: skip
        self.assertGreater(event.lamport, self.node.events[0].lamport)
        self.assertEqual((run.json()["id"], run.json()["seq"]), (event.id, 2))

    async def test_key_option_and_environment(self) -> None:
        """--key PATH signs with that file; so does $BITFI_KEY; neither: the node signs."""
        other = os.path.join(os.path.abspath(self.mktemp()), "trader.key")
        run = await self.on("--key", other, "buy", "1", "100")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(self.signed().author, public_of(other))
        self.assertFalse(os.path.exists(self.path))  # the default file was not made
        self.env["BITFI_KEY"] = other
        run = await self.on("sell", "1", "101")
        self.assertEqual((run.code, self.signed().seq), (0, 2), run)
        del self.env["BITFI_KEY"]

        orders_paths: list[str] = []

        def posted(request: Request) -> bytes:
            orders_paths.append(request.path.decode())
            request.setResponseCode(201)
            return json.dumps({"id": "e" * 64, "side": "buy", "type": "limit", "price": "1",
                               "amount": "1", "filled": "0", "remaining": "1",
                               "status": "open"}).encode()  # fmt: skip

        server = FakeServer(self, {b"/orders": posted})
        self.assertEqual(run_local("key", environ=self.env).code, 0)  # a default key exists
        run = await bitfi("--node", server.url, "buy", "1", "1", environ=self.env)
        self.assertEqual((run.code, orders_paths), (0, ["/orders"]), run)

    async def test_lamport_and_seq(self) -> None:
        """Lamport: above the node's, this clock's and the last event's; seq: the node's next."""
        far = int(time.time() * 1000) + 10**9
        self.node.lamport = far
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        self.assertEqual(self.signed().lamport, far)
        self.node.lamport = 5  # a node that holds little: the clock and the record lead
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        self.assertEqual(self.signed().lamport, far + 1)

        key, _ = open_user_key(self.path, create=False)
        self.addCleanup(key.close)
        client = cli.NodeClient(self.node.url)

        def draft(author: Author, seq: int, lamport: int, ts: int) -> Event:
            return author.order(seq, lamport, ts, "buy", "limit", "99", "1")

        self.node.lamport = 7
        now = (far + 10**6) / 1000  # a clock past the record
        sent = await deferToThread(cli.send_signed, client, key, draft, lambda: now)
        self.assertEqual((sent.document["seq"], self.signed().lamport, self.signed().ts),
                         (3, far + 10**6, far + 10**6))  # fmt: skip
        await deferToThread(cli.send_signed, client, key, draft, lambda: now)  # same millisecond
        self.assertEqual((self.signed().seq, self.signed().lamport), (4, far + 10**6 + 1))

    async def test_cancel(self) -> None:
        run = await self.on("--user-key", "buy", "1", "100")
        order_id = self.signed().id
        run = await self.on("--user-key", "cancel", order_id.upper())
        self.assertEqual(run.code, 0, run)
        event = self.signed()
        self.assertEqual((event.kind, event.target, event.seq), ("cancel", order_id, 2))
        self.assertEqual(self.node.paths[-2:], [f"GET /keys/{event.author}", "POST /events"])
        self.assertEqual(run.out.splitlines(), [
            f"order {order_id}",
            "buy limit 1 @ 100: cancelled (user); filled 0, remaining 1",
            f"cancel {event.id}",
            f"signed by your key {event.author[:16]}, seq 2: applied",
        ])  # fmt: skip

        unknown = "ab" * 32  # an order this node does not hold: the cancel goes anyway
        run = await self.on("--user-key", "cancel", unknown)
        self.assertEqual(run.code, 0, run)
        self.assertEqual(run.out.splitlines()[0], f"order {unknown}: this node does not hold "
                                                  "it (yet); the cancel counts wherever it "
                                                  "is")  # fmt: skip

        foreign = "cd" * 32
        self.node.foreign[foreign] = "f" * 64
        taken = len(self.node.events)
        run = await self.on("--user-key", "cancel", foreign)
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(run.err, f"bitfi: order {foreign} was placed by the key {'f' * 64}, not "
                                  f"by yours ({event.author}): only its own key can cancel "
                                  "it\n")  # fmt: skip
        self.assertEqual(len(self.node.events), taken)

    async def test_no_secret_sent_or_shown(self) -> None:
        """The secret is in no request, no output, no record: only in the key file."""
        runs = [await self.on("--user-key", "buy", "1", "100")]
        runs.append(await self.on("--user-key", "--json", "sell", "1", "100"))
        runs.append(await self.on("--user-key", "cancel", self.node.events[0].id))
        runs.append(await self.on("--user-key", "orders", "--mine"))
        self.node.refuse = "bad_signature: no"
        runs.append(await self.on("--user-key", "buy", "1", "100"))
        self.assertEqual([r.code for r in runs], [0, 0, 0, 0, 1])
        forms = secrets_of(self.path)
        with open(self.path + ".sent", "rb") as record:
            kept = record.read()
        shown = [r.out.encode() + r.err.encode() for r in runs]
        for blob in [*self.node.received, *shown, kept]:
            for form in forms:
                self.assertNotIn(form, blob)
        self.assertEqual(len(self.node.received), 10)

    async def test_refused(self) -> None:
        """A 400 is exit 1 with the node's message; the seq it refused is used next."""
        self.node.refuse = "bad_signature: the signature is not the author's"
        run = await self.on("--user-key", "buy", "1", "100")
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(run.err.splitlines()[-1],
                         "bitfi: 400 bad_signature: the signature is not the author's")  # fmt: skip
        self.node.refuse = None
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        self.assertEqual(self.signed().seq, 1)

    async def test_resent_to_a_node_that_missed_them(self) -> None:
        """
        Events one node took go again, in one batch with the next, to a
        node that has not heard of them; their seqs are never signed anew.
        """
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        self.assertEqual((await self.on("--user-key", "buy", "2", "100")).code, 0)
        first, second = self.node.events
        other = FakeNode(self)
        run = await self.on("--user-key", "sell", "3", "100", node=other)
        self.assertEqual(run.code, 0, run)
        self.assertEqual(other.paths[-1], "POST /events/batch")
        self.assertEqual(other.events[:2], [first, second])
        self.assertEqual([e.sig for e in other.events[:2]], [first.sig, second.sig])
        self.assertEqual((other.events[2].seq, other.events[2].side), (3, "sell"))
        self.assertEqual(run.err.splitlines(), [
            f"bitfi: sent again your event {first.id} (seq 1), which this node did not hold yet",
            f"bitfi: sent again your event {second.id} (seq 2), which this node did not hold yet",
        ])  # fmt: skip
        self.assertEqual(run.out.splitlines()[-1], f"signed by your key {first.author[:16]}, "
                                                   "seq 3: applied")  # fmt: skip
        # The first node misses seq 3: it goes again.
        run = await self.on("--user-key", "--json", "buy", "4", "100")
        self.assertEqual(run.json()["seq"], 4)
        self.assertEqual(self.node.events[2], other.events[2])

    async def test_answer_lost(self) -> None:
        """An event whose answer never came is kept, and sent with the next one."""
        self.node.hang = True
        run = await self.on("--user-key", "--timeout", "0.5", "buy", "1", "100")
        self.assertEqual(run.code, 3)
        self.node.hang = False
        run = await self.on("--user-key", "buy", "2", "100")
        self.assertEqual(run.code, 0, run)
        self.assertEqual([(e.seq, e.amount) for e in self.node.events], [(1, "1"), (2, "2")])
        self.assertIn("(seq 1), which this node did not hold yet", run.err)

    async def test_record_too_short(self) -> None:
        """A node further behind than the record reaches: nothing is sent."""
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        with open(self.path + ".sent") as record:
            document = json.load(record)
        author = Author(seed_of(self.path), NETWORK, PAIR)
        later = [author.order(seq, 10 + seq, 10, "buy", "limit", "1", "1") for seq in (3, 4)]
        document["markets"][f"{NETWORK} {PAIR}"] = [list(e.wire) for e in later]
        with open(self.path + ".sent", "w") as record:
            json.dump(document, record)
        run = await self.on("--user-key", "buy", "1", "100", node=FakeNode(self))
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertIn("the node holds your key's events on test BTC/USD up to seq 0, but this "
                      "key signed up to seq 4", run.err)  # fmt: skip

        with open(self.path + ".sent", "w") as record:
            record.write("{")
        run = await self.on("--user-key", "buy", "1", "100")
        self.assertEqual(run.code, 1)
        self.assertIn("is not a record of sent events (version 1); move it away", run.err)

    async def test_disagreeing_record_dropped(self) -> None:
        """A node that holds other events at the seqs the record would resend: the record goes."""
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        other = FakeNode(self)
        author = Author(seed_of(self.path), NETWORK, PAIR)
        other.take([dict(zip(("text", "sig"), author.order(1, 1, 1, "sell", "limit", "5", "5")
                                                 .wire, strict=True))])  # fmt: skip
        # The node holds seq 1 (another event): nothing is resent, seq 2 is next.
        run = await self.on("--user-key", "buy", "1", "100", node=other)
        self.assertEqual((run.code, other.events[-1].seq), (0, 2), run)

        third = FakeNode(self)  # holds nothing: seqs 1 and 2 go again, and 1 is refused
        third.refuse = "seq_taken: seq 1 is another event's"
        run = await self.on("--user-key", "buy", "1", "100", node=third)
        self.assertEqual(run.code, 1)
        with open(self.path + ".sent") as record:
            self.assertEqual(json.load(record)["markets"][f"{NETWORK} {PAIR}"], [])

    async def test_old_node(self) -> None:
        """A node without the /keys API says so."""
        server = FakeServer(self, {})
        run = await bitfi("--node", server.url, "--user-key", "buy", "1", "1", environ=self.env)
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertIn("404 no such page: this node does not take events signed by your own key",
                      run.err)  # fmt: skip

    async def test_signed_in_a_market(self) -> None:
        """
        With --market, the key's chain and the event are that market's: the
        event names ETH/USD, goes to /markets/ETH-USD/events, and the record
        keeps each market's chain apart.
        """
        run = await self.on("--user-key", "buy", "0.5", "100")
        self.assertEqual(run.code, 0, run)
        run = await self.on("--user-key", "--market", "ETH/USD", "buy", "2", "3000")
        self.assertEqual(run.code, 0, run)
        self.env["BITFI_MARKET"] = "eth/usd"
        run = await self.on("--user-key", "sell", "1", "3100")
        self.assertEqual(run.code, 0, run)
        author = public_of(self.path)
        self.assertEqual(self.node.paths[2:], [
            f"GET /markets/ETH-USD/keys/{author}", "POST /markets/ETH-USD/events",
        ] * 2)  # fmt: skip
        btc, eth = self.node.chain(author), self.node.chain(author, "ETH/USD")
        self.assertEqual([e.seq for e in btc], [1])
        self.assertEqual([(e.seq, e.side, e.price) for e in eth],
                         [(1, "buy", "3000"), (2, "sell", "3100")])  # fmt: skip
        for event in eth:
            self.assertIn("ETH/USD", event.text)
            self.assertTrue(decode_event(event.text, event.sig, NETWORK, "ETH/USD"))
        record = userkey.SentEvents.load(self.path + ".sent")
        self.assertEqual([text for text, _ in record.events(NETWORK, "ETH/USD")],
                         [e.text for e in eth])  # fmt: skip
        self.assertEqual([text for text, _ in record.events(NETWORK, PAIR)], [btc[0].text])

        order_id = eth[0].id
        run = await self.on("--user-key", "cancel", order_id)
        self.assertEqual(run.code, 0, run)
        self.assertEqual(self.node.paths[-3:], [
            f"GET /markets/ETH-USD/orders/{order_id}", f"GET /markets/ETH-USD/keys/{author}",
            "POST /markets/ETH-USD/events",
        ])  # fmt: skip
        self.assertEqual(self.node.chain(author, "ETH/USD")[-1].target, order_id)

    async def test_mine(self) -> None:
        self.assertEqual((await self.on("--user-key", "buy", "1", "100")).code, 0)
        author = public_of(self.path)
        run = await self.on("orders", "--mine", "--state", "all", "--limit", "5")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(self.node.paths[-1],
                         f"GET /keys/{author}/orders?state=all&limit=5")  # fmt: skip
        header, row = run.out.splitlines()
        self.assertTrue(header.startswith("CREATED (UTC)"))
        self.assertIn(self.node.events[0].id, row)
        run = await self.on("trades", "--mine")
        self.assertEqual((run.code, run.out), (0, "no trades\n"))
        self.assertEqual(self.node.paths[-1], f"GET /keys/{author}/trades?limit=50")


def tls_node(test: TestCase) -> tuple[str, str]:
    """
    An HTTPS server on 127.0.0.1 whose certificate, for ``localhost``, is
    issued by a CA of its own (as a node behind a proxy with a private CA
    might be): its URL, and the CA's PEM file.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    authority = CertificateAuthority()
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = authority.issue(key.public_key(), "localhost")
    pem = leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    bundle = write_pem(os.path.abspath(test.mktemp()), authority.certificate)

    class Status(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            return b'{"node_id": "n"}'

    options = twisted_ssl.PrivateCertificate.loadPEM(pem).options()
    port = global_reactor().listenSSL(0, Site(Status()), options, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return f"https://localhost:{port.getHost().port}", bundle


class CABundleTests(TestCase):
    """An https:// node with its own certificate: refused, then trusted by --ca-bundle."""

    timeout = 30

    async def test_own_ca(self) -> None:
        url, bundle = tls_node(self)
        run = await bitfi("--node", url, "--json", "status")
        self.assertEqual((run.code, run.out), (3, ""))
        self.assertIn("TLS failed: unable to get local issuer certificate; to trust the node's "
                      "own certificate, pass it with --ca-bundle FILE (or BITFI_API_CA_BUNDLE)",
                      run.err)  # fmt: skip
        run = await bitfi("--node", url, "--ca-bundle", bundle, "--json", "status")
        self.assertEqual((run.code, run.err, run.json()), (0, "", {"node_id": "n"}))
        run = await bitfi("--node", url, "status", "--json",
                          environ={"BITFI_API_CA_BUNDLE": bundle})  # fmt: skip
        self.assertEqual((run.code, run.err), (0, ""))
        # The node's own BITFI_CA_BUNDLE (trust for peer links) is not the API's.
        run = await bitfi("--node", url, "status", environ={"BITFI_CA_BUNDLE": bundle})
        self.assertEqual(run.code, 3)

    def test_bad_bundle(self) -> None:
        missing = os.path.abspath(self.mktemp())
        not_pem = os.path.abspath(self.mktemp())
        with open(not_pem, "w") as bundle:
            bundle.write("hello\n")
        for path, message in ((missing, "No such file or directory"),
                              (not_pem, "no PEM certificate in it")):  # fmt: skip
            out, err = io.StringIO(), io.StringIO()
            argv = ["--node", "https://127.0.0.1:1", "--ca-bundle", path, "status"]
            self.assertEqual(cli.main(argv, stdout=out, stderr=err, environ={}), 2)
            self.assertEqual(err.getvalue(), f"bitfi: --ca-bundle {path}: {message}\n")


class RealNodeTests(ClusterTestCase):
    """A user's key against real nodes: every node holds the order as the key's; only it cancels."""

    timeout = 60

    async def test_signed_order_and_cancel(self) -> None:
        first = self.cluster.start_node()
        second = self.cluster.start_node(bootstrap_to=[first])
        await wait_for([first, second], lambda: len(second.peers.hub.links) == 1, HANG_GUARD,
                       self.reactor, "a link")  # fmt: skip
        env = key_env(self)
        path = os.path.join(env["XDG_CONFIG_HOME"], "bitfi", "key")

        async def on(node: Node, *argv: str) -> Run:
            return await bitfi("--node", url_of(node), *argv, environ=env)

        async def order_at(node: Node, order_id: str) -> Any:
            client = cli.NodeClient(url_of(node))
            answer = await deferToThread(client.request, "GET", f"/orders/{order_id}")
            return answer.document

        run = await on(first, "--user-key", "buy", "0.5", "100")
        self.assertEqual(run.code, 0, run)
        author = public_of(path)
        order_line, state, signed = run.out.splitlines()
        order_id = order_line.removeprefix("order ")
        self.assertEqual(state, "buy limit 0.5 @ 100: open; filled 0, remaining 0.5")
        self.assertEqual(signed, f"signed by your key {author[:16]}, seq 1: applied")
        await poll_until(self.reactor, lambda: second.control.order(order_id) is not None,
                         HANG_GUARD, "the order at the second node")  # fmt: skip
        for node in (first, second):
            order = await order_at(node, order_id)
            self.assertEqual((order["author"], order["seq"], order["status"]), (author, 1, "open"))
            self.assertNotEqual(author, node.market.author.author)
        run = await on(second, "orders", "--mine")
        self.assertEqual(run.code, 0, run)
        self.assertIn(order_id, run.out)
        self.assertEqual((await on(second, "orders")).out, "no orders\n")  # not the node's own

        # A sell by the first node's key meets it: the trade is the key's too.
        self.assertEqual((await on(first, "sell", "0.2", "100")).code, 0)
        await poll_until(self.reactor, lambda: bool(second.control.trades(1, 0)), HANG_GUARD,
                         "the trade at the second node")  # fmt: skip
        run = await on(second, "--json", "trades", "--mine")
        self.assertEqual(run.code, 0, run)
        [trade] = run.json()["trades"]
        self.assertEqual((trade["maker"], trade["amount"]), (order_id, "0.2"))

        # Neither node's key can cancel it; the user's key can, through either node.
        for node in (first, second):
            run = await on(node, "cancel", order_id)
            self.assertEqual(run.code, 1, run)
            self.assertEqual(run.err, f"bitfi: 403 order {order_id} was not placed by this node\n")
        run = await on(second, "--user-key", "cancel", order_id)
        self.assertEqual(run.code, 0, run)
        _, state, trade_line, cancel_line, signed = run.out.splitlines()
        self.assertEqual(state, "buy limit 0.5 @ 100: cancelled (user); filled 0.2, remaining 0.3")
        self.assertRegex(trade_line, r"^  trade [0-9a-f]{12}: 0\.2 @ 100 ")
        self.assertRegex(cancel_line, r"^cancel [0-9a-f]{64}$")
        self.assertEqual(signed, f"signed by your key {author[:16]}, seq 2: applied")

        def cancelled_at_first() -> bool:
            order = first.control.order(order_id)
            return order is not None and order["status"] == "cancelled"

        await poll_until(self.reactor, cancelled_at_first, HANG_GUARD, "the cancel at node 1")
        run = await on(first, "--json", "orders", "--mine", "--state", "closed")
        [closed] = run.json()["orders"]
        self.assertEqual((closed["id"], closed["status"]), (order_id, "cancelled"))

    async def test_resent_to_a_node_that_missed_them(self) -> None:
        """Two nodes not linked: the second gets the key's first event again, in a batch."""
        first, second = self.cluster.start_node(), self.cluster.start_node()
        env = key_env(self)
        run = await bitfi("--node", url_of(first), "--user-key", "buy", "1", "100", environ=env)
        self.assertEqual(run.code, 0, run)
        order_id = run.out.splitlines()[0].removeprefix("order ")
        run = await bitfi("--node", url_of(second), "--user-key", "--json", "cancel", order_id,
                          environ=env)  # fmt: skip
        self.assertEqual(run.code, 0, run)
        self.assertIn(f"sent again your event {order_id} (seq 1)", run.err)
        self.assertEqual((run.json()["seq"], run.json()["kind"]), (2, "cancel"))
        order = second.control.order(order_id)
        assert order is not None
        self.assertEqual((order["status"], order["author"]), ("cancelled", run.json()["author"]))
