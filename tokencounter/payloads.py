"""Parse the APIM envelope and the OpenAI-compatible request inside it into what the counter needs.

Error messages name fields and types, never values: request content must not leak into errors or logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import jsonio
from .errors import InvalidField, InvalidJSON, InvalidRole, PayloadTooLarge, UnsupportedContent
from .responses import Completion, parse_response
from .settings import Settings

ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
TEXT_PART_TYPES = ("text", "input_text")
# Part types we know and refuse to guess at: naming them tells the caller exactly what was not counted.
MEDIA_PART_TYPES = (
    "image_url",
    "image",
    "input_image",
    "input_audio",
    "audio",
    "audio_url",
    "video",
    "video_url",
    "file",
)


@dataclass
class Prompt:
    """What the prompt is counted from: a chat conversation, completion prompts or embedding inputs."""

    kind: str  # "chat" | "completion" | "embedding"
    model: str | None
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    add_generation_prompt: bool = True
    # Completion prompts / embedding inputs: text, or token ids already counted by the client.
    texts: list[str | list[int]] = field(default_factory=list)


@dataclass
class CountRequest:
    prompt: Prompt
    completion: Completion | None


def type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _expect(value, kind: type | tuple, where: str, what: str):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidField(f"{where} must be {what}, got {type_name(value)}")
    return value


def parse_envelope(body: bytes, settings: Settings) -> CountRequest:
    """Parse the JSON envelope APIM posts: {"RequestBody": ..., "ResponseBody": ...}."""
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"body is {len(body)} bytes; the limit is {settings.max_body_bytes} (TOKENCOUNTER_MAX_BODY_BYTES)"
        )
    if not body.strip():
        raise InvalidField('body is empty; send {"RequestBody": "<chat request JSON>", "ResponseBody": "..."}')
    envelope = jsonio.loads(body, "body", settings.max_depth)
    _expect(envelope, dict, "body", 'a JSON object like {"RequestBody": ..., "ResponseBody": ...}')
    # Policies written by hand spell the keys requestBody / request_body too; the exact spelling wins.
    for key in list(envelope):
        canonical = {"requestbody": "RequestBody", "responsebody": "ResponseBody"}.get(key.lower().replace("_", ""))
        if canonical and canonical not in envelope:
            envelope[canonical] = envelope[key]
    if "RequestBody" not in envelope or envelope["RequestBody"] in (None, ""):
        raise InvalidField("RequestBody is required: the client's request body as a JSON string or object")
    request = _json_field(envelope["RequestBody"], "RequestBody", settings)
    prompt = parse_request(request, settings, check_unicode=jsonio.may_hold_surrogates(body))
    completion = None
    response = envelope.get("ResponseBody")
    if response not in (None, ""):
        if not isinstance(response, (str, dict)):
            raise InvalidField(f"ResponseBody must be a JSON string or object, got {type_name(response)}")
        completion = parse_response(response, settings)
    return CountRequest(prompt, completion)


def _json_field(value, where: str, settings: Settings) -> dict:
    if isinstance(value, str):
        value = jsonio.loads(value, where, settings.max_depth)
    return _expect(value, dict, where, "a JSON object (or a string holding one)")


def parse_request(request: dict, settings: Settings, check_unicode: bool = True) -> Prompt:
    if check_unicode:
        jsonio.check_unicode(request, "RequestBody")
    model = request.get("model")
    model = model if isinstance(model, str) and model else None
    if "messages" in request:
        return _chat(request, model, settings)
    if "prompt" in request:
        texts = _texts(request["prompt"], "RequestBody.prompt")
        return Prompt("completion", model, texts=texts)
    if "input" in request:
        return Prompt("embedding", model, texts=_texts(request["input"], "RequestBody.input"))
    raise InvalidField("RequestBody must have messages (chat completions), prompt (completions) or input (embeddings)")


def _chat(request: dict, model: str | None, settings: Settings) -> Prompt:
    messages = _expect(request["messages"], list, "RequestBody.messages", "an array of messages")
    if not messages:
        raise InvalidField("RequestBody.messages is empty; send at least one message")
    if len(messages) > settings.max_messages:
        raise PayloadTooLarge(
            f"RequestBody.messages has {len(messages)} messages; the limit is {settings.max_messages} "
            "(TOKENCOUNTER_MAX_MESSAGES)"
        )
    normalized = [_message(m, f"RequestBody.messages[{i}]", settings.max_depth) for i, m in enumerate(messages)]
    tools = request.get("tools")
    if tools is not None:
        _expect(tools, list, "RequestBody.tools", "an array of tools")
        tools = [_tool(t, f"RequestBody.tools[{i}]") for i, t in enumerate(tools)] or None
    add_generation_prompt = request.get("add_generation_prompt", True)
    _expect(add_generation_prompt, bool, "RequestBody.add_generation_prompt", "a boolean")
    return Prompt("chat", model, messages=normalized, tools=tools, add_generation_prompt=add_generation_prompt)


def _message(message, where: str, max_depth: int) -> dict:
    _expect(message, dict, where, "an object with role and content")
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidRole(f"{where}.role must be a string, one of {', '.join(ROLES)}; got {type_name(role)}")
    if role not in ROLES:
        raise InvalidRole(f"{where}.role is not one of {', '.join(ROLES)}")
    # As transformers does before rendering: a key whose value is null is dropped (content: null with tool_calls).
    out = {k: v for k, v in message.items() if v is not None}
    if "content" in out:
        out["content"] = message_content(out["content"], f"{where}.content")
    if "tool_calls" in out:
        out["tool_calls"] = _tool_calls(out["tool_calls"], f"{where}.tool_calls", max_depth)
    return out


def message_content(content, where: str) -> str | list[dict]:
    """A message's content: a string, or its text parts (joined or kept per template: templates.prepare_messages)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(f"{where} must be a string or an array of content parts, got {type_name(content)}")
    texts = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        _expect(part, dict, here, 'a content part like {"type": "text", "text": "..."}')
        kind = part.get("type")
        if kind in TEXT_PART_TYPES or (kind is None and "text" in part):
            texts.append(_expect(part.get("text"), str, f"{here}.text", "a string"))
        elif kind == "refusal":
            texts.append(_expect(part.get("refusal"), str, f"{here}.refusal", "a string"))
        elif kind in MEDIA_PART_TYPES:
            raise UnsupportedContent(
                f"{here} is a {kind!r} part: only text parts can be counted by a text tokenizer; "
                "count media with the model server's own usage"
            )
        else:
            raise UnsupportedContent(f"{here}.type is not a known text part type (expected 'text')")
    return [{"type": "text", "text": text} for text in texts]


