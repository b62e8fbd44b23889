"""Fast-dLLM parallel decoding (NVlabs/Fast-dLLM `llada/generate.py`): confidence-aware rules that decide how
many tokens to reveal per step. Both are `dynamic`: the loop steps a block until it has no [MASK] left.

Confidence is the probability of the predicted token under softmax(logits) in float64, as Fast-dLLM computes it
(the un-tempered logits, scored at the possibly Gumbel-sampled token).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F

from textdiff.samplers.masked import MaskedSampler


def block_confidence(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """[B, N] probability of x0 [B, N] under softmax(logits [B, N, V]) at masked positions, -inf elsewhere."""
    probs = F.softmax(logits.double(), dim=-1)  # [B, N, V]
    x0_p = torch.gather(probs, -1, x0[..., None]).squeeze(-1)  # [B, N]
    return torch.where(masked, x0_p, torch.full_like(x0_p, -torch.inf))


def threshold_transfer(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, N] bool: every finite confidence >= threshold, and always the row's most confident position."""
    transfer = confidence >= threshold  # [B, N]; -inf never passes a threshold in [0, 1]
    best = confidence.argmax(dim=-1, keepdim=True)  # [B, 1]
    has_masked = torch.isfinite(confidence).any(dim=-1, keepdim=True)  # [B, 1]
    return transfer.scatter(-1, best, has_masked | transfer.gather(-1, best))


def factor_transfer(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """[B, N] bool: with confidences sorted c_1 >= c_2 >= ..., accept rank n while (n + 1)(1 - c_n) <= factor,
    i.e. c_n >= 1 - factor / (n + 1); rank 1 is always accepted.

    The accepted set is a prefix of the sorted list: the bound 1 - factor / (n + 1) rises with n while c_n
    falls, so after the first failure every later rank fails too, and testing every rank at once (the dllm
    vectorised form, `thr = 1 - factor / (rank + 1)`, `thr[0] = -1`) equals stopping at the first failure.
    Fast-dLLM's loop has one off-by-one: when the first failure is the *last* masked rank it accepts it anyway
    (its `top_i == len - 1` branch); we follow the stated rule and reject it.
    """
    sorted_conf, order = torch.sort(confidence, dim=-1, descending=True)  # [B, N]
    rank = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device, dtype=sorted_conf.dtype)  # [N]
    accept = sorted_conf >= 1 - factor / (rank + 1)  # [B, N]
    accept[:, 0] = True
    accept &= torch.isfinite(sorted_conf)  # unmasked positions sort last as -inf
    return torch.zeros_like(accept).scatter(-1, order, accept)


class _ParallelSampler(MaskedSampler):
    """Shared wiring of the two Fast-dLLM rules: predict, score the block, reveal `_transfer(confidence)`."""

    dynamic = True

    @abstractmethod
    def _transfer(self, confidence: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: which block positions to reveal, given their confidences [B, N] (-inf = not masked)."""

    def _step(self, logits, t, sample, block, num_transfer):
        logits = self.forbid_mask(logits)  # [B, L, V]
        x0 = self.predict(logits)  # [B, L]
        masked = sample[:, block] == self.mask_token_id  # [B, N]
        confidence = block_confidence(logits[:, block], x0[:, block], masked)  # [B, N]
        transfer = self._transfer(confidence)  # [B, N]
        prev_sample = sample.clone()
        prev_sample[:, block] = torch.where(transfer, x0[:, block], sample[:, block])
        return prev_sample, x0


class ThresholdSampler(_ParallelSampler):
    """Fast-dLLM threshold decoding (`get_transfer_index` with `threshold`): reveal every masked position of the
    block whose confidence is >= `threshold` (0.9 in all Fast-dLLM scripts), and at least the most confident one.
    threshold 1.0 is one token per step; 0.0 is the whole block in one step."""

    def __init__(self, mask_token_id: int, threshold: float = 0.9, temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        super().__init__(mask_token_id, temperature, generator)
        self.threshold = threshold

    def _transfer(self, confidence: torch.Tensor) -> torch.Tensor:
        return threshold_transfer(confidence, self.threshold)


class FactorSampler(_ParallelSampler):
    """Fast-dLLM factor decoding (`get_transfer_index_dynamic`, paper Theorem 1): see `factor_transfer`."""

    def __init__(self, mask_token_id: int, factor: float = 1.0, temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        super().__init__(mask_token_id, temperature, generator)
        self.factor = factor

    def _transfer(self, confidence: torch.Tensor) -> torch.Tensor:
        return factor_transfer(confidence, self.factor)
