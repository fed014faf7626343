"""The API reference page (``docs/api.rst``), generated from the OpenAPI document.

Data path: :func:`bitfitech.api.openapi.document` -> :func:`reference` ->
reStructuredText: every operation, then every schema of the components
with its fields.  Regenerate with::

    .venv/bin/python -m bitfitech.api.reference > docs/api.rst

``tests/api/test_reference.py`` fails when the page and the document differ.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from .openapi import document

METHODS = ("get", "post", "delete")
_CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _resolve(doc: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/...``) once, if there is one."""
    target = item.get("$ref")
    if not isinstance(target, str):
        return item
    node: Any = doc
    for part in target.removeprefix("#/").split("/"):
        node = node[part]
    resolved: dict[str, Any] = node
    return resolved


def _schema_name(schema: dict[str, Any]) -> str:
    """A short name for a schema: its component name, or its type."""
    target = schema.get("$ref")
    if isinstance(target, str):
        return target.rsplit("/", 1)[1]
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_schema_name(schema['items'])}"
    return str(schema.get("type", "object"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _kind(schema: dict[str, Any]) -> str:
    """What a field holds, in a few words: ``Trade``, ``integer or null``, ``"a" | "b"``."""
    target = schema.get("$ref")
    if isinstance(target, str):
        return f"``{target.rsplit('/', 1)[1]}``"
    if "anyOf" in schema:
        return " or ".join(_kind(member) for member in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(f"``{json.dumps(value)}``" for value in schema["enum"])
    if "const" in schema:
        return f"``{json.dumps(schema['const'])}``"
    kind = schema.get("type")
    if kind == "null":
        return "null"
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_kind(schema['items'])}"
    if kind == "object" and schema.get("maxProperties") == 0:
        return "``{}``"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_kind(schema['additionalProperties'])}"
    if kind == "string" and "pattern" in schema:
        return f"string ``{schema['pattern']}``"
    return str(kind or "any value")


def _description(schema: dict[str, Any]) -> str:
    """
    C{schema}'s description, or its first member's that has one, with its
    Markdown code spans (`x`) as reST literals (``x``).
    """
    texts = [schema] + [member for member in schema.get("anyOf", ()) if isinstance(member, dict)]
    for item in texts:
        if "description" in item:
            return _CODE_SPAN.sub(r"``\1``", _one_line(str(item["description"])))
    return ""


def _schemas(doc: dict[str, Any]) -> list[str]:
    """The section on the schemas of C{doc}'s components: each one's fields, or its values."""
    title = "Schemas"
    lines = [title, "-" * len(title), ""]
    for name, schema in doc["components"]["schemas"].items():
        heading = f"``{name}``"
        lines += [heading, "~" * len(heading), ""]
        text = _description(schema)
        if text:
            lines += [text, ""]
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            lines += [f"Values: {_kind(schema)}.", ""]
            continue
        required = set(schema.get("required", ()))
        for field, field_schema in properties.items():
            optional = "" if field in required else ", optional"
            about = _description(field_schema)
            lines.append(
                f"- ``{field}`` ({_kind(field_schema)}{optional}){': ' + about if about else ''}"
            )
        if schema.get("additionalProperties") is not False:
            lines.append("- more fields may come")
        lines.append("")
    return lines


def reference(doc: dict[str, Any] | None = None) -> str:
    """The reST reference of C{doc} (the node's OpenAPI document by default)."""
    doc = doc if doc is not None else document()
    title = "HTTP API reference"
    lines = [
        ".. Generated from the OpenAPI document by ``python -m bitfitech.api.reference``;",
        "   do not edit by hand.",
        "",
        title,
        "=" * len(title),
        "",
        f"{doc['info']['title']} {doc['info']['version']}, OpenAPI {doc['openapi']}: the",
        "whole document is served at ``GET /openapi.json``.  Errors are",
        '``{"error": "<message>"}``.  Unless marked *public*, a request needs',
        "``Authorization: Bearer <token>`` when the node has an API token.",
        "",
    ]
    for path, item in doc["paths"].items():
        shared = [_resolve(doc, p) for p in item.get("parameters", [])]
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            heading = f"``{method.upper()} {path}``"
            lines += [heading, "-" * len(heading), "", _one_line(op.get("summary", "")), ""]
            if op.get("security") == [{}]:
                lines += ["*Public*: no token needed.", ""]
            parameters = shared + [_resolve(doc, p) for p in op.get("parameters", [])]
            if parameters:
                lines += ["Parameters:", ""]
                for p in parameters:
                    where = p.get("in", "")
                    kind = _schema_name(p.get("schema", {}))
                    text = _one_line(p.get("description", ""))
                    lines.append(
                        f"- ``{p['name']}`` ({where}, {kind}){': ' + text if text else ''}"
                    )
                lines.append("")
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                lines += [f"Body: JSON, ``{_schema_name(schema)}``.", ""]
            lines += ["Answers:", ""]
            for status, response in op["responses"].items():
                response = _resolve(doc, response)
                media = ", ".join(response.get("content", {})) or "no body"
                text = _one_line(response.get("description", ""))
                lines.append(f"- **{status}** ({media}): {text}")
            lines.append("")
    lines += _schemas(doc)
    return "\n".join(lines)


def main() -> int:
    """Print the reference page."""
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
