"""Inputs: what turns a model's inputs into the trunk's hidden states [B, L, hidden].

- tokens: a plain `nn.Embedding` over the vocabulary, [MASK] included (plain, so HF's `resize_token_embeddings` and
  peft's `modules_to_save` keep working); `TextDiffModel.embed_tokens`.
- `VectorInput`: continuous vectors (embedding diffusion: CDCD, Plaid, LD4LG), optionally L2-normalised to norm
  sqrt(d), zero-initialised when they are an auxiliary stream, with a self-conditioning input.
- `LatentInput`: hybrid token + latent (CADD): embed(token) + proj(z) at the positions that carry a latent.
- `ConditionPrefix`: condition vectors put in front of the sequence (the DiT's caption states, planner slots).
- `PooledCondition`: one condition vector per sample, added to the time embedding (the DiT's pooled caption).
- `PatchInput`: images [B, C, H, W] / videos [B, C, T, H, W] as patch tokens with learned frame + spatial positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textdiff.modeling.configuration import LATENT_PROJECTIONS
from textdiff.modeling.layers import RMSNorm, ZeroLinear

__all__ = [
    "ConditionPrefix", "LatentInput", "PatchInput", "PooledCondition", "VectorInput", "l2_scaled", "patchify",
    "unpatchify",
]

def l2_scaled(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| * sqrt(d) over the last dimension (CDCD's normalised embeddings, LD4LG's latents): every vector
    has norm sqrt(d), so its components have root-mean-square 1."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


class VectorInput(nn.Module):
    """Continuous vectors [B, L, vector_dim] -> [B, L, hidden] through one linear projection (no bias).

    normalize: apply `l2_scaled` to the vectors first. zero_init: the projection starts at exactly zero (an
    auxiliary stream added to token embeddings starts as the token model). self_condition: the projection reads
    [vectors ; previous x0 estimate] (LD4LG / CDCD concatenation); no estimate (the first step) reads zeros.
    """

    def __init__(
        self, *, vector_dim: int, hidden_size: int, normalize: bool = False, zero_init: bool = False,
        self_condition: bool = False,
    ):
        super().__init__()
        self.vector_dim, self.normalize, self.self_condition = vector_dim, normalize, self_condition
        in_dim = 2 * vector_dim if self_condition else vector_dim
        self.proj = (ZeroLinear if zero_init else nn.Linear)(in_dim, hidden_size, bias=False)

    def forward(self, vectors: torch.Tensor, self_condition: torch.Tensor | None = None) -> torch.Tensor:
        if vectors.shape[-1] != self.vector_dim:
            raise ValueError(f"inputs_vectors have width {vectors.shape[-1]}, the model takes {self.vector_dim}")
        vectors = vectors.to(self.proj.weight.dtype)
        if self.normalize:
            vectors = l2_scaled(vectors)
        if self.self_condition:
            estimate = torch.zeros_like(vectors) if self_condition is None else self_condition.to(vectors.dtype)
            vectors = torch.cat([vectors, estimate], dim=-1)  # [B, L, 2 * vector_dim]
        elif self_condition is not None:
            raise ValueError("self_condition was passed but the model has no self-conditioning input "
                             "(config.vector_self_condition is False)")
        return self.proj(vectors)  # [B, L, hidden]


class LatentInput(nn.Module):
    """Hybrid token + latent (CADD): h = embed(token) + proj(z) where a latent is present, embed(token) elsewhere.

    projection "linear": a zero-initialised linear map without bias, so the model starts as the token-only model
    and a zero latent adds exactly nothing; "identity": z is already in the token-embedding space (CADD's
    z0 = embed(x0); latent_dim must equal hidden_size).
    """

    def __init__(self, *, latent_dim: int, hidden_size: int, projection: str = "linear"):
        super().__init__()
        if projection not in LATENT_PROJECTIONS:
            raise ValueError(f"latent projection {projection!r} is not one of {LATENT_PROJECTIONS}")
        if projection == "identity" and latent_dim != hidden_size:
            raise ValueError(f"an identity latent projection needs latent_dim ({latent_dim}) = hidden_size "
                             f"({hidden_size})")
        self.latent_dim = latent_dim
        self.proj = nn.Identity() if projection == "identity" else ZeroLinear(latent_dim, hidden_size, bias=False)

    def forward(
        self, token_embeds: torch.Tensor, latents: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """token_embeds [B, L, hidden], latents [B, L, latent_dim], positions [B, L] bool (None: everywhere)."""
        if latents.shape[:-1] != token_embeds.shape[:-1] or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected "
                             f"{(*token_embeds.shape[:-1], self.latent_dim)}")
        mixed = token_embeds + self.proj(latents.to(token_embeds.dtype))  # [B, L, hidden]
        if positions is None:
            return mixed
        return torch.where(positions.bool()[..., None], mixed, token_embeds)


class ConditionPrefix(nn.Sequential):
    """Condition vectors [B, P, condition_dim] -> [B, P, hidden]: an optional RMSNorm (norm_eps), then a linear
    projection. The model puts the result in front of its sequence (joint attention) and strips it after."""

    def __init__(self, *, condition_dim: int, hidden_size: int, norm_eps: float | None = None):
        norm = [RMSNorm(condition_dim, norm_eps)] if norm_eps is not None else []
        super().__init__(*norm, nn.Linear(condition_dim, hidden_size))


class PooledCondition(nn.Sequential):
    """One condition vector per sample [B, condition_dim] -> [B, hidden] (linear, SiLU, linear), added to the time
    embedding that drives adaLN."""

    def __init__(self, *, condition_dim: int, hidden_size: int):
        super().__init__(nn.Linear(condition_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T * H/p * W/p, C * p * p] (frame-major, then rows, then columns)."""
    B, C, T, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, T, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)  # [B, T, h, w, C, p, p]
    return x.reshape(B, T * (H // p) * (W // p), C * p * p)


def unpatchify(tokens: torch.Tensor, *, frames: int, channels: int, patch_size: int, grid: int) -> torch.Tensor:
    """Inverse of `patchify` for square frames of grid x grid patches: [B, N, C * p * p] -> [B, C, T, H, W]."""
    B, p = tokens.shape[0], patch_size
    x = tokens.reshape(B, frames, grid, grid, channels, p, p).permute(0, 4, 1, 2, 5, 3, 6)  # [B, C, T, h, p, w, p]
    return x.reshape(B, channels, frames, grid * p, grid * p)


class PatchInput(nn.Module):
    """Videos [B, C, T, H, W] -> patch tokens [B, T * h * w, hidden]: a linear patch embedding plus learned
    absolute positions, one per frame (`frame_embed`) and one per spatial patch (`pos_embed`)."""

    def __init__(self, *, in_channels: int, patch_size: int, sample_size: int, num_frames: int, hidden_size: int):
        super().__init__()
        self.patch_size, self.grid = patch_size, sample_size // patch_size
        self.patch_embed = nn.Linear(in_channels * patch_size**2, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(self.grid**2, hidden_size))
        self.frame_embed = nn.Parameter(torch.zeros(num_frames, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[2]
        h = self.patch_embed(patchify(x.to(self.patch_embed.weight.dtype), self.patch_size))  # [B, N, hidden]
        return h + (self.frame_embed[:T, None] + self.pos_embed[None]).reshape(T * self.grid**2, -1)

    def positions(self, frames: int, device: torch.device | None = None) -> torch.Tensor:
        """3-D positions [frames * h * w, 3] (frame, row, column) of the patch tokens, for axial RoPE."""
        n = self.grid
        grid = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(n), torch.arange(n), indexing="ij"), -1)
        return grid.reshape(-1, 3).to(device)
