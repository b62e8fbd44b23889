"""CDCD training: noise the L2-normalised, sqrt(d)-scaled token embeddings, score the clean tokens with CE.

Noise level t in [0, 1] (drawn through the model's `TimeWarp`), two paths:
  ve   (CDCD):  x_t = x0 + sigma(t) eps,  sigma(t) = sigma_min + t (sigma_max - sigma_min); the model reads
                x_t / sqrt(sigma^2 + 1) (CDCD's c_in);
  flow:         x_t = (1 - t) x0 + t eps  (the path of `samplers/flow.py`); the model reads x_t.
The model sees embed(token) + proj(vector) per position: clean (condition) positions carry their token and
their clean embedding, noisy ones [MASK] and the noisy vector (CDCD's stack of x, c and the mask, in one sum).
Score interpolation: x0_hat = softmax(logits) @ E with E = `embedding_table(model)`, the table noising used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.modeling.inputs import l2_scaled
from textdiff.objectives.base import Objective, ObjectiveOutput

__all__ = ["PATHS", "ContinuousObjective", "ContinuousOptions", "embedding_table", "expected_embedding",
           "model_inputs", "noise_embeddings", "sigma_of"]

PATHS = ("ve", "flow")


@dataclass
class ContinuousOptions:
    """The `objective` section of a `family: continuous` recipe."""

    path: str = "ve"
    """noising path: "ve" (CDCD's variance exploding, sigma in [sigma_min, sigma_max]) or "flow" ((1-t) x0 + t eps)."""
    sigma_min: float = 1.0
    """ve: smallest noise scale (CDCD: 1)."""
    sigma_max: float = 300.0
    """ve: largest noise scale (CDCD: 300)."""
    self_condition: float = 0.5
    """fraction of training steps that feed back the (detached) previous x0_hat; 0 = no self-conditioning input."""
    time_warp: bool = True
    """learn CDCD's time warp (training t distribution and sampling steps); false = uniform t and uniform steps."""
    time_warp_bins: int = 100
    """bins of the piecewise-linear loss fit (CDCD: 100)."""
    prefix_fraction: float = 0.5
    """fraction of training rows conditioned on a clean random-length prefix (the rest: random infilling masks)."""
    condition_fraction: float = 0.5
    """fraction of rows that get a condition at all (the others are fully noised: unconditional)."""

    def __post_init__(self):
        if self.path not in PATHS:
            raise ValueError(f"objective.path must be one of {', '.join(PATHS)}, got {self.path!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < objective.sigma_min < objective.sigma_max, got {self.sigma_min}, {self.sigma_max}")
        for name in ("self_condition", "prefix_fraction", "condition_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.time_warp_bins < 2:
            raise ValueError(f"objective.time_warp_bins must be >= 2, got {self.time_warp_bins}")


def embedding_table(model) -> Tensor:
    """E [V, d]: the model's token embeddings, L2-normalised and scaled by sqrt(d): noising and x0_hat both use it."""
    return l2_scaled(model.embed_tokens.weight)


def expected_embedding(logits: Tensor, table: Tensor) -> Tensor:
    """Score interpolation: x0_hat = softmax(logits) @ E, [B, L, V] x [V, d] -> [B, L, d]."""
    return torch.softmax(logits.float(), dim=-1) @ table.float()


def sigma_of(t: Tensor, path: str, sigma_min: float, sigma_max: float) -> Tensor:
    """Noise scale at level t: ve sigma_min + t (sigma_max - sigma_min); flow t."""
    return sigma_min + t * (sigma_max - sigma_min) if path == "ve" else t


def noise_embeddings(x0: Tensor, eps: Tensor, t: Tensor, path: str, sigma_min: float = 1.0,
                     sigma_max: float = 300.0) -> Tensor:
    """x_t [B, L, d] of clean x0 [B, L, d], noise eps and levels t [B]: ve x0 + sigma eps, flow (1-t) x0 + t eps."""
    s = sigma_of(t, path, sigma_min, sigma_max).to(x0.dtype)[:, None, None]
    return x0 + s * eps if path == "ve" else (1 - s) * x0 + s * eps


def model_inputs(x_t: Tensor, t: Tensor, path: str, sigma_min: float, sigma_max: float) -> Tensor:
    """What the network reads of x_t: ve x_t / sqrt(sigma^2 + 1) (unit variance), flow x_t."""
    if path == "flow":
        return x_t
    s = sigma_of(t, path, sigma_min, sigma_max).to(x_t.dtype)[:, None, None]
    return x_t / torch.sqrt(s * s + 1)


def denoise(model, x_t: Tensor, t: Tensor, clean_ids: Tensor, keep: Tensor, self_cond: Tensor | None,
            *, path: str, sigma_min: float, sigma_max: float, attention_mask: Tensor | None = None) -> Tensor:
    """Logits [B, L, V] of the clean tokens given noisy x_t [B, L, d] at levels t [B]; positions with keep [B, L]
    True read their clean token and clean embedding instead (conditioning). self_cond: previous x0_hat or None."""
    table = embedding_table(model)
    vectors = torch.where(keep[..., None], table[clean_ids].to(x_t.dtype),
                          model_inputs(x_t, t, path, sigma_min, sigma_max))
    ids = torch.where(keep, clean_ids, torch.full_like(clean_ids, model.config.mask_token_id))
    kwargs = {"t": t} if model.config.time_conditioning else {}
    if self_cond is not None:
        self_cond = torch.where(keep[..., None], table[clean_ids].to(self_cond.dtype), self_cond)
    return model(input_ids=ids, inputs_vectors=vectors, self_condition=self_cond, attention_mask=attention_mask,
                 **kwargs).logits


def condition_masks(B: int, L: int, *, condition_fraction: float, prefix_fraction: float,
                    generator: torch.Generator | None = None, device=None) -> Tensor:
    """keep [B, L] bool: rows without a condition (prob 1 - condition_fraction) keep nothing; the others keep a
    clean prefix of uniform length in [0, L) (prob prefix_fraction) or a random infilling set (each position
    kept with a per-row uniform rate)."""
    r = torch.rand(B, 3, generator=generator, device=device)
    pos = torch.arange(L, device=device)[None]
    prefix = pos < (r[:, 2:3] * L).long()
    infill = torch.rand(B, L, generator=generator, device=device) < r[:, 2:3]
    keep = torch.where(r[:, 1:2] < prefix_fraction, prefix, infill)
    return keep & (r[:, 0:1] < condition_fraction)


class ContinuousObjective(Objective):
    """CE on the noisy positions of the clean tokens (score interpolation), t drawn through `model.time_warp`,
    self-conditioning on a fraction of steps; the warp is fitted to the detached per-row CE while training."""

    attention_mode = "bidirectional"

    def __init__(self, *, path: str = "ve", sigma_min: float = 1.0, sigma_max: float = 300.0,
                 self_condition: float = 0.5, prefix_fraction: float = 0.5, condition_fraction: float = 0.5,
                 time_warp: bool = True, time_warp_bins: int = 100):
        ContinuousOptions(path=path, sigma_min=sigma_min, sigma_max=sigma_max, self_condition=self_condition,
                          prefix_fraction=prefix_fraction, condition_fraction=condition_fraction,
                          time_warp=time_warp, time_warp_bins=time_warp_bins)  # validates
        self.path, self.sigma_min, self.sigma_max = path, sigma_min, sigma_max
        self.self_condition, self.prefix_fraction, self.condition_fraction = self_condition, prefix_fraction, condition_fraction

    def _noisy(self, model, batch, t, generator=None):
        ids = batch["input_ids"]  # [B, L]
        table = embedding_table(model)
        x0 = table[ids]  # [B, L, d]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return ids, noise_embeddings(x0, eps, t, self.path, self.sigma_min, self.sigma_max)

    def row_ce(self, model, batch, t, keep, *, self_condition: bool, generator=None) -> tuple[Tensor, Tensor]:
        """(summed CE [B] over scored positions, scored positions [B]) at levels t [B] with condition keep [B, L]."""
        ids, x_t = self._noisy(model, batch, t, generator)
        scored = ~keep
        if "attention_mask" in batch:
            scored = scored & batch["attention_mask"].bool()
        kw = {"path": self.path, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
              "attention_mask": batch.get("attention_mask")}
        estimate = None  # a self-conditioning input without an estimate reads zeros (the first sampling step)
        if self_condition:
            with torch.no_grad():
                first = denoise(model, x_t, t, ids, keep, None, **kw)
                estimate = expected_embedding(first, embedding_table(model)).detach()
        logits = denoise(model, x_t, t, ids, keep, estimate, **kw)
        ce = F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")  # [B, L]
        return (ce * scored).sum(1), scored.sum(1)

    def __call__(self, model, batch: dict[str, Any]) -> ObjectiveOutput:
        ids = batch["input_ids"]
        B, L = ids.shape
        warp = model.time_warp
        t = warp.sample(B, device=ids.device)
        keep = condition_masks(B, L, condition_fraction=self.condition_fraction,
                               prefix_fraction=self.prefix_fraction, device=ids.device)
        use_sc = bool(model.config.vector_self_condition) and float(torch.rand(())) < self.self_condition
        ce_sum, n = self.row_ce(model, batch, t, keep, self_condition=use_sc)
        if model.training:
            warp.update(t, ce_sum / n.clamp(min=1))
        loss = ce_sum.sum() / n.sum().clamp(min=1)
        return ObjectiveOutput(loss=loss, logs={"mean_t": float(t.mean()), "self_conditioned": float(use_sc)})

    @torch.no_grad()
    def nll(self, model, batch, *, generator=None, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        """CE of the clean tokens averaged over noise levels t on a stratified uniform grid (num_samples levels,
        unconditional, self-conditioned as the sampler is): (summed nats, scored tokens x num_samples / num_samples)."""
        ids = batch["input_ids"]
        B = ids.shape[0]
        keep = torch.zeros_like(ids, dtype=torch.bool)
        total, count = torch.zeros((), device=ids.device), torch.zeros((), device=ids.device)
        u = torch.rand((), generator=generator).item() if generator is not None else 0.5
        for j in range(num_samples):
            t = torch.full((B,), (j + u) / num_samples, device=ids.device)
            ce_sum, n = self.row_ce(model, batch, t, keep, self_condition=bool(model.config.vector_self_condition),
                                    generator=generator)
            total, count = total + ce_sum.sum(), count + n.sum()
        return total / num_samples, count / num_samples

