"""Sampling controls on the logits a masked rule sees: repetition penalty, top-k and top-p (nucleus) filtering.

`generate(top_k=, top_p=, repetition_penalty=)` applies them to every step's logits before the rule, in the
order of transformers' generation (penalty, then top-k, then top-p); the rule then samples (temperature > 0) or
takes the argmax from what is left, and its confidence is the softmax of the filtered logits (Dream's
`sample_tokens` does the same). For masked decoding the repetition penalty reads the whole canvas: every token
already on it (prompt and revealed positions, never [MASK] or padding) is penalised at every position still to
be decided, which is what breaks the `____...` / `' ' ' '` runs a small model otherwise fills a block with.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_sampling_controls", "filter_top_k", "filter_top_p", "process_logits", "repetition_penalty"]


def check_sampling_controls(top_k: int | None, top_p: float | None, repetition_penalty: float, *,
                            names: tuple[str, str, str] = ("top_k", "top_p", "repetition_penalty")) -> None:
    """ValueError naming the control that is out of range (as `names` spells them: the CLI passes its flags)."""
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{names[0]} must be an integer >= 1 (None = off), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{names[1]} must be in (0, 1] (None = off), got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"{names[2]} must be > 0 (1 = off), got {repetition_penalty}")


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Logits [..., V] with all but the k largest of each row at -inf (ties at the k-th value are kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, -torch.inf)


def filter_top_p(logits: Tensor, p: float, temperature: float = 1.0) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability under
    softmax(logits / temperature) reaches p (the most likely token always stays); the rest goes to -inf."""
    if p >= 1.0:
        return logits
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [..., V]
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # [..., V]: probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -torch.inf)


def repetition_penalty(logits: Tensor, canvas: Tensor, penalty: float, *, ignore: Tensor | None = None) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), per row b: for every token id present in canvas[b]
    (positions where `ignore` [B, L] is True excluded), a positive logit is divided by `penalty` and a negative
    one multiplied by it, at every position of logits [B, N, V]."""
    if penalty == 1.0:
        return logits
    keep = torch.ones_like(canvas, dtype=torch.bool) if ignore is None else ~ignore  # [B, L]
    rows = torch.arange(canvas.shape[0], device=canvas.device)[:, None].expand_as(canvas)  # [B, L]
    present = torch.zeros(canvas.shape[0], logits.shape[-1], dtype=torch.bool, device=logits.device)  # [B, V]
    present[rows[keep], canvas[keep]] = True
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present[:, None, :], penalised, logits)


def process_logits(logits: Tensor, canvas: Tensor, *, mask_token_id: int, top_k: int | None = None,
                   top_p: float | None = None, penalty: float = 1.0, temperature: float = 0.0,
                   padding: Tensor | None = None) -> Tensor:
    """The sampling controls in order on one step's logits [B, N, V]; `canvas` [B, L] is the whole token canvas
    ([MASK] and `padding` [B, L] positions never count as present). [MASK] itself is never kept (the rules' SUBS
    rule, applied first here so that top-k never keeps only it)."""
    logits = logits.clone()
    logits[..., mask_token_id] = -torch.inf
    if penalty != 1.0:
        ignore = canvas == mask_token_id
        if padding is not None:
            ignore |= padding
        logits = repetition_penalty(logits, canvas, penalty, ignore=ignore)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p, temperature)
    return logits
