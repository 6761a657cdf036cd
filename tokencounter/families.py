"""The other families' embedded tokenizers (Qwen, DeepSeek, Gemma): their Hugging Face files as the official repos
publish them (scripts/build_embedded_families.py checks each against its official sha256), and what a model of
the family generates around its text: the stop token, the reasoning markers and the tool-call format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
QWEN_RANKS = "qwen-ranks/qwen.tiktoken"


@dataclass(frozen=True)
class HFFamily:
    name: str  # the tokenizer's name in answers, and its directory under tokencounter/data
    stop_token: str  # what the model generates to end its turn (counted on finish_reason "stop")
    # The markers a reasoning model wraps its reasoning in (vLLM's reasoning parser returns the text between them
    # as `reasoning`), and whether the template's generation prompt already holds the opening one.
    think: tuple[str, str] | None = None
    think_opened_by_prompt: bool = False
    tool_calls: str = "llama-json"  # how the model emits tool calls: "hermes" (Qwen) or Llama 3.1's JSON
    # Its BPE's ranks in tiktoken's format, under data/ (the fast path counts with them), if it is one of
    # fastbpe.FAMILIES: Qwen's, or Meta's Llama 3 for the Llama distill. Gemma's SentencePiece BPE is not.
    ranks: str | None = None

    @property
    def directory(self) -> Path:
        return DATA / self.name

    @property
    def ranks_file(self) -> Path | None:
        return DATA / self.ranks if self.ranks else None


FAMILIES = {
    family.name: family
    for family in (
        HFFamily("qwen2.5", "<|im_end|>", tool_calls="hermes", ranks=QWEN_RANKS),
        HFFamily("qwen3", "<|im_end|>", think=("<think>", "</think>"), tool_calls="hermes", ranks=QWEN_RANKS),
        # The R1 distills' template ends the generation prompt with "<think>\n": the model opens no marker itself.
        HFFamily("deepseek-r1-distill-qwen", "<｜end▁of▁sentence｜>", ("<think>", "</think>"), True, ranks=QWEN_RANKS),
        HFFamily(
            "deepseek-r1-distill-llama",
            "<｜end▁of▁sentence｜>",
            ("<think>", "</think>"),
            True,
            ranks="llama3/original/tokenizer.model",
        ),
        HFFamily("gemma-3", "<end_of_turn>"),
    )
}


def hermes_tool_calls_text(calls: list[dict]) -> str:
    """Tool calls as Qwen emits them (Hermes format): one <tool_call> block of {"name", "arguments"} JSON each."""
    blocks = []
    for call in calls:
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except (ValueError, RecursionError):  # not JSON, or nested past the decoder: counted as written
            arguments = call["arguments"]
        body = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(blocks)
