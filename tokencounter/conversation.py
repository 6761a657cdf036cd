"""What vLLM hands a chat template: its request preprocessing, rule for rule, so the counts are the ones it reports.

Followed: vLLM 0.33 `renderers/chat_utils/chat_message.py` (parse_chat_message_content, the billing-header
strip, _postprocess_messages), `renderers/hf.py` (developer role, system consolidation,
resolve_chat_template_kwargs), `renderers/params.py` (merge_kwargs), the chat request's `build_chat_params` and
its tool models (`FunctionDefinition`, `ChatCompletionToolsParam`). tests/test_vllm_golden.py holds the service
to what vLLM itself answered.

Two steps: `parse_messages` / `dump_tools` / `request_kwargs` when the request is read (nothing there depends
on the model), `for_template` / `template_kwargs` once the model's template is known.
"""

from __future__ import annotations

from . import jsonio
from .errors import InvalidField, InvalidJSON, InvalidRole, UnsupportedContent
from .jsonio import expect, type_name
from .templates import APPLY_PARAMS, ChatTemplate

VLLM_VERSION = "0.33"
# Part types vLLM reads as text, and the field each holds its text in.
TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal", "thinking": "thinking"}
# Part types we know and refuse to guess at: naming them tells the caller exactly what was not counted.
MEDIA_PARTS = frozenset(
    {
        "image_url",
        "image",
        "input_image",
        "image_pil",
        "image_embeds",
        "input_audio",
        "audio",
        "audio_url",
        "audio_embeds",
        "video",
        "video_url",
        "video_embeds",
        "prompt_embeds",
        "file",
        "tool_reference",
    }
)
# The content-part fields vLLM's part types declare; any other field of a text part is kept for "openai"
# format templates (chat_message._collect_extra_fields).
KNOWN_PART_FIELDS = frozenset(
    {
        "audio_embeds",
        "audio_url",
        "closed",
        "data",
        "file",
        "image_embeds",
        "image_pil",
        "image_url",
        "input_audio",
        "name",
        "prompt_cache_breakpoint",
        "refusal",
        "text",
        "thinking",
        "type",
        "uuid",
        "video_embeds",
        "video_url",
    }
)
# Claude Code's attribution line, which vLLM strips from system text (it changes on every request).
BILLING_HEADER = "x-anthropic-billing-header"
# Values merge_kwargs treats as "not set".
UNSET = (None, "auto")
# pydantic's lax booleans (vLLM's request models accept them for strict / defer_loading).
_BOOLS = {
    **dict.fromkeys((True, 1, "true", "t", "yes", "y", "on", "1"), True),
    **dict.fromkeys((False, 0, "false", "f", "no", "n", "off", "0"), False),
}


# --- the request, as vLLM parses it --------------------------------------------------------------------------


def parse_messages(messages: list, where: str, max_depth: int) -> list[dict]:
    """The conversation as vLLM parses it, before the template is known: content as sent when it is a string,
    else as text parts (extra fields kept), converted once for the template by `for_template`; the billing line
    stripped from system text, tool calls with their arguments as objects."""
    return [_message(m, f"{where}[{i}]", max_depth) for i, m in enumerate(messages)]


def _message(message, where: str, max_depth: int) -> dict:
    if type(message) is dict and len(message) == 2:  # the usual {"role": ..., "content": "..."}: its result at once
        role, content = message.get("role"), message.get("content")
        if type(role) is str and type(content) is str and role != "developer":
            if role != "system" or not content.startswith(BILLING_HEADER):
                return {"role": role, "content": content}
    expect(message, dict, where, "an object with role and content")
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidRole(f"{where}.role must be a string (user, assistant, system, tool, ...); got {type_name(role)}")
    content = message.get("content")
    if not isinstance(content, str) or role == "system" and content.startswith(BILLING_HEADER):
        content = _parts(content, f"{where}.content")
        if role == "system":
            content = _strip_billing_header(content)
    # vLLM builds a new message: only these fields reach the template.
    out: dict = {"role": role, "content": content}
    if role == "assistant":
        if message.get("tool_calls") is not None:
            calls = _tool_calls(message["tool_calls"], f"{where}.tool_calls", max_depth)
            if calls:  # an empty list is dropped: the template takes its plain assistant path
                out["tool_calls"] = calls
        if message.get("reasoning") is not None:
            out["reasoning"] = out["reasoning_content"] = message["reasoning"]
    elif role == "tool" and "tool_call_id" in message:
        out["tool_call_id"] = message["tool_call_id"]
    for key in ("name", "task"):
        if isinstance(message.get(key), str):
            out[key] = message[key]
    if role == "developer":
        out["tools"] = message.get("tools")
    return out


