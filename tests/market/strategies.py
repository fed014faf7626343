"""Operation streams for the matching engine's property and differential tests.

An operation is a plain tuple: ``("place", order_id, side, price, amount,
owner, order_type)`` or ``("cancel", order_id)``.  Streams are drawn for a
:class:`Profile` (book parameters plus where to put prices and amounts):
prices cluster around a mid so orders cross often, amounts sit on a coarse
grid so fills are partial across levels, three owners meet each other (and
themselves, for self-trade prevention), and a small fraction of every field
is invalid.  Cancels aim at recent ids (open, filled or cancelled), at
unknown ids and at invalid ones.  Replay inputs are the same streams as JSON
lines, with bad lines (not JSON, ``NaN``, unknown op, no string id) and blank
lines mixed in.

The same vocabulary feeds two generators: hypothesis strategies
(:func:`streams`, which shrink) and :func:`random_stream`, a plain seeded
:class:`random.Random` loop for bulk differential runs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

from hypothesis import strategies as st

from .reference import canonical

Op = tuple[Any, ...]

SIDES = ("buy", "sell")
TYPES = ("limit", "ioc", "fok", "post_only", "market")
OWNERS = ("u1", "u2", "u3")

# Refused as any decimal field (price or amount).
BAD_DECIMALS: tuple[object, ...] = (
    "2e6",
    "1E3",
    "NaN",
    "nan",
    "Infinity",
    "inf",
    "-1",
    "+1",
    "-0",
    "",
    "1.",
    ".5",
    " 1",
    "1 ",
    "1\n",
    "1_000",
    "1,5",
    "1.2.3",
    "0x10",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11",  # fullwidth one
    "1" * 65,
    "0" * 63 + "10",  # 65 characters
    5,
    Decimal("5"),
    1.5,
    True,
    b"1",
    ["1"],
)
BAD_SIDES: tuple[object, ...] = ("BUY", "Sell", "", "b", "buy ", None, 1, ["buy"])
BAD_TYPES: tuple[object, ...] = ("LIMIT", "gtc", "stop", "", "post-only", None, 0, ["limit"])
BAD_NAMES: tuple[object, ...] = ("", "x" * 129, None, 7, b"u1", ["u1"])
BAD_CANCEL_IDS: tuple[object, ...] = ("", "x" * 129, None, 7)


@dataclass(frozen=True)
class Profile:
    """Book parameters and where streams put their prices and amounts."""

    name: str
    params: dict[str, str | None]  # keyword arguments of BookParams and ReferenceBook
    mid: int  # ticks
    grid: int  # lots
    odd_prices: tuple[str, ...]  # edge cases, valid or not
    odd_amounts: tuple[str, ...]
    spread: int = 6  # prices are mid +- spread ticks
    tick: Fraction = field(init=False)
    lot: Fraction = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tick", Fraction(self.params.get("tick") or "0.01"))
        object.__setattr__(self, "lot", Fraction(self.params.get("lot") or "0.00000001"))

    @property
    def self_trade(self) -> str:
        return self.params.get("self_trade") or "expire-maker"

    def price_text(self, ticks: int, zeros: int = 0) -> str:
        """A price as a decimal string, with ``zeros`` harmless trailing zeros."""
        return pad(canonical(ticks * self.tick), zeros)

    def amount_text(self, lots: int, zeros: int = 0) -> str:
        return pad(canonical(lots * self.lot), zeros)

    def replay_options(self) -> list[str]:
        """The replay tool's options for these parameters."""
        argv = []
        for key, value in self.params.items():
            if value is not None:
                argv += ["--" + key.replace("_", "-"), value]
        return argv


def pad(text: str, zeros: int) -> str:
    """Add trailing zeros after the point, which never change the value."""
    if zeros == 0:
        return text
    return text + ("" if "." in text else ".") + "0" * zeros


