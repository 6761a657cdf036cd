"""Strict JSON decoding with the limits the counter promises (no NaN/Infinity, bounded nesting)."""

from __future__ import annotations

import json
import re

from .errors import InvalidField, InvalidJSON, TooDeep

_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can enter decoded JSON only through a \uD800-\uDFFF escape (UTF-8 cannot carry one), at any
# level of string-in-string nesting; a body without this pattern needs no search for lone surrogates.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def may_hold_surrogates(body: bytes) -> bool:
    return _SURROGATE_ESCAPE.search(body) is not None


def _reject_constant(name: str):
    raise InvalidJSON(f"{name} is not valid JSON: NaN and Infinity are not allowed")


# One decoder for every call: json.loads with a keyword argument would build a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str | bytes, where: str, max_depth: int):
    """Decode `text` as JSON; errors name `where` and never echo the text."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"{where} is not valid UTF-8 (byte offset {exc.start})") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise TooDeep(f"{where} nests deeper than the interpreter allows; the limit is {max_depth}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer literal longer than Python converts (sys.int_info.str_digits_check_threshold)
        raise InvalidJSON(f"{where} is not usable JSON: it holds an integer with too many digits") from None
    # Nesting depth is at most the number of brackets: counting them (C speed) spares most texts the walk.
    if text.count("{") + text.count("[") >= max_depth:
        check_depth(value, where, max_depth)
    return value


def check_depth(value, where: str, max_depth: int) -> None:
    """Iteratively (no recursion) refuse containers nested deeper than `max_depth`."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise TooDeep(f"{where} nests deeper than {max_depth} levels (TOKENCOUNTER_MAX_DEPTH)")
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


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


def check_unicode(value, where: str) -> None:
    """Every string (and key) of a request must be valid Unicode: a lone UTF-16 surrogate cannot be tokenized
    (tiktoken would silently replace it, transformers would refuse it), so it is refused, naming its field."""
    stack = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):  # isascii: a C-speed skip for most text
                raise InvalidField(f"{path} contains a lone UTF-16 surrogate (an invalid \\ud800-\\udfff escape)")
        elif isinstance(node, dict):
            for key, child in node.items():
                if not key.isascii() and _SURROGATE.search(key):
                    raise InvalidField(f"{path} has a key with a lone UTF-16 surrogate")
                stack.append((child, f"{path}.{key if key in _KNOWN_KEYS else '<key>'}"))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))


def repair_text(text: str) -> str:
    """Join surrogate pairs split across stream chunks; a lone surrogate becomes U+FFFD, as a detokenizer emits."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
