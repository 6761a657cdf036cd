"""The policies run end to end in the test gateway (apimsim), every C# expression in Mono: what the
client gets, what the function is sent and which metrics are emitted, for each way things can go."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import apimsim
import pytest
from apimsim import CallFailed, FakeFunction, FakeModel, Gateway, Identity, Message, RateLimits, json_response
from policy_samples import (
    CHAT,
    COUNTED,
    NV,
    REQUEST_BODY,
    STREAM,
    STREAM_REQUEST_BODY,
    STREAM_WITH_USAGE,
    USAGE,
    chunk,
    client_request,
    event_stream,
    sse,
    with_include_usage,
)

# The buffered exact recount of streams, the explicit opt-in.
RECOUNT = apimsim.VARIANTS["recount"]
SHARED_DIMENSIONS = ("Subscription ID", "API ID", "model", "source")


@dataclass
class Scenario:
    """One way a request can go; `metrics` is the expected emission (None: nothing at all)."""

    id: str
    model: Message
    function: FakeFunction = field(default_factory=FakeFunction)
    metrics: dict[str, float] | None = field(default_factory=lambda: dict(COUNTED))
    failed: str | None = None  # expected tokencounter-failed reason (then no token metrics)
    called: bool = True  # the function is sent the request and response
    request: Message = field(default_factory=client_request)
    identity: Identity = field(default_factory=Identity)
    model_dimension: str = "llama-3-8b-instruct"
    failed_call_variable: str = "null"
    source: str = "counted"  # the source dimension: counted (the function) or backend (the model's usage)
    named_values: dict[str, str] | None = None
    backend_body: str | None = None  # what the model must receive; None: the client's body, unchanged

    def __post_init__(self):
        if not self.called and self.metrics and not self.failed:
            self.source = "backend"


def stream_scenario(id: str, model: Message, **kwargs) -> Scenario:
    """A streamed request in the buffered exact-recount mode (the default mode never reads the stream)."""
    request = client_request(STREAM_REQUEST_BODY)
    return Scenario(
        id, model, request=request, named_values=RECOUNT, backend_body=with_include_usage(STREAM_REQUEST_BODY), **kwargs
    )


def refusing_function() -> FakeFunction:
    """A function that must not be called: it would answer numbers no scenario expects."""
    return FakeFunction(prompt=999, completion=999)


SCENARIOS = [
    Scenario("counted", json_response(CHAT)),
    Scenario(
        "upstream-usage",
        json_response({**CHAT, "usage": USAGE}),
        refusing_function(),
        {"Total Tokens": 34.0, "Prompt Tokens": 30.0, "Completion Tokens": 4.0},
        called=False,
    ),
    Scenario(
        "upstream-usage-without-completion",
        json_response({"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
        refusing_function(),
        {"Total Tokens": 5.0, "Prompt Tokens": 5.0, "Completion Tokens": 0.0},
        called=False,
    ),
    Scenario("upstream-usage-null", json_response({**CHAT, "usage": None})),
    Scenario(
        "upstream-usage-not-integers", json_response({**CHAT, "usage": {"prompt_tokens": "30", "completion_tokens": 4}})
    ),
    Scenario(
        "upstream-usage-negative", json_response({**CHAT, "usage": {"prompt_tokens": -3, "completion_tokens": 4}})
    ),
    Scenario(
        "function-500",
        json_response(CHAT),
        FakeFunction(full=json_response({"error": {"code": "internal", "message": "x"}}, 500)),
        None,
        failed="status-500",
    ),
    Scenario(
        "function-429",
        json_response(CHAT),
        FakeFunction(full=json_response({"error": {"code": "busy", "message": "x"}}, 429)),
        None,
        failed="status-429",
    ),
    Scenario("function-timeout", json_response(CHAT), FakeFunction(full="timeout"), None, failed="no-response"),
    Scenario(
        "function-timeout-no-variable",
        json_response(CHAT),
        FakeFunction(full="timeout"),
        None,
        failed="no-response",
        failed_call_variable="absent",
    ),
    Scenario(
        "function-not-json",
        json_response(CHAT),
        FakeFunction(full=json_response("<html>Service Unavailable</html>", content_type="text/html")),
        None,
        failed="no-usage",
    ),
    Scenario(
        "function-json-array", json_response(CHAT), FakeFunction(full=json_response([1, 2])), None, failed="no-usage"
    ),
    Scenario(
        "function-without-usage",
        json_response(CHAT),
        FakeFunction(full=json_response({"model": "x"})),
        None,
        failed="no-usage",
    ),
    Scenario(
        "function-usage-not-integers",
        json_response(CHAT),
        FakeFunction(full=json_response({"usage": {"prompt_tokens": 1.5, "completion_tokens": 2}})),
        None,
        failed="no-usage",
    ),
    Scenario(
        "function-usage-missing-completion",
        json_response(CHAT),
        FakeFunction(full=json_response({"usage": {"prompt_tokens": 3}})),
        None,
        failed="no-usage",
    ),
    Scenario(
        "model-response-not-json",
        json_response("Hello there", content_type="text/plain"),
        FakeFunction(full=json_response({"error": {"code": "invalid_json", "message": "x"}}, 422)),
        None,
        failed="status-422",
    ),
    stream_scenario("stream", event_stream(STREAM)),
    stream_scenario("stream-crlf", event_stream(sse(chunk("Hi"), chunk("!", finish="stop"), crlf=True))),
    stream_scenario(
        "stream-usage-in-last-chunk",
        event_stream(STREAM_WITH_USAGE),
        function=refusing_function(),
        metrics={"Total Tokens": 33.0, "Prompt Tokens": 30.0, "Completion Tokens": 3.0},
        called=False,
    ),
    stream_scenario(
        "stream-usage-without-content-type",
        json_response(STREAM_WITH_USAGE, content_type="text/plain"),
        function=refusing_function(),
        metrics={"Total Tokens": 33.0, "Prompt Tokens": 30.0, "Completion Tokens": 3.0},
        called=False,
    ),
    stream_scenario(
        "stream-function-timeout",
        event_stream(STREAM),
        function=FakeFunction(full="timeout"),
        metrics=None,
        failed="no-response",
    ),
    # An SSE answer to a request that did not ask for a stream is read and counted like any other.
    Scenario("sse-answer-to-a-plain-request", event_stream(STREAM)),
    Scenario(
        "backend-error",
        json_response({"error": "overloaded"}, 503, "Service Unavailable"),
        refusing_function(),
        None,
        called=False,
    ),
    Scenario(
        "no-request-body",
        json_response({"object": "list", "data": []}),
        refusing_function(),
        None,
        called=False,
        request=client_request(None, "GET"),
    ),
    Scenario(
        "anonymous-caller", json_response(CHAT), identity=Identity(product_id=None, subscription_id=None, user_id=None)
    ),
    Scenario(
        "request-without-model",
        json_response(CHAT),
        request=client_request(json.dumps({"messages": [{"role": "user", "content": "hi"}]})),
        model_dimension="other",
    ),
    Scenario(
        "model-not-in-the-allow-list",
        json_response(CHAT),
        request=client_request(
            json.dumps({"model": "my-fine-tune-7", "messages": [{"role": "user", "content": "hi"}]})
        ),
        model_dimension="other",
    ),
    Scenario(
        "model-allow-listed-in-another-spelling",
        json_response(CHAT),
        request=client_request(
            json.dumps({"model": " META-LLAMA/llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "x"}]})
        ),
        model_dimension="meta-llama/Llama-3.1-8B-Instruct",
    ),
    Scenario(
        "request-model-not-a-string",
        json_response(CHAT),
        request=client_request(json.dumps({"model": {"name": "x"}, "messages": [{"role": "user", "content": "hi"}]})),
        model_dimension="other",
    ),
]


def run(mono, policy, scenario: Scenario, limits: RateLimits | None = None):
    if scenario.named_values is not None:
        policy = apimsim.load_policy(policy.path, scenario.named_values)
    model = FakeModel(scenario.model)
    gateway = Gateway(
        mono,
        policy,
        backend=model,
        function=scenario.function,
        identity=scenario.identity,
        limits=limits,
        failed_call_variable=scenario.failed_call_variable,
    )
    return gateway.run(scenario.request), model


def problems(outcome: apimsim.Outcome, model: FakeModel, scenario: Scenario) -> list[str]:
    """Everything the metrics policies must guarantee for a scenario; [] when all hold."""
    found = []
    if outcome.error:
        found.append(f"policy error (client got a 500): {outcome.error}")
    # The client gets the model's response unchanged.
    if (outcome.response.status, outcome.response.body) != (scenario.model.status, scenario.model.body):
        found.append(f"client got {outcome.response.status} {outcome.response.body!r}")
    if outcome.response.headers.get("Content-Type") != scenario.model.headers.get("Content-Type"):
        found.append("response Content-Type changed")
    # The model gets the client's request, uncompressed answers asked for.
    sent = model.requests[0] if model.requests else None
    expected_body = scenario.request.body if scenario.backend_body is None else scenario.backend_body
    if sent is None or sent.body != expected_body:
        found.append(f"backend got body {sent.body if sent else None!r}")
    elif "Accept-Encoding" in sent.headers:
        found.append("Accept-Encoding reached the backend")
    full = [c for c in outcome.calls if json.loads(c.body).get("ResponseBody") not in (None, "")]
    if scenario.called:
        if len(full) != 1:
            found.append(f"expected one counting call, got {len(full)}")
        else:
            call = full[0]
            envelope = call.envelope()
            if envelope != {"RequestBody": scenario.request.body, "ResponseBody": scenario.model.body}:
                found.append(f"function got envelope {envelope!r}")
            if (call.url, call.method) != (NV["tokencounter-url"], "POST"):
                found.append(f"function called at {call.method} {call.url}")
            if call.headers.get("x-functions-key") != NV["tokencounter-key"]:
                found.append("function key missing")
            if call.headers.get("Content-Type") != "application/json":
                found.append("function call is not application/json")
    elif full:
        found.append("the function was called")
    emitted = outcome.values()
    if scenario.failed:
        if emitted != {"tokencounter-failed": 1.0}:
            found.append(f"expected only tokencounter-failed, got {emitted}")
        elif outcome.metric("tokencounter-failed").dimensions.get("reason") != scenario.failed:
            found.append(f"failure reason {outcome.metric('tokencounter-failed').dimensions.get('reason')!r}")
    elif scenario.metrics is None:
        if emitted:
            found.append(f"expected no metrics, got {emitted}")
    elif emitted != scenario.metrics:
        found.append(f"metrics {emitted} != {scenario.metrics}")
    if not outcome.buffered:
        found.append("a response this policy reads was forwarded unbuffered")
    for metric in outcome.metrics:
        ident = scenario.identity
        expected = {
            "Subscription ID": ident.subscription_id or "",
            "API ID": ident.api_id,
            "model": scenario.model_dimension,
            "source": scenario.source,
        }
        if scenario.failed:
            expected["reason"] = scenario.failed
        if metric.dimensions != expected or metric.namespace != NV["tokencounter-namespace"]:
            found.append(f"{metric.name}: namespace {metric.namespace!r}, dimensions {metric.dimensions}")
    return found


@pytest.mark.parametrize("policy_name", ["emit-token-metrics.xml", "token-limit.xml"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_metrics(mono, policies, policy_name, scenario):
    """Right metrics (or one tokencounter-failed, or none), the client's response untouched, no policy error."""
    outcome, model = run(mono, policies[policy_name], scenario)
    assert problems(outcome, model, scenario) == []


