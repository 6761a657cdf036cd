"""Property tests (hypothesis) over whatever APIM may post: the counter answers, never a 5xx, never a hang.

Properties checked for every generated body, through `service.handle` and the function's own reply adapter
(`function_app._http`, which turns the reply into the HTTP body the host sends):
  * the status is below 500, and the adapter can serialize the reply;
  * the payload is JSON with either `usage` (non-negative integer counts, total = prompt + completion) or
    `error` (a code and a message);
  * the same input gives the same answer (each body is counted twice);
  * no example takes long (a hypothesis deadline per example, a pytest-timeout per property).

Inputs: random JSON anywhere (st.recursive), wrong types and extreme values in every field of real-shaped
envelopes from tests/corpus.py, raw JSON literals the encoder cannot produce (NaN, Infinity, 1e999, integers
of 5000 digits, lone surrogate escapes), arbitrary and corrupted bytes (invalid UTF-8), nesting up to 10^5
levels in every place JSON is parsed, and SSE garbage. A last property fuzzes valid chats and requires a 200.

Examples run per property are counted and printed at the end of the module (derandomized: the same examples
on every run, so CI is stable).
"""

from __future__ import annotations

import json
import shutil
import socket
import string
import threading
import time
from collections import Counter
from datetime import timedelta

import azure.functions as func
import pytest
from conftest import GOLDEN_DATE, ROOT
from corpus import CASES, WEATHER_TOOL, chat_response, delta_chunks, sse
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import function_app
from tokencounter import registry, service
from tokencounter.localhost import make_server
from tokencounter.settings import Settings

EXAMPLES: Counter[str] = Counter()
ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
FAST = Settings(date_string=GOLDEN_DATE, preload=False)
# Tight limits (the time budget stays at its default: a wall-clock budget would make answers load-dependent).
TIGHT = Settings(date_string=GOLDEN_DATE, preload=False, max_body_bytes=4_000, max_messages=3, max_depth=6)


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        derandomize=True,  # the same examples on every run: CI stays stable
        database=None,
        deadline=timedelta(seconds=10),  # a single slow example is a hang for this service
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
        print_blob=True,
    )


@pytest.fixture(scope="module", autouse=True)
def report_examples(request):
    yield
    line = "fuzz examples run: " + ", ".join(f"{name}={n}" for name, n in sorted(EXAMPLES.items()))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():  # shown even under -q and output capture
        reporter.write("\n" + line + "\n")


SETTINGS: dict[str, Settings] = {}  # filled by the fixture below; looked up by name so failures print short


@pytest.fixture(scope="module", autouse=True)
def all_settings(tmp_path_factory):
    """Default settings, tight limits, and an AutoTokenizer default (a copy of the embedded tokenizer without
    Meta's ranks file, so only AutoTokenizer can load it), all warmed up so no example pays for a first load.
    Requests naming a Llama model resolve to the embedded tokenizer (fast) under every one of these settings."""
    hf_dir = tmp_path_factory.mktemp("fuzz") / "hf-llama"
    shutil.copytree(registry.EMBEDDED_DIR, hf_dir, ignore=shutil.ignore_patterns("original"))
    hf = Settings(tokenizer=str(hf_dir), date_string=GOLDEN_DATE, preload=False)
    chosen = {"fast": FAST, "tight": TIGHT, "autotokenizer": hf}
    for s in chosen.values():
        for model in (None, "llama-3", "llama-3.1", "llama-3.2", "llama-3.3"):
            registry.REGISTRY.get(registry.resolve(model, s), s)
    SETTINGS.update(chosen)
    return chosen


# --------------------------------------------------------------------------- the properties


