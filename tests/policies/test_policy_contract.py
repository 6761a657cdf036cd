"""Contract between the policies and the function: the envelope the policies' set-body builds (run in
Mono) is what tokencounter.service parses, and the fields the policies read are what it returns.
Counts come from the embedded Llama 3 tokenizer, so only their shape and sums are asserted."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json

import apimsim
import pytest
from apimsim import Call, FakeModel, Gateway, Identity, Message, json_response
from policy_samples import CHAT, REQUEST_BODY, STREAM, STREAM_WITH_USAGE, client_request, event_stream

if importlib.util.find_spec("tokencounter") is None:  # only a missing package skips; a broken one fails
    pytest.skip("the tokencounter package is not importable from here", allow_module_level=True)
service = importlib.import_module("tokencounter.service")


def handle(method: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    """tokencounter.service.handle, as (status, payload, headers) whatever its current return type."""
    if "headers" in inspect.signature(service.handle).parameters:
        result = service.handle(method, body, headers=headers)
    else:
        result = service.handle(method, body)
    if isinstance(result, tuple):
        return result
    return result.status, result.payload, result.headers


class RealFunction:
    """The function as APIM reaches it: the HTTP request a policy built, answered by service.handle."""

    def __init__(self):
        self.answers: list[tuple[Call, int, dict]] = []

    def __call__(self, call: Call) -> Message:
        assert call.headers.get("x-functions-key") == apimsim.NAMED_VALUES["tokencounter-key"]
        headers = {name: ",".join(values) for name, values in call.headers.to_json().items()}
        status, payload, _ = handle(call.method, call.body.encode("utf-8"), headers)
        self.answers.append((call, status, payload))
        # function_app.py: json.dumps(payload, ensure_ascii=False), application/json; charset=utf-8
        return json_response(
            json.dumps(payload, ensure_ascii=False), status, content_type="application/json; charset=utf-8"
        )


def assert_usage_shape(payload: dict, completion: bool):
    usage = payload["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(usage[k], int) and not isinstance(usage[k], bool) for k in usage)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert (usage["completion_tokens"] > 0) == completion
    assert payload["source"] in ("counted", "upstream")


def metrics_of(outcome) -> dict[str, float]:
    return {m.name: m.value for m in outcome.metrics}


RESPONSES = {
    "json": json_response(CHAT),
    "stream": event_stream(STREAM),
    "unicode": json_response(
        {
            **CHAT,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": 'Ünïcödé ✓ "quoted" \\ back\nslash \u2028 😀'},
                }
            ],
        }
    ),
}


@pytest.mark.parametrize("policy_name", ["emit-token-metrics.xml", "token-limit.xml"])
@pytest.mark.parametrize("kind", sorted(RESPONSES))
def test_the_function_counts_what_the_policy_sends(mono, policies, policy_name, kind):
    """The policy's envelope is accepted (200) and the emitted metrics are exactly the function's usage."""
    function = RealFunction()
    response = RESPONSES[kind]
    outcome = Gateway(mono, policies[policy_name], backend=FakeModel(response), function=function).run(client_request())
    assert outcome.error is None
    assert (outcome.response.status, outcome.response.body) == (200, response.body)
    call, status, payload = function.answers[-1]
    assert call.envelope() == {"RequestBody": REQUEST_BODY, "ResponseBody": response.body}
    assert status == 200, payload
    assert_usage_shape(payload, completion=True)
    assert payload["model"] == json.loads(REQUEST_BODY)["model"]
    usage = payload["usage"]
    assert metrics_of(outcome) == {
        "Total Tokens": usage["total_tokens"],
        "Prompt Tokens": usage["prompt_tokens"],
        "Completion Tokens": usage["completion_tokens"],
    }


def test_prompt_only_count_is_what_the_budget_uses(mono, policies):
    """token-limit.xml's inbound call (no ResponseBody) gets completion_tokens 0, and its prompt count is
    the policy's estimate."""
    function = RealFunction()
    outcome = Gateway(mono, policies["token-limit.xml"], backend=FakeModel(json_response(CHAT)), function=function).run(
        client_request()
    )
    call, status, payload = function.answers[0]
    assert call.envelope() == {"RequestBody": REQUEST_BODY}
    assert status == 200, payload
    assert_usage_shape(payload, completion=False)
    assert outcome.variables["tokencounter-prompt-estimate"] == payload["usage"]["prompt_tokens"]
    # The full count re-counts the same prompt: the two calls agree on it.
    assert function.answers[1][2]["usage"]["prompt_tokens"] == payload["usage"]["prompt_tokens"]


