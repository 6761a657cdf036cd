"""No prompt or completion text in any log record, exception message or error response.

A marker string is put in every place request content can sit (message content and parts, system prompt, tool
definitions, tool-call names and arguments, the model name, response content, refusals, SSE deltas and SSE
metadata lines, unknown keys) and in invalid variants that reach every error path. Each body is counted through
`service.handle` (fast path and AutoTokenizer path) and over HTTP through the local host, while every log record
of every logger (DEBUG and up), every warning and the process's stdout/stderr are captured. The marker must not
appear in any of them, in any exception the pipeline raises (message, chain, formatted traceback) or in any error
payload. A successful count may echo the caller's own `model` back in the payload, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import shutil
import threading
import traceback
import warnings
from contextlib import contextmanager

import pytest
from conftest import GOLDEN_DATE, local_host, raw_exchange
from corpus import CASES, chat_response, delta_chunks, sse

from tokencounter import registry, service
from tokencounter.counting import Deadline, count_request
from tokencounter.payloads import parse_envelope
from tokencounter.settings import Settings

M = "Zq7PrivMarker"  # ASCII, so JSON escaping cannot hide it
KEY = "privacy-test-function-key"
FAST = Settings(date_string=GOLDEN_DATE, preload=False)


# --------------------------------------------------------------------------- capture


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)


STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def record_texts(record: logging.LogRecord) -> list[str]:
    """Everything a log sink could write for a record: message, raw msg, args, exception and stack text."""
    out = [str(record.msg), repr(record.args)]
    try:
        out.append(record.getMessage())
    except Exception as exc:  # noqa: BLE001 - a record that cannot format is itself a finding
        out.append(f"<unformattable record: {type(exc).__name__}>")
    if record.exc_info:
        out.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        out.append(record.exc_text)
    if record.stack_info:
        out.append(record.stack_info)
    out.extend(repr(v) for k, v in vars(record).items() if k not in STANDARD_ATTRS)  # `extra=` fields
    return out


@contextmanager
def all_logs():
    """A DEBUG handler on the root logger and on every logger that does not propagate (transformers), every
    logger at DEBUG, logging.disable lifted and warnings recorded; all restored afterwards."""
    capture = Capture()
    root = logging.getLogger()
    manager = root.manager
    saved_disable = manager.disable
    loggers = [root] + [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved_levels = {lg: lg.level for lg in loggers}
    extra_handlers = [lg for lg in loggers if lg is not root and not lg.propagate]
    logging.disable(logging.NOTSET)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root.addHandler(capture)
    for lg in extra_handlers:
        lg.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield capture, caught
    finally:
        root.removeHandler(capture)
        for lg in extra_handlers:
            lg.removeHandler(capture)
        for lg, level in saved_levels.items():
            lg.setLevel(level)
        logging.disable(saved_disable)


def leaks(texts, secret: str = M) -> list[str]:
    return [t for t in texts if secret.lower() in t.lower()]


def assert_logs_clean(capture: Capture, caught, caplog=None, capfd=None, secret: str = M) -> None:
    texts = [t for r in capture.records for t in record_texts(r)]
    assert capture.records, "nothing was logged at all: the capture is not working"
    assert leaks(texts, secret) == []
    assert leaks([str(w.message) for w in caught], secret) == []
    if caplog is not None:
        assert leaks([caplog.text] + [t for r in caplog.records for t in record_texts(r)], secret) == []
    if capfd is not None:
        out, err = capfd.readouterr()
        assert leaks([out, err], secret) == []


def exception_texts(exc: BaseException) -> list[str]:
    """The message of an exception and of every exception chained to it, and the formatted traceback."""
    texts, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts.append(str(e))
        texts.append(getattr(e, "message", "") or "")
        todo += [e.__cause__, e.__context__]
    texts.append("".join(traceback.format_exception(exc)))
    return texts


# --------------------------------------------------------------------------- marked bodies


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def envelope(request, response=None, *, raw_request: str | None = None) -> bytes:
    out = {"RequestBody": raw_request if raw_request is not None else dumps(request)}
    if response is not None:
        out["ResponseBody"] = response if isinstance(response, str) else dumps(response)
    return dumps(out).encode("utf-8")


def marked_tool(name=M):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"describes {M}",
            "parameters": {
                "type": "object",
                "properties": {M: {"type": "string", "description": M, "enum": [M]}},
                "required": [M],
            },
        },
    }


def sse_text(lines: list[str], nl: str = "\n") -> str:
    return nl.join(lines) + nl


def marked_bodies(plain: str, tools: str) -> dict[str, tuple[bytes, dict, bool]]:
    """name -> (body, settings changes, must count): `plain` and `tools` are the model names to send."""
    user = {"role": "user", "content": f"what is {M}?"}
    call = {"id": f"call_{M}", "type": "function", "function": {"name": M, "arguments": dumps({"city": M})}}
    answer = chat_response((f"the answer is {M}", "stop"))
    ok: dict[str, tuple[bytes, dict]] = {
        "content": (envelope({"model": plain, "messages": [user]}, answer), {}),
        "content_objects": (
            dumps({"RequestBody": {"model": plain, "messages": [user]}, "ResponseBody": answer}).encode(),
            {},
        ),
        "parts": (
            envelope(
                {
                    "model": plain,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": M},
                                {"type": "input_text", "text": M},
                                M,
                                {"text": M},
                                {"type": "refusal", "refusal": M},
                            ],
                        }
                    ],
                }
            ),
            {},
        ),
        "system_developer_history": (
            envelope(
                {
                    "model": plain,
                    "messages": [
                        {"role": "system", "content": f"system {M}"},
                        {"role": "developer", "content": f"dev {M}"},
                        user,
                        {"role": "assistant", "content": f"earlier {M}"},
                        {"role": "tool", "content": M},
                        {"role": "ipython", "content": M},
                        {"role": "user", "content": M, "name": M},
                    ],
                }
            ),
            {},
        ),
        "unknown_keys": (
            dumps(
                {
                    "RequestBody": dumps({"model": plain, "messages": [user | {M: M}], M: [M]}),
                    "ResponseBody": dumps(answer | {M: M}),
                    M: {M: M},
                }
            ).encode(),
            {},
        ),
        "tools_request": (
            envelope(
                {
                    "model": tools,
                    "tools": [marked_tool()],
                    "tool_choice": {"function": M},
                    "messages": [{"role": "system", "content": M}, user],
                },
                chat_response(("", "tool_calls"), tool_calls=[call]),
            ),
            {},
        ),
        "tool_turns": (
            envelope(
                {
                    "model": tools,
                    "tools": [marked_tool()],
                    "messages": [
                        user,
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": f"call_{M}", "content": dumps({"result": M})},
                    ],
                },
                answer,
            ),
            {},
        ),
        "tool_args_not_json": (
            envelope(
                {
                    "model": tools,
                    "messages": [
                        user,
                        {"role": "assistant", "tool_calls": [{"function": {"name": M, "arguments": f"not json {M}"}}]},
                    ],
                }
            ),
            {},
        ),
        "response_refusal_and_calls": (
            envelope(
                {"model": plain, "messages": [user]},
                {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "content": [{"type": "text", "text": M}],
                                "refusal": M,
                                "tool_calls": [
                                    {"function": {"name": M, "arguments": {M: M}}},
                                    {"function": {"name": M, "arguments": M}},
                                ],
                            },
                        },
                        {"index": 1, "text": M, "finish_reason": "length"},
                    ]
                },
            ),
            {},
        ),
        "sse": (
            envelope(
                {"model": plain, "stream": True, "messages": [user]},
                sse(delta_chunks([M[:5], M[5:], f" and {M}"], "stop"), keepalive=True),
            ),
            {},
        ),
        "sse_metadata_and_tools": (
            envelope(
                {"model": plain, "messages": [user]},
                sse_text(
                    [
                        f": comment {M}",
                        f"event: {M}",
                        f"id: {M}",
                        f"retry: {M}",
                        f"{M}: ignored field",
                        "data: "
                        + dumps(
                            {
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {
                                            "content": M,
                                            "refusal": M,
                                            "tool_calls": [
                                                {"index": 0, "function": {"name": M[:4], "arguments": '{"' + M}}
                                            ],
                                        },
                                    }
                                ]
                            }
                        ),
                        "",
                        "data: "
                        + dumps(
                            {
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {
                                            "tool_calls": [
                                                {"index": 0, "function": {"name": M[4:], "arguments": '": 1}'}}
                                            ]
                                        },
                                        "finish_reason": "tool_calls",
                                    }
                                ]
                            }
                        ),
                        "",
                        "data: " + dumps({"choices": [{"index": 1, "text": M}]}),
                        "",
                        "data: [DONE]",
                        "",
                        f"data: {M} after done",
                    ],
                    nl="\r\n",
                ),
            ),
            {},
        ),
        "completions": (
            envelope(
                {"model": plain, "prompt": [M, f"second {M} <|eot_id|>"]},
                {"choices": [{"index": 0, "text": M, "finish_reason": "stop"}]},
            ),
            {},
        ),
        "embeddings": (envelope({"model": plain, "input": [M, [1, 2, 3]]}), {}),
        "upstream_usage": (
            envelope(
                {"model": plain, "messages": [user]},
                chat_response((M, "stop"), usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
            ),
            {},
        ),
        "upstream_drift_recount": (
            envelope(
                {"model": plain, "messages": [user]},
                chat_response((M, "stop"), usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
            ),
            {"always_recount": True},
        ),
    }
    for name, case in CASES.items():  # the real-shaped corpus, its model replaced by the marked one
        request = dict(case["request"], model=tools if "tools" in case["request"] else plain)
        ok[f"corpus_{name}"] = (envelope(request, case["response"]), {})

    msg = {"model": plain, "messages": [user]}
    bad: dict[str, tuple[bytes, dict]] = {
        "not_json": (f'{{"RequestBody": "{M}" oops'.encode(), {}),
        "not_json_unterminated": (f'{{"RequestBody": "{M}'.encode(), {}),
        "invalid_utf8": (f'{{"RequestBody": "{M}'.encode() + b"\xff\xfe" + b'"}', {}),
        "nan": (
            f'{{"RequestBody": {{"model": "{M}", "messages": [{{"role": "user", "content": "{M}"}}], '
            f'"temperature": NaN}}}}'.encode(),
            {},
        ),
        "infinity_in_request_string": (envelope(None, raw_request=dumps(msg)[:-1] + ', "t": -Infinity}'), {}),
        "lone_surrogate": (
            envelope(
                None,
                raw_request='{"model": "' + M + '", "messages": [{"role": "user", "content": "' + M + ' \\ud800"}]}',
            ),
            {},
        ),
        "lone_surrogate_part": (
            envelope(
                None,
                raw_request='{"messages": [{"role": "user", "content": '
                '[{"type": "text", "text": "' + M + '\\udfff"}]}]}',
            ),
            {},
        ),
        "array_envelope": (dumps([M, {M: M}]).encode(), {}),
        "string_envelope": (dumps(M).encode(), {}),
        "no_request_body": (dumps({"ResponseBody": M, M: M}).encode(), {}),
        "request_body_not_json": (dumps({"RequestBody": f"this is {M}"}).encode(), {}),
        "request_body_number": (dumps({"RequestBody": 42, "ResponseBody": M}).encode(), {}),
        "request_body_array": (envelope(None, raw_request=dumps([M])), {}),
        "no_messages": (envelope({"model": plain, M: M}), {}),
        "messages_string": (envelope({"model": plain, "messages": M}), {}),
        "messages_empty": (envelope({"model": plain, "messages": []}), {}),
        "message_not_object": (envelope({"model": plain, "messages": [M]}), {}),
        "role_marker": (envelope({"model": plain, "messages": [{"role": M, "content": M}]}), {}),
        "role_missing": (envelope({"model": plain, "messages": [{"content": M}]}), {}),
        "role_object": (envelope({"model": plain, "messages": [{"role": {M: M}, "content": M}]}), {}),
        "content_number": (envelope({"model": plain, "messages": [{"role": "user", "content": 5, M: M}]}), {}),
        "content_object": (envelope({"model": plain, "messages": [{"role": "user", "content": {M: M}}]}), {}),
        "part_type_marker": (
            envelope({"model": plain, "messages": [{"role": "user", "content": [{"type": M, "text": M}]}]}),
            {},
        ),
        "part_text_not_string": (
            envelope({"model": plain, "messages": [{"role": "user", "content": [{"type": "text", "text": [M]}]}]}),
            {},
        ),
        "part_not_object": (envelope({"model": plain, "messages": [{"role": "user", "content": [M, 7]}]}), {}),
        "image_part": (
            envelope(
                {
                    "model": plain,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": M},
                                {"type": "image_url", "image_url": {"url": f"https://x/{M}.png"}},
                            ],
                        }
                    ],
                }
            ),
            {},
        ),
        "audio_part": (
            envelope(
                {
                    "model": plain,
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "input_audio", "input_audio": {"data": M, "format": "wav"}}],
                        }
                    ],
                }
            ),
            {},
        ),
        "tools_not_list": (envelope(msg | {"tools": {M: M}}), {}),
        "tool_without_function": (envelope(msg | {"tools": [{"type": M, "name": M}]}), {}),
        "tool_name_not_string": (envelope(msg | {"tools": [{"function": {"name": [M], "description": M}}]}), {}),
        "tool_calls_not_list": (envelope({"model": plain, "messages": [{"role": "assistant", "tool_calls": M}]}), {}),
        "tool_call_name_not_string": (
            envelope(
                {
                    "model": plain,
                    "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": {M: M}, "arguments": M}}]}],
                }
            ),
            {},
        ),
        "add_generation_prompt": (envelope(msg | {"add_generation_prompt": M}), {}),
        "prompt_object": (envelope({"model": plain, "prompt": {M: 1}}), {}),
        "prompt_empty": (envelope({"model": plain, "prompt": []}), {}),
        "input_bad_item": (envelope({"model": plain, "input": [M, 3.5]}), {}),
        "template_refuses": (
            envelope({"model": tools, "messages": [{"role": "assistant", "tool_calls": [call, call]}]}),
            {},
        ),
        "template_tools_no_messages_left": (
            envelope({"model": tools, "tools": [marked_tool()], "messages": [{"role": "system", "content": M}]}),
            {},
        ),
        "response_neither": (envelope(msg, f"<html>{M}</html>"), {}),
        "response_broken_json": (envelope(msg, f'{{"choices": ["{M}"'), {}),
        "response_number": (dumps({"RequestBody": dumps(msg), "ResponseBody": 7, M: M}).encode(), {}),
        "response_choices_object": (envelope(msg, {"choices": {M: M}}), {}),
        "response_choice_string": (envelope(msg, {"choices": [M]}), {}),
        "response_choice_without_message": (envelope(msg, {"choices": [{"index": 0, M: M}]}), {}),
        "response_content_number": (envelope(msg, {"choices": [{"message": {"content": 5, "refusal": M}}]}), {}),
        "response_tool_call_bad": (envelope(msg, {"choices": [{"message": {"content": M, "tool_calls": [M]}}]}), {}),
        "response_tool_calls_object": (envelope(msg, {"choices": [{"message": {"tool_calls": {M: M}}}]}), {}),
        "sse_bad_event": (envelope(msg, f"data: {{{M}}}\n\ndata: [DONE]\n\n"), {}),
        "sse_event_not_object": (envelope(msg, f'data: ["{M}"]\n\n'), {}),
        "sse_bad_index": (
            envelope(msg, "data: " + dumps({"choices": [{"index": M, "delta": {"content": M}}]}) + "\n\n"),
            {},
        ),
        "sse_choices_object": (envelope(msg, "data: " + dumps({"choices": {M: M}}) + "\n\n"), {}),
        "sse_choice_string": (envelope(msg, "data: " + dumps({"choices": [M]}) + "\n\n"), {}),
        "sse_tool_calls_bad": (
            envelope(msg, "data: " + dumps({"choices": [{"delta": {"content": M, "tool_calls": M}}]}) + "\n\n"),
            {},
        ),
        "sse_tool_call_delta_bad": (
            envelope(msg, "data: " + dumps({"choices": [{"delta": {"tool_calls": [M]}}]}) + "\n\n"),
            {},
        ),
        "sse_tool_call_index_bad": (
            envelope(
                msg,
                "data: "
                + dumps({"choices": [{"delta": {"tool_calls": [{"index": M, "function": {"name": M}}]}}]})
                + "\n\n",
            ),
            {},
        ),
        "sse_nan": (envelope(msg, 'data: {"choices": [{"delta": {"content": "' + M + '"}}], "x": NaN}\n\n'), {}),
        "too_deep": (
            f'{{"RequestBody": {{"messages": [{{"role": "user", "content": "{M}"}}], "x": '
            f"{'[' * 100 + dumps(M) + ']' * 100}}}}}".encode(),
            {},
        ),
        "too_deep_interpreter": (("[" * 100_000 + dumps(M) + "]" * 100_000).encode(), {}),
        "too_deep_response": (envelope(msg, '{"a": ' + "[" * 200 + dumps(M) + "]" * 200 + "}"), {}),
        "too_many_messages": (envelope({"model": plain, "messages": [user] * 3}), {"max_messages": 2}),
        "body_too_large": (
            envelope({"model": plain, "messages": [{"role": "user", "content": M * 500}]}),
            {"max_body_bytes": 2000},
        ),
        "time_budget": (envelope({"model": plain, "prompt": [f"{M} {i}" for i in range(2000)]}), {"time_budget_ms": 1}),
        "empty_body": (b"   ", {}),
        # Inputs that reached the internal-error path before ef588dd (see test_fuzz.py): a 500 must not leak either.
        "huge_integer": (
            f'{{"RequestBody": {{"messages": [{{"role": "user", "content": "{M}"}}], "n": {"9" * 5000}}}}}'.encode(),
            {},
        ),
        "deep_tool_arguments": (
            envelope(
                {
                    "model": tools,
                    "messages": [
                        user,
                        {
                            "role": "assistant",
                            "tool_calls": [{"function": {"name": M, "arguments": "[" * 5000 + dumps(M) + "]" * 5000}}],
                        },
                    ],
                }
            ),
            {},
        ),
        # A lone surrogate under a caller-chosen key (an unknown field, a tool parameter name that is rendered
        # into the prompt): the error may say where, but not by echoing the key.
        "surrogate_under_marked_key": (
            envelope(
                None,
                raw_request='{"model": "' + plain + '", "messages": [{"role": '
                '"user", "content": "hi", "' + M + '": "\\ud800"}]}',
            ),
            {},
        ),
        "surrogate_under_marked_tool_parameter": (
            envelope(
                None,
                raw_request=(
                    '{"model": "' + tools + '", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                    '"function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"'
                    + M
                    + '": '
                    '{"type": "string", "description": "\\udc00"}}}}}]}'
                ),
            ),
            {},
        ),
        "surrogate_under_marked_top_key": (
            envelope(
                None, raw_request='{"messages": [{"role": "user", "content": "hi"}], "' + M + '": {"x": "\\ud800"}}'
            ),
            {},
        ),
        "surrogate_model": (
            envelope(
                None,
                raw_request='{"model": "' + M + '\\ud800", "messages": [{"role": "user", "content": "' + M + '"}]}',
            ),
            {},
        ),
    }
    out = {name: (body, changes, True) for name, (body, changes) in ok.items()}
    out |= {name: (body, changes, False) for name, (body, changes) in bad.items()}
    return out


# --------------------------------------------------------------------------- checks


def reply_problems(reply: service.Reply, model: str | None, must_count: bool, name: str) -> list[str]:
    """What is wrong with a reply, privacy-wise (and whether content that must be counted was): [] if nothing."""
    if not isinstance(reply.payload, dict):
        return [f"{name}: payload is not an object"]
    problems = []
    if must_count and reply.status != 200:
        problems.append(f"{name}: expected a count, got {reply.status} {reply.payload}")
    if reply.status == 200:
        echoed = dict(reply.payload)
        if echoed.pop("model", None) not in (model, None):
            problems.append(f"{name}: the answer's model is not the caller's")
        shown = [json.dumps(echoed, ensure_ascii=False), json.dumps(reply.headers)]
    else:
        if set(reply.payload) != {"error"}:
            problems.append(f"{name}: error payload has keys {sorted(reply.payload)}")
        shown = [json.dumps(reply.payload, ensure_ascii=False), json.dumps(reply.headers)]
    problems += [f"{name}: {reply.status} reply echoes content: {text[:300]}" for text in leaks(shown)]
    return problems


def check_reply(reply: service.Reply, model: str | None, must_count: bool, name: str) -> None:
    assert reply_problems(reply, model, must_count, name) == []


def pipeline_exception(body: bytes, settings: Settings) -> BaseException | None:
    """What `service.handle` catches for this body, if anything."""
    try:
        request = parse_envelope(body, settings)
        count_request(request, settings, Deadline(settings.time_budget_ms))
    except BaseException as exc:  # noqa: BLE001 - we want to look at whatever is raised
        return exc
    return None


def sent_model(body: bytes) -> str | None:
    try:
        request = json.loads(body)["RequestBody"]
        request = json.loads(request) if isinstance(request, str) else request
        return request.get("model")
    except Exception:  # noqa: BLE001
        return None


def run_service(bodies, base: Settings, caplog, capfd) -> dict[str, int]:
    """Every body through service.handle; all problems are collected, then reported together."""
    statuses, problems = {}, []
    caplog.set_level(logging.DEBUG)
    with all_logs() as (capture, caught):
        for name, (body, changes, must_count) in bodies.items():
            settings = dataclasses.replace(base, **changes)
            reply = service.handle("POST", body, settings)
            problems += reply_problems(reply, sent_model(body), must_count, name)
            statuses[name] = reply.status
            exc = pipeline_exception(body, settings)
            if exc is not None and leaks(exception_texts(exc)):
                problems.append(f"{name}: the {type(exc).__name__} raised inside the service echoes content")
            # The same body with the wrong method: 405, nothing echoed.
            wrong = service.handle("PUT", body, settings)
            if wrong.status != 405 or leaks([json.dumps(wrong.payload)]):
                problems.append(f"{name}: wrong method answered {wrong.status} {wrong.payload}")
    assert_logs_clean(capture, caught, caplog, capfd)
    assert problems == []
    return statuses


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The embedded tokenizer without Meta's ranks file: only AutoTokenizer can load it."""
    target = tmp_path_factory.mktemp("privacy") / "hf-llama"
    shutil.copytree(registry.EMBEDDED_DIR, target, ignore=shutil.ignore_patterns("original"))
    return target


