"""The diffusion-specific RL options, declared once: the `rl` section of a recipe inherits them, and so does
`CoupledGRPOConfig` (TRL's GRPOConfig), so neither copies the other's fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textdiff.rl.estimators import ESTIMATORS

__all__ = ["DiffusionRLOptions"]


@dataclass
class DiffusionRLOptions:
    """How rollouts are decoded and how a diffusion policy's per-token log-probs are estimated."""

    estimator: str = "coupled"
    """per-token log-likelihood estimator: 'coupled' (DiffuCoder complementary masks) or 'd1' (one step, prompt
    masking)."""
    all_masked_view: bool = True
    """coupled: also score the all-completion-masked view (3 forward passes per row instead of 2)."""
    t_min: float = 0.2
    """coupled: mask rate t ~ U(t_min, t_max) of the first view (the second masks the complement)."""
    t_max: float = 0.8
    """coupled: upper end of t."""
    p_mask_prompt: float = 0.15
    """d1: probability of masking each prompt token."""
    random_masking: bool = True
    """fresh masks for every inner iteration (DiffuCoder's random_masking); False reuses iteration 0's."""
    diffusion_steps: int = 16
    """denoising steps of a rollout (over the whole canvas)."""
    block_length: int | None = None
    """semi-autoregressive block of the rollouts (None: the whole canvas)."""
    sampler: str = "low_confidence"
    """rollout unmasking rule (any name in textdiff.samplers.SAMPLERS)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    """options of the rollout rule (threshold, factor, alg_temp, ...)."""

    def check_rl_options(self, canvas: int, prefix: str = "") -> None:
        """ValueError naming the option (as `prefix` + name, e.g. "rl.t_min") for a value out of range; `canvas`
        is the rollout length. The one set of rules for the recipe's `rl` section and for CoupledGRPOConfig."""
        from textdiff.samplers.registry import SAMPLERS

        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown {prefix}estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if not 0.0 < self.t_min <= self.t_max < 1.0:
            raise ValueError(f"{prefix}t_min and {prefix}t_max must satisfy 0 < t_min <= t_max < 1, got "
                             f"t_min={self.t_min}, t_max={self.t_max}")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"{prefix}p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown {prefix}sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        block = self.block_length or canvas
        if block < 1 or canvas % block:
            raise ValueError(f"the rollout canvas {canvas} is not a multiple of {prefix}block_length {block}")