@pytest.mark.parametrize("mutation", sorted(apimsim.MUTATIONS))
def test_mutant_is_caught(mono, mutation):
    """Each flaw of the sample policy, put back into emit-token-metrics.xml, fails some scenario."""
    policy = apimsim.mutant(mutation)
    caught = []
    for scenario in SCENARIOS:
        outcome, model = run(mono, policy, scenario)
        caught += problems(outcome, model, scenario)
    assert caught


# ---------------------------------------------------------------- token-limit.xml

LIMIT = int(NV["tokencounter-tokens-per-minute"])
SUBSCRIPTION_KEY = "tokencounter-sub-0001"


def limit_run(
    mono,
    policies,
    limits: RateLimits,
    function: FakeFunction,
    model: Message | None = None,
    identity: Identity | None = None,
):
    scenario = Scenario("limit", model or json_response(CHAT), function, identity=identity or Identity())
    return run(mono, policies["token-limit.xml"], scenario, limits)


def charged(limits: RateLimits, key: str = SUBSCRIPTION_KEY) -> list[int]:
    return [n for _, n in limits.windows.get(key, [])]


@pytest.mark.parametrize("remaining_type", ["int", "long"])
def test_under_the_limit_passes_and_is_charged_prompt_plus_completion(mono, policies, remaining_type):
    """The prompt is counted first (no ResponseBody), the answer passes, the full count is charged."""
    limits = RateLimits(remaining_type=remaining_type)
    function = FakeFunction(prompt=21, completion=7)
    outcome, model = limit_run(mono, policies, limits, function)
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (200, json.dumps(CHAT))
    assert len(model.requests) == 1
    prompt_only = outcome.calls[0].envelope()
    assert prompt_only == {"RequestBody": REQUEST_BODY}
    assert charged(limits) == [28]
    assert outcome.response.headers.get("x-ratelimit-remaining-tokens") == str(LIMIT)
    assert outcome.response.headers.get("x-ratelimit-limit-tokens") == str(LIMIT)
    assert outcome.values() == COUNTED


