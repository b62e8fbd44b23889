"""CDCD time warping (Dieleman et al. 2022, sec. 6.1): one monotone piecewise-linear fit of the training loss
against the noise level t in [0, 1], normalised to a CDF W: [0, 1] -> [0, 1]. Training draws t = W^-1(u) with
low-discrepancy u, and the sampler spaces its steps at t_i = W^-1(1 - i / N): noise levels where the loss changes
fastest get the most samples and steps. The fit lives in buffers, so it is saved and loaded with the model's
weights (`TextDiffModel.time_warp`, built when `config.time_warp_bins` is set) and training and sampling read
the one object.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TimeWarp"]


class TimeWarp(nn.Module):
    """Monotone piecewise-linear CDF of the loss over `bins` equal bins of t.

    `losses[k]` is a running mean (rate `momentum`) of the loss observed in bin k; the fit F is the cumulative
    maximum of those means at the bin centres (monotone by construction), linear in between and flat beyond the
    outer centres. W(t) = (1 - uniform_mix) (F(t) - F(0)) / (F(1) - F(0)) + uniform_mix t, so W(0) = 0, W(1) = 1
    and W is strictly increasing (invertible) for any uniform_mix > 0; before any loss is seen, or with
    learn=False, W is the identity.
    """

    def __init__(self, bins: int = 100, *, momentum: float = 0.01, uniform_mix: float = 0.05, learn: bool = True):
        super().__init__()
        if bins < 2:
            raise ValueError(f"time_warp_bins must be >= 2, got {bins}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"time warp momentum must be in (0, 1], got {momentum}")
        if not 0.0 < uniform_mix <= 1.0:
            raise ValueError(f"time warp uniform_mix must be in (0, 1], got {uniform_mix}")
        self.bins, self.momentum, self.uniform_mix, self.learn = bins, momentum, uniform_mix, learn
        self.register_buffer("losses", torch.zeros(bins))  # [bins] running mean loss per bin
        self.register_buffer("counts", torch.zeros(bins))  # [bins] observations per bin

    # -- the fit ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, t: Tensor, loss: Tensor) -> None:
        """Fold detached per-example losses [B] observed at noise levels t [B] into the fit (no-op if learn=False)."""
        if not self.learn:
            return
        t, loss = t.detach().float().flatten(), loss.detach().float().flatten().to(self.losses.device)
        k = (t.to(self.losses.device) * self.bins).long().clamp(0, self.bins - 1)  # [B]
        sums = torch.zeros_like(self.losses).index_add_(0, k, loss)
        n = torch.zeros_like(self.counts).index_add_(0, k, torch.ones_like(loss))
        seen = n > 0
        mean = sums[seen] / n[seen]
        first = self.counts[seen] == 0
        old = self.losses[seen]
        self.losses[seen] = torch.where(first, mean, (1 - self.momentum) * old + self.momentum * mean)
        self.counts += n

    def knots(self) -> tuple[Tensor, Tensor]:
        """(t knots [bins + 2], W at the knots [bins + 2]): 0, the bin centres, 1; W strictly increasing 0 -> 1."""
        centres = (torch.arange(self.bins, device=self.losses.device, dtype=torch.float32) + 0.5) / self.bins
        ts = torch.cat([centres.new_zeros(1), centres, centres.new_ones(1)])  # [bins + 2]
        if not self.learn or bool((self.counts == 0).all()):
            return ts, ts.clone()
        seen = self.counts > 0
        # bins never observed take the value of the nearest observed bin below (or the first observed one)
        filled = self.losses.clone()
        first = int(seen.nonzero()[0])
        filled[:first] = self.losses[first]
        for k in range(first + 1, self.bins):
            if not seen[k]:
                filled[k] = filled[k - 1]
        fit = torch.cummax(filled, 0).values  # monotone non-decreasing
        f = torch.cat([fit[:1], fit, fit[-1:]])  # flat beyond the outer centres
        span = f[-1] - f[0]
        normed = (f - f[0]) / span if float(span) > 0 else ts
        w = (1 - self.uniform_mix) * normed + self.uniform_mix * ts
        w[0], w[-1] = 0.0, 1.0
        return ts, w

    # -- W and its inverse ------------------------------------------------------------------------------------
    @staticmethod
    def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
        """Piecewise-linear interpolation of (xp, fp) at x (xp increasing), x clamped to [xp[0], xp[-1]]."""
        x = x.clamp(float(xp[0]), float(xp[-1]))
        i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, len(xp) - 1)
        x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)

    def forward(self, t: Tensor) -> Tensor:
        """W(t): noise level -> CDF value in [0, 1]."""
        ts, w = self.knots()
        return self._interp(t.float().to(ts.device), ts, w)

    def inverse(self, u: Tensor) -> Tensor:
        """W^-1(u): CDF value in [0, 1] -> noise level t in [0, 1]."""
        ts, w = self.knots()
        return self._interp(u.float().to(ts.device), w, ts)

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """t [batch_size] = W^-1(u), u low-discrepancy ((u0 + i / B) mod 1, one uniform u0 per batch)."""
        u0 = torch.rand((), generator=generator, device=device)
        u = (u0 + torch.arange(batch_size, device=device) / batch_size) % 1.0
        return self.inverse(u).to(device)

    def step_levels(self, num_steps: int) -> Tensor:
        """Noise levels of the sampler's evaluations [num_steps]: W^-1(1 - i / num_steps), i = 0 .. N-1 (from 1)."""
        if num_steps < 1:
            raise ValueError(f"steps must be >= 1, got {num_steps}")
        u = 1.0 - torch.arange(num_steps, dtype=torch.float32, device=self.losses.device) / num_steps
        return self.inverse(u)
