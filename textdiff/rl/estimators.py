"""Per-token log-likelihood estimators of a completion under a masked-diffusion LM, as pure functions.

A masked diffusion model has no tractable per-token log-prob, so policy-gradient RL scores each completion token
with a Monte Carlo estimate built from masked views of the sequence:

- **coupled** (DiffuCoder's coupled-GRPO): draw t ~ U(t_min, t_max) and u ~ U(0, 1)^C over the completion. View v1
  masks completion token i iff u_i < t, view v2 (the complement) iff u_i > t, so every completion token is masked
  (and scored) in exactly one of the pair. With the optional all-masked view v0 (every completion token masked):

      l_i = ( logp_v0(i) + [i in M1] logp_v1(i) / t + [i in M2] logp_v2(i) / (1 - t) ) / 2

  and without it ``l_i = ( [i in M1] logp_v1(i) / t + [i in M2] logp_v2(i) / (1 - t) ) / 2``, whose expectation
  equals that of the single-mask ELBO term ``[i in M] logp(i) / t`` with t ~ U(t_min, t_max) (t and 1 - t have the
  same law when t_min + t_max = 1). The 1/t weights make l_i up to 1/t_min times a log-prob: it is a consistent
  score (old, reference and current policy see the same masks), not a normalised log-prob.
- **d1** (diffu-GRPO's one-step estimate): one view with every completion token masked and each real prompt token
  masked with probability ``p_mask_prompt``; ``l_i = logp(i)``.

Every log-prob is MDLM's SUBS one (`subs_log_probs`: the softmax without the [MASK] column), the same
parameterisation as the masked-diffusion loss, so RL and pretraining score tokens alike. The prompt is never masked
by the coupled estimator. Every random draw comes from a local ``torch.Generator``
seeded per row (see `row_mask_seed`), so a row gets the same masks whether it is scored alone, in a micro-batch or
in the whole generation batch, and the global RNG is never touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from textdiff.objectives.masked import subs_log_probs

ESTIMATORS = ("coupled", "d1")


@dataclass
class Estimate:
    """What an estimator returns for a batch of (prompt, completion) rows."""

    logps: Tensor
    """[B, C] per-token log-likelihood estimate of each completion token."""
    entropies: Tensor
    """[B, C] entropy (nats, detached) of the model's prediction at each completion position, in the view that
    scored it (v1 or v2 for coupled, the single view for d1)."""


@dataclass
class CoupledMasks:
    """The complementary mask pair of one batch (completion positions only)."""

    first: Tensor
    """[B, C] bool: masked in view v1 (u < t); view v2 masks exactly the complement."""
    t: Tensor
    """[B] the mask rate of v1 (v2 masks at rate 1 - t)."""


# ---------------------------------------------------------------------------------------------- seeds and masks


def row_mask_seed(row_tokens: list[int] | Tensor, *, rollout_id: int, iteration: int, base_seed: int = 0) -> int:
    """A 63-bit seed that is a function of the row's content (its unpadded prompt + completion tokens), the rollout
    (generation batch) id, the inner iteration and a base seed — nothing else. TRL shuffles and splits the
    generation batch before the loss; a content seed follows the row wherever it lands, so old, reference and
    current log-probs of a row use the same masks. Identical rows of one rollout share masks (they are the same
    sample)."""
    if isinstance(row_tokens, Tensor):
        row_tokens = row_tokens.tolist()
    digest = hashlib.sha256()
    digest.update(f"{base_seed}:{rollout_id}:{iteration}:".encode())
    digest.update(",".join(map(str, row_tokens)).encode())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def row_mask_seeds(
    input_ids: Tensor, attention_mask: Tensor | None, *, rollout_id: int, iteration: int, base_seed: int = 0
) -> list[int]:
    """`row_mask_seed` of every row of a [B, L] batch; positions with attention_mask 0 (padding) are left out."""
    seeds = []
    for b in range(input_ids.shape[0]):
        row = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
        seeds.append(row_mask_seed(row, rollout_id=rollout_id, iteration=iteration, base_seed=base_seed))
    return seeds


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def coupled_masks(
    seeds: list[int], completion_length: int, *, t_min: float = 0.2, t_max: float = 0.8
) -> CoupledMasks:
    """One complementary pair per row from that row's own generator: t ~ U(t_min, t_max), v1 = {u < t}."""
    if not 0.0 < t_min <= t_max < 1.0:
        raise ValueError(f"need 0 < t_min <= t_max < 1, got t_min={t_min}, t_max={t_max}")
    if completion_length < 1:
        raise ValueError(f"completion_length must be >= 1, got {completion_length}")
    firsts, ts = [], []
    for seed in seeds:
        g = _generator(seed)
        t = t_min + (t_max - t_min) * torch.rand((), generator=g, dtype=torch.float64)
        u = torch.rand(completion_length, generator=g, dtype=torch.float64)  # [C]
        firsts.append(u < t)
        ts.append(t)
    return CoupledMasks(first=torch.stack(firsts), t=torch.stack(ts).float())