def test_prompt_larger_than_what_is_left_gets_429(mono, policies):
    """Rejected before the model, with Retry-After and the remaining-tokens header; not charged."""
    limits = RateLimits(windows={SUBSCRIPTION_KEY: [(0.0, LIMIT - 100)]})
    outcome, model = limit_run(mono, policies, limits, FakeFunction(prompt=150))
    assert outcome.error is None
    assert outcome.response.status == 429
    assert outcome.response.headers.get("Retry-After") == "60"
    assert outcome.response.headers.get("x-ratelimit-remaining-tokens") == "100"
    assert outcome.response.headers.get("x-ratelimit-limit-tokens") == str(LIMIT)
    assert outcome.response.headers.get("Content-Type") == "application/json"
    body = json.loads(outcome.response.body)
    assert body["statusCode"] == 429 and body["message"].startswith("Token limit is exceeded")
    assert model.requests == []
    assert charged(limits) == [LIMIT - 100]
    assert outcome.metrics == []


def test_prompt_larger_than_the_whole_limit_says_so(mono, policies):
    """A prompt that can never fit is told why, not just to retry."""
    outcome, model = limit_run(mono, policies, RateLimits(), FakeFunction(prompt=LIMIT + 1))
    assert outcome.response.status == 429
    assert f"the prompt has {LIMIT + 1} tokens" in json.loads(outcome.response.body)["message"]
    assert model.requests == []


