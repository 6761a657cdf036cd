"""Parse a model response (JSON or a server-sent event stream) into the generated text of each choice."""

from __future__ import annotations

import itertools
import json
import operator
import re

import msgspec

from . import jsonio
from .datamodel import Choice, Completion
from .errors import InvalidField, InvalidJSON, UpstreamError

_LINE = re.compile(r"\r\n|\r|\n")
_SSE_START = ("data:", ":", "event:", "id:", "retry:")
# Upstream counts beyond this are not counts: it is above every context window shipped (Llama 4 Scout: 10M),
# so a larger figure is recounted rather than trusted (and billed).
MAX_USAGE = 2**24
# Choices a stream may index (n beyond this is no real request): a larger index is refused, not allocated for.
MAX_CHOICES = 1024


def parse_response(value: str | dict, max_depth: int) -> Completion:
    if isinstance(value, dict):
        return _from_object(value, "ResponseBody")
    text = value.lstrip("\ufeff \t\r\n")
    if text.startswith("{"):
        return _from_object(jsonio.loads(text, "ResponseBody", max_depth), "ResponseBody")
    if text.startswith(_SSE_START):
        return _from_stream(text, max_depth)
    raise InvalidJSON("ResponseBody is neither a JSON object nor a server-sent event stream (data: lines)")


def _usage(value) -> dict | None:
    """The upstream usage, only when it is a well-formed count (anything else is recounted)."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_USAGE for v in (prompt, completion)):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text(value, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return jsonio.repair_text(value)
    if isinstance(value, list):  # content parts in a response: count their text
        return "\n".join(_text(p.get("text") if isinstance(p, dict) else p, where) for p in value)
    raise InvalidField(f"{where} must be a string or null")


def _reasoning(message: dict):
    """vLLM 0.33 answers `reasoning`; earlier versions and other servers `reasoning_content`: one or the other."""
    value = message.get("reasoning")
    return value if value is not None else message.get("reasoning_content")


def _tool_call(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise InvalidField(f"{where} must be an object with a function")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):  # some servers send the arguments as an object
        arguments = "{}" if arguments is None else json.dumps(arguments, ensure_ascii=False)
    return {"name": _text(function.get("name"), f"{where}.function.name"), "arguments": jsonio.repair_text(arguments)}


def _from_object(obj: dict, where: str) -> Completion:
    if not isinstance(obj, dict):
        raise InvalidField(f"{where} must be a JSON object")
    if "choices" not in obj and "usage" not in obj and ("error" in obj or obj.get("object") == "error"):
        raise UpstreamError(
            f"{where} is an error response from the model server: no tokens were generated or billed; "
            "send only successful responses (the policies skip non-2xx answers)"
        )
    choices = obj.get("choices", [])
    if not isinstance(choices, list):
        raise InvalidField(f"{where}.choices must be an array")
    parsed = []
    for i, choice in enumerate(choices):
        here = f"{where}.choices[{i}]"
        if not isinstance(choice, dict):
            raise InvalidField(f"{here} must be an object")
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) else None
        message = choice.get("message")
        if message is None and "text" in choice:  # legacy completions
            parsed.append(Choice(_text(choice["text"], f"{here}.text"), finish))
            continue
        if not isinstance(message, dict):
            raise InvalidField(f"{here}.message must be an object (or use text for completions)")
        text = _text(message.get("content"), f"{here}.message.content")
        refusal = _text(message.get("refusal"), f"{here}.message.refusal")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise InvalidField(f"{here}.message.tool_calls must be an array")
        tool_calls = [_tool_call(c, f"{here}.message.tool_calls[{j}]") for j, c in enumerate(calls)]
        reasoning = _text(_reasoning(message), f"{here}.message.reasoning")
        parsed.append(Choice(text + refusal, finish, tool_calls, reasoning))
    return Completion(parsed, _usage(obj.get("usage")))


def _events(text: str):
    """The data of each server-sent event (the SSE rules: data lines joined by "\\n", comments skipped)."""
    data: list[str] = []
    for line in text.split("\n") if "\r" not in text else _LINE.split(text):
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


# A chunk as vLLM and OpenAI write it, every field typed and no other allowed: the one-call decode builds and checks
# all of it (so nesting, integer sizes and lone surrogates are refused there as the event path refuses them), and a
# chunk with any other field goes event by event.
class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class _Function(_Strict):
    name: str | None = None
    arguments: str | None = None


class _CallDelta(_Strict):
    index: int | msgspec.UnsetType = msgspec.UNSET  # absent: the call's position; null is refused, as events do
    id: str | None = None
    type: str | None = None
    function: _Function | None = None


class _Delta(_Strict):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_CallDelta] | None = None

    @property
    def thought(self) -> str | None:
        """_reasoning's rule, for a typed delta."""
        return self.reasoning if self.reasoning is not None else self.reasoning_content


