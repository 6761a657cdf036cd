"""The bound on one request's work: a wall-clock deadline and an allowance of rendered characters."""

from __future__ import annotations

import time

from .errors import PayloadTooLarge, TimeBudgetExceeded


class Deadline:
    """Checked between every unit of work (messages, template output, tool JSON, BPE segments), so a request
    stops at its budget instead of running past it. `rendered_chars`: how much text a chat template may
    produce for this request (None: no bound)."""

    __slots__ = ("budget_ms", "end", "rendered_left", "rendered_limit")

    def __init__(self, budget_ms: int, rendered_chars: int | None = None) -> None:
        self.budget_ms = budget_ms
        self.end = time.perf_counter() + budget_ms / 1000
        self.rendered_limit = rendered_chars
        self.rendered_left = rendered_chars if rendered_chars is not None else float("inf")

    def check(self) -> None:
        if time.perf_counter() > self.end:
            raise TimeBudgetExceeded(
                f"counting took longer than {self.budget_ms} ms (TOKENCOUNTER_TIME_BUDGET_MS); send a smaller body"
            )

    def remaining_s(self) -> float:
        return max(0.0, self.end - time.perf_counter())

    def render(self, chars: int) -> None:
        """Charge `chars` of template output; refuse the request once it renders more than it may."""
        self.rendered_left -= chars
        if self.rendered_left < 0:
            raise PayloadTooLarge(
                f"the chat template renders this request to more than {self.rendered_limit} characters "
                "(TOKENCOUNTER_MAX_RENDER_RATIO times the body); deeply nested tools or huge repeated structures "
                "cause this: send them flatter or smaller"
            )

    def fits(self, chars: int) -> None:
        """Refuse before producing `chars` more characters that would not fit (the charge comes later)."""
        if chars > self.rendered_left:
            self.render(chars)
