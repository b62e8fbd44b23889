"""UniPC (Zhao et al. 2023) on the flow path: diffusers' `UniPCMultistepScheduler(prediction_type="flow_prediction",
use_flow_sigmas=True, flow_shift=shift, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
final_sigmas_type="zero")`, the solver of Wan2.1 / Wan2.2 in diffusers.

Time is the half log-SNR lambda = log((1 - sigma) / sigma) (`flow.flow_lambda`), alpha = 1 - sigma. With m_j the x0
predictions, from s0 to t (h = lambda_t - lambda_s0, hh = -h, B(h) = e^hh - 1 for bh2, hh for bh1):
    x_t = (sigma_t / sigma_s0) x_s0 - alpha_t (e^hh - 1) m0 - alpha_t B(h) R
  predictor (UniP-p):  R = sum_k rho_k D_k,                   D_k = (m_k - m0) / r_k,  r_k = (lambda_k - lambda_s0) / h
  corrector (UniC-p):  R = sum_k rho_k D_k + rho_p (m_t - m0)  (m_t: the new model output at t, no extra call)
over the p - 1 older outputs m_k. The rho solve R rho = b with R_ik = r_k^(i-1) and b_i = i! phi_{i+1}(hh) / B(h)
(phi recursion of the paper); the two small cases are fixed as in diffusers: predictor order 2 uses rho = 1/2,
corrector order 1 uses rho = 1/2. Each `step()` first corrects the incoming sample with the new output (except at
the first step and at indices in `disable_corrector`), then predicts the next one; the order warms up from 1 and
drops to 1 on the final step (to sigma = 0, which returns x0). The default grid is diffusers' ("unipc_diffusers":
shift(linspace(1, 1/T, n + 1)[:-1]) with a leading 1 moved to 1 - 1e-6, then 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from textdiff.samplers.flow import FlowSampler, flow_lambda

__all__ = ["FlowUniPCSampler"]


class FlowUniPCSampler(FlowSampler):
    """UniPC-p with B(h) of the module docstring; one model call per step."""

    def __init__(self, *, solver_order: int = 2, solver_type: str = "bh2", disable_corrector: tuple[int, ...] = (),
                 schedule: str = "unipc_diffusers", **kwargs):
        """
        Args:
            solver_order: p of UniP-p (2 for guided sampling, 3 for unconditional, as diffusers recommends).
            solver_type: "bh2" (B(h) = e^-h - 1, diffusers' default) or "bh1" (B(h) = -h).
            disable_corrector: step indices whose incoming sample is not corrected (diffusers' option of that name).
            schedule / shift / ...: `FlowSampler`.
        """
        super().__init__(schedule=schedule, **kwargs)
        if solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {solver_order}")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        self.order, self.solver_type = solver_order, solver_type
        self.disable_corrector = tuple(disable_corrector)

    def _adjust_sigmas(self, sigmas: Tensor) -> Tensor:
        if abs(float(sigmas[0]) - 1.0) < 1e-6:  # log(alpha) = log 0 otherwise; diffusers moves it the same way
            sigmas = sigmas.clone()
            sigmas[0] -= 1e-6
        return sigmas

    def _reset(self):
        self._x0s: list[Tensor] = []  # x0 predictions, newest last, at most `order` kept
        self._last_sample: Tensor | None = None  # the (corrected) sample the last predictor started from
        self._last_order = 0

    def _step(self, model_output, sample):
        k = self.step_index
        _, x0 = self._velocity(model_output, sample, float(self.sigmas[k]))
        x = sample.to(x0.dtype)
        # 1. correct the incoming sample with the new output (UniC), reusing the last predictor's order
        if k > 0 and (k - 1) not in self.disable_corrector and self._last_sample is not None:
            x = self._update(self._last_sample, k - 1, k, self._x0s, self._last_order, x0_at_t=x0)
        # 2. predict the next sample (UniP); warm-up from order 1, order 1 on the last step
        self._x0s = (self._x0s + [x0])[-self.order:]
        order = min(self.order, self.num_steps - k, len(self._x0s))
        self._last_sample, self._last_order = x, order
        return self._update(x, k, k + 1, self._x0s, order), x0

    def _update(self, x: Tensor, s0: int, t: int, x0s: list[Tensor], order: int,
                x0_at_t: Tensor | None = None) -> Tensor:
        """UniP (x0_at_t None) or UniC from sigma index s0 to t, x0s[-1] the prediction at s0."""
        sigma_s0, sigma_t = float(self.sigmas[s0]), float(self.sigmas[t])
        lam_s0 = flow_lambda(sigma_s0)
        h = flow_lambda(sigma_t) - lam_s0
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1 if self.solver_type == "bh2" else hh
        alpha_t, m0 = 1.0 - sigma_t, x0s[-1]
        ratios = [(flow_lambda(float(self.sigmas[s0 - i])) - lam_s0) / h for i in range(1, order)]
        diffs = [(x0s[-(i + 1)] - m0) / r for i, r in enumerate(ratios, start=1)]
        rhos = self._rhos(ratios, hh, b_h, order, corrector=x0_at_t is not None)
        out = (sigma_t / sigma_s0) * x - (alpha_t * h_phi_1) * m0
        residual = sum((rho * d for rho, d in zip(rhos, diffs)), torch.zeros_like(m0))
        if x0_at_t is not None:
            residual = residual + rhos[-1] * (x0_at_t - m0)
        elif not diffs:
            return out
        return out - (alpha_t * b_h) * residual

    @staticmethod
    def _rhos(ratios: list[float], hh: float, b_h: float, order: int, corrector: bool) -> list[float]:
        """The UniPC weights: predictor p - 1 of them, corrector p (the last for the new output)."""
        if corrector and order == 1:
            return [0.5]
        if not corrector and order <= 2:
            return [0.5] * (order - 1)
        # b_i = i! phi_{i+1}(hh) / B(h), phi by its recursion; R_ik = r_k^(i-1) over ratios + [1]
        b, h_phi_k, factorial = [], math.expm1(hh) / hh - 1.0, 1
        for i in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        nodes = torch.tensor(ratios + [1.0], dtype=torch.float64)
        R = torch.stack([nodes**i for i in range(order)])  # [order, order]
        rhs = torch.tensor(b, dtype=torch.float64)
        if not corrector:
            R, rhs = R[:-1, :-1], rhs[:-1]
        return torch.linalg.solve(R, rhs).tolist()
