"""DDIM (Song et al. 2021) with eta on a discrete VP-Gaussian schedule (diffusers `DDIMScheduler` semantics).

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. One step from t to t' = t - T // n (for every spacing, as diffusers):
    x0, eps = parameterisation(model_output)
    x0      = edit(x0)          thresholding, else clip_sample, then x0_hook (each optional)
    eps     = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)    only with use_clipped_model_output
    std     = eta * sqrt((1 - abar_t') / (1 - abar_t) * (1 - abar_t / abar_t'))
    x_t'    = sqrt(abar_t') x0 + sqrt(1 - abar_t' - std^2) eps + std z
eta = 0 is the deterministic DDIM ODE step; eta = 1 is the DDPM ancestral posterior. Past the first
training step the target is abar = 1 (`set_alpha_to_one`).

Edited x0, unchanged eps (diffusers' default, `use_clipped_model_output=False`) moves x_t' toward the clipped x0
but keeps the model's noise direction; `use_clipped_model_output=True` (GLIDE) re-derives eps from the edited x0.
The timestep grids are built in float64 numpy exactly as diffusers builds them (a float32 grid rounds some
entries to the neighbouring integer: linspace n = 27 gives 500 where diffusers has 499).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from textdiff.samplers.base import Sampler, StepOutput
from textdiff.samplers.guidance import dynamic_threshold
from textdiff.samplers.parameterization import to_x0_eps
from textdiff.schedules import vp_alphas_cumprod

__all__ = ["TIMESTEP_SPACINGS", "DDIMSampler", "ddim_timesteps"]

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading",
                   steps_offset: int = 0) -> Tensor:
    """diffusers' DDIM inference timesteps [num_steps] (int64, decreasing), computed in float64 as diffusers does.

    leading:  (arange(n) * (T // n)) reversed, + steps_offset (SD configs use steps_offset = 1)
    trailing: round(arange(T, 0, -T / n)) - 1                         (steps_offset is ignored, as in diffusers)
    linspace: round(linspace(0, T - 1, n)) reversed                   (steps_offset is ignored, as in diffusers)
    np.round / torch.round both round halves to even; the float64 grid is what decides the ties.
    """
    T = num_train_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if spacing == "leading":
        steps = (np.arange(num_steps) * (T // num_steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}")
    return torch.from_numpy(steps.copy())


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
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        use_clipped_model_output: bool = False,
        x0_hook: Callable[[Tensor], Tensor] | None = None,
    ):
        """
        Args:
            beta_schedule: "linear" | "scaled_linear" | "cosine" (`textdiff.schedules.vp_alphas_cumprod`).
            prediction_type: "epsilon" | "sample" | "v_prediction".
            eta: 0 = deterministic DDIM, 1 = DDPM posterior noise.
            timestep_spacing: "leading" (diffusers default: 0, T/n, ...), "trailing" (ends at T - 1) or "linspace".
            steps_offset: added to the "leading" grid only (diffusers; Stable Diffusion configs use 1).
            set_alpha_to_one: the step below t = 0 targets abar = 1 (else abar_0).
            clip_sample: clip x0 to [-clip_sample_range, clip_sample_range] (diffusers `clip_sample`; note that
                diffusers' class default is True, Stable Diffusion configs set it False, textdiff's default is False).
            clip_sample_range: the bound of `clip_sample`.
            thresholding: Imagen dynamic thresholding of x0 (diffusers `thresholding`; wins over clip_sample).
            dynamic_thresholding_ratio: the percentile of |x0| that sets the threshold s (diffusers name).
            sample_max_value: the cap on s (diffusers name; with the default 1.0 thresholding is static clipping).
            use_clipped_model_output: re-derive eps from the edited x0 (diffusers' `step()` argument of that name,
                default False: x0 is edited, eps is the model's); `step(use_clipped_model_output=...)` overrides it.
            x0_hook: any further edit of x0 (e.g. `guidance.static_threshold`, snapping to an embedding table),
                applied after the diffusers options; eps follows `use_clipped_model_output` as for them.
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
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.thresholding, self.dynamic_thresholding_ratio = thresholding, dynamic_thresholding_ratio
        self.sample_max_value, self.use_clipped_model_output = sample_max_value, use_clipped_model_output
        self.timesteps: Tensor | None = None
        self.step_index = 0

    def set_timesteps(self, num_steps: int) -> None:
        self.timesteps = ddim_timesteps(num_steps, self.num_train_timesteps, self.timestep_spacing, self.steps_offset)
        self.num_steps = num_steps
        self.step_index = 0

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        abar = self.alphas_cumprod.to(x0.device)[timesteps].to(x0.dtype)
        abar = abar.reshape(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def _edit_x0(self, x0: Tensor) -> Tensor:
        if self.thresholding:
            x0 = dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0 if self.x0_hook is None else self.x0_hook(x0)

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator: torch.Generator | None = None,
             eta: float | None = None, use_clipped_model_output: bool | None = None) -> StepOutput:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(n) before step()")
        eta = self.eta if eta is None else eta
        if use_clipped_model_output is None:
            use_clipped_model_output = self.use_clipped_model_output
        t = int(timestep)
        prev_t = t - self.num_train_timesteps // self.num_steps
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        alpha, sigma = abar_t.sqrt(), (1 - abar_t).sqrt()
        x0, eps = to_x0_eps(model_output, sample, alpha, sigma, self.prediction_type)
        x0 = self._edit_x0(x0)
        if use_clipped_model_output:
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
