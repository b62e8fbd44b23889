"""DDIM (Song et al. 2021) with eta on a discrete VP-Gaussian schedule (diffusers `DDIMScheduler` semantics).

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. One step from t to t' = t - T/n:
    x0, eps = parameterisation(model_output)                (optionally x0 <- x0_hook(x0), eps re-derived)
    std     = eta * sqrt((1 - abar_t') / (1 - abar_t) * (1 - abar_t / abar_t'))
    x_t'    = sqrt(abar_t') x0 + sqrt(1 - abar_t' - std^2) eps + std z
eta = 0 is the deterministic DDIM ODE step; eta = 1 is the DDPM ancestral posterior. Past the first
training step the target is abar = 1 (`set_alpha_to_one`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from textdiff.samplers.base import Sampler, StepOutput
from textdiff.samplers.parameterization import to_x0_eps
from textdiff.schedules import vp_alphas_cumprod

__all__ = ["TIMESTEP_SPACINGS", "DDIMSampler"]

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class DDIMSampler(Sampler):
    """The DDIM / DDPM step of the module docstring, on diffusers' discrete timesteps."""

    kind = "continuous"

    def __init__(
        self,
        *,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        x0_hook: Callable[[Tensor], Tensor] | None = None,
    ):
        """
        Args:
            beta_schedule: "linear" | "scaled_linear" | "cosine" (`textdiff.schedules.vp_alphas_cumprod`).
            prediction_type: "epsilon" | "sample" | "v_prediction".
            eta: 0 = deterministic DDIM, 1 = DDPM posterior noise.
            timestep_spacing: "leading" (diffusers default: 0, T/n, ...), "trailing" (ends at T - 1) or "linspace".
            set_alpha_to_one: the step below t = 0 targets abar = 1 (else abar_0).
            x0_hook: edits x0 each step (`guidance.static_threshold` = diffusers `clip_sample`, dynamic thresholding).
        """
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"DDIM takes prediction_type epsilon | sample | v_prediction, got {prediction_type!r}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.alphas_cumprod = vp_alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_train_timesteps, self.prediction_type, self.eta = num_train_timesteps, prediction_type, eta
        self.timestep_spacing, self.steps_offset, self.x0_hook = timestep_spacing, steps_offset, x0_hook
        self.timesteps: Tensor | None = None
        self.step_index = 0

    def set_timesteps(self, num_steps: int) -> None:
        T = self.num_train_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        if self.timestep_spacing == "leading":
            ratio = T // num_steps
            steps = (torch.arange(num_steps) * ratio).flip(0) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ratio = T / num_steps
            steps = (torch.arange(T, 0, -ratio).round() - 1).long()
        else:
            steps = torch.linspace(0, T - 1, num_steps).round().long().flip(0)
        self.timesteps = steps.long()
        self.num_steps = num_steps
        self.step_index = 0

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        abar = self.alphas_cumprod.to(x0.device)[timesteps].to(x0.dtype)
        abar = abar.reshape(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator: torch.Generator | None = None,
             eta: float | None = None) -> StepOutput:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(n) before step()")
        eta = self.eta if eta is None else eta
        t = int(timestep)
        prev_t = t - self.num_train_timesteps // self.num_steps
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        alpha, sigma = abar_t.sqrt(), (1 - abar_t).sqrt()
        x0, eps = to_x0_eps(model_output, sample, alpha, sigma, self.prediction_type)
        if self.x0_hook is not None:
            x0 = self.x0_hook(x0)
            eps = (sample - alpha * x0) / sigma
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        std = eta * variance.sqrt()
        prev = abar_prev.sqrt() * x0 + (1 - abar_prev - std**2).sqrt() * eps
        if eta > 0:
            noise = torch.randn(model_output.shape, generator=generator, device=model_output.device,
                                dtype=model_output.dtype)
            prev = prev + std * noise
        self.step_index += 1
        return StepOutput(prev_sample=prev, pred_original_sample=x0)