def prompt_masks(seeds: list[int], prompt_attention: Tensor, p_mask_prompt: float) -> Tensor:
    """d1: [B, P] bool, each real prompt token masked with probability p (padding never), per-row generators."""
    if not 0.0 <= p_mask_prompt < 1.0:
        raise ValueError(f"p_mask_prompt must be in [0, 1), got {p_mask_prompt}")
    rows = []
    for b, seed in enumerate(seeds):
        u = torch.rand(prompt_attention.shape[1], generator=_generator(seed), dtype=torch.float64)
        rows.append((u < p_mask_prompt) & prompt_attention[b].bool().cpu())
    return torch.stack(rows).to(prompt_attention.device)


# ---------------------------------------------------------------------------------------------- combination


def combine_coupled(
    view_logps: Tensor, masks: CoupledMasks, *, all_masked_view: bool = True
) -> Tensor:
    """The coupled per-token estimate from per-view log-probs.

    view_logps: [B, V, C] log p(x_i | view) for views (v0, v1, v2) if `all_masked_view` else (v1, v2).
    Returns [B, C]: (lp0 + w) / 2 with w = lp1 / t on M1 and lp2 / (1 - t) on M2, or w / 2 without v0.
    """
    expected_views = 3 if all_masked_view else 2
    if view_logps.dim() != 3 or view_logps.shape[1] != expected_views:
        raise ValueError(f"view_logps must be [B, {expected_views}, C], got {tuple(view_logps.shape)}")
    lp1, lp2 = view_logps[:, -2], view_logps[:, -1]  # [B, C]
    t = masks.t.to(view_logps)[:, None]  # [B, 1]
    weighted = torch.where(masks.first.to(view_logps.device), lp1 / t, lp2 / (1.0 - t))  # [B, C]
    if all_masked_view:
        return (view_logps[:, 0] + weighted) / 2
    return weighted / 2


def single_mask_estimate(view_logps: Tensor, masked: Tensor, t: Tensor) -> Tensor:
    """The plain one-mask ELBO term per token: [i masked] logp(i) / t. view_logps, masked [B, C]; t [B]."""
    return torch.where(masked, view_logps / t.to(view_logps)[:, None], torch.zeros_like(view_logps))


# ---------------------------------------------------------------------------------------------- model calls


def _positions(attention_mask: Tensor | None) -> Tensor | None:
    # left-padded rows: real tokens get positions 0, 1, ... exactly as `textdiff.generate` assigns them
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def view_log_probs(
    model,
    views: Tensor,
    targets: Tensor,
    attention_mask: Tensor | None,
    completion_length: int,
    *,
    mask_token_id: int,
    logit_shift: bool = False,
) -> tuple[Tensor, Tensor]:
    """SUBS log-prob of each completion target under each view, and the entropy of that prediction.

    views: [B, V, L] noisy inputs (the completion is the last C positions); targets: [B, C] clean completion;
    attention_mask: [B, L] (0 on prompt padding) or None. Returns (logps [B, V, C], entropies [B, V, C]).
    With `logit_shift` (AR-adapted models) position i is predicted by the logits at i - 1. A [MASK] target is an
    error (its SUBS log-prob is -inf).
    """
    B, V, L = views.shape
    C = completion_length
    if logit_shift and C >= L:
        raise ValueError("logit_shift needs at least one prompt token before the completion")
    if bool((targets == mask_token_id).any()):
        raise ValueError(f"a completion token is the [MASK] id {mask_token_id}: it has no SUBS log-prob")
    flat = views.reshape(B * V, L)  # [B*V, L]
    mask = None if attention_mask is None else attention_mask.repeat_interleave(V, dim=0)  # [B*V, L]
    positions = _positions(mask)
    logits = model(input_ids=flat, attention_mask=mask, position_ids=positions).logits  # [B*V, L, V]
    logits = logits[:, L - C - 1 : L - 1] if logit_shift else logits[:, L - C :]  # [B*V, C, vocab]
    log_probs = subs_log_probs(logits, mask_token_id)  # [B*V, C, vocab]; [MASK] column -inf
    target = targets.repeat_interleave(V, dim=0)  # [B*V, C]
    token_logps = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B*V, C]
    with torch.no_grad():
        probs = log_probs.exp()  # [B*V, C, vocab]
        entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)  # [B*V, C]; 0 log 0 = 0
    return token_logps.reshape(B, V, C), entropy.reshape(B, V, C)


