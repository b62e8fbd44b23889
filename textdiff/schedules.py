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
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

__all__ = [
    # flow / VP-Gaussian part
    "FLOW_LOSS_WEIGHTING",
    "FLOW_SCHEDULE_MODES",
    "FLOW_TIMESTEP_SAMPLING",
    "MASKED_TIMESTEP_SAMPLING",
    "MASKING_SCHEDULES",
    "CosineSchedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "MaskingSchedule",
    "batch_shard",
    "calculate_shift",
    "flow_loss_weight",
    "flow_model_timesteps",
    "flow_sigmas",
    "get_masking_schedule",
    "normal_noise",
    "sample_flow_sigmas",
    "sample_timesteps",
    "shift_sigmas",
    "time_shift",
    "uniform_noise",
    "vp_alphas_cumprod",
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


_BATCH_SHARD = (0, 1)  # (rank, world_size) of the training batch being noised; see `batch_shard`


@contextmanager
def batch_shard(rank: int, world_size: int) -> Iterator[None]:
    """Data-parallel noise: inside, every per-example draw (`uniform_noise(..., per_example=True)`,
    `normal_noise`, `sample_timesteps`, `sample_flow_sigmas`) is drawn for the global batch of `world_size` equal
    local batches from the (rank-synchronised) RNG, and this rank keeps rows [rank * B, (rank + 1) * B). So rank r
    noises its examples exactly as one process noising the concatenated global batch would: no two ranks share
    noise, and 2 ranks x batch b train like 1 rank x batch 2b. Whole-batch draws (per_example=False) are taken
    identically by all ranks, which keeps their RNGs in step."""
    global _BATCH_SHARD
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    previous, _BATCH_SHARD = _BATCH_SHARD, (rank, world_size)
    try:
        yield
    finally:
        _BATCH_SHARD = previous


def _draw_global(draw, shape: tuple[int, ...]) -> Tensor:
    """`draw(global_shape)` for the global batch, then this rank's rows (shape[0] is the local batch)."""
    rank, world = _BATCH_SHARD
    if world == 1:
        return draw(tuple(shape))
    full = draw((shape[0] * world, *shape[1:]))
    return full[rank * shape[0]:(rank + 1) * shape[0]]


def uniform_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    per_example: bool = False,
) -> Tensor:
    """U(0, 1) drawn on the generator's device, then moved to `device` (a CPU generator works for GPU).
    per_example: dim 0 is the batch, so under `batch_shard` the draw is this rank's rows of the global batch's."""
    draw_device = generator.device if generator is not None else device

    def draw(size: tuple[int, ...]) -> Tensor:
        return torch.rand(size, generator=generator, device=draw_device)

    return (_draw_global(draw, shape) if per_example else draw(tuple(shape))).to(device)


def normal_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """N(0, 1) per example (dim 0 is the batch; sharded under `batch_shard` like `uniform_noise`)."""
    draw_device = generator.device if generator is not None else device

    def draw(size: tuple[int, ...]) -> Tensor:
        return torch.randn(size, generator=generator, device=draw_device)

    return _draw_global(draw, shape).to(device=device, dtype=dtype)


MASKED_TIMESTEP_SAMPLING = ("uniform", "low_discrepancy", "stratified")
"""Laws of the masked family's training timesteps (see `sample_timesteps`)."""


