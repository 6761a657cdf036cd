"""Parse the APIM envelope and the OpenAI-compatible request inside it into what the counter needs.

Error messages name fields and types, never values: request content must not leak into errors or logs.
"""

from __future__ import annotations

import msgspec

from . import conversation, jsonio
from .datamodel import CountRequest, Prompt
from .errors import InvalidField, PayloadTooLarge
from .jsonio import expect, type_name
from .responses import parse_response
from .settings import Settings

# The chat request flags vLLM reads, with its defaults.
CHAT_FLAGS = {"add_generation_prompt": True, "continue_final_message": False, "add_special_tokens": False}


_STRINGS_ENVELOPE = msgspec.json.Decoder(dict[str, str | None])
_CANONICAL_KEYS = {"requestbody": "RequestBody", "responsebody": "ResponseBody"}


def parse_envelope(body: bytes, settings: Settings) -> CountRequest:
    """Parse the JSON envelope APIM posts: {"RequestBody": ..., "ResponseBody": ...}."""
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"body is {len(body)} bytes; the limit is {settings.max_body_bytes} (TOKENCOUNTER_MAX_BODY_BYTES)"
        )
    if not body or body.isspace():
        raise InvalidField('body is empty; send {"RequestBody": "<chat request JSON>", "ResponseBody": "..."}')
    envelope, surrogates = _decode_envelope(body, settings.max_depth)
    expect(envelope, dict, "body", 'a JSON object like {"RequestBody": ..., "ResponseBody": ...}')
    _canonical_keys(envelope)
    if "RequestBody" not in envelope or envelope["RequestBody"] in (None, ""):
        raise InvalidField("RequestBody is required: the client's request body as a JSON string or object")
    request = envelope["RequestBody"]
    if isinstance(request, str):
        request, strict = jsonio.loads_flagged(request, "RequestBody", settings.max_depth)
        surrogates = surrogates or strict
    expect(request, dict, "RequestBody", "a JSON object (or a string holding one)")
    prompt = parse_request(request, settings, check_unicode=surrogates)
    completion = None
    response = envelope.get("ResponseBody")
    if response not in (None, ""):
        if not isinstance(response, (str, dict)):
            raise InvalidField(f"ResponseBody must be a JSON string or object, got {type_name(response)}")
        completion = parse_response(response, settings.max_depth)
    return CountRequest(prompt, completion)


class _Named(msgspec.Struct):
    model: object = None


_NAMED = msgspec.json.Decoder(_Named)


def model_name(body: bytes) -> tuple[bool, str | None]:
    """(True, the model the envelope's request names, or None) when its RequestBody is a JSON string, read with no
    check but JSON's; (False, None) when it is not that simple."""
    try:
        envelope = _canonical_keys(_STRINGS_ENVELOPE.decode(body))
        model = _NAMED.decode(envelope.get("RequestBody")).model
    except (*jsonio.FAST_ERRORS, TypeError):  # TypeError: no RequestBody
        return False, None
    return True, model if isinstance(model, str) and model else None


def _canonical_keys(envelope: dict) -> dict:
    """Policies written by hand spell the keys requestBody / request_body too; the exact spelling wins."""
    if "RequestBody" not in envelope or "ResponseBody" not in envelope:
        for key in list(envelope):
            canonical = _CANONICAL_KEYS.get(key.lower().replace("_", ""))
            if canonical and canonical not in envelope:
                envelope[canonical] = envelope[key]
    return envelope


def _decode_envelope(body: bytes, max_depth: int) -> tuple[object, bool]:
    """The envelope as APIM's policies post it, both bodies strings: decoded without the container count, as it can
    hold no container but itself; any other JSON takes the checked path, with the same result. With it: whether
    it may hold lone surrogates (jsonio.loads_flagged)."""
    try:
        return _STRINGS_ENVELOPE.decode(body), False
    except jsonio.FAST_ERRORS:
        return jsonio.loads_flagged(body, "body", max_depth)


def parse_request(request: dict, settings: Settings, check_unicode: bool = True) -> Prompt:
    if check_unicode:
        jsonio.check_unicode(request, "RequestBody")
    model = request.get("model")
    model = model if isinstance(model, str) and model else None
    if "messages" in request:
        return _chat(request, model, settings)
    # Completions and embeddings add the BOS unless the request says not to (vLLM's default: true).
    add_special_tokens = _flag(request, "add_special_tokens", True)
    if "prompt" in request:
        texts = _texts(request["prompt"], "RequestBody.prompt")
        return Prompt("completion", model, texts=texts, add_special_tokens=add_special_tokens)
    if "input" in request:
        texts = _texts(request["input"], "RequestBody.input")
        return Prompt("embedding", model, texts=texts, add_special_tokens=add_special_tokens)
    raise InvalidField("RequestBody must have messages (chat completions), prompt (completions) or input (embeddings)")


def _chat(request: dict, model: str | None, settings: Settings) -> Prompt:
    messages = expect(request["messages"], list, "RequestBody.messages", "an array of messages")
    if not messages:
        raise InvalidField("RequestBody.messages is empty; send at least one message")
    if len(messages) > settings.max_messages:
        raise PayloadTooLarge(
            f"RequestBody.messages has {len(messages)} messages; the limit is {settings.max_messages} "
            "(TOKENCOUNTER_MAX_MESSAGES)"
        )
    flags = {name: _flag(request, name, default) for name, default in CHAT_FLAGS.items()}
    kwargs = request.get("chat_template_kwargs")
    if kwargs is not None:
        expect(kwargs, dict, "RequestBody.chat_template_kwargs", "an object")
    return Prompt(
        "chat",
        model,
        messages=conversation.parse_messages(messages, "RequestBody.messages", settings.max_depth),
        tools=conversation.dump_tools(request.get("tools"), "RequestBody.tools"),
        template_kwargs=conversation.request_kwargs(
            kwargs,
            add_generation_prompt=flags["add_generation_prompt"],
            continue_final_message=flags["continue_final_message"],
            documents=request.get("documents"),
            reasoning_effort=request.get("reasoning_effort"),
        ),
        add_special_tokens=flags["add_special_tokens"],
        request=request,
    )


def _flag(request: dict, name: str, default: bool) -> bool:
    value = request.get(name)
    return default if value is None else expect(value, bool, f"RequestBody.{name}", "a boolean")


def _texts(value, where: str) -> list[str | list[int]]:
    """Completion prompts / embedding inputs: a string, a list of strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    expect(value, list, where, "a string or an array")
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
