"""Llama 3's templates counted without rendering (tokencounter/llama3_chat.py) equal the jinja render counted, on
random conversations: any role names, whitespace, special-token text, unicode, tools, tool calls and results, the
flags and template arguments (where the plain form does not apply, both paths are jinja's and agree trivially)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import GOLDEN_DATE, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencounter import conversation, llama3_chat, templates
from tokencounter.backend import RenderedChat
from tokencounter.errors import TokenCounterError
from tokencounter.payloads import parse_request
from tokencounter.registry import REGISTRY, resolve
from tokencounter.settings import Settings
from tokencounter.templates import embedded_template

SETTINGS = Settings(date_string=GOLDEN_DATE, preload=False)
PIECES = st.sampled_from(
    ["hello", " world", "  ", "\n", "\n\n", "\t", " \u00a0", "東京", "🦙", "e\u0301", "123", "<|eot_id|>",
     "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|", "|>", "<|eot_id", "'s", "!!", "\r\n"]
)  # fmt: skip
TEXT = st.lists(PIECES, max_size=8).map("".join)
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "developer", "ipython", "wizard"]) | TEXT.filter(bool)
CONTENT = TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), max_size=3)
KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "bos_token": st.sampled_from(["<|begin_of_text|>", "", "BOS ", "<|start_header_id|>"]),
        "add_generation_prompt": st.booleans(),
        "messages": st.just([{"role": "user", "content": "x"}]),
        "continue_final_message": st.booleans(),
        "date_string": st.sampled_from(["1 Jan 2025", "<|eot_id|> 2025", ""]),
        "custom_tools": st.sampled_from([None, []]),
        "builtin_tools": st.sampled_from([None, ["brave_search"]]),
        "tools_in_user_message": st.booleans(),
    },
)


def backend():
    return REGISTRY.get(resolve("llama-3", SETTINGS), SETTINGS)


def outcome(count, prompt, defaults):
    try:
        return count(prompt, defaults)
    except TokenCounterError as exc:
        return exc.code


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": CONTENT}) | st.sampled_from(
    [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "ipython", "content": "x"},
    ]
)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("template", ["llama-3", "llama-3.1", "llama-3.2", "llama-3.3"])
@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(MESSAGE, max_size=6),
    flags=st.fixed_dictionaries(
        {},
        optional={
            "add_generation_prompt": st.booleans(),
            "add_special_tokens": st.booleans(),
            "tools": st.sampled_from([TOOLS, []]),
        },
    ),
    kwargs=KWARGS,
    defaults=KWARGS,
)
def test_counted_without_rendering_equals_the_render(template, messages, flags, kwargs, defaults):
    fast = REGISTRY.get(resolve(template, SETTINGS), SETTINGS)
    # Llama 3.3's template is Llama 3.1's, to the character: it is known by the first name.
    assert embedded_template(fast.template.embedded) == embedded_template(template)
    request = {"model": template, "messages": messages or [{"role": "user", "content": ""}], **flags}
    if kwargs:
        request["chat_template_kwargs"] = kwargs
    prompt = parse_request(request, SETTINGS)
    structural = outcome(lambda p, d: fast.count_chat(p, d), prompt, defaults)
    rendered = outcome(lambda p, d: RenderedChat.count_chat(fast, p, d), prompt, defaults)
    assert structural == rendered


def test_llama_4_is_rendered():
    llama4 = REGISTRY.get(resolve("llama-4", SETTINGS), SETTINGS)
    assert llama4.template.embedded == "llama-4"
    assert llama3_chat.count("llama-4", llama4.count_rendered, [{"role": "user", "content": "x"}], None, {}) is None


def test_continue_final_message_is_rendered():
    prompt = parse_request(
        {
            "model": "llama-3",
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "The answer is "}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
        SETTINGS,
    )
    fast = backend()
    assert fast.count_chat(prompt, {}) == RenderedChat.count_chat(fast, prompt, {})
    assert conversation.template_kwargs({}, prompt.template_kwargs, fast.template)["continue_final_message"]


PLAIN_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "bos_token": st.sampled_from(["<|begin_of_text|>", "", "BOS "]),
        "add_generation_prompt": st.booleans(),
        "date_string": st.sampled_from(["1 Jan 2025", "<|eot_id|> 2025", ""]),
        "tools_in_user_message": st.booleans(),
    },
)


@pytest.mark.parametrize("template", ["llama-3", "llama-3.1", "llama-3.2", "llama-3.3"])
@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(
        st.fixed_dictionaries({"role": ROLE.filter(lambda r: r not in ("tool", "ipython")), "content": CONTENT}),
        min_size=1,
        max_size=6,
    ),
    flags=st.fixed_dictionaries({}, optional={"add_generation_prompt": st.booleans()}),
    kwargs=PLAIN_KWARGS,
    defaults=PLAIN_KWARGS,
)
def test_plain_conversations_take_the_unrendered_path(template, messages, flags, kwargs, defaults):
    """Where the plain form applies, the count is made without rendering, and equals the render's."""
    fast = REGISTRY.get(resolve(template, SETTINGS), SETTINGS)
    request = {"model": template, "messages": messages, "chat_template_kwargs": kwargs, **flags}
    prompt = parse_request(request, SETTINGS)
    plain = fast.count_unrendered(prompt, defaults)
    assert plain is not None
    assert plain == outcome(lambda p, d: RenderedChat.count_chat(fast, p, d), prompt, defaults)


@pytest.mark.parametrize("name", templates.EMBEDDED_TEMPLATES)
def test_the_kept_reading_of_each_embedded_template_is_jinjas(name):
    """EMBEDDED_ANALYSIS spares a cold start jinja: it must be what reading the template with jinja finds."""
    assert templates.EMBEDDED_ANALYSIS[name] == templates.read_template(templates.embedded_template(name))


def test_a_plain_chat_is_counted_without_importing_jinja():
    code = (
        "import json, sys; from tokencounter import service; from tokencounter.settings import Settings\n"
        "body = json.dumps({'RequestBody': json.dumps({'model': 'llama-3.1', 'messages': "
        "[{'role': 'user', 'content': 'hi'}]})}).encode()\n"
        "assert service.handle('POST', body, Settings(preload=False)).status == 200\n"
        "print('jinja2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