def _parts(content, where: str) -> list[dict]:
    """Content as vLLM's text parts: {"type": "text", "text": ...} plus the part's unknown fields."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidField(f"{where} must be a string or an array of content parts, got {type_name(content)}")
    out = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        if isinstance(part, str):
            out.append({"type": "text", "text": part})
            continue
        expect(part, dict, here, 'a content part like {"type": "text", "text": "..."}')
        kind = part.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidField(f'{here}.type must be a string like "text", got {type_name(kind)}')
        if kind is None and "text" in part and not any(k in MEDIA_PARTS for k in part):
            kind = "text"  # vLLM refuses an untyped part; counting it as the text it holds is kinder
        if kind in TEXT_PARTS:
            text = expect(part.get(TEXT_PARTS[kind]), str, f"{here}.{TEXT_PARTS[kind]}", "a string")
            out.append({"type": "text", "text": text, **{k: v for k, v in part.items() if k not in KNOWN_PART_FIELDS}})
        elif kind in MEDIA_PARTS or kind is None and any(k in MEDIA_PARTS for k in part):
            raise UnsupportedContent(
                f"{here} is a {kind or 'media'!r} part: only text parts can be counted by a text tokenizer; "
                "count media with the model server's own usage"
            )
        elif kind is None:
            raise InvalidField(f'{here} has no type; send {{"type": "text", "text": "..."}}')
        else:
            raise UnsupportedContent(f"{here}.type is not a known text part type (expected 'text')")
    return out


def _strip_billing_header(parts: list[dict]) -> list[dict]:
    out = []
    for part in parts:
        text = part["text"]
        if not text.startswith(BILLING_HEADER):
            out.append(part)
        elif rest := text.partition("\n")[2]:
            out.append({**part, "text": rest})
    return out


def _tool_calls(calls, where: str, max_depth: int) -> list[dict]:
    expect(calls, list, where, "an array of tool calls")
    out = []
    for i, call in enumerate(calls):
        here = f"{where}[{i}]"
        expect(call, dict, here, "an object")
        function = call.get("function")
        if call.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidField(f'{here} must be {{"type": "function", "function": {{"name": ..., "arguments": ...}}}}')
        expect(function.get("name"), str, f"{here}.function.name", "a string")
        arguments = _arguments(function.get("arguments"), here, max_depth)
        out.append({**call, "function": {**function, "arguments": arguments}})
    return out


def _arguments(arguments, where: str, max_depth: int) -> dict:
    """Tool-call arguments as vLLM hands them to templates: an object, else {} (invalid JSON, null, a number, an
    array or a string all become {}, so a bad call in the history never fails the conversation)."""
    if not arguments:
        return {}
    if isinstance(arguments, str):
        try:
            # Parsed arguments obey the request's nesting limit.
            arguments = jsonio.loads(arguments, f"{where}.function.arguments", max_depth)
        except InvalidJSON:
            return {}
    return arguments if isinstance(arguments, dict) else {}


def dump_tools(tools, where: str) -> list[dict] | None:
    """Tools as vLLM's request models dump them: type, function {name, description, parameters, strict and
    defer_loading when set}, defer_loading when set; any other field dropped."""
    if tools is None:
        return None
    expect(tools, list, where, "an array of tools")
    return [_tool(t, f"{where}[{i}]") for i, t in enumerate(tools)]


def _tool(tool, where: str) -> dict:
    expect(tool, dict, where, 'an object like {"type": "function", "function": {...}}')
    if tool.get("type", "function") != "function":
        raise InvalidField(f'{where}.type must be "function"')
    function = expect(tool.get("function"), dict, f"{where}.function", "an object with name and parameters")
    dumped = {
        "name": expect(function.get("name"), str, f"{where}.function.name", "a string"),
        "description": _optional(function.get("description"), str, f"{where}.function.description", "a string"),
        "parameters": _optional(function.get("parameters"), dict, f"{where}.function.parameters", "an object"),
    }
    tool_defer = _flag(tool.get("defer_loading"), f"{where}.defer_loading")
    for key, value in (("strict", function.get("strict")), ("defer_loading", function.get("defer_loading"))):
        value = _flag(value, f"{where}.function.{key}")
        if key == "defer_loading" and value is None:
            value = tool_defer  # the tool's defer_loading carries over to its function
        if value is not None:
            dumped[key] = value
    out = {"type": "function", "function": dumped}
    if tool_defer is not None:
        out["defer_loading"] = tool_defer
    return out


def _optional(value, kind: type, where: str, what: str):
    return None if value is None else expect(value, kind, where, what)


def _flag(value, where: str) -> bool | None:
    if value is None:
        return None
    key = value.lower() if isinstance(value, str) else value
    if not isinstance(value, (bool, int, str)) or key not in _BOOLS:
        raise InvalidField(f"{where} must be a boolean, got {type_name(value)}")
    return _BOOLS[key]


def request_kwargs(
    chat_template_kwargs: dict | None,
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    documents,
    reasoning_effort,
) -> dict:
    """The template arguments a request asks for: its chat_template_kwargs under its own flags
    (ChatCompletionRequest.build_chat_params)."""
    flags = {
        "add_generation_prompt": add_generation_prompt,
        "continue_final_message": continue_final_message,
        "documents": documents,
        "reasoning_effort": reasoning_effort,
    }
    user = chat_template_kwargs or {}
    if reasoning_effort is not None and "enable_thinking" not in user:
        flags["enable_thinking"] = reasoning_effort != "none"
    return merge_kwargs(user, flags)


def merge_kwargs(defaults: dict | None, overrides: dict | None) -> dict:
    """vLLM's merge: an override that is None or "auto" leaves the default."""
    return (defaults or {}) | {k: v for k, v in (overrides or {}).items() if v not in UNSET}