DEFAULT = Profile(
    "default",
    {},
    mid=5_000_000,  # 50000
    grid=25_000_000,  # 0.25
    odd_prices=(
        "50000.005",
        "50000.001",
        "0.001",
        "0",
        "0.00",
        "0.01",
        "1000000000",
        "1000000000.00",
        "1000000000.01",
        "1000000001",
        "0" * 58 + "50000",  # 63 characters, valid
    ),
    odd_amounts=(
        "0",
        "0.00000000",
        "0.000000001",
        "0.00000001",
        "1000000000",
        "1000000000.00000001",
        "1000000001",
        "0" * 60 + "1.5",  # 64 characters, valid
    ),
)
SMALL = Profile(
    "small",
    {"tick": "0.5", "lot": "0.001"},
    mid=200,  # 100
    grid=250,  # 0.25
    odd_prices=("100.25", "100.1", "0", "0.0", "0.5", "1000000000", "1000000000.5", "100.5000"),
    odd_amounts=("0.0005", "0.000", "0.001", "1000000000", "1000000000.001", "2.0000000"),
)
BOUNDED = Profile(
    "bounded-allow",
    {
        "tick": "0.5",
        "lot": "0.001",
        "min_amount": "0.1",
        "max_amount": "1.5",
        "max_price": "102.5",
        "self_trade": "allow",
    },
    mid=200,
    grid=125,  # 0.125
    odd_prices=("102.5", "102.50", "103", "102.25", "0", "0.5", "1000"),
    odd_amounts=("0.1", "0.099", "0.05", "1.5", "1.501", "1.500", "2", "0"),
)
ODD = Profile(
    "odd-increments",
    {"tick": "0.25", "lot": "0.3", "max_amount": "30", "max_price": "500"},
    mid=400,  # 100
    grid=1,  # 0.3
    odd_prices=("100.1", "100.125", "100.250", "0", "500", "500.25", "0.25"),
    odd_amounts=("0.1", "0.30", "0.6000", "30", "30.3", "0", "0.3"),
)
PROFILES = (DEFAULT, SMALL, BOUNDED, ODD)


def book_params(profile: Profile) -> Any:
    """The engine's parameters for a profile."""
    from bitfitech.market.book import BookParams

    return BookParams(**profile.params)  # type: ignore[arg-type]


def reference_book(profile: Profile) -> Any:
    from .reference import ReferenceBook

    return ReferenceBook(**profile.params)  # type: ignore[arg-type]


class Stream:
    """A profile and the operations to run on a book built from it.

    Not a dataclass, so that hypothesis shows a failing stream by its
    ``repr``: the profile's name and one operation per line.
    """

    def __init__(self, profile: Profile, ops: tuple[Op, ...]) -> None:
        self.profile = profile
        self.ops = ops

    def __repr__(self) -> str:
        lines = "".join(f"\n    {op!r}," for op in self.ops)
        return f"Stream({self.profile.name} {self.profile.params}, ops=[{lines}\n])"


class NamedTrade(NamedTuple):
    """A trade, ``("trade", seq, taker, maker, side, price, amount)``, by name."""

    seq: int
    taker: str
    maker: str
    side: str
    price: int
    amount: int


class NamedOrderUpdate(NamedTuple):
    """An order update, ``(state, order_id, remaining, reason)``, by name."""

    state: str
    order_id: str
    remaining: int
    reason: str


def named(update: tuple[Any, ...]) -> NamedTrade | NamedOrderUpdate:
    """A documented book update (a trade or an order update) with named fields."""
    if len(update) == 7 and update[0] == "trade":
        return NamedTrade(*update[1:])
    if len(update) == 4 and update[0] != "trade":
        return NamedOrderUpdate(*update)
    raise AssertionError(f"not a book update: {update!r}")


def apply(book: Any, op: Op) -> list[tuple[Any, ...]]:
    """Run one operation on the engine or the reference; its updates."""
    if op[0] == "place":
        return list(book.place(*op[1:]))
    return list(book.cancel(op[1]))


# Hypothesis strategies.

INVALID_ONE_IN = 40  # each field is invalid about once in this many orders


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    """Usually a draw from ``valid``; now and then one from ``invalid``."""
    return st.tuples(st.integers(0, INVALID_ONE_IN - 1), valid, invalid).map(
        lambda t: t[2] if t[0] == INVALID_ONE_IN - 1 else t[1]
    )


