"""Settings: typed, defaulted, and errors that name the variable and the bad value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tokencounter.settings import Settings, default_hf_home

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.tokenizer, s.auth_level, s.max_body_bytes, s.count_stop_token) == ("llama-3", "function", 8388608, True)


def test_values_are_parsed():
    s = Settings.from_env(
        {
            "TOKENCOUNTER_TOKENIZER": "meta-llama/Llama-3.1-8B-Instruct",
            "TOKENCOUNTER_COUNT_STOP_TOKEN": "false",
            "TOKENCOUNTER_MAX_DEPTH": "10",
            "TOKENCOUNTER_AUTH_LEVEL": "ANONYMOUS",
            "TOKENCOUNTER_MODELS": json.dumps(
                {"a": "llama-3.1", "b": {"tokenizer": "/x", "chat_template": "/t.jinja"}}
            ),
            "TOKENCOUNTER_DATE_STRING": " 01 Jan 2025 ",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=k",
        }
    )
    assert s.tokenizer == "meta-llama/Llama-3.1-8B-Instruct" and s.count_stop_token is False
    assert s.max_depth == 10 and s.auth_level == "anonymous" and s.date_string == "01 Jan 2025"
    assert s.models == {"a": {"tokenizer": "llama-3.1"}, "b": {"tokenizer": "/x", "chat_template": "/t.jinja"}}
    assert s.appinsights_connection_string == "InstrumentationKey=k"


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("TOKENCOUNTER_MAX_BODY_BYTES", "big", ["TOKENCOUNTER_MAX_BODY_BYTES", "'big'"]),
        ("TOKENCOUNTER_MAX_DEPTH", "2", ["TOKENCOUNTER_MAX_DEPTH", ">= 4", "2"]),
        ("TOKENCOUNTER_FAST_PATH", "maybe", ["TOKENCOUNTER_FAST_PATH", "'maybe'"]),
        ("TOKENCOUNTER_AUTH_LEVEL", "root", ["TOKENCOUNTER_AUTH_LEVEL", "'root'", "function"]),
        ("TOKENCOUNTER_MODELS", "{oops", ["TOKENCOUNTER_MODELS", "JSON"]),
        ("TOKENCOUNTER_MODELS", '{"a": {"tokeniser": "x"}}', ["TOKENCOUNTER_MODELS['a']", "tokeniser"]),
    ],
)
def test_bad_values_name_the_setting(name, value, words):
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: value})
    for word in words:
        assert word in str(info.value)


def test_hf_home_on_azure_only():
    assert default_hf_home({}) is None
    assert default_hf_home({"WEBSITE_SITE_NAME": "app", "HF_HOME": "/mine"}) is None
    assert default_hf_home({"WEBSITE_SITE_NAME": "app"}).endswith("huggingface")


def test_every_setting_is_documented():
    """Each TOKENCOUNTER_* variable read in settings.py is in local.settings.sample.json and README."""
    source = (ROOT / "tokencounter" / "settings.py").read_text()
    names = {"TOKENCOUNTER_" + n for n in re.findall(r'_(?:raw|bool|int|choice)\(env, "([A-Z_]+)"', source)}
    names |= {"TOKENCOUNTER_MODELS", "APPLICATIONINSIGHTS_CONNECTION_STRING", "HF_TOKEN", "HF_HOME"}
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    readme = (ROOT / "README.md").read_text()
    assert len(names) > 15
    assert sorted(n for n in names if n not in sample) == []
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
