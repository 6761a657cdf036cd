"""The counter as an HTTP-shaped service: (method, body) in, (status, JSON payload, headers) out.

`function_app.py` and the local host only adapt this to their HTTP objects.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from . import __version__, memory, telemetry
from .budget import Deadline
from .counting import count_request
from .datamodel import CountRequest
from .errors import InternalError, MethodNotAllowed, TokenCounterError, error_payload
from .explain import explain_request
from .payloads import model_name, parse_envelope
from .registry import REGISTRY, embedded_tokenizers, resolve
from .settings import Settings, get_settings

log = logging.getLogger("tokencounter")
# What any request may render besides TOKENCOUNTER_MAX_RENDER_RATIO times its body.
RENDER_FLOOR_CHARS = 256 * 1024


@dataclass
class Reply:
    status: int
    payload: dict
    headers: dict[str, str] = field(default_factory=dict)


def handle(method: str, body: bytes, settings: Settings | None = None, headers: dict[str, str] | None = None) -> Reply:
    """Count one APIM envelope. Never raises: every failure becomes a JSON error reply."""

    def count(request: CountRequest, settings: Settings, deadline: Deadline) -> dict:
        emit = telemetry.requested(headers or {})
        recount = settings.always_recount or (emit is not None and emit.recount)
        result = count_request(request, settings, deadline, recount=recount)
        if emit:
            telemetry.emit(emit, result, settings.appinsights_connection_string)
        return result

    return _serve(method, body, settings, count, "/api/tokencounter")


def explain(method: str, body: bytes, settings: Settings | None = None) -> Reply:
    """Explain one APIM envelope's count (explain.py): the same envelope, errors and limits as handle()."""
    return _serve(method, body, settings, explain_request, "/api/tokencounter/explain")


def _serve(method: str, body: bytes, settings: Settings | None, work, path: str) -> Reply:
    memory.configure()
    try:
        return _handle(method, body, settings or get_settings(), work, path)
    finally:
        # The request's objects are gone once _handle returns: what they held can go back to the OS.
        memory.release_after(len(body))


def _handle(method: str, body: bytes, settings: Settings, work, path: str) -> Reply:
    started = time.perf_counter()
    try:
        if method.upper() != "POST":
            raise MethodNotAllowed(
                f"{method.upper()} is not allowed; POST the JSON envelope to {path}", headers={"Allow": "POST"}
            )
        deadline = Deadline(settings.time_budget_ms, settings.max_render_ratio * len(body) + RENDER_FLOOR_CHARS)
        request = parse_envelope(body, settings)
        deadline.check()
        result = work(request, settings, deadline)
    except TokenCounterError as err:
        status, payload, error_headers = error_payload(err)
        log.info(
            "rejected status=%d code=%s bytes=%d ms=%.1f",
            status,
            err.code,
            len(body),
            (time.perf_counter() - started) * 1000,
        )
        return Reply(status, payload, error_headers)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - also a native library's panic (a BaseException): a JSON 500
        log.error("internal error %s while counting (bytes=%d)", type(exc).__name__, len(body))
        status, payload, error_headers = error_payload(InternalError("internal error; the request was not counted"))
        return Reply(status, payload, error_headers)
    usage = result["usage"]
    log.info(
        "counted tokenizer=%s source=%s prompt=%d completion=%d bytes=%d ms=%.1f",
        result["tokenizer"],
        result["source"],
        usage["prompt_tokens"],
        usage["completion_tokens"],
        len(body),
        (time.perf_counter() - started) * 1000,
    )
    return Reply(200, result)


def starts_at_once(body: bytes, settings: Settings | None = None) -> bool:
    """Whether counting `body` starts at once: the tokenizer of the model it names is loaded. A host that counts small
    requests on its event loop sends the others to a thread, so that a tokenizer's load never holds up the loop."""
    settings = settings or get_settings()
    readable, model = model_name(body)
    try:
        return readable and REGISTRY.is_loaded(resolve(model, settings), settings)
    except TokenCounterError:  # a model refused by name is answered at once
        return True


def health(settings: Settings | None = None) -> Reply:
    """Liveness and readiness: is the default tokenizer loaded; no settings or secrets revealed."""
    settings = settings or get_settings()
    default = resolve(None, settings).name
    loaded = REGISTRY.loaded()
    ready = default in loaded
    payload = {
        "status": "ok" if ready else "loading",
        "version": __version__,
        "default_tokenizer": default,
        "loaded": loaded,
        "failed": REGISTRY.failed(),
        "embedded": embedded_tokenizers(),
        "models": sorted(settings.models),
    }
    return Reply(200 if ready else 503, payload, {} if ready else {"Retry-After": "5"})


def preload(settings: Settings | None = None) -> None:
    """Load the default tokenizer (meant for a background thread at worker start)."""
    settings = settings or get_settings()
    try:
        REGISTRY.get(resolve(None, settings), settings)
    except TokenCounterError:
        pass  # logged by the registry; requests get the 503 with Retry-After