@pytest.mark.timeout(180)
def test_service_fast_path_never_logs_content(caplog, capfd):
    bodies = marked_bodies(plain=f"{M}-model", tools=f"Llama-3.1-{M}")
    statuses = run_service(bodies, FAST, caplog, capfd)
    # The error paths were reached: 400, 413 (body, messages, time budget) and 422 (media, template).
    assert {400, 413, 422} <= set(statuses.values())


@pytest.mark.timeout(180)
def test_service_autotokenizer_path_never_logs_content(hf_dir, caplog, capfd):
    settings = Settings(
        tokenizer=str(hf_dir),
        date_string=GOLDEN_DATE,
        preload=False,
        models={"hf-tools": {"tokenizer": str(hf_dir), "chat_template": "llama-3.1"}},
    )
    bodies = marked_bodies(plain=f"{M}-model", tools="hf-tools")
    run_service(bodies, settings, caplog, capfd)
    assert registry.REGISTRY.get(registry.resolve(f"{M}-model", settings), settings).fast is False


@pytest.mark.timeout(120)
def test_unloadable_tokenizer_never_logs_content(monkeypatch, caplog, capfd):
    """The 503 path logs the load failure (from settings), never the request that triggered it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(tokenizer="/nonexistent/privacy-tokenizer", preload=False)
    body = envelope({"model": f"{M}-model", "messages": [{"role": "user", "content": M}]})
    caplog.set_level(logging.DEBUG)
    with all_logs() as (capture, caught):
        reply = service.handle("POST", body, settings)
        again = service.handle("POST", body, settings)
    assert reply.status == again.status == 503
    check_reply(reply, f"{M}-model", False, "unloadable")
    assert any("could not be loaded" in r.getMessage() for r in capture.records)
    assert_logs_clean(capture, caught, caplog, capfd)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server():
    import function_app

    saved = function_app.settings
    function_app.settings = FAST  # what the function counts with; the host settings are the key and body limit
    host_settings = Settings(function_key=KEY, max_body_bytes=1_000_000, preload=False)
    with local_host(host_settings) as port:
        yield port
    function_app.settings = saved


def call_http(port, method, path, body=None, headers=None, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(
                method,
                path,
                body=iter([body[: len(body) // 2], body[len(body) // 2 :]]),
                headers=headers,
                encode_chunked=True,
            )
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def http_problems(status, headers, payload: bytes, model, name, must_count) -> list[str]:
    body = json.loads(payload) if payload else {}
    problems = reply_problems(service.Reply(status, body, {}), model, must_count and status < 500, name)
    return problems + [f"{name}: response headers echo content" for _ in leaks([json.dumps(headers)])]


@pytest.mark.timeout(180)
def test_http_never_logs_content(server, caplog, capfd):
    bodies = marked_bodies(plain=f"{M}-model", tools=f"Llama-3.1-{M}")
    caplog.set_level(logging.DEBUG)
    auth = {"x-functions-key": KEY}
    problems = []
    with all_logs() as (capture, caught):
        for name, (body, changes, must_count) in bodies.items():
            if changes:
                continue  # settings-specific limits are covered through service.handle
            status, headers, payload = call_http(server, "POST", "/api/tokencounter", body, auth)
            problems += http_problems(status, headers, payload, sent_model(body), name, must_count)
        body = bodies["tools_request"][0]
        for method, path, headers, chunked in [
            ("POST", "/api/tokencounter", auth, True),  # chunked transfer encoding
            ("GET", "/api/tokencounter", auth, False),  # 405
            ("PUT", "/api/tokencounter", auth, False),  # 405
            ("POST", "/api/tokencounter", {}, False),  # 401: no key
            ("POST", "/api/tokencounter", {"x-functions-key": "wrong"}, False),  # 401: wrong key
            ("POST", "/api/elsewhere", auth, False),  # 404
            ("POST", "/api/health", auth, False),  # 404: health is GET only
        ]:
            status, headers_, payload = call_http(server, method, path, body, headers, chunked)
            problems += http_problems(status, headers_, payload, f"Llama-3.1-{M}", f"{method} {path}", False)
        # Over the host's body limit: refused before reading, then the connection closes.
        big = envelope({"model": f"{M}-model", "messages": [{"role": "user", "content": M * 100_000}]})
        try:
            status, headers_, payload = call_http(server, "POST", "/api/tokencounter", big, auth)
            assert status == 413
            problems += http_problems(status, headers_, payload, None, "too_large", False)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the host may reset a connection whose body it refused to read; nothing to leak either way
        # Malformed chunked bodies, and a chunked body over the limit.
        head = (
            f"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nx-functions-key: {KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        for tail in [
            f"zz{M}\r\n{M}\r\n0\r\n\r\n".encode(),
            b"%x\r\n" % len(M) + M.encode() + b"\r\n" + b"%x\r\n" % 1_300_000 + b"x" * 1_300_000 + b"\r\n0\r\n\r\n",
        ]:
            response = raw_exchange(server, head + tail)
            assert response.startswith(b"HTTP/1.1 4"), response[:100]
            assert leaks([response.decode("utf-8", "replace")]) == []
    assert_logs_clean(capture, caught, caplog, capfd)
    assert problems == []


@pytest.mark.timeout(60)
def test_http_function_key_in_query_is_not_logged(server, caplog):
    """`?code=` carries the function key: the request line the local host logs must not include the query."""
    caplog.set_level(logging.DEBUG)
    with all_logs() as (capture, caught):
        status, _, _ = call_http(
            server, "POST", f"/api/tokencounter?code={KEY}", envelope({"messages": [{"role": "user", "content": "hi"}]})
        )
    assert status == 200
    assert_logs_clean(capture, caught, caplog, secret=KEY)


@pytest.mark.parametrize(
    "name", ["surrogate_under_marked_key", "surrogate_under_marked_tool_parameter", "surrogate_under_marked_top_key"]
)
def test_lone_surrogate_error_does_not_echo_caller_keys(name):
    """The lone-surrogate error names where it is, but a caller-chosen key (an unknown field, a tool parameter
    name that the template renders into the prompt) is request content and must not be echoed."""
    body, changes, _ = marked_bodies(plain=f"{M}-model", tools=f"Llama-3.1-{M}")[name]
    reply = service.handle("POST", body, dataclasses.replace(FAST, **changes))
    assert reply.status == 400 and reply.payload["error"]["code"] == "invalid_field"
    assert M not in reply.payload["error"]["message"], reply.payload["error"]["message"]