def test_spent_budget_is_rejected_until_the_window_moves(mono, policies):
    """Completion tokens count: two 600-token requests spend a 1000 budget; the third waits a minute."""
    limits = RateLimits()
    function = FakeFunction(prompt=100, completion=500)
    for _ in range(2):
        outcome, _ = limit_run(mono, policies, limits, function)
        assert outcome.response.status == 200
        limits.now += 5
    assert charged(limits) == [600, 600]
    outcome, model = limit_run(mono, policies, limits, function)
    assert outcome.response.status == 429
    assert 0 < int(outcome.response.headers.get("Retry-After")) <= 60
    assert model.requests == []
    limits.now += 60
    outcome, model = limit_run(mono, policies, limits, function)
    assert outcome.response.status == 200 and len(model.requests) == 1


@pytest.mark.parametrize(
    "failure", ["timeout", json_response({"error": {"code": "x", "message": "x"}}, 500)], ids=["timeout", "status-500"]
)
def test_prompt_count_failure_fails_open(mono, policies, failure):
    """No prompt count: the request passes and is still charged its full count from the outbound count."""
    limits = RateLimits(windows={SUBSCRIPTION_KEY: [(0.0, LIMIT - 10)]})
    outcome, model = limit_run(mono, policies, limits, FakeFunction(prompt=21, completion=7, prompt_only=failure))
    assert outcome.error is None
    assert outcome.response.status == 200 and len(model.requests) == 1
    assert charged(limits) == [LIMIT - 10, 28]


