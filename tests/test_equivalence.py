"""The fast path (tiktoken + segment cache) counts exactly what the AutoTokenizer path counts.

Property tests (hypothesis) over random unicode, whitespace runs, digits, contractions, emoji and literal
special-token text (real and broken), and over random chat structures, for every embedded template; then
the whole test corpus. Both backends are built by `registry.load_backend` exactly as the service builds them.

Examples are derandomized (the same inputs every run, so CI cannot flake); set TOKENCOUNTER_EXPLORE=1 to
draw fresh random examples (and TOKENCOUNTER_EXPLORE_EXAMPLES to draw more of them).
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache

import pytest
from conftest import GOLDEN_DATE
from corpus import CASES, WEATHER_TOOL, WORDS, envelope
from hypothesis import HealthCheck, event, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tokencounter import counting, fastbpe
from tokencounter.errors import TemplateRejected
from tokencounter.payloads import parse_envelope, parse_request
from tokencounter.registry import load_backend, resolve
from tokencounter.settings import Settings
from tokencounter.templates import EMBEDDED_TEMPLATES

KWARGS = Settings(date_string=GOLDEN_DATE).template_defaults
EXPLORE = os.environ.get("TOKENCOUNTER_EXPLORE", "") not in ("", "0")


def examples(n: int) -> hsettings:
    return hsettings(
        max_examples=int(os.environ.get("TOKENCOUNTER_EXPLORE_EXAMPLES", n)) if EXPLORE else n,
        deadline=None,
        derandomize=not EXPLORE,
        suppress_health_check=[HealthCheck.too_slow],
    )


# Meta's Llama 3 BPE: these must be served by the fast path (and equal the AutoTokenizer path).
FAST_TEMPLATES = ("llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4")


@cache
def backends(template: str):
    """(fast-path setting, AutoTokenizer) backends for an embedded template, each loaded once."""
    spec = resolve(template, Settings())
    assert spec.chat_template == template
    fast = load_backend(spec, Settings(fast_path=True))
    hf = load_backend(spec, Settings(fast_path=False))
    assert hf.fast is False and not isinstance(hf, fastbpe.FastBackend)
    return fast, hf


def fast_backends(template: str):
    """(FastBackend, HFBackend); a template the fast path does not cover must fall back to AutoTokenizer."""
    fast, hf = backends(template)
    if template in FAST_TEMPLATES:
        assert isinstance(fast, fastbpe.FastBackend) and fast.fast is True
    return fast, hf


def test_every_embedded_template_has_a_fast_path():
    assert set(FAST_TEMPLATES) == set(EMBEDDED_TEMPLATES)


def hf_rendered(hf, text: str) -> int:
    """The HF tokenizer's count of text in which special-token text is parsed as special tokens."""
    with hf._lock:
        return len(hf.tokenizer(text, add_special_tokens=False)["input_ids"])


# --- text strategy ------------------------------------------------------------------------------------------

SPECIAL = [
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_5|>",
    "<|reserved_special_token_245|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|image|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
]
# Look like special tokens but are not (or only partly): must be counted as plain text.
BROKEN = [
    "<|eot_id|",
    "<|<|eot_id|>",
    "<|eot_id>",
    "|eot_id|>",
    "<eot_id|>",
    "<|EOT_ID|>",
    "<| eot_id|>",
    "<|eot_id |>",
    "<|not_special|>",
    "<|reserved_special_token_246|>",
    "<|reserved_special_token_|>",
    "<<|eot_id|>>",
    "<|eot_id|><|eot_id|>",
    "<||>",
    "<|",
    "|>",
    "<|\n|>",
    "<|begin_of_text|>|>",
]
WHITESPACE = " \t\n\r\u00a0\u3000\u2003\u2009\u200b\u0085\u2028\x0b\x0c"
EMOJI = ["🦙", "🚀", "👩‍💻", "👍🏽", "🇫🇷", "❤️", "🫠", "😀😀😀", "☕", "🧑🏿‍🤝‍🧑🏻"]
CONTRACTIONS = [
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "'LL",
    "'Re",
    "'VE",
    "’s",
    "'",
    "''",
    "'x",
    "don't",
    "I'M",
    "it's",
    "y'all",
    "rock'n'roll",
]

