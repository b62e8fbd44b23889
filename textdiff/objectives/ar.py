"""Autoregressive next-token objective on the shared backbone in causal mode (the AR baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.objectives.base import Objective, ObjectiveOutput

__all__ = ["AutoregressiveObjective"]


@dataclass
class AutoregressiveObjective(Objective):
    """Next-token cross-entropy: logits[:, i] predict input_ids[:, i + 1].

    Batch keys as for the masked objective. Target i + 1 is scored only if positions i and i + 1
    are both real tokens (attention_mask == 1), so the first real token of a left-padded row is
    not scored from a padding position, exactly as for an unpadded row; targets inside the
    prompt (`prompt_mask`) are not scored (SFT). Loss is normalised per scored token.
    """

    attention_mode: ClassVar[str] = "causal"

    def __call__(
        self, model: torch.nn.Module, batch: dict[str, Any], *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Training loss; `generator` is accepted for a uniform call signature and unused (no noise)."""
        nll_sum, num_scored = self._summed_nll(model, batch)
        loss = nll_sum / num_scored.clamp(min=1)
        return ObjectiveOutput(loss=loss, logs={"scored_tokens": float(num_scored.item())})

    @torch.no_grad()
    def nll(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        *,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Exact summed NLL (nats) over scored targets and their count; generator/num_samples unused."""
        return self._summed_nll(model, batch)

    def _summed_nll(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if "input_ids" not in batch:
            raise ValueError(f"batch has no 'input_ids' (keys: {sorted(batch)})")
        input_ids = batch["input_ids"]  # [B, L]
        attention_mask = batch.get("attention_mask")  # [B, L] | None
        prompt_mask = batch.get("prompt_mask")  # [B, L] | None

        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
        targets = input_ids[:, 1:]  # [B, L-1]
        scored = torch.ones_like(targets, dtype=torch.bool)  # [B, L-1]
        if attention_mask is not None:
            real = attention_mask.bool()  # [B, L]
            scored &= real[:, 1:] & real[:, :-1]
        if prompt_mask is not None:
            scored &= ~prompt_mask.bool()[:, 1:]
        nll_sum = F.cross_entropy(logits[:, :-1][scored].float(), targets[scored], reduction="sum")
        return nll_sum, scored.sum()