def sample_timesteps(
    batch_size: int,
    *,
    eps: float = 1e-3,
    method: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training timesteps t = eps + (1 - eps) u in [eps, 1), one per sequence, with u in [0, 1) drawn by `method`:

    uniform:         u_i ~ U(0, 1) iid.
    low_discrepancy: (VDM's sampler, Kingma et al. 2021) one v ~ U(0, 1) for the whole batch and
                     u_i = (v + i) / B: the B points are evenly spaced 1/B apart, one in each stratum [i/B, (i+1)/B).
    stratified:      (MDLM's `antithetic_sampling`) u_i = (v_i + i) / B with v_i ~ U(0, 1) iid: one independent
                     uniform in each stratum, so the spacing varies.
    Under both stratified laws u_i lies in stratum i and a uniformly chosen coordinate is U[0, 1), so batch-mean
    losses stay unbiased, with less variance than iid draws.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    if method not in MASKED_TIMESTEP_SAMPLING:
        raise ValueError(f"unknown timestep sampler {method!r}; valid: {', '.join(MASKED_TIMESTEP_SAMPLING)}")
    rank, world = _BATCH_SHARD  # the strata span the global batch; this rank keeps its rows
    n = batch_size * world
    if method == "uniform":
        u = uniform_noise((n,), generator=generator, device=device)  # [N]
    else:
        draws = 1 if method == "low_discrepancy" else n
        v = uniform_noise((draws,), generator=generator, device=device)  # [1] or [N]
        offsets = torch.arange(n, device=device, dtype=v.dtype) / n  # [N]
        u = (v / n + offsets) % 1.0  # [N], MDLM's arithmetic (low_discrepancy: the old draw, bit for bit)
    u = u[rank * batch_size:(rank + 1) * batch_size]  # [B]
    return eps + (1.0 - eps) * u  # [B]


# ----------------------------------------------------------------------------------------------
# Flow-matching (rectified flow) sigma schedules: x_sigma = (1 - sigma) x0 + sigma eps, sigma = 1 is noise
# ----------------------------------------------------------------------------------------------

FLOW_SCHEDULE_MODES = ("diffusers", "single_shift", "wan", "unipc_diffusers")
"""How the sigma grid is built (see `flow_sigmas`)."""


def shift_sigmas(sigmas: Tensor | float, shift: float) -> Tensor | float:
    """Static timestep shift of SD3 / Wan: s * sigma / (1 + (s - 1) * sigma); shift 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: Tensor | float, mu: float, shift_type: str = "exponential") -> Tensor | float:
    """Resolution-dependent ("dynamic") shift of Flux / SD3: exponential e^mu / (e^mu + 1/sigma - 1), or linear
    mu / (mu + 1/sigma - 1). Exponential with mu = ln(s) is exactly the static shift s."""
    if shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    if shift_type == "linear":
        return mu / (mu + (1 / sigmas - 1))
    raise ValueError(f"unknown shift_type {shift_type!r}; valid: exponential, linear")


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu of the dynamic shift, linear in the number of patch tokens (SD3 pipeline's `calculate_shift`)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def flow_sigmas(
    num_steps: int,
    *,
    shift: float = 1.0,
    mu: float | None = None,
    shift_type: str = "exponential",
    mode: str = "diffusers",
    num_train_timesteps: int = 1000,
) -> Tensor:
    """Sampling sigmas [num_steps + 1] in float32, decreasing from ~1 to a final 0.

    mode:
      "diffusers"       FlowMatchEulerDiscreteScheduler (and the SD3 reference sampler): the 1000-entry training
                        table is shifted, its ends (sigma_max = 1, sigma_min = shift(1/1000)) are linearly
                        interpolated in timestep space and the result is shifted AGAIN, so the last non-zero sigma
                        is shift(shift(0.001)) (0.008929 for shift 3). With `mu` (use_dynamic_shifting) the table
                        is not shifted and the grid is shifted once by `time_shift(mu)`.
      "single_shift"    linspace(1, 1/T, n) shifted once (diffusers PR 13246 behaviour; last sigma shift(0.001)).
      "wan"             Wan2.1 FlowUniPC / FlowDPM: linspace(0.999, 0, n + 1)[:-1], shifted once.
      "unipc_diffusers" diffusers UniPCMultistepScheduler(use_flow_sigmas=True): linspace(1, 1/T, n + 1)[:-1],
                        shifted once, sigma[0] reduced by 1e-6 (avoids log 0 in the solver).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if mode not in FLOW_SCHEDULE_MODES:
        raise ValueError(f"unknown flow schedule mode {mode!r}; valid: {', '.join(FLOW_SCHEDULE_MODES)}")
    T = num_train_timesteps

    def apply_shift(s):
        return time_shift(s, mu, shift_type) if mu is not None else shift_sigmas(s, shift)

    if mode == "diffusers":
        table = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy()) / T  # float32, as diffusers
        if mu is None:
            table = shift_sigmas(table, shift)
        sigma_max, sigma_min = table[0].item(), table[-1].item()
        sigmas = np.linspace(sigma_max * T, sigma_min * T, num_steps) / T  # float64 like diffusers
    elif mode == "single_shift":
        sigmas = np.linspace(1.0, 1.0 / T, num_steps)
    elif mode == "wan":
        sigmas = np.linspace(1.0 - 1.0 / T, 0.0, num_steps + 1)[:-1]
    else:
        sigmas = np.linspace(1.0, 1.0 / T, num_steps + 1)[:-1]
    sigmas = apply_shift(sigmas)
    if mode == "unipc_diffusers" and abs(sigmas[0] - 1.0) < 1e-6:
        sigmas[0] -= 1e-6
    return torch.cat([torch.from_numpy(np.asarray(sigmas, dtype=np.float64)).float(), torch.zeros(1)])


def flow_model_timesteps(sigmas: Tensor, num_train_timesteps: int = 1000, integer: bool = False) -> Tensor:
    """What the model is fed: sigma * T as float32 (SD3 / FlowMatchEuler), or cast to int64 (Wan, diffusers UniPC).
    `sigmas` are the sampling points (without the final 0)."""
    t = sigmas.float() * num_train_timesteps
    return t.long() if integer else t


# ----------------------------------------------------------------------------------------------
# VP-Gaussian schedules (DDPM / DDIM / Imagen): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
# ----------------------------------------------------------------------------------------------


def vp_alphas_cumprod(
    name: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> Tensor:
    """abar_t [T] (float32) of a discrete VP schedule.

    "linear":        betas = linspace(beta_start, beta_end, T) (DDPM; diffusers `linear`).
    "scaled_linear": betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (Stable Diffusion).
    "cosine":        abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped at max_beta (Nichol & Dhariwal;
                     diffusers `squaredcos_cap_v2`).
    """
    T = num_train_timesteps
    if name == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif name == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif name == "cosine":

        def abar(u: float) -> float:
            return math.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)], dtype=torch.float32)
    else:
        raise ValueError(f"unknown VP schedule {name!r}; valid: linear, scaled_linear, cosine")
    return torch.cumprod(1.0 - betas, dim=0)


