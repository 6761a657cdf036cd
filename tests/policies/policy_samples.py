"""Sample client requests and model responses shared by the policy tests."""

from __future__ import annotations

import json

import apimsim
from apimsim import Headers, Message

NV = apimsim.NAMED_VALUES
REQUEST = {
    "model": "llama-3-8b-instruct",
    "max_tokens": 64,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Say "hi" in Ünïcödé ✓, with a \\ and a\nnewline'},
    ],
}
REQUEST_BODY = json.dumps(REQUEST, ensure_ascii=False)
# A streamed request as clients send it; the spacing is theirs, and must reach the model byte for byte.
STREAM_REQUEST_BODY = json.dumps({**REQUEST, "stream": True}, ensure_ascii=False, indent=1)
INCLUDE_USAGE = '"stream_options":{"include_usage":true},'


def with_include_usage(body: str) -> str:
    """What the policies forward for a streamed request without stream_options: the option inserted first."""
    brace = body.index("{")
    return body[: brace + 1] + INCLUDE_USAGE + body[brace + 1 :]


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "llama-3-8b-instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi ✓"}, "finish_reason": "stop"}],
}
USAGE = {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}
COUNTED = {"Total Tokens": 28.0, "Prompt Tokens": 21.0, "Completion Tokens": 7.0}  # FakeFunction's defaults


def sse(*chunks: dict, crlf: bool = False) -> str:
    """A server-sent event stream of chat.completion.chunk objects, ending with [DONE]."""
    end = "\r\n" if crlf else "\n"
    return "".join(f"data: {json.dumps(c)}{end}{end}" for c in chunks) + f"data: [DONE]{end}{end}"


def chunk(content: str | None, usage=None, finish=None, with_usage_key=False) -> dict:
    value = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "model": "llama-3-8b-instruct",
        "choices": [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage is not None or with_usage_key:
        value["usage"] = usage
    return value


STREAM = sse(chunk("Hi"), chunk(" there"), chunk("!", finish="stop"))
STREAM_WITH_USAGE = sse(
    chunk("Hi", with_usage_key=True),
    chunk("!", finish="stop", with_usage_key=True),
    chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}),
)


def event_stream(body: str) -> Message:
    return Message(status=200, headers=Headers({"Content-Type": "text/event-stream; charset=utf-8"}), body=body)


def client_request(body: str | None = REQUEST_BODY, method: str = "POST") -> Message:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, br", "api-key": "client-key"}
    return Message(method=method, headers=Headers(headers), body=body)
