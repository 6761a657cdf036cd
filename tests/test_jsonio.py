"""msgspec decodes the hot path; the stdlib decoder with the counter's rules stays the reference. Wherever the fast
decoder answers, it answers the reference's value (same types: an integer stays an integer); wherever the reference
refuses, so does the fast decoder, and jsonio.loads then gives the reference's own error."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencounter import jsonio
from tokencounter.errors import TokenCounterError

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Pieces that make a JSON text strange: escapes (lone and paired surrogates), big and odd numbers, constants.
ODD = st.sampled_from(
    ['"\\ud800"', '"\\ud83e\\udd99"', '"\\udd99\\ud83e"', "1e999", "-1e400", "NaN", "Infinity", "-0", "1.0", "1E5",
     "9" * 4300, "9" * 4301, "0.1e-400", '"\\u0000"', '"\\x"', "[1,]", "{,}", "01", "\ufeff{}", "[" * 1100 + "]" * 1100]
)  # fmt: skip


def same(a, b) -> bool:
    """Equal values of equal types all the way down (iteratively: the texts nest a thousand deep)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if x != y or math.copysign(1, x) != math.copysign(1, y):
                return False
        elif x != y:
            return False
    return True


def check(text: str | bytes) -> None:
    try:
        reference = jsonio._strict_loads(text, "body", 10_000)
    except TokenCounterError:
        reference = TokenCounterError
    except RecursionError:
        reference = RecursionError
    try:
        fast = jsonio.fast_decode(text)
    except jsonio.FAST_ERRORS:
        return  # jsonio.loads falls back to the reference
    assert reference not in (TokenCounterError, RecursionError), text
    assert same(fast, reference)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, as_bytes=st.booleans(), ascii=st.booleans())
def test_fast_equals_reference_on_valid_json(value, as_bytes, ascii):
    text = json.dumps(value, ensure_ascii=ascii)
    check(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, odd=ODD, at=st.integers(0, 10_000), as_bytes=st.booleans())
def test_fast_never_accepts_what_the_reference_refuses(value, odd, at, as_bytes):
    text = json.dumps([value])
    at = at % len(text)
    text = text[:at] + odd + text[at:]  # often no longer JSON: the two must refuse it alike
    check(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@pytest.mark.parametrize(
    ("text", "code"),
    [("NaN", "invalid_json"), ("1e999", "invalid_json"), ("9" * 5000, "invalid_json"), ('{"a": 1', "invalid_json")],
)
def test_loads_gives_the_references_errors(text, code):
    with pytest.raises(TokenCounterError) as caught:
        jsonio.loads(text.encode(), "body", 64)
    assert caught.value.code == code


def test_lone_surrogates_still_reach_the_unicode_check():
    assert jsonio.loads(b'["\\ud800"]', "body", 64) == ["\ud800"]
    assert jsonio.loads(b'"\\ud83e\\udd99"', "body", 64) == "\U0001f999"
