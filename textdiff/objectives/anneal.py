"""Attention-mask annealing (DiffuLLaMA): adapt an AR model to bidirectional attention gradually.

At training step s the attention pattern is causal OR Bernoulli(r) per (query, key) pair, with
r = min(1, s / anneal_steps): exactly causal at step 0, a random growing share of the future visible on the
way, fully bidirectional from `anneal_steps` on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from textdiff.schedules import uniform_noise


def anneal_ratio(step: int, anneal_steps: int) -> float:
    """Share r of non-causal pairs that may attend at `step`: step / anneal_steps, capped at 1 (1 when off)."""
    if anneal_steps <= 0:
        return 1.0
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0, step / anneal_steps)


def annealed_attention_mask(
    batch_size: int,
    length: int,
    ratio: float,
    *,
    key_padding_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """Boolean SDPA mask [B, 1, L, L] (True = may attend): causal OR Bernoulli(ratio), drawn per sequence.

    key_padding_mask [B, L] (1 = real token) removes padded keys (each query still sees itself, so no row is
    empty). Returns None when ratio >= 1 and nothing is padded: the model's own bidirectional path applies.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if key_padding_mask is not None and key_padding_mask.shape != (batch_size, length):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected {(batch_size, length)}")
    padded = key_padding_mask is not None and not bool(key_padding_mask.all())
    if ratio >= 1.0 and not padded:
        return None
    positions = torch.arange(length, device=device)
    causal = positions[None, :] <= positions[:, None]  # [L, L]: key j <= query i
    if ratio >= 1.0:
        allowed = torch.ones(batch_size, length, length, dtype=torch.bool, device=device)
    else:
        extra = uniform_noise((batch_size, length, length), generator=generator, device=device,
                              per_example=True) < ratio  # [B, L, L]
        allowed = causal[None] | extra  # [B, L, L]
    if padded:
        allowed = allowed & key_padding_mask.bool().to(allowed.device)[:, None, :]  # drop padded keys
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]  # [B, 1, L, L]
