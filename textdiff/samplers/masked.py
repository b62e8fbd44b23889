"""LLaDA's unmasking step rules: low-confidence and random remasking (semi-autoregressive blocks in the loop)."""

from __future__ import annotations

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


class RemaskingSampler:
    """Reveal, at each step, the `k` masked positions of the current block that score highest.

    `remasking="low_confidence"` scores a position by the probability of its predicted token; `"random"` by a
    uniform draw. Revealed tokens are never remasked (LLaDA's `generate()`).
    """

    REMASKING = ("low_confidence", "random")

    def __init__(self, mask_token_id: int, remasking: str = "low_confidence", temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        if remasking not in self.REMASKING:
            raise ValueError(f"unknown remasking rule {remasking!r}; valid: {', '.join(self.REMASKING)}")
        self.mask_token_id = mask_token_id
        self.remasking = remasking
        self.temperature = temperature
        self.generator = generator
        self.timesteps: torch.Tensor = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> None:
        """Times from 1 (all masked) down to 1/num_steps; step i moves t -> t - 1/num_steps."""
        self.timesteps = torch.linspace(1.0, 1.0 / num_steps, num_steps)

    def step(self, logits: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, *, block_end: int,
             num_transfer: torch.Tensor) -> StepOutput:
        """logits [B, L, V], sample [B, L]; reveal num_transfer[b] tokens of row b among masked positions < block_end."""
        mask_index = sample == self.mask_token_id  # [B, L]
        x0 = torch.argmax(add_gumbel_noise(logits, self.temperature, self.generator), dim=-1)  # [B, L]
        if self.remasking == "low_confidence":
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # [B, L]
        else:
            x0_p = torch.rand(x0.shape, device=x0.device, generator=self.generator)
        x0_p[:, block_end:] = -torch.inf
        x0 = torch.where(mask_index, x0, sample)
        confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -torch.inf))
        transfer = torch.zeros_like(mask_index)
        for j in range(sample.shape[0]):
            k = int(num_transfer[j])
            if k > 0:
                transfer[j, torch.topk(confidence[j], k=k).indices] = True
        return StepOutput(prev_sample=torch.where(transfer, x0, sample), pred_original_sample=x0)
