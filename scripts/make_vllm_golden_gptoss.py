"""Write tests/golden/vllm_gptoss_prompt_tokens.json: prompt token counts of gpt-oss chat requests from vLLM 0.33
itself, which renders them with openai_harmony (oss-harmony), not with a chat template.

Run by hand, in the vLLM environment of ../shared/vllm-render/ (CI does not install vLLM):

    /tmp/vllm-venv/bin/python scripts/make_vllm_golden_gptoss.py [--vllm-render ../shared/vllm-render]

vLLM picks its harmony path from the model's config (`model_type: gpt_oss`), so each model is served from a local
dir holding a tiny gpt_oss config.json and a tokenizer.json converted here from the service's own
tokencounter/data/gpt-oss/o200k_base.tiktoken with the o200k_harmony special tokens at openai_harmony's ids. The
HF tokenizer is loaded by vLLM (its parsers are built with it) but the prompt ids come from openai_harmony alone
(OnlineRenderer._make_request_with_harmony -> harmony_utils.render_for_completion). The cases are generated here
from fixed seeds, never by tokencounter; vLLM's answer (status, prompt tokens) is stored with each request.
VLLM_SYSTEM_START_DATE pins the date vLLM renders (otherwise today's): the service renders today's date, and
the tests passing on any day is what shows the count does not depend on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_vllm_golden import (  # noqa: E402
    WEATHER,
    call,
    random_turns,
    register,
    serve_args,
    text,
    tool_shapes,
    user,
    write_golden,
)

OUT = ROOT / "tests" / "golden" / "vllm_gptoss_prompt_tokens.json"
DATA = ROOT / "tokencounter" / "data" / "gpt-oss"
VLLM_VERSION = "0.33.0"
START_DATE = "2025-08-05"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
MODELS = ("openai/gpt-oss-20b", "openai/gpt-oss-120b")
# How OpenAI's gpt-oss recipe for vLLM serves tool calling and reasoning.
SERVE_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser", "openai", "--reasoning-parser", "openai_gptoss"]
# gpt-oss-20b's config.json, shrunk: only model_type decides the render path.
CONFIG = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "num_local_experts": 2, "num_experts_per_tok": 1, "experts_per_token": 1, "vocab_size": 201088,
    "max_position_embeddings": 131072, "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"],
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                     "original_max_position_embeddings": 4096},
    "rope_theta": 150000, "rms_norm_eps": 1e-5, "eos_token_id": 200002, "pad_token_id": 199999,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False, "hidden_act": "silu", "swiglu_limit": 7.0,
}  # fmt: skip


def harmony_specials() -> dict[str, int]:
    """o200k_harmony's special tokens and their ids, as openai_harmony defines them."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    out = {}
    for token in encoding.special_tokens_set:
        (token_id,) = encoding.encode(token, allowed_special="all")
        out[token] = token_id
    return out