def prices(profile: Profile) -> st.SearchStrategy[str]:
    offsets = st.integers(-profile.spread, profile.spread)
    zeros = st.sampled_from((0, 0, 0, 0, 1, 3))
    return st.builds(lambda k, z: profile.price_text(profile.mid + k, z), offsets, zeros)


def amounts(profile: Profile) -> st.SearchStrategy[str]:
    grid = st.integers(1, 8).map(lambda k: k * profile.grid)
    odd = st.sampled_from((1, profile.grid + 1, 3 * profile.grid - 1))  # off the grid
    return st.one_of(grid, grid, grid, odd).map(profile.amount_text)


@st.composite
def place_spec(draw: st.DrawFn, profile: Profile) -> tuple[Any, ...]:
    """An order without its id: (id choice, side, price, amount, owner, type)."""
    order_type = draw(mostly(st.sampled_from(TYPES), st.sampled_from(BAD_TYPES)))
    side = draw(mostly(st.sampled_from(SIDES), st.sampled_from(BAD_SIDES)))
    if order_type == "market":
        price = draw(mostly(st.none(), prices(profile)))
    else:
        odd = st.sampled_from((None, *profile.odd_prices, *BAD_DECIMALS))
        price = draw(mostly(prices(profile), odd))
    odd_amount = st.sampled_from((None, *profile.odd_amounts, *BAD_DECIMALS))
    amount = draw(mostly(amounts(profile), odd_amount))
    owner = draw(mostly(st.sampled_from(OWNERS), st.sampled_from(BAD_NAMES)))
    # 0: reuse a recent id (open: duplicate_id; closed: a legal reuse),
    # 1: an invalid id, 2: a long valid id, else a fresh id.
    id_choice = draw(st.integers(0, 29))
    return (id_choice, side, price, amount, owner, order_type)


def cancel_spec() -> st.SearchStrategy[tuple[Any, ...]]:
    # 0-7: the k-th most recent limit or post-only id (often still open),
    # 8-9: a recent id of any type, 10: the oldest, 11: unknown, 12: invalid.
    return st.tuples(st.just("cancel"), st.integers(0, 12))


def op_specs(profile: Profile) -> st.SearchStrategy[tuple[Any, ...]]:
    place = place_spec(profile)
    return st.one_of(place, place, place, cancel_spec())


def resolve(specs: list[tuple[Any, ...]], seed: int = 0) -> tuple[Op, ...]:
    """Turn drawn specs into operations, giving ids and aiming cancels."""
    ids: list[str] = []
    resting: list[str] = []  # ids of limit and post-only orders
    ops: list[Op] = []
    for i, spec in enumerate(specs):
        if spec[0] == "cancel":
            k = spec[1]
            if k < 8 and resting:
                target: object = resting[-1 - k % len(resting)]
            elif k < 10 and ids:
                target = ids[-1 - k % len(ids)]
            elif k == 10 and ids:
                target = ids[0]
            elif k == 12:
                target = BAD_CANCEL_IDS[(i + seed) % len(BAD_CANCEL_IDS)]
            else:
                target = f"unknown{i}"
            ops.append(("cancel", target))
            continue
        id_choice, side, price, amount, owner, order_type = spec
        if id_choice == 0 and ids:
            order_id: object = ids[-1 - (i + seed) % min(len(ids), 4)]
        elif id_choice == 1:
            order_id = BAD_NAMES[(i + seed) % len(BAD_NAMES)]
        elif id_choice == 2:
            order_id = f"o{i}".rjust(128, "x")
        else:
            order_id = f"o{i}"
        if isinstance(order_id, str) and order_id not in ids:
            ids.append(order_id)
            if order_type in ("limit", "post_only"):
                resting.append(order_id)
        ops.append(("place", order_id, side, price, amount, owner, order_type))
    return tuple(ops)


@st.composite
def streams(
    draw: st.DrawFn, profile: Profile | None = None, max_size: int = 40, min_size: int = 0
) -> Stream:
    """A random operation stream, for ``profile`` or any of :data:`PROFILES`."""
    chosen = draw(st.sampled_from(PROFILES)) if profile is None else profile
    specs = draw(st.lists(op_specs(chosen), min_size=min_size, max_size=max_size))
    return Stream(chosen, resolve(specs))


