"""Streamed responses decoded in one call (the form vLLM and OpenAI write) give exactly what decoding them event by
event gives: the same choices, text, reasoning, tool calls, finish reasons and usage, or the same error."""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN_DATE
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tokencounter import responses
from tokencounter.errors import TokenCounterError
from tokencounter.settings import Settings

MAX_DEPTH = Settings(date_string=GOLDEN_DATE, preload=False).max_depth

texts = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "\n", '"', "\\", "\ud800", "🦙", "data: x"]))
odd = st.sampled_from([None, 5, 1.5, True, [], {}, "x", -1, 2**70])
delta = st.one_of(
    st.none(),
    odd,
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.just("assistant"),
            "content": st.one_of(texts, st.none(), odd),
            "refusal": st.one_of(texts, st.none()),
            "reasoning": st.one_of(texts, st.none(), odd),
            "reasoning_content": st.one_of(texts, st.none()),
            "tool_calls": st.one_of(
                st.none(),
                odd,
                st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "index": st.one_of(st.integers(-2, 3), st.none(), odd),
                            "id": texts,
                            "function": st.one_of(
                                odd,
                                st.fixed_dictionaries(
                                    {}, optional={"name": st.one_of(texts, odd), "arguments": st.one_of(texts, odd)}
                                ),
                            ),
                        },
                    ),
                    max_size=3,
                ),
            ),
        },
    ),
)
choice = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.integers(0, 3), st.sampled_from([-1, 1023, 1024, True]), odd),
        "delta": delta,
        "text": st.one_of(texts, odd),
        "finish_reason": st.one_of(st.sampled_from([None, "stop", "length", "tool_calls"]), odd),
        "logprobs": st.one_of(st.none(), st.just({"content": [{"token": "a", "logprob": -0.1}]})),
    },
)
chunk = st.one_of(
    st.fixed_dictionaries(
        {"id": st.just("chatcmpl-1"), "object": st.just("chat.completion.chunk")},
        optional={
            "choices": st.one_of(st.lists(choice, max_size=3), odd),
            "usage": st.one_of(
                st.none(),
                odd,
                st.fixed_dictionaries(
                    {}, optional={"prompt_tokens": st.one_of(st.integers(0, 99), odd), "completion_tokens": odd}
                ),
                st.fixed_dictionaries({"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99)}),
            ),
        },
    ),
    odd,
)


def stream(chunks: list, done: bool, ascii: bool) -> str:
    events = "".join(f"data: {json.dumps(c, ensure_ascii=ascii)}\n\n" for c in chunks)
    return events + ("data: [DONE]\n\n" if done else "")


def outcome(parse, text: str):
    try:
        return parse(text, MAX_DEPTH)
    except TokenCounterError as exc:
        return type(exc), exc.code


@hsettings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(chunk, min_size=1, max_size=8), done=st.booleans(), ascii=st.booleans())
def test_one_call_equals_event_by_event(chunks, done, ascii):
    text = stream(chunks, done, ascii)
    assert outcome(responses._from_stream, text) == outcome(responses._from_events, text)


def test_the_usual_stream_takes_the_one_call_path():
    chunks = [{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}] * 3
    text = stream(chunks + [{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}], True, False)
    assert responses._from_batches(text) is not None
    completion = responses._from_stream(text, MAX_DEPTH)
    assert completion.choices[0].text == "aaa" and completion.usage["total_tokens"] == 6


@pytest.mark.parametrize(
    "text",
    [
        ": keep-alive\n\ndata: {}\n\n",  # a comment line
        'data: {"choices": []}\r\n\r\ndata: {}\r\n\r\n',  # CRLF
        "data: [DONE]\n\ndata: {}\n\n",  # [DONE] first: the rest is ignored
        'data: {"choices":\ndata: []}\n\n',  # one event in two data lines
        "event: message\ndata: {}\n\n",
        "data:{}\n\n",  # no space after the colon
        "data: \n\ndata: [DONE]",  # an empty event (found by review: the one-call path took it as no chunk)
        'data: {"choices": []}\ufeff',  # a trailing BOM, which the event path keeps
        'data: {"choices": [{"delta": {"tool_calls": [{"index": null}]}}]}\n\n',  # a null tool-call index
        "data: [" + "{}," * 300_000 + "{}]\n\n",  # more containers than one event may hold
    ],
)
def test_other_forms_go_event_by_event_with_the_same_result(text):
    assert responses._from_batches(text) is None
    assert outcome(responses._from_stream, text) == outcome(responses._from_events, text)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 7},
        {"prompt_tokens": 7, "completion_tokens": None},
        {"prompt_tokens": 7, "completion_tokens": 2},
    ],
)
def test_usage_reads_a_missing_count_as_zero_and_a_null_as_none(usage):
    text = stream(
        [{"choices": [{"index": 0, "delta": {"content": "a"}}]}, {"choices": [], "usage": usage}], True, False
    )
    assert responses._from_batches(text) is not None
    assert responses._from_stream(text, MAX_DEPTH) == responses._from_events(text, MAX_DEPTH)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ('"metrics": {"x": ' + "[" * 70 + "]" * 70 + "}", "too_deep"),  # nesting past TOKENCOUNTER_MAX_DEPTH
        ('"created": ' + "9" * 5000, "invalid_json"),  # an integer past Python's 4,300-digit limit
        ('"created": 1e999', "invalid_json"),  # past a double: Infinity
        ('"created": NaN', "invalid_json"),
    ],
    ids=["deep_unknown_field", "huge_integer", "infinity", "nan"],
)
def test_the_one_call_path_keeps_every_refusal(extra, code):
    """Fields the count never reads are still checked: a chunk with a field outside vLLM's and OpenAI's goes event
    by event, and every typed field is checked as the event path checks it."""
    text = 'data: {"choices": [{"index": 0, "delta": {"content": "a"}}], ' + extra + "}\n\ndata: [DONE]\n\n"
    assert responses._from_batches(text) is None
    assert outcome(responses._from_stream, text)[1] == code


