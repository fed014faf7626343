"""Replay a stream of orders and cancels through the matching engine.

``python -m bitfitech.replay [FILE]`` reads JSON lines (standard input when
no file is named) and drives one :class:`~bitfitech.market.book.OrderBook`,
the same engine every node runs.  It writes a JSON line per trade and per
rejection, then a summary of the final book with its state hash.
``docs/matching.rst`` ("The replay tool") describes the format; this is the
tool behind the engine's differential tests and benchmarks, and a way to see
what the engine would do with a given stream.

Bad lines (not JSON, not an object, no known ``op``, no string ``id``) are
reported on standard error with their line number and skipped.  JSON numbers
are read as :class:`~decimal.Decimal` or :class:`int`, never as floats, so a
number where a decimal string belongs is the engine's rejection, not a
rounding.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NoReturn, TextIO

from bitfitech.market.book import (
    CANCEL_REJECTED,
    EXPIRE_MAKER,
    LIMIT,
    REJECTED,
    SELF_TRADE_POLICIES,
    BookParams,
    BookUpdate,
    OrderBook,
    is_trade,
)


class BadLine(ValueError):
    """A line the tool cannot turn into an operation."""


def _no_constants(name: str) -> NoReturn:
    raise BadLine(f"{name} is not JSON")


def parse_line(line: str) -> dict[str, object]:
    """Decode one input line into an operation object.

    :raises BadLine: with the reason, if the line is not a usable operation.
    """
    try:
        obj = json.loads(line, parse_float=Decimal, parse_constant=_no_constants)
    except BadLine:
        raise
    except ValueError as e:
        raise BadLine(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    op = obj.get("op")
    if op not in ("order", "cancel"):
        raise BadLine(f'"op" must be "order" or "cancel", not {json.dumps(op, default=str)}')
    if not isinstance(obj.get("id"), str):
        raise BadLine('"id" must be a string')
    return obj


class Replay:
    """Feeds operations to a book and renders what happened as JSON lines.

    :param params: the book's parameters.
    :param out: where result lines go.
    :param summary_only: write only the final summary.
    """

    def __init__(self, params: BookParams, out: TextIO, summary_only: bool = False) -> None:
        self.book = OrderBook(params)
        self.out = out
        self.summary_only = summary_only
        self.volume = 0
        """Lots traded so far."""

    def apply(self, op: dict[str, object]) -> None:
        """Apply one operation (from :func:`parse_line`) and write its lines."""
        book = self.book
        if op["op"] == "order":
            updates = book.place(
                op["id"],
                op.get("side"),
                op.get("price"),
                op.get("amount"),
                op.get("owner"),
                op.get("type", LIMIT),
            )
        else:
            updates = book.cancel(op["id"])
        self._write(updates)

    def _write(self, updates: Iterable[BookUpdate]) -> None:
        params, write = self.book.params, self.out.write
        for update in updates:
            kind = update[0]
            if is_trade(update):
                _, seq, taker, maker, side, price, amount = update
                self.volume += amount
                if not self.summary_only:
                    line = {
                        "trade": seq,
                        "taker": taker,
                        "maker": maker,
                        "side": side,
                        "price": params.format_price(price),
                        "amount": params.format_amount(amount),
                    }
                    write(json.dumps(line) + "\n")
            elif (kind == REJECTED or kind == CANCEL_REJECTED) and not self.summary_only:
                write(json.dumps({"reject": update[1], "reason": update[3]}) + "\n")

    def summary(self) -> dict[str, object]:
        """The final book, trade count, volume and state hash."""
        book, params = self.book, self.book.params
        depth = book.depth(len(book))

        def levels(side: list[tuple[int, int, int]]) -> list[list[object]]:
            return [
                [params.format_price(price), params.format_amount(total), count]
                for price, total, count in side
            ]

        return {
            "book": {"bids": levels(depth.bids), "asks": levels(depth.asks)},
            "trades": book.trade_count,
            "volume": params.format_amount(self.volume),
            "state_hash": book.state_hash(),
        }


def run(lines: Iterable[str], replay: Replay, errors: TextIO) -> None:
    """Apply every line; report bad ones on *errors* and go on."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            op = parse_line(line)
        except BadLine as e:
            errors.write(f"line {number}: {e}; skipped\n")
            continue
        replay.apply(op)


class _Parser(argparse.ArgumentParser):
    """An argument parser that writes to the streams it is given."""

    def __init__(self, out: TextIO, err: TextIO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out, self.err = out, err

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self.err if file is sys.stderr else self.out).write(message)


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    parser = _Parser(
        out,
        err,
        prog="python -m bitfitech.replay",
        description="Replay JSON-lines orders and cancels through the bitfi matching engine.",
        epilog="Input and output formats: docs/matching.rst, 'The replay tool'.",
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="input (default: stdin)")
    parser.add_argument("--tick", default="0.01", help="price increment (default 0.01)")
    parser.add_argument("--lot", default="0.00000001", help="amount increment (default 1e-8)")
    parser.add_argument("--min-amount", help="smallest amount (default one lot)")
    parser.add_argument("--max-amount", default="1000000000", help="largest amount")
    parser.add_argument("--max-price", default="1000000000", help="largest price")
    parser.add_argument(
        "--self-trade",
        choices=SELF_TRADE_POLICIES,
        default=EXPIRE_MAKER,
        help="self-trade prevention (default expire-maker)",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="write only the final summary line"
    )
    return parser


def main(argv: list[str], stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Run the tool; return the exit status (0 done, 1 unreadable input, 2 usage)."""
    parser = _parser(stdout, stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        params = BookParams(
            tick=args.tick,
            lot=args.lot,
            min_amount=args.min_amount,
            max_amount=args.max_amount,
            max_price=args.max_price,
            self_trade=args.self_trade,
        )
    except ValueError as e:
        stderr.write(f"{parser.prog}: error: {e}\n")
        return 2
    replay = Replay(params, stdout, args.summary_only)
    try:
        if args.file is None or args.file == "-":
            run(stdin, replay, stderr)
        else:
            with open(args.file, encoding="utf-8", errors="surrogateescape") as f:
                run(f, replay, stderr)
    except OSError as e:
        stderr.write(f"{parser.prog}: cannot read {args.file or 'stdin'}: {e.strerror or e}\n")
        return 1
    stdout.write(json.dumps(replay.summary()) + "\n")
    return 0


def _entry() -> int:
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    try:
        return main(sys.argv[1:], stdin, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do,
        # and keep the interpreter from failing to flush stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(_entry())
