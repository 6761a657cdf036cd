"""A local stand-in for the Functions host: serves the FunctionApp's own HTTP routes on :7071.

It imports `function_app.py` and calls the very function objects the Azure host calls, with
`azure.functions.HttpRequest`/`HttpResponse`, the host.json routePrefix and the function-key check.
HTTP itself is uvicorn's on httptools (llhttp, Node's strict parser) and uvloop, with the host's limits added to
its protocol: a JSON answer to everything refused, a header size limit, a body size limit checked before the body
is read, an idle timeout mid-request, a connection limit and lingering close. Small requests are counted on the
event loop (no thread handoff per request); large ones in a worker thread, so they never hold up the small.
Usage: `python -m tokencounter.localhost [--port 7071] [--app function_app]`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import importlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl

import azure.functions as func
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import playground, service
from .errors import HTTPProtocolError, MethodNotAllowed, NotFound, TokenCounterError, Unauthorized, error_payload
from .settings import Settings, get_settings

log = logging.getLogger("tokencounter.localhost")

# How the local host treats connections (the Azure front end has its own): a client silent for
# IDLE_TIMEOUT_S is disconnected, at most MAX_CONNECTIONS are open, WORKERS threads count large requests.
IDLE_TIMEOUT_S = 30
MAX_CONNECTIONS = 2000
WORKERS = 8
# Requests with bodies up to this size are counted on the event loop (a 1 KB chat takes 0.15 ms: a thread
# handoff would cost as much) when their tokenizer is loaded; larger ones, and any that would wait for a tokenizer
# to load, in a worker thread, which the GIL switches away from every 5 ms.
INLINE_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
# Requests waiting on one connection behind the one being answered (HTTP/1.1 pipelining); one more is refused (429).
# Reading stops while half as many wait; a client that sends more than that in one go is still refused, as httptools
# parses all it is given.
MAX_PIPELINED = 64
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


def json_error(err: TokenCounterError) -> tuple[int, list[tuple[str, str]], bytes]:
    """A status, headers and body for `err`, in the function's error shape."""
    status, payload, headers = error_payload(err)
    body = json.dumps(payload).encode()
    return status, [("Content-Type", "application/json; charset=utf-8"), *headers.items()], body


class App:
    """Route, check the key, call the function object, relay its HttpResponse: (status, headers, body)."""

    def __init__(self, routes: dict[str, Route], function_key: str | None) -> None:
        self.routes = routes
        self.function_key = function_key

    def answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            return self.respond(method, path, query, headers, body)
        except TokenCounterError as err:
            return json_error(err)
        except Exception as exc:  # noqa: BLE001 - as the Functions host: a 500, no details
            log.error("function raised %s", type(exc).__name__)
            return json_error(HTTPProtocolError(500, "the function raised an exception"))

    def respond(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        route = self.routes.get(path.rstrip("/") or "/")
        if route is None and (page := playground.asset(path.lstrip("/"))) is not None:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed here; use GET", headers={"Allow": "GET, HEAD"})
            content, page_headers = page
            return 200, list(page_headers.items()), content
        if route is None:  # the path is not echoed: it may carry anything the caller sent
            raise NotFound("no function at this path; POST to /api/tokencounter")
        if route.methods and method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", headers={"Allow": allowed})
        params = dict(parse_qsl(query, keep_blank_values=True))
        if not self.authorized(route, headers, params):
            raise Unauthorized("missing or wrong function key (x-functions-key header or ?code=)")
        request = func.HttpRequest(
            method=method,
            url=f"http://{headers.get('Host', 'localhost')}{path}",
            headers=headers,
            params=params,
            route_params={},
            body=body,
        )
        response = route.call(request)
        out = [(name, value) for name, value in response.headers.items() if name.lower() != "content-length"]
        if not any(name.lower() == "content-type" for name, _ in out):
            out.append(("Content-Type", response.mimetype or "application/json"))
        return response.status_code, out, response.get_body() or b""

    def authorized(self, route: Route, headers: dict[str, str], query: dict[str, str]) -> bool:
        if route.auth_level == "anonymous" or not self.function_key:
            return True
        given = headers.get("X-Functions-Key") or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.function_key.encode())


class _Asgi:
    """The ASGI side of App: the whole body (the protocol has held it to the limit), then App's answer, on the loop
    when it is quick, else in a worker thread."""

    def __init__(self, app: App, pool: ThreadPoolExecutor, quick: Callable[[bytes], bool]) -> None:
        self.app, self.pool, self.quick = app, pool, quick

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").title()
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client left, or the request was refused mid-body
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        call = (scope["method"], scope["path"], scope["query_string"].decode("latin-1"), headers, body)
        if len(body) <= INLINE_BODY_BYTES and (not body or self.quick(body)):
            status, out, content = self.app.answer(*call)
        else:
            status, out, content = await asyncio.get_running_loop().run_in_executor(self.pool, self.app.answer, *call)
        await _send(send, status, out, content)