# --- the conversation for one template ----------------------------------------------------------------------


def for_template(messages: list[dict], template: ChatTemplate) -> list[dict]:
    """The messages vLLM renders with a template: content joined into one string ("string" format) or kept as
    parts ("openai"); tool results always one string; developer turns become system turns, merged into one
    first system message, for templates that do not know the developer role."""
    out = [_formatted(m, template.content_format) for m in messages]
    if not template.knows_developer and any(m["role"] == "developer" for m in out):
        out = _consolidate_system([_as_system(m) if m["role"] == "developer" else m for m in out])
    return out


def _formatted(message: dict, content_format: str) -> dict:
    parts = message["content"]
    if type(parts) is str:  # as sent: what "string" templates and tool results take, else one text part
        plain = content_format == "string" or message["role"] == "tool"
        content = parts if plain else [{"type": "text", "text": parts}]
    elif content_format == "string":
        # vLLM drops empty text before joining.
        content = parts[0]["text"] if len(parts) == 1 else "\n".join(p["text"] for p in parts if p["text"])
    elif message["role"] == "tool":
        content = "\n".join(p["text"] for p in parts)
    else:
        content = [dict(p) for p in parts]
    return {**message, "content": content}


def _as_system(message: dict) -> dict:
    out = {**message, "role": "system"}
    out.pop("tools", None)
    return out


def _consolidate_system(messages: list[dict]) -> list[dict]:
    """All system messages merged into the first one, "\\n\\n" between them (when one is not first or not alone)."""
    texts, rest, needed = [], [], False
    for i, message in enumerate(messages):
        if message["role"] != "system":
            rest.append(message)
            continue
        needed = needed or i > 0 or bool(texts)
        content = message["content"]
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content)
        if content:
            texts.append(content)
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest] if needed else messages


def template_kwargs(server: dict, request: dict, template: ChatTemplate) -> dict:
    """The arguments vLLM renders a template with: the server's defaults under the request's, kept when the
    template reads them or apply_chat_template takes them (resolve_chat_template_kwargs)."""
    merged = merge_kwargs(server, request) if server else request
    return {k: v for k, v in merged.items() if k in template.variables or k in APPLY_PARAMS}
