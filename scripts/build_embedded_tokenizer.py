"""Regenerate the embedded Llama 3 tokenizer in tokencounter/data/llama3/ from Meta's `llama-models` package.

Run with the dev environment: `.venv/bin/python scripts/build_embedded_tokenizer.py`.
The output is deterministic; tests/test_embedded_tokenizer.py pins its checksums and provenance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tokencounter" / "data" / "llama3"
TEMPLATES = ROOT / "tokencounter" / "data" / "templates"

LLAMA_MODELS_VERSION = "0.3.0"
# sha256 of llama_models/llama3/tokenizer.model in llama-models 0.3.0 (Meta's Llama 3 BPE ranks).
RANKS_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"

NOTICE = (
    "Meta Llama 3 is licensed under the Meta Llama 3 Community License, "
    "Copyright \u00a9 Meta Platforms, Inc. All Rights Reserved.\n"
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    from llama_models.llama3 import tokenizer as meta_tokenizer
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    version = metadata.version("llama-models")
    if version != LLAMA_MODELS_VERSION:
        sys.exit(f"expected llama-models=={LLAMA_MODELS_VERSION}, found {version}")
    ranks_file = Path(meta_tokenizer.__file__).with_name("tokenizer.model")
    if sha256(ranks_file) != RANKS_SHA256:
        sys.exit(f"{ranks_file} does not match the pinned sha256 {RANKS_SHA256}")

    meta = meta_tokenizer.Tokenizer(ranks_file)
    specials = sorted(meta.special_tokens, key=meta.special_tokens.__getitem__)
    backend = TikTokenConverter(
        vocab_file=str(ranks_file), pattern=meta.pat_str, extra_special_tokens=specials
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

    chat_template = (TEMPLATES / "llama-3.jinja").read_text(encoding="utf-8")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=8192,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "original").mkdir(parents=True)
    hf.save_pretrained(str(OUT))

    # Compact, key-sorted JSON: smaller to ship and byte-stable across runs.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = OUT / name
        data = json.loads(path.read_text(encoding="utf-8"))
        if name == "tokenizer_config.json":
            data["chat_template"] = chat_template
            # Portable across transformers 4.x and 5.x (5.x writes its own class name here).
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
        separators = (",", ":") if name == "tokenizer.json" else (",", ": ")
        indent = None if name == "tokenizer.json" else 1
        path.write_text(
            json.dumps(data, ensure_ascii=False, separators=separators, indent=indent, sort_keys=True) + "\n",
            encoding="utf-8",
        )
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        (OUT / extra).unlink(missing_ok=True)

    shutil.copyfile(ranks_file, OUT / "original" / "tokenizer.model")
    shutil.copyfile(ROOT / "tokencounter" / "data" / "LLAMA3_LICENSE", OUT / "LICENSE")
    (OUT / "NOTICE").write_text(NOTICE, encoding="utf-8")
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "PROVENANCE.json")
    provenance = {
        "source": f"PyPI llama-models=={version}: llama_models/llama3/tokenizer.model (Meta)",
        "source_sha256": RANKS_SHA256,
        "converted_with": {
            "transformers": metadata.version("transformers"),
            "tokenizers": metadata.version("tokenizers"),
            "tool": "transformers.convert_slow_tokenizer.TikTokenConverter",
        },
        "chat_template": "Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template",
        "files": {str(p.relative_to(OUT)): sha256(p) for p in files},
    }
    (OUT / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(provenance, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
