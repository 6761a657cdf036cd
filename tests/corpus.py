"""The test corpus: real-shaped OpenAI-compatible requests and responses, built deterministically.

Expected counts for every case live in tests/golden/counts.json, written by scripts/make_golden.py from
Meta's reference tokenizer (never from tokencounter). Each case: request (dict), response (dict, SSE text
or None), and the oracle's view of it.
"""

from __future__ import annotations

import hashlib
import json
import random

WORDS = (
    "the model server counts tokens for every request that passes through the gateway and the platform team "
    "wants exact numbers per subscription product and api so that budgets hold under load while streaming "
    "answers arrive chunk by chunk"
).split()
UNICODE = "Grüße aus Köln — naïve café, 東京で会いましょう, 안녕하세요, مرحبا بالعالم, שלום, 🦙🚀👩‍💻, e\u0301, ½ ≠ ∞"


def prose(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 18))).capitalize() + "."
        if rng.random() < 0.15:
            sentence += "\n\n"
        if rng.random() < 0.1:
            sentence += f" {rng.randint(0, 10**6)} items, {rng.random():.3f} ratio."
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)[:n_chars]


def chat_response(*choices: tuple[str, str], usage: dict | None = None, tool_calls=None) -> dict:
    body = {
        "id": "chatcmpl-0",
        "object": "chat.completion",
        "created": 1730000000,
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ],
    }
    if tool_calls is not None:
        body["choices"][0]["message"].update(content=None, tool_calls=tool_calls)
    if usage:
        body["usage"] = usage
    return body


def sse(
    chunks: list[dict], *, crlf: bool = False, keepalive: bool = False, usage: dict | None = None, ascii: bool = False
) -> str:
    """A server-sent event stream as vLLM writes it (optionally with CRLF line ends and keep-alive comments)."""
    nl = "\r\n" if crlf else "\n"
    events = []
    for i, chunk in enumerate(chunks):
        if keepalive and i % 3 == 0:
            events.append(": keep-alive" + nl + nl)
        events.append("data: " + json.dumps(chunk, ensure_ascii=ascii) + nl + nl)
    if usage:
        events.append(
            "data: "
            + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage})
            + nl
            + nl
        )
    events.append("data: [DONE]" + nl + nl)
    return "".join(events)


def delta_chunks(pieces: list[str], finish: str, index: int = 0) -> list[dict]:
    def chunk(delta, reason=None):
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1730000000,
            "model": "llama",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }

    return [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces] + [chunk({}, finish)]