def check(body: bytes, settings_: Settings, name: str) -> service.Reply:
    EXAMPLES[name] += 1
    first = service.handle("POST", body, settings_)
    second = service.handle("POST", body, settings_)
    assert first.status < 500, first.payload
    assert isinstance(first.payload, dict)
    if first.status == 200:
        assert "error" not in first.payload
        usage = first.payload["usage"]
        assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        for value in usage.values():
            assert type(value) is int and value >= 0, usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    else:
        assert 400 <= first.status < 500
        assert set(first.payload) == {"error"}
        error = first.payload["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert (second.status, second.payload, second.headers) == (first.status, first.payload, first.headers)
    # What the Functions host would send: the adapter must be able to encode it, as the JSON it is.
    response = function_app._http(first)
    assert response.status_code == first.status
    assert json.loads(response.get_body()) == first.payload
    return first


# --------------------------------------------------------------------------- strategies

SPECIAL_TEXT = [
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|not_special|>",
    "\ufeff",
    "\u0000",
    "\r\n",
    "🦙",
    "e\u0301",
    "  ",
    "\t",
]
texts = st.text(max_size=40) | st.sampled_from(SPECIAL_TEXT)
leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=25,
)
# Values that are legal JSON but extreme for a counter.
EXTREMES = [
    "",
    "x" * 100_000,
    " " * 50_000,
    "\n" * 20_000,
    "🦙" * 20_000,
    "a" * 300_000,
    0,
    -1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**300,
    1.7976931348623157e308,
    5e-324,
    -0.0,
    True,
    False,
    None,
    [],
    {},
    [[]] * 500,
    {"": ""},
    [None] * 2000,
    ["x"] * 5000,
]
# JSON text json.dumps never writes: NaN/Infinity (rejected), overflowing floats, integers past Python's 4300-digit
# limit, deep nesting, and (lone) surrogate escapes.
RAW = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "-0",
    "0e0",
    "9" * 5000,
    "1" + "0" * 400,
    "[" * 100_000 + "]" * 100_000,
    '{"a": ' * 2000 + "1" + "}" * 2000,
    '"\\ud800"',
    '"\\udfff"',
    '"a\\ud83d"',
    '"\\ud83d\\ude80"',
    '"\\u0000"',
    '"\\ud800\\ud800"',
    '"\\udc00\\ud800"',
]
weird = json_values | st.sampled_from(EXTREMES) | st.sampled_from(RAW).map(lambda raw: Raw(raw))


class Raw:
    """A JSON literal to splice into the serialized text (see `dumps`)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dumps(value) -> str:
    """json.dumps, with each Raw replaced by its literal text."""
    raws: list[str] = []

    def prepare(node):
        if isinstance(node, Raw):
            raws.append(node.text)
            return f"\ue000RAW{len(raws) - 1}\ue000"
        if isinstance(node, dict):
            return {k: prepare(v) for k, v in node.items()}
        if isinstance(node, list):
            return [prepare(v) for v in node]
        return node

    text = json.dumps(prepare(value), ensure_ascii=False)
    for i, raw in enumerate(raws):
        text = text.replace(f'"\ue000RAW{i}\ue000"', raw)
    return text


def envelope_text(request, response, request_as_string: bool, response_as_string: bool, extra=None) -> bytes:
    out = {"RequestBody": dumps(request) if request_as_string and not isinstance(request, str) else request}
    if response is not None:
        out["ResponseBody"] = dumps(response) if response_as_string and not isinstance(response, str) else response
    out.update(extra or {})
    return dumps(out).encode("utf-8", "surrogatepass")


def paths(node, prefix=()):
    """Every path (tuple of keys/indices) to a value inside node, node itself included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, prefix + (i,))


def replace_at(node, path, value, delete=False):
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    if rest:
        copy[head] = replace_at(node[head], rest, value, delete)
    elif delete:
        copy.pop(head)
    else:
        copy[head] = value  # a new key, or a replaced value
    return copy


def case_tree(name: str) -> dict:
    case = CASES[name]
    tree = {"RequestBody": case["request"]}
    if case["response"] is not None:
        tree["ResponseBody"] = case["response"]
    return tree


CASE_NAMES = sorted(CASES)
SETTING_NAMES = ["fast", "tight", "autotokenizer"]


# --------------------------------------------------------------------------- random JSON


