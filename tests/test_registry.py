"""Which tokenizer counts which model; loading from local directories (the hub path); failures become 503."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from conftest import GOLDEN, env, post
from corpus import CASES, envelope

from tokencounter import registry, service
from tokencounter.errors import UnknownModel
from tokencounter.registry import REGISTRY, embedded_alias, resolve
from tokencounter.settings import Settings


@pytest.mark.parametrize(
    "model, alias",
    [
        ("Llama-3-8B", "llama-3"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "llama-3"),
        ("llama3", "llama-3"),
        ("llama3:8b", "llama-3"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1"),
        ("meta-llama/Llama-3.1-405B-Instruct-FP8", "llama-3.1"),
        ("llama3.1:8b", "llama-3.1"),
        ("Meta-Llama-3_1-70B", "llama-3.1"),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama-3.2"),
        ("llama3.2", "llama-3.2"),
        ("Llama-3.3-70B-Instruct", "llama-3.3"),
        ("llama-3.3-70b-versatile", "llama-3.3"),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama-4"),
        ("Llama-4-Maverick-17B-128E-Instruct-FP8", "llama-4"),
        ("llama4:scout", "llama-4"),
        ("gpt-4o", None),
        ("mistral-7b", None),
        ("llama-2-7b", None),
        ("codellama-34b", None),
        ("llama-30b", None),
    ],
)
def test_embedded_alias(model, alias):
    assert embedded_alias(model) == alias


def test_models_setting_wins_over_aliases(tmp_path):
    settings = Settings(models={"Llama-3-8B": {"tokenizer": "llama-3.3"}}, preload=False)
    assert resolve("llama-3-8b", settings).name == "llama-3.3"
    assert resolve("unknown-model", settings).name == "llama-3"
    assert resolve(None, Settings(tokenizer="llama-3.1")).name == "llama-3.1"


@pytest.fixture
def hf_dir(tmp_path):
    """A local copy of the tokenizer without Meta's ranks file: served by AutoTokenizer, like a hub download."""
    target = tmp_path / "my-llama"
    shutil.copytree(registry.EMBEDDED_DIR, target, ignore=shutil.ignore_patterns("original"))
    return target


