"""Step rules by name: what `generate(sampler="...")` and `textdiff sample --sampler` accept."""

from __future__ import annotations

from collections.abc import Callable

import torch

from textdiff.samplers.ancestral import AncestralSampler
from textdiff.samplers.dream import ConfidenceSampler
from textdiff.samplers.fastdllm import FactorSampler, ThresholdSampler
from textdiff.samplers.masked import MaskedSampler, RemaskingSampler

SAMPLERS: dict[str, Callable[..., MaskedSampler]] = {
    "low_confidence": lambda **kw: RemaskingSampler(remasking="low_confidence", **kw),
    "random": lambda **kw: RemaskingSampler(remasking="random", **kw),
    "maskgit_plus": lambda **kw: ConfidenceSampler(score="maskgit_plus", **kw),  # option alg_temp
    "topk_margin": lambda **kw: ConfidenceSampler(score="topk_margin", **kw),  # option alg_temp
    "entropy": lambda **kw: ConfidenceSampler(score="entropy", **kw),  # option alg_temp
    "threshold": ThresholdSampler,  # option threshold
    "factor": FactorSampler,  # option factor
    "ancestral": AncestralSampler,  # option schedule
}


def build_sampler(name: str, *, mask_token_id: int, temperature: float = 0.0,
                  generator: torch.Generator | None = None, **options) -> MaskedSampler:
    """Instantiate the rule `name`; rule-specific options (threshold, factor, alg_temp, ...) pass through."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    try:
        return SAMPLERS[name](mask_token_id=mask_token_id, temperature=temperature, generator=generator, **options)
    except TypeError as err:
        raise ValueError(f"bad options for sampler {name!r}: {err}") from None
