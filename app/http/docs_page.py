"""The API reference as one self-contained HTML page, rendered from the OpenAPI document.

No scripts, styles or fonts from elsewhere: an index of the operations, then each
operation's parameters, request bodies and responses, then every schema with its
fields. Everything comes from the document ``app.http.openapi`` builds, so the page and
``/openapi.json`` cannot disagree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
code { background: #f3f3f3; padding: 0 .25rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
td, th { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid #ddd;
         vertical-align: top; }
section { border-top: 2px solid #eee; margin-top: 1.5rem; }
.method { font-weight: bold; text-transform: uppercase; }
pre { white-space: pre-wrap; font: inherit; }
"""
SCHEMA_PREFIX = "#/components/schemas/"


def render_docs_page(spec: dict[str, Any]) -> str:
    """The whole page for the OpenAPI document ``spec``."""
    info = spec["info"]
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(info['title'])} API</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} API <small>{_e(info['version'])}</small></h1>",
        f"<p>{_e(info.get('description', ''))}</p>",
        "<p>Routes marked <em>public</em> need no key; every other one needs "
        "<code>Authorization: Bearer &lt;key&gt;</code>. The machine-readable form of this "
        'page is <a href="/openapi.json"><code>/openapi.json</code></a>.</p>',
        _index(spec),
        *(_operation(method, path, op, spec) for method, path, op in _operations(spec)),
        "<h2>Schemas</h2>",
        *(_schema(name, schema) for name, schema in spec["components"]["schemas"].items()),
        "</body></html>",
    ]
    return "\n".join(parts)


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]


def _index(spec: dict[str, Any]) -> str:
    rows = [
        f'<tr><td class="method">{_e(method)}</td>'
        f'<td><a href="#{_e(op["operationId"])}"><code>{_e(path)}</code></a></td>'
        f"<td>{_e(op['summary'])}{' (public)' if op.get('security') == [] else ''}</td></tr>"
        for method, path, op in _operations(spec)
    ]
    header = "<tr><th>Method</th><th>Path</th><th>What it does</th></tr>"
    return f"<table>{header}\n" + "\n".join(rows) + "</table>"


def _operation(method: str, path: str, op: dict[str, Any], spec: dict[str, Any]) -> str:
    parts = [
        f'<section id="{_e(op["operationId"])}">',
        f'<h2><span class="method">{_e(method)}</span> <code>{_e(path)}</code></h2>',
        f"<p><strong>{_e(op['summary'])}</strong></p><pre>{_e(op.get('description', ''))}</pre>",
    ]
    parameters = op.get("parameters", [])
    if parameters:
        rows = [
            (
                f"<code>{_e(p['name'])}</code>",
                _e(p["in"]) + (", required" if p.get("required") else ""),
                _type(p["schema"]) + _limits(p["schema"]),
                _e(p.get("description", "")),
            )
            for p in parameters
        ]
        parts.append("<h3>Parameters</h3>" + _table(("Name", "In", "Type", "About"), rows))
    body = op.get("requestBody")
    if body is not None:
        kinds = ", ".join(
            f"<code>{_e(media)}</code>: {_type(c['schema'])}"
            for media, c in body["content"].items()
        )
        parts.append(f"<h3>Request body</h3><p>{kinds}</p>")
    responses = [
        (f"<code>{_e(status)}</code>", _response(response, spec))
        for status, response in op["responses"].items()
    ]
    parts.append("<h3>Responses</h3>" + _table(("Status", "Body"), responses) + "</section>")
    return "\n".join(parts)


def _response(response: dict[str, Any], spec: dict[str, Any]) -> str:
    if "$ref" in response:  # a shared error response
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    kinds = [
        f"<code>{_e(media)}</code> {_type(content['schema'])}"
        for media, content in response.get("content", {}).items()
    ]
    return _e(response.get("description", "")) + (" — " + ", ".join(kinds) if kinds else "")


def _schema(name: str, schema: dict[str, Any]) -> str:
    parts = [f'<section id="schema-{_e(name)}"><h3>{_e(name)}</h3>']
    if "description" in schema:
        parts.append(f"<pre>{_e(schema['description'])}</pre>")
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        rows = [
            (
                f"<code>{_e(field)}</code>" + (" *" if field in required else ""),
                _type(sub),
                _e(sub.get("description", "")),
            )
            for field, sub in properties.items()
        ]
        parts.append(_table(("Field (* required)", "Type", "About"), rows))
    elif "enum" in schema:
        parts.append(f"<p>One of {_type(schema)}.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _type(schema: dict[str, Any]) -> str:
    """A short human reading of a JSON Schema, with links to named schemas."""
    if "$ref" in schema:
        name = _e(schema["$ref"].removeprefix(SCHEMA_PREFIX))
        return f'<a href="#schema-{name}">{name}</a>'
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(str(v))}</code>" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "array of " + _type(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + _type(schema["additionalProperties"])
    if "format" in schema:
        return f"{_e(str(kind))} ({_e(schema['format'])})"
    return _e(str(kind))


def _limits(schema: dict[str, Any]) -> str:
    """Range and default of a parameter, e.g. `` (1 to 100, default 20)``."""
    notes = []
    if "minimum" in schema or "maximum" in schema:
        notes.append(f"{schema.get('minimum', '')} to {schema.get('maximum', '')}")
    if "default" in schema:
        notes.append(f"default {schema['default']}")
    return f" ({_e(', '.join(notes))})" if notes else ""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