@pytest.mark.parametrize("name", ["simple", "unicode", "special_token_text", "n_choices", "content_parts"])
def test_local_directory_through_autotokenizer(hf_dir, name):
    settings = Settings(tokenizer=str(hf_dir), preload=False)
    case = dict(CASES[name], request={**CASES[name]["request"], "model": "some-private-model"})
    reply = post(envelope(case), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["tokenizer"] == "my-llama"
    backend = REGISTRY.get(resolve("some-private-model", settings), settings)
    assert backend.fast is False
    assert reply.payload["usage"]["prompt_tokens"] == GOLDEN[name]["prompt_tokens"]
    assert reply.payload["usage"]["completion_tokens"] == GOLDEN[name]["completion_tokens"]


def test_local_directory_with_meta_ranks_gets_fast_path(tmp_path):
    target = tmp_path / "llama-copy"
    shutil.copytree(registry.EMBEDDED_DIR, target)
    settings = Settings(tokenizer=str(target), preload=False)
    backend = REGISTRY.get(resolve(None, settings), settings)
    assert backend.fast is True


@pytest.mark.parametrize("post_processor", ["kept", "dropped"])
def test_a_local_directory_reads_its_added_tokens_and_bos_from_its_files(tmp_path, post_processor):
    """A tokenizer.json with a non-special added token, or with no BOS template, on the fast path counts as
    AutoTokenizer counts it (review: the fast path once treated every added token as special, and always added
    the BOS)."""
    target = tmp_path / "llama-edited"
    shutil.copytree(registry.EMBEDDED_DIR, target)
    data = json.loads((target / "tokenizer.json").read_text())
    next(t for t in data["added_tokens"] if t["content"] == "<|reserved_special_token_2|>")["special"] = False
    if post_processor == "dropped":
        data["post_processor"] = None
    (target / "tokenizer.json").write_text(json.dumps(data))
    fast = registry.load_backend(resolve(str(target), Settings(preload=False)), Settings(preload=False))
    hf = registry.load_backend(resolve(str(target), Settings(preload=False)), Settings(fast_path=False, preload=False))
    assert fast.fast is True and hf.fast is False
    text = "a<|reserved_special_token_2|>b<|eot_id|>c " * 3
    assert fast.count_plain(text) == hf.count_plain(text)
    for bos in (True, False):
        assert fast.count_prompt_text(text, bos) == hf.count_prompt_text(text, bos)


def test_tampered_tokenizer_json_falls_back(tmp_path):
    """A different vocabulary beside Meta's ranks file is not trusted to the fast path."""
    target = tmp_path / "tampered"
    shutil.copytree(registry.EMBEDDED_DIR, target)
    data = json.loads((target / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = "Ġthe", "Ġand"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (target / "tokenizer.json").write_text(json.dumps(data))
    settings = Settings(tokenizer=str(target), preload=False)
    assert REGISTRY.get(resolve(None, settings), settings).fast is False


def test_chat_template_override_from_file(hf_dir, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    settings = Settings(models={"plain": {"tokenizer": str(hf_dir), "chat_template": str(template)}}, preload=False)
    reply = post(env({"model": "plain", "messages": [{"role": "user", "content": "hello world"}]}), settings)
    assert reply.status == 200 and reply.payload["usage"]["prompt_tokens"] == 2


def wait_for_failure(settings: Settings, timeout_s: float = 90):
    """Requests until the load has failed (503 with the long Retry-After), not merely still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = post(env({"model": "x", "messages": [{"role": "user", "content": "hi"}]}), settings)
        assert reply.status == 503 and reply.payload["error"]["code"] == "tokenizer_unavailable"
        assert reply.headers["Retry-After"] in (str(registry.RETRY_AFTER_S), str(registry.LOADING_RETRY_AFTER_S))
        if reply.headers["Retry-After"] == str(registry.RETRY_AFTER_S) or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["/nonexistent/tokenizer/dir", "no-such-org/no-such-model-offline"])
def test_unloadable_tokenizer_is_503(source, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(tokenizer=source, preload=False)
    first = wait_for_failure(settings)
    assert first.headers["Retry-After"] == str(registry.RETRY_AFTER_S)
    assert "Traceback" not in first.payload["error"]["message"]
    # The cause is logged once; a second request within the pause is answered without reloading.
    again = post(env({"model": "x", "messages": [{"role": "user", "content": "hi"}]}), settings)
    assert again.status == 503
    assert sum("could not be loaded" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.timeout(60)
def test_a_slow_load_never_holds_a_request_past_its_budget(monkeypatch, tmp_path):
    """A hub that hangs: the request gets 503 + Retry-After at its budget while the load goes on in the
    background; other tokenizers answer meanwhile; once loaded, the tokenizer counts."""
    real_load = registry.load_backend
    release = threading.Event()

    def slow_load(spec, settings):
        if spec.tokenizer == "slow-org/slow-model":
            release.wait(30)
            return real_load(resolve("llama3", settings), settings)
        return real_load(spec, settings)

    monkeypatch.setattr(registry, "load_backend", slow_load)
    settings = Settings(time_budget_ms=400, preload=False, models={"slow": {"tokenizer": "slow-org/slow-model"}})
    body = env({"model": "slow", "messages": [{"role": "user", "content": "hello world"}]})
    started = time.perf_counter()
    waiting = post(body, settings)
    assert time.perf_counter() - started < 0.4 + 1.0
    assert waiting.status == 503 and waiting.headers["Retry-After"] == str(registry.LOADING_RETRY_AFTER_S)
    assert "slow-org/slow-model" in waiting.payload["error"]["message"]
    other = post(env({"model": "llama3", "messages": [{"role": "user", "content": "hello world"}]}), settings)
    assert other.status == 200
    release.set()
    for _ in range(100):
        loaded = post(body, settings)
        if loaded.status == 200:
            break
        time.sleep(0.05)
    assert loaded.status == 200 and loaded.payload["usage"] == other.payload["usage"]
    REGISTRY.clear()


@pytest.mark.parametrize(
    "configured, shown",
    [
        ("/home/site/wwwroot/models/secret-tokenizer", "secret-tokenizer"),
        ("./models/tok/", "tok"),
        ("C:\\models\\tok", "tok"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("llama-3.1", "llama-3.1"),
    ],
)
def test_health_and_errors_name_a_failed_tokenizer_never_its_path(configured, shown, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve(None, Settings(tokenizer=configured))
    assert spec.name == shown
    if configured.startswith(("/", ".", "C:")):
        settings = Settings(tokenizer=configured, preload=False)
        reply = wait_for_failure(settings)
        health = service.health(settings)
        assert shown in health.payload["failed"] and configured not in json.dumps(health.payload)
        assert configured not in json.dumps(reply.payload)
        REGISTRY.clear()


def test_failed_model_does_not_stop_others(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(models={"broken": {"tokenizer": "/nonexistent"}}, preload=False)
    assert post(env({"model": "broken", "messages": [{"role": "user", "content": "x"}]}), settings).status == 503
    assert post(env({"model": "llama3", "messages": [{"role": "user", "content": "x"}]}), settings).status == 200


def test_upstream_usage_needs_no_tokenizer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(tokenizer="/nonexistent", preload=False)
    reply = post(
        envelope(CASES["upstream_usage"] | {"request": {"messages": [{"role": "user", "content": "Hi"}]}}), settings
    )
    assert reply.status == 200 and reply.payload["source"] == "upstream"


def test_cache_is_bounded(tmp_path):
    """Other tokenizers are evicted least recently used first; the embedded ones and the default never are."""
    models = {}
    for name in ("a", "b", "c"):
        shutil.copytree(registry.EMBEDDED_DIR, tmp_path / name)
        models[name] = {"tokenizer": str(tmp_path / name)}
    settings = Settings(tokenizer_cache_size=2, preload=False, models=models)
    REGISTRY.clear()
    for name in ("llama-3", "llama-3.1", "a", "b", "llama-3.2", "c", "llama-3.3"):
        REGISTRY.get(resolve(name, settings), settings)
    assert REGISTRY.loaded() == ["b", "c", "llama-3", "llama-3.1", "llama-3.2", "llama-3.3"]
    REGISTRY.clear()


@pytest.mark.parametrize(
    ("model", "tokenizer"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-v3"),
        ("mistral-7b-instruct-v0.3", "mistral-v3"),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "mistral-v3"),
        ("mistralai/Codestral-22B-v0.1", "mistral-v3"),
        ("codestral-2405", "mistral-v3"),
        ("mistralai/Mistral-Nemo-Instruct-2407", "mistral-v3-tekken"),
        ("open-mistral-nemo", "mistral-v3-tekken"),
        ("mistralai/Mistral-Large-Instruct-2411", "mistral-v7"),
        ("mistral-large-2411", "mistral-v7"),
        ("mistralai/Mistral-Large-Instruct-2407", "mistral-v3"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1"),
        ("NousResearch/Hermes-3-Llama-3.1-8B", "llama-3.1"),
    ],
)
def test_names_route_to_their_own_tokenizer(model, tokenizer):
    spec = resolve(model, Settings())
    assert (spec.name, spec.assumed) == (tokenizer, False)


@pytest.mark.parametrize(
    "model",
    [
        "Qwen/QwQ-32B",
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
        "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
        "deepseek-ai/DeepSeek-V3",
        "microsoft/Phi-3-mini-4k-instruct",
        "phi4",
        "google/gemma-2-9b-it",
        "gpt-4o",
        "o3-mini",
        "text-embedding-3-small",
        "claude-3-5-sonnet",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "mistralai/Ministral-8B-Instruct-2410",
        "meta-llama/Llama-2-7b-chat-hf",
        "codellama/CodeLlama-7b-Instruct-hf",
        "CohereForAI/c4ai-command-r-v01",
        "ibm-granite/granite-3.1-8b-instruct",
    ],
)
def test_other_families_are_refused_never_counted_as_llama(model, settings):
    with pytest.raises(UnknownModel, match="TOKENCOUNTER_MODELS"):
        resolve(model, settings)
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "hi"}]}), settings)
    assert reply.status == 422 and reply.payload["error"]["code"] == "unknown_model"
    assert model not in reply.payload["error"]["message"]


@pytest.mark.parametrize("model", ["my-company/support-bot-v7", "finetune-2024-11", None])
def test_no_family_hint_uses_the_default_and_says_so(model, settings, caplog):
    request = {"messages": [{"role": "user", "content": "hi"}]} | ({"model": model} if model else {})
    with caplog.at_level("WARNING", logger="tokencounter"):
        reply = post(env(request), settings)
    assert reply.status == 200
    assert reply.payload["tokenizer"] == "llama-3" and reply.payload["tokenizer_assumed"] is True
    assert "model not recognised" in caplog.text and (model is None or model not in caplog.text)


def test_a_configured_name_or_default_of_the_family_is_used(settings):
    mapped = Settings(models={"Qwen/Qwen2.5-7B-Instruct": {"tokenizer": "llama-3.1"}})
    spec = resolve("qwen/qwen2.5-7b-instruct", mapped)
    assert (spec.name, spec.assumed) == ("llama-3.1", False)
    own_default = Settings(tokenizer="/models/QwQ-32B")
    spec = resolve("Qwen/QwQ-32B", own_default)
    assert (spec.tokenizer, spec.assumed) == ("/models/QwQ-32B", False)


def test_answers_name_the_vllm_version_followed(settings):
    reply = post(env({"model": "llama-3.1", "messages": [{"role": "user", "content": "hi"}]}), settings)
    assert reply.payload["follows"] == "vLLM 0.33"
