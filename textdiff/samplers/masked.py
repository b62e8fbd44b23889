"""Masked-diffusion step rules: the shared base and LLaDA's low-confidence / random remasking.

A rule sees the (already guided, shifted, EOS-filtered) logits of one forward pass and reveals some [MASK]
positions of the current block; `textdiff.samplers.generate` is the one loop that drives every rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from textdiff.samplers.base import StepOutput


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
    for row in range(confidence.shape[0]):
        n = int(k[row])
        if n > 0:
            selected[row, torch.topk(confidence[row], k=n).indices] = True
    return selected & torch.isfinite(confidence)


class MaskedSampler(ABC):
    """Base of the masked-diffusion step rules (the diffusers scheduler shape).

    `set_timesteps(n)` makes `timesteps` = n times from 1 down to 1/n (step i moves t -> t - 1/n). `step` gets
    the logits [B, L, V] of the current canvas `sample` [B, L] and returns the canvas with some [MASK]
    positions of [block_start, block_end) revealed. Count-based rules reveal `num_transfer[b]` tokens (LLaDA's
    linear schedule, computed by the loop); `dynamic` rules (Fast-dLLM threshold / factor) decide the count
    themselves and the loop keeps stepping until the block has no [MASK] left.
    """

    dynamic: bool = False

    def __init__(self, mask_token_id: int, temperature: float = 0.0, generator: torch.Generator | None = None):
        self.mask_token_id = mask_token_id
        self.temperature = temperature
        self.generator = generator
        self.timesteps: torch.Tensor = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.timesteps = torch.linspace(1.0, 1.0 / num_steps, num_steps)

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
    def step(self, logits: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, *, block_start: int, block_end: int,
             num_transfer: torch.Tensor | None = None) -> StepOutput:
        """Reveal some [MASK] positions of [block_start, block_end) of `sample` [B, L] given `logits` [B, L, V]."""


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

    def step(self, logits, t, sample, *, block_start, block_end, num_transfer=None) -> StepOutput:
        # Only the current block can be committed, so predict and score just its positions (LLaDA computes the
        # whole canvas and then sets everything outside the block to -inf: same result, more work).
        block = slice(block_start, block_end)
        block_logits = self.forbid_mask(logits[:, block])  # [B, N, V]
        masked = sample[:, block] == self.mask_token_id  # [B, N]
        x0 = self.predict(block_logits)  # [B, N]
        if self.remasking == "low_confidence":
            x0_p = torch.gather(F.softmax(block_logits, dim=-1), -1, x0[..., None]).squeeze(-1)  # [B, N]
        else:
            x0_p = torch.rand(x0.shape, device=x0.device, generator=self.generator)
        confidence = torch.where(masked, x0_p, torch.full_like(x0_p, -torch.inf))
        transfer = commit_top_k(confidence, num_transfer)  # [B, N]
        prev_sample, pred = sample.clone(), sample.clone()
        prev_sample[:, block] = torch.where(transfer, x0, sample[:, block])
        pred[:, block] = x0
        return StepOutput(prev_sample=prev_sample, pred_original_sample=pred)