# ----------------------------------------------------------------------------------------------
# Flow training timesteps (SD3 `compute_density_for_timestep_sampling`) and loss weights
# ----------------------------------------------------------------------------------------------

FLOW_TIMESTEP_SAMPLING = ("uniform", "logit_normal", "mode")
FLOW_LOSS_WEIGHTING = ("none", "cosmap", "sigma_sqrt")


def sample_flow_sigmas(
    batch_size: int,
    *,
    scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training sigmas [B] in (0, 1).

    uniform:      sigma ~ U(0, 1).
    logit_normal: sigma = sigmoid(n), n ~ N(logit_mean, logit_std) (SD3 rf/lognorm; density
                  1/(s sqrt(2 pi)) 1/(t(1-t)) exp(-(logit t - m)^2 / (2 s^2))).
    mode:         u ~ U(0,1), sigma = 1 - u - mode_scale (cos^2(pi u / 2) - 1 + u).
    Then the static `shift`. Unlike diffusers' SD3 script, sigma is used directly (no lookup into a shifted,
    index-reversed 1000-entry table), so a positive logit_mean means MORE noise here.
    """
    # per example: under `batch_shard`, this rank's rows of the global batch's draw
    if scheme == "uniform":
        sigmas = uniform_noise((batch_size,), generator=generator, device=device, per_example=True)
    elif scheme == "logit_normal":
        n = normal_noise((batch_size,), generator=generator, device=device) * logit_std + logit_mean
        sigmas = torch.sigmoid(n)
    elif scheme == "mode":
        u = uniform_noise((batch_size,), generator=generator, device=device, per_example=True)
        sigmas = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    else:
        raise ValueError(f"unknown timestep sampling {scheme!r}; valid: {', '.join(FLOW_TIMESTEP_SAMPLING)}")
    return shift_sigmas(sigmas, shift).to(device)


def flow_loss_weight(sigmas: Tensor, scheme: str = "none") -> Tensor:
    """SD3 loss weights: "cosmap" 2 / (pi (1 - 2 sigma + 2 sigma^2)), "sigma_sqrt" sigma^-2, "none" 1."""
    if scheme == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "none":
        return torch.ones_like(sigmas)
    raise ValueError(f"unknown loss weighting {scheme!r}; valid: {', '.join(FLOW_LOSS_WEIGHTING)}")
