"""Log-likelihoods of a checkpoint: LLaDA's Monte Carlo ELBO for masked models, the exact value for AR ones.

LLaDA's estimator (Nie et al. 2025, Appendix B.5; `get_log_likelihood.py`) of log p(target | prefix), the target
having L tokens: draw a mask count l uniform in {1..L}, mask l target positions chosen uniformly, and score

    (L / l) * sum_{i masked} log p_theta(target_i | prefix, masked target)

Its expectation over (l, positions) is the discrete-count form of the masked-diffusion ELBO (a lower bound on
log p, equal to the continuous-time ELBO of the linear schedule). Within a batch of b draws the counts are
stratified, l_j = ((k - 1 + round(j L / b)) mod L) + 1 for one k ~ U{1..L}, so each l_j is marginally uniform (the
mean stays unbiased) and the batch covers the counts evenly; batches are independent, so at a fixed batch size
the variance of the mean over `mc_num` draws falls exactly as 1 / mc_num.

Adapted AR models (Dream / DiffuLLaMA, `config.logit_shift`) score position i with the logits at i - 1, through
the masked objective's own `_logits`; the target then needs a prefix token to start from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from textdiff.objectives.ar import AutoregressiveObjective
from textdiff.objectives.masked import MaskedDiffusionObjective, subs_log_probs
from textdiff.schedules import uniform_noise

__all__ = [
    "elbo_log_likelihood", "elbo_perplexity", "load_scorer", "log_likelihood", "stratified_mask_counts",
]


def stratified_mask_counts(batch_size: int, target_length: int, *, generator: torch.Generator | None = None,
                           device=None) -> Tensor:
    """[batch_size] mask counts in {1..target_length}: one uniform offset k, strata round(j L / b) apart."""
    k = int(torch.randint(1, target_length + 1, (1,), generator=generator))
    offsets = torch.round(torch.arange(batch_size, dtype=torch.float64) * target_length / batch_size).long()  # [b]
    return ((k - 1 + offsets) % target_length + 1).to(device)


def _masks_of_counts(counts: Tensor, target_length: int, generator: torch.Generator | None) -> Tensor:
    """[b, L] bool, row j masking exactly counts[j] positions chosen uniformly (ranks of iid uniforms)."""
    scores = uniform_noise((counts.shape[0], target_length), generator=generator, device=counts.device)  # [b, L]
    ranks = scores.argsort(dim=1).argsort(dim=1)  # [b, L]: a uniform random permutation per row
    return ranks < counts[:, None]


def _check_masked_model(model, mask_token_id: int | None) -> int:
    config = model.config
    mask_id = getattr(config, "mask_token_id", None) if mask_token_id is None else mask_token_id
    if getattr(config, "attention_mode", None) == "causal":
        raise ValueError("the ELBO is for masked-diffusion models; this is an autoregressive (causal) model, "
                         "whose exact likelihood log_likelihood() computes")
    if getattr(config, "attention_mode", None) == "block_causal":
        raise ValueError("LLaDA's ELBO scores a bidirectional masked model; this is a block-causal (bd3) model, whose "
                         "bound is BD3Objective.nll (the validation figure of textdiff train)")
    if mask_id is None:
        raise ValueError("the ELBO needs a masked-diffusion model with a mask token; this model's config has "
                         "mask_token_id None")
    return int(mask_id)


@torch.no_grad()
def elbo_log_likelihood(
    model,
    prefix: Sequence[int] | Tensor,
    target: Sequence[int] | Tensor,
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    mask_token_id: int | None = None,
    logit_shift: bool | None = None,
    generator: torch.Generator | None = None,
    return_draws: bool = False,
) -> float | Tensor:
    """LLaDA's Monte Carlo ELBO of log p(target | prefix) in nats (a lower bound; its mean over draws is exact).

    `mc_num` draws in `min(batch_size, mc_num)`-row batches (mc_num must be a multiple of it), stratified within
    each batch. `return_draws`: the [mc_num] per-draw estimates instead of their mean.
    """
    mask_id = _check_masked_model(model, mask_token_id)
    shift = bool(getattr(model.config, "logit_shift", False)) if logit_shift is None else logit_shift
    if mc_num < 1:
        raise ValueError(f"mc_num must be >= 1, got {mc_num}")
    batch_size = min(batch_size, mc_num)
    if batch_size < 1 or mc_num % batch_size:
        raise ValueError(f"mc_num {mc_num} must be a multiple of batch_size {batch_size}")
    device = next(model.parameters()).device
    prefix = torch.as_tensor(prefix, dtype=torch.long, device=device).reshape(-1)  # [P]
    target = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)  # [L]
    if target.numel() == 0:
        raise ValueError("the target to score is empty")
    if shift and prefix.numel() == 0:
        raise ValueError("a logit-shifted model scores token i from position i - 1: give at least one prefix token")
    if bool((target == mask_id).any()):
        raise ValueError(f"the target contains the [MASK] id {mask_id}")
    scorer = MaskedDiffusionObjective(mask_token_id=mask_id, logit_shift=shift)
    prefix_length, target_length = prefix.numel(), target.numel()
    sequence = torch.cat([prefix, target])  # [P + L]

    draws = []
    for _ in range(mc_num // batch_size):
        # 1. stratified counts, then uniformly placed masks over the target positions
        counts = stratified_mask_counts(batch_size, target_length, generator=generator, device=device)  # [b]
        masked = _masks_of_counts(counts, target_length, generator)  # [b, L]
        noisy = sequence.repeat(batch_size, 1)  # [b, P + L]
        noisy[:, prefix_length:] = torch.where(masked, torch.full_like(masked, mask_id, dtype=torch.long), target)
        # 2. SUBS log-probs of the clean target tokens at their (shifted) positions
        logits = scorer._logits(model, noisy, None)[:, prefix_length:]  # [b, L, V]
        token_logp = subs_log_probs(logits, mask_id).gather(-1, target.expand(batch_size, -1)[..., None])[..., 0]
        # 3. (L / l) * sum over the masked positions
        draws.append((token_logp * masked).sum(dim=1) * target_length / counts.to(token_logp))  # [b]
    draws = torch.cat(draws)  # [mc_num]
    return draws if return_draws else float(draws.mean())


@torch.no_grad()
def _exact_log_likelihood(model, prefix: Tensor, target: Tensor) -> float:
    if prefix.numel() == 0:
        raise ValueError("an autoregressive model scores token i from position i - 1: give at least one prefix "
                         "token (e.g. bos)")
    sequence = torch.cat([prefix, target])[None]  # [1, P + L]
    prompt_mask = torch.zeros_like(sequence, dtype=torch.bool)
    prompt_mask[:, :prefix.numel()] = True
    nll, _ = AutoregressiveObjective().nll(model, {"input_ids": sequence, "prompt_mask": prompt_mask})
    return -float(nll)


def log_likelihood(model, prefix: Sequence[int] | Tensor, target: Sequence[int] | Tensor, **elbo_options) -> float:
    """log p(target | prefix) in nats: exact for a causal (AR) model, the MC ELBO (`elbo_options`) otherwise."""
    if getattr(model.config, "attention_mode", None) == "causal":
        device = next(model.parameters()).device
        return _exact_log_likelihood(model, torch.as_tensor(prefix, dtype=torch.long, device=device).reshape(-1),
                                     torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1))
    return elbo_log_likelihood(model, prefix, target, **elbo_options)


def load_scorer(checkpoint):
    """(model, tokenizer) in eval mode from a textdiff checkpoint directory, or a (model, tokenizer) pair."""
    if isinstance(checkpoint, tuple):
        if len(checkpoint) != 2:
            raise ValueError(f"a scorer pair must be (model, tokenizer), got a tuple of {len(checkpoint)}")
        model, tokenizer = checkpoint
    elif isinstance(checkpoint, (str, Path)):
        from textdiff.modeling.checkpoint_io import load_model, load_tokenizer

        model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    else:
        raise TypeError(
            f"checkpoint must be a checkpoint directory or (model, tokenizer), got {type(checkpoint).__name__}"
        )
    return model.eval(), tokenizer


def elbo_perplexity(texts: Sequence[str], checkpoint, *, mc_num: int = 128, batch_size: int = 32,
                    seed: int = 0, max_length: int | None = None) -> dict:
    """Perplexity bound of `texts` under a masked checkpoint: exp(-sum ELBO / scored tokens) >= the true PPL.

    Each text is tokenized without special tokens; bos (when the tokenizer has one) is prepended as context and
    every text token is scored; without bos a logit-shifted model uses the first token as context. AR checkpoints
    get their exact perplexity (and "bound": False). `max_length` truncates the ids (context included).
    Returns {"perplexity", "mean_nll", "num_tokens", "nlls" (per-text mean NLL), "token_counts", "bound",
    "mc_num"}.
    """
    if isinstance(texts, str) or not texts:
        raise ValueError("elbo_perplexity needs a non-empty list of texts")
    model, tokenizer = load_scorer(checkpoint)
    causal = getattr(model.config, "attention_mode", None) == "causal"
    if not causal:
        _check_masked_model(model, None)
    needs_context = causal or bool(getattr(model.config, "logit_shift", False))
    options = {} if causal else {"mc_num": mc_num, "batch_size": batch_size,
                                  "generator": torch.Generator().manual_seed(seed)}
    bos = tokenizer.bos_token_id
    nlls, counts = [], []
    for i, text in enumerate(texts):
        ids = ([bos] if bos is not None else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids[:max_length] if max_length is not None else ids
        context = 1 if (bos is not None or needs_context) else 0
        if len(ids) <= context:
            raise ValueError(f"text {i} has no token to score ({len(ids)} token(s) with bos={bos})")
        logp = log_likelihood(model, ids[:context], ids[context:], **options)
        nlls.append(-logp)
        counts.append(len(ids) - context)
    total = sum(counts)
    mean_nll = sum(nlls) / total
    return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "num_tokens": total,
            "nlls": [s / c for s, c in zip(nlls, counts)], "token_counts": counts, "bound": not causal,
            "mc_num": 0 if causal else mc_num}