def coupled_views(
    input_ids: Tensor, completion_length: int, mask_token_id: int, masks: CoupledMasks, *, all_masked_view: bool = True
) -> Tensor:
    """[B, V, L] views: (v0,) v1, v2 — only completion positions are ever replaced by [MASK]."""
    C = completion_length
    completion = input_ids[:, -C:]  # [B, C]
    first = masks.first.to(input_ids.device)  # [B, C]
    variants = []
    if all_masked_view:
        variants.append(torch.ones_like(first))
    variants += [first, ~first]
    views = []
    for masked in variants:
        view = input_ids.clone()
        view[:, -C:] = torch.where(masked, torch.full_like(completion, mask_token_id), completion)
        views.append(view)
    return torch.stack(views, dim=1)  # [B, V, L]


def coupled_estimate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    completion_length: int,
    *,
    mask_token_id: int,
    seeds: list[int],
    t_min: float = 0.2,
    t_max: float = 0.8,
    all_masked_view: bool = True,
    logit_shift: bool = False,
) -> Estimate:
    """Coupled-GRPO per-token estimate of the last `completion_length` tokens of each row (2 or 3 views).

    input_ids [B, L] = left-padded prompt + completion; attention_mask [B, L] marks prompt padding with 0 (the
    completion is always fully attended: post-EOS canvas positions are context, as during generation).
    """
    _check(input_ids, attention_mask, completion_length, seeds)
    masks = coupled_masks(seeds, completion_length, t_min=t_min, t_max=t_max)
    views = coupled_views(input_ids, completion_length, mask_token_id, masks, all_masked_view=all_masked_view)
    logps, entropies = view_log_probs(
        model, views, input_ids[:, -completion_length:], attention_mask, completion_length,
        mask_token_id=mask_token_id, logit_shift=logit_shift,
    )  # [B, V, C] each
    estimate = combine_coupled(logps, masks, all_masked_view=all_masked_view)  # [B, C]
    scored_entropy = torch.where(masks.first.to(entropies.device), entropies[:, -2], entropies[:, -1])  # [B, C]
    return Estimate(logps=estimate, entropies=scored_entropy)


def d1_estimate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    completion_length: int,
    *,
    mask_token_id: int,
    seeds: list[int],
    p_mask_prompt: float = 0.15,
    logit_shift: bool = False,
) -> Estimate:
    """d1's one-step estimate: every completion token masked, real prompt tokens masked with prob p (1 view)."""
    _check(input_ids, attention_mask, completion_length, seeds)
    C = completion_length
    P = input_ids.shape[1] - C
    prompt_attention = (
        attention_mask[:, :P] if attention_mask is not None else torch.ones_like(input_ids[:, :P])
    )  # [B, P]
    view = input_ids.clone()
    view[:, :P] = torch.where(prompt_masks(seeds, prompt_attention, p_mask_prompt), mask_token_id, input_ids[:, :P])
    view[:, P:] = mask_token_id
    logps, entropies = view_log_probs(
        model, view[:, None], input_ids[:, P:], attention_mask, C, mask_token_id=mask_token_id,
        logit_shift=logit_shift,
    )  # [B, 1, C]
    return Estimate(logps=logps[:, 0], entropies=entropies[:, 0])


def _check(input_ids: Tensor, attention_mask: Tensor | None, completion_length: int, seeds: list[int]) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
    if not 1 <= completion_length <= input_ids.shape[1]:
        raise ValueError(f"completion_length {completion_length} is outside [1, {input_ids.shape[1]}]")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if len(seeds) != input_ids.shape[0]:
        raise ValueError(f"need one mask seed per row: {len(seeds)} seeds for {input_ids.shape[0]} rows")
