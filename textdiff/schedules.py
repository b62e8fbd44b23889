"""Noise schedules and timestep samplers.

Masking schedules (absorbing-state / masked diffusion) are described by alpha(t), the probability
that a token is still clean at time t in [0, 1], with alpha(0) = 1 and alpha(1) = 0 (or ~0).
The continuous-time ELBO of masked diffusion (MDLM, Sahoo et al. 2024) is

    NELBO(x) = int_0^1 w(t) E_{x_t ~ q(.|x)} [ sum_{i masked in x_t} -log p_theta(x_i | x_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)),

so `elbo_weight` is the per-token loss weight (1/t for the linear schedule, as in LLaDA and dllm).

Other schedule families (Gaussian / flow sigma schedules, shift, time warping) live in this
module too; add them next to the masking schedules with their own small registry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "MASKING_SCHEDULES",
    "CosineSchedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "MaskingSchedule",
    "get_masking_schedule",
    "sample_timesteps",
    "uniform_noise",
]


# ----------------------------------------------------------------------------------------------
# Masking schedules
# ----------------------------------------------------------------------------------------------


class MaskingSchedule(ABC):
    """alpha(t): probability that a token is still clean at time t (alpha(0)=1, alpha(1)~0)."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Probability that a token is unmasked at time t."""

    @abstractmethod
    def alpha_prime(self, t: Tensor) -> Tensor:
        """d alpha / dt (analytic)."""

    def mask_prob(self, t: Tensor) -> Tensor:
        """Probability that a token is masked at time t: 1 - alpha(t)."""
        return 1.0 - self.alpha(t)

    def elbo_weight(self, t: Tensor) -> Tensor:
        """Per-masked-token ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)); infinite at t = 0."""
        return -self.alpha_prime(t) / self.mask_prob(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(MaskingSchedule):
    """alpha(t) = 1 - t (LLaDA, dllm default): mask prob t, weight exactly 1/t."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def mask_prob(self, t: Tensor) -> Tensor:
        return t.clone()

    def elbo_weight(self, t: Tensor) -> Tensor:
        return 1.0 / t


class CosineSchedule(MaskingSchedule):
    """alpha(t) = cos(pi t / 2): mask prob 1 - cos(pi t / 2), weight (pi/2) sin(pi t/2) / (1 - cos(pi t/2))."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def mask_prob(self, t: Tensor) -> Tensor:
        # 1 - cos(x) = 2 sin^2(x / 2): no cancellation for small t
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def elbo_weight(self, t: Tensor) -> Tensor:
        # (pi/2) sin(x) / (1 - cos(x)) with x = pi t / 2 simplifies to (pi/2) cot(x / 2)
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


class LogLinearSchedule(MaskingSchedule):
    """MDLM loglinear: sigma(t) = -log(1 - (1-eps) t), so alpha(t) = 1 - (1-eps) t and weight 1/t."""

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"LogLinearSchedule eps must be in [0, 1), got {eps}")
        self.eps = eps

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t

    def elbo_weight(self, t: Tensor) -> Tensor:
        # (1-eps) / ((1-eps) t): MDLM's dsigma / expm1(sigma)
        return 1.0 / t

    def __repr__(self) -> str:
        return f"LogLinearSchedule(eps={self.eps})"


MASKING_SCHEDULES: dict[str, type[MaskingSchedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "loglinear": LogLinearSchedule,
}


def get_masking_schedule(name: str, **kwargs: float) -> MaskingSchedule:
    """Build a masking schedule by name ("linear" | "cosine" | "loglinear")."""
    if name not in MASKING_SCHEDULES:
        valid = ", ".join(sorted(MASKING_SCHEDULES))
        raise ValueError(f"unknown masking schedule {name!r}; valid names: {valid}")
    return MASKING_SCHEDULES[name](**kwargs)


# ----------------------------------------------------------------------------------------------
# Timestep samplers
# ----------------------------------------------------------------------------------------------


def uniform_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """U(0, 1) drawn on the generator's device, then moved to `device` (a CPU generator works for GPU)."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def sample_timesteps(
    batch_size: int,
    *,
    eps: float = 1e-3,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training timesteps t in [eps, 1), one per sequence.

    uniform:    t = eps + (1 - eps) u,  u ~ U(0, 1) iid.
    antithetic: (MDLM low-discrepancy) one u0 ~ U(0, 1) for the batch and
                t_i = eps + (1 - eps) ((u0 / B + i / B) mod 1): exactly one t per stratum
                [eps + (1-eps) k/B, eps + (1-eps) (k+1)/B) (t_i lies in stratum i). A uniformly
                chosen coordinate is U[eps, 1), so batch-mean losses stay unbiased, with less variance.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    if antithetic:
        u0 = uniform_noise((1,), generator=generator, device=device)  # [1]
        offsets = torch.arange(batch_size, device=device, dtype=u0.dtype) / batch_size  # [B]
        u = (u0 / batch_size + offsets) % 1.0  # [B]
    else:
        u = uniform_noise((batch_size,), generator=generator, device=device)  # [B]
    return eps + (1.0 - eps) * u  # [B]
