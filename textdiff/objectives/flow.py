"""Rectified flow / flow matching (SD3, Wan) for images, videos and any continuous tensor.

x_sigma = (1 - sigma) x0 + sigma eps, eps ~ N(0, I); the model predicts the velocity v = eps - x0 at (x_sigma,
sigma) and the loss is w(sigma) ||v_theta - v||^2 averaged over elements. sigma comes from
`textdiff.schedules.sample_flow_sigmas` (logit-normal by default, SD3's best setting rf/lognorm(0, 1)), with an
optional static shift. Text-conditional batches drop their caption with probability `cond_drop_prob` (the text
keys are masked out and the pooled embedding zeroed: the unconditional branch CFG needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from textdiff.objectives.base import Objective, ObjectiveOutput
from textdiff.schedules import (
    FLOW_LOSS_WEIGHTING,
    FLOW_TIMESTEP_SAMPLING,
    flow_loss_weight,
    normal_noise,
    sample_flow_sigmas,
    uniform_noise,
)

__all__ = ["FlowMatchingObjective", "FlowMatchingOptions", "drop_captions", "flow_matching_loss"]

CONDITION_KEYS = ("encoder_hidden_states", "encoder_attention_mask", "pooled_text")


def drop_captions(cond: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
    """Unconditional inputs for the rows where `drop` [B] is True: no visible text key, zero pooled text."""
    out = dict(cond)
    keep = (~drop).to(torch.long)
    if "encoder_attention_mask" in out:
        out["encoder_attention_mask"] = out["encoder_attention_mask"] * keep[:, None]
    if "pooled_text" in out:
        out["pooled_text"] = out["pooled_text"] * keep[:, None].to(out["pooled_text"].dtype)
    return out


def flow_matching_loss(pred: Tensor, x0: Tensor, noise: Tensor, weights: Tensor) -> Tensor:
    """Per-sample w * mean((pred - (noise - x0))^2) [B], in float32."""
    per_sample = (pred.float() - (noise - x0).float()).pow(2).flatten(1).mean(1)  # [B]
    return per_sample * weights.float()


@dataclass
class FlowMatchingOptions:
    """The options of flow matching: the objective part of a `family: flow` recipe's `objective` section."""

    timestep_sampling: str = "logit_normal"
    """training sigma density: uniform | logit_normal | mode."""
    logit_mean: float = 0.0
    """mean of the logit-normal sigma density."""
    logit_std: float = 1.0
    """std of the logit-normal sigma density."""
    mode_scale: float = 1.29
    """scale of the 'mode' sigma density."""
    shift: float = 1.0
    """static shift applied to the training sigmas."""
    weighting: str = "none"
    """loss weight: none | cosmap | sigma_sqrt."""
    cond_drop_prob: float = 0.1
    """probability of dropping the caption (classifier-free guidance training)."""

    def __post_init__(self):
        if self.timestep_sampling not in FLOW_TIMESTEP_SAMPLING:
            raise ValueError(f"unknown timestep_sampling {self.timestep_sampling!r}; "
                             f"valid: {', '.join(FLOW_TIMESTEP_SAMPLING)}")
        if self.weighting not in FLOW_LOSS_WEIGHTING:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(FLOW_LOSS_WEIGHTING)}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")


@dataclass
class FlowMatchingObjective(FlowMatchingOptions, Objective):
    """Batch keys: `pixel_values` [B, ...] (x0 in model space) and optional text conditioning
    (`encoder_hidden_states`, `encoder_attention_mask`, `pooled_text`), passed to the model as keywords;
    the model is called as model(x_sigma, sigma, **cond) and returns `.sample` (the velocity)."""

    attention_mode: ClassVar[str] = "bidirectional"
    metric: ClassVar[str] = "mse"

    def _unpack(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if "pixel_values" not in batch:
            raise ValueError(f"flow matching batches need 'pixel_values', got keys {sorted(batch)}")
        return batch["pixel_values"], {k: batch[k] for k in CONDITION_KEYS if k in batch}

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        x0, cond = self._unpack(batch)
        B = x0.shape[0]
        # 1. noise level and noisy sample
        sigmas = sample_flow_sigmas(B, scheme=self.timestep_sampling, logit_mean=self.logit_mean,
                                    logit_std=self.logit_std, mode_scale=self.mode_scale, shift=self.shift,
                                    device=x0.device)  # [B]
        noise = normal_noise(tuple(x0.shape), device=x0.device, dtype=x0.dtype)  # per example: sharded in DDP
        s = sigmas.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        noisy = (1 - s) * x0 + s * noise
        # 2. caption dropout for classifier-free guidance
        if cond and self.cond_drop_prob > 0:
            cond = drop_captions(cond, uniform_noise((B,), device=x0.device, per_example=True) < self.cond_drop_prob)
        # 3. velocity regression
        pred = model(noisy, sigmas, **cond).sample
        loss = flow_matching_loss(pred, x0, noise, flow_loss_weight(sigmas, self.weighting)).mean()
        return ObjectiveOutput(loss=loss, logs={"sigma_mean": float(sigmas.mean())})

    @torch.no_grad()
    def nll(self, model: torch.nn.Module, batch: dict[str, Any], *, generator: torch.Generator | None = None,
            num_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Validation flow-matching loss, NOT a likelihood: (sum over samples of the unweighted velocity MSE
        averaged over `num_samples` stratified sigmas (u + k) / K, number of samples). Captions are kept."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x0, cond = self._unpack(batch)
        B = x0.shape[0]
        draw = generator.device if generator is not None else x0.device
        u = torch.rand(B, generator=generator, device=draw).to(x0.device)
        total = torch.zeros((), dtype=torch.float32, device=x0.device)
        for k in range(num_samples):
            sigmas = ((u + k) / num_samples).clamp(1e-4, 1.0)  # [B]
            noise = torch.randn(x0.shape, generator=generator, device=draw).to(x0.device, x0.dtype)
            s = sigmas.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
            pred = model((1 - s) * x0 + s * noise, sigmas, **cond).sample
            total += flow_matching_loss(pred, x0, noise, torch.ones_like(sigmas)).sum()
        return total / num_samples, torch.tensor(B)
