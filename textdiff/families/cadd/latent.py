"""CADD's continuous track as pure functions: the forward path of a masked position's latent, the z0 estimates, the
posterior step, the temperature schedule, and the continuous-time KL weight of the ELBO.

Notation (continuous.md section 7): gamma_bar(t) = 1 - t is the latent's signal level (linear, the same t as the
masking); `scale` is the noise scale (the embedding table's RMS by default, so z0 and the noise are commensurate
whatever the table's init; with a unit-variance table it is 1, the reference's setting).
  flow:      z_t = gamma_bar z0 + (1 - gamma_bar) scale eps          = (1 - t) z0 + t scale eps
  gaussian:  z_t = sqrt(gamma_bar) z0 + sqrt(1 - gamma_bar) scale eps
An unmasked position's latent is its embedding z0 (it never enters the model: the input is embed(token) there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LATENT_PATHS", "Z0_MODES", "bayes_z0", "estimate_z0", "gamma_bar", "kl_weight", "noise_latents",
           "posterior_step", "table_scale", "temperature"]

LATENT_PATHS = ("flow", "gaussian")
Z0_MODES = ("hard", "soft")


def gamma_bar(t: Tensor) -> Tensor:
    """Signal level of the latent at time t (linear): 1 - t."""
    return 1.0 - t


def table_scale(table: Tensor) -> Tensor:
    """RMS of the embedding table's entries (detached): the default noise scale."""
    return table.detach().float().pow(2).mean().sqrt()


