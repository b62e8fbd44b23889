"""Every step rule by name, in one table that records which loop drives it (its kind).

`textdiff.generate(sampler=...)` and `textdiff sample --sampler` take the "masked" names; `sample_continuous`,
`textdiff sample --solver` and the DiT pipeline take the "continuous" ones. A family adds its own rule with
`register_sampler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from textdiff.samplers.ancestral import AncestralSampler
from textdiff.samplers.base import KINDS, Sampler
from textdiff.samplers.ddim import DDIMSampler
from textdiff.samplers.dream import ConfidenceSampler
from textdiff.samplers.fastdllm import FactorSampler, ThresholdSampler
from textdiff.samplers.flow import (
    FlowDPMSolverSampler,
    FlowEulerSampler,
    FlowHeunSampler,
    FlowSD3DPMSolverSampler,
)
from textdiff.samplers.masked import MaskedSampler, RemaskingSampler
from textdiff.samplers.unipc import FlowUniPCSampler

__all__ = ["CONTINUOUS_SAMPLERS", "REGISTRY", "SAMPLERS", "SamplerEntry", "build_continuous_sampler",
           "build_sampler", "register_sampler", "sampler_entry"]


@dataclass(frozen=True)
class SamplerEntry:
    kind: str
    """"masked" | "continuous": the loop that drives the rule."""
    build: Callable[..., Sampler]
    """the rule's constructor; options pass through as keyword arguments."""


REGISTRY: dict[str, SamplerEntry] = {}


def register_sampler(name: str, kind: str, build: Callable[..., Sampler]) -> None:
    """Add a rule under `name` (unique across kinds, so one flag can name any rule)."""
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; valid: {', '.join(KINDS)}")
    if name in REGISTRY:
        raise ValueError(f"sampler {name!r} is already registered (kind {REGISTRY[name].kind})")
    REGISTRY[name] = SamplerEntry(kind, build)


register_sampler("low_confidence", "masked", lambda **kw: RemaskingSampler(remasking="low_confidence", **kw))
register_sampler("random", "masked", lambda **kw: RemaskingSampler(remasking="random", **kw))
register_sampler("maskgit_plus", "masked", lambda **kw: ConfidenceSampler(score="maskgit_plus", **kw))  # alg_temp
register_sampler("topk_margin", "masked", lambda **kw: ConfidenceSampler(score="topk_margin", **kw))  # alg_temp
register_sampler("entropy", "masked", lambda **kw: ConfidenceSampler(score="entropy", **kw))  # alg_temp
register_sampler("threshold", "masked", ThresholdSampler)  # option threshold
register_sampler("factor", "masked", FactorSampler)  # option factor
register_sampler("ancestral", "masked", AncestralSampler)  # option schedule
register_sampler("euler", "continuous", FlowEulerSampler)
register_sampler("euler_stochastic", "continuous", lambda **kw: FlowEulerSampler(stochastic=True, **kw))
register_sampler("heun", "continuous", FlowHeunSampler)
register_sampler("dpmpp_2m", "continuous", FlowDPMSolverSampler)  # diffusers' DPMSolverMultistepScheduler
register_sampler("dpmpp_1", "continuous", lambda **kw: FlowDPMSolverSampler(solver_order=1, **kw))
register_sampler("ddim", "continuous", DDIMSampler)
register_sampler("dpmpp_2m_sd3", "continuous", FlowSD3DPMSolverSampler)  # Stability's SD3 reference form
register_sampler("unipc", "continuous", FlowUniPCSampler)  # diffusers' UniPCMultistepScheduler (Wan)

# how an unknown name is reported for each kind (errors users already match on)
_KIND_NOUN = {"masked": "sampler", "continuous": "flow sampler"}


class _KindView(Mapping):
    """The live name -> constructor view of one kind of REGISTRY (rules registered later show up too)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __getitem__(self, name: str) -> Callable[..., Sampler]:
        entry = REGISTRY[name]
        if entry.kind != self.kind:
            raise KeyError(name)
        return entry.build

    def __iter__(self) -> Iterator[str]:
        return (name for name, entry in REGISTRY.items() if entry.kind == self.kind)

    def __len__(self) -> int:
        return sum(entry.kind == self.kind for entry in REGISTRY.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}: {', '.join(self)})"


SAMPLERS: Mapping[str, Callable[..., MaskedSampler]] = _KindView("masked")
"""masked rules: what `generate(sampler=...)` and `textdiff sample --sampler` accept."""
CONTINUOUS_SAMPLERS: Mapping[str, Callable[..., Sampler]] = _KindView("continuous")
"""flow / DDIM rules: what `build_continuous_sampler` and `textdiff sample --solver` accept."""


def sampler_entry(name: str, kind: str | None = None) -> SamplerEntry:
    """The entry of `name`; with `kind`, a rule of another kind is an error naming the valid ones."""
    entry = REGISTRY.get(name)
    if entry is not None and kind in (None, entry.kind):
        return entry
    valid = [n for n, e in REGISTRY.items() if kind in (None, e.kind)]
    noun = _KIND_NOUN.get(kind, "sampler")
    hint = f" ({name!r} is a {entry.kind} sampler)" if entry is not None else ""
    raise ValueError(f"unknown {noun} {name!r}{hint}; valid: {', '.join(valid)}")


def _build(name: str, kind: str, options: dict) -> Sampler:
    entry = sampler_entry(name, kind)
    try:
        return entry.build(**options)
    except TypeError as err:
        raise ValueError(f"bad options for sampler {name!r}: {err}") from None


def build_sampler(name: str, *, mask_token_id: int, temperature: float = 0.0,
                  generator: torch.Generator | None = None, **options) -> MaskedSampler:
    """Instantiate the masked rule `name`; rule-specific options (threshold, factor, alg_temp, ...) pass through."""
    return _build(name, "masked", dict(mask_token_id=mask_token_id, temperature=temperature, generator=generator,
                                      **options))


def build_continuous_sampler(name: str, **options) -> Sampler:
    """A flow rule (euler, euler_stochastic, heun, dpmpp_2m, dpmpp_1, dpmpp_2m_sd3, unipc) or "ddim"; options go to
    its constructor."""
    return _build(name, "continuous", options)
