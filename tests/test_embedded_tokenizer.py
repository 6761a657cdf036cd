"""The embedded Llama 3 tokenizer is exactly what scripts/build_embedded_tokenizer.py makes from Meta's file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tokencounter import fastbpe, harmony, registry
from tokencounter.families import FAMILIES

DATA = Path(registry.EMBEDDED_DIR)
DATA4 = registry.EMBEDDED_DIRS["llama-4"]
PROVENANCE = json.loads((DATA / "PROVENANCE.json").read_text())
PROVENANCE4 = json.loads((DATA4 / "PROVENANCE.json").read_text())
# The official templates, pinned by the sha256 of ../shared/reference/chat-templates (3.3 reuses 3.1's).
TEMPLATE_SHA256 = {
    "llama-3.1": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "llama-3.2": "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4",
    "llama-3.3": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "llama-3": "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122",
    # transformers' Llama 4 processor template (transformers 5.23.0 models/llama4/processing_llama4.py).
    "llama-4": "95a231a15c8c976ac511e62c6fdf477ea9e3ca7a87cbb9974e0dd653eccb4563",
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "directory, provenance, name",
    [(DATA, PROVENANCE, n) for n in sorted(PROVENANCE["files"])]
    + [(DATA4, PROVENANCE4, n) for n in sorted(PROVENANCE4["files"])],
)
def test_files_match_provenance(directory, provenance, name):
    assert sha(directory / name) == provenance["files"][name]


def test_llama4_provenance_and_license():
    from llama_models.llama4 import tokenizer as meta4

    assert PROVENANCE4["source_sha256"] == sha(Path(meta4.__file__).with_name("tokenizer.model"))
    assert "LLAMA 4 COMMUNITY LICENSE AGREEMENT" in (DATA4 / "LICENSE").read_text()
    assert (DATA4 / "NOTICE").read_text().startswith("Llama 4 is licensed under the Llama 4 Community License")
    config = json.loads((DATA4 / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|eot|>"
    assert config["chat_template"] == (DATA.parent / "templates" / "llama-4.jinja").read_text()


def test_llama4_template_is_transformers_own():
    from transformers.models.llama4 import processing_llama4

    assert (DATA.parent / "templates" / "llama-4.jinja").read_text() == processing_llama4.chat_template


def test_provenance_names_meta_source():
    assert PROVENANCE["source"].startswith("PyPI llama-models==0.3.0")
    assert PROVENANCE["source_sha256"] == fastbpe.LLAMA3_RANKS_SHA256
    assert PROVENANCE["files"]["original/tokenizer.model"] == fastbpe.LLAMA3_RANKS_SHA256
    assert PROVENANCE["files"]["tokenizer.json"] == registry.EMBEDDED_TOKENIZER_JSON_SHA256["llama3"]
    assert PROVENANCE4["files"]["tokenizer.json"] == registry.EMBEDDED_TOKENIZER_JSON_SHA256["llama4"]
    ranks4 = PROVENANCE4["files"]["original/tokenizer.model"]
    assert PROVENANCE4["source_sha256"] == ranks4 == fastbpe.LLAMA4.ranks_sha256


def test_ranks_are_metas_own_file():
    """The shipped ranks are byte-identical to the tokenizer.model in Meta's installed llama-models package."""
    from llama_models.llama3 import tokenizer as meta

    assert sha(Path(meta.__file__).with_name("tokenizer.model")) == fastbpe.LLAMA3_RANKS_SHA256


def test_license_and_notice_ship_with_it():
    assert "META LLAMA 3 COMMUNITY LICENSE AGREEMENT" in (DATA / "LICENSE").read_text()
    assert (
        (DATA / "NOTICE")
        .read_text()
        .startswith(
            "Meta Llama 3 is licensed under the Meta Llama 3 Community License, Copyright © Meta Platforms, Inc."
        )
    )


@pytest.mark.parametrize("name", sorted(TEMPLATE_SHA256))
def test_templates_are_official(name):
    assert sha(DATA.parent / "templates" / f"{name}.jinja") == TEMPLATE_SHA256[name]