# --- runs: events alike but for one string, read as strings (responses._Run) -----------------------------------

SKELETONS = {
    "content": (
        '{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        '"delta":{"content":',
        '},"logprobs":null,"finish_reason":null}]}',
    ),
    "spaced_content": ('{"id": "x", "choices": [{"index": 1, "delta": {"content": ', '}, "finish_reason": null}]}'),
    "reasoning": ('{"id":"x","choices":[{"index":0,"delta":{"reasoning":', '},"finish_reason":null}]}'),
    "reasoning_content": ('{"id":"x","choices":[{"index":0,"delta":{"reasoning_content":', "}}]}"),
    "refusal": ('{"choices":[{"delta":{"refusal":', "}}]}"),
    "completion_text": (
        '{"id":"x","object":"text_completion","choices":[{"index":0,"text":',
        ',"finish_reason":null}]}',
    ),
    "finishing": ('{"choices":[{"index":0,"delta":{"content":', '},"finish_reason":"length"}]}'),
    "content_then_text": ('{"choices":[{"index":0,"delta":{"content":', '},"text":"ignored"}]}'),
    "two_fields": ('{"choices":[{"index":0,"delta":{"content":"a","reasoning":', "}}]}"),
    "duplicate_key": ('{"choices":[{"index":0,"delta":{"content":"first","content":', "}}]}"),
    "usage_too": ('{"choices":[{"index":0,"delta":{"content":', '}}],"usage":{"prompt_tokens":1}}'),
}
# Where the string goes: JSON strings, and (one time in eight) raw text that only looks like one, or not even that.
json_strings = st.text(max_size=6).flatmap(
    lambda t: st.sampled_from([json.dumps(t), json.dumps(t, ensure_ascii=False)])
)
hostile_strings = st.one_of(
    st.sampled_from(['"\\ud800"', '"\\udc00\\ud800"', '"a\\x"', '"\n"', '"\x00"', '"\\"']),
    st.sampled_from(['"a", "b', 'c"', '"a"}, {"x": "b"', '"', "", "1", "null", '"a" "b"']),
    st.text(alphabet='a"\\, }{:nu0d8\x00\n', max_size=8),
)
raw_strings = st.integers(0, 7).flatmap(lambda n: hostile_strings if n == 0 else json_strings)
irregular = st.sampled_from(
    [
        '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}',
        '{"choices":[{"index":0,"delta":{"content":"odd one"}}],"extra":1}',
        "not json",
        "[DONE]",
    ]
)


@st.composite
def run_streams(draw):
    events = []
    for _ in range(draw(st.integers(1, 3))):  # runs of one or more shapes, odd events around them
        events += draw(st.lists(irregular, max_size=2))
        before, after = SKELETONS[draw(st.sampled_from(sorted(SKELETONS)))]
        events += [before + draw(raw_strings) + after for _ in range(draw(st.integers(0, 12)))]
        if draw(st.booleans()):  # a well-formed run, long enough to be read as one
            events += [before + json.dumps(f"w{i}") + after for i in range(responses.MIN_RUN)]
    events += draw(st.lists(irregular, max_size=2))
    return "".join(f"data: {e}\n\n" for e in events or ["{}"]) + draw(st.sampled_from(["", "data: [DONE]\n\n"]))


@hsettings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=run_streams())
def test_runs_read_as_strings_equal_event_by_event(text):
    assert outcome(responses._from_stream, text) == outcome(responses._from_events, text)