@st.composite
def random_bodies(draw):
    kind = draw(st.sampled_from(["top", "envelope", "request", "response"]))
    if kind == "top":
        return dumps(draw(weird)).encode("utf-8", "surrogatepass")
    as_string = draw(st.booleans()), draw(st.booleans())
    if kind == "envelope":
        return envelope_text(draw(weird), draw(st.none() | weird), *as_string)
    if kind == "request":
        request = draw(
            st.dictionaries(
                st.sampled_from(
                    ["model", "messages", "prompt", "input", "tools", "add_generation_prompt", "n", "stream"]
                )
                | texts,
                weird,
                min_size=1,
                max_size=4,
            )
        )
        return envelope_text(request, None, *as_string)
    response = draw(
        st.dictionaries(st.sampled_from(["choices", "usage", "object", "model"]) | texts, weird, max_size=3)
    )
    return envelope_text({"messages": [{"role": "user", "content": "hi"}]}, response, *as_string)


@pytest.mark.timeout(120)
@fuzz_settings(400)
@given(body=random_bodies(), which=st.sampled_from(SETTING_NAMES))
def test_random_json(body, which):
    check(body, SETTINGS[which], "random_json")


# --------------------------------------------------------------------------- wrong types in every field


@st.composite
def mutated_cases(draw):
    tree = case_tree(draw(st.sampled_from(CASE_NAMES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(tree))))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete" and path:
            tree = replace_at(tree, path, None, delete=True)
        elif action == "add":
            target = tree
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                tree = replace_at(tree, path + (draw(texts),), draw(weird))
            elif isinstance(target, list):
                tree = replace_at(tree, path, target + [draw(weird)])
        else:
            tree = replace_at(tree, path, draw(weird))
    if not isinstance(tree, dict):
        return dumps(tree).encode("utf-8", "surrogatepass")
    request, response = tree.pop("RequestBody", None), tree.pop("ResponseBody", None)
    return envelope_text(request, response, draw(st.booleans()), draw(st.booleans()), extra=tree)


@pytest.mark.timeout(120)
@fuzz_settings(400)
@given(body=mutated_cases(), which=st.sampled_from(SETTING_NAMES))
def test_wrong_types_in_every_field(body, which):
    check(body, SETTINGS[which], "wrong_types")


# --------------------------------------------------------------------------- bytes, UTF-8, surrogates


CORRUPTIONS = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\x00",
    b"\\",
    b'"',
    b"\\u",
    b"\\ud800",
    b"\\udfff",
    b"\xef\xbb\xbf",
    b"NaN",
    b"]",
    b"}",
    b",",
]


@st.composite
def corrupted_bytes(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=512))
    body = envelope_text(*_case_parts(draw(st.sampled_from(CASE_NAMES))), draw(st.booleans()), draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "replace", "truncate"]))
        piece = draw(st.sampled_from(CORRUPTIONS) | st.binary(min_size=1, max_size=4))
        if action == "insert":
            body = body[:at] + piece + body[at:]
        elif action == "replace":
            body = body[:at] + piece + body[at + len(piece) :]
        else:
            body = body[:at]
    return body


def _case_parts(name):
    case = CASES[name]
    return case["request"], case["response"]


@pytest.mark.timeout(120)
@fuzz_settings(300)
@given(body=corrupted_bytes())
def test_corrupted_bytes(body):
    check(body, SETTINGS["fast"], "bytes")


