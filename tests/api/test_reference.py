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

    def test_every_schema_and_field_is_in_the_page(self) -> None:
        page = reference()
        for name, schema in document()["components"]["schemas"].items():
            self.assertIn(f"``{name}``\n{'~' * (len(name) + 4)}\n", page)
            for field in schema.get("properties", {}):
                self.assertIn(f"- ``{field}`` (", page, (name, field))
        self.assertIn("- ``witnesses`` (``WitnessStatus`` or ``{}``): ", page)
        self.assertIn("- ``chains`` (array of ``WitnessChain``): ", page)
        self.assertIn("- ``me`` (integer or null): ", page)
        self.assertIn('Values: ``"equivocation"`` | ``"broken_chain"``.', page)
        self.assertIn("(fair order: see ``witnesses``)", page)  # Markdown code spans as reST