# The same vocabulary, from a seeded random.Random.


def random_stream(rng: random.Random, profile: Profile, size: int) -> Stream:
    """A stream drawn with ``rng``, for bulk runs that need no shrinking."""

    def mostly_(valid: Any, invalid: tuple[object, ...]) -> Any:
        return rng.choice(invalid) if rng.randrange(INVALID_ONE_IN) == 0 else valid

    def price() -> str:
        ticks = profile.mid + rng.randint(-profile.spread, profile.spread)
        return profile.price_text(ticks, rng.choice((0, 0, 0, 0, 1, 3)))

    def amount() -> str:
        if rng.randrange(4) == 0:
            lots = rng.choice((1, profile.grid + 1, 3 * profile.grid - 1))
        else:
            lots = rng.randint(1, 8) * profile.grid
        return profile.amount_text(lots)

    specs: list[tuple[Any, ...]] = []
    for _ in range(size):
        if rng.randrange(4) == 0:
            specs.append(("cancel", rng.randint(0, 12)))
            continue
        order_type = mostly_(rng.choice(TYPES), BAD_TYPES)
        if order_type == "market":
            the_price = mostly_(None, (price(),))
        else:
            the_price = mostly_(price(), (None, *profile.odd_prices, *BAD_DECIMALS))
        specs.append(
            (
                rng.randint(0, 29),
                mostly_(rng.choice(SIDES), BAD_SIDES),
                the_price,
                mostly_(amount(), (None, *profile.odd_amounts, *BAD_DECIMALS)),
                mostly_(rng.choice(OWNERS), BAD_NAMES),
                order_type,
            )
        )
    return Stream(profile, resolve(specs, seed=rng.randrange(1000)))


# JSON lines for the replay tool.

BAD_LINES = (
    "not json",
    '{"op": "order", "id": "n1", "side": "buy", "price": NaN, "amount": "1", "owner": "u1"}',
    '{"op": "order", "id": "n2", "side": "buy", "price": "1", "amount": Infinity, "owner": "u1"}',
    '{"op": "cancel", "id": "n3", "x": -Infinity}',
    "NaN",
    "{",
    "[]",
    "null",
    '"order"',
    "42",
    '{"op": "modify", "id": "o1"}',
    '{"op": "order"}',
    '{"id": "o1", "side": "buy"}',
    '{"op": "cancel", "id": 5}',
    '{"op": "cancel", "id": null}',
    '{"op": "cancel", "id": ["o1"]}',
    '{"op": ["order"], "id": "o1"}',
    '{"op": "Order", "id": "o1"}',
)


def json_line(op: Op, omit_type: bool = False) -> str | None:
    """An operation as a replay input line, or ``None`` if JSON cannot carry it.

    ``None`` fields are left out (a market order has no ``price``); the
    replay tool then reads them as absent.
    """
    if op[0] == "cancel":
        obj: dict[str, object] = {"op": "cancel", "id": op[1]}
    else:
        _, order_id, side, price, amount, owner, order_type = op
        obj = {"op": "order", "id": order_id, "side": side, "price": price}
        obj.update(amount=amount, owner=owner, type=order_type)
        if omit_type and order_type == "limit":
            del obj["type"]
    obj = {key: value for key, value in obj.items() if value is not None}
    try:
        return json.dumps(obj, default=_json_number)
    except TypeError:
        return None


def _json_number(value: object) -> object:
    """Decimals become JSON numbers; anything else JSON lacks is refused."""
    if isinstance(value, Decimal):
        return int(value)
    raise TypeError(value)


