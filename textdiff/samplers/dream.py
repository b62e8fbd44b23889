"""Dream's confidence-ordered step rules (`alg="maskgit_plus" | "topk_margin" | "entropy"`, Dream-v0
`generation_utils.py`): score every masked position of the block, reveal the best ones (or sample which ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from textdiff.samplers.masked import MaskedSampler, commit_top_k


def maskgit_plus_score(probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Probability of the predicted token [B, N] (the top-1 probability when x0 is the argmax)."""
    return torch.gather(probs, -1, x0[..., None]).squeeze(-1)


def topk_margin_score(probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability [B, N]."""
    top2 = torch.topk(probs, k=2, dim=-1).values  # [B, N, 2]
    return top2[..., 0] - top2[..., 1]


def negative_entropy_score(probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """sum_v p_v log p_v [B, N] (<= 0; 0 for a one-hot). xlogy makes 0 log 0 = 0 for the -inf [MASK] logit,
    where Dream adds 1e-10 inside the log."""
    return torch.special.xlogy(probs, probs).sum(-1)


CONFIDENCE_SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "maskgit_plus": maskgit_plus_score,
    "topk_margin": topk_margin_score,
    "entropy": negative_entropy_score,
}


class ConfidenceSampler(MaskedSampler):
    """Dream's confidence rules: reveal the `num_transfer[b]` masked positions of the block with the highest score.

    The score is computed from probs = softmax(logits / temperature) (softmax(logits) at temperature 0), as
    Dream does: `maskgit_plus` = probability of the predicted token (Dream scores the *sampled* token at
    temperature > 0, the top-1 probability at 0), `topk_margin` = p1 - p2, `entropy` = sum p log p.

    Selection: top-k by score when `alg_temp == 0`; otherwise k draws without replacement from
    softmax(score / alg_temp) over the block's masked positions (`torch.multinomial`, `self.generator`).

    Count: `num_transfer[b]` comes from the region (`set_region`: LLaDA's linear schedule, per row). This replaces Dream's
    `int(mean_masks_per_row * (1 - s / t))`, whose batch average couples the rows of a batch (a row's result
    would depend on what else is in the batch); both reveal everything left at the last step.
    """

    def __init__(self, mask_token_id: int, score: str = "maskgit_plus", alg_temp: float = 0.0,
                 temperature: float = 0.0, generator: torch.Generator | None = None):
        if score not in CONFIDENCE_SCORES:
            raise ValueError(f"unknown confidence score {score!r}; valid: {', '.join(CONFIDENCE_SCORES)}")
        if alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
        super().__init__(mask_token_id, temperature, generator)
        self.score = score
        self.alg_temp = alg_temp

    def _step(self, logits, t, sample, block, num_transfer):
        if num_transfer is None:
            raise ValueError(f"{type(self).__name__} reveals num_transfer tokens per row; got num_transfer=None")
        logits = self.forbid_mask(logits)  # [B, L, V]
        x0 = self.predict(logits)  # [B, L]
        # 1. score the block only (the region can be the whole masked suffix)
        scaled = logits[:, block].double()
        if self.temperature > 0:
            scaled = scaled / self.temperature
        probs = F.softmax(scaled, dim=-1)  # [B, N, V]
        masked = sample[:, block] == self.mask_token_id  # [B, N]
        score = CONFIDENCE_SCORES[self.score](probs, x0[:, block])  # [B, N]
        confidence = torch.where(masked, score, torch.full_like(score, -torch.inf))  # [B, N]
        # 2. choose which masked positions to reveal
        if self.alg_temp == 0:
            transfer = commit_top_k(confidence, num_transfer)  # [B, N]
        else:
            transfer = self._sample_positions(confidence, masked, num_transfer)  # [B, N]
        prev_sample = sample.clone()
        prev_sample[:, block] = torch.where(transfer, x0[:, block], sample[:, block])
        return prev_sample, x0

    def _sample_positions(self, confidence: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: per row, k[b] positions drawn without replacement from softmax(confidence / alg_temp)."""
        weights = F.softmax(confidence / self.alg_temp, dim=-1)  # [B, N] float64, 0 off the masked positions
        # a masked position whose weight underflowed stays drawable, last: multinomial needs k nonzero weights
        weights = torch.where(masked, weights.clamp_min(torch.finfo(weights.dtype).tiny), torch.zeros_like(weights))
        transfer = torch.zeros_like(masked)
        for row in range(confidence.shape[0]):  # rows draw different counts
            n = int(k[row])
            if n > 0:
                picked = torch.multinomial(weights[row], n, replacement=False, generator=self.generator)
                transfer[row, picked] = True
        return transfer