def test_upstream_usage_in_the_stream_agrees_with_the_function(mono, policies):
    """When the last chunk carries usage the policy does not call; the function would report the same
    numbers (it too prefers the model server's usage)."""
    function = RealFunction()
    response = event_stream(STREAM_WITH_USAGE)
    outcome = Gateway(mono, policies["emit-token-metrics.xml"], backend=FakeModel(response), function=function).run(
        client_request()
    )
    assert function.answers == []
    envelope = json.dumps({"RequestBody": REQUEST_BODY, "ResponseBody": response.body}).encode()
    status, payload, _ = handle("POST", envelope, {"Content-Type": "application/json"})
    assert status == 200
    assert metrics_of(outcome)["Total Tokens"] == payload["usage"]["total_tokens"]
    assert metrics_of(outcome)["Prompt Tokens"] == payload["usage"]["prompt_tokens"]


def test_function_errors_have_the_contract_shape_and_become_failed_metrics(mono, policies):
    """A request the function cannot count: a 4xx with {"error": {"code", "message"}}, and the policy
    emits tokencounter-failed with that status while the client is served."""
    function = RealFunction()
    body = json.dumps({"model": "llama-3-8b-instruct", "not_messages": True})
    outcome = Gateway(
        mono, policies["emit-token-metrics.xml"], backend=FakeModel(json_response(CHAT)), function=function
    ).run(client_request(body))
    _, status, payload = function.answers[-1]
    assert 400 <= status < 500
    assert set(payload["error"]) >= {"code", "message"}
    assert outcome.error is None and outcome.response.body == json.dumps(CHAT)
    assert metrics_of(outcome) == {"tokencounter-failed": 1.0}
    assert outcome.metrics[0].dimensions["reason"] == f"status-{status}"


def test_oneway_request_is_accepted(mono, policies):
    """The one-way envelope and x-tokencounter-* headers get the same 200 answer (emission itself needs
    Application Insights and is the function's own test)."""
    function = RealFunction()
    Gateway(
        mono,
        policies["emit-token-metrics-oneway.xml"],
        backend=FakeModel(json_response(CHAT)),
        function=function,
        identity=Identity(),
    ).run(client_request())
    [(call, status, payload)] = function.answers
    assert call.one_way and call.headers.get("x-tokencounter-emit") == "true"
    assert isinstance(json.loads(call.headers.get("x-tokencounter-dimensions")), dict)
    assert status == 200, payload
    assert_usage_shape(payload, completion=True)


def test_the_audit_call_is_recounted_by_the_function(mono, policies):
    """The audit's one-way call (x-tokencounter-emit: drift) makes the function recount a response that
    carries the backend's usage, and answer both counts."""
    function = RealFunction()
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    response = json_response({**CHAT, "usage": usage})
    policy = apimsim.load_policy(policies["emit-token-metrics.xml"].path, apimsim.VARIANTS["audit"])
    outcome = Gateway(mono, policy, backend=FakeModel(response), function=function).run(client_request())
    assert metrics_of(outcome) == {"Total Tokens": 5.0, "Prompt Tokens": 3.0, "Completion Tokens": 2.0}
    [(call, status, payload)] = function.answers
    assert call.one_way and status == 200, payload
    assert payload["source"] == "counted" and payload["upstream_usage"] == usage
    assert_usage_shape(payload, completion=True)