class _ChunkChoice(_Strict):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None
    logprobs: None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class _Details(_Strict):
    cached_tokens: int | None = None
    audio_tokens: int | None = None
    reasoning_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class _Usage(_Strict):
    # UNSET: absent, as apart from null (_usage takes a missing completion_tokens as 0, a null as no count).
    prompt_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    completion_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    total_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None


class _Chunk(_Strict):
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    obfuscation: str | None = None
    prompt_token_ids: list[int] | None = None
    choices: list[_ChunkChoice] | None = None
    usage: _Usage | None = None


_CHUNKS = msgspec.json.Decoder(list[_Chunk])
_EVENT, _DONE = "\n\ndata: ", "\n\ndata: [DONE]"
# Events are decoded in one call per this many characters of stream: what one decode builds stays small.
BATCH_CHARS = 1 << 19


class _Parts:
    """A stream's choices as its chunks arrive: text, reasoning, tool calls and finish reason by choice index."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.reasoning: dict[int, list[str]] = {}
        self.finish: dict[int, str] = {}
        self.calls: dict[int, dict[int, dict]] = {}
        self.usage: dict | None = None

    def text(self, index: int) -> list[str]:
        parts = self.texts.get(index)
        if parts is None:
            parts = self.texts[index] = []
        return parts

    def call(self, index: int, position: int, name: str | None, arguments: str | None) -> None:
        call = self.calls.setdefault(index, {}).setdefault(position, {"name": "", "arguments": ""})
        if name is not None:
            call["name"] += name
        if arguments is not None:
            call["arguments"] += arguments

    def completion(self) -> Completion:
        choices = []
        for index in sorted(self.texts):
            merged = [
                {"name": jsonio.repair_text(c["name"]), "arguments": jsonio.repair_text(c["arguments"])}
                for _, c in sorted(self.calls.get(index, {}).items())
            ]
            thought = jsonio.repair_text("".join(self.reasoning.get(index, ())))
            text = jsonio.repair_text("".join(self.texts[index]))
            choices.append(Choice(text, self.finish.get(index), merged, thought))
        return Completion(choices, self.usage, streamed=True)


def _from_stream(text: str, max_depth: int) -> Completion:
    """Reassemble each choice from chat.completion.chunk deltas (or completion chunks' text)."""
    completion = _from_batches(text)
    return _from_events(text, max_depth) if completion is None else completion


def _from_batches(text: str) -> Completion | None:
    """A stream in the form vLLM and OpenAI write, every event one `data: <json>` line, decoded a batch of events
    at a time (JSON text holds no raw newline, so "\n\ndata: " occurs only between events). None for any other
    stream, or one the typed decoder does not take: those go event by event, with the same result."""
    body = text.lstrip("\ufeff \t\r\n").rstrip(" \t\r\n")  # as parse_response and the SSE rules trim
    if not body.startswith("data: ") or "\r" in body:
        return None
    stop = len(body) - len(_DONE) if body.endswith(_DONE) else len(body)
    if stop <= len("data: "):  # "data: " then only [DONE]: an empty event the event path refuses
        return None
    parts, start = _Parts(), len("data: ")
    while start < stop:
        end = body.find(_EVENT, start + BATCH_CHARS, stop) if stop - start > BATCH_CHARS else -1
        end = stop if end == -1 else end
        batch = body[start:end]
        events = batch.split(_EVENT)
        # An event holding a newline is another line (a comment, `event:`, a data line split in two, [DONE] not
        # last...): the typed path and the runs both refuse one.
        if not _add_events(parts, batch, events):
            return None
        start = end + len(_EVENT)
    return parts.completion()


def _add_events(parts: _Parts, text: str, events: list[str], runs: int = 0) -> bool:
    """The events `text` joins into `parts`: a run of alike events (_Run) by their strings, the events around it
    decoded typed. False for one the event-by-event path refuses."""
    run = _Run.of(events[1]) if runs < MAX_RUNS and len(events) >= MIN_RUN else None
    if run is None:
        return _add_typed(parts, events)
    first = 0 if run.fits(events[0]) else 1  # events[1] fits: the run was read from it
    last = len(events)
    while not run.fits(events[last - 1]):
        last -= 1
    start = 0 if first == 0 else len(events[0]) + len(_EVENT)
    end = len(text) - sum(map(len, events[last:])) - len(_EVENT) * (len(events) - last)
    strings = run.strings(events[first:last], text, start, end)
    if strings is None:  # events of other shapes between alike ones
        return _add_typed(parts, events)
    if not (_add_typed(parts, events[:first]) and run.add(parts, strings)):
        return False
    return last == len(events) or _add_events(parts, text[end + len(_EVENT) :], events[last:], runs + 1)


def _add_typed(parts: _Parts, events: list[str]) -> bool:
    array = "[" + ",".join(events) + "]"
    if "\n" in array or jsonio.containers(array) > jsonio.MAX_CONTAINERS:  # one event may hold no more
        return False
    try:
        chunks = _CHUNKS.decode(array)
    except jsonio.FAST_ERRORS:
        return False
    return _add_chunks(parts, chunks)


# Run detection: the fields whose string a run varies, and what a run's strings must be (JSON strings, NUL apart).
_RUN_FIELDS = re.compile(r'"(?:content|refusal|reasoning|reasoning_content|text)"\s*:\s*(?=")')
_ONE_STRING = r'"[^"\\\x00\n]*+(?:\\[^\x00\n][^"\\\x00\n]*+)*+"'
_STRINGS_APART = re.compile(f"{_ONE_STRING}(?:\x00{_ONE_STRING})*+")
_STRINGS = msgspec.json.Decoder(list[str])
MIN_RUN = 8  # events worth looking for a run in
# A run is read from an event of at most this many characters, trying at most RUN_FIELDS_TRIED of its string fields
# (each try decodes the event once: an event of many fields must not cost a decode per field).
MAX_RUN_EVENT_CHARS = 4096
RUN_FIELDS_TRIED = 4
MAX_RUNS = 4  # runs of different shapes read from one batch (reasoning then content, say); the rest typed


class _Run:
    """Consecutive events alike but for one JSON string: `before` + the string + `after`, as vLLM writes every delta
    of a stream (the same id, created and model each time). Each adds its string to one choice's text or reasoning,
    as the typed decode of the first would with that string in it, so a run is read as strings, with a handful of
    C-level string operations instead of a decode per event."""

    def __init__(self, before: str, after: str, index: int, reasoning: bool, finish: str | None) -> None:
        self.before, self.after = before, after
        self.index, self.reasoning, self.finish = index, reasoning, finish

    @classmethod
    def of(cls, event: str) -> _Run | None:
        """The run `event` starts: one of its string fields is replaced by a marker and the result decoded typed,
        twice, with two markers; when each marker is then the only text the chunk adds, the text comes from that
        place (not from another field that happens to hold a marker), and any string in its place is added the
        same way."""
        if len(event) > MAX_RUN_EVENT_CHARS:
            return None
        for field in itertools.islice(_RUN_FIELDS.finditer(event), RUN_FIELDS_TRIED):
            string = jsonio._STRING.match(event, field.end())
            if string is None:
                continue
            before, after = event[: field.end()], event[string.end() :]
            if "\n" in before or "\n" in after:
                return None
            adds = _probe(before, after, "\\u0000", "\x00")
            if adds is not None and _probe(before, after, "\\u0001", "\x01") == adds:
                return cls(before, after, *adds)
        return None

    def fits(self, event: str) -> bool:
        return (
            len(event) > len(self.before) + len(self.after)
            and event.startswith(self.before)
            and event.endswith(self.after)
        )

    def strings(self, events: list[str], text: str, start: int, end: int) -> list[str] | None:
        """The string of each event (`text[start:end]` joins them), or None unless every one is `before` + one
        JSON string + `after`."""
        literals = list(map(operator.itemgetter(slice(len(self.before), -len(self.after))), events))
        # Put back together, the events are those very texts: each is `before` + its middle + `after`.
        whole = self.before + (self.after + _EVENT + self.before).join(literals) + self.after
        if len(whole) != end - start or not text.startswith(whole, start):
            return None
        # Each middle is one JSON string (no string of them runs into the next), and each decodes.
        if not _STRINGS_APART.fullmatch("\x00".join(literals)):
            return None
        try:
            return _STRINGS.decode("[" + ",".join(literals) + "]")
        except jsonio.FAST_ERRORS:
            return None

    def add(self, parts: _Parts, strings: list[str]) -> bool:
        text = parts.text(self.index)
        (parts.reasoning.setdefault(self.index, []) if self.reasoning else text).extend(strings)
        if self.finish is not None and strings:
            parts.finish[self.index] = self.finish
        return True


def _probe(before: str, after: str, escaped: str, marker: str) -> tuple[int, bool, str | None] | None:
    """What the one chunk `before` + the JSON string of `marker` + `after` adds, when its only text is `marker`."""
    try:
        (chunk,) = _CHUNKS.decode(f'[{before}"{escaped}"{after}]')
    except (*jsonio.FAST_ERRORS, ValueError):  # not JSON, not a chunk, or not one
        return None
    return _sole_text(chunk, marker)


def _sole_text(chunk: _Chunk, marker: str) -> tuple[int, bool, str | None] | None:
    """(choice index, is it reasoning, finish reason) when the chunk's only text is `marker`."""
    if chunk.usage is not None or not chunk.choices or len(chunk.choices) != 1:
        return None
    choice = chunk.choices[0]
    if not 0 <= choice.index < MAX_CHOICES:
        return None
    delta = choice.delta
    if delta is None:
        return (choice.index, False, choice.finish_reason) if choice.text == marker else None
    thought = delta.thought
    texts = [t for t in (delta.content, delta.refusal, thought) if t is not None]
    if texts != [marker] or delta.tool_calls:
        return None
    return choice.index, thought is not None, choice.finish_reason


def _add_chunks(parts: _Parts, chunks: list[_Chunk]) -> bool:
    """Typed chunks into `parts`; False for one the event-by-event path refuses (it names the event)."""
    for chunk in chunks:
        if chunk.usage is not None:
            counts = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
            parts.usage = _usage({k: v for k, v in counts.items() if v is not msgspec.UNSET}) or parts.usage
        for choice in chunk.choices or ():
            index = choice.index
            if not 0 <= index < MAX_CHOICES:
                return False
            text, delta = parts.text(index), choice.delta
            if delta is not None:
                if delta.content is not None:
                    text.append(delta.content)
                if delta.refusal is not None:
                    text.append(delta.refusal)
                thought = delta.thought
                if thought is not None:
                    parts.reasoning.setdefault(index, []).append(thought)
                for position, call in enumerate(delta.tool_calls or ()):
                    function = call.function or _NO_FUNCTION
                    position = position if call.index is msgspec.UNSET else call.index
                    parts.call(index, position, function.name, function.arguments)
            elif choice.text is not None:
                text.append(choice.text)
            if choice.finish_reason is not None:
                parts.finish[index] = choice.finish_reason
    return True


_NO_FUNCTION = _Function()


def _from_events(text: str, max_depth: int) -> Completion:
    """_from_stream for any stream: event by event, each decoded and checked on its own."""
    parts = _Parts()
    for n, data in enumerate(_events(text)):
        if data.strip() == "[DONE]":
            break
        chunk = jsonio.loads(data, f"ResponseBody event {n}", max_depth)
        if not isinstance(chunk, dict):
            raise InvalidField(f"ResponseBody event {n} must be a JSON object")
        if chunk.get("usage") is not None:
            parts.usage = _usage(chunk["usage"]) or parts.usage
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise InvalidField(f"ResponseBody event {n}: choices must be an array")
        for choice in choices:
            if not isinstance(choice, dict):
                raise InvalidField(f"ResponseBody event {n}: each choice must be an object")
            index = choice.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_CHOICES:
                raise InvalidField(
                    f"ResponseBody event {n}: choices[].index must be an integer in 0..{MAX_CHOICES - 1}"
                )
            text = parts.text(index)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    text.append(content)
                if isinstance(delta.get("refusal"), str):
                    text.append(delta["refusal"])
                thought = _reasoning(delta)
                if isinstance(thought, str):
                    parts.reasoning.setdefault(index, []).append(thought)
                if delta.get("tool_calls") is not None:
                    _merge_tool_calls(parts, index, delta["tool_calls"], n)
            elif isinstance(choice.get("text"), str):
                text.append(choice["text"])
            if isinstance(choice.get("finish_reason"), str):
                parts.finish[index] = choice["finish_reason"]
    return parts.completion()


def _merge_tool_calls(parts: _Parts, choice: int, deltas, n: int) -> None:
    if not isinstance(deltas, list):
        raise InvalidField(f"ResponseBody event {n}: delta.tool_calls must be an array")
    for position, delta in enumerate(deltas):
        if not isinstance(delta, dict):
            raise InvalidField(f"ResponseBody event {n}: each tool call delta must be an object")
        index = delta.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            raise InvalidField(f"ResponseBody event {n}: tool_calls[].index must be an integer")
        function = delta.get("function") or {}
        if isinstance(function, dict):
            name, arguments = function.get("name"), function.get("arguments")
            parts.call(
                choice,
                index,
                name if isinstance(name, str) else None,
                arguments if isinstance(arguments, str) else None,
            )
        else:
            parts.call(choice, index, None, None)
