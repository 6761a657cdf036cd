"""Strict JSON decoding with the limits the counter promises (finite numbers, bounded nesting and size)."""

from __future__ import annotations

import json
import math
import re

import msgspec

from .errors import InvalidField, InvalidJSON, PayloadTooLarge, TooDeep

# Objects and arrays one JSON text may hold. Each costs 50-250 bytes decoded, so this keeps a body of
# "[]," from growing 20-fold in memory; real requests hold a few per message (4096 messages: ~20 K).
MAX_CONTAINERS = 200_000
# A JSON string, escapes included (the unrolled form, possessive: the regex engine keeps no state per escape, where
# a backtracking repeat kept one, 183 MiB for an 8 MiB string of 1.4M escapes).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
_STRING_BYTES = re.compile(_STRING.pattern.encode())

_SURROGATE = re.compile("[\ud800-\udfff]")


def type_name(value) -> str:
    """The JSON type of a decoded value, as error messages name it."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def expect(value, kind: type | tuple, where: str, what: str):
    """`value` if it is of `kind` (a bool is never a number), else a 400 naming the field and its type."""
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidField(f"{where} must be {what}, got {type_name(value)}")
    return value


def _reject_constant(name: str):
    raise InvalidJSON(f"{name} is not allowed (JSON has no NaN or Infinity)")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # 1e999: past a double's range, it would decode as Infinity
        raise InvalidJSON("a number is outside the range of a 64-bit float (JSON numbers must be finite)")
    return number


# One decoder for every call: json.loads with a keyword argument would build a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_FAST = msgspec.json.Decoder()
# What msgspec raises for a text it does not take (RecursionError: nesting past its own limit; UnicodeError: a
# str holding a lone surrogate, which it cannot read as UTF-8).
FAST_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError)


def containers(text: str | bytes) -> int:
    """How many objects and arrays `text` holds: brackets outside strings (counted only when brackets abound)."""
    brace, bracket = ("{", "[") if isinstance(text, str) else (b"{", b"[")
    brackets = text.count(brace) + text.count(bracket)
    if brackets <= MAX_CONTAINERS:
        return brackets
    bare = (_STRING if isinstance(text, str) else _STRING_BYTES).sub(type(text)(), text)
    return bare.count(brace) + bare.count(bracket)


def fast_decode(text: str | bytes):
    """msgspec's decode, where it agrees with the strict stdlib decoder below: it refuses (MsgspecError) every text
    that decoder refuses (NaN, Infinity, 1e999, integers past 4,300 digits, bad UTF-8, trailing data), and also
    lone surrogates and very deep nesting, which the stdlib path then handles with its own answers
    (tests/test_jsonio.py holds the two to the same values)."""
    return _FAST.decode(text)


def loads(text: str | bytes, where: str, max_depth: int):
    """Decode `text` as JSON; errors name `where` and never echo the text."""
    return loads_flagged(text, where, max_depth)[0]


def loads_flagged(text: str | bytes, where: str, max_depth: int) -> tuple[object, bool]:
    """loads(), and whether the value may hold a lone surrogate: only the stdlib decoder makes one (msgspec refuses
    every \\uD800-\\uDFFF escape that is not half of a pair), so most values need no search for them."""
    holds = containers(text)
    if holds > MAX_CONTAINERS:
        raise PayloadTooLarge(
            f"{where} holds more than {MAX_CONTAINERS} JSON objects and arrays; send fewer or flatter structures"
        )
    strict = False
    try:
        value = fast_decode(text)
    except FAST_ERRORS:
        value, strict = _strict_loads(text, where, max_depth), True
    # Nesting depth is at most the number of brackets: counting them (C speed) spares most texts the walk.
    if holds >= max_depth:
        check_depth(value, where, max_depth)
    return value, strict


def _strict_loads(text: str | bytes, where: str, max_depth: int):
    """The stdlib decoder with the counter's rules: the reference for fast_decode, and the one that names errors."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"{where} is not valid UTF-8 (byte offset {exc.start})") from None
    try:
        return _DECODER.decode(text)
    except InvalidJSON as exc:
        raise InvalidJSON(f"{where} is not valid JSON: {exc.message}") from None
    except RecursionError:
        raise TooDeep(f"{where} nests deeper than the interpreter allows; the limit is {max_depth}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer literal longer than Python converts (sys.int_info.str_digits_check_threshold)
        raise InvalidJSON(f"{where} is not usable JSON: it holds an integer with too many digits") from None


def check_depth(value, where: str, max_depth: int) -> None:
    """Iteratively (no recursion) refuse containers nested deeper than `max_depth` (decoded JSON: exact dicts and
    lists, so type() is tested, at a third of isinstance's cost in a walk that visits every value)."""
    stack = [(value, 1)] if type(value) is dict or type(value) is list else []
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > max_depth:
            raise TooDeep(f"{where} nests deeper than {max_depth} levels (TOKENCOUNTER_MAX_DEPTH)")
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))


# Field names that may appear in an error path; any other key is shown as <key> (keys can be content too,
# e.g. a tool's parameter names, which are rendered into the prompt).
_KNOWN_KEYS = frozenset(
    {
        "model",
        "messages",
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "function",
        "arguments",
        "id",
        "type",
        "text",
        "refusal",
        "tools",
        "description",
        "parameters",
        "prompt",
        "input",
        "image_url",
        "url",
    }
)


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None  # isascii: a C-speed skip for most text


def check_unicode(value, where: str) -> None:
    """Every string (and key) of a request must be valid Unicode: a lone UTF-16 surrogate cannot be tokenized
    (tiktoken would silently replace it, transformers would refuse it), so it is refused, naming its field.

    The walk holds only references (no paths); the field's path is worked out only once one is found."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return _raise_with_path(value, where)
        elif isinstance(node, dict):
            if any(_has_surrogate(key) for key in node):
                return _raise_with_path(value, where)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _raise_with_path(value, where: str) -> None:
    stack = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                raise InvalidField(f"{path} contains a lone UTF-16 surrogate (an invalid \\ud800-\\udfff escape)")
        elif isinstance(node, dict):
            for key, child in node.items():
                if _has_surrogate(key):
                    raise InvalidField(f"{path} has a key with a lone UTF-16 surrogate")
                stack.append((child, f"{path}.{key if key in _KNOWN_KEYS else '<key>'}"))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))


def repair_text(text: str) -> str:
    """Join surrogate pairs split across stream chunks; a lone surrogate becomes U+FFFD, as a detokenizer emits."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