pieces = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=16),  # any unicode but lone surrogates
    st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=12),  # whitespace runs
    st.sampled_from([" ", "  ", "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", " \n ", "\u00a0", "\u3000"]),
    st.integers(min_value=0, max_value=10**15).map(str),
    st.from_regex(r"[0-9]{1,8}([.,][0-9]{1,4})?", fullmatch=True),
    st.sampled_from(CONTRACTIONS),
    st.sampled_from(EMOJI),
    st.sampled_from(SPECIAL),
    st.sampled_from(BROKEN),
    st.sampled_from(WORDS).map(lambda w: " " + w),
    st.sampled_from(
        ["é", "e\u0301", "東京", "안녕", "مرحبا", "שלום", "ß", "ſ", "K", "İ", "Ⅻ", "½", "∞", "\x00", "\ufeff"]
    ),
)
texts = st.lists(pieces, max_size=30).map("".join)
# Long enough (>= fastbpe.MIN_CACHED_CHARS) to go through the segment cache.
FILLER = " the gateway counts every token of every request exactly, streamed or not."


def _long(text: str) -> str:
    return text if len(text) >= fastbpe.MIN_CACHED_CHARS else text + FILLER[: fastbpe.MIN_CACHED_CHARS - len(text)]


long_texts = st.lists(pieces, min_size=10, max_size=120).map("".join).map(_long)
any_text = st.one_of(texts, long_texts)


# --- (a) text ---------------------------------------------------------------------------------------------------


# Whitespace runs of every kind, long and short, around the pieces above: where the two regex engines could
# split differently, if anywhere.
whitespace_heavy = st.lists(
    st.one_of(pieces, st.tuples(st.sampled_from(WHITESPACE), st.integers(1, 3000)).map(lambda t: t[0] * t[1])),
    max_size=40,
).map("".join)


@pytest.mark.parametrize("template", ["llama-3", "llama-4"])
@examples(400)
@given(text=st.one_of(any_text, whitespace_heavy))
def test_the_piece_path_for_long_whitespace_equals_tiktoken(template, text):
    """count_by_pieces (the regex module's split, then the BPE per piece) counts what encode_ordinary does."""
    fast, _ = fast_backends(template)
    assert fast.count_by_pieces(text) == len(fast.encoding.encode_ordinary(text))


@pytest.mark.parametrize("template", ["llama-3", "llama-4"])
@examples(400)
@given(text=st.one_of(any_text, whitespace_heavy), size=st.integers(0, 64))
def test_counting_in_segments_equals_counting_whole(template, text, size):
    """Long texts are counted in segments cut at CUT_PATTERN (where the deadline is checked): cut every `size`
    characters here, so every cut the pattern allows is exercised, the sum equals the whole text's count."""
    fast, _ = fast_backends(template)
    segments = list(fast.segments(text, size))
    assert "".join(segments) == text
    assert sum(len(fast.encoding.encode_ordinary(s)) for s in segments) == len(fast.encoding.encode_ordinary(text))


