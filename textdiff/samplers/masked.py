"""Masked-diffusion step rules: the shared base and LLaDA's low-confidence / random remasking.

A rule sees the (already guided, shifted, EOS-filtered) logits of one forward pass and reveals some [MASK]
positions of the current block; `textdiff.samplers.generate` is the one loop that drives every rule.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from textdiff.samplers.base import Sampler, SamplerState, StepOutput


def num_transfer_tokens(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal at each of `steps` steps [B, steps]: LLaDA's linear schedule, base = n // steps and the
    first n % steps steps one more (32 over 5 -> 7, 7, 6, 6, 6)."""
    base = masked_count // steps  # [B]
    remainder = masked_count % steps  # [B]
    counts = base[:, None].expand(-1, steps).clone()  # [B, steps]
    counts += (torch.arange(steps, device=masked_count.device)[None] < remainder[:, None]).long()
    return counts


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max sampling from softmax(logits / temperature), in float64 as LLaDA does (low-precision Gumbel
    noise degrades generation, arXiv:2409.02908). temperature == 0 returns the logits: argmax is greedy."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def commit_top_k(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, L] bool selecting, per row b, the k[b] positions of highest confidence (-inf never selected)."""
    selected = torch.zeros_like(confidence, dtype=torch.bool)
    for row, n in enumerate(k.tolist()):  # one host sync for every row's count
        if n > 0:
            selected[row, torch.topk(confidence[row], k=n).indices] = True
    return selected.logical_and_(torch.isfinite(confidence))


@dataclass
class DecodeRegion:
    """Where a masked rule reveals tokens during one block, and how many at each step."""

    start: int
    """first position of the block, in the coordinates of the `sample` that `step` is given."""
    end: int
    """one past its last position."""
    num_transfer: torch.Tensor
    """[B, num_steps] tokens to reveal per row at step i (LLaDA's linear schedule of the block's [MASK] count);
    count-based rules read column i at `timesteps[i]`, dynamic ones decide the count themselves."""


