"""CADD sampling inside the one masked loop: `CaddLatentStep` (the `generate(latent_step=...)` hook) and
`ParticleModel` (K latent samples per step).

Per step (continuous.md section 7, "the hint"): the logits are tempered by tau(t); any masked rule (low_confidence,
threshold, entropy, ...) reveals tokens; z0_hat = hard (argmax embedding) or soft (probability-weighted embedding)
of the tempered logits; positions of the block that stay masked take the posterior step z_t -> z_s; newly revealed
positions set z to their token's embedding. t and s are the fractions of the block still masked before and after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from textdiff.families.cadd.latent import LATENT_PATHS, Z0_MODES, estimate_z0, posterior_step, temperature
from textdiff.samplers.base import LatentStep, SamplerState

__all__ = ["CaddLatentStep", "ParticleModel", "check_latent_options"]


def check_latent_options(*, z0: str, latent_samples: int, tau_max: float, names=("z0", "latent_samples",
                                                                                   "tau_max")) -> None:
    """One-line errors for out-of-range CADD sampling options (named as the caller spells them)."""
    if z0 not in Z0_MODES:
        raise ValueError(f"{names[0]} must be one of {', '.join(Z0_MODES)}, got {z0!r}")
    if int(latent_samples) != latent_samples or latent_samples < 1:
        raise ValueError(f"{names[1]} (K latent samples per step) must be an integer >= 1, got {latent_samples}")
    if not tau_max >= 1.0:
        raise ValueError(f"{names[2]} must be >= 1 (tau(t) = 1 + (tau_max - 1) cos(pi/2 (1 - t))), got {tau_max}")


class CaddLatentStep(LatentStep):
    """The latent half of a CADD step. Latents are [B, L, D], or [B, L, K, D] with K particles (`ParticleModel`
    averages their token probabilities; each particle takes its own posterior step from the shared z0_hat)."""

    def __init__(self, *, table: Tensor, mask_token_id: int, path: str = "flow", z0: str = "hard",
                 tau_max: float = 2.5, scale: Tensor | float = 1.0, generator: torch.Generator | None = None):
        check_latent_options(z0=z0, latent_samples=1, tau_max=tau_max)
        if path not in LATENT_PATHS:
            raise ValueError(f"unknown latent path {path!r}; valid: {', '.join(LATENT_PATHS)}")
        self.table, self.mask_token_id, self.path, self.z0 = table, mask_token_id, path, z0
        self.tau_max, self.scale, self.generator = tau_max, scale, generator

    def logits(self, logits: Tensor, t: Tensor) -> Tensor:
        if self.tau_max == 1.0:  # tau(t) = 1 throughout
            return logits
        return logits / temperature(t, self.tau_max).to(logits.device, logits.dtype)[:, None, None]

    def step(self, logits: Tensor, before: SamplerState, after: SamplerState, t: Tensor, s: Tensor,
             block_length: int) -> Tensor:
        z_t = before.latents  # [B, N, D] or [B, N, K, D]
        # only the block's positions that stay masked take the posterior step: z0 is estimated there alone (the
        # soft estimate is a [V, D] product per position, as large as the token head), the rest keep their latents
        stays = after.tokens[:, :block_length] == self.mask_token_id  # [B, n]
        if self.z0 == "hard":  # an argmax: cheaper over the whole block than gathering the rows that stay
            z0_hat = estimate_z0(logits[:, :block_length], self.table, self.z0, self.mask_token_id).to(z_t.dtype)
        else:
            z0_hat = z_t.new_zeros(*stays.shape, self.table.shape[-1])
            if bool(stays.any()):
                z0_hat[stays] = estimate_z0(logits[:, :block_length][stays][None], self.table, self.z0,
                                            self.mask_token_id)[0].to(z_t.dtype)
        z_t, rest = z_t[:, :block_length], z_t[:, block_length:]
        before = SamplerState(before.tokens[:, :block_length], z_t)
        after = SamplerState(after.tokens[:, :block_length], z_t)
        revealed_z = self.table[after.tokens].to(z_t.dtype)  # [B, N, D]
        extra = z_t.dim() - 3  # particle dims between L and D
        if extra:
            z0_hat, revealed_z = z0_hat[:, :, None].expand_as(z_t), revealed_z[:, :, None].expand_as(z_t)
        z_s = posterior_step(z_t, z0_hat, t, s, self.path, scale=self.scale, generator=self.generator)

        revealed = (before.tokens == self.mask_token_id) & ~stays  # [B, n]
        shape = (*stays.shape, *([1] * (extra + 1)))
        z = torch.where(stays.reshape(shape), z_s, z_t)
        return torch.cat([torch.where(revealed.reshape(shape), revealed_z, z), rest], dim=1)


@dataclass
class _Output:
    logits: Tensor
    cache: object = None


class ParticleModel:
    """A model called with K latent samples per position: latents [B, n, K, D] run as one batch of K * B rows; the
    logits returned are log of the mean of the K softmaxes (the K-sample average of p(x0 | x_t, z_t^k)). The
    tempering tau(t) is applied to this average (the reference tempers each particle first: equal for K = 1)."""

    def __init__(self, model, num_particles: int):
        self.model, self.k, self.config = model, num_particles, model.config

    def parameters(self):
        return self.model.parameters()

    def _rep(self, x: Tensor | None, batch: int) -> Tensor | None:
        if x is None or x.shape[0] != batch:  # None, or a [1, ...] mask shared by every row
            return x
        return x.repeat(self.k, *([1] * (x.dim() - 1)))

    def __call__(self, input_ids: Tensor, *, latents: Tensor, latent_positions: Tensor | None = None,
                 attention_mask: Tensor | None = None, position_ids: Tensor | None = None, **kwargs) -> _Output:
        B, n = input_ids.shape
        if latents.dim() != 4 or latents.shape[2] != self.k:
            raise ValueError(f"ParticleModel({self.k}) takes latents [B, n, {self.k}, D], got {tuple(latents.shape)}")
        flat = latents.permute(2, 0, 1, 3).reshape(self.k * B, n, latents.shape[-1])  # [K B, n, D]
        out = self.model(self._rep(input_ids, B), latents=flat, latent_positions=self._rep(latent_positions, B),
                         attention_mask=self._rep(attention_mask, B), position_ids=self._rep(position_ids, B),
                         **kwargs)
        logp = torch.log_softmax(out.logits.float(), dim=-1).reshape(self.k, B, n, -1)  # [K, B, n, V]
        return _Output(torch.logsumexp(logp, dim=0) - math.log(self.k), out.cache)