def _tool_calls(calls, where: str, max_depth: int) -> list:
    _expect(calls, list, where, "an array of tool calls")
    out = []
    for i, call in enumerate(calls):
        here = f"{where}[{i}]"
        _expect(call, dict, here, "an object")
        call = dict(call)
        function = call.get("function")
        if function is not None:
            _expect(function, dict, f"{here}.function", "an object with name and arguments")
            function = dict(function)
            _expect(function.get("name"), str, f"{here}.function.name", "a string")
            arguments = function.get("arguments")
            # vLLM hands templates the parsed arguments (Llama 3.1 renders them with tojson); text that is not
            # JSON stays text. Parsed arguments obey the same nesting limit as the request.
            if isinstance(arguments, str) and arguments.lstrip()[:1] in ("{", "["):
                try:
                    function["arguments"] = jsonio.loads(arguments, f"{here}.function.arguments", max_depth)
                except InvalidJSON:
                    pass
            call["function"] = function
        out.append(call)
    return out


def _tool(tool, where: str) -> dict:
    """A tool as vLLM hands it to the template: its pydantic model_dump, null fields included, in that order."""
    _expect(tool, dict, where, 'an object like {"type": "function", "function": {...}}')
    function = _expect(tool.get("function"), dict, f"{where}.function", "an object with name and parameters")
    _expect(function.get("name"), str, f"{where}.function.name", "a string")
    dumped = {
        "name": function["name"],
        "description": function.get("description"),
        "parameters": function.get("parameters"),
    }
    dumped.update({k: v for k, v in function.items() if k not in dumped})
    return {"type": tool.get("type", "function"), "function": dumped}


def _texts(value, where: str) -> list[str | list[int]]:
    """Completion prompts / embedding inputs: a string, a list of strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    _expect(value, list, where, "a string or an array")
    if not value:
        raise InvalidField(f"{where} is empty")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]
    out: list[str | list[int]] = []
    for i, item in enumerate(value):
        if (
            isinstance(item, str)
            or isinstance(item, list)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            out.append(item)
        else:
            raise InvalidField(f"{where}[{i}] must be a string or an array of token ids, got {type_name(item)}")
    return out
