"""The playground page (tokencounter/static): a form over /api/tokencounter/explain, served as files.

The local host serves it at `/`; the function app at `/api/playground/` only when TOKENCOUNTER_PLAYGROUND is on.
Its script inserts every value as text, and the Content-Security-Policy allows no script but its own file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import NotFound, error_payload

STATIC = Path(__file__).parent / "static"
FILES = {
    "": ("playground.html", "text/html; charset=utf-8"),
    "playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "playground.css": ("playground.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def asset(name: str) -> tuple[bytes, dict[str, str]] | None:
    """The file served as `name` ("" for the page) and its headers, or None."""
    entry = FILES.get(name)
    if entry is None:
        return None
    filename, content_type = entry
    return (STATIC / filename).read_bytes(), {"Content-Type": content_type, **HEADERS}


def serve(name: str | None, url: str) -> tuple[int, dict[str, str], bytes]:
    """The function app's answer for /api/playground/{name}: the file, a redirect to the folder form of the page's
    URL (its script and style load by relative URL), or the JSON 404."""
    path = url.split("?", 1)[0]
    if not name and not path.endswith("/"):
        return 301, {"Location": path + "/"}, b""
    page = asset(name or "")
    if page is None:
        status, payload, headers = error_payload(NotFound("no such file; open /api/playground/"))
        return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()
    body, headers = page
    return 200, headers, body