@pytest.mark.parametrize(
    "name",
    [
        "content",
        "spaced_content",
        "reasoning",
        "reasoning_content",
        "refusal",
        "completion_text",
        "finishing",
        "duplicate_key",
    ],
)
def test_a_run_is_read_as_strings(name, monkeypatch):
    """The usual stream takes the run path: its events are never decoded one by one, nor all typed."""
    before, after = SKELETONS[name]
    strings = ["Hello", ", w\u00f6rld", ' "quoted" ', "\\", "\n", "🦙", "\ud83e\udd99", ""] * 4
    text = stream_of([before + json.dumps(s, ensure_ascii=i % 2 == 0) + after for i, s in enumerate(strings)])
    decoded = []
    monkeypatch.setattr(responses, "_add_chunks", lambda parts, chunks: decoded.extend(chunks) or True)
    assert responses._Run.of(before + '"x"' + after) is not None
    assert responses._from_batches(text) is not None and decoded == []
    monkeypatch.undo()
    assert responses._from_stream(text, MAX_DEPTH) == responses._from_events(text, MAX_DEPTH)


@pytest.mark.parametrize("name", ["two_fields", "content_then_text", "usage_too"])
def test_events_adding_more_than_their_string_are_decoded(name):
    before, after = SKELETONS[name]
    assert responses._Run.of(before + '"x"' + after) is None or name == "content_then_text"
    text = stream_of([before + json.dumps(f"s{i}") + after for i in range(20)])
    assert responses._from_stream(text, MAX_DEPTH) == responses._from_events(text, MAX_DEPTH)


@pytest.mark.parametrize(
    "middles",
    [
        ['"a", "b', 'c"'],  # two texts that join into two strings: neither is one
        ['"a"}, {"x": "b', 'c"'],
        ['"a\\x"'],  # an invalid escape
        ['"\\ud800"'],  # a lone surrogate
        ['"a\nb"'],  # a raw newline: another line
        ['"a\x00b"'],  # a raw control character
    ],
)
def test_a_run_never_takes_what_is_not_one_string_each(middles):
    before, after = SKELETONS["content"]
    events = [before + json.dumps(f"s{i}") + after for i in range(10)]
    events[4:4] = [before + m + after for m in middles]
    text = stream_of(events)
    assert outcome(responses._from_stream, text) == outcome(responses._from_events, text)


def stream_of(events: list[str]) -> str:
    return "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"


@pytest.mark.parametrize(
    "event",
    [
        '{"choices":[{"index":0,"text":"t%d","delta":{"content":"\\u0000"}}]}',  # text is ignored beside a delta
        '{"choices":[{"index":0,"delta":{"reasoning_content":"r%d","reasoning":"\\u0000"}}]}',  # reasoning wins
        '{"choices":[{"index":0,"delta":{"content":"c%d","content":"\\u0000"}}]}',  # the last key wins
        '{"choices":[{"index":0,"delta":{"content":"c%d","content":"\\u0001"}}]}',
    ],
    ids=["text_beside_delta", "reasoning_over_reasoning_content", "duplicate_key_nul", "duplicate_key_soh"],
)
def test_a_run_is_read_from_the_string_that_counts(event):
    """Found by review: a field the count ignores, beside another holding the probe's marker, was read as the run."""
    text = stream_of([event % i for i in range(responses.MIN_RUN + 2)])
    assert responses._from_stream(text, MAX_DEPTH) == responses._from_events(text, MAX_DEPTH)


def test_an_event_of_many_fields_is_probed_a_bounded_number_of_times(monkeypatch):
    """Found by review: the run's shape was probed once per string field, a decode of the whole event each time."""
    probes = []
    real = responses._probe
    monkeypatch.setattr(responses, "_probe", lambda *args: probes.append(1) or real(*args))
    event = '{"choices":[{"index":0,"delta":{' + '"content":"",' * 8000 + '"content":"x"}}]}'
    text = stream_of(["{}", event] + ["{}"] * responses.MIN_RUN)
    assert outcome(responses._from_stream, text) == outcome(responses._from_events, text)
    assert len(probes) <= 2 * responses.RUN_FIELDS_TRIED
