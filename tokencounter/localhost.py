"""A small local stand-in for the Functions host: serves the FunctionApp's own HTTP routes on :7071.

It imports `function_app.py` and calls the very function objects the Azure host calls, with
`azure.functions.HttpRequest`/`HttpResponse`, the host.json routePrefix and the function-key check.
Usage: `python -m tokencounter.localhost [--port 7071] [--app function_app]`.
"""

from __future__ import annotations

import argparse
import hmac
import importlib
import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from .settings import get_settings

log = logging.getLogger("tokencounter.localhost")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The standard library's backlog of 5 drops connections when 16 clients connect at once.
    request_queue_size = 128


class Route:
    def __init__(self, function) -> None:
        trigger = function.get_trigger()
        self.name = function.get_function_name()
        self.call = function.get_user_function()
        self.methods = {str(getattr(m, "value", m)).upper() for m in (trigger.methods or [])} or None
        level = trigger.auth_level
        self.auth_level = str(getattr(level, "value", level) or "function").lower()
        self.route = trigger.route or self.name


def app_functions(app: func.FunctionApp) -> list:
    """The app's indexed functions. Indexing twice raises (duplicate names), so the first result is kept."""
    if not hasattr(app, "_indexed_functions"):
        app._indexed_functions = app.get_functions()
    return app._indexed_functions


def load_routes(app_module: str, root: Path) -> dict[str, Route]:
    sys.path.insert(0, str(root))
    module = importlib.import_module(app_module)
    prefix = "api"
    host_json = root / "host.json"
    if host_json.is_file():
        prefix = json.loads(host_json.read_text()).get("extensions", {}).get("http", {}).get("routePrefix", prefix)
    routes = {}
    for function in app_functions(module.app):
        if function.is_http_function():
            route = Route(function)
            routes["/" + "/".join(p for p in (prefix.strip("/"), route.route.strip("/")) if p)] = route
    return routes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, a keep-alive client's delayed
    # ACK holds every response back about 40 ms.
    disable_nagle_algorithm = True
    routes: dict[str, Route] = {}
    function_key: str | None = None
    max_body: int = 8 * 1024 * 1024
    server_version = "tokencounter-localhost"

    def log_message(self, fmt, *args):  # method, path and status only: never bodies, never ?code= keys
        log.debug("%s %s %s", self.command, urlsplit(self.path).path, args[1] if len(args) > 1 else "")

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str, close: bool = False) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if close:
            headers["Connection"] = "close"
            self.close_connection = True
        self._send(status, body, headers)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._error(400, "bad_request", "Content-Length is not a number", close=True)
            return None
        if length > self.max_body:
            # Refused before reading: the connection closes instead of draining a huge body.
            self._error(
                413,
                "payload_too_large",
                f"body is {length} bytes; the limit is {self.max_body} (TOKENCOUNTER_MAX_BODY_BYTES)",
                close=True,
            )
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            digits = line.split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):  # int(..., 16) would take a sign, "0x" or "_"
                self._error(400, "bad_request", "malformed chunked body", close=True)
                return None
            size = int(digits, 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(data)
            if len(data) + size > self.max_body:
                self._error(413, "payload_too_large", f"body exceeds {self.max_body} bytes", close=True)
                return None
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _authorized(self, route: Route, query: dict[str, str]) -> bool:
        if route.auth_level == "anonymous" or not self.function_key:
            return True
        given = self.headers.get("x-functions-key") or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.function_key.encode())

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route = self.routes.get(url.path.rstrip("/") or "/")
        body = self._read_body()
        if body is None:
            return
        if route is None or (route.methods and self.command not in route.methods):
            self._error(404, "not_found", f"no function at {self.command} {url.path}")
            return
        query = dict(parse_qsl(url.query))
        if not self._authorized(route, query):
            self._error(401, "unauthorized", "missing or wrong function key (x-functions-key header or ?code=)")
            return
        request = func.HttpRequest(
            method=self.command,
            url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
            headers=dict(self.headers.items()),
            params=query,
            route_params={},
            body=body,
        )
        try:
            response = route.call(request)
        except Exception as exc:  # noqa: BLE001 - as the Functions host: a 500, no details
            log.error("function %s raised %s", route.name, type(exc).__name__)
            self._error(500, "internal_error", "the function raised an exception")
            return
        headers = dict(response.headers.items())
        headers.setdefault("Content-Type", response.mimetype or "application/json")
        self._send(response.status_code, response.get_body() or b"", headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


def make_server(
    port: int, app_module: str = "function_app", root: Path | None = None, host: str = "127.0.0.1", settings=None
) -> _Server:
    root = root or Path.cwd()
    settings = settings or get_settings()
    handler = type(
        "AppHandler",
        (Handler,),
        {
            "routes": load_routes(app_module, root),
            "function_key": settings.function_key,
            "max_body": settings.max_body_bytes,
        },
    )
    return _Server((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app", default="function_app", help="module that defines `app = func.FunctionApp()`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(args.port, args.app, host=args.host)
    for path, route in server.RequestHandlerClass.routes.items():
        print(f"  {route.name}: [{','.join(sorted(route.methods or ['ANY']))}] http://{args.host}:{args.port}{path}")
    print(f"tokencounter local host listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
