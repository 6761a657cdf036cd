"""Azure Functions entry point (Python v2 model): HTTP in, tokencounter out. No logic lives here."""

import json
import threading

import azure.functions as func

from tokencounter import playground, service
from tokencounter.settings import get_settings

settings = get_settings()
app = func.FunctionApp(http_auth_level=func.AuthLevel(settings.auth_level))

# Every method is routed here so that the service, not the host, answers a wrong one with a JSON 405.
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _http(reply: service.Reply) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(reply.payload, ensure_ascii=False),
        status_code=reply.status,
        headers=reply.headers,
        mimetype="application/json",
        charset="utf-8",
    )


@app.route(route="tokencounter", methods=ALL_METHODS)
def tokencounter(req: func.HttpRequest) -> func.HttpResponse:
    return _http(service.handle(req.method, req.get_body(), settings, dict(req.headers)))


@app.route(route="tokencounter/explain", methods=ALL_METHODS)
def explain(req: func.HttpRequest) -> func.HttpResponse:
    return _http(service.explain(req.method, req.get_body(), settings))


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _http(service.health(settings))


if settings.playground:

    @app.route(route="playground/{name?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def playground_page(req: func.HttpRequest) -> func.HttpResponse:
        status, headers, body = playground.serve(req.route_params.get("name"), req.url)
        return func.HttpResponse(body, status_code=status, headers=headers)


if settings.preload:
    # Load the tokenizer while the worker waits for its first request, not during it.
    threading.Thread(target=service.preload, args=(settings,), name="tokencounter-preload", daemon=True).start()