def write_model_dir(directory: Path) -> None:
    """config.json + tokenizer.json/tokenizer_config.json converted from the service's o200k_base ranks."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=1))
    if (directory / "tokenizer.json").exists():
        return
    ranks = DATA / "o200k_base.tiktoken"
    assert hashlib.sha256(ranks.read_bytes()).hexdigest() == O200K_SHA256
    specials = harmony_specials()
    ordered = sorted(specials, key=specials.__getitem__)
    pattern = "|".join(
        [
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
    )
    # The ranks end at 199997; the specials start at 199998, contiguous to 201087.
    assert ordered and specials[ordered[0]] == 199998 and specials[ordered[-1]] == 199998 + len(ordered) - 1
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=pattern, extra_special_tokens=ordered).converted()
    for token, token_id in specials.items():
        assert backend.token_to_id(token) == token_id, token
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    hf.save_pretrained(str(directory))


def cases() -> list[dict]:
    """Chat requests for gpt-oss: every shape vLLM's harmony path treats differently, and what it refuses."""
    rng = random.Random(20261210)
    out: list[dict] = []

    def add(cls: str, request: dict) -> None:
        out.append({"class": cls, "request": json.loads(json.dumps(request))})

    def assistant(content=None, **extra) -> dict:
        return {"role": "assistant", "content": content, **extra}

    def tool(content, tool_call_id="call_1") -> dict:
        return {"role": "tool", "tool_call_id": tool_call_id, "content": content}

    # plain conversations
    add("plain", {"messages": [user("hi")]})
    add("plain", {"messages": [user("What is the capital of France?")]})
    add("plain", {"messages": [user(text(rng, 12))]})
    add("plain", {"messages": [user("  padded \n\n"), assistant("  "), user("\r\nx\t")]})
    add("plain", {"messages": [user("")]})
    add("plain", {"messages": [user(None)]})
    add("plain", {"messages": [user("named", name="alice")]})
    add("plain", {"messages": [user("x"), assistant("y", name="bot", weight=1)]})
    add("special_text", {"messages": [user("text with <|start|> and <|end|> and <|return|> inside")]})
    add("special_text", {"messages": [user("<|channel|>final<|message|>hi<|call|>")]})
    add("special_text", {"messages": [{"role": "system", "content": "sys <|end|> text"}, user("x <|endoftext|>")]})
    add("unicode", {"messages": [user("東京 🦙 naïve café e\u0301 ½ ≠ ∞ данные")]})
    add("long_content", {"messages": [user(text(random.Random(7), 3000))]})
    add("whitespace", {"messages": [user(" " * 300 + "x" + "\n" * 50 + "\t" * 20)]})
    for _ in range(6):
        add("multi_turn", {"messages": random_turns(rng)})
    add("multi_turn", {"messages": [user("a"), assistant("b"), user("c"), assistant("d"), user("e")]})
    add("assistant_last", {"messages": [user("a"), assistant("partial answer")]})
    add("assistant_last", {"messages": [user("a"), assistant("The answer is")], "add_generation_prompt": False,
                           "continue_final_message": True})  # fmt: skip
    add("assistant_empty", {"messages": [user("a"), assistant(""), user("b")]})
    add("assistant_empty", {"messages": [user("a"), assistant(None), user("b")]})
    # system and developer messages
    add("system", {"messages": [{"role": "system", "content": "Be brief."}, user(text(rng, 8))]})
    add("system", {"messages": [{"role": "system", "content": ""}, user("x")]})
    add("system", {"messages": [{"role": "system", "content": "   "}, user("x")]})
    add("developer", {"messages": [{"role": "developer", "content": "Answer in French."}, user("hello")]})
    add("system_developer", {"messages": [{"role": "system", "content": "S"}, {"role": "developer", "content": "D"},
                                          user("u")]})  # fmt: skip
    add("system_developer", {"messages": [{"role": "developer", "content": "D"}, {"role": "system", "content": "S"},
                                          user("u")]})  # fmt: skip
    add("system_late", {"messages": [user("a"), assistant("b"), {"role": "system", "content": "S"}, user("c")]})
    add("system_late", {"messages": [user("a"), {"role": "developer", "content": "late dev"}, user("c")]})
    add("two_systems", {"messages": [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
                                     user("u")]})  # fmt: skip
    two_parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": " two"}]
    add("system_parts", {"messages": [{"role": "system", "content": two_parts}, user("u")]})
    add("system_billing", {"messages": [{"role": "system", "content": "x-anthropic-billing-header: a=1\nReal rules."},
                                        user("u")]})  # fmt: skip
    # reasoning effort
    for effort in ("low", "medium", "high"):
        add(f"reasoning_effort:{effort}", {"messages": [user("think about it")], "reasoning_effort": effort})
        add(
            f"reasoning_effort:{effort}",
            {"messages": [{"role": "system", "content": "S"}, user("q")], "reasoning_effort": effort,
             "tools": [WEATHER]},
        )  # fmt: skip
    add("refused:reasoning_effort_none", {"messages": [user("x")], "reasoning_effort": "none"})
    add("refused:reasoning_effort_bad", {"messages": [user("x")], "reasoning_effort": "extreme"})
    add("reasoning_effort:null", {"messages": [user("x")], "reasoning_effort": None})
    add("flags", {"messages": [user("x")], "chat_template_kwargs": {"reasoning_effort": "high", "x": 1}})
    add("flags", {"messages": [user("x")], "add_special_tokens": True})
    add("flags", {"messages": [user("x")], "add_generation_prompt": False})
    # tools
    for name, tools in tool_shapes().items():
        add(f"tools:{name}", {"messages": [user("weather in Paris?")], "tools": tools})
    add("tools:with_system", {"messages": [{"role": "system", "content": "Use tools."}, user("x")],
                              "tools": [WEATHER]})  # fmt: skip
    add("tools:empty_list", {"messages": [user("x")], "tools": []})
    add("tools:choice_none", {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "none"})
    add("tools:choice_required", {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "required"})
    add("tools:choice_named", {"messages": [user("x")], "tools": [WEATHER],
                               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})  # fmt: skip
    rich = {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the docs.\nReturns hits.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what to look for"},
                    "limit": {"type": "integer", "default": 10, "minimum": 1},
                    "kind": {"type": "string", "enum": ["a", "b", "c"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "exact": {"type": "boolean"},
                    "score": {"type": "number"},
                    "filter": {"type": ["string", "null"]},
                    "range": {"type": "object", "properties": {"from": {"type": "string"}}},
                    "mode": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "required": ["query"],
            },
        },
    }
    add("tools:rich_schema", {"messages": [user("find it")], "tools": [rich, WEATHER]})
    # tool calls in the history, and their results
    exchange = [user("weather in Paris?"), assistant(None, tool_calls=[call()])]
    add("tool_results", {"messages": exchange + [tool("18C")], "tools": [WEATHER]})
    add("tool_results:no_tools", {"messages": exchange + [tool("18C")]})
    add(
        "tool_results:then_answer",
        {"messages": exchange + [tool('{"t": 18}'), assistant("It is 18C."), user("thanks")], "tools": [WEATHER]},
    )
    add(
        "tool_results:parallel",
        {
            "messages": [
                user("weather in Paris and Rome?"),
                assistant(None, tool_calls=[call(id="a1"), call(id="b2", arguments='{"city": "Rome"}')]),
                tool("18C", "a1"),
                tool("20C", "b2"),
            ],
            "tools": [WEATHER],
        },
    )
    add("tool_calls:with_content", {"messages": [user("w?"), assistant("Let me check.", tool_calls=[call()]),
                                                 tool("18C")], "tools": [WEATHER]})  # fmt: skip
    add("tool_calls:with_reasoning", {"messages": [user("w?"), assistant(None, reasoning="Need weather.",
                                                                         tool_calls=[call()]), tool("18C")],
                                      "tools": [WEATHER]})  # fmt: skip
    add("tool_calls:content_and_reasoning", {"messages": [user("w?"), assistant("Checking.", reasoning="Use tool.",
                                                                                tool_calls=[call()]), tool("18C")],
                                             "tools": [WEATHER]})  # fmt: skip
    add("tool_calls:args_invalid_json", {"messages": [user("w?"), assistant(None, tool_calls=[call(arguments="{bad")]),
                                                      tool("x")]})  # fmt: skip
    add("tool_calls:args_empty", {"messages": [user("w?"), assistant(None, tool_calls=[call(arguments="")]),
                                               tool("x")]})  # fmt: skip
    add("tool_calls:args_spaced", {"messages": [user("w?"), assistant(None, tool_calls=[call(
        arguments='{ "city" : "Paris" ,\n "unit": "c" }')]), tool("x")]})  # fmt: skip
    add("tool_calls:empty_list", {"messages": [user("w?"), assistant("plain", tool_calls=[]), user("ok")]})
    add("tool_results:unknown_id", {"messages": exchange + [tool("18C", "call_zzz")]})
    add("tool_results:parts", {"messages": exchange + [{"role": "tool", "tool_call_id": "call_1", "content": [
        {"type": "text", "text": "18"}, {"type": "text", "text": "C"}]}]})  # fmt: skip
    add("tool_results:empty", {"messages": exchange + [tool("")]})
    add("tool_results:unicode_name", {"messages": [user("w?"), assistant(None, tool_calls=[call(name="météo")]),
                                                   tool("天気")], "tools": [tool_shapes()["three"][2]]})  # fmt: skip
    add("refused:tool_call_no_id", {"messages": [user("w?"), assistant(None, tool_calls=[
        {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]), tool("x")]})  # fmt: skip
    # reasoning in the history
    add("reasoning", {"messages": [user("q"), assistant("A.", reasoning="thinking..."), user("q2")]})
    add(
        "reasoning:multi",
        {
            "messages": [
                user("q1"),
                assistant("A1.", reasoning="r1"),
                user("q2"),
                assistant("A2.", reasoning="r2"),
                user("q3"),
            ]
        },
    )
    add("reasoning:only", {"messages": [user("q"), assistant(None, reasoning="just thoughts"), user("go on")]})
    add("reasoning:last", {"messages": [user("q"), assistant("", reasoning="thinking so far")]})
    add("reasoning:content_field", {"messages": [user("q"), assistant("A.", reasoning_content="old field"), user("x")]})
    add(
        "reasoning:after_tools",
        {
            "messages": [
                user("w?"),
                assistant(None, reasoning="call tool", tool_calls=[call()]),
                tool("18C"),
                assistant("18C.", reasoning="answer now"),
                user("and tomorrow?"),
            ],
            "tools": [WEATHER],
        },
    )
    # content parts
    add("parts", {"messages": [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]})
    add("parts", {"messages": [user([{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                     {"type": "text", "text": "b"}])]})  # fmt: skip
    add("parts", {"messages": [user([]), assistant([{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]),
                               user("z")]})  # fmt: skip
    add("parts", {"messages": [user([{"type": "text", "text": "with extra", "cache_control": {"type": "x"}}])]})
    add("parts", {"messages": [user(["bare string part", {"type": "text", "text": " and typed"}])]})
    add("parts:assistant_first_empty", {"messages": [user("a"), assistant([{"type": "text", "text": ""},
                                                                           {"type": "text", "text": "b"}]),
                                                     user("c")]})  # fmt: skip
    # roles
    add("roles:unknown", {"messages": [{"role": "narrator", "content": "Once"}, user("a")]})
    add("roles:tool_first", {"messages": [tool("orphan"), user("a")]})
    # random mixes
    for _ in range(8):
        turns = random_turns(rng)
        if rng.random() < 0.5:
            turns[0]["role"] = "developer"
        request: dict = {"messages": turns}
        if rng.random() < 0.5:
            request["reasoning_effort"] = rng.choice(["low", "medium", "high"])
        if rng.random() < 0.5:
            request["tools"] = rng.sample(list(tool_shapes().values()), 1)[0]
        add("random", request)
    return out


def gptoss_oracle(vllm_render: Path):
    """VLLMOracle serving gpt-oss model dirs (tiny gpt_oss config + converted tokenizer) with the gpt-oss recipe's
    parsers, and the harmony date pinned."""
    import vllm_prompt_tokens

    os.environ["VLLM_SYSTEM_START_DATE"] = START_DATE

    class GptOssOracle(vllm_prompt_tokens.VLLMOracle):
        def _args(self, template: str):
            directory = self.work / "gpt-oss" / template.split("/")[-1]
            write_model_dir(directory)
            return serve_args([str(directory), "--served-model-name", template, *SERVE_FLAGS])

    register(MODELS)
    return GptOssOracle(ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-render", type=Path, default=ROOT.parent / "shared" / "vllm-render")
    parser.add_argument("--text", action="store_true", help="print each rendered prompt (for reading, not stored)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.vllm_render))
    from importlib.metadata import version

    import openai_harmony  # noqa: F401
    import vllm

    assert vllm.__version__.startswith(VLLM_VERSION), vllm.__version__
    oracle = gptoss_oracle(args.vllm_render)
    rows = []
    for case in cases():
        said = {}
        for model in MODELS:
            try:
                status, payload = oracle.render(model, case["request"])
            except Exception as exc:  # noqa: BLE001 - what escapes the app, uvicorn answers with a 500
                status, payload = 500, {"exception": type(exc).__name__}
            ok = status == 200 and isinstance(payload, dict) and "token_ids" in payload
            said[model] = {"status": status, "prompt_tokens": len(payload["token_ids"]) if ok else None}
            if args.text and ok and model == MODELS[0]:
                print(case["class"], repr(oracle.detokenize(model, payload["token_ids"])))
            elif args.text and not ok and model == MODELS[0]:
                print(case["class"], status, json.dumps(payload)[:300])
        rows.append({**case, "vllm": said})
    header = json.dumps(
        {
            "vllm": vllm.__version__,
            "oss_harmony": version("oss-harmony"),
            "made_by": "scripts/make_vllm_golden_gptoss.py with ../shared/vllm-render/vllm_prompt_tokens.py",
            "server": {
                "flags": SERVE_FLAGS,
                "env": {"VLLM_SYSTEM_START_DATE": START_DATE},
                "models": list(MODELS),
            },
        },
        ensure_ascii=False,
        indent=1,
    )
    write_golden(OUT, header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