@dataclass(frozen=True)
class ReplayInput:
    profile: Profile
    lines: tuple[str, ...]
    bad: tuple[int, ...]  # line numbers, from 1, that must be reported

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def replay_input(ops: tuple[Op, ...], profile: Profile, rng: random.Random) -> ReplayInput:
    """JSON lines for ``ops`` with bad lines mixed in (and ops JSON cannot carry dropped)."""
    lines: list[str] = []
    bad: list[int] = []
    for op in ops:
        if rng.randrange(12) == 0:
            lines.append(rng.choice(BAD_LINES))
            bad.append(len(lines))
        if rng.randrange(30) == 0:
            lines.append("")  # blank lines are skipped silently
        line = json_line(op, omit_type=rng.randrange(2) == 0)
        if line is None:
            continue
        lines.append(line)
        if not isinstance(op[1], str):
            bad.append(len(lines))  # no string id: a bad line, not a rejection
    return ReplayInput(profile, tuple(lines), tuple(bad))


@st.composite
def replay_inputs(draw: st.DrawFn, max_size: int = 40) -> ReplayInput:
    stream = draw(streams(max_size=max_size))
    return replay_input(stream.ops, stream.profile, draw(st.randoms(use_true_random=False)))


# Signed events for the ledger, journal and convergence tests.
#
# An event set is what several authors signed: orders near a mid price so
# they cross, cancels of the author's own earlier orders (and now and then of
# another author's, or of an unknown id), and now and then an equivocating
# twin (a second, different event in the same (author, seq) slot).  Each
# author's Lamport times strictly increase, except that very rarely an event
# repeats its author's previous one (which the ledger must refuse to apply);
# a shared clock that advances by 0-2 per event makes authors interleave,
# with ties between authors.

EVENT_NETWORK = "test"
EVENT_PAIR = "BTC/USD"
EVENT_MID = 100  # prices are EVENT_MID +- 1.5 in steps of 0.5
EVENT_AMOUNTS = ("0.5", "1", "1.5", "2")
EVENT_ODD_PRICES = ("100.005", "0")  # rejected: off the tick, not positive
EVENT_TYPES = ("limit", "limit", "limit", "limit", "ioc", "fok", "post_only", "market")
UNKNOWN_ORDER = "0" * 64  # an order id no event has
# EventSpec.cancel: mostly orders (-1); cancels of own, others' and unknown orders.
EVENT_CANCELS = (-1,) * 15 + (0, 0, 1, 2, 6, 8)
EVENT_TWINS = (0,) * 45 + (1, 2, 3)  # EventSpec.twin: about one event in 16
EVENT_STALE = (False,) * 59 + (True,)  # EventSpec.stale: one event in 60


def _authors() -> tuple[Any, ...]:
    from bitfitech.market.events import Author

    return tuple(Author(bytes([n]) * 32, EVENT_NETWORK, EVENT_PAIR) for n in range(1, 6))


AUTHORS = _authors()
"""Five authors with fixed seeds (``bytes([n]) * 32`` for n = 1..5)."""


class EventSpec(NamedTuple):
    """One event before it is signed: everything drawn, nothing resolved."""

    author: int  # index into the set's authors
    advance: int  # how far the shared clock moves first
    cancel: int  # -1: an order; 0-5: an own recent order; 6-7: another's; 8: unknown
    side: str
    order_type: str
    price: str | None
    amount: str
    twin: int  # 0: none; else a twin follows, its Lamport time moved by twin - 2
    stale: bool = False  # reuse the author's previous Lamport time (a broken chain)


class EventSet:
    """Signed events (twins right after their originals) from ``authors`` authors."""

    def __init__(self, authors: int, events: tuple[Any, ...]) -> None:
        self.authors = authors
        self.events = events

    def __repr__(self) -> str:
        lines = "".join(f"\n    {event.text!r}," for event in self.events)
        return f"EventSet(authors={self.authors}, events=[{lines}\n])"


def event_price(offset: int) -> str:
    """The price ``offset`` half-units from the mid, as a canonical decimal."""
    return canonical(Fraction(2 * EVENT_MID + offset, 2))