def test_function_down_fails_open_and_charges_nothing(mono, policies):
    """Nothing countable: the client is served, nothing is charged, tokencounter-failed says why."""
    limits = RateLimits()
    outcome, model = limit_run(mono, policies, limits, FakeFunction(full="timeout", prompt_only="timeout"))
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (200, json.dumps(CHAT))
    assert charged(limits) == []
    assert outcome.values() == {"tokencounter-failed": 1.0}


def test_outbound_count_failure_charges_the_prompt(mono, policies):
    """The prompt counted inbound is the best known charge when the full count fails."""
    limits = RateLimits()
    outcome, _ = limit_run(mono, policies, limits, FakeFunction(prompt=21, full="timeout"))
    assert outcome.response.status == 200
    assert charged(limits) == [21]


def test_upstream_usage_is_what_is_charged(mono, policies):
    """The model's own usage wins over the function's count, for the budget as for the metrics."""
    limits = RateLimits()
    outcome, _ = limit_run(mono, policies, limits, FakeFunction(prompt=21), json_response({**CHAT, "usage": USAGE}))
    assert charged(limits) == [34]
    assert len(outcome.calls) == 1  # the prompt-only call; no counting call


def test_backend_error_is_not_charged(mono, policies):
    limits = RateLimits()
    outcome, _ = limit_run(mono, policies, limits, FakeFunction(), json_response({"error": "x"}, 500, "Error"))
    assert outcome.response.status == 500
    assert charged(limits) == []


def test_anonymous_caller_is_limited_by_ip(mono, policies):
    """Without a subscription the budget is the client IP's."""
    limits = RateLimits()
    identity = Identity(product_id=None, subscription_id=None, user_id=None)
    limit_run(mono, policies, limits, FakeFunction(prompt=21, completion=7), identity=identity)
    assert limits.windows == {f"tokencounter-ip-{identity.ip}": [(0.0, 28)]}


# ---------------------------------------------------------------- emit-token-metrics-oneway.xml


def oneway_run(
    mono,
    policies,
    model: Message,
    function=None,
    request: Message | None = None,
    identity: Identity | None = None,
    named_values: dict[str, str] | None = None,
):
    fake = FakeModel(model)
    function = function or FakeFunction()
    policy = policies["emit-token-metrics-oneway.xml"]
    gateway = Gateway(
        mono,
        policy if named_values is None else apimsim.load_policy(policy.path, named_values),
        backend=fake,
        function=function,
        identity=identity or Identity(),
    )
    return gateway.run(request or client_request()), fake


