"""The benchmarks' results protocol: what every ``bench_*.py`` writes for ``run_all.py``.

Every ``benchmarks/bench_*.py`` keeps printing its human tables on stdout
and also accepts:

- ``--quick``: a small version (``make bench QUICK=1`` runs them all in
  under a minute);
- ``--json PATH``: write its figures to PATH as one JSON object::

    {"benchmark": "bench_join", "quick": false, "machine": "...",
     "started": "2025-01-01T12:00:00+00:00",
     "figures": [{"figure": "fresh node synced, from start", "value": 1.35,
                  "unit": "s", "target": "<= 3 s", "met": true}],
     "series": {"sync_time": {"x": [10000], "y": [1.35],
                              "x_label": "events", "y_label": "s"}}}

  ``value`` is a number or a string (a non-finite number is written as a
  string); ``target`` is a string or ``null``, ``met`` true, false or
  ``null`` (no target).  ``series`` holds x/y pairs for plots; the plots
  ``run_all.py`` draws read the series ``propagation_latency``,
  ``duplicates_vs_links``, ``dht_rounds`` and ``sync_time``.

:func:`add_arguments` adds both options to a script's parser;
:class:`Results` collects the figures and :meth:`Results.write` writes
them; :func:`problems` checks a document against the protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _cluster import machine_info

#: the keys of a results document, and of one figure
DOCUMENT_KEYS = ("benchmark", "quick", "machine", "started", "figures", "series")
FIGURE_KEYS = ("figure", "value", "unit", "target", "met")
SERIES_KEYS = ("x", "y", "x_label", "y_label")


def add_arguments(parser: argparse.ArgumentParser, quick: bool = True) -> None:
    """Add ``--json PATH`` (and ``--quick`` unless C{quick} is false) to C{parser}."""
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    if quick:
        parser.add_argument("--quick", action="store_true", help="a small version")


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _number_or_text(value: float | int | str) -> float | int | str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass(frozen=True)
class Figure:
    """
    One measured figure.

    :ivar target: the goal in words (``"p99 <= 50 ms"``), or ``None``.
    :ivar met: whether C{value} meets C{target}; ``None`` without a target.
    """

    figure: str
    value: float | int | str
    unit: str = ""
    target: str | None = None
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object."""
        return {
            "figure": self.figure,
            "value": _number_or_text(self.value),
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
        }


@dataclass(frozen=True)
class Series:
    """Points for a plot: C{x[i]} against C{y[i]}."""

    x: list[float]
    y: list[float]
    x_label: str
    y_label: str

    def to_json(self) -> dict[str, Any]:
        """The series as a JSON object."""
        return {"x": self.x, "y": self.y, "x_label": self.x_label, "y_label": self.y_label}


@dataclass
class Results:
    """
    What one benchmark run measured.

    :ivar benchmark: the script's name without ``.py`` (``bench_join``).
    """

    benchmark: str
    quick: bool = False
    machine: str = field(default_factory=machine_info)
    started: str = field(default_factory=now_iso)
    figures: list[Figure] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)

    def add(
        self,
        figure: str,
        value: float | int | str,
        unit: str = "",
        target: str | None = None,
        met: bool | None = None,
    ) -> Figure:
        """Record one figure; C{met} is only kept with a C{target}."""
        added = Figure(figure, value, unit, target, met if target is not None else None)
        self.figures.append(added)
        return added

    def add_series(
        self, name: str, x: list[float], y: list[float], x_label: str, y_label: str
    ) -> None:
        """Record the points of series C{name}."""
        if len(x) != len(y):
            raise ValueError(f"series {name}: {len(x)} x values, {len(y)} y values")
        self.series[name] = Series(list(x), list(y), x_label, y_label)

    def to_json(self) -> dict[str, Any]:
        """The whole document, as :func:`problems` expects it."""
        return {
            "benchmark": self.benchmark,
            "quick": self.quick,
            "machine": self.machine,
            "started": self.started,
            "figures": [f.to_json() for f in self.figures],
            "series": {name: s.to_json() for name, s in self.series.items()},
        }

    def write(self, path: str | os.PathLike[str] | None) -> None:
        """Write the document to C{path} (nothing when C{path} is ``None``)."""
        if path is None:
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2, allow_nan=False)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(text + "\n")
        temporary.replace(target)


def cdf(values: list[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF of C{values}: sorted values and the share at or below each."""
    ordered = sorted(values)
    count = len(ordered)
    return ordered, [(i + 1) / count for i in range(count)]


def problems(document: Any) -> list[str]:
    """What is wrong with a results document (an empty list when nothing)."""
    if not isinstance(document, dict):
        return ["not a JSON object"]
    found = [f"missing key {key!r}" for key in DOCUMENT_KEYS if key not in document]
    if found:
        return found
    if not isinstance(document["benchmark"], str) or not document["benchmark"]:
        found.append("benchmark is not a name")
    if not isinstance(document["quick"], bool):
        found.append("quick is not a boolean")
    if not isinstance(document["machine"], str) or not isinstance(document["started"], str):
        found.append("machine and started must be strings")
    figures = document["figures"]
    if not isinstance(figures, list):
        return [*found, "figures is not a list"]
    for i, figure in enumerate(figures):
        if not isinstance(figure, dict) or set(figure) != set(FIGURE_KEYS):
            found.append(f"figure {i}: keys are not {', '.join(FIGURE_KEYS)}")
            continue
        name = figure["figure"]
        if not isinstance(name, str) or not name:
            found.append(f"figure {i}: no name")
        value = figure["value"]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            found.append(f"figure {name!r}: value is not a number or a string")
        if not isinstance(figure["unit"], str):
            found.append(f"figure {name!r}: unit is not a string")
        if figure["target"] is not None and not isinstance(figure["target"], str):
            found.append(f"figure {name!r}: target is not a string or null")
        if figure["met"] not in (True, False, None):
            found.append(f"figure {name!r}: met is not true, false or null")
    series = document["series"]
    if not isinstance(series, dict):
        return [*found, "series is not an object"]
    for name, points in series.items():
        if not isinstance(points, dict) or not all(key in points for key in SERIES_KEYS):
            found.append(f"series {name!r}: keys are not {', '.join(SERIES_KEYS)}")
        elif not isinstance(points["x"], list) or not isinstance(points["y"], list):
            found.append(f"series {name!r}: x and y are not lists")
        elif len(points["x"]) != len(points["y"]):
            found.append(f"series {name!r}: x and y differ in length")
    return found