def split_every(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def _cases() -> dict[str, dict]:
    answer = "The capital of France is Paris. It has been the capital since 987 AD."
    long_prompt = prose(100_000, seed=1)
    long_answer = prose(20_000, seed=2)
    history = [{"role": "system", "content": "You are a concise assistant."}]
    for turn in range(5):
        history.append({"role": "user", "content": prose(300, seed=10 + turn)})
        history.append({"role": "assistant", "content": prose(200, seed=20 + turn)})
    history.append({"role": "user", "content": "And finally, summarise all of it in one line."})
    emoji_answer = "Sure 🦙! Voilà: 東京 — “quoted” text…"
    cases = {
        "simple": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
            "response": chat_response((answer, "stop")),
        },
        "system_user": {
            "request": {
                "model": "meta-llama/Meta-Llama-3-8B-Instruct",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Write a haiku about tokens."},
                ],
            },
            "response": chat_response(("Counting every word\nthe meter hums in silence\nbudgets hold at dawn", "stop")),
        },
        "multi_turn": {
            "request": {"model": "Llama-3-8B", "messages": history},
            "response": chat_response(("Everything is counted, exactly.", "stop")),
        },
        "unicode": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {"role": "system", "content": "Réponds en français. 日本語も大丈夫です。"},
                    {"role": "user", "content": UNICODE},
                ],
            },
            "response": chat_response((emoji_answer, "stop")),
        },
        "trimming": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {"role": "system", "content": "  \n\t padded system prompt \n\n  "},
                    {"role": "user", "content": "\u3000\u00a0 unicode spaces around \u2003\r\n"},
                    {"role": "assistant", "content": "   "},
                    {"role": "user", "content": "\n\nlines\r\nwith CRLF\r\n\r\nand\ttabs\n\n"},
                ],
            },
            "response": chat_response(("  leading and trailing spaces are generated tokens too  ", "stop")),
        },
        "long_100kb": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {"role": "system", "content": "Summarise the document."},
                    {"role": "user", "content": long_prompt},
                ],
            },
            "response": chat_response((long_answer, "length")),
        },
        "content_parts": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "First part."},
                            {"type": "text", "text": "  Second part, padded.  "},
                            {"type": "text", "text": "Third 🦙 part."},
                        ],
                    },
                ],
            },
            "response": chat_response(("Three parts received.", "stop")),
        },
        "n_choices": {
            "request": {
                "model": "Llama-3-8B",
                "n": 3,
                "messages": [{"role": "user", "content": "Give me a random word."}],
            },
            "response": chat_response(("Serendipity", "stop"), ("Llama", "length"), ("Quokka!", "stop")),
        },
        "finish_length": {
            "request": {
                "model": "Llama-3-8B",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "Tell me a long story."}],
            },
            "response": chat_response(("Once upon a time, in a data centre far away, a tokenizer", "length")),
        },
        "special_token_text": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {
                        "role": "user",
                        "content": "Explain what <|eot_id|> and <|begin_of_text|> mean; also <|not_special|> "
                        "and <|reserved_special_token_7|>.",
                    }
                ],
            },
            "response": chat_response(
                ("The token <|eot_id|> ends a turn; <|start_header_id|> opens a header.", "stop")
            ),
        },
        "prompt_only": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [{"role": "user", "content": "Count only my prompt, please."}],
            },
            "response": None,
        },
        "empty_content": {
            "request": {"model": "Llama-3-8B", "messages": [{"role": "user", "content": ""}]},
            "response": chat_response(("", "stop")),
        },
        "developer_role": {
            "request": {
                "model": "Llama-3-8B",
                "messages": [
                    {"role": "developer", "content": "Answer in JSON."},
                    {"role": "user", "content": "Name two colours."},
                ],
            },
            "response": chat_response(('{"colours": ["red", "blue"]}', "stop")),
        },
        # Llama 3.1 / 3.2 / 3.3: the knowledge-date system header, tools, the ipython role.
        "llama31_plain": {
            "request": {
                "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
            "response": chat_response((answer, "stop")),
        },
        "llama31_system": {
            "request": {
                "model": "llama3.1:8b",
                "messages": [
                    {"role": "system", "content": "You are a pirate."},
                    {"role": "user", "content": "Say hello."},
                ],
            },
            "response": chat_response(("Ahoy, matey!", "stop")),
        },
        "llama32_plain": {
            "request": {
                "model": "meta-llama/Llama-3.2-3B-Instruct",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": UNICODE}],
            },
            "response": chat_response(("Multilingual greetings, received.", "stop")),
        },
        "llama33_multi": {
            "request": {"model": "Llama-3.3-70B-Instruct", "messages": history},
            "response": chat_response(("All summarised.", "stop")),
        },
        "llama31_tools_request": {
            "request": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "tools": [WEATHER_TOOL],
                "tool_choice": "auto",
                "messages": [
                    {"role": "system", "content": "You can call tools."},
                    {"role": "user", "content": "What's the weather in Paris?"},
                ],
            },
            "response": chat_response(
                ("", "tool_calls"),
                tool_calls=[
                    {
                        "id": "chatcmpl-tool-1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            ),
        },
        "llama31_tool_turns": {
            "request": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "tools": [WEATHER_TOOL],
                "messages": [
                    {"role": "user", "content": "What's the weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city": "Paris", "unit": "celsius"}',
                                },
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
                ],
            },
            "response": chat_response(("It is 21 °C and clear in Paris.", "stop")),
        },
        "llama32_ipython": {
            "request": {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "Run it."}, {"role": "ipython", "content": '{"output": 42}'}],
            },
            "response": chat_response(("The result is 42.", "stop")),
        },
        "llama4_plain": {
            "request": {
                "model": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
            "response": chat_response((answer, "stop")),
        },
        "llama4_multi_turn": {
            "request": {"model": "Llama-4-Maverick-17B-128E-Instruct-FP8", "messages": history},
            "response": chat_response((emoji_answer, "stop"), ("Cut short", "length")),
        },
        "llama4_parts_unicode": {
            "request": {
                "model": "llama4:scout",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "  Be brief.  "}]},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": UNICODE}, {"type": "text", "text": " and more"}],
                    },
                ],
            },
            "response": chat_response(("Received.", "stop")),
        },
        "llama4_tools": {
            "request": {
                "model": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                "tools": [WEATHER_TOOL],
                "messages": [
                    {"role": "system", "content": "You can call tools."},
                    {"role": "user", "content": "What's the weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
                ],
            },
            "response": chat_response(("21 °C in Paris.", "stop")),
        },
        "llama4_user_only": {
            "request": {
                "model": "Llama-4-Scout",
                "messages": [
                    {"role": "user", "content": "  untrimmed user text  "},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "again"},
                ],
            },
            "response": chat_response(("Done.", "stop")),
        },
        "refusal": {
            "request": {"model": "Llama-3-8B", "messages": [{"role": "user", "content": "Do a bad thing."}]},
            "response": {
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                    }
                ]
            },
        },
        # Streaming (SSE), several chunking patterns.
        "stream_words": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "messages": [{"role": "user", "content": "Stream me an answer."}],
            },
            "response": sse(delta_chunks(answer.split(" ")[:1] + [" " + w for w in answer.split(" ")[1:]], "stop")),
        },
        "stream_chars_crlf_keepalive": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "messages": [{"role": "user", "content": "Stream unicode."}],
            },
            "response": sse(delta_chunks(list(emoji_answer), "stop"), crlf=True, keepalive=True),
        },
        "stream_long_2000_chunks": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "messages": [{"role": "user", "content": "Write a lot."}],
            },
            "response": sse(delta_chunks(split_every(prose(8_000, seed=3), 4), "length")),
        },
        "stream_split_surrogates": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "messages": [{"role": "user", "content": "Emoji please."}],
            },
            # Some servers escape astral characters as UTF-16 pairs and split a pair across two chunks.
            "response": sse(
                delta_chunks(["Llama ", "\ud83e", "\udd99", " and rocket ", "\ud83d", "\ude80", "!"], "stop"),
                ascii=True,
            ),
        },
        "stream_n2": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "n": 2,
                "messages": [{"role": "user", "content": "Two answers."}],
            },
            "response": sse(delta_chunks(["First", " answer."], "stop", 0) + delta_chunks(["Second"], "length", 1)),
        },
        "stream_tool_call": {
            "request": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "stream": True,
                "tools": [WEATHER_TOOL],
                "messages": [{"role": "user", "content": "Weather in Tokyo, in celsius?"}],
            },
            "response": sse(
                [
                    {
                        "id": "t",
                        "object": "chat.completion.chunk",
                        "choices": [
                            {
                                "index": 0,
                                "delta": {
                                    "role": "assistant",
                                    "tool_calls": [
                                        {
                                            "index": 0,
                                            "id": "chatcmpl-tool-9",
                                            "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""},
                                        }
                                    ],
                                },
                                "finish_reason": None,
                            }
                        ],
                    },
                    *[
                        {
                            "id": "t",
                            "object": "chat.completion.chunk",
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                                    "finish_reason": None,
                                }
                            ],
                        }
                        for piece in ['{"city": ', '"Tokyo", ', '"unit": "cel', 'sius"}']
                    ],
                    {
                        "id": "t",
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
                    },
                ]
            ),
        },
        "stream_completions": {
            "request": {"model": "Llama-3-8B", "prompt": "Count to five:", "stream": True},
            "response": sse(
                [
                    {
                        "id": "c",
                        "object": "text_completion",
                        "choices": [{"index": 0, "text": piece, "finish_reason": reason}],
                    }
                    for piece, reason in [(" 1,", None), (" 2, 3,", None), (" 4, 5.", "stop")]
                ]
            ),
        },
        "stream_with_usage": {
            "request": {
                "model": "Llama-3-8B",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Stream with usage."}],
            },
            "response": sse(
                delta_chunks(["Usage", " arrives", " last."], "stop"),
                usage={"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19},
            ),
        },
        "upstream_usage": {
            "request": {"model": "Llama-3-8B", "messages": [{"role": "user", "content": "Hi"}]},
            "response": chat_response(
                ("Hello!", "stop"), usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            ),
        },
        # Legacy completions and embeddings: no chat template; vLLM adds BOS.
        "completions_string": {
            "request": {"model": "Llama-3-8B", "prompt": "Once upon a time", "max_tokens": 8},
            "response": {
                "object": "text_completion",
                "choices": [{"index": 0, "text": ", there was a tokenizer that", "finish_reason": "length"}],
            },
        },
        "completions_list": {
            "request": {"model": "Llama-3-8B", "prompt": ["First prompt.", "Second <|eot_id|> one."]},
            "response": {
                "choices": [
                    {"index": 0, "text": " Done.", "finish_reason": "stop"},
                    {"index": 1, "text": " Also done.", "finish_reason": "stop"},
                ]
            },
        },
        "embeddings": {"request": {"model": "Llama-3-8B", "input": ["embed this", UNICODE]}, "response": None},
    }
    return cases


CASES = _cases()


def envelope(case: dict, *, as_objects: bool = False) -> dict:
    """The JSON that APIM's send-request posts for a case: bodies as strings (or, if asked, as objects)."""
    request, response = case["request"], case["response"]
    out = {"RequestBody": request if as_objects else json.dumps(request, ensure_ascii=False)}
    if response is not None:
        out["ResponseBody"] = response if as_objects or isinstance(response, str) else json.dumps(response)
    return out


def template_of(request: dict) -> str:
    """The embedded template a request's model names (the service's mapping, written out independently)."""
    name = request.get("model", "").lower().replace("_", ".")
    if "llama-4" in name or "llama4" in name:
        return "llama-4"
    for version in ("3.3", "3.2", "3.1"):
        if f"llama-{version}" in name or f"llama{version}" in name or f"llama-3-{version[-1]}" in name:
            return f"llama-{version}"
    return "llama-3"


def case_sha(case: dict) -> str:
    """Identifies the exact case a golden entry was computed from."""
    return hashlib.sha256(json.dumps(case, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
