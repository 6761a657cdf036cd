"""A local stand-in for the Functions host: serves the FunctionApp's own HTTP routes on :7071.

It imports `function_app.py` and calls the very function objects the Azure host calls, with
`azure.functions.HttpRequest`/`HttpResponse`, the host.json routePrefix and the function-key check.
HTTP itself is waitress's (strict parsing, a whole request read before a worker thread sees it, an
inactivity timeout, a connection limit); every status it answers carries the JSON error body the
function uses. Usage: `python -m tokencounter.localhost [--port 7071] [--app function_app]`.
"""

from __future__ import annotations

import argparse
import hmac
import importlib
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl

import azure.functions as func
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from . import playground
from .errors import HTTPProtocolError, MethodNotAllowed, NotFound, TokenCounterError, Unauthorized, error_payload
from .settings import Settings, get_settings

log = logging.getLogger("tokencounter.localhost")

# How the local host treats connections (the Azure front end has its own): a client silent for
# IDLE_TIMEOUT_S is disconnected, at most MAX_CONNECTIONS are open, WORKERS threads run functions.
IDLE_TIMEOUT_S = 30
MAX_CONNECTIONS = 2000
WORKERS = 8
# Lingering close (as Apache and nginx do): after an answer that closes the connection, the host stops sending and
# reads what the client still sends, for up to LINGER_S or LINGER_BYTES, so that closing with unread input does not
# reset the connection and destroy the answer (a 413 or 431 sent while the client is still sending).
LINGER_S = 2.0
LINGER_BYTES = 16 * 1024 * 1024


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


def load_routes(app_module: str, root: Path, settings: Settings | None = None) -> dict[str, Route]:
    """The app's HTTP routes by path. With `settings`, the app's module-level `settings` is replaced, so its
    functions count exactly as they would with those settings in the environment."""
    sys.path.insert(0, str(root))
    module = importlib.import_module(app_module)
    if settings is not None and hasattr(module, "settings"):
        module.settings = settings
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


def json_error(err: TokenCounterError) -> tuple[str, list[tuple[str, str]], bytes]:
    """A WSGI status line, headers and body for `err`, in the function's error shape."""
    status, payload, headers = error_payload(err)
    body = json.dumps(payload).encode()
    return (
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json; charset=utf-8"), *headers.items()],
        body,
    )


class App:
    """The WSGI application: route, check the key, call the function object, relay its HttpResponse."""

    def __init__(self, routes: dict[str, Route], function_key: str | None) -> None:
        self.routes = routes
        self.function_key = function_key

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"].upper()
        try:
            status, headers, body = self.respond(method, environ)
        except TokenCounterError as err:
            status, headers, body = json_error(err)
        except Exception as exc:  # noqa: BLE001 - as the Functions host: a 500, no details
            log.error("function raised %s", type(exc).__name__)
            status, headers, body = json_error(HTTPProtocolError(500, "the function raised an exception"))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    def respond(self, method: str, environ) -> tuple[str, list[tuple[str, str]], bytes]:
        path = environ.get("PATH_INFO") or "/"
        route = self.routes.get(path.rstrip("/") or "/")
        if route is None and (page := playground.asset(path.lstrip("/"))) is not None:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed here; use GET", headers={"Allow": "GET, HEAD"})
            body, headers = page
            return "200 OK", list(headers.items()), body
        if route is None:  # the path is not echoed: it may carry anything the caller sent
            raise NotFound("no function at this path; POST to /api/tokencounter")
        if route.methods and method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", headers={"Allow": allowed})
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        headers = {
            name[5:].replace("_", "-").title(): value for name, value in environ.items() if name.startswith("HTTP_")
        }
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").title()] = environ[name]
        if not self.authorized(route, headers, query):
            raise Unauthorized("missing or wrong function key (x-functions-key header or ?code=)")
        length = int(environ.get("CONTENT_LENGTH") or 0)  # waitress has checked it is digits only
        body = environ["wsgi.input"].read(length) if length else b""
        request = func.HttpRequest(
            method=method,
            url=f"http://{environ.get('HTTP_HOST', 'localhost')}{path}",
            headers=headers,
            params=query,
            route_params={},
            body=body,
        )
        response = route.call(request)
        out = [(name, value) for name, value in response.headers.items() if name.lower() != "content-length"]
        if not any(name.lower() == "content-type" for name, _ in out):
            out.append(("Content-Type", response.mimetype or "application/json"))
        code = response.status_code
        return f"{code} {HTTPStatus(code).phrase}", out, response.get_body() or b""

    def authorized(self, route: Route, headers: dict[str, str], query: dict[str, str]) -> bool:
        if route.auth_level == "anonymous" or not self.function_key:
            return True
        given = headers.get("X-Functions-Key") or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.function_key.encode())


