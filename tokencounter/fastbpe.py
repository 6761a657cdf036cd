"""The fast path: Meta's Llama BPEs with tiktoken (Meta's own reference tokenizer) and a cache of counted segments.

A rendered prompt's count is the number of special tokens in it plus the counts of the plain-text pieces
between them, because the BPE splits on special tokens before anything else. Pieces are cached by their text,
so a conversation that resends its history costs only its new text.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import conversation, llama3_chat, templates
from .backend import RenderedChat, Rendering, byte_offsets_to_chars
from .budget import Deadline
from .datamodel import Prompt
from .families import HFFamily

# Meta's Llama 3 pre-tokenizer pattern (llama_models.llama3.tokenizer.Tokenizer.pat_str).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# sha256 of Meta's Llama 3 ranks file (llama-models 0.3.0 llama_models/llama3/tokenizer.model; hub original/).
LLAMA3_RANKS_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
LLAMA3_BASE_VOCAB = 128000
# Meta's Llama 4 pre-tokenizer pattern (llama_models.llama4.tokenizer.Tokenizer.O200K_PATTERN).
LLAMA4_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# Qwen's pre-tokenizer pattern (Qwen2.5, Qwen3 and the R1 Qwen distills' tokenizer.json): Llama 3's, digits one by one.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    """A BPE the fast path serves, identified by the sha256 of its ranks file."""

    name: str
    ranks_sha256: str
    pattern: str
    base_vocab: int
    # The tokenizer's normalizer, applied to the text between added tokens before it is split ("NFC" for Qwen).
    normalization: str | None = None
    # The ranks file lists ranks 0, 1, 2, ... in line order (the pinned file: tests/test_embedded_tokenizer.py loads
    # it both ways), so its ranks are the line numbers: 18 ms of Llama 3's cold start not spent parsing them.
    ranks_in_order: bool = False


LLAMA3 = Family("llama3", LLAMA3_RANKS_SHA256, LLAMA3_PATTERN, LLAMA3_BASE_VOCAB, ranks_in_order=True)
LLAMA4_RANKS_SHA256 = "d0bdbaf59b0762c8c807617e2d8ea51420eb1b1de266df2495be755c8e0ed6ed"
LLAMA4 = Family("llama4", LLAMA4_RANKS_SHA256, LLAMA4_PATTERN, 200000, ranks_in_order=True)
QWEN_RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN = Family("qwen", QWEN_RANKS_SHA256, QWEN_PATTERN, 151643, "NFC", ranks_in_order=True)
FAMILIES = {family.ranks_sha256: family for family in (LLAMA3, LLAMA4, QWEN)}
# Pieces shorter than this go to a small per-encoding dict instead of the LRU.
MIN_CACHED_CHARS = 64
SHORT_CACHE_ENTRIES = 4096
# Added tokens the fast path splits on: "<|name|>" (Llama, gpt-oss), or any "<...>" (Qwen's <think>, DeepSeek's
# <｜User｜>). In either form a token starting at a "<" can only end at the first closer after it.
_BAR_FORM = re.compile(r"<\|[^<>|\s]{1,128}\|>")
_ANGLE_FORM = re.compile(r"<[^>\s]{1,128}>")
# tiktoken's regex engine backtracks through `\s+(?!\S)` with the native stack: a whitespace run of a few
# hundred thousand characters overflows it (a Rust panic, not an exception). Texts holding a run this long
# are split into the same pieces by the `regex` module instead, and each piece goes to the BPE directly.
LONG_WHITESPACE = 20_000
# A run's first character only (the lookbehind fails at once inside a run), so the search stays linear.
_LONG_WHITESPACE = re.compile(rf"(?<!\s)\s{{{LONG_WHITESPACE}}}")
# Texts longer than this are counted in segments of about this size, the deadline checked between them.
SEGMENT_CHARS = 1 << 18
# Where the pre-tokenizers (Llama 3 and 4, Qwen) always end a piece: before a space that follows a
# non-space, and before a number that follows neither a number nor a space. No piece runs across such a
# point and no lookahead reaches past it, so counting the two sides apart is exact (tests/test_equivalence.py).
CUT_PATTERN = r"(?<=[^\p{White_Space}]) |(?<=[^\p{N}\p{White_Space}])\p{N}"


def has_long_whitespace(text: str) -> bool:
    """A whitespace run long enough to overflow tiktoken's regex stack (count such text with count_by_pieces)."""
    if len(text) < LONG_WHITESPACE:
        return False
    # Such a run spans two consecutive multiples of LONG_WHITESPACE // 2 and all between them: text where no such
    # stretch is whitespace has none, and is spared the search through all of it (1.4 ms per 100 KB of prose).
    step = LONG_WHITESPACE // 2
    if not any(text[i : i + step + 1].isspace() for i in range(0, len(text) - step, step) if text[i].isspace()):
        return False
    return _LONG_WHITESPACE.search(text) is not None


