"""The matching engine against the reference engine, operation by operation.

:mod:`tests.market.reference` is a slow, plain transcription of
``docs/matching.rst``; here :mod:`bitfitech.market.book` and
:mod:`bitfitech.replay` must give exactly its answers on random operation
streams: every operation's events, and the book left at the end.
Hypothesis streams shrink to a small failing example; the seeded
``random.Random`` loops add thousands of streams cheaply.
"""

from __future__ import annotations

import io
import json
import random
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitfitech.market.book import OpenOrder, OrderBook
from bitfitech.replay import main

from .reference import ReferenceBook, not_json, replay
from .strategies import (
    OWNERS,
    PROFILES,
    Profile,
    ReplayInput,
    Stream,
    apply,
    book_params,
    random_stream,
    reference_book,
    replay_input,
    replay_inputs,
    streams,
)

# Bulk sizes: the whole file runs in well under 20 s on two cores.
HYPOTHESIS_STREAMS = 500
RANDOM_STREAMS = 3000
HYPOTHESIS_REPLAYS = 150
RANDOM_REPLAYS = 200


def same_ids(events: list[Any]) -> list[tuple[Any, ...]]:
    """Events (as tuples) with any non-string order id written as ``str(id)``.

    The specification does not say how a rejection reports an id that is
    not a string (``None``, ``7``): as given, or as its ``str()``.  Both are
    accepted, by putting both sides through this before comparing.
    """
    return [
        (e[0], str(e[1]), *e[2:]) if len(e) == 4 and not isinstance(e[1], str) else tuple(e)
        for e in events
    ]


def depth_of(book: OrderBook | ReferenceBook) -> tuple[list[tuple[int, ...]], ...]:
    bids, asks = book.depth(10**6)
    return [tuple(level) for level in bids], [tuple(level) for level in asks]


def mismatch(stream: Stream, index: int, got: object, want: object) -> str:
    """A failure message that can be pasted into a unit test."""
    return (
        f"profile {stream.profile.name} {stream.profile.params}\n"
        f"after {list(stream.ops[:index])!r}\n"
        f"operation {stream.ops[index]!r}\n"
        f"engine:    {got!r}\n"
        f"reference: {want!r}"
    )


def check_stream(testcase: SynchronousTestCase, stream: Stream) -> None:
    """Both engines give the same events for every operation and end alike."""
    book = OrderBook(book_params(stream.profile))
    reference = reference_book(stream.profile)
    for index, op in enumerate(stream.ops):
        got = apply(book, op)
        want = apply(reference, op)
        if same_ids(got) != same_ids(want):
            testcase.fail(mismatch(stream, index, got, want))
    end = len(stream.ops) - 1
    checks: list[tuple[str, object, object]] = [
        ("depth", depth_of(book), depth_of(reference)),
        ("best_bid", book.best_bid(), reference.best_bid()),
        ("best_ask", book.best_ask(), reference.best_ask()),
    ]
    for owner in OWNERS:
        got_orders = [tuple(o) for o in book.orders_of(owner)]
        checks.append((f"orders_of({owner!r})", got_orders, reference.orders_of(owner)))
    for row in reference.open_orders():
        checks.append((f"order({row[0]!r})", book.order(row[0]), row))
        testcase.assertIsInstance(book.order(row[0]), OpenOrder)
    for op in stream.ops:
        if isinstance(op[1], str) and all(row[0] != op[1] for row in reference.open_orders()):
            checks.append((f"order({op[1]!r})", book.order(op[1]), None))
    for what, engine, expected in checks:
        if engine != expected:
            testcase.fail(f"{what} differs at the end\n" + mismatch(stream, end, engine, expected))


class EngineTests(SynchronousTestCase):
    """``OrderBook`` against ``ReferenceBook``."""

    @settings(max_examples=HYPOTHESIS_STREAMS)
    @given(streams(max_size=60))
    def test_streams(self, stream: Stream) -> None:
        """Random streams over every profile give the reference's events."""
        check_stream(self, stream)

    def test_random_streams(self) -> None:
        """Thousands of seeded random streams give the reference's events."""
        for seed in range(RANDOM_STREAMS):
            rng = random.Random(seed)
            profile = PROFILES[seed % len(PROFILES)]
            check_stream(self, random_stream(rng, profile, rng.randint(1, 80)))

    def test_long_streams(self) -> None:
        """A few long streams let deep books build up and sweep."""
        for seed in range(8):
            rng = random.Random(10_000 + seed)
            check_stream(self, random_stream(rng, PROFILES[seed % len(PROFILES)], 1500))


def run_replay(argv: list[str], text: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(argv, io.StringIO(text), stdout, stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def engine_hash(profile: Profile, lines: tuple[str, ...]) -> str:
    """The state hash of an engine given the good lines through its API."""
    book = OrderBook(book_params(profile))
    for line in lines:
        try:
            obj = json.loads(line, parse_float=Decimal, parse_constant=not_json)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            continue
        if obj.get("op") == "order":
            book.place(
                obj["id"],
                obj.get("side"),
                obj.get("price"),
                obj.get("amount"),
                obj.get("owner"),
                obj.get("type", "limit"),
            )
        elif obj.get("op") == "cancel":
            book.cancel(obj["id"])
    return book.state_hash()


def check_replay(testcase: SynchronousTestCase, data: ReplayInput, summary_only: bool) -> None:
    """The replay tool writes the reference's lines and reports the bad ones."""
    argv = data.profile.replay_options() + (["--summary-only"] if summary_only else [])
    status, out, err = run_replay(argv, data.text())
    where = f"argv {argv}, input:\n{data.text()}"
    testcase.assertEqual(status, 0, where)
    want, bad = replay(data.lines, summary_only=summary_only, **data.profile.params)  # type: ignore[arg-type]
    testcase.assertEqual(bad, list(data.bad))
    testcase.assertTrue(out.endswith("\n"), where)
    got = [json.loads(line) for line in out.splitlines()]
    testcase.assertTrue(got and "state_hash" in got[-1], where)
    state_hash = got[-1].pop("state_hash")
    testcase.assertEqual(got, want, where)
    testcase.assertEqual(state_hash, engine_hash(data.profile, data.lines), where)
    errors = [line for line in err.splitlines() if line.strip()]
    testcase.assertEqual(len(errors), len(bad), f"stderr:\n{err}\n{where}")
    for number, error in zip(bad, errors, strict=True):
        testcase.assertRegex(error, rf"(?<![0-9]){number}(?![0-9])", where)


class ReplayTests(SynchronousTestCase):
    """``bitfitech.replay.main`` against :func:`tests.market.reference.replay`."""

    @settings(max_examples=HYPOTHESIS_REPLAYS)
    @given(replay_inputs(max_size=40), st.booleans())
    def test_streams(self, data: ReplayInput, summary_only: bool) -> None:
        check_replay(self, data, summary_only)

    def test_random_streams(self) -> None:
        for seed in range(RANDOM_REPLAYS):
            rng = random.Random(seed)
            profile = PROFILES[seed % len(PROFILES)]
            stream = random_stream(rng, profile, rng.randint(1, 60))
            check_replay(self, replay_input(stream.ops, profile, rng), seed % 5 == 0)