def test_reference_templates_unchanged():
    """When ../shared/reference is present, the embedded copies equal it byte for byte."""
    reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "chat-templates"
    if not reference.is_dir():
        pytest.skip("shared/reference not beside this checkout")
    for name, source in (
        ("llama-3.1", "meta-llama-Llama-3.1-8B-Instruct"),
        ("llama-3.2", "meta-llama-Llama-3.2-3B-Instruct"),
        ("llama-3.3", "meta-llama-Llama-3.3-70B-Instruct"),
    ):
        assert sha(reference / f"{source}.jinja") == TEMPLATE_SHA256[name]


def test_config_has_template_and_special_tokens():
    config = json.loads((DATA / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|begin_of_text|>"
    assert config["eos_token"] == "<|eot_id|>"
    assert config["chat_template"] == (DATA.parent / "templates" / "llama-3.jinja").read_text()


def test_tokenizer_json_is_llama3_bpe():
    specials = fastbpe.family_special_tokens(fastbpe.load_tokenizer_json(DATA / "tokenizer.json"), fastbpe.LLAMA3)
    assert specials is not None and len(specials) == 256
    assert specials["<|begin_of_text|>"] == 128000 and specials["<|eot_id|>"] == 128009
    # The fast path takes them from this table for the pinned file, so the table must be exactly the file's.
    assert specials == fastbpe.meta_llama3_special_tokens()


def test_llama4_tokenizer_json_is_llama4_bpe():
    """The fast path reads only the leading added_tokens of the pinned Llama 4 file: they must be Meta's."""
    from llama_models.llama4.tokenizer import Tokenizer

    parsed = fastbpe.family_special_tokens(fastbpe.load_tokenizer_json(DATA4 / "tokenizer.json"), fastbpe.LLAMA4)
    leading = fastbpe.checked_specials(fastbpe.leading_added_tokens(DATA4 / "tokenizer.json"), fastbpe.LLAMA4)
    assert parsed == leading == Tokenizer.get_instance().special_tokens
    assert fastbpe.family_special_tokens(fastbpe.load_tokenizer_json(DATA4 / "tokenizer.json"), fastbpe.LLAMA3) is None


def test_special_tokens_table_is_metas():
    from llama_models.llama3.tokenizer import Tokenizer

    assert fastbpe.meta_llama3_special_tokens() == Tokenizer.get_instance().special_tokens


@pytest.mark.parametrize(
    "directory, meta_module, special",
    [
        (DATA, "llama_models.llama3.tokenizer", "<|eot_id|>"),
        (DATA4, "llama_models.llama4.tokenizer", "<|eot|> <|header_start|>"),
    ],
)
def test_hf_and_meta_agree_on_ids(directory, meta_module, special):
    """transformers' conversion gives the very ids of Meta's tokenizer (ids, not just lengths)."""
    import importlib

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory))
    meta = importlib.import_module(meta_module).Tokenizer.get_instance()
    text = f"Hello, wörld! 東京 🦙 {special}   spaces\n\n\ttabs 12345 don't CamelCase"
    assert hf(text, add_special_tokens=False)["input_ids"] == meta.encode(
        text, bos=False, eos=False, allowed_special="all"
    )
    assert hf(text)["input_ids"][0] == meta.bos_id


@pytest.mark.parametrize(
    ("path", "family"),
    [
        (DATA / "original" / "tokenizer.model", fastbpe.LLAMA3),
        (DATA4 / "original" / "tokenizer.model", fastbpe.LLAMA4),
        (FAMILIES["qwen3"].ranks_file, fastbpe.QWEN),
        (harmony.RANKS_FILE, harmony.O200K_HARMONY),
    ],
    ids=["llama3", "llama4", "qwen", "o200k"],
)
@pytest.mark.parametrize("in_order", [True, False], ids=["ranks_from_line_order", "ranks_parsed"])
def test_ranks_load_as_tiktoken_loads_them(path, family, in_order):
    """Both readings equal tiktoken's: the pinned files list their ranks in order (what ranks_in_order relies on)."""
    from tiktoken.load import load_tiktoken_bpe

    family = dataclasses.replace(family, ranks_in_order=in_order)
    assert fastbpe.load_ranks(path, family) == load_tiktoken_bpe(str(path), expected_hash=family.ranks_sha256)
    with pytest.raises(ValueError, match="sha256"):
        fastbpe.load_ranks(path, dataclasses.replace(family, ranks_sha256="0" * 64))