def _col(x: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] broadcasting against `like` [B, L, ...]."""
    return x.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def noise_latents(z0: Tensor, eps: Tensor, t: Tensor, path: str, scale: Tensor | float = 1.0) -> Tensor:
    """z_t [B, L, D] of clean latents z0 [B, L, D] at times t [B] on `path` (see the module docstring)."""
    g = _col(gamma_bar(t), z0)
    if path == "flow":
        return g * z0 + (1 - g) * scale * eps
    if path == "gaussian":
        return g.sqrt() * z0 + (1 - g).clamp(min=0).sqrt() * scale * eps
    raise ValueError(f"unknown latent path {path!r}; valid: {', '.join(LATENT_PATHS)}")


def posterior_step(z_t: Tensor, z0_hat: Tensor, t: Tensor, s: Tensor, path: str, *, scale: Tensor | float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """z_s [B, L, D] from z_t at time t [B] to s [B] (s <= t) given the estimate z0_hat [B, L, D].

    flow (deterministic): z_s = coef0 z0_hat + coef_t z_t, coef_t = (1 - g_s) / (1 - g_t), coef0 = g_s - coef_t g_t
        (with the oracle z0_hat = z0 this moves z_t's own noise to level s; s = 0 gives z0_hat exactly);
    gaussian (DDPM posterior q(z_s | z_t, z0_hat)): gamma = g_t / g_s,
        mu = sqrt(g_s)(1 - gamma)/(1 - g_t) z0_hat + sqrt(gamma)(1 - g_s)/(1 - g_t) z_t,
        var = (1 - g_s)(1 - gamma)/(1 - g_t) scale^2.
    s = t leaves z_t unchanged. t is > 0 wherever a latent is still masked (t = 0 rows are returned as z0_hat)."""
    g_t, g_s = _col(gamma_bar(t), z_t), _col(gamma_bar(s), z_t)
    one_minus_t = (1 - g_t).clamp(min=1e-12)
    if path == "flow":
        coef_t = (1 - g_s) / one_minus_t
        return (g_s - coef_t * g_t) * z0_hat + coef_t * z_t
    if path == "gaussian":
        gamma = torch.where(g_s > 0, g_t / g_s.clamp(min=1e-12), torch.ones_like(g_s))
        mu = g_s.sqrt() * (1 - gamma) / one_minus_t * z0_hat + gamma.sqrt() * (1 - g_s) / one_minus_t * z_t
        var = ((1 - g_s) * (1 - gamma) / one_minus_t).clamp(min=0)
        noise = torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=z_t.dtype)
        return mu + var.sqrt() * scale * noise
    raise ValueError(f"unknown latent path {path!r}; valid: {', '.join(LATENT_PATHS)}")


def estimate_z0(logits: Tensor, table: Tensor, mode: str, mask_token_id: int | None = None) -> Tensor:
    """z0_hat [B, L, D] from logits [B, L, V] and the embedding table [V, D]: "hard" = the embedding of the argmax
    token (mode-seeking), "soft" = the probability-weighted embedding softmax(logits) @ table (mode-covering).
    [MASK] (never a clean token) gets no probability."""
    if mode == "hard":  # argmax without copying the logits; the rare rows whose argmax is [MASK] are redone
        ids = logits.argmax(-1)  # [B, L]
        if mask_token_id is not None:
            bad = ids == mask_token_id
            if bool(bad.any()):
                rows = logits[bad].float().index_fill(-1, torch.tensor([mask_token_id], device=logits.device),
                                                      -torch.inf)
                ids = ids.masked_scatter(bad, rows.argmax(-1))
        return table[ids].float()
    if mode == "soft":
        probs = torch.softmax(logits.float(), dim=-1)  # the one [.., V] copy: [MASK] is dropped and renormalised
        if mask_token_id is None:
            return probs @ table.float()
        probs[..., mask_token_id] = 0
        return (probs @ table.float()) / probs.sum(-1, keepdim=True)
    raise ValueError(f"unknown z0 mode {mode!r}; valid: {', '.join(Z0_MODES)}")


def bayes_z0(logits: Tensor, z_t: Tensor, t: Tensor, table: Tensor, path: str, scale: Tensor | float = 1.0,
             mask_token_id: int | None = None) -> Tensor:
    """z0_hat [B, L, D] = E[e_v] under p(v) ~ softmax(logits)_v N(z_t; a_t e_v, (sigma_t scale)^2 I): the model's
    token probabilities reweighted by the exact likelihood of z_t under each token (a_t, sigma_t the path's signal
    and noise levels at t [B]). Any z0_hat gives a valid ELBO; this one is exact where z_t alone pins the token
    (small t), which the network's own estimate is not until it is very well trained."""
    g = _col(gamma_bar(t), z_t).float()
    a, sigma = (g, 1 - g) if path == "flow" else (g.sqrt(), (1 - g).clamp(min=0).sqrt())
    logp = logits.float()
    if mask_token_id is not None:
        logp = logp.index_fill(-1, torch.tensor([mask_token_id], device=logp.device), -torch.inf)
    table = table.float()
    # ||z_t - a e_v||^2 = ||z_t||^2 - 2 a z_t.e_v + a^2 ||e_v||^2; the first term is the same for every v
    dist = -2 * a * (z_t.float() @ table.T) + a**2 * table.pow(2).sum(-1)  # [B, L, V]
    weights = torch.softmax(torch.log_softmax(logp, -1) - dist / (2 * (sigma * scale).clamp(min=1e-12) ** 2), -1)
    return weights @ table


def temperature(t: Tensor | float, tau_max: float) -> Tensor:
    """CADD's sampling temperature tau(t) = 1 + (tau_max - 1) cos(pi/2 (1 - t)): tau_max at t = 1, 1 at t = 0."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return 1.0 + (tau_max - 1.0) * torch.cos(math.pi / 2 * (1.0 - t))


def kl_weight(t: Tensor, path: str) -> Tensor:
    """lambda(t) = -SNR'(t) / 2 of the latent's path: the continuous-time ELBO charges a still-masked position
    lambda(t) ||z0 - z0_hat||^2 / scale^2 nats per unit time (VDM). flow: SNR = (1-t)^2/t^2 -> (1-t)/t^3;
    gaussian: SNR = (1-t)/t -> 1/(2 t^2)."""
    if path == "flow":
        return (1 - t) / t**3
    if path == "gaussian":
        return 0.5 / t**2
    raise ValueError(f"unknown latent path {path!r}; valid: {', '.join(LATENT_PATHS)}")
