"""Every rejected input gets the right 4xx, a JSON error with a code, and a message naming what to fix."""

from __future__ import annotations

import json

import pytest
from conftest import chat, env, post

from tokencounter.settings import Settings

TOOL_CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}

CASES = {
    # name: (body, status, code, words the message must contain)
    "not_json": (b"{nope", 400, "invalid_json", ["body", "not valid JSON"]),
    "empty_body": (b"", 400, "invalid_field", ["empty", "RequestBody"]),
    "invalid_utf8": (b'{"RequestBody": "\xff\xfe"}', 400, "invalid_json", ["UTF-8"]),
    "nan": (
        b'{"RequestBody": {"messages": [{"role": "user", "content": "x"}], "temperature": NaN}}',
        400,
        "invalid_json",
        ["NaN"],
    ),
    "array_envelope": (b"[1, 2]", 400, "invalid_field", ["body must be", "got array"]),
    "no_request_body": ({"ResponseBody": "{}"}, 400, "invalid_field", ["RequestBody is required"]),
    "request_body_not_json": ({"RequestBody": "this is not json"}, 400, "invalid_json", ["RequestBody"]),
    "request_body_number": ({"RequestBody": 42}, 400, "invalid_field", ["RequestBody", "got number"]),
    "request_body_json_array": ({"RequestBody": "[]"}, 400, "invalid_field", ["RequestBody", "got array"]),
    "no_messages": (env({"model": "x"}), 400, "invalid_field", ["messages", "prompt", "input"]),
    "messages_not_list": (env({"messages": "hi"}), 400, "invalid_field", ["RequestBody.messages", "got string"]),
    "messages_empty": (env({"messages": []}), 400, "invalid_field", ["RequestBody.messages is empty"]),
    "message_not_object": (env({"messages": ["hi"]}), 400, "invalid_field", ["RequestBody.messages[0]"]),
    "role_missing": (
        env({"messages": [{"content": "hi"}]}),
        400,
        "invalid_role",
        ["RequestBody.messages[0].role", "got null"],
    ),
    "role_not_string": (env({"messages": [{"role": 1, "content": "x"}]}), 400, "invalid_role", ["got number"]),
    "content_number": (env(chat(content=5)), 400, "invalid_field", ["messages[0].content", "got number"]),
    "content_part_not_object": (env(chat(content=[1])), 400, "invalid_field", ["content[0]"]),
    # Found by the fuzzer: an unhashable type or flag once reached a set lookup (a 500).
    "content_part_type_object": (
        env(chat(content=[{"type": {}, "text": "x"}])),
        400,
        "invalid_field",
        ["content[0].type", "got object"],
    ),
    "tool_strict_object": (
        env({"messages": [{"role": "user", "content": "x"}], "tools": [{"function": {"name": "f", "strict": {}}}]}),
        400,
        "invalid_field",
        ["tools[0].function.strict", "boolean"],
    ),
    "content_part_text_missing": (
        env(chat(content=[{"type": "text"}])),
        400,
        "invalid_field",
        ["content[0].text", "got null"],
    ),
    "image_part": (
        env(chat(content=[{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,"}}])),
        422,
        "unsupported_content",
        ["content[1]", "'image_url'"],
    ),
    "audio_part": (
        env(chat(content=[{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])),
        422,
        "unsupported_content",
        ["'input_audio'"],
    ),
    "unknown_part": (env(chat(content=[{"type": "hologram"}])), 422, "unsupported_content", ["content[0].type"]),
    "lone_surrogate": (
        b'{"RequestBody": {"messages": [{"role": "user", "content": "a\\ud800b"}]}}',
        400,
        "invalid_field",
        ["messages[0].content", "surrogate"],
    ),
    "tools_not_list": (env(chat(tools={"a": 1})), 400, "invalid_field", ["RequestBody.tools"]),
    "tool_without_function": (
        env(chat(tools=[{"type": "function"}])),
        400,
        "invalid_field",
        ["RequestBody.tools[0].function"],
    ),
    "tool_calls_not_list": (
        env({"messages": [{"role": "assistant", "tool_calls": "x"}]}),
        400,
        "invalid_field",
        ["tool_calls"],
    ),
    "prompt_wrong_type": (env({"prompt": {"a": 1}}), 400, "invalid_field", ["RequestBody.prompt"]),
    "prompt_empty_list": (env({"prompt": []}), 400, "invalid_field", ["RequestBody.prompt is empty"]),
    "input_bad_item": (env({"input": ["ok", 3.5]}), 400, "invalid_field", ["RequestBody.input[1]"]),
    "response_not_json": (
        env(chat(), "<html>502 Bad Gateway</html>"),
        400,
        "invalid_json",
        ["ResponseBody", "server-sent"],
    ),
    "response_broken_json": (env(chat(), '{"choices": ['), 400, "invalid_json", ["ResponseBody"]),
    "response_number": (
        {"RequestBody": json.dumps(chat()), "ResponseBody": 7},
        400,
        "invalid_field",
        ["ResponseBody", "got number"],
    ),
    "choices_not_list": (env(chat(), {"choices": {}}), 400, "invalid_field", ["ResponseBody.choices"]),
    "choice_without_message": (
        env(chat(), {"choices": [{"index": 0}]}),
        400,
        "invalid_field",
        ["ResponseBody.choices[0].message"],
    ),
    "sse_bad_event": (
        env(chat(), "data: {not json}\n\ndata: [DONE]\n\n"),
        400,
        "invalid_json",
        ["ResponseBody event 0"],
    ),
    "upstream_error": (
        env(chat(), {"object": "error", "message": "context too long", "code": 400}),
        422,
        "upstream_error",
        ["ResponseBody", "error response"],
    ),
    "upstream_error_openai": (
        env(chat(), {"error": {"message": "x", "type": "invalid_request_error"}}),
        422,
        "upstream_error",
        ["no tokens"],
    ),
    "template_refuses": (
        env({"model": "llama-3.1", "messages": [{"role": "assistant", "tool_calls": [TOOL_CALL, TOOL_CALL]}]}),
        422,
        "template_rejected",
        ["single tool-calls"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejected(name, settings):
    body, status, code, words = CASES[name]
    reply = post(body, settings)
    assert reply.status == status, reply.payload
    assert set(reply.payload) == {"error"}
    assert reply.payload["error"]["code"] == code
    for word in words:
        assert word in reply.payload["error"]["message"]


def test_method_not_allowed(settings):
    reply = post(env(chat()), settings, method="GET")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert reply.payload["error"]["code"] == "method_not_allowed"


def test_body_too_large():
    small = Settings(max_body_bytes=1000, preload=False)
    reply = post(env(chat("x" * 2000)), small)
    assert reply.status == 413
    assert (
        "1000" in reply.payload["error"]["message"]
        and "TOKENCOUNTER_MAX_BODY_BYTES" in reply.payload["error"]["message"]
    )


def test_too_many_messages():
    few = Settings(max_messages=3, preload=False)
    reply = post(env({"messages": [{"role": "user", "content": "x"}] * 4}), few)
    assert reply.status == 413
    assert "TOKENCOUNTER_MAX_MESSAGES" in reply.payload["error"]["message"]


@pytest.mark.parametrize("depth", [65, 100_000])
def test_too_deep(depth, settings):
    nested = "[" * depth + "]" * depth
    reply = post('{"RequestBody": {"messages": [{"role": "user", "content": "x"}], "x": ' + nested + "}}", settings)
    assert reply.status == 400
    assert reply.payload["error"]["code"] == "too_deep"


def test_errors_never_echo_values(settings):
    secret = "SECRET-VALUE-1234"
    bodies = [
        env({"messages": [{"role": "assistant", "tool_calls": secret}]}),
        env(chat(content=[{"type": secret}])),
        env({"prompt": {secret: 1}}),
        env(chat(), secret),
        {"RequestBody": secret},
    ]
    for body in bodies:
        reply = post(body, settings)
        assert 400 <= reply.status < 500
        assert secret not in json.dumps(reply.payload)


def test_huge_integer_literal(settings):
    reply = post(
        '{"RequestBody": {"messages": [{"role": "user", "content": "x"}], "seed": ' + "9" * 5000 + "}}", settings
    )
    assert reply.status == 400 and reply.payload["error"]["code"] == "invalid_json"
    assert "too many digits" in reply.payload["error"]["message"]
