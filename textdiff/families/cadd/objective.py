"""CADD training: masked diffusion whose masked positions also carry a continuous latent (`family: cadd`).

The masked objective unchanged (absorbing masking with keep-probability alpha_t, ELBO-weighted CE on the masked
positions, its schedule, eps, antithetic t, normalisation), plus one hook: the denoiser is called with
`latents=` z and `latent_positions=` the masked positions, where z = z_t (same t as the masking, see
`latent.noise_latents`) of the clean embedding z0 = embed(x0) (detached: the hint must not be made louder by
growing the table). With the identity latent input the model reads embed([MASK]) + z_t there, embed(x) elsewhere.

Likelihood (`nll`): with z_t in the input the CE alone is NOT a bound on the NLL (z_t carries information about x0
that is not paid for). The bound adds the continuous KL of the positions that stay masked, in continuous time
lambda(t) ||z0 - z0_hat||^2 / scale^2 per masked position (z0_hat: the soft estimate, the posterior mean the
reverse model uses), lambda = -SNR'/2 of the path (`latent.kl_weight`). `z_mse` adds that same term to the
training loss (so training minimises the full bound); off by default, as in the paper (CE only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from textdiff.families.cadd.latent import (
    LATENT_PATHS,
    bayes_z0,
    estimate_z0,
    kl_weight,
    noise_latents,
    table_scale,
)
from textdiff.objectives.masked import MaskedDiffusionObjective, MaskedDiffusionOptions

__all__ = ["CaddObjective", "CaddOptions", "latent_scale"]


@dataclass
class CaddOptions(MaskedDiffusionOptions):
    """The `objective` section of a `family: cadd` recipe: the masked options plus the latent track's."""

    latent_path: str = "flow"
    """path of a masked position's latent: "flow" ((1-t) z0 + t eps, the official code) or "gaussian"
    (sqrt(1-t) z0 + sqrt(t) eps)."""
    noise_scale: float | None = None
    """scale of the latent noise; None = the RMS of the embedding table (a unit-variance table gets unit noise)."""
    z_mse: bool = False
    """add the continuous KL term (SNR-weighted MSE of the soft z0 estimate) to the training loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_path not in LATENT_PATHS:
            raise ValueError(f"objective.latent_path must be one of {', '.join(LATENT_PATHS)}, got {self.latent_path!r}")
        if self.noise_scale is not None and not self.noise_scale > 0:
            raise ValueError(f"objective.noise_scale must be > 0 (or null: the table's RMS), got {self.noise_scale}")


def latent_scale(model, noise_scale: float | None) -> Tensor:
    """The latent noise scale of `model`: `noise_scale`, or the RMS of its embedding table."""
    table = model.embed_tokens.weight
    return table_scale(table) if noise_scale is None else torch.tensor(float(noise_scale), device=table.device)


@dataclass(kw_only=True)
class CaddObjective(CaddOptions, MaskedDiffusionObjective):
    """Masked diffusion + a latent at the masked positions. Overrides of `MaskedDiffusionObjective`:
    `_model_extras` (the latents) and `_extra_loss` (the continuous KL: always in `nll`, in training iff z_mse)."""

    def _model_extras(self, model, input_ids: Tensor, masked: Tensor, t: Tensor,
                      generator: torch.Generator | None) -> dict[str, Any]:
        z0 = model.embed_tokens(input_ids).detach()  # [B, L, D]
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z_t = noise_latents(z0, eps, t, self.latent_path, latent_scale(model, self.noise_scale).to(z0.dtype))
        return {"latents": torch.where(masked[..., None], z_t, z0), "latent_positions": masked}

    def _extra_loss(self, model, logits: Tensor, input_ids: Tensor, masked: Tensor, t: Tensor,
                    extras: dict[str, Any], *, bound: bool) -> Tensor | None:
        if not (bound or self.z_mse):
            return None
        table = model.embed_tokens.weight
        z0 = table[input_ids].detach().float()  # [B, L, D]
        scale = latent_scale(model, self.noise_scale).float()
        if bound:  # the reverse model's mean: the soft estimate reweighted by the exact likelihood of z_t
            z0_hat = bayes_z0(logits, extras["latents"], t, table.detach(), self.latent_path, scale, self.mask_token_id)
        else:
            z0_hat = estimate_z0(logits, table, "soft", self.mask_token_id)  # [B, L, D]
        sq = ((z0 - z0_hat) ** 2).sum(-1) / scale**2  # [B, L]
        return kl_weight(t.float(), self.latent_path) * (sq * masked).sum(1)  # [B]
