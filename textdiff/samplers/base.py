"""The sampler contract shared by every step rule: the base class, the state a step moves, and what it returns.

A sampler is a step rule in the diffusers scheduler shape, never a loop:

    sampler.set_timesteps(n)
    for t in sampler.timesteps:
        sample = sampler.step(model_output, t, sample).prev_sample

`kind` says which loop drives it: "masked" rules (`textdiff.generate`, token canvases decoded block by block)
or "continuous" rules (`sample_continuous`, flow / DDIM on images, video and embedding sequences).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

__all__ = ["KINDS", "GenerateOutput", "LatentStep", "Sampler", "SamplerState", "StepOutput"]

KINDS = ("masked", "continuous")


@dataclass
class SamplerState:
    """What a masked loop moves from step to step: the token canvas and, for hybrid models (CADD: masked tokens that
    also carry a continuous latent), the latents riding on it. A masked rule updates `tokens` and carries `latents`
    unchanged; the model receives `latents=` at every call that sees them."""

    tokens: Tensor
    """[B, L] token ids, [MASK] where still undecided."""
    latents: Tensor | None = None
    """[B, L, D] continuous latents aligned with `tokens`, or None (a plain masked model)."""

    def narrow(self, start: int, end: int | None = None) -> SamplerState:
        """The state of positions [start, end) (views, not copies: a rule clones before it writes)."""
        window = slice(start, end)
        return SamplerState(self.tokens[:, window], None if self.latents is None else self.latents[:, window])

    def write(self, start: int, window: SamplerState) -> None:
        """Copy `window` (a state of narrowed length) back in place at `start`."""
        end = start + window.tokens.shape[1]
        self.tokens[:, start:end] = window.tokens
        if self.latents is not None:
            self.latents[:, start:end] = window.latents


@dataclass
class StepOutput:
    """What one sampler step returns (the diffusers convention)."""

    prev_sample: Tensor | SamplerState
    """the sample after this step, of the type `step` was given: [B, L] canvas, a SamplerState, or a continuous
    tensor [B, ...]."""
    pred_original_sample: Tensor | None = None
    """the model's current guess of the clean sample ([B, L] token ids for masked rules)."""


@dataclass
class GenerateOutput:
    sequences: Tensor
    """[B, P + gen_length] prompt followed by the generation."""
    nfe: int
    """number of model forward passes."""
    latents: Tensor | None = None
    """[B, P + gen_length, D] the latents carried with the canvas (None unless `generate` was given latents)."""


class Sampler(ABC):
    """Base of every step rule. Subclasses set `kind` and fill `timesteps` in `set_timesteps`; `step` takes the
    model's output at `timestep` for `sample` and returns StepOutput(prev_sample, pred_original_sample)."""

    kind: str = ""
    """"masked" | "continuous": which loop drives the rule (see KINDS)."""
    timesteps: Tensor | None = None

    @abstractmethod
    def set_timesteps(self, num_steps: int, **schedule_options) -> None:
        """Fill `timesteps` for `num_steps` model evaluations (more for multi-evaluation solvers such as Heun)."""

    @abstractmethod
    def step(self, model_output: Tensor, timestep: Tensor | float, sample, **options) -> StepOutput:
        """Move `sample` one step along `timesteps` given the model's output for it."""




class LatentStep(ABC):
    """The continuous half of a hybrid step (CADD), riding on any masked rule inside `generate(latent_step=...)`.

    Per step the loop calls `logits(logits, t)` before the rule (e.g. a temperature) and, once the rule has revealed
    tokens, `step(...)` for the window's new latents. t and s [B] are the fractions of the block still masked
    before and after the step (the noise level each row is at, for count-based and dynamic rules alike). With a
    latent step the model reads the latents only where the token is [MASK] (`latent_positions=`)."""

    def logits(self, logits: Tensor, t: Tensor) -> Tensor:
        """The logits [B, N, V] the rule (and `step`) see at level t [B]; default unchanged."""
        return logits

    @abstractmethod
    def step(self, logits: Tensor, before: SamplerState, after: SamplerState, t: Tensor, s: Tensor,
             block_length: int) -> Tensor:
        """New latents [B, N, ...] of the window (its first `block_length` positions are the block) after the rule
        moved `before` to `after` (whose latents are still the old ones)."""
