"""Write tests/golden/vllm_prompt_tokens.json and vllm_mistral_prompt_tokens.json: prompt token counts from vLLM
0.33 itself (its request preprocessing).

Run by hand, in the vLLM environment of ../shared/vllm-render/ (CI does not install vLLM):

    ../shared/vllm-render/install.sh /tmp/vllm-venv
    /tmp/vllm-venv/bin/python scripts/make_vllm_golden.py [--vllm-render ../shared/vllm-render]

Every case is a chat (or legacy completions) request of a named class, sent to vLLM's own render routes
(`/v1/chat/completions/render`, `/v1/completions/render`) for one of the five embedded templates; vLLM's answer
is stored with the request: the prompt token count when it accepts the request, its status when it refuses.
The cases are generated here, from fixed seeds, and never by tokencounter: the tests compare the service with
what vLLM answered (tests/test_vllm_golden.py). Mistral's models are served in tokenizer mode "mistral" from model
dirs holding mistral-common's own tokenizer files (tests/test_mistral.py); `--only llama|mistral` writes one file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "vllm_prompt_tokens.json"
TEMPLATES = ("llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4")
VLLM_VERSION = "0.33.0"

WORDS = (
    "the model counts every token of a prompt exactly as the server does when it renders the chat template "
    "naïve café résumé 東京 данные 🦙 emoji ünïcödé tabs\tand\nnew lines  double  spaces"
).split(" ")


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def user(content, **extra) -> dict:
    return {"role": "user", "content": content, **extra}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def tool_shapes() -> dict[str, list]:
    nested = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "array", "items": {"type": "integer"}}}}},
    }
    return {
        "one": [WEATHER],
        "no_description": [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}],
        "no_parameters": [{"type": "function", "function": {"name": "now", "description": "the time"}}],
        "strict_true": [{"type": "function", "function": {**WEATHER["function"], "strict": True}}],
        "strict_false": [{"type": "function", "function": {**WEATHER["function"], "strict": False}}],
        "defer_loading_tool": [{**WEATHER, "defer_loading": True}],
        "defer_loading_function": [{"type": "function", "function": {**WEATHER["function"], "defer_loading": False}}],
        "extra_function_field": [{"type": "function", "function": {**WEATHER["function"], "examples": ["x"]}}],
        "extra_tool_field": [{**WEATHER, "metadata": {"owner": "team"}}],
        "nested": [{"type": "function", "function": {"name": "deep", "description": "d", "parameters": nested}}],
        "three": [WEATHER, {"type": "function", "function": {"name": "now"}}, tool_shapes_unicode()],
        "null_description": [{"type": "function", "function": {"name": "n", "description": None, "parameters": None}}],
    }


def tool_shapes_unicode() -> dict:
    return {"type": "function", "function": {"name": "météo", "description": "天気 🦙", "parameters": {}}}


def random_turns(rng: random.Random) -> list[dict]:
    """A system prompt, 1-4 user/assistant exchanges and a last user turn."""
    turns = [{"role": "system", "content": text(rng, 8)}]
    for _ in range(rng.randint(1, 4)):
        turns += [user(text(rng, rng.randint(1, 30))), {"role": "assistant", "content": text(rng, 20)}]
    return turns + [user(text(rng, 5))]


def call(name="get_weather", arguments='{"city": "Paris"}', **extra) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}, **extra}


def cases() -> list[dict]:
    """Every case: its class, kind ("chat" or "completion"), request, and the templates it is judged on."""
    rng = random.Random(20261204)
    out: list[dict] = []

    def add(cls: str, request: dict, templates=TEMPLATES, kind: str = "chat") -> None:
        out.append({"class": cls, "kind": kind, "templates": templates, "request": json.loads(json.dumps(request))})

    # plain conversations
    add("plain", {"messages": [user("hi")]})
    add("plain", {"messages": [{"role": "system", "content": "Be brief."}, user(text(rng, 12))]})
    for _ in range(3):
        add("plain", {"messages": random_turns(rng)})
    add("plain", {"messages": [user("  padded \n\n"), {"role": "assistant", "content": "  "}, user("\r\nx\t")]})
    add("plain", {"messages": [user("text with <|eot_id|> and <|begin_of_text|> inside")]})
    add("plain", {"messages": [user("")]})
    add("plain", {"messages": [user("x"), {"role": "assistant", "content": "y", "name": "bot", "weight": 1}]})
    add("plain", {"messages": [user("named", name="alice")]})
    add("long_content", {"messages": [user(text(random.Random(7), 3000))]})
    # content parts
    add("parts", {"messages": [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]})
    add(
        "parts",
        {
            "messages": [
                user([{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b"}])
            ]
        },
    )
    add("parts", {"messages": [user([{"type": "text", "text": ""}])]})
    add("parts", {"messages": [user([{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}])]})
    add("parts", {"messages": [user([{"type": "input_text", "text": "in"}, {"type": "output_text", "text": "out"}])]})
    add("parts", {"messages": [user("q"), {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]})
    add("parts", {"messages": [user([{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "x"}])]})
    add("parts", {"messages": [{"role": "system", "content": [{"type": "text", "text": "sys"}]}, user("u")]})
    add("parts", {"messages": [user([])]})
    # the Claude Code billing header line in a system prompt
    header = "x-anthropic-billing-header: cc_version=1.0; cch=abc123"
    add("billing_header", {"messages": [{"role": "system", "content": header + "\nYou are Claude Code."}, user("hi")]})
    add("billing_header", {"messages": [{"role": "system", "content": header}, user("hi")]})
    add(
        "billing_header",
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": header}, {"type": "text", "text": "S"}]},
                user("hi"),
            ]
        },
    )
    add("billing_header", {"messages": [user(header + "\nnot a system message")]})
    # tools in the request
    for name, tools in tool_shapes().items():
        add(f"tools:{name}", {"messages": [user("weather in Paris?")], "tools": tools})
    add("tools:tool_choice_none", {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "none"})
    add("tools:empty_list", {"messages": [user("x")], "tools": []})
    # tool calls and tool results
    for label, arguments in {
        "object": '{"city": "Paris"}',
        "invalid_json": "{city: Paris",
        "null": "null",
        "number": "42",
        "array": "[1, 2]",
        "string": '"Paris"',
        "empty": "",
        "nested": '{"a": {"b": [1, 2, {"c": null}]}, "u": "東京"}',
    }.items():
        add(
            f"tool_calls:arguments_{label}",
            {
                "messages": [
                    user("w?"),
                    {"role": "assistant", "content": None, "tool_calls": [call(arguments=arguments)]},
                ]
            },
        )
    add(
        "tool_calls:arguments_as_object",
        {"messages": [user("w?"), {"role": "assistant", "tool_calls": [call(arguments={"city": "Rome"})]}]},
    )
    add("tool_calls:empty_list", {"messages": [user("w?"), {"role": "assistant", "content": "ok", "tool_calls": []}]})
    add("tool_calls:on_user", {"messages": [user("w?", tool_calls=[call()])]})
    add(
        "tool_calls:with_content",
        {"messages": [user("w?"), {"role": "assistant", "content": "let me", "tool_calls": [call()]}]},
    )
    add("tool_calls:two", {"messages": [user("w?"), {"role": "assistant", "tool_calls": [call(), call("now", "{}")]}]})
    add(
        "tool_calls:no_id",
        {
            "messages": [
                user("w?"),
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            ]
        },
    )
    exchange = [
        user("weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [call()]},
    ]
    add("tool_results:string", {"messages": exchange + [{"role": "tool", "tool_call_id": "call_1", "content": "18C"}]})
    add(
        "tool_results:parts",
        {
            "messages": exchange
            + [{"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]}]
        },
    )
    add(
        "tool_results:two_parts",
        {
            "messages": exchange
            + [
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ]
        },
    )
    add(
        "tool_results:json",
        {"messages": exchange + [{"role": "tool", "tool_call_id": "call_1", "content": '{"t": 18}'}]},
    )
    add(
        "tool_results:multi_turn",
        {
            "messages": exchange
            + [
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "assistant", "content": "It is 18C."},
                user("and Rome?"),
            ],
            "tools": [WEATHER],
        },
    )
    add("tool_results:ipython", {"messages": exchange + [{"role": "ipython", "content": "18C"}]})
    # roles
    add("roles:developer_first", {"messages": [{"role": "developer", "content": "Be terse."}, user("hi")]})
    add(
        "roles:developer_after_system",
        {"messages": [{"role": "system", "content": "S"}, {"role": "developer", "content": "D"}, user("hi")]},
    )
    add("roles:developer_middle", {"messages": [user("a"), {"role": "developer", "content": "D"}, user("b")]})
    add(
        "roles:developer_parts",
        {
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
                user("hi"),
            ]
        },
    )
    add(
        "roles:two_systems",
        {"messages": [{"role": "system", "content": "A"}, user("a"), {"role": "system", "content": "B"}, user("b")]},
    )
    add(
        "roles:developer_and_empty_system",
        {"messages": [{"role": "system", "content": ""}, {"role": "developer", "content": "D"}, user("u")]},
    )
    add("roles:assistant_last", {"messages": [user("a"), {"role": "assistant", "content": "partial"}]})
    # request flags
    add("flags:no_generation_prompt", {"messages": [user("a")], "add_generation_prompt": False})
    add(
        "flags:continue_final_message",
        {
            "messages": [user("a"), {"role": "assistant", "content": "The answer is"}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    add(
        "flags:continue_final_message_trailing_space",
        {
            "messages": [user("a"), {"role": "assistant", "content": "The answer is "}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    add(
        "flags:continue_with_generation_prompt",
        {"messages": [user("a"), {"role": "assistant", "content": "x"}], "continue_final_message": True},
    )
    add("flags:add_special_tokens", {"messages": [user("a")], "add_special_tokens": True})
    add("flags:add_special_tokens_false", {"messages": [user("a")], "add_special_tokens": False})
    add("kwargs:date_string", {"messages": [user("a")], "chat_template_kwargs": {"date_string": "01 Jan 2025"}})
    add(
        "kwargs:tools_in_user_message_false",
        {"messages": [user("a")], "tools": [WEATHER], "chat_template_kwargs": {"tools_in_user_message": False}},
    )
    add(
        "kwargs:builtin_tools",
        {"messages": [user("a")], "chat_template_kwargs": {"builtin_tools": ["brave_search", "wolfram_alpha"]}},
    )
    add("kwargs:bos_token", {"messages": [user("a")], "chat_template_kwargs": {"bos_token": "<|start_header_id|>"}})
    add("kwargs:unknown", {"messages": [user("a")], "chat_template_kwargs": {"not_a_template_variable": 1}})
    add("kwargs:null", {"messages": [user("a")], "chat_template_kwargs": None})
    add(
        "kwargs:add_generation_prompt",
        {"messages": [user("a")], "chat_template_kwargs": {"add_generation_prompt": False}},
    )
    # more shapes real clients send
    add("roles:custom", {"messages": [{"role": "wizard", "content": "cast"}, user("hi")]})
    add("roles:function", {"messages": [user("a"), {"role": "function", "name": "f", "content": "42"}]})
    add(
        "roles:developer_with_tools",
        {"messages": [{"role": "developer", "content": "D", "tools": [WEATHER]}, user("u")]},
    )
    add(
        "roles:reasoning",
        {"messages": [user("a"), {"role": "assistant", "content": "b", "reasoning": "think"}, user("c")]},
    )
    add("roles:system_not_first", {"messages": [user("a"), {"role": "system", "content": "late"}, user("b")]})
    add(
        "tools:strict_string",
        {
            "messages": [user("x")],
            "tools": [{"type": "function", "function": {**WEATHER["function"], "strict": "true"}}],
        },
    )
    add(
        "tools:long_description",
        {
            "messages": [user("x")],
            "tools": [{"type": "function", "function": {"name": "doc", "description": text(rng, 200)}}],
        },
    )
    add("parts:string_parts", {"messages": [user(["a", "b"])]})
    add(
        "parts:assistant_extra_fields",
        {
            "messages": [
                user("q"),
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
                },
                user("r"),
            ]
        },
    )
    add(
        "parts:unicode",
        {"messages": [user([{"type": "text", "text": "東京 🦙 naïve"}, {"type": "text", "text": "e\u0301 ½ ≠ ∞"}])]},
    )
    add(
        "billing_header:not_first_part",
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "S"}, {"type": "text", "text": header + "\nrest"}],
                },
                user("hi"),
            ]
        },
    )
    add("billing_header:developer", {"messages": [{"role": "developer", "content": header + "\nD"}, user("hi")]})
    add(
        "tool_calls:arguments_whitespace",
        {"messages": [user("w?"), {"role": "assistant", "tool_calls": [call(arguments="  ")]}]},
    )
    add(
        "tool_calls:arguments_true",
        {"messages": [user("w?"), {"role": "assistant", "tool_calls": [call(arguments="true")]}]},
    )
    add(
        "tool_calls:arguments_escapes",
        {
            "messages": [
                user("w?"),
                {"role": "assistant", "tool_calls": [call(arguments='{"c": "\\u6771\\u4eac \\n"}')]},
            ]
        },
    )
    add("tool_results:no_tool_call_id", {"messages": exchange + [{"role": "tool", "content": "18C"}]})
    add(
        "tool_results:tool_call_id_null",
        {"messages": exchange + [{"role": "tool", "tool_call_id": None, "content": "18C"}]},
    )
    add("tool_results:empty", {"messages": exchange + [{"role": "tool", "tool_call_id": "call_1", "content": ""}]})
    add(
        "tool_results:parallel_multi_turn",
        {
            "messages": [
                {"role": "system", "content": "Use tools."},
                user("weather in Paris and the time?"),
                {"role": "assistant", "content": None, "tool_calls": [call(), {**call("now", "{}"), "id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": '{"t": 18}'}]},
                {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
                {"role": "assistant", "content": [{"type": "text", "text": "18C at noon."}]},
                user([{"type": "text", "text": "and Rome?"}]),
                {"role": "assistant", "content": "", "tool_calls": [call(arguments={"city": "Rome"})]},
                {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
            ],
            "tools": [WEATHER, {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}],
        },
    )
    add(
        "flags:continue_final_message_parts",
        {
            "messages": [
                user("a"),
                {"role": "assistant", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two "}]},
            ],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    add(
        "flags:continue_user_message",
        {"messages": [user("complete this")], "add_generation_prompt": False, "continue_final_message": True},
    )
    add(
        "flags:add_special_tokens_with_tools", {"messages": [user("a")], "tools": [WEATHER], "add_special_tokens": True}
    )
    add("flags:reasoning_effort", {"messages": [user("a")], "reasoning_effort": "low"})
    add("flags:documents", {"messages": [user("a")], "documents": [{"title": "t", "text": "doc"}]})
    add("kwargs:auto_value", {"messages": [user("a")], "chat_template_kwargs": {"date_string": "auto"}})
    add("kwargs:null_value", {"messages": [user("a")], "chat_template_kwargs": {"date_string": None}})
    add("kwargs:custom_tools", {"messages": [user("a")], "chat_template_kwargs": {"custom_tools": [WEATHER]}})
    add("kwargs:tokenize", {"messages": [user("a")], "chat_template_kwargs": {"tokenize": True}})
    add(
        "long_content:unicode",
        {"messages": [{"role": "system", "content": "東京 🦙 " * 500}, user("naïve café " * 800)]},
    )
    # requests vLLM may refuse
    add("refused:user_content_null", {"messages": [user(None)]})
    add("refused:no_messages", {"messages": []})
    add(
        "refused:image_part",
        {"messages": [user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])]},
    )
    add("refused:part_without_type", {"messages": [user([{"text": "a"}])]})
    # legacy completions
    add("completions:default", {"prompt": "Once upon a time"}, kind="completion")
    add("completions:no_special_tokens", {"prompt": "Once upon a time", "add_special_tokens": False}, kind="completion")
    add("completions:special_text", {"prompt": "<|begin_of_text|>x<|eot_id|>"}, kind="completion")
    add("completions:list", {"prompt": ["a", "b c"]}, kind="completion")
    add("completions:token_ids", {"prompt": [1, 2, 3]}, kind="completion")
    add("completions:special_tokens_true", {"prompt": "x", "add_special_tokens": True}, kind="completion")
    add("completions:list_no_special_tokens", {"prompt": ["a", "b"], "add_special_tokens": False}, kind="completion")
    return out


def completion_tokens(oracle, template: str, request: dict):
    """(status, prompt tokens summed over the prompts) from /v1/completions/render."""
    request = {**request, "model": oracle_model(template)}
    body = json.dumps(request, ensure_ascii=False).encode()
    status, raw = oracle.loop.run_until_complete(oracle._post(oracle.app(template), "/v1/completions/render", body))
    payload = json.loads(raw)
    if status != 200:
        return status, None
    items = payload if isinstance(payload, list) else [payload]
    return status, sum(len(item["token_ids"]) for item in items)


def corpus_counts(oracle) -> dict[str, dict]:
    """vLLM's prompt count for every chat and completions case of tests/corpus.py, by case name (the requests
    live there; `case_sha256` says which version of the case was judged)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from corpus import CASES, case_sha, template_of

    out = {}
    for name, case in sorted(CASES.items()):
        request = case["request"]
        if not isinstance(request, dict):
            continue
        template = template_of(request)
        if "messages" in request:
            status, tokens = oracle.count(template, request)
        elif "prompt" in request:
            status, tokens = completion_tokens(oracle, template, request)
        else:
            continue  # embeddings: no render route
        out[name] = {
            "case_sha256": case_sha(case),
            "template": template,
            "status": status,
            "prompt_tokens": tokens if status == 200 else None,
        }
    return out


