"""Regenerate the embedded Llama tokenizers in tokencounter/data/ from Meta's `llama-models` package.

Run with the dev environment: `.venv/bin/python scripts/build_embedded_tokenizer.py` (`make tokenizer`).
The output is deterministic; tests/test_embedded_tokenizer.py pins its checksums and provenance.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tokencounter" / "data"
TEMPLATES = DATA / "templates"
LLAMA_MODELS_VERSION = "0.3.0"

FAMILIES = {
    "llama3": {
        "module": "llama_models.llama3.tokenizer",
        # sha256 of llama_models/llama3/tokenizer.model in llama-models 0.3.0 (Meta's Llama 3 BPE ranks).
        "ranks_sha256": "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        "pattern": "pat_str",
        "template": "llama-3",
        "template_source": "Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template",
        "eos": "<|eot_id|>",
        "max_length": 8192,
        "ship_ranks": True,  # the fast path counts with Meta's ranks file
        "license": "LLAMA3_LICENSE",
        "notice": "Meta Llama 3 is licensed under the Meta Llama 3 Community License, "
        "Copyright \u00a9 Meta Platforms, Inc. All Rights Reserved.\n",
    },
    "llama4": {
        "module": "llama_models.llama4.tokenizer",
        "ranks_sha256": "d0bdbaf59b0762c8c807617e2d8ea51420eb1b1de266df2495be755c8e0ed6ed",
        "pattern": "O200K_PATTERN",
        "template": "llama-4",
        "template_source": "transformers models/llama4/processing_llama4.py chat_template (Llama 4 Instruct)",
        "eos": "<|eot|>",
        "max_length": 10485760,
        "ship_ranks": True,
        "license": "LLAMA4_LICENSE",
        "notice": "Llama 4 is licensed under the Llama 4 Community License, "
        "Copyright \u00a9 Meta Platforms, Inc. All Rights Reserved.\n",
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_llama4_template() -> None:
    """The Llama 4 Instruct template as transformers ships it (the hub's own copy is not reachable offline)."""
    from transformers.models.llama4 import processing_llama4

    (TEMPLATES / "llama-4.jinja").write_text(processing_llama4.chat_template, encoding="utf-8")


def build(name: str, family: dict) -> dict:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    meta_module = importlib.import_module(family["module"])
    ranks_file = Path(meta_module.__file__).with_name("tokenizer.model")
    if sha256(ranks_file) != family["ranks_sha256"]:
        sys.exit(f"{ranks_file} does not match the pinned sha256 {family['ranks_sha256']}")
    meta = meta_module.Tokenizer(ranks_file)
    specials = sorted(meta.special_tokens, key=meta.special_tokens.__getitem__)
    backend = TikTokenConverter(
        vocab_file=str(ranks_file), pattern=getattr(meta, family["pattern"]), extra_special_tokens=specials
    ).converted()
    # As in Meta's published tokenizer.json: plain `tokenizer(text)` prepends BOS.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", meta.bos_id)],
            ),
        ]
    )
    for token, token_id in meta.special_tokens.items():
        if backend.token_to_id(token) != token_id:
            sys.exit(f"special token {token} converted to a different id")

    out = DATA / name
    chat_template = (TEMPLATES / f"{family['template']}.jinja").read_text(encoding="utf-8")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token=family["eos"],
        model_max_length=family["max_length"],
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hf.save_pretrained(str(out))
    # Compact, key-sorted JSON: smaller to ship and byte-stable across runs.
    for filename in ("tokenizer.json", "tokenizer_config.json"):
        path = out / filename
        data = json.loads(path.read_text(encoding="utf-8"))
        if filename == "tokenizer_config.json":
            data["chat_template"] = chat_template
            # Portable across transformers 4.x and 5.x (5.x writes its own class name here).
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
        compact = filename == "tokenizer.json"
        path.write_text(
            json.dumps(
                data,
                ensure_ascii=False,
                separators=(",", ":") if compact else (",", ": "),
                indent=None if compact else 1,
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        (out / extra).unlink(missing_ok=True)
    if family["ship_ranks"]:
        (out / "original").mkdir()
        shutil.copyfile(ranks_file, out / "original" / "tokenizer.model")
    shutil.copyfile(DATA / family["license"], out / "LICENSE")
    (out / "NOTICE").write_text(family["notice"], encoding="utf-8")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "PROVENANCE.json")
    provenance = {
        "source": f"PyPI llama-models=={LLAMA_MODELS_VERSION}: {family['module'].replace('.', '/')[:-10]}"
        "/tokenizer.model (Meta)",
        "source_sha256": family["ranks_sha256"],
        "converted_with": {
            "transformers": metadata.version("transformers"),
            "tokenizers": metadata.version("tokenizers"),
            "tool": "transformers.convert_slow_tokenizer.TikTokenConverter",
        },
        "chat_template": family["template_source"],
        "files": {str(p.relative_to(out)): sha256(p) for p in files},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    return provenance


def main() -> int:
    version = metadata.version("llama-models")
    if version != LLAMA_MODELS_VERSION:
        sys.exit(f"expected llama-models=={LLAMA_MODELS_VERSION}, found {version}")
    write_llama4_template()
    for name, family in FAMILIES.items():
        print(json.dumps({name: build(name, family)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