async def _send(send, status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool = False) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Lingering:
    """The connection's transport as uvicorn sees it: close() is a lingering close (write side shut, input read
    and dropped for a while), and the connection counts as closing from then on."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        self._protocol.linger()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request the host refuses (uvicorn then calls
    send_400_response, which answers the refusal the callback chose)."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the host's limits (uvicorn has no header, trailer, body or idle limit of its
    own). A refusal is answered after the answers to the requests before it (pipelining), then the connection
    lingers; input after a refused request is dropped."""

    max_body_bytes = 0  # set per host (make_server)
    lingering = False
    _HEADERS_TOO_LARGE = f"the request line and headers are larger than {MAX_HEADER_BYTES} bytes"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False  # never, whatever handlers logging has: a query string may carry the function key
        self._refusal: tuple[int, str] | None = None  # chosen in a parser callback
        self._pending: tuple[int, str] | None = None  # to answer once the requests before it are answered
        self._client_done = False
        self._in_head, self._body_bytes = True, 0
        # Bytes read since the parser last made progress (a request began, its headers or a chunk ended, body
        # arrived): a head, chunk extensions, trailers or blank lines without end pass MAX_HEADER_BYTES.
        self._stalled = 0
        self._lingered = 0
        self._idle = None
        self._running = None

    def connection_made(self, transport) -> None:
        self._real = transport
        super().connection_made(_Lingering(transport, self))
        self._touch()
        if len(self.connections) > MAX_CONNECTIONS:
            self._refuse(503, f"the local host has {MAX_CONNECTIONS} connections open; retry shortly")

    def connection_lost(self, exc) -> None:
        if self._idle is not None:
            self._idle.cancel()
        # uvicorn marks only the last request parsed: the one being answered and those queued are gone too.
        for cycle in [self._running, *(entry[0] for entry in self.pipeline)]:
            if cycle is not None and not cycle.response_complete:
                self._drop(cycle)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self._pending is not None:  # refused: dropped, and past LINGER_BYTES closed
            if not self.lingering:
                self._pause()  # until the requests before the refusal are answered
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self._end()
            return
        self._touch()
        self._stalled += len(data)
        super().data_received(data)
        if self._stalled > MAX_HEADER_BYTES and self._pending is None and not self.lingering:
            if self._in_head:
                self._refuse(431, self._HEADERS_TOO_LARGE)
            else:
                self._refuse(431, f"the request's chunk framing or trailers pass {MAX_HEADER_BYTES} bytes")

    def eof_received(self) -> bool:
        """The client is done sending: the connection stays open only to answer requests it sent whole."""
        self._client_done = True
        if self.lingering:
            return False
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:  # sent in part: never answered
            self._drop(cycle)
        return bool(self._pending or self.pipeline or self._answering())

    def _answering(self) -> bool:
        running = self._running
        return running is not None and not running.response_complete and not running.disconnected

    def _drop(self, cycle) -> None:
        """A request that will not be answered: out of the queue, and its function (if it runs) gets a disconnect."""
        queued = next((entry for entry in self.pipeline if entry[0] is cycle), None)
        if queued is not None:
            self.pipeline.remove(queued)
        cycle.disconnected = True
        cycle.message_event.set()

    # Parser callbacks

    def on_message_begin(self) -> None:
        self._in_head, self._body_bytes, self._stalled = True, 0, 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer: its fields would join the headers the function sees
            self._refusal = (400, "chunked request trailers are not accepted; send the fields as headers")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEADER_BYTES:
            self._refusal = (431, self._HEADERS_TOO_LARGE)
            raise _Refused
        length = next((value for name, value in self.headers if name == b"content-length"), b"0")
        if int(length) > self.max_body_bytes:  # llhttp has checked it is digits only
            self._refusal = (413, self._too_large())
            raise _Refused
        if self.parser.should_upgrade():  # llhttp would read what follows as another protocol's
            self._refusal = (400, "Upgrade and CONNECT are not supported; send plain HTTP/1.1 requests")
            raise _Refused
        if len(self.pipeline) >= MAX_PIPELINED:
            self._refusal = (429, f"more than {MAX_PIPELINED} requests wait on this connection; read the answers first")
            raise _Refused
        self._in_head, self._stalled = False, 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # uvicorn's own 500 (the app failed, or shutdown cut it short) in JSON
            self.cycle.send_500_response = functools.partial(_json_500, self.cycle)

    def on_chunk_header(self) -> None:
        self._stalled = 0

    def on_chunk_complete(self) -> None:
        self._stalled = 0

    def on_message_complete(self) -> None:
        self._stalled = 0
        super().on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._stalled = 0
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes:  # a chunked body past the limit
            self._refusal = (413, self._too_large())
            raise _Refused
        super().on_body(body)

    def _start_asgi_task(self, cycle, app) -> None:
        self._running = cycle  # the request being answered (self.cycle is the last one parsed)
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # reads on (uvicorn resumes reading after every answer)
        if self.lingering:
            return
        if len(self.pipeline) >= MAX_PIPELINED // 2:  # unless half the queue is full: the client waits (TCP)
            self.flow.pause_reading()
        self._touch()  # the client's idle time starts with the answer
        self._answer_refusal()
        if self._client_done and not self.lingering and not self.pipeline and not self._answering():
            self._real.close()

    # Refusals

    def send_400_response(self, msg: str) -> None:
        status, message = self._refusal or (400, "malformed HTTP request; send HTTP/1.1 with a valid request line")
        self._refuse(status, message)

    def _too_large(self) -> str:
        return f"the body is larger than {self.max_body_bytes} bytes (TOKENCOUNTER_MAX_BODY_BYTES)"

    def _refuse(self, status: int, message: str) -> None:
        if self.lingering or self._pending is not None:
            return
        refused = None if self._in_head else self.cycle  # the request refused, when it got as far as a cycle
        if refused is not None and not refused.response_complete:
            self._drop(refused)
        self._pending = (status, message)
        self._pause()
        self._answer_refusal()

    def _answer_refusal(self) -> None:
        """The pending refusal, once every request before it is answered."""
        if self._pending is None or self.pipeline or self._answering():
            return
        status, message = self._pending
        _, headers, body = json_error(HTTPProtocolError(status, message))
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in headers)]
        head += [f"Content-Length: {len(body)}", "Connection: close"]
        self._real.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.linger()

    def _pause(self) -> None:
        try:
            self._real.pause_reading()  # the client waits (TCP) rather than sending into the drop
        except RuntimeError:  # closing already
            pass

    def linger(self) -> None:
        if self.lingering:
            return
        self.lingering = True
        if self._idle is not None:
            self._idle.cancel()
        self._unset_keepalive_if_required()
        if self._client_done or self._real.is_closing() or not self._real.can_write_eof():
            self._real.close()  # nothing more will come: close once the answer is flushed
            return
        self._real.write_eof()  # the answer is flushed first: the client sees its end now
        try:
            self._real.resume_reading()  # reading may be paused (a body past the high-water mark): drain it
        except RuntimeError:
            pass
        self.loop.call_later(LINGER_S, self._end)

    def _end(self) -> None:
        """Closed, and at once if the client has not read what was sent (close would wait for it)."""
        if self._real.get_write_buffer_size():
            self._real.abort()
        else:
            self._real.close()

    def shutdown(self) -> None:
        if self._answering():
            self._running.keep_alive = False  # closed once answered
        else:
            self._real.close()  # the server stops: no lingering

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.config.timeout_keep_alive, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._real.get_write_buffer_size():  # an answer the client has not read for the whole timeout
            self._real.abort()
            return
        running = self._running
        if self.pipeline or self._answering() and not running.more_body:  # the host is busy, not the client
            self._touch()
        elif not self.lingering:
            self._real.close()  # silent mid-request or between requests: closed without an answer