@pytest.mark.parametrize("template", ["llama-3", "llama-4"])
@pytest.mark.parametrize("run", [" ", "\t", "\u00a0", " \n", "\u3000", "\r\n "])
def test_a_million_character_whitespace_run_is_counted_as_the_tokenizers_library_counts_it(template, run):
    """The repro: ~1M characters of one whitespace run, where tiktoken's regex overflows its stack. The HF
    tokenizers library (what vLLM runs) is the oracle."""
    fast, hf = fast_backends(template)
    text = "before" + run * (1_000_000 // len(run)) + "after"
    assert fast.count_plain(text) == hf.count_plain(text)


@examples(500)
@given(text=any_text)
def test_count_plain_equals_autotokenizer(text):
    fast, hf = fast_backends("llama-3")
    want = hf.count_plain(text)
    assert fast.count_plain(text) == want
    assert fast.count_plain(text) == want  # again: a cache hit for long text
    event("cached" if len(text) >= fastbpe.MIN_CACHED_CHARS else "direct")


@examples(500)
@given(text=any_text)
def test_count_rendered_and_prompt_text_equal_autotokenizer(text):
    fast, hf = fast_backends("llama-3")
    assert fast.count_rendered(text) == hf_rendered(hf, text)
    for bos in (True, False):
        assert fast.count_prompt_text(text, bos) == hf.count_prompt_text(text, bos)
    event("has special" if any(s in text for s in SPECIAL) else "no special")


@examples(300)
@given(parts=st.lists(any_text, min_size=1, max_size=6), data=st.data())
def test_shared_segments_equal_autotokenizer(parts, data):
    """Text assembled from segments already in the cache (as a growing conversation resends them)."""
    fast, hf = fast_backends("llama-3")
    for part in parts:
        fast.count_plain(part)
    joiners = data.draw(
        st.lists(st.sampled_from(SPECIAL + ["", " ", "\n\n"]), min_size=len(parts), max_size=len(parts))
    )
    text = "".join(j + p for j, p in zip(joiners, parts, strict=True))
    assert fast.count_rendered(text) == hf_rendered(hf, text)
    assert fast.count_plain(text) == hf.count_plain(text)


# --- (b) chat structures ---------------------------------------------------------------------------------------

text_part = st.builds(lambda t, typed: {"type": "text", "text": t} if typed else {"text": t}, any_text, st.booleans())
content = st.one_of(
    any_text,
    st.lists(st.one_of(text_part, any_text), min_size=1, max_size=4),  # content parts, joined with "\n"
    st.lists(text_part, min_size=1, max_size=2).map(lambda p: p + [{"type": "refusal", "refusal": "I can't."}]),
)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": content})
tool = st.builds(
    lambda description: {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "description": description}},
    texts,
)
chat_request = st.fixed_dictionaries(
    {"model": st.just("Llama-3-8B"), "messages": st.lists(message, min_size=1, max_size=8)},
    optional={"add_generation_prompt": st.booleans(), "tools": st.lists(tool, min_size=1, max_size=2)},
)


def chat_count(backend, request: dict):
    prompt = parse_request(copy.deepcopy(request), Settings())
    try:
        return backend.count_chat(prompt, KWARGS)
    except TemplateRejected:
        return "rejected"


@pytest.mark.parametrize("template", FAST_TEMPLATES)
@examples(300)
@given(request=chat_request)
def test_count_chat_equals_apply_chat_template(template, request):
    fast, hf = fast_backends(template)
    want = chat_count(hf, request)
    note(f"HF counted {want}")
    assert chat_count(fast, request) == want
    event("rejected by the template" if want == "rejected" else "counted")


# --- (c) the corpus ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", FAST_TEMPLATES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_fast_equals_autotokenizer(template, name):
    """Every corpus case, counted by each template's fast and HF backends: prompt and completion equal."""
    fast, hf = fast_backends(template)
    settings = Settings(date_string=GOLDEN_DATE, preload=False)
    body = json.dumps(envelope(CASES[name])).encode()
    counts = []
    for backend in (fast, hf):
        parsed = parse_envelope(body, settings)
        deadline = counting.Deadline(60_000)
        try:
            prompt = counting.count_prompt(backend, parsed.prompt, settings, deadline)
        except TemplateRejected:
            prompt = "rejected"
        counts.append((prompt, counting.count_completion(backend, parsed.completion, settings, deadline)))
    assert counts[0] == counts[1]
    assert counts[0][0] != "rejected"
