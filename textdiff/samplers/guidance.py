"""Guidance for any prediction tensor with a batch dimension: token logits of masked text [B, L, V], flow
velocities / eps of images [B, C, H, W] and videos [B, C, T, H, W], continuous text embeddings [B, L, D].

Scale conventions (the same guidance, three spellings):
  standard (Imagen, diffusers, SD3, Wan):   p = u + w (c - u);          off at w = 1, uncond at w = 0
  original (Ho & Salimans, "cfg"):          p = c + w (c - u) = u + (w + 1)(c - u);  off at w = 0
  LLaDA text CFG (textdiff.generate):       logits = un + (cfg + 1)(cond - un)  == original form with w = cfg,
                                            == standard form with w = cfg + 1; the unconditional pass sees the
                                            prompt replaced by [MASK] (the condition is dropped by masking it).
CFG is applied to logits (pre-softmax) for text and to velocity / eps for images and video.

Also here: guidance rescale (Lin et al. 2023), interval guidance (enabled on a fraction of the steps),
CFG-Zero* (optimised scale + zero-init steps), skip-layer guidance (SD3.5) and Imagen's static and dynamic
thresholding of x0 (an `x0_hook` of the samplers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ClassifierFreeGuidance", "dynamic_threshold", "guidance_rescale", "skip_layer_guidance",
           "static_threshold"]


def _flat_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


def guidance_rescale(guided: Tensor, cond: Tensor, phi: float, dims: tuple[int, ...] | None = None) -> Tensor:
    """Lin et al. 2023 (3.4): p_r = p * std(c) / std(p), std over all non-batch dims (or `dims`, e.g. (-1,) for a
    per-position rescale of text logits); returns phi * p_r + (1 - phi) * p."""
    dims = _flat_dims(guided) if dims is None else dims
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1 - phi) * guided


@dataclass
class ClassifierFreeGuidance:
    """Combine a conditional and an unconditional prediction.

    Args:
        scale: guidance weight in the convention of `formulation`.
        formulation: "standard" (p = u + w (c - u)) or "original" (p = u + (w + 1)(c - u); LLaDA's `cfg`).
        rescale: guidance-rescale phi in [0, 1] (0 = off; diffusers docs use 0.7).
        start / stop: interval guidance: guide only while int(start N) <= step < int(stop N) (diffusers guiders);
            outside it the conditional prediction is returned unchanged.
        zero_star: CFG-Zero*: scale the unconditional prediction by alpha = <c, u> / (||u||^2 + 1e-8) per sample.
        zero_init_steps: CFG-Zero*: steps with index < zero_init_steps return 0 (diffusers convention; the
            authors' "zero_steps = 1" zeroes the first two steps, i.e. zero_init_steps = 2 here).
    At the identity scales the inputs are returned exactly (no floating-point round trip): the conditional
    prediction when guidance is off, the unconditional one at standard scale 0 / original scale -1.
    """

    scale: float = 1.0
    formulation: str = "standard"
    rescale: float = 0.0
    start: float = 0.0
    stop: float = 1.0
    zero_star: bool = False
    zero_init_steps: int = 0

    def __post_init__(self):
        if self.formulation not in ("standard", "original"):
            raise ValueError(f"formulation must be 'standard' or 'original', got {self.formulation!r}")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ValueError(f"need 0 <= start <= stop <= 1, got start={self.start}, stop={self.stop}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"rescale must be in [0, 1], got {self.rescale}")

    @property
    def standard_scale(self) -> float:
        """w in the standard convention (original w' maps to w' + 1)."""
        return self.scale if self.formulation == "standard" else self.scale + 1.0

    def is_enabled(self, step: int = 0, num_steps: int = 1) -> bool:
        """Whether this step needs the unconditional pass at all."""
        if step < self.zero_init_steps:
            return False  # the prediction is zeroed anyway
        in_interval = int(self.start * num_steps) <= step < int(self.stop * num_steps)
        return in_interval and self.standard_scale != 1.0

    def __call__(self, cond: Tensor, uncond: Tensor | None, step: int = 0, num_steps: int = 1) -> Tensor:
        if step < self.zero_init_steps:
            return torch.zeros_like(cond)
        if not self.is_enabled(step, num_steps):
            return cond
        if uncond is None:
            raise ValueError("guidance is enabled at this step but no unconditional prediction was given")
        w = self.standard_scale
        if self.zero_star:
            c, u = cond.flatten(1).float(), uncond.flatten(1).float()
            alpha = (c * u).sum(1) / (u.pow(2).sum(1) + 1e-8)  # [B]
            uncond = uncond * alpha.reshape(-1, *([1] * (cond.dim() - 1))).to(uncond.dtype)
        if w == 0.0 and not self.zero_star:
            return uncond
        guided = uncond + w * (cond - uncond)
        if self.rescale > 0:
            guided = guidance_rescale(guided, cond, self.rescale)
        return guided


def skip_layer_guidance(guided: Tensor, cond: Tensor, cond_skip: Tensor, scale: float, step: int, num_steps: int,
                        start: float = 0.01, stop: float = 0.2) -> Tensor:
    """SD3.5 skip-layer guidance: p + s (c - c_skip) while start N < step < stop N (the SD3 pipeline's window),
    with c_skip the conditional prediction with some blocks skipped (`DiTModel(..., skip_layers=[...])`)."""
    if scale == 0 or not num_steps * start < step < num_steps * stop:
        return guided
    return guided + scale * (cond - cond_skip)


def static_threshold(x0: Tensor, bound: float = 1.0) -> Tensor:
    """Imagen static thresholding (diffusers `clip_sample`): clip x0 to [-bound, bound]."""
    return x0.clamp(-bound, bound)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float | None = None) -> Tensor:
    """Imagen dynamic thresholding: s = the `percentile` quantile of |x0| per sample, s = max(s, 1) (and at most
    `max_value`, diffusers' `sample_max_value`; None = uncapped like Imagen), then x0 = clip(x0, -s, s) / s.
    diffusers' default p is 0.995; lucidrains' Imagen uses 0.95.

    Computed in x0's dtype (float64 stays float64), half / bfloat16 in float32 and cast back, as diffusers'
    `_threshold_sample`."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    work = x0.to(torch.promote_types(x0.dtype, torch.float32))
    s = torch.quantile(work.flatten(1).abs(), percentile, dim=1).clamp(min=1.0, max=max_value)  # [B]
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return (work.clamp(-s, s) / s).to(x0.dtype)