async def _json_500(cycle) -> None:
    error = HTTPProtocolError(500, "the request could not be answered (the host stopped or the function failed)")
    await _send(cycle.send, *json_error(error), close=True)


class LocalHost:
    """uvicorn serving the app in-process: `serve_forever()` in one thread, `shutdown()` from another."""

    def __init__(self, app: App, config: uvicorn.Config, sock: socket.socket, pool: ThreadPoolExecutor) -> None:
        self.app = app
        self.routes = app.routes
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._pool = pool
        self.server_address = sock.getsockname()[:2]
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._pool.shutdown(wait=False)
            self._stopped.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._stopped.wait(10)

    def server_close(self) -> None:
        self._sock.close()


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
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="tokencounter-worker")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    config = uvicorn.Config(
        _Asgi(app, pool, functools.partial(service.starts_at_once, settings=settings)),
        http=type("_HostProtocol", (_Protocol,), {"max_body_bytes": settings.max_body_bytes}),
        ws="none",
        loop=_loop(),
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,  # a query string may carry the function key
        server_header=False,
        timeout_keep_alive=idle_timeout_s,
        timeout_graceful_shutdown=5,
    )
    return LocalHost(app, config, sock, pool)


def _loop() -> str:
    try:
        import uvloop  # noqa: F401 - the faster event loop, where it is installed (not on Windows)
    except ImportError:
        return "asyncio"
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app", default="function_app", help="module that defines `app = func.FunctionApp()`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