@st.composite
def surrogate_strings(draw):
    """A string somewhere in a real case gets a lone surrogate escape spliced in (as JSON "\\ud800")."""
    tree = case_tree(draw(st.sampled_from(CASE_NAMES)))
    # Any string: message text, names, tool fields, the model, response text, or a whole SSE stream.
    strings = [
        p
        for p in paths(tree)
        if len(p) > 1
        and isinstance(_get(tree, p), str)
        or p == ("ResponseBody",)
        and isinstance(tree["ResponseBody"], str)
    ]
    path = draw(st.sampled_from(strings))
    text = _get(tree, path)
    at = draw(st.integers(0, len(text)))
    escape = draw(st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud83e", "\\udd99"]))
    raw = '"' + json.dumps(text[:at])[1:-1] + escape + json.dumps(text[at:])[1:-1] + '"'
    tree = replace_at(tree, path, Raw(raw))
    if draw(st.booleans()) and len(path) > 1:
        # The same escape in a dict key of that object (keys are strings too).
        parent = _get(tree, path[:-1])
        if isinstance(parent, dict):
            tree = replace_at(tree, path[:-1], {**parent, "\ue001": 1})
    request, response = tree.pop("RequestBody"), tree.pop("ResponseBody", None)
    body = envelope_text(request, response, draw(st.booleans()), draw(st.booleans()))
    return body.replace("\ue001".encode(), b"\\ud800")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.timeout(120)
@fuzz_settings(300)
@given(body=surrogate_strings(), which=st.sampled_from(["fast", "autotokenizer"]))
def test_lone_surrogates(body, which):
    check(body, SETTINGS[which], "surrogates")


# --------------------------------------------------------------------------- deep nesting

PLACES = [
    "top",
    "envelope_key",
    "request_object",
    "request_string",
    "content_parts",
    "tool_parameters",
    "tool_call_arguments",
    "response_string",
    "response_object",
    "sse_event",
    "sse_tool_arguments",
]


def nested(depth: int, kind: str, core: str = "1") -> str:
    if kind == "array":
        return "[" * depth + core + "]" * depth
    if kind == "object":
        return '{"a":' * depth + core + "}" * depth
    return (
        "".join('[{"a":' if i % 2 else "[" for i in range(depth))
        + core
        + "".join("}]" if i % 2 else "]" for i in reversed(range(depth)))
    )


def deep_body(place: str, deep: str) -> bytes:
    user = {"role": "user", "content": "hi"}
    if place == "top":
        return deep.encode()
    if place == "envelope_key":
        return envelope_text({"messages": [user]}, None, True, True, extra={"x": Raw(deep)})
    if place == "request_object":
        return envelope_text({"messages": [user], "x": Raw(deep)}, None, False, False)
    if place == "request_string":
        return envelope_text({"messages": [user], "x": Raw(deep)}, None, True, False)
    if place == "content_parts":
        return envelope_text({"messages": [{"role": "user", "content": Raw(deep)}]}, None, True, False)
    if place == "tool_parameters":
        tool = {"type": "function", "function": {"name": "f", "parameters": Raw(deep)}}
        return envelope_text({"model": "llama-3.1", "messages": [user], "tools": [tool]}, None, True, False)
    if place == "tool_call_arguments":  # a JSON string inside a JSON string: parsed separately by the counter
        call = {"function": {"name": "f", "arguments": deep}}
        return envelope_text(
            {"model": "llama-3.1", "messages": [user, {"role": "assistant", "tool_calls": [call]}]}, None, True, False
        )
    if place == "response_string":
        return envelope_text({"messages": [user]}, {"choices": Raw(deep)}, True, True)
    if place == "response_object":
        return envelope_text({"messages": [user]}, {"choices": Raw(deep)}, True, False)
    if place == "sse_event":
        return envelope_text({"messages": [user]}, f"data: {deep}\n\ndata: [DONE]\n\n", True, True)
    call = {"index": 0, "function": {"name": "f", "arguments": deep}}
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"}]}
    return envelope_text({"messages": [user]}, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", True, True)


@pytest.mark.timeout(120)
@fuzz_settings(200)
@given(
    depth=st.sampled_from([1, 4, 5, 6, 7, 62, 63, 64, 65, 500, 999, 1000, 1001, 5000, 100_000])
    | st.integers(1, 100_000),
    kind=st.sampled_from(["array", "object", "mixed"]),
    place=st.sampled_from(PLACES),
    which=st.sampled_from(["fast", "tight"]),
)
def test_deep_nesting(depth, kind, place, which):
    check(deep_body(place, nested(depth, kind)), SETTINGS[which], "deep_nesting")


# --------------------------------------------------------------------------- SSE garbage

VALID_CHUNKS = [
    json.dumps(c) for c in delta_chunks(["Hello", " world", "!"], "stop") + delta_chunks(["Second"], "length", 1)
]
SSE_LINES = (
    st.sampled_from(["data: " + c for c in VALID_CHUNKS] + ["data:" + c for c in VALID_CHUNKS])
    | st.sampled_from(
        [
            "data: [DONE]",
            "data:[DONE]",
            "data:  [DONE]  ",
            "[DONE]",
            "data: [DONE",
            "data: DONE",
            "",
            "",
            "",
            ":",
            ": keep-alive",
            "event: message",
            "event:",
            "id: 7",
            "id",
            "retry: 100",
            "retry",
            "data",
            "data:",
            "data: ",
            "data: null",
            "data: {}",
            "data: []",
            "data: 1",
            'data: {"choices": null}',
            'data: {"choices": [{}]}',
            'data: {"choices": [null]}',
            'data: {"choices": [{"index": -1}]}',
            'data: {"choices": [{"index": 1024}]}',
            'data: {"choices": [{"index": 1023, "delta": {"content": "x"}}]}',
            'data: {"choices": [{"delta": {"tool_calls": [{"index": 99999999999}]}}]}',
            'data: {"choices": [{"delta": {"tool_calls": [{"function": "x"}]}}]}',
            'data: {"choices": [{"delta": "x", "text": 5}]}',
            'data: {"usage": {"prompt_tokens": 3}}',
            'data: {"usage": {"prompt_tokens": -3, "completion_tokens": 1}}',
            'data: {"choices": [{"delta": {"content": "\\ud83e"}}]}',
            "data: \ufeff{}",
            "\ufeffdata: {}",
        ]
    )
    | st.sampled_from(VALID_CHUNKS).flatmap(lambda c: st.integers(0, len(c)).map(lambda n: "data: " + c[:n]))
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
    | json_values.map(lambda v: "data: " + json.dumps(v))
)
NEWLINES = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\r\r", "\n\r"])


@st.composite
def sse_garbage(draw):
    lines = draw(st.lists(st.tuples(SSE_LINES, NEWLINES), max_size=25))
    text = draw(st.sampled_from(["", "", "\ufeff", " \n", "\r\n"])) + "".join(a + b for a, b in lines)
    if draw(st.booleans()):
        text = "data: " + VALID_CHUNKS[0] + "\n\n" + text  # so that most streams are parsed as SSE
    return envelope_text({"messages": [{"role": "user", "content": "hi"}]}, text, True, draw(st.booleans()))


@pytest.mark.timeout(120)
@fuzz_settings(400)
@given(body=sse_garbage())
def test_sse_garbage(body):
    check(body, SETTINGS["fast"], "sse_garbage")


# --------------------------------------------------------------------------- valid chats must count

MODELS = [
    None,
    "Llama-3-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "llama3.2",
    "Llama-3.3-70B-Instruct",
    "support-bot-v7",  # no family hint: the default tokenizer, marked assumed
    "",
]
plain_text = (
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.sampled_from(SPECIAL_TEXT)
    | st.text(alphabet=string.printable, max_size=200)
)
part = (
    st.builds(lambda t, k: {"type": k, "text": t}, plain_text, st.sampled_from(["text", "input_text"]))
    | plain_text
    | st.builds(lambda t: {"text": t}, plain_text)
    | st.builds(lambda t: {"type": "refusal", "refusal": t}, plain_text)
)
content = plain_text | st.lists(part, min_size=1, max_size=4)


@st.composite
def valid_chats(draw):
    messages = draw(
        st.lists(
            st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(ROLES), content), min_size=1, max_size=6
        )
    )
    if draw(st.booleans()):  # one assistant turn calls a tool (Llama 3.1+ templates allow exactly one per turn)
        arguments = draw(st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), plain_text, max_size=3))
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": draw(plain_text)})
    request = {"messages": messages}
    model = draw(st.sampled_from(MODELS))
    if model is not None:
        request["model"] = model
    # Llama 3.1+ put the tools into the first message after the system prompt: there must be one (developer
    # turns join the system prompt on templates that do not know the role).
    after_system = messages[1:] if messages[0]["role"] == "system" else messages
    if after_system and any(m["role"] not in ("system", "developer") for m in messages) and draw(st.booleans()):
        request["tools"] = [WEATHER_TOOL]
    if draw(st.booleans()):
        request["add_generation_prompt"] = draw(st.booleans())
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]))
    answer = draw(plain_text)
    response = draw(st.sampled_from(["none", "json", "sse"]))
    if response == "json":
        response = chat_response((answer, finish))
    elif response == "sse":
        cuts = sorted(draw(st.lists(st.integers(0, len(answer)), max_size=8)))
        pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
        response = sse(
            delta_chunks(pieces, finish),
            crlf=draw(st.booleans()),
            keepalive=draw(st.booleans()),
            ascii=draw(st.booleans()),
        )
    else:
        response = None
    return envelope_text(request, response, draw(st.booleans()), draw(st.booleans()))