@functools.cache
def _non_starter_runs():
    import regex

    return regex.compile(r"\P{ccc=0}{32,}")


def canonically_ordered(text: str) -> str:
    """`text` with each long run of combining marks in canonical order (stable by combining class), which leaves
    it canonically equivalent, so its NFC is the same. CPython orders a run by insertion sort as it normalizes:
    600,000 alternating marks took 274 s; ordered first, they take milliseconds."""
    out, done = [], 0
    for run in _non_starter_runs().finditer(text):
        out += [text[done : run.start()], _ordered(run.group())]
        done = run.end()
    return "".join(out) + text[done:] if out else text


def _ordered(run: str) -> str:
    """Marks of combining class 0 in CPython's Unicode data stay where they are; those between them are sorted."""
    out, marks, combining = [], [], unicodedata.combining
    for char in run:
        if combining(char):
            marks.append(char)
        else:
            out += sorted(marks, key=combining)
            marks.clear()
            out.append(char)
    out += sorted(marks, key=combining)
    return "".join(out)


def count_by_pieces(encoding, pieces, text: str) -> int:
    """What `encoding.encode_ordinary(text)` counts, the pre-tokenizer's split done by `pieces` (the same pattern
    compiled by the `regex` module, which keeps no native stack) and each piece given to the BPE directly."""
    encode = encoding._encode_single_piece
    return sum(len(encode(piece)) for piece in pieces.findall(text))


@dataclass(frozen=True)
class _Patterns:
    pieces: object
    cut: object


# What an entry costs besides its string: the OrderedDict's hash slot and linked node, and the count (measured
# with tracemalloc on CPython 3.11: about 150 bytes with the dict's slack; tests/test_bounds.py checks the bound).
ENTRY_OVERHEAD_BYTES = 176


def entry_bytes(text: str) -> int:
    return sys.getsizeof(text) + ENTRY_OVERHEAD_BYTES


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SegmentCache:
    """A thread-safe LRU of text -> token count, bounded by the memory its entries take."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> int | None:
        # A hit takes no lock: each OrderedDict call is atomic under the GIL (a free-threaded build would need the
        # lock back), and an entry evicted between the two is only not moved (the order is a hint; the count is right).
        count = self._items.get(text)
        if count is not None:
            try:
                self._items.move_to_end(text)
            except KeyError:
                pass
        return count

    def put(self, text: str, count: int) -> None:
        size = entry_bytes(text)
        if size > self._max_bytes:
            return
        with self._lock:
            if text in self._items:
                return
            self._items[text] = count
            self._bytes += size
            while self._bytes > self._max_bytes:
                old, _ = self._items.popitem(last=False)
                self._bytes -= entry_bytes(old)

    def __len__(self) -> int:
        return len(self._items)


_ENCODINGS: dict[tuple, tuple] = {}
_ENCODINGS_LOCK = threading.Lock()


def shared_encoding(family: Family, ranks_file: Path, special_tokens: dict[str, int], cache_bytes: int):
    """One tiktoken Encoding and segment cache per BPE, shared by every template (Llama 3.0-3.3) that uses it."""
    key = (family.ranks_sha256, tuple(sorted(special_tokens.items())))
    with _ENCODINGS_LOCK:
        if key not in _ENCODINGS:
            import tiktoken

            ranks = load_ranks(ranks_file, family)
            encoding = tiktoken.Encoding(
                name=family.name, pat_str=family.pattern, mergeable_ranks=ranks, special_tokens=special_tokens
            )
            _ENCODINGS[key] = (encoding, SegmentCache(cache_bytes), {})
        return _ENCODINGS[key]


def load_ranks(path: Path, family: Family) -> dict[bytes, int]:
    """A tiktoken ranks file ("<base64 token> <rank>" lines) as tiktoken's load_tiktoken_bpe reads it, checked
    against the family's sha256 first; decoded with C-level maps, not a Python loop per line (56 ms against 88 ms for
    Llama 3's 128,000 ranks: part of every cold start)."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != family.ranks_sha256:
        raise ValueError(f"{path.name} does not match its pinned sha256")
    fields = data.split()
    if len(fields) % 2:
        raise ValueError(f"{path.name} is not a tiktoken ranks file")
    ranks = range(len(fields) // 2) if family.ranks_in_order else map(int, fields[1::2])
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), ranks, strict=True))


