"""MDLM's ancestral (`ddpm`) update (kuleshov-group/mdlm `diffusion.py::_ddpm_caching_update`): every masked
position of the block is revealed independently, the revealed ones drawn from the model's x0 distribution.
"""

from __future__ import annotations

import torch

from textdiff.samplers.masked import MaskedSampler
from textdiff.schedules import get_masking_schedule


class AncestralSampler(MaskedSampler):
    """Exact reverse step t -> s = t - 1/num_steps of the absorbing process (s = 0 at the last step).

    A masked position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) ((t - s) / t for the
    linear schedule; 1 at the last step, so the block always finishes) and takes a token drawn from the SUBS
    x0 distribution softmax(logits) with [MASK] removed: MDLM samples at temperature 1; here temperature 0 is
    argmax and temperature > 0 samples softmax(logits / temperature) through float64 Gumbel noise. MDLM draws
    q_xs = p_x0 (alpha_s - alpha_t), q_xs[MASK] = 1 - alpha_s in one categorical; splitting it into "reveal?"
    then "which token?" is the same distribution. `num_transfer` is ignored: the count is random.
    """

    def __init__(self, mask_token_id: int, schedule: str = "linear", temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(mask_token_id, temperature, generator)
        self.schedule = get_masking_schedule(schedule)

    def reveal_probability(self, t: torch.Tensor) -> torch.Tensor:
        """(alpha_s - alpha_t) / (1 - alpha_t) for the step starting at t (a 0-d float64 tensor)."""
        step_size = 1.0 / len(self.timesteps)
        t = torch.as_tensor(t, dtype=torch.float64)
        s = t - step_size
        if s < 0.5 * step_size:  # the last step lands on s = 0 (exactly, whatever the float rounding of t)
            s = torch.zeros_like(t)
        alpha_t, alpha_s = self.schedule.alpha(t), self.schedule.alpha(s)
        return (alpha_s - alpha_t) / (1 - alpha_t)

    def _step(self, logits, t, sample, block, num_transfer):
        logits = self.forbid_mask(logits)  # [B, L, V]
        x0 = self.predict(logits)  # [B, L]
        masked = sample[:, block] == self.mask_token_id  # [B, N]
        draw = torch.rand(masked.shape, dtype=torch.float64, device=sample.device, generator=self.generator)
        reveal = masked & (draw < self.reveal_probability(t).to(sample.device))  # [B, N]
        prev_sample = sample.clone()
        prev_sample[:, block] = torch.where(reveal, x0[:, block], sample[:, block])
        return prev_sample, x0