class _JSONErrorTask(ErrorTask):
    """waitress's own refusals (malformed request, body too large, ...) in the function's JSON error shape."""

    def execute(self):
        error = self.request.error
        message = str(error.body)
        if error.code == 413:
            limit = self.channel.server.adj.max_request_body_size
            message = f"the body is larger than {limit} bytes (TOKENCOUNTER_MAX_BODY_BYTES)"
        status, headers, body = json_error(HTTPProtocolError(error.code, message))
        self.status = status
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _JSONErrorTask
    _linger_until: float | None = None
    _lingered = 0

    def handle_close(self):
        if self._linger_until is not None or not self.connected or self.total_outbufs_len:
            super().handle_close()
            return
        try:
            self.socket.shutdown(socket.SHUT_WR)  # the answer is flushed: the client sees its end now
        except OSError:
            super().handle_close()
            return
        self._linger_until = time.monotonic() + LINGER_S
        self.will_close = self.close_when_flushed = False

    def readable(self):
        return self._linger_until is not None or super().readable()

    def writable(self):
        if self._linger_until is not None:
            return self.will_close  # set by the idle-timeout sweep: close now
        return super().writable()

    def handle_read(self):
        if self._linger_until is None:
            super().handle_read()
            return
        data = self.recv(65536)  # discarded; b"" at the client's end (recv then closes the channel)
        self._lingered += len(data)
        if data and (self._lingered > LINGER_BYTES or time.monotonic() > self._linger_until):
            super().handle_close()


class _Server(TcpWSGIServer):
    channel_class = _Channel


class LocalHost:
    """waitress serving the app in-process: `serve_forever()` in one thread, `shutdown()` from another."""

    def __init__(self, app: App, adjustments: Adjustments) -> None:
        self.app = app
        self.routes = app.routes
        self._map: dict = {}
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(adjustments.threads)
        self._server = _Server(app, self._map, dispatcher=self._dispatcher, adj=adjustments)
        self.server_address = self._server.socket.getsockname()[:2]
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        from waitress import wasyncore

        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
        finally:
            for channel in list(self._map.values()):
                channel.close()
            self._dispatcher.shutdown(timeout=5)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stopping.set()
        if not self._stopped.is_set():
            try:
                self._server.trigger.pull_trigger()  # wakes the poll now rather than at its timeout
            except OSError:  # the loop is already closing its descriptors: it stops within its 1 s poll
                pass
        self._stopped.wait(10)

    def server_close(self) -> None:
        if not self._stopped.is_set():
            self._server.close()


def make_server(
    port: int,
    app_module: str = "function_app",
    root: Path | None = None,
    host: str = "127.0.0.1",
    settings: Settings | None = None,
    idle_timeout_s: int = IDLE_TIMEOUT_S,
) -> LocalHost:
    """The local host on `host:port` (0: a free port), serving the app with `settings` (default: the environment).

    A connection that sends nothing for `idle_timeout_s` (mid-request or between keep-alive requests) is closed."""
    root = root or Path.cwd()
    settings = settings or get_settings()
    app = App(load_routes(app_module, root, settings), settings.function_key)
    adjustments = Adjustments(
        host=host,
        port=port,
        threads=WORKERS,
        connection_limit=MAX_CONNECTIONS,
        channel_timeout=idle_timeout_s,
        cleanup_interval=max(1, idle_timeout_s // 3),
        # waitress answers a larger body 413 as it arrives, without handing it to a worker.
        max_request_body_size=settings.max_body_bytes,
        max_request_header_size=64 * 1024,
        ident="tokencounter-localhost",
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
    )
    return LocalHost(app, adjustments)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app", default="function_app", help="module that defines `app = func.FunctionApp()`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # waitress logs a warning per queued task under load; its errors (never bodies) still show.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = make_server(args.port, args.app, host=args.host)
    for path, route in server.routes.items():
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