def oracle_model(template: str) -> str:
    import vllm_prompt_tokens

    return vllm_prompt_tokens.MODELS[template][0]


# Mistral's models as vLLM serves them in tokenizer mode "mistral": served name -> (tokenizer file in
# mistral_common/data, the name vLLM looks for in a model dir, vocabulary size).
MISTRAL_OUT = ROOT / "tests" / "golden" / "vllm_mistral_prompt_tokens.json"
MISTRAL_MODELS = {
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3", 32768),
    "mistralai/Mixtral-8x22B-Instruct-v0.1": (
        "mistral_instruct_tokenizer_240323.model.v3",
        "tokenizer.model.v3",
        32768,
    ),
    "mistralai/Codestral-22B-v0.1": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3", 32768),
    "mistralai/Mistral-Nemo-Instruct-2407": ("tekken_240718.json", "tekken.json", 131072),
    "mistralai/Mistral-Large-Instruct-2411": (
        "mistral_instruct_tokenizer_241114.model.v7",
        "tokenizer.model.v7",
        32768,
    ),
}


def mistral_cases() -> list[dict]:
    """Chat requests for Mistral models: every shape its encoder treats differently (system prompt placement,
    multi-turn, tools, tool calls and results with long ids, prefix continuation), and what vLLM refuses."""
    rng = random.Random(20261206)
    out: list[dict] = []

    def add(cls: str, request: dict) -> None:
        out.append({"class": cls, "request": json.loads(json.dumps(request))})

    add("plain", {"messages": [user("hi")]})
    add("plain", {"messages": [{"role": "system", "content": "Be brief."}, user(text(rng, 12))]})
    for _ in range(3):
        add("multi_turn", {"messages": random_turns(rng)})
    add("plain", {"messages": [user("  padded \n\n"), {"role": "assistant", "content": " x "}, user("\r\nx\t")]})
    add("plain", {"messages": [user("text with [INST] and </s> and <|eot_id|> inside")]})
    add("unicode", {"messages": [user("東京 🦙 naïve café e\u0301 ½ ≠ ∞")]})
    add("long_content", {"messages": [user(text(random.Random(7), 3000))]})
    add("parts", {"messages": [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]})
    add(
        "system_late",
        {"messages": [user("a"), {"role": "assistant", "content": "b"}, {"role": "system", "content": "S"}, user("c")]},
    )
    add(
        "two_systems", {"messages": [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, user("u")]}
    )
    add("tools", {"messages": [user("weather in Paris?")], "tools": [WEATHER]})
    add(
        "tools", {"messages": [{"role": "system", "content": "Use tools."}, user("x")], "tools": tool_shapes()["three"]}
    )
    exchange = [user("weather in Paris?"), {"role": "assistant", "content": None, "tool_calls": [call(id="abcdefghi")]}]
    add(
        "tool_results",
        {"messages": exchange + [{"role": "tool", "tool_call_id": "abcdefghi", "content": "18C"}], "tools": [WEATHER]},
    )
    add(
        "tool_results:long_ids",
        {
            "messages": [
                user("weather?"),
                {"role": "assistant", "tool_calls": [call(id="call_0123456789abcdef")]},
                {"role": "tool", "tool_call_id": "call_0123456789abcdef", "content": '{"t": 18}'},
                {"role": "assistant", "content": "18C."},
                user("thanks"),
            ],
            "tools": [WEATHER],
        },
    )
    add(
        "tool_results:parallel",
        {
            "messages": [
                user("weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "tool_calls": [call(id="aaaaaaaaa"), call(id="bbbbbbbbb", arguments='{"city": "Rome"}')],
                },
                {"role": "tool", "tool_call_id": "aaaaaaaaa", "content": "18C"},
                {"role": "tool", "tool_call_id": "bbbbbbbbb", "content": "20C"},
            ],
            "tools": [WEATHER],
        },
    )
    add("flags:no_generation_prompt", {"messages": [user("a")], "add_generation_prompt": False})
    add(
        "flags:continue_final_message",
        {
            "messages": [user("a"), {"role": "assistant", "content": "The answer is"}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    add("flags:add_special_tokens", {"messages": [user("a")], "add_special_tokens": True})
    add("refused:assistant_last", {"messages": [user("a"), {"role": "assistant", "content": "partial"}]})
    add("refused:chat_template_kwargs", {"messages": [user("a")], "chat_template_kwargs": {"x": 1}})
    add(
        "refused:continue_user",
        {"messages": [user("a")], "add_generation_prompt": False, "continue_final_message": True},
    )
    add("roles:developer", {"messages": [{"role": "developer", "content": "D"}, user("a")]})
    return out


def serve_args(argv: list[str]):
    """`vllm serve`'s parsed arguments for argv, as vllm/entrypoints/cli/launch.py builds them."""
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    if args.model_tag is not None:
        args.model = args.model_tag
    validate_parsed_serve_args(args)
    return args


def register(models) -> None:
    """Serve each model name under its own name (the oracle routes requests by it)."""
    import vllm_prompt_tokens

    for served in models:
        vllm_prompt_tokens.MODELS[served] = (served, None, None)


def mistral_oracle(vllm_render: Path):
    """VLLMOracle serving each Mistral model from a model dir holding mistral-common's own tokenizer file, with
    --tokenizer-mode mistral and the mistral tool parser (as Mistral's model cards serve them)."""
    import shutil

    import mistral_common
    import vllm_prompt_tokens

    data = Path(mistral_common.__file__).parent / "data"

    class MistralOracle(vllm_prompt_tokens.VLLMOracle):
        def _args(self, template: str):
            source, name, vocab = MISTRAL_MODELS[template]
            directory = self.work / "mistral" / template.split("/")[-1]
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / source, directory / name)
            config = {
                "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "vocab_size": vocab, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "rope_theta": 1000000.0,
                "tie_word_embeddings": False, "hidden_act": "silu",
            }  # fmt: skip
            (directory / "config.json").write_text(json.dumps(config))
            argv = [str(directory), "--served-model-name", template, "--tokenizer-mode", "mistral"]
            return serve_args(argv + ["--enable-auto-tool-choice", "--tool-call-parser", "mistral"])

    register(MISTRAL_MODELS)
    return MistralOracle(ROOT)


def make_mistral(vllm_render: Path, version: str) -> None:
    oracle = mistral_oracle(vllm_render)
    rows = []
    for case in mistral_cases():
        said = {}
        for model in MISTRAL_MODELS:
            status, tokens = oracle.count(model, case["request"])
            said[model] = {"status": status, "prompt_tokens": tokens if status == 200 else None}
        rows.append({**case, "vllm": said})
    header = json.dumps(
        {
            "vllm": version,
            "made_by": "scripts/make_vllm_golden.py with ../shared/vllm-render/vllm_prompt_tokens.py",
            "server": {"tokenizer_mode": "mistral", "tool_call_parser": "mistral", "models": MISTRAL_MODELS},
        },
        ensure_ascii=False,
        indent=1,
    )
    write_golden(MISTRAL_OUT, header, rows)


# The other families' models, served from model dirs holding the service's embedded tokenizer files (their own
# chat templates inside): served name -> (tokenizer dir under tokencounter/data, config.json, vLLM server flags as
# the model cards give them).
FAMILIES_OUT = ROOT / "tests" / "golden" / "vllm_families_prompt_tokens.json"
_TINY = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
    "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 131072,
}  # fmt: skip
_QWEN2 = dict(_TINY, architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, rope_theta=1e6)
FAMILY_MODELS = {
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5", _QWEN2, ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]),
    "Qwen/Qwen3-8B": (
        "qwen3",
        dict(_TINY, architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, rope_theta=1e6),
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"],
    ),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (
        "deepseek-r1-distill-qwen",
        _QWEN2,
        ["--reasoning-parser", "deepseek_r1"],  # no tool parser for the distills' format: tools are refused
    ),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (
        "deepseek-r1-distill-llama",
        dict(
            _TINY,
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=128256,
            rope_theta=500000.0,
            bos_token_id=128000,
            eos_token_id=128001,
        ),
        ["--reasoning-parser", "deepseek_r1"],
    ),
    "google/gemma-3-27b-it": (
        "gemma-3",
        dict(
            _TINY,
            architectures=["Gemma3ForCausalLM"],
            model_type="gemma3_text",
            vocab_size=262208,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=16,
            sliding_window=512,
            rope_theta=1e6,
            rope_local_base_freq=10000.0,
        ),
        [],  # served as its model card says: no tool parser (vLLM then refuses requests carrying tools)
    ),
}


def family_cases() -> list[dict]:
    """The Llama corpus's chat and completions requests (every shape vLLM's preprocessing treats apart), and the
    families' own: reasoning switches and earlier reasoning in the history, system turns Gemma folds into the
    first user turn, tool calls in Hermes form."""
    out = [{k: v for k, v in case.items() if k != "templates"} for case in cases()]
    rng = random.Random(20261207)

    def add(cls: str, request: dict, kind: str = "chat") -> None:
        out.append({"class": cls, "kind": kind, "request": json.loads(json.dumps(request))})

    for flag in (True, False):
        add("thinking:enable_thinking", {"messages": [user("2+2?")], "chat_template_kwargs": {"enable_thinking": flag}})
    add(
        "thinking:history",
        {
            "messages": [
                user("2+2?"),
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                user("and 3+3?"),
            ]
        },
    )
    add(
        "thinking:reasoning_field",
        {"messages": [user("2+2?"), {"role": "assistant", "content": "4", "reasoning_content": "add"}, user("ok")]},
    )
    add(
        "thinking:reasoning_last",
        {
            "messages": [user("q"), {"role": "assistant", "content": "<think>x</think>a"}],
            "add_generation_prompt": False,
        },
    )
    for _ in range(5):
        turns = random_turns(rng)
        add("multi_turn", {"messages": [{"role": "system", "content": text(rng, 8)}, *turns]})
    add("roles:system_only", {"messages": [{"role": "system", "content": "S"}]})
    add("roles:alternation", {"messages": [user("a"), user("b")]})
    add("roles:assistant_first", {"messages": [{"role": "assistant", "content": "a"}, user("b")]})
    add(
        "tool_calls:hermes",
        {
            "messages": [
                {"role": "system", "content": "Use tools."},
                user("weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [call(id="a1"), call(id="b2", arguments='{"city": "Rome"}')],
                },
                {"role": "tool", "tool_call_id": "a1", "content": "18C"},
                {"role": "tool", "tool_call_id": "b2", "content": "20C"},
            ],
            "tools": [WEATHER],
        },
    )
    add("unicode", {"messages": [user("東京 🦙 naïve café e\u0301 ½ ≠ ∞ Ω ﬁ ﬀ ①")]})
    add("unicode:normalization", {"messages": [user("cafe\u0301 A\u030a \u212b \uff21\uff22 \u2126")]})
    add("plain:special_text", {"messages": [user("<|im_start|>x<|im_end|> <start_of_turn> <bos> <think>")]})
    return out


def family_oracle(vllm_render: Path):
    """VLLMOracle serving each family's model from a model dir of the service's embedded files (no --chat-template:
    the template is the one in the model's own tokenizer_config.json, as `vllm serve <repo>` uses it)."""
    import vllm_prompt_tokens

    class FamilyOracle(vllm_prompt_tokens.VLLMOracle):
        def _args(self, template: str):
            name, config, flags = FAMILY_MODELS[template]
            # The dir is named as the hub repo and given relative, so that the model's name is the repo id, as with
            # `vllm serve <repo>`: transformers picks some tokenizer classes by that name (DeepSeek-R1-Distill-Llama
            # is loaded from its tokenizer.json only when the name matches its MODEL_IDS_TO_TOKENIZERS_BACKEND).
            os.chdir(self.work / "families")
            directory = Path(template)
            directory.mkdir(parents=True, exist_ok=True)
            for filename in ("tokenizer.json", "tokenizer_config.json"):
                (directory / filename).write_bytes((ROOT / "tokencounter" / "data" / name / filename).read_bytes())
            (directory / "config.json").write_text(json.dumps(config))
            return serve_args([template, "--served-model-name", template, *flags])

    register(FAMILY_MODELS)
    oracle = FamilyOracle(ROOT)
    (oracle.work / "families").mkdir(parents=True, exist_ok=True)
    return oracle


def make_families(vllm_render: Path, version: str) -> None:
    oracle = family_oracle(vllm_render)
    rows = []
    for case in family_cases():
        said = {}
        for model in FAMILY_MODELS:
            if case["kind"] == "completion":
                status, tokens = completion_tokens(oracle, model, case["request"])
            else:
                status, tokens = oracle.count(model, case["request"])
            said[model] = {"status": status, "prompt_tokens": tokens if status == 200 else None}
        rows.append({**case, "vllm": said})
    header = json.dumps(
        {
            "vllm": version,
            "made_by": "scripts/make_vllm_golden.py --only families, with ../shared/vllm-render/vllm_prompt_tokens.py",
            "server": {model: {"tokenizer": name, "flags": flags} for model, (name, _, flags) in FAMILY_MODELS.items()},
        },
        ensure_ascii=False,
        indent=1,
    )
    write_golden(FAMILIES_OUT, header, rows)


def write_golden(path: Path, header: str, rows: list[dict]) -> None:
    """The header object with the cases after it, one case per line: reviewable diffs without an indented dump."""
    lines = ",\n".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows)
    path.write_text(header[:-2] + ',\n "cases": [\n' + lines + "\n]}\n", encoding="utf-8")
    judged = [v for r in rows for v in r["vllm"].values()]
    refused = sum(v["status"] != 200 for v in judged)
    print(f"{len(judged)} cases ({refused} refused by vLLM) -> {path.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-render", type=Path, default=ROOT.parent / "shared" / "vllm-render")
    parser.add_argument("--only", choices=("llama", "mistral", "families"), help="write one of the golden files")
    args = parser.parse_args()
    sys.path.insert(0, str(args.vllm_render))
    import vllm
    from vllm_prompt_tokens import DATE_STRING, VLLMOracle

    assert vllm.__version__.startswith(VLLM_VERSION), vllm.__version__
    if args.only in (None, "families"):
        make_families(args.vllm_render, vllm.__version__)
    if args.only in (None, "mistral"):
        make_mistral(args.vllm_render, vllm.__version__)
    if args.only in ("mistral", "families"):
        return 0
    oracle = VLLMOracle(ROOT, max_model_len=131072)
    corpus = corpus_counts(oracle)
    rows = []
    for case in cases():
        # Each request is stored once, with vLLM's answer for every template (the file stays small).
        vllm_says = {}
        for template in case.pop("templates"):
            if case["kind"] == "completion":
                status, tokens = completion_tokens(oracle, template, case["request"])
            else:
                status, tokens = oracle.count(template, case["request"])
            vllm_says[template] = {"status": status, "prompt_tokens": tokens if status == 200 else None}
        rows.append({**case, "vllm": vllm_says})
    header = json.dumps(
        {
            "vllm": vllm.__version__,
            "made_by": "scripts/make_vllm_golden.py with ../shared/vllm-render/vllm_prompt_tokens.py",
            "server": {
                "default_chat_template_kwargs": {"date_string": DATE_STRING},
                "max_model_len": 131072,
                "tool_call_parser": "llama3_json (Llama 3.x), llama4_pythonic (Llama 4), auto tool choice on",
            },
            "corpus": corpus,
        },
        ensure_ascii=False,
        indent=1,
    )
    write_golden(OUT, header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