@pytest.mark.timeout(120)
@fuzz_settings(300)
@given(body=valid_chats(), which=st.sampled_from(["fast", "autotokenizer"]))
def test_valid_chats_count(body, which):
    reply = check(body, SETTINGS[which], "valid_chats")
    assert reply.status == 200, reply.payload
    assert reply.payload["source"] == "counted" and reply.payload["usage"]["prompt_tokens"] > 0


# --------------------------------------------------------------------------- defects the fuzzing found
# Each is the smallest input the properties above found for one defect (all were 5xx or path disagreements until
# ef588dd), pinned so that a regression names its cause directly.


def body_with(raw_request: str, raw_response: str | None = None) -> bytes:
    out = '{"RequestBody": ' + raw_request
    if raw_response is not None:
        out += ', "ResponseBody": ' + raw_response
    return (out + "}").encode()


HUGE_INT = "9" * 5000
MSG = '{"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    "body",
    [
        body_with(MSG + ', "n": ' + HUGE_INT + "}"),  # in the envelope
        body_with(json.dumps(MSG + ', "n": ' + HUGE_INT + "}")),  # in RequestBody sent as a string
        body_with(MSG + "}", json.dumps('{"choices": [], "created": ' + HUGE_INT + "}")),  # in ResponseBody
        body_with(MSG + "}", json.dumps('data: {"created": ' + HUGE_INT + "}\n\n")),  # in an SSE event
    ],
    ids=["envelope", "request_string", "response_string", "sse_event"],
)
def test_integer_with_5000_digits_is_a_400(body):
    """json.loads raises ValueError (not JSONDecodeError) past Python's 4300-digit limit: it was a 500."""
    reply = service.handle("POST", body, FAST)
    assert reply.status == 400, reply.payload
    assert reply.payload["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "arguments",
    ["[" * 100_000 + "]" * 100_000, "[" * 1000 + "]" * 1000, "9" * 5000],
    ids=["deep_100000", "deep_1000", "huge_integer"],
)
def test_tool_call_arguments_string_never_500(arguments):
    """A tool call's `arguments` string was parsed with a bare json.loads: RecursionError / ValueError escaped."""
    request = {
        "model": "llama-3.1",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]},
        ],
    }
    reply = service.handle("POST", json.dumps({"RequestBody": json.dumps(request)}).encode(), FAST)
    assert reply.status < 500, reply.payload


