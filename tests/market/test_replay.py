"""Examples for ``python -m bitfitech.replay``: its output lines, its
treatment of bad lines, its options and exit codes, and a real run as a
module.  The differential test compares it with the reference engine on
random streams."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.replay import main


def order(oid: str, side: str, price: str | None, amount: str, owner: str, **extra: Any) -> str:
    fields: dict[str, Any] = {"op": "order", "id": oid, "side": side, "amount": amount}
    fields["owner"] = owner
    if price is not None:
        fields["price"] = price
    return json.dumps({**fields, **extra})


def cancel(oid: str) -> str:
    return json.dumps({"op": "cancel", "id": oid})


def replay(lines: list[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), io.StringIO("\n".join(lines) + "\n"), out, err)
    return status, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


class OutputTests(SynchronousTestCase):
    def test_the_issue_example(self) -> None:
        status, out, err = replay(
            [
                order("o1", "sell", "50000", "1.25", "u1"),
                order("o2", "buy", "50000", "0.5", "u2"),
                order("o3", "buy", "49999.999", "1", "u2"),
            ]
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out[0],
            {
                "trade": 1,
                "taker": "o2",
                "maker": "o1",
                "side": "buy",
                "price": "50000",
                "amount": "0.5",
            },
        )
        self.assertEqual(out[1], {"reject": "o3", "reason": "price_not_tick_multiple"})
        summary = out[2]
        self.assertEqual(summary["book"], {"bids": [], "asks": [["50000", "0.75", 1]]})
        self.assertEqual((summary["trades"], summary["volume"]), (1, "0.5"))
        self.assertEqual(len(summary["state_hash"]), 64)
        self.assertEqual(len(out), 3)

    def test_levels_best_first_and_canonical_decimals(self) -> None:
        _, out, _ = replay(
            [
                order("b1", "buy", "99.50", "1.000", "u"),
                order("b2", "buy", "100.1", "2", "u"),
                order("b3", "buy", "100.10", "0.5", "v"),
                order("a1", "sell", "101", "3", "w"),
                order("a2", "sell", "100.9", "0.00000001", "w"),
            ]
        )
        self.assertEqual(
            out[-1]["book"],
            {
                "bids": [["100.1", "2.5", 2], ["99.5", "1", 1]],
                "asks": [["100.9", "0.00000001", 1], ["101", "3", 1]],
            },
        )
        self.assertEqual(out[-1]["volume"], "0")

    def test_cancel_that_did_nothing_is_a_reject(self) -> None:
        _, out, _ = replay([order("a", "sell", "1", "1", "u"), cancel("a"), cancel("a")])
        self.assertEqual(out[0], {"reject": "a", "reason": "not_open"})
        self.assertEqual(out[1]["book"], {"bids": [], "asks": []})

    def test_market_and_types(self) -> None:
        _, out, _ = replay(
            [
                order("a", "sell", "10", "1", "u"),
                order("m", "buy", None, "2", "v", type="market"),
                order("p", "sell", "9", "1", "u", type="post_only"),
                order("q", "buy", "9", "1", "v", type="post_only"),
                order("r", "sell", "9", "1", "u", type="post_only"),
            ]
        )
        self.assertEqual(out[0]["trade"], 1)
        self.assertEqual(out[1], {"reject": "q", "reason": "would_take"})
        self.assertEqual(out[-1]["book"]["asks"], [["9", "2", 2]])

    def test_summary_only(self) -> None:
        lines = [order("a", "sell", "1", "1", "u"), order("b", "buy", "1", "1", "v"), "junk"]
        status, out, err = replay(lines, "--summary-only")
        self.assertEqual(len(out), 1)
        self.assertEqual((out[0]["trades"], out[0]["volume"]), (1, "1"))
        self.assertIn("line 3", err)
        self.assertEqual(status, 0)

    def test_options(self) -> None:
        lines = [order("a", "sell", "1.5", "10", "u"), order("b", "buy", "1.5", "10", "u")]
        _, out, _ = replay(lines, "--tick", "0.5", "--lot", "5", "--self-trade", "allow")
        self.assertEqual(out[0]["price"], "1.5")
        _, out, _ = replay(lines, "--tick", "0.5", "--lot", "5")
        self.assertEqual(out[-1]["trades"], 0)
        self.assertEqual(out[-1]["book"]["bids"], [["1.5", "10", 1]])
        _, out, _ = replay(lines[:1], "--max-price", "1", "--max-amount", "5")
        self.assertEqual(out[0], {"reject": "a", "reason": "price_too_high"})
        _, out, _ = replay([order("a", "sell", "1", "1", "u")], "--min-amount", "2", "--lot", "1")
        self.assertEqual(out[0], {"reject": "a", "reason": "amount_too_small"})


class BadInputTests(SynchronousTestCase):
    def test_bad_lines_reported_with_numbers_and_skipped(self) -> None:
        lines = [
            "not json",
            "[1, 2]",
            '{"op": "modify", "id": "x"}',
            '{"op": "order"}',
            '{"op": "cancel", "id": 5}',
            '{"op": "order", "id": "n", "side": "buy", "price": NaN, "amount": "1", "owner": "u"}',
            "",
            order("ok", "buy", "1", "1", "u"),
            '{"op": "order", "id": "f"',
        ]
        status, out, err = replay(lines)
        self.assertEqual(status, 0)
        reported = [line.split(":")[0] for line in err.splitlines()]
        self.assertEqual(reported, [f"line {n}" for n in (1, 2, 3, 4, 5, 6, 9)])
        self.assertEqual(out[-1]["book"]["bids"], [["1", "1", 1]])

    def test_numbers_are_never_floats(self) -> None:
        lines = [
            '{"op": "order", "id": "a", "side": "buy", "price": 1.5, "amount": "1", "owner": "u"}',
            '{"op": "order", "id": "b", "side": "buy", "price": "1", "amount": 2, "owner": "u"}',
            '{"op": "order", "id": "c", "side": "buy", "price": "1", "amount": "1"}',
        ]
        _, out, err = replay(lines)
        self.assertEqual(err, "")
        self.assertEqual(
            out[:3],
            [
                {"reject": "a", "reason": "invalid_price"},
                {"reject": "b", "reason": "invalid_amount"},
                {"reject": "c", "reason": "invalid_owner"},
            ],
        )

    def test_bad_options_exit_2(self) -> None:
        for argv in (["--tick", "2e6"], ["--self-trade", "never"], ["--lot", "0"]):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(main(argv, io.StringIO(""), out, err), 2, argv)
            self.assertIn("error", err.getvalue())
            self.assertEqual(out.getvalue(), "")

    def test_unreadable_file_exits_1(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        missing = self.mktemp()
        self.assertEqual(main([missing], io.StringIO(""), out, err), 1)
        self.assertIn("cannot read", err.getvalue())


class ModuleTests(SynchronousTestCase):
    def test_python_m_with_file_and_stdin(self) -> None:
        path = self.mktemp()
        text = "\n".join([order("a", "sell", "2", "1", "u"), order("b", "buy", "2", "1", "v")])
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n\xff garbage\n")
        command = [sys.executable, "-m", "bitfitech.replay"]
        from_file = subprocess.run(command + [path], capture_output=True, text=True, check=True)
        from_stdin = subprocess.run(
            command, input=text + "\n", capture_output=True, text=True, check=True
        )
        self.assertEqual(from_file.stdout, from_stdin.stdout)
        self.assertEqual(json.loads(from_file.stdout.splitlines()[0])["trade"], 1)
        self.assertIn("line 3", from_file.stderr)