def meta_llama3_special_tokens() -> dict[str, int]:
    """Meta's 256 Llama 3 special tokens and their ids (llama_models.llama3.tokenizer.Tokenizer)."""
    named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<|image|>",
    ]
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(named))]
    return {token: LLAMA3_BASE_VOCAB + i for i, token in enumerate(named + reserved)}


class TiktokenText:
    """Counting text with a tiktoken Encoding: a segment cache, NFC where the family normalizes, long texts in
    segments between deadline checks, whitespace runs tiktoken's regex cannot take by pieces, and added-token text
    split out first (as HF and vLLM encode a rendered prompt). Set up by `_use_encoding`."""

    def _use_encoding(
        self,
        family: Family,
        ranks_file: Path,
        special_tokens: dict[str, int],
        cache_bytes: int,
        text_tokens: frozenset[str] = frozenset(),
    ) -> None:
        self.encoding, self.cache, self.short = shared_encoding(family, ranks_file, special_tokens, cache_bytes)
        self.pattern = family.pattern
        self.normalization = family.normalization
        self.special_tokens = frozenset(special_tokens)
        self.special_ids = frozenset(special_tokens.values())
        # Every added token is "<|name|>" (then each one starting at a "<|" ends at the first "|>") or at least
        # "<...>" (each ends at the first ">"): str.find walks the text at C speed, no further than the longest.
        bars = all(_BAR_FORM.fullmatch(t) for t in special_tokens)
        if not bars and not all(_ANGLE_FORM.fullmatch(t) for t in special_tokens):
            raise ValueError("added tokens outside the <...> form cannot be split out on the fast path")
        self.opener, self.closer = ("<|", "|>") if bars else ("<", ">")
        self.longest = max(map(len, special_tokens), default=0)
        # Added tokens that are not special (Qwen's <think>, <tool_call>): generated text keeps them as one token
        # each, as HF's encode with split_special_tokens does (it splits only the special ones).
        self.text_tokens = text_tokens

    def count_plain(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of generated text: special-token text counted as plain text, other added tokens as themselves."""
        if not self.text_tokens:
            return self.count_text(text, deadline)
        return self._count_split(text, self.text_tokens, deadline)

    def count_text(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of text holding no added token (or counting them as plain text)."""
        if len(text) < MIN_CACHED_CHARS:
            # Short pieces (roles, "\n\n", template boilerplate) repeat in every request: a small dict,
            # emptied when full, saves the call into tiktoken. Dict reads and writes are atomic.
            count = self.short.get(text)
            if count is None:
                count = self.count_segment(text) if text else 0
                if len(self.short) >= SHORT_CACHE_ENTRIES:
                    self.short.clear()
                self.short[text] = count
            return count
        count = self.cache.get(text)
        if count is None:
            if len(text) <= SEGMENT_CHARS:
                count = self.count_segment(text)
            else:
                count = 0
                for segment in self.segments(text):
                    if deadline is not None:
                        deadline.check()
                    count += self.count_segment(segment)
            self.cache.put(text, count)
        return count

    def count_segment(self, text: str) -> int:
        text = self.normalized(text)
        if has_long_whitespace(text):
            return self.count_by_pieces(text)
        return len(self.encoding.encode_ordinary(text))

    def normalized(self, text: str) -> str:
        """The text as the tokenizer's normalizer leaves it (NFC commutes with the cuts: they fall before a space
        or a digit, which nothing composes with)."""
        if self.normalization is None or unicodedata.is_normalized(self.normalization, text):
            return text
        return unicodedata.normalize(self.normalization, canonically_ordered(text))

    def segments(self, text: str, size: int = SEGMENT_CHARS):
        """`text` cut at CUT_PATTERN points about `size` characters apart (the rest whole if none is left)."""
        start = 0
        while len(text) - start > size:
            cut = self.regex.cut.search(text, start + max(size, 1))
            if cut is None:
                break
            yield text[start : cut.start()]
            start = cut.start()
        yield text[start:]

    def count_by_pieces(self, text: str) -> int:
        """What encode_ordinary counts, with the pre-tokenizer's split done by the `regex` module (no native
        stack recursion): proven equal to encode_ordinary by tests/test_equivalence.py."""
        return count_by_pieces(self.encoding, self.regex.pieces, text)

    @functools.cached_property
    def regex(self) -> _Patterns:
        """The patterns for long texts, in the `regex` module (Unicode classes), compiled on first use."""
        import regex

        return _Patterns(pieces=regex.compile(self.pattern), cut=regex.compile(CUT_PATTERN))

    def split_rendered(self, text: str, tokens: frozenset[str] | None = None):
        """(start, end) of each added token in `text` (or of `tokens`, a subset), leftmost first, as the tokenizers'
        own matching finds them.

        A token starting at an opener ends at the first closer after it, so one find per opener decides it, and
        the search never looks further than the longest token: text made of openers costs linear time.
        """
        find, opener, closer, longest = text.find, self.opener, self.closer, self.longest
        specials = self.special_tokens if tokens is None else tokens
        pos = find(opener)
        while pos != -1:
            end = find(closer, pos + len(opener), pos + longest)
            if end != -1 and text[pos : end + len(closer)] in specials:
                yield pos, end + len(closer)
                pos = find(opener, end + len(closer))
            else:
                pos = find(opener, pos + 1)

    def count_rendered(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of rendered text in which added-token text is that token (as HF and vLLM encode it)."""
        return self._count_split(text, self.special_tokens, deadline)

    def _count_split(self, text: str, tokens: frozenset[str], deadline: Deadline | None) -> int:
        """Tokens of text in which the text of `tokens` (added tokens) is that token and the rest is BPE text."""
        if self.opener not in text:  # most texts: one search at C speed, no token to split out
            return self.count_text(text, deadline)
        total, start = 0, 0
        for begin, end in self.split_rendered(text, tokens):
            if deadline is not None:
                deadline.check()
            total += self.count_text(text[start:begin], deadline) + 1
            start = end
        return total + self.count_text(text[start:], deadline)

    def rendered_tokens(self, text: str) -> tuple[str, list[tuple[int, bytes]]]:
        """The text (normalized between added tokens) and its tokens as (id, bytes), added tokens split out first
        (unsegmented encodes: for texts the explain size limit admits)."""
        out, pieces, start = [], [], 0
        for begin, end in [*self.split_rendered(text), (len(text), len(text))]:
            plain = self.normalized(text[start:begin])
            out += [(i, self.encoding.decode_single_token_bytes(i)) for i in self.encoding.encode_ordinary(plain)]
            pieces.append(plain)
            if end > begin:
                token = text[begin:end]
                out.append((self.encoding.encode_single_token(token), token.encode("utf-8")))
                pieces.append(token)
            start = end
        return "".join(pieces), out


class FastBackend(TiktokenText, RenderedChat):
    """Counts with tiktoken; built only for tokenizers whose BPE is one of FAMILIES and whose added tokens are
    known (Llama 3 and 4, Qwen, the DeepSeek R1 distills)."""

    fast = True

    def __init__(
        self,
        family: Family,
        ranks_file: Path,
        special_tokens: dict[str, int],
        chat_template: str,
        template_tokens: dict[str, str],
        cache_bytes: int,
        *,
        adds_bos: bool = True,
        text_tokens: frozenset[str] = frozenset(),
        model_family: HFFamily | None = None,
    ) -> None:
        self._use_encoding(family, ranks_file, special_tokens, cache_bytes, text_tokens)
        self.family = model_family
        self.template = templates.chat_template(chat_template)
        self.template_tokens = template_tokens
        # The token the tokenizer puts first with add_special_tokens (Llama's <|begin_of_text|>; none for Qwen and
        # the R1 distills, whose tokenizer.json adds none although their config names a BOS).
        self.bos = template_tokens.get("bos_token") if adds_bos else None

    def render_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> str:
        """The prompt text vLLM renders for this chat request: `defaults` are the server's template kwargs."""
        kwargs = conversation.template_kwargs(defaults, prompt.template_kwargs, self.template)
        return templates.render(
            self.template,
            conversation.for_template(prompt.messages, self.template),
            prompt.tools,
            {**self.template_tokens, **kwargs},
            deadline,
        )

    def count_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int:
        """Llama 3's templates count plain conversations without rendering them (llama3_chat.py); jinja the rest."""
        count = self.count_unrendered(prompt, defaults, deadline)
        return count if count is not None else super().count_chat(prompt, defaults, deadline)

    def count_unrendered(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int | None:
        """The chat's count without rendering it, where this template prints it plainly; else None."""
        if self.template.embedded not in llama3_chat.TEMPLATES:
            return None
        kwargs = conversation.template_kwargs(defaults, prompt.template_kwargs, self.template)
        count = llama3_chat.count(
            self.template.embedded,
            self.count_rendered,
            conversation.for_template(prompt.messages, self.template),
            prompt.tools,
            {**self.template_tokens, **kwargs},
            deadline,
        )
        return None if count is None else (1 if prompt.add_special_tokens and self.bos else 0) + count

    def explain_text(self, text: str, add_special_tokens: bool) -> Rendering:
        """The tokens of prompt text, added-token text split out first."""
        text, tokens = self.rendered_tokens(text)
        spans = byte_offsets_to_chars(text, [piece for _, piece in tokens])
        listed = [(i, a, b, i in self.special_ids) for (i, _), (a, b) in zip(tokens, spans, strict=True)]
        if add_special_tokens and self.bos:
            listed.insert(0, (self.encoding.encode_single_token(self.bos), 0, 0, True))
        return Rendering(text, listed)

    def count_prompt_text(self, text: str, add_special_tokens: bool, deadline: Deadline | None = None) -> int:
        """Prompt text with special-token text parsed, after the BOS the tokenizer adds with add_special_tokens."""
        return (1 if add_special_tokens and self.bos else 0) + self.count_rendered(text, deadline)


def family_special_tokens(tokenizer_json: dict, family: Family) -> dict[str, int] | None:
    """The added tokens of a tokenizer.json if, and only if, it is this family's BPE; else None.

    Checks what decides the count: a BPE model with the family's normalizer (or none), its split pattern,
    byte-level pre-tokenization and only "<...>" added tokens above the base ranks.
    """
    model = tokenizer_json.get("model") or {}
    normalizer = {"type": family.normalization} if family.normalization else None
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") != normalizer:
        return None
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    if split.get("type") != "Split" or (split.get("pattern") or {}).get("Regex") != family.pattern:
        return None
    if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex", True):
        return None
    if len(model.get("vocab") or {}) != family.base_vocab:
        return None
    return checked_specials(tokenizer_json.get("added_tokens") or [], family)


def checked_specials(added: list[dict], family: Family) -> dict[str, int] | None:
    """Added tokens as {text: id}, if all are matched on the raw text as they are (not normalized, no stripping,
    not whole-word only), sit above the base ranks and share one of the forms TiktokenText splits on; else None."""
    specials = {}
    for token in added:
        flags = ("normalized", "lstrip", "rstrip", "single_word")
        if any(token.get(flag) for flag in flags) or token["id"] < family.base_vocab:
            return None
        specials[token["content"]] = token["id"]
    if not (all(map(_BAR_FORM.fullmatch, specials)) or all(map(_ANGLE_FORM.fullmatch, specials))):
        return None
    return specials


def post_processor_adds(tokenizer_json: dict, token: str | None) -> bool:
    """Whether the tokenizer puts `token` before a single text with add_special_tokens: a TemplateProcessing step
    (alone or in a Sequence) whose single template holds it."""
    if token is None:
        return False
    processor = tokenizer_json.get("post_processor") or {}
    steps = processor.get("processors") or [] if processor.get("type") == "Sequence" else [processor]
    return any(
        item.get("SpecialToken", {}).get("id") == token
        for step in steps
        if step.get("type") == "TemplateProcessing"
        for item in step.get("single") or []
    )


def load_tokenizer_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def leading_added_tokens(path: Path) -> list[dict] | None:
    """The added_tokens of a key-sorted tokenizer.json (ours: "added_tokens" is its first key), without
    decoding the vocabulary after it."""
    text = path.read_text(encoding="utf-8")
    prefix = '{"added_tokens":'
    if not text.startswith(prefix):
        return None
    added, _ = json.JSONDecoder().raw_decode(text, len(prefix))
    return added