def call_function(body: bytes, monkeypatch) -> func.HttpResponse:
    """The function exactly as the Functions host invokes it (an exception there is the host's 500)."""
    monkeypatch.setattr(function_app, "settings", FAST)
    request = func.HttpRequest(
        method="POST", url="http://localhost/api/tokencounter", headers={}, params={}, route_params={}, body=body
    )
    return function_app.tokencounter(request)


def test_model_with_lone_surrogate_is_not_a_500(monkeypatch):
    """`model` is echoed in the answer; "\\ud800" in it could not be encoded as UTF-8 by the adapter (a 500)."""
    body = b'{"RequestBody": {"model": "llama\\ud800", "messages": [{"role": "user", "content": "hi"}]}}'
    response = call_function(body, monkeypatch)
    assert response.status_code < 500


def test_upstream_usage_with_huge_integers_is_not_a_500(monkeypatch):
    """Upstream usage of two 4300-digit counts was "well-formed"; their 4301-digit total could not be serialized."""
    big = "9" * 4300
    body = body_with(
        MSG + "}", '{"choices": [], "usage": {"prompt_tokens": ' + big + ', "completion_tokens": ' + big + "}}"
    )
    response = call_function(body, monkeypatch)
    assert response.status_code < 500


SURROGATE_FIELDS = {
    "tool_name": '{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
    '"tools": [{"type": "function", "function": {"name": "a\\ud800"}}]}',
    "tool_description": '{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
    '"tools": [{"type": "function", "function": {"name": "a", "description": "\\udc00"}}]}',
    "tool_call_name": '{"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
    '"tool_calls": [{"function": {"name": "\\ud800", "arguments": "{}"}}]}]}',
    "tool_call_arguments": '{"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
    '"tool_calls": [{"function": {"name": "f", "arguments": "\\"\\\\ud800\\""}}]}]}',
}