@pytest.mark.parametrize(
    "response",
    [json_response(CHAT), json_response({**CHAT, "usage": USAGE}), event_stream(STREAM)],
    ids=["json", "json-with-usage", "stream"],
)
def test_oneway_sends_everything_the_function_needs_to_emit(mono, policies, response):
    """One fire-and-forget call with the envelope and the x-tokencounter-* headers; APIM emits nothing."""
    outcome, model = oneway_run(mono, policies, response)
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (response.status, response.body)
    assert model.requests[0].body == REQUEST_BODY
    assert outcome.metrics == []
    [call] = outcome.calls
    assert call.one_way and (call.url, call.method) == (NV["tokencounter-url"], "POST")
    assert call.envelope() == {"RequestBody": REQUEST_BODY, "ResponseBody": response.body}
    assert call.headers.get("x-functions-key") == NV["tokencounter-key"]
    assert call.headers.get("x-tokencounter-emit") == "true"
    assert call.headers.get("x-tokencounter-namespace") == NV["tokencounter-namespace"]
    # The dimensions of policies/dimensions.xml; the function fills in "source" from what it did.
    assert json.loads(call.headers.get("x-tokencounter-dimensions")) == {
        "Subscription ID": "sub-0001",
        "API ID": "llama-api",
        "model": "llama-3-8b-instruct",
        "source": "counted",
    }


def test_oneway_dimensions_header_is_ascii(mono, policies):
    """A non-ASCII model name travels \\u-escaped: header values must be ASCII."""
    body = json.dumps({"model": "lláma-3 ✓", "messages": [{"role": "user", "content": "hi"}]}, ensure_ascii=False)
    outcome, _ = oneway_run(
        mono,
        policies,
        json_response(CHAT),
        request=client_request(body),
        named_values=apimsim.VARIANTS["unicode-models"],
    )
    header = outcome.calls[0].headers.get("x-tokencounter-dimensions")
    assert header.isascii()
    assert json.loads(header)["model"] == "lláma-3 ✓"


def test_oneway_anonymous_caller(mono, policies):
    identity = Identity(product_id=None, subscription_id=None, user_id=None)
    outcome, _ = oneway_run(mono, policies, json_response(CHAT), identity=identity)
    dimensions = json.loads(outcome.calls[0].headers.get("x-tokencounter-dimensions"))
    assert dimensions["Subscription ID"] == ""


def test_oneway_function_unreachable_does_not_touch_the_client(mono, policies):
    def unreachable(call):
        raise CallFailed("connection refused")

    outcome, _ = oneway_run(mono, policies, json_response(CHAT), unreachable)
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (200, json.dumps(CHAT))


@pytest.mark.parametrize(
    "response,request_",
    [
        (json_response({"error": "x"}, 500, "Error"), client_request()),
        (json_response({"data": []}), client_request(None, "GET")),
    ],
    ids=["backend-error", "no-request-body"],
)
def test_oneway_skips_what_is_not_countable(mono, policies, response, request_):
    outcome, _ = oneway_run(mono, policies, response, request=request_)
    assert outcome.error is None and outcome.calls == []
    assert outcome.response.body == response.body


# ---------------------------------------------------------------- streams, never buffered by default

STREAMING_POLICIES = ["emit-token-metrics.xml", "token-limit.xml", "emit-token-metrics-oneway.xml"]
STREAM_USAGE = {"Total Tokens": 33.0, "Prompt Tokens": 30.0, "Completion Tokens": 3.0}


def stream_run(
    mono, policies, policy_name, response: Message, body: str = STREAM_REQUEST_BODY, variant="default", function=None
):
    policy = apimsim.load_policy(policies[policy_name].path, apimsim.VARIANTS[variant])
    model = FakeModel(response)
    function = function or refusing_function()
    gateway = Gateway(mono, policy, backend=model, function=function, limits=RateLimits())
    return gateway.run(client_request(body)), model, function


def gateway_metered(outcome, expected: dict[str, float], meter: str):
    """The three token metrics came from llm-emit-token-metric, with the declared dimensions and source=gateway."""
    assert outcome.values() == expected
    for metric in outcome.metrics:
        assert metric.meter == meter and metric.namespace == NV["tokencounter-namespace"]
        assert metric.dimensions == {
            "Subscription ID": "sub-0001",
            "API ID": "llama-api",
            "model": "llama-3-8b-instruct",
            "source": "gateway",
        }


