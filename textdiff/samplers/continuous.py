"""`sample_continuous()`: the one loop for continuous states — images [B, C, H, W], videos [B, C, T, H, W] and
continuous text (embedding sequences [B, L, D]) — driving any continuous step rule (flow Euler / Heun /
DPM-Solver++ / UniPC, DDIM) with any guidance. The masked-text twin is `textdiff.generate`; both loops are
`for t in sampler.timesteps: x = sampler.step(model_output, t, x).prev_sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from textdiff.samplers.base import Sampler
from textdiff.samplers.guidance import ClassifierFreeGuidance, skip_layer_guidance
from textdiff.samplers.registry import CONTINUOUS_SAMPLERS, build_continuous_sampler

__all__ = ["CONTINUOUS_SAMPLERS", "ContinuousOutput", "build_continuous_sampler", "sample_continuous"]


@dataclass
class ContinuousOutput:
    sample: Tensor
    """the final state, same shape as the initial noise."""
    nfe: int
    """denoiser evaluations per sample (a guided call counts 2, a skip-layer call 1 more)."""


def _batch(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    if a.keys() != b.keys():
        raise ValueError(f"cond and uncond need the same keys, got {sorted(a)} and {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def sample_continuous(
    denoiser: Callable[..., Tensor],
    sampler: Sampler,
    noise: Tensor,
    *,
    num_steps: int,
    cond: dict[str, Tensor] | None = None,
    uncond: dict[str, Tensor] | None = None,
    guidance: ClassifierFreeGuidance | None = None,
    skip_layers: list[int] | None = None,
    skip_layer_scale: float = 0.0,
    skip_layer_start: float = 0.01,
    skip_layer_stop: float = 0.2,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
    **schedule_options,
) -> ContinuousOutput:
    """Integrate from `noise` to data.

    Args:
        denoiser: called as denoiser(x, t, **cond) with x [B, ...] and t [B] (the sampler's timesteps, e.g.
            sigma * 1000 for flow samplers); returns the prediction the sampler expects (velocity, eps, ...).
        sampler: a continuous step rule (`build_continuous_sampler`); `set_timesteps(num_steps,
            **schedule_options)` is called here (e.g. mu= for the dynamic shift).
        cond / uncond: keyword tensors of the denoiser for the conditional and unconditional passes (batched
            together in one call when guidance is on at a step).
        guidance: CFG in either convention (+ rescale, interval, CFG-Zero*); None = conditional only.
        skip_layers / skip_layer_scale / start / stop: SD3.5 skip-layer guidance; the denoiser receives
            `skip_layers=` on the extra conditional pass.
        callback: callback(i, t, x, x0_hat) after every evaluation.
    """
    if getattr(sampler, "kind", None) == "masked":  # duck-typed rules without a kind are welcome
        raise ValueError(f"sample_continuous drives continuous step rules; {type(sampler).__name__} is a masked "
                         "one (use textdiff.generate)")
    cond = cond or {}
    sampler.set_timesteps(num_steps, **schedule_options)
    timesteps = sampler.timesteps
    x, calls = noise, 0
    B = noise.shape[0]
    for i, t in enumerate(timesteps):
        t_batch = torch.as_tensor(t, device=x.device).float().expand(B)
        guided = guidance is not None and guidance.is_enabled(i, len(timesteps))
        if guided:
            if uncond is None:
                raise ValueError("guidance is on but no uncond inputs were given")
            both = denoiser(torch.cat([x, x]), torch.cat([t_batch, t_batch]), **_batch(cond, uncond))
            pred_cond, pred_uncond = both.chunk(2)
            calls += 2
        else:
            pred_cond, pred_uncond = denoiser(x, t_batch, **cond), None
            calls += 1
        pred = guidance(pred_cond, pred_uncond, i, len(timesteps)) if guidance is not None else pred_cond
        if skip_layers and skip_layer_scale and len(timesteps) * skip_layer_start < i < len(timesteps) * skip_layer_stop:
            pred_skip = denoiser(x, t_batch, skip_layers=skip_layers, **cond)
            calls += 1
            pred = skip_layer_guidance(pred, pred_cond, pred_skip, skip_layer_scale, i, len(timesteps),
                                       skip_layer_start, skip_layer_stop)
        out = sampler.step(pred, t, x, generator=generator)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, x, out.pred_original_sample)
    return ContinuousOutput(sample=x, nfe=calls)