class MaskedSampler(Sampler):
    """Base of the masked-diffusion step rules (the diffusers scheduler shape).

    `set_timesteps(n)` makes `timesteps` = n times from 1 down to 1/n (step i moves t -> t - 1/n);
    `set_region(block_start, block_end, sample)` picks the block to decode and its per-step reveal counts. `step`
    gets the logits [B, L, V] of `sample` (the [B, L] canvas, or a `SamplerState` whose latents ride along) and
    returns it with some [MASK] positions of the block revealed:

        sampler.set_timesteps(n)
        sampler.set_region(block_start, block_end, x)
        for t in sampler.timesteps:
            x = sampler.step(model(x).logits, t, x).prev_sample

    Count-based rules reveal `num_transfer[b]` tokens at each step; `dynamic` rules (Fast-dLLM threshold / factor)
    decide the count themselves and the loop keeps stepping (at the last t) until the block has no [MASK] left.
    Random draws (Gumbel noise, random scores) follow the shape of `sample`: `generate` steps on the canvas from
    the block start on, so a hand loop reproduces its sampled runs when it steps on that same window.
    Subclasses implement `_step` on plain tensors.
    """

    kind = "masked"
    dynamic: bool = False

    def __init__(self, mask_token_id: int, temperature: float = 0.0, generator: torch.Generator | None = None):
        self.mask_token_id = mask_token_id
        self.temperature = temperature
        self.generator = generator
        self.timesteps: torch.Tensor = torch.empty(0)
        self.region: DecodeRegion | None = None

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.timesteps = torch.linspace(1.0, 1.0 / num_steps, num_steps)
        self.region = None  # its reveal counts have one column per step of the old schedule

    def set_region(self, block_start: int, block_end: int, sample: torch.Tensor | SamplerState) -> None:
        """Decode positions [block_start, block_end) of `sample` over `timesteps`: the reveal counts split the
        block's current [MASK] count evenly over the steps (32 over 5 -> 7, 7, 6, 6, 6)."""
        if not len(self.timesteps):
            raise RuntimeError("call set_timesteps(n) before set_region()")
        tokens = sample.tokens if isinstance(sample, SamplerState) else sample
        if not 0 <= block_start < block_end <= tokens.shape[1]:
            raise ValueError(f"block [{block_start}, {block_end}) is not inside the {tokens.shape[1]} positions")
        masked_count = (tokens[:, block_start:block_end] == self.mask_token_id).sum(1)  # [B]
        self.region = DecodeRegion(block_start, block_end, num_transfer_tokens(masked_count, len(self.timesteps)))

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor | SamplerState,
             *, block_start: int | None = None, block_end: int | None = None,
             num_transfer: torch.Tensor | None = None) -> StepOutput:
        """Reveal some [MASK] positions of the block of `sample` given `model_output` [B, L, V].

        The block is the one of `set_region`, and the step's reveal counts its column at `timestep`; or, without
        `set_region`, pass `block_start` / `block_end` (and `num_transfer` [B] for count-based rules) per call.
        A `SamplerState` comes back as a state with its latents carried unchanged.
        """
        tokens = sample.tokens if isinstance(sample, SamplerState) else sample  # [B, L]
        if block_start is None and block_end is None:
            if self.region is None:
                raise RuntimeError("call set_region(block_start, block_end, sample) after set_timesteps(n) before "
                                   "step(), or pass block_start= and block_end=")
            block_start, block_end = self.region.start, self.region.end
            if num_transfer is None and not self.dynamic:
                num_transfer = self.region.num_transfer[:, self.timestep_index(timestep)]  # [B]
        elif block_start is None or block_end is None:
            raise ValueError("pass both block_start and block_end, or neither (the region of set_region)")
        prev_tokens, pred = self._step(model_output, timestep, tokens, slice(block_start, block_end), num_transfer)
        prev = SamplerState(prev_tokens, sample.latents) if isinstance(sample, SamplerState) else prev_tokens
        return StepOutput(prev_sample=prev, pred_original_sample=pred)

    def timestep_index(self, timestep: torch.Tensor | float) -> int:
        """Index of `timestep` in `timesteps`: which column of the reveal counts this step uses. Looked up from t
        (no hidden step counter), so a dynamic rule may repeat the last t until its block is full."""
        if not len(self.timesteps):
            raise RuntimeError("call set_timesteps(n) before step()")
        return int(torch.argmin((self.timesteps - float(timestep)).abs()))

    def forbid_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """MDLM's SUBS: the denoiser never predicts [MASK]. A copy of `logits` [B, L, V] with the [MASK] logit at
        -inf; rules apply it before any prediction or confidence (a committed [MASK] would stall a dynamic rule)."""
        logits = logits.clone()
        logits[..., self.mask_token_id] = -torch.inf
        return logits

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """x0 guess [B, L]: argmax, or a Gumbel-max sample at temperature > 0 (float64)."""
        return torch.argmax(add_gumbel_noise(logits, self.temperature, self.generator), dim=-1)

    @abstractmethod
    def _step(self, logits: torch.Tensor, t: torch.Tensor | float, sample: torch.Tensor, block: slice,
              num_transfer: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(canvas [B, L] with some [MASK] positions of `block` revealed, x0 guess [B, L]) from `logits` [B, L, V]
        of `sample` [B, L]; `num_transfer` [B] is the count per row (None for dynamic rules)."""


class RemaskingSampler(MaskedSampler):
    """LLaDA `generate()`: reveal the `num_transfer[b]` masked positions of the block that score highest and never
    remask them. `remasking="low_confidence"` scores a position by the probability of its predicted token
    (softmax of the un-noised logits); `"random"` by a uniform draw."""

    REMASKING = ("low_confidence", "random")

    def __init__(self, mask_token_id: int, remasking: str = "low_confidence", temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        if remasking not in self.REMASKING:
            raise ValueError(f"unknown remasking rule {remasking!r}; valid: {', '.join(self.REMASKING)}")
        super().__init__(mask_token_id, temperature, generator)
        self.remasking = remasking

    def _step(self, logits, t, sample, block, num_transfer):
        # Only the current block can be committed, so predict and score just its positions (LLaDA computes the
        # whole canvas and then sets everything outside the block to -inf: same result, more work).
        block_logits = self.forbid_mask(logits[:, block])  # [B, N, V]
        masked = sample[:, block] == self.mask_token_id  # [B, N]
        x0 = self.predict(block_logits)  # [B, N]
        if self.remasking == "low_confidence":
            x0_p = torch.gather(F.softmax(block_logits, dim=-1), -1, x0[..., None]).squeeze(-1)  # [B, N]
        else:
            x0_p = torch.rand(x0.shape, device=x0.device, generator=self.generator)
        confidence = torch.where(masked, x0_p, -torch.inf)  # [B, N]
        transfer = commit_top_k(confidence, num_transfer)  # [B, N]
        prev_sample, pred = sample.clone(), sample.clone()
        prev_sample[:, block] = torch.where(transfer, x0, sample[:, block])
        pred[:, block] = x0
        return prev_sample, pred