@pytest.mark.parametrize("field", sorted(SURROGATE_FIELDS))
def test_lone_surrogate_outside_content_same_answer_on_both_paths(field):
    """A lone surrogate outside content: the fast path counted it (tiktoken replaces it with U+FFFD) while the
    AutoTokenizer reference path refused it (422); the two paths must give the same answer."""
    hf_dir = SETTINGS["autotokenizer"].tokenizer
    fast = Settings(date_string=GOLDEN_DATE, preload=False, models={"m": {"tokenizer": "llama-3.1"}})
    hf = Settings(
        date_string=GOLDEN_DATE, preload=False, models={"m": {"tokenizer": hf_dir, "chat_template": "llama-3.1"}}
    )
    body = body_with(SURROGATE_FIELDS[field])
    a, b = service.handle("POST", body, fast), service.handle("POST", body, hf)
    assert (a.status, a.payload.get("usage")) == (b.status, b.payload.get("usage")), (a.payload, b.payload)


@pytest.mark.timeout(60)
def test_worst_case_sizes_stay_fast():
    """The largest single word and the largest SSE stream the default body limit allows are counted quickly."""
    limit = FAST.max_body_bytes
    started = time.perf_counter()
    word = json.dumps({"RequestBody": {"messages": [{"role": "user", "content": "a" * (limit - 200)}]}}).encode()
    assert service.handle("POST", word, FAST).status == 200
    chunk = "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "é"}}]}) + "\r\n\r\n"
    stream = chunk * ((limit - 500) // (len(json.dumps(chunk)) + 2))
    body = json.dumps({"RequestBody": {"messages": [{"role": "user", "content": "x"}]}, "ResponseBody": stream})
    assert service.handle("POST", body.encode(), FAST).status == 200
    assert time.perf_counter() - started < 30


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [b"-5", b"-1"])
def test_local_host_refuses_negative_chunk_size(size):
    """The local host's chunked-body reader passes a negative chunk size to rfile.read: -5 raises ValueError
    (the handler thread dies, the client gets no answer), -1 reads until the client closes (a hang)."""
    server = make_server(0, root=ROOT, settings=FAST)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
            sock.sendall(
                b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc"
            )
            try:
                answer = sock.recv(200)
            except TimeoutError:
                answer = b"(no answer within 10 s)"
        assert answer.startswith(b"HTTP/1.1 400"), answer
    finally:
        server.shutdown()
        server.server_close()
