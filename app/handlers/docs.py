"""GET /docs: a readable index of the API, generated from the route table."""

from __future__ import annotations

import html
import inspect

from aiohttp import web

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>editq API</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
code {{ background: #f3f3f3; padding: 0 .25rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: .4rem; border-bottom: 1px solid #ddd;
          vertical-align: top; }}
</style></head><body>
<h1>editq API</h1>
<p>Every route but <code>/healthz</code>, <code>/readyz</code> and <code>/docs</code> needs
<code>Authorization: Bearer &lt;key&gt;</code>. Errors have the OpenAI shape
<code>{{"error": {{"message", "type", "code", "param"}}}}</code>.</p>
<table><tr><th>Method</th><th>Path</th><th>What it does</th></tr>
{rows}
</table></body></html>
"""


async def docs(request: web.Request) -> web.Response:
    """A page listing every endpoint with its handler's description."""
    rows = []
    for route in request.app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.canonical if route.resource is not None else ""
        summary = inspect.getdoc(route.handler) or ""
        rows.append(
            f"<tr><td>{route.method}</td><td><code>{html.escape(info)}</code></td>"
            f"<td>{html.escape(summary)}</td></tr>"
        )
    return web.Response(text=PAGE.format(rows="\n".join(rows)), content_type="text/html")