@pytest.mark.parametrize("policy_name", STREAMING_POLICIES)
def test_a_stream_is_relayed_unbuffered_never_read_and_metered_by_the_gateway(mono, policies, policy_name):
    """The default: include_usage asked for, buffer-response="false", no body read, no function counting call."""
    response = event_stream(STREAM_WITH_USAGE)
    outcome, model, function = stream_run(mono, policies, policy_name, response)
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (200, response.body)
    assert not outcome.buffered and not outcome.response_read
    assert model.requests[0].body == with_include_usage(STREAM_REQUEST_BODY)
    # The model gets the client's request with only the option added: parsed, it is the same request.
    assert json.loads(model.requests[0].body) == {
        **json.loads(STREAM_REQUEST_BODY),
        "stream_options": {"include_usage": True},
    }
    assert [c for c in outcome.calls if "ResponseBody" in json.loads(c.body)] == []
    gateway_metered(outcome, STREAM_USAGE, "usage")


def test_a_stream_without_usage_is_estimated_by_the_gateway_not_buffered(mono, policies):
    """A backend that ignores include_usage: the built-in meter estimates; the stream is still not read."""
    outcome, _, _ = stream_run(mono, policies, "emit-token-metrics.xml", event_stream(STREAM))
    assert not outcome.buffered and not outcome.response_read
    assert {m.meter for m in outcome.metrics} == {"estimate"}
    assert {m.dimensions["source"] for m in outcome.metrics} == {"gateway"}


@pytest.mark.parametrize(
    "stream_options", [{"include_usage": False}, {"include_usage": True}, {"continuous_usage_stats": True}, None]
)
def test_the_clients_own_stream_options_are_never_changed(mono, policies, stream_options):
    body = json.dumps({**json.loads(REQUEST_BODY), "stream": True, "stream_options": stream_options})
    outcome, model, _ = stream_run(mono, policies, "emit-token-metrics.xml", event_stream(STREAM), body)
    assert model.requests[0].body == body
    assert not outcome.response_read


def test_include_usage_can_be_switched_off(mono, policies):
    outcome, model, _ = stream_run(
        mono, policies, "emit-token-metrics.xml", event_stream(STREAM), variant="no-include-usage"
    )
    assert model.requests[0].body == STREAM_REQUEST_BODY
    assert not outcome.buffered and not outcome.response_read


@pytest.mark.parametrize("flag", ["true", '"true"', '"True"', "1", '"yes"'])
def test_stream_flags_that_vllm_reads_as_true_are_streams(mono, policies, flag):
    body = REQUEST_BODY[:-1] + f', "stream": {flag}}}'
    outcome, model, _ = stream_run(mono, policies, "emit-token-metrics.xml", event_stream(STREAM_WITH_USAGE), body)
    assert not outcome.buffered and not outcome.response_read
    assert model.requests[0].body == with_include_usage(body)


@pytest.mark.parametrize("flag", ["false", "0", '"no"', "null", '{"x": 1}'])
def test_requests_that_do_not_stream_keep_the_counted_path(mono, policies, flag):
    body = REQUEST_BODY[:-1] + f', "stream": {flag}}}'
    function = FakeFunction()
    outcome, model, _ = stream_run(
        mono, policies, "emit-token-metrics.xml", json_response(CHAT), body, function=function
    )
    assert outcome.buffered and outcome.response_read
    assert model.requests[0].body == body
    assert outcome.values() == COUNTED


@pytest.mark.parametrize("policy_name", STREAMING_POLICIES)
def test_the_buffered_recount_is_an_explicit_opt_in(mono, policies, policy_name):
    """tokencounter-stream-recount=true: the stream is buffered and the function counts it exactly."""
    function = FakeFunction()
    outcome, model, _ = stream_run(
        mono, policies, policy_name, event_stream(STREAM), variant="recount", function=function
    )
    assert outcome.buffered and outcome.response_read
    assert outcome.response.body == STREAM
    counting = [c for c in outcome.calls if json.loads(c.body).get("ResponseBody")]
    assert [c.envelope() for c in counting] == [{"RequestBody": STREAM_REQUEST_BODY, "ResponseBody": STREAM}]
    if policy_name != "emit-token-metrics-oneway.xml":
        assert outcome.values() == COUNTED
        assert {m.dimensions["source"] for m in outcome.metrics} == {"counted"}


