"""Objective interface shared by every family: a training loss and an NLL estimate for evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Objective", "ObjectiveOutput"]


@dataclass
class ObjectiveOutput:
    """What an objective returns for one training batch."""

    loss: Tensor
    """Scalar loss; this is what `backward()` sees."""
    logs: dict[str, float] = field(default_factory=dict)
    """Detached scalars for logging (e.g. mask ratio, mean t)."""


class Objective(ABC):
    """A training loss plus an NLL estimator on one model.

    Batches are dicts of tensors with at least `input_ids` [B, L]; optional `attention_mask` [B, L]
    (0 = padding) and `prompt_mask` [B, L] (True = prompt, never scored). The model is called as
    `model(input_ids=..., attention_mask=...)` and returns an output with `.logits` [B, L, V].
    """

    attention_mode: ClassVar[str]
    """Attention the model must use for this objective: "bidirectional" or "causal"."""
    metric: ClassVar[str] = "nll"
    """What `nll` sums: "nll" (nats, reported as bits/token and perplexity) or "mse" (a regression loss per
    sample, reported as mse only: it is not a likelihood)."""

    @abstractmethod
    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        """Training loss for one batch."""

    @abstractmethod
    def nll(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        *,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """(summed NLL in nats over scored tokens, number of scored tokens) for one batch.

        The evaluator sums both over batches and reports bits/token = nll / (n ln 2) and
        PPL = exp(nll / n). Estimators that are bounds (masked diffusion ELBO) say so.
        """

    def check_attention_mode(self, model_attention_mode: str) -> None:
        """Raise a clear error if the model's attention mode does not match this objective."""
        if model_attention_mode != self.attention_mode:
            raise ValueError(
                f"{type(self).__name__} needs a model with attention_mode={self.attention_mode!r}, "
                f"but the model config has attention_mode={model_attention_mode!r}"
            )
