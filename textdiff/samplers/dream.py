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

    Count (`schedule`): "linear" (default) takes `num_transfer[b]` from the region (`set_region`: LLaDA's
    linear schedule, per row). "dream" is Dream's own count: with its grid t_i = linspace(1, eps, steps + 1),
    step i reveals int(n_masked * (1 - t_{i+1} / t_i)) of the block's n_masked remaining [MASK] (float32, as
    Dream computes it) and everything left at the last step; with one block of gen_length, this is Dream's
    `diffusion_generate` token for token. Dream averages n_masked over the batch; "dream" counts per row,
    which is the same number whenever the rows hold as many [MASK] (always, in Dream's own loop: every row
    starts with max_new_tokens of them and reveals the same count per step) and keeps rows independent
    otherwise.
    """

    SCHEDULES = ("linear", "dream")

    def __init__(self, mask_token_id: int, score: str = "maskgit_plus", alg_temp: float = 0.0,
                 temperature: float = 0.0, generator: torch.Generator | None = None, schedule: str = "linear",
                 eps: float = 1e-3):
        if score not in CONFIDENCE_SCORES:
            raise ValueError(f"unknown confidence score {score!r}; valid: {', '.join(CONFIDENCE_SCORES)}")
        if alg_temp < 0:
            raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
        if schedule not in self.SCHEDULES:
            raise ValueError(f"unknown reveal schedule {schedule!r}; valid: {', '.join(self.SCHEDULES)}")
        super().__init__(mask_token_id, temperature, generator)
        self.score = score
        self.alg_temp = alg_temp
        self.schedule, self.eps = schedule, eps

    def dream_num_transfer(self, masked_count: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Dream's reveal count [B] at timestep t for the rows' remaining [MASK] counts [B]."""
        steps = len(self.timesteps)
        i = self.timestep_index(t)
        if i == steps - 1:
            return masked_count
        grid = torch.linspace(1, self.eps, steps + 1)  # float32, Dream's `timesteps`
        ratio = 1 - grid[i + 1] / grid[i]
        return (masked_count.float().cpu() * ratio).long().to(masked_count.device)  # int() truncates toward 0

    def _step(self, logits, t, sample, block, num_transfer):
        if self.schedule == "dream":
            num_transfer = self.dream_num_transfer((sample[:, block] == self.mask_token_id).sum(1), t)
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
