"""Sampling a continuous (CDCD) text model through the one continuous loop (`samplers/continuous.py`) with the
flow step rules of `samplers/flow.py` (euler, heun, dpmpp_2m, ...), CFG through the shared guider.

The loop runs in flow coordinates: a state y at flow level u is x_ve = y / (1 - u) at sigma = u / (1 - u) for the
ve path (the two paths are the same ODE up to this change of variables), and x_t = y at t = u for the flow path.
The model's `time_warp` spaces the steps: t_i = W^-1(1 - i / N), mapped to u, then u = 0. The model output handed
to the rule is x0_hat = softmax(logits) @ E (prediction_type "sample"); conditioning positions are clamped to
their clean token and embedding at every call (and in the output); the previous x0_hat is fed back at every step (self-conditioning).
"""

from __future__ import annotations

import torch
from torch import Tensor

from textdiff.families.continuous.objective import denoise, embedding_table, expected_embedding
from textdiff.samplers.continuous import sample_continuous
from textdiff.samplers.guidance import ClassifierFreeGuidance
from textdiff.samplers.registry import REGISTRY, build_continuous_sampler

__all__ = ["DECODES", "check_solver", "flow_level_of", "level_of_flow", "sample_tokens"]

DECODES = ("snap", "argmax")


def check_solver(name: str) -> None:
    """A continuous checkpoint takes continuous rules only; a masked rule is a one-line error."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown solver {name!r} for a continuous checkpoint; valid: euler, heun, dpmpp_2m, ...")
    if entry.kind == "masked":
        raise ValueError(f"sampler {name!r} is a masked-diffusion rule; a continuous checkpoint samples with a "
                         f"continuous solver (--solver euler | heun | dpmpp_2m)")
    if name == "ddim":
        raise ValueError("solver 'ddim' runs a discrete VP schedule; a continuous text checkpoint takes a flow "
                         "solver (euler | heun | dpmpp_2m)")


def _cfg(model) -> tuple[str, float, float]:
    c = model.config
    return c.continuous_path, c.continuous_sigma_min, c.continuous_sigma_max


def flow_level_of(t: Tensor, path: str, sigma_min: float, sigma_max: float) -> Tensor:
    """Flow level u of noise level t: ve sigma / (1 + sigma), flow t."""
    if path == "flow":
        return t
    s = sigma_min + t * (sigma_max - sigma_min)
    return s / (1 + s)


def level_of_flow(u: Tensor, path: str, sigma_min: float, sigma_max: float) -> Tensor:
    """Inverse of `flow_level_of`."""
    if path == "flow":
        return u
    s = u / (1 - u)
    return (s - sigma_min) / (sigma_max - sigma_min)


@torch.no_grad()
def sample_tokens(model, clean_ids: Tensor, keep: Tensor, *, steps: int = 64, solver: str = "euler",
                  self_condition: bool = True, decode: str = "snap", guidance_scale: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """(tokens [B, L], forward passes per sample) for rows clean_ids [B, L] whose keep [B, L] positions are the
    condition (prefix or infilling; kept clean). guidance_scale: CFG in the standard convention (1 = off); the
    unconditional pass sees no condition. decode: "snap" (nearest embedding of the final state) or "argmax"
    (argmax of the last call's logits)."""
    check_solver(solver)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if self_condition and not model.config.vector_self_condition:
        raise ValueError("self_condition=True but the model was trained without the self-conditioning input")
    path, smin, smax = _cfg(model)
    table = embedding_table(model)  # [V, d]
    B = clean_ids.shape[0]
    clean = table[clean_ids]  # [B, L, d]
    levels = model.time_warp.step_levels(steps)  # [steps] from t = 1
    sigmas = torch.cat([flow_level_of(levels, path, smin, smax).float(), torch.zeros(1)])
    state = {"estimate": None, "logits": None}

    def den(y: Tensor, timestep: Tensor, keep: Tensor) -> Tensor:
        u = (timestep.float() / 1000.0).to(y.device)  # [B'] flow level
        t = level_of_flow(u, path, smin, smax).clamp(0, 1)
        x = y / (1 - u)[:, None, None] if path == "ve" else y
        ids = clean_ids.repeat(y.shape[0] // B, 1)
        est = state["estimate"] if self_condition else None
        if est is not None and est.shape[0] != y.shape[0]:
            est = est.repeat(y.shape[0] // est.shape[0], 1, 1)[: y.shape[0]]
        if self_condition and est is None:
            est = torch.zeros_like(y)
        logits = denoise(model, x, t, ids, keep, est, path=path, sigma_min=smin, sigma_max=smax)
        x0 = expected_embedding(logits, table).to(y.dtype)  # [B', L, d]
        x0 = torch.where(keep[..., None], table[ids].to(y.dtype), x0)
        state["estimate"], state["logits"] = x0[:B], logits[:B]
        return x0

    sampler = build_continuous_sampler(solver, prediction_type="sample")
    guidance = ClassifierFreeGuidance(scale=guidance_scale) if guidance_scale != 1.0 else None
    u0 = float(sigmas[0])
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    y0 = u0 * noise + (1 - u0) * torch.where(keep[..., None], clean, torch.zeros_like(clean))

    out = sample_continuous(den, sampler, y0, num_steps=steps, cond={"keep": keep},
                            uncond={"keep": torch.zeros_like(keep)} if guidance else None, guidance=guidance,
                            generator=generator, sigmas=sigmas)
    if decode == "snap":
        tokens = (out.sample.float() @ table.float().T).argmax(-1)  # equal norms: max dot = nearest embedding
    else:
        tokens = state["logits"].argmax(-1)
    return torch.where(keep, clean_ids, tokens), out.nfe