def test_a_relayed_stream_is_charged_its_exact_prompt(mono, policies):
    """token-limit.xml: the stream is not read, so the budget is charged the prompt counted inbound."""
    limits = RateLimits()
    policy = policies["token-limit.xml"]
    gateway = Gateway(
        mono,
        policy,
        backend=FakeModel(event_stream(STREAM_WITH_USAGE)),
        function=FakeFunction(prompt=21),
        limits=limits,
    )
    outcome = gateway.run(client_request(STREAM_REQUEST_BODY))
    assert not outcome.response_read and not outcome.buffered
    assert [c.envelope() for c in outcome.calls] == [{"RequestBody": STREAM_REQUEST_BODY}]
    assert charged(limits) == [21]


@pytest.mark.parametrize(
    "failure", ["timeout", json_response({"error": {"code": "x", "message": "x"}}, 503)], ids=["slow", "failing"]
)
def test_a_slow_or_failing_prompt_counter_adds_at_most_its_timeout(mono, policies, failure):
    """The token-limit path's call has a 2 s timeout and fails open: the request reaches the model."""
    limits = RateLimits()
    outcome, model = limit_run(mono, policies, limits, FakeFunction(prompt_only=failure))
    prompt_call = outcome.calls[0]
    assert prompt_call.envelope() == {"RequestBody": REQUEST_BODY} and prompt_call.timeout <= 2
    assert outcome.error is None and outcome.response.status == 200 and len(model.requests) == 1


# ---------------------------------------------------------------- audit


def audit_run(mono, policies, policy_name, response: Message, variant="audit"):
    policy = apimsim.load_policy(policies[policy_name].path, apimsim.VARIANTS[variant])
    function = FakeFunction()
    gateway = Gateway(mono, policy, backend=FakeModel(response), function=function, limits=RateLimits())
    return gateway.run(client_request()), function


@pytest.mark.parametrize("policy_name", ["emit-token-metrics.xml", "token-limit.xml"])
def test_audit_recounts_reported_usage_one_way(mono, policies, policy_name):
    """tokencounter-audit-percent=100: the backend's usage is emitted, and the function is asked to recount it."""
    response = json_response({**CHAT, "usage": USAGE})
    outcome, _ = audit_run(mono, policies, policy_name, response)
    assert outcome.error is None and outcome.response.body == response.body
    assert outcome.values() == {"Total Tokens": 34.0, "Prompt Tokens": 30.0, "Completion Tokens": 4.0}
    assert {m.dimensions["source"] for m in outcome.metrics} == {"backend"}
    [audit] = [c for c in outcome.calls if c.one_way]
    assert audit.envelope() == {"RequestBody": REQUEST_BODY, "ResponseBody": response.body}
    assert audit.headers.get("x-tokencounter-emit") == "drift"
    assert audit.headers.get("x-tokencounter-namespace") == NV["tokencounter-namespace"]
    assert json.loads(audit.headers.get("x-tokencounter-dimensions")) == {
        "Subscription ID": "sub-0001",
        "API ID": "llama-api",
        "model": "llama-3-8b-instruct",
        "source": "backend",
    }


@pytest.mark.parametrize("variant", ["default", "audit-off-by-typo"])
def test_audit_is_off_unless_asked_for(mono, policies, variant):
    outcome, _ = audit_run(mono, policies, "emit-token-metrics.xml", json_response({**CHAT, "usage": USAGE}), variant)
    assert outcome.calls == []


def test_audit_never_adds_a_call_to_what_the_function_counts_anyway(mono, policies):
    outcome, _ = audit_run(mono, policies, "emit-token-metrics.xml", json_response(CHAT))
    assert [c.one_way for c in outcome.calls] == [False]
    assert outcome.values() == COUNTED