def resolve_events(specs: list[EventSpec] | tuple[EventSpec, ...], authors: int) -> EventSet:
    """Sign drawn specs: give seqs and Lamport times, and aim cancels."""
    signers = AUTHORS[:authors]
    seqs = [0] * authors
    lamports = [0] * authors
    own: list[list[str]] = [[] for _ in range(authors)]
    everyone: list[tuple[int, str]] = []
    clock = 0
    ts = 1_700_000_000_000
    events: list[Any] = []
    for spec in specs:
        index = spec.author % authors
        signer = signers[index]
        clock += spec.advance
        if spec.stale and lamports[index]:
            lamport = lamports[index]
        else:
            lamport = lamports[index] = max(lamports[index] + 1, clock)
        seq = seqs[index] = seqs[index] + 1
        ts += 7
        if spec.cancel >= 0:
            others = [order for owner, order in everyone if owner != index]
            if spec.cancel < 6 and own[index]:
                target = own[index][-1 - spec.cancel % len(own[index])]
            elif spec.cancel < 8 and others:
                target = others[-1 - spec.cancel % len(others)]
            else:
                target = UNKNOWN_ORDER
            event = signer.cancel(seq, lamport, ts, target)
        else:
            event = signer.order(
                seq, lamport, ts, spec.side, spec.order_type, spec.price, spec.amount
            )
            own[index].append(event.id)
            everyone.append((index, event.id))
        events.append(event)
        if spec.twin:
            # Another order in the same slot, a little apart in Lamport time and price.
            twin_lamport = max(1, lamport + spec.twin - 2)
            price = None if spec.order_type == "market" else event_price(spec.twin - 2)
            events.append(
                signer.order(
                    seq, twin_lamport, ts + 1, spec.side, spec.order_type, price, spec.amount
                )
            )
    return EventSet(authors, tuple(events))


_OFFSET_PRICES = st.integers(-3, 3).map(event_price)
_SPEC_FIELDS = st.tuples(
    st.integers(0, 2),  # advance
    st.sampled_from(EVENT_CANCELS),
    st.sampled_from(SIDES),
    st.sampled_from(EVENT_TYPES),
    st.one_of(*[_OFFSET_PRICES] * 6, st.sampled_from(EVENT_ODD_PRICES)),  # odd: one in 7
    st.sampled_from(EVENT_AMOUNTS),
    st.sampled_from(EVENT_TWINS),
    st.sampled_from(EVENT_STALE),
)


def _spec(drawn: tuple[Any, ...]) -> EventSpec:
    author, (advance, cancel, side, order_type, price, amount, twin, stale) = drawn
    price = None if order_type == "market" else price
    return EventSpec(author, advance, cancel, side, order_type, price, amount, twin, stale)


def event_specs(authors: int) -> st.SearchStrategy[EventSpec]:
    """One event's spec for a set of ``authors`` authors."""
    return st.tuples(st.integers(0, authors - 1), _SPEC_FIELDS).map(_spec)


@st.composite
def event_sets(
    draw: st.DrawFn,
    min_authors: int = 2,
    max_authors: int = 5,
    min_size: int = 1,
    max_size: int = 40,
) -> EventSet:
    """A random set of signed events from ``min_authors`` to ``max_authors`` authors."""
    authors = draw(st.integers(min_authors, max_authors))
    specs = draw(st.lists(event_specs(authors), min_size=min_size, max_size=max_size))
    return resolve_events(specs, authors)


def random_events(
    rng: random.Random, authors: int, size: int, twins: bool = True, stale: bool = True
) -> EventSet:
    """The same vocabulary from ``rng``, for bulk runs that need no shrinking."""
    specs = []
    for _ in range(size):
        order_type = rng.choice(EVENT_TYPES)
        if order_type == "market":
            price = None
        elif rng.randrange(7) == 0:
            price = rng.choice(EVENT_ODD_PRICES)
        else:
            price = event_price(rng.randint(-3, 3))
        specs.append(
            EventSpec(
                author=rng.randrange(authors),
                advance=rng.randint(0, 2),
                cancel=rng.choice(EVENT_CANCELS),
                side=rng.choice(SIDES),
                order_type=order_type,
                price=price,
                amount=rng.choice(EVENT_AMOUNTS),
                twin=rng.choice(EVENT_TWINS) if twins else 0,
                stale=rng.choice(EVENT_STALE) if stale else False,
            )
        )
    return resolve_events(specs, authors)
