"""Which tokenizer counts a model, and the cache of loaded tokenizers (loaded once per process, thread-safe).

Like tiktoken's registry: a module-level cache, double-checked under a lock, errors that name the bad value.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import fastbpe
from .backend import Backend
from .errors import TokenizerUnavailable, UnknownModel
from .families import FAMILIES, HFFamily
from .mistral import TOKENIZER_FILES, MistralBackend
from .settings import Settings, default_hf_home
from .templates import EMBEDDED_TEMPLATES, embedded_template

log = logging.getLogger("tokencounter")

EMBEDDED_DIR = Path(__file__).parent / "data" / "llama3"
# Embedded name -> tokenizer directory (Llama 3.0-3.3 share one BPE; each has its own template).
EMBEDDED_DIRS = {name: EMBEDDED_DIR for name in EMBEDDED_TEMPLATES if name.startswith("llama-3")}
EMBEDDED_DIRS["llama-4"] = Path(__file__).parent / "data" / "llama4"
# sha256 of the embedded tokenizer.json files (pinned, with their provenance, by tests/test_embedded_tokenizer.py).
EMBEDDED_TOKENIZER_JSON_SHA256 = {
    "llama3": "5864c7ceb6035a031c5b1bee4240dcbedd5358909a98b4f7e490f47b89e02c7c",
    "llama4": "de688b5756d732126c72fee5ea1177fb48fd3164ce970763e8a49245724adc3e",
}
RETRY_AFTER_S = 30
# gpt-oss: rendered by openai_harmony as vLLM does (harmony.py), its o200k ranks in data/gpt-oss.
HARMONY = "gpt-oss"


def is_embedded(tokenizer: str) -> bool:
    """Shipped with the app (tokencounter/data, or mistral-common's data): never evicted."""
    return tokenizer in embedded_tokenizers()


def embedded_tokenizers() -> list[str]:
    """Every tokenizer name shipped with the app (each counts offline, with no configuration)."""
    return [*EMBEDDED_TEMPLATES, *TOKENIZER_FILES, *FAMILIES, HARMONY]


# A load still under way: the caller retries soon (a hub download takes seconds to a minute).
LOADING_RETRY_AFTER_S = 5
# Model names as clients send them ("Meta-Llama-3.1-8B-Instruct", "llama3.1:8b", "Llama-3-8B", ...).
_LLAMA = re.compile(r"llama[-_ ]?3(?:[._-]([123])(?![0-9]))?(?![0-9.])", re.IGNORECASE)
_LLAMA4 = re.compile(r"llama[-_ ]?4(?![0-9.])", re.IGNORECASE)
# Mistral's models served in vLLM's mistral mode, by the names their repos and API use -> mistral.TOKENIZER_FILES.
_MISTRAL = (
    (re.compile(r"mistral[-_ ]?nemo", re.IGNORECASE), "mistral-v3-tekken"),
    (re.compile(r"mistral[-_ ]large[-_ ](?:instruct[-_ ])?2411", re.IGNORECASE), "mistral-v7"),
    (re.compile(r"mistral[-_ ]large[-_ ](?:instruct[-_ ])?2407", re.IGNORECASE), "mistral-v3"),
    (re.compile(r"mistral[-_ ]7b[-_ ](?:instruct[-_ ])?v0\.3", re.IGNORECASE), "mistral-v3"),
    (re.compile(r"mixtral[-_ ]8x22b", re.IGNORECASE), "mistral-v3"),
    (re.compile(r"codestral[-_ ](?:22b|2405)", re.IGNORECASE), "mistral-v3"),
)
# The other families' embedded tokenizers (families.py), by the names their repos, Ollama and servers use. Each
# pattern keeps out the variants whose template or tokenizer differs (Qwen2.5-VL/Omni/Math, Qwen3's 2507, Coder,
# VL and Next releases, Gemma 3n): those stay with their family's 422 until mapped in TOKENCOUNTER_MODELS.
_OTHER_FAMILIES = (
    (
        re.compile(
            r"qwen[-_ ]?2\.5(?![0-9])(?![-_ ]?(?:vl|omni|math|audio))(?!.*[-_ .:/](?:vl|omni|math|audio)(?![a-z]))",
            re.IGNORECASE,
        ),
        "qwen2.5",
    ),
    (
        re.compile(
            r"qwen[-_ ]?3(?![0-9.])(?![-_ ]?(?:vl|omni|coder|next|embed|rerank|guard))(?!.*2507)", re.IGNORECASE
        ),
        "qwen3",
    ),
    (re.compile(r"gemma[-_ ]?3(?![0-9n])", re.IGNORECASE), "gemma-3"),
    (re.compile(r"gpt[-_ ]?oss", re.IGNORECASE), "gpt-oss"),  # vLLM's harmony path (harmony.py)
    # DeepSeek's R1 distills by their repo names, and Ollama's deepseek-r1 tags of the same models (its 8b tag is
    # now R1-0528-Qwen3-8B, another tokenizer: left out).
    (
        re.compile(r"deepseek[-_ ]?r1[-_ ]distill[-_ ]qwen|deepseek[-_ ]?r1:(?:1\.5|7|14|32)b", re.IGNORECASE),
        "deepseek-r1-distill-qwen",
    ),
    (
        re.compile(r"deepseek[-_ ]?r1[-_ ]distill[-_ ]llama|deepseek[-_ ]?r1:70b", re.IGNORECASE),
        "deepseek-r1-distill-llama",
    ),
)
# Names that clearly belong to a family with a tokenizer of its own: never counted as Llama 3 by default.
_FAMILIES = (
    ("DeepSeek", re.compile(r"deepseek", re.IGNORECASE)),
    ("Mistral", re.compile(r"mistral|mixtral|codestral|ministral|pixtral|magistral|devstral", re.IGNORECASE)),
    ("Qwen", re.compile(r"qwen|qwq", re.IGNORECASE)),
    ("Phi", re.compile(r"(?<![a-z])phi[-_ ]?[1-4](?![0-9])|(?<![a-z])phi(?![a-z])", re.IGNORECASE)),
    ("Gemma", re.compile(r"gemma", re.IGNORECASE)),
    ("gpt-oss", re.compile(r"gpt[-_ ]?oss", re.IGNORECASE)),
    (
        "OpenAI",
        re.compile(
            r"(?<![a-z])gpt[-_ ]?(?:3|4|5)|(?<![a-z0-9])o[134](?:-mini|-pro|-preview)?(?![a-z0-9])"
            r"|text-embedding|davinci|babbage",
            re.IGNORECASE,
        ),
    ),
    ("Claude", re.compile(r"claude", re.IGNORECASE)),
    ("Cohere Command", re.compile(r"command[-_ ]?r|(?<![a-z])aya(?![a-z])", re.IGNORECASE)),
    ("Falcon", re.compile(r"falcon", re.IGNORECASE)),
    ("Granite", re.compile(r"granite", re.IGNORECASE)),
    ("GLM", re.compile(r"(?<![a-z])(?:chat)?glm", re.IGNORECASE)),
    ("Yi", re.compile(r"(?<![a-z])yi[-_ ]", re.IGNORECASE)),
    ("InternLM", re.compile(r"internlm", re.IGNORECASE)),
    ("Baichuan", re.compile(r"baichuan", re.IGNORECASE)),
    ("Kimi", re.compile(r"kimi|moonshot", re.IGNORECASE)),
    ("Llama 2", re.compile(r"llama[-_ ]?2(?![0-9.])|codellama|code[-_ ]llama", re.IGNORECASE)),
    ("StarCoder", re.compile(r"starcoder", re.IGNORECASE)),
)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the response reports as the tokenizer that counted
    tokenizer: str  # an embedded name, a local directory or a hub id
    chat_template: str | None = None  # an embedded template name, a file, or None for the tokenizer's own
    # The model's name gave no hint of its family: the default tokenizer counted it (not part of the identity).
    assumed: bool = field(default=False, compare=False)


def embedded_alias(model: str) -> str | None:
    """The embedded tokenizer a model name refers to, if any (a Llama generation, a Mistral version or another
    family's model)."""
    for pattern, name in (*_OTHER_FAMILIES, *_MISTRAL):
        if pattern.search(model):
            return name
    if _LLAMA4.search(model):
        return "llama-4"
    match = _LLAMA.search(model)
    if not match:
        return None
    return f"llama-3.{match.group(1)}" if match.group(1) else "llama-3"


def family(model: str) -> str | None:
    """The model family a name clearly names, if any."""
    return next((name for name, pattern in _FAMILIES if pattern.search(model)), None)


def resolve(model: str | None, settings: Settings) -> ModelSpec:
    """The tokenizer for a request's `model`: TOKENCOUNTER_MODELS, then an embedded model's name, then the default
    for a name with no family hint (marked assumed). A name of another family is refused, never counted as Llama."""
    if not model:
        return _spec(settings.tokenizer, None, assumed=True)
    lowered = model.lower()
    for name, entry in settings.models.items():
        if name.lower() == lowered:
            return _spec(entry["tokenizer"], entry.get("chat_template"))
    spec = _by_name(model, settings.tokenizer)
    if spec is None:
        known = family(model)
        embedded = [name for name in embedded_tokenizers() if family(name) == known]
        shipped = f" (the embedded {known} tokenizers are {', '.join(embedded)})" if embedded else ""
        raise UnknownModel(
            f"the model is of the {known} family, and its tokenizer is not embedded here{shipped}; map the model "
            "name to its tokenizer (a local directory, a hub id or an embedded name) in TOKENCOUNTER_MODELS"
        )
    return spec


@lru_cache(maxsize=1024)  # a few dozen regex searches per name, and the same few names on every request
def _by_name(model: str, default: str) -> ModelSpec | None:
    """The spec a name implies with this default tokenizer, or None for a family with no tokenizer here."""
    known = family(model)
    alias = embedded_alias(model)
    if alias and (known is None or alias.startswith(known.lower())):
        return _spec(alias, None)
    if known is None:
        return _spec(default, None, assumed=True)
    if family(default) == known:  # the deployment's default is of this family
        return _spec(default, None)
    return None


def _spec(tokenizer: str, chat_template: str | None, assumed: bool = False) -> ModelSpec:
    if tokenizer in EMBEDDED_TEMPLATES:
        return ModelSpec(tokenizer, tokenizer, chat_template or tokenizer, assumed)
    if tokenizer in TOKENIZER_FILES or tokenizer == HARMONY:  # no chat template: their own renderers
        return ModelSpec(tokenizer, tokenizer, None, assumed)
    if tokenizer in FAMILIES:  # its own template, unless TOKENCOUNTER_MODELS names another
        return ModelSpec(tokenizer, tokenizer, chat_template, assumed)
    return ModelSpec(display_name(tokenizer), tokenizer, chat_template, assumed)


def display_name(tokenizer: str) -> str:
    """How answers, health and errors name a tokenizer: a hub id as it is, a local directory by its last
    component only (a configured path is the deployment's business, not the caller's)."""
    path_like = tokenizer.startswith(("/", ".", "~")) or "\\" in tokenizer or tokenizer.count("/") > 1
    if path_like or os.path.isdir(tokenizer):
        return os.path.basename(tokenizer.replace("\\", "/").rstrip("/")) or "tokenizer"
    return tokenizer


class Registry:
    """Loaded tokenizers, once per process; failed loads retried after a pause.

    Each load runs in its own thread and a request waits for it only as long as it may (its remaining
    budget), then gets a 503 with Retry-After while the load goes on: a slow hub never holds a request,
    and one tokenizer's load never holds another's. The embedded tokenizers and the default one are never
    evicted (the Llama 3 generations share one encoding); of the others, the least recently used go past
    TOKENCOUNTER_TOKENIZER_CACHE_SIZE.
    """

    def __init__(self) -> None:
        self._backends: OrderedDict[tuple[ModelSpec, bool], Backend] = OrderedDict()
        self._loading: dict[tuple[ModelSpec, bool], Future] = {}
        self._failures: dict[ModelSpec, tuple[float, str]] = {}
        self._lock = threading.Lock()  # guards the three dicts; held briefly, never during a load

    def get(self, spec: ModelSpec, settings: Settings, wait_s: float | None = None) -> Backend:
        """The backend for `spec`, loading it if needed; waits at most `wait_s` (None: until loaded)."""
        key = (spec, settings.fast_path)
        backend = self._backends.get(key)
        if backend is not None:
            with self._lock:
                if key in self._backends:
                    self._backends.move_to_end(key)
            return backend
        with self._lock:
            if key in self._backends:
                return self._backends[key]
            loading = self._loading.get(key)
            if loading is None:
                failed = self._failures.get(spec)
                if failed and time.monotonic() - failed[0] < RETRY_AFTER_S:
                    raise _unavailable(spec, failed[1])
                loading = self._loading[key] = Future()
                threading.Thread(
                    target=self._load, args=(key, settings, loading), name="tokencounter-load", daemon=True
                ).start()
        try:
            return loading.result(timeout=wait_s)
        except FutureTimeout:
            raise TokenizerUnavailable(
                f"the tokenizer {spec.name!r} is still loading; retry shortly",
                retry_after=LOADING_RETRY_AFTER_S,
            ) from None

    def _load(self, key: tuple[ModelSpec, bool], settings: Settings, loading: Future) -> None:
        spec = key[0]
        started = time.perf_counter()
        try:
            backend = load_backend(spec, settings)
        except Exception as exc:  # noqa: BLE001 - any failure to load is reported the same way
            reason = type(exc).__name__
            log.error("tokenizer %s could not be loaded: %s: %s", spec.name, reason, exc)
            with self._lock:
                self._failures[spec] = (time.monotonic(), reason)
                self._loading.pop(key, None)
            loading.set_exception(_unavailable(spec, reason))
            return
        log.info(
            "tokenizer %s loaded in %.0f ms (fast=%s)", spec.name, (time.perf_counter() - started) * 1000, backend.fast
        )
        with self._lock:
            self._failures.pop(spec, None)
            self._backends[key] = backend
            self._loading.pop(key, None)
            self._evict(settings)
        loading.set_result(backend)

    def _evict(self, settings: Settings) -> None:
        default = resolve(None, settings)
        evictable = [k for k in self._backends if not is_embedded(k[0].tokenizer) and k[0] != default]
        for key in evictable[: max(0, len(evictable) - settings.tokenizer_cache_size)]:
            del self._backends[key]

    def loaded(self) -> list[str]:
        return sorted({spec.name for spec, _ in list(self._backends)})

    def is_loaded(self, spec: ModelSpec, settings: Settings) -> bool:
        return (spec, settings.fast_path) in self._backends

    def failed(self) -> list[str]:
        return [spec.name for spec in list(self._failures)]

    def clear(self) -> None:
        with self._lock:
            self._backends.clear()
            self._failures.clear()
            self._loading.clear()


def _unavailable(spec: ModelSpec, reason: str) -> TokenizerUnavailable:
    return TokenizerUnavailable(
        f"the tokenizer {spec.name!r} could not be loaded ({reason}); check TOKENCOUNTER_TOKENIZER / "
        f"TOKENCOUNTER_MODELS and HF_TOKEN for gated models, then retry",
        retry_after=RETRY_AFTER_S,
    )


def _template_source(spec: ModelSpec) -> str | None:
    if spec.chat_template is None:
        return None
    if spec.chat_template in EMBEDDED_TEMPLATES:
        return embedded_template(spec.chat_template)
    return Path(spec.chat_template).read_text(encoding="utf-8")


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    if spec.tokenizer in TOKENIZER_FILES:
        return MistralBackend(spec.tokenizer)
    if spec.tokenizer == HARMONY:
        from .harmony import HarmonyBackend  # openai_harmony is imported only when gpt-oss is first counted

        return HarmonyBackend(settings.segment_cache_bytes)
    if spec.tokenizer in FAMILIES:
        family = FAMILIES[spec.tokenizer]
        if settings.fast_path and family.ranks is not None:
            return _fast_family(family, _template_source(spec), settings.segment_cache_bytes)
        return _load_hf(family.directory, _template_source(spec), family=family)
    directory = EMBEDDED_DIRS.get(spec.tokenizer) or Path(spec.tokenizer)
    template = _template_source(spec)
    if settings.fast_path and directory.is_dir():
        backend = _try_fast(directory, template, settings)
        if backend is not None:
            return backend
    return _load_hf(directory if directory.is_dir() else spec.tokenizer, template)


def _try_fast(directory: Path, template: str | None, settings: Settings):
    """A FastBackend when the directory holds Meta's Llama 3 or 4 BPE (checked, not assumed); else None."""
    ranks = next(
        (
            p
            for p in (directory / "original" / "tokenizer.model", directory / "tokenizer.model")
            if p.is_file() and p.stat().st_size > 1_000_000
        ),
        None,
    )
    tokenizer_file = directory / "tokenizer.json"
    if ranks is None or not (directory / "tokenizer_config.json").is_file() or not tokenizer_file.is_file():
        return None
    family = fastbpe.FAMILIES.get(fastbpe.sha256(ranks))
    if family is None:
        return None
    tokenizer_json = None
    if fastbpe.sha256(tokenizer_file) == EMBEDDED_TOKENIZER_JSON_SHA256[family.name]:
        # A pinned file (tested): its vocabulary is Meta's, so only its special tokens need reading.
        if family is fastbpe.LLAMA3:
            specials = fastbpe.meta_llama3_special_tokens()
        else:
            specials = fastbpe.checked_specials(fastbpe.leading_added_tokens(tokenizer_file) or [], family)
    else:
        tokenizer_json = fastbpe.load_tokenizer_json(tokenizer_file)
        specials = fastbpe.family_special_tokens(tokenizer_json, family)
        if specials is None or not _vocab_matches(tokenizer_json, ranks, family):
            return None
    if not specials:
        return None
    return _fast_backend(family, ranks, specials, directory, template, settings.segment_cache_bytes, tokenizer_json)


def _fast_family(family: HFFamily, template: str | None, cache_bytes: int) -> fastbpe.FastBackend:
    """An embedded family on the fast path: its pinned tokenizer.json's added tokens over its BPE's tiktoken ranks
    (tests/test_families.py proves the vocabularies equal and the counts equal AutoTokenizer's)."""
    import msgspec

    ranks = family.ranks_file
    bpe = fastbpe.FAMILIES[fastbpe.sha256(ranks)]
    tokenizer_json = msgspec.json.decode((family.directory / "tokenizer.json").read_bytes())
    specials = fastbpe.family_special_tokens(tokenizer_json, bpe)
    directory = family.directory
    backend = specials and _fast_backend(bpe, ranks, specials, directory, template, cache_bytes, tokenizer_json, family)
    if not backend:
        raise ValueError(f"{family.name}'s tokenizer files are not the {bpe.name} BPE the fast path counts with")
    return backend


def _fast_backend(
    bpe: fastbpe.Family,
    ranks: Path,
    specials: dict[str, int],
    directory: Path,
    template: str | None,
    cache_bytes: int,
    tokenizer_json: dict | None,
    family: HFFamily | None = None,
) -> fastbpe.FastBackend | None:
    """A FastBackend from a tokenizer directory's config (template, BOS and other tokens) and its tokenizer.json
    (whether its post-processor puts the BOS first, which added tokens are not special); None with no template.
    tokenizer_json None: a pinned Llama file, whose BOS is added and whose added tokens are all special (tested)."""
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = template or _config_template(config)
    if template is None:
        return None
    tokens = {key: _token_text(config.get(key)) for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    tokens = {key: value for key, value in tokens.items() if value}
    adds_bos, text_tokens = True, frozenset()
    if tokenizer_json is not None:
        adds_bos = fastbpe.post_processor_adds(tokenizer_json, tokens.get("bos_token"))
        added = tokenizer_json.get("added_tokens") or []
        text_tokens = frozenset(t["content"] for t in added if not t.get("special"))
    return fastbpe.FastBackend(
        bpe,
        ranks,
        specials,
        template,
        tokens,
        cache_bytes,
        adds_bos=adds_bos,
        text_tokens=text_tokens,
        model_family=family,
    )


def _config_template(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates, as transformers stores them
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _vocab_matches(tokenizer_json: dict, ranks_file: Path, family: fastbpe.Family) -> bool:
    """The tokenizer.json vocabulary is exactly the family's ranks (byte-level strings mapped back to bytes)."""
    ranks = fastbpe.load_ranks(ranks_file, family)
    # GPT-2's bytes_to_unicode, inverted: printable bytes stand for themselves, the rest are shifted past 255.
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = [b for b in range(256) if b not in kept]
    byte_of = {chr(b): b for b in kept} | {chr(256 + n): b for n, b in enumerate(shifted)}
    try:
        vocab = {bytes(byte_of[ch] for ch in token): rank for token, rank in tokenizer_json["model"]["vocab"].items()}
    except KeyError:
        return False
    return vocab == ranks


def _load_hf(source, template: str | None, family=None):
    hf_home = default_hf_home()
    if hf_home:
        os.environ.setdefault("HF_HOME", hf_home)
    from transformers import AutoTokenizer

    # trust_remote_code stays off: a hub repo's Python never runs here; its template runs in jinja's sandbox.
    # No login(): huggingface_hub reads HF_TOKEN from the environment for gated models.
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{source} has no chat template; set chat_template for it in TOKENCOUNTER_MODELS")
    from .hfbackend import HFBackend

    return HFBackend(tokenizer, template, family=family)


REGISTRY = Registry()
