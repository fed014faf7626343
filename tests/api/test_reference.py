"""``docs/api.rst`` is the reference generated from the OpenAPI document, and current."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bitfitech.api.openapi import document
from bitfitech.api.reference import reference

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.rst"


class ReferenceTests(SynchronousTestCase):
    def test_page_is_current(self) -> None:
        self.assertEqual(
            PAGE.read_text(),
            reference(),
            "docs/api.rst is stale: run .venv/bin/python -m bitfitech.api.reference > docs/api.rst",
        )

    def test_every_operation_is_in_the_page(self) -> None:
        page = reference()
        for path, item in document()["paths"].items():
            for method in ("get", "post", "delete"):
                if method in item:
                    self.assertIn(f"``{method.upper()} {path}``", page)
