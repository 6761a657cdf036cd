"""Every setting of tokencounter, read from environment variables in this one place, typed, with its default.

Documented in README.md ("Settings") and local.settings.sample.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

PREFIX = "TOKENCOUNTER_"


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    return value.strip() if value is not None and value.strip() != "" else None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{PREFIX}{name} must be true or false, got {value!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{PREFIX}{name} must be >= {minimum}, got {number}")
    return number


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_raw(env, name) or default).lower()
    if value not in choices:
        raise ValueError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _json_object(env: Mapping[str, str], name: str, what: str) -> dict:
    value = _raw(env, name)
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{PREFIX}{name} must be a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{PREFIX}{name} must be a JSON object of {what}")
    return data


def _models(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    data = _json_object(env, "MODELS", "model name -> tokenizer")
    models: dict[str, dict[str, str]] = {}
    for name, spec in data.items():
        if isinstance(spec, str):
            spec = {"tokenizer": spec}
        if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
            raise ValueError(f"{PREFIX}MODELS[{name!r}] must be a string or an object of strings")
        unknown = set(spec) - {"tokenizer", "chat_template"}
        if unknown:
            raise ValueError(f"{PREFIX}MODELS[{name!r}] has unknown keys {sorted(unknown)}")
        models[name] = spec
    return models


@dataclass(frozen=True)
class Settings:
    # Default tokenizer: an embedded name (llama-3, llama-3.1, llama-3.2, llama-3.3), a local directory or a hub id.
    tokenizer: str = "llama-3"
    # Model name -> tokenizer (and optional chat template) for requests whose `model` names it.
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    # Count the generated stop token (<|eot_id|>) when finish_reason is "stop" or "tool_calls", as vLLM does.
    count_stop_token: bool = True
    # The date 3.1+ templates render ("26 Jul 2024"); unset: each template's own default, as vLLM renders it.
    date_string: str | None = None
    # Server-side chat_template_kwargs (vLLM's --default-chat-template-kwargs): under each request's own.
    chat_template_kwargs: dict = field(default_factory=dict)
    # Recount even when the model response already carries `usage`.
    always_recount: bool = False
    # Count Llama 3 BPE with tiktoken and a segment cache (exactly equal to the AutoTokenizer path).
    fast_path: bool = True
    # Load the default tokenizer in the background when the worker starts.
    preload: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    max_messages: int = 4096
    max_depth: int = 64
    # A chat template may render at most this many characters per byte of the body (plus 256 KiB).
    max_render_ratio: int = 8
    time_budget_ms: int = 8_000
    # Memory (bytes) of already counted text kept for reuse (growing conversations), entries' overhead included.
    segment_cache_bytes: int = 32 * 1024 * 1024
    # Tokenizers kept loaded besides the embedded ones and the default, which are never evicted.
    tokenizer_cache_size: int = 4
    auth_level: str = "function"
    # Key the local host requires in x-functions-key / ?code= (Azure manages its own keys).
    function_key: str | None = None
    # Where metrics go when a call asks the function to emit them (x-tokencounter-emit; the one-way policy).
    appinsights_connection_string: str | None = None
    # Serve the playground page at /api/playground/ from the function app too (the local host always serves it at /).
    playground: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            tokenizer=_raw(env, "TOKENIZER") or cls.tokenizer,
            models=_models(env),
            count_stop_token=_bool(env, "COUNT_STOP_TOKEN", cls.count_stop_token),
            date_string=_raw(env, "DATE_STRING"),
            chat_template_kwargs=_json_object(env, "CHAT_TEMPLATE_KWARGS", "template variable -> value"),
            always_recount=_bool(env, "ALWAYS_RECOUNT", cls.always_recount),
            fast_path=_bool(env, "FAST_PATH", cls.fast_path),
            preload=_bool(env, "PRELOAD", cls.preload),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, 1),
            max_messages=_int(env, "MAX_MESSAGES", cls.max_messages, 1),
            max_depth=_int(env, "MAX_DEPTH", cls.max_depth, 4),
            max_render_ratio=_int(env, "MAX_RENDER_RATIO", cls.max_render_ratio, 1),
            time_budget_ms=_int(env, "TIME_BUDGET_MS", cls.time_budget_ms, 1),
            segment_cache_bytes=_int(env, "SEGMENT_CACHE_BYTES", cls.segment_cache_bytes, 0),
            tokenizer_cache_size=_int(env, "TOKENIZER_CACHE_SIZE", cls.tokenizer_cache_size, 1),
            auth_level=_choice(env, "AUTH_LEVEL", cls.auth_level, ("anonymous", "function", "admin")),
            playground=_bool(env, "PLAYGROUND", cls.playground),
            function_key=_raw(env, "FUNCTION_KEY"),
            appinsights_connection_string=(env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip() or None,
        )

    @property
    def template_defaults(self) -> dict:
        """The server's chat_template_kwargs, the pinned date (TOKENCOUNTER_DATE_STRING) over them."""
        return {**self.chat_template_kwargs, **({"date_string": self.date_string} if self.date_string else {})}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings.from_env()


def default_hf_home(env: Mapping[str, str] | None = None) -> str | None:
    """On Azure (read-only app directory) the hub cache goes to a writable temp dir unless HF_HOME is set."""
    env = os.environ if env is None else env
    if env.get("HF_HOME") or not env.get("WEBSITE_SITE_NAME"):
        return None
    return os.path.join(tempfile.gettempdir(), "huggingface")
