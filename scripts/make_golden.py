"""Write tests/golden/counts.json: the expected counts for tests/corpus.py, from an independent oracle.

The oracle is Meta's reference Llama 3 tokenizer (tiktoken, `llama_models.llama3.tokenizer`) on the official
chat templates rendered with plain jinja2 (not transformers, not tokencounter), checked against Meta's own
`ChatFormat` wherever that applies. Nothing here imports tokencounter.
Run: `.venv/bin/python scripts/make_golden.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jinja2
from llama_models.datatypes import RawMessage
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer
from llama_models.llama4.tokenizer import Tokenizer as Tokenizer4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from corpus import CASES, case_sha, template_of  # noqa: E402

TEMPLATES = ROOT / "tokencounter" / "data" / "templates"
DATE = "26 Jul 2024"  # the tests pin TOKENCOUNTER_DATE_STRING to this
META = Tokenizer.get_instance()
META4 = Tokenizer4.get_instance()
EOS = {"llama-4": "<|eot|>"}


def meta_for(generation_name: str):
    return META4 if generation_name == "llama-4" else META


def plain_messages(messages: list[dict], parts: bool = False) -> list[dict]:
    """vLLM's view of OpenAI messages: null fields dropped, arguments parsed, and content as the template
    takes it: text parts joined by newlines (Llama 3), or every content but a tool result's a list of text parts
    (Llama 4's template loops over content parts)."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        # vLLM hands every template a tool result as one string.
        if parts and message["role"] != "tool" and isinstance(message.get("content"), str):
            message["content"] = [{"type": "text", "text": message["content"]}]
        elif (not parts or message["role"] == "tool") and isinstance(message.get("content"), list):
            message["content"] = "\n".join(p["text"] for p in message["content"])
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        out.append(message)
    return out


def vllm_tools(tools):
    if not tools:
        return None
    return [
        {
            "type": t["type"],
            "function": {
                "name": t["function"]["name"],
                "description": t["function"].get("description"),
                "parameters": t["function"].get("parameters"),
            },
        }
        for t in tools
    ]


def render(template: str, request: dict, generation_name: str) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)

    def raise_exception(message):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=plain_messages(json.loads(json.dumps(request["messages"])), parts=generation_name == "llama-4"),
        tools=vllm_tools(request.get("tools")),
        add_generation_prompt=True,
        bos_token="<|begin_of_text|>",
        eos_token=EOS.get(generation_name, "<|eot_id|>"),
        date_string=DATE,
    )


def llama4_layout_count(request: dict) -> int | None:
    """Llama 4's prompt layout as Meta's llama4 ChatFormat builds it (that module needs torch, so it is
    spelled out here with Meta's llama4 tokenizer), where it applies: no system message, no tools."""
    messages = plain_messages(json.loads(json.dumps(request["messages"])))
    if request.get("tools") or any(
        m["role"] not in ("user", "assistant") or "<|" in m.get("content", "") for m in messages
    ):
        return None
    special = META4.special_tokens
    tokens = [special["<|begin_of_text|>"]]
    for role, content in [(m["role"], m.get("content", "")) for m in messages] + [("assistant", None)]:
        tokens += [
            special["<|header_start|>"],
            *META4.encode(role, bos=False, eos=False),
            special["<|header_end|>"],
            *META4.encode("\n\n", bos=False, eos=False),
        ]
        if content is not None:
            tokens += META4.encode(content, bos=False, eos=False) + [special["<|eot|>"]]
    return len(tokens)


def chatformat_count(request: dict) -> int | None:
    """Meta's own ChatFormat, where it applies: the 3.0 layout, plain roles, no literal special tokens."""
    if template_of(request) == "llama-4":
        return llama4_layout_count(request)
    if template_of(request) != "llama-3" or request.get("tools"):
        return None
    messages = plain_messages(json.loads(json.dumps(request["messages"])))
    if any(m["role"] not in ("system", "user", "assistant") or "<|" in m.get("content", "") for m in messages):
        return None
    # Meta's ChatFormat does not trim content; the official HF template does.
    raw = [RawMessage(role=m["role"], content=m.get("content", "").strip()) for m in messages]
    return len(ChatFormat(META).encode_dialog_prompt(raw).tokens)


def plain(text: str, meta=META) -> int:
    return len(meta.encode(text, bos=False, eos=False)) if text else 0


def fix_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def choices_of(response) -> tuple[list[dict], dict | None]:
    """(choices as {text, finish, calls}, upstream usage) of a JSON response or an SSE stream."""
    if isinstance(response, dict):
        choices = []
        for c in response.get("choices", []):
            message = c.get("message")
            if message is None:
                choices.append({"text": c["text"], "finish": c["finish_reason"], "calls": []})
                continue
            calls = [(t["function"]["name"], t["function"]["arguments"]) for t in message.get("tool_calls") or []]
            text = (message.get("content") or "") + (message.get("refusal") or "")
            choices.append({"text": text, "finish": c["finish_reason"], "calls": calls})
        return choices, response.get("usage")
    texts, finish, calls, usage = {}, {}, {}, None
    for line in response.replace("\r\n", "\n").split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: ") :])
        usage = chunk.get("usage") or usage
        for c in chunk["choices"]:
            texts.setdefault(c["index"], "")
            if "delta" not in c:  # legacy completions stream text
                texts[c["index"]] += c["text"]
            texts[c["index"]] += c.get("delta", {}).get("content") or ""
            for call in c.get("delta", {}).get("tool_calls", []):
                name, args = calls.setdefault(c["index"], {}).get(call["index"], ("", ""))
                function = call.get("function", {})
                calls[c["index"]][call["index"]] = (
                    name + function.get("name", ""),
                    args + function.get("arguments", ""),
                )
            if c.get("finish_reason"):
                finish[c["index"]] = c["finish_reason"]
    return [
        {
            "text": fix_surrogates(texts[i]),
            "finish": finish.get(i),
            "calls": [calls[i][k] for k in sorted(calls.get(i, {}))],
        }
        for i in sorted(texts)
    ], usage


def expected(case: dict) -> dict:
    request, response = case["request"], case["response"]
    choices, usage = choices_of(response) if response is not None else ([], None)
    if usage:
        return {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "source": "upstream",
        }
    name = template_of(request)
    meta = meta_for(name)
    if "messages" in request:
        template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        prompt = len(meta.encode(render(template, request, name), bos=False, eos=False, allowed_special="all"))
    else:
        texts = request.get("prompt", request.get("input"))
        texts = [texts] if isinstance(texts, str) else texts
        prompt = sum(1 + len(meta.encode(t, bos=False, eos=False, allowed_special="all")) for t in texts)
    completion = 0
    for c in choices:
        completion += plain(c["text"], meta)
        if c["calls"]:
            completion += plain("; ".join(f'{{"name": "{n}", "parameters": {a}}}' for n, a in c["calls"]), meta)
        completion += 1 if c["finish"] in ("stop", "tool_calls") else 0
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "source": "counted"}
    check = chatformat_count(request) if "messages" in request else None
    if check is not None:
        out["chatformat_prompt_tokens"] = check
    return out


def main() -> int:
    golden = {name: {"case_sha256": case_sha(case), **expected(case)} for name, case in CASES.items()}
    path = ROOT / "tests" / "golden" / "counts.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(golden)} cases to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
