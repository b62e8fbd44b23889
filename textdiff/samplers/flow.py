"""Flow-matching step rules (SD3 / Wan): Euler, Heun and two DPM-Solver++(2M) forms, for tensors of any shape
(UniPC, the other multistep rule, is `samplers/unipc.py`).

The path is x_sigma = (1 - sigma) x0 + sigma eps (sigma = 1 is pure noise) and the model predicts the velocity
v = eps - x0 = d x / d sigma (or x0 / eps, converted by `parameterization`). The ODE dx/dsigma = (x - x0_hat)/sigma
holds on this path, so k-diffusion style solvers run on sigma directly (what the SD3 reference does).

API (the diffusers one, shared with the masked samplers): `set_timesteps(n)` fills `sigmas` [n + 1] (ending in
0) and `timesteps` (the points where the model is evaluated, sigma * num_train_timesteps); the loop calls
`step(model_output, t, sample)` once per entry of `timesteps` and gets `StepOutput(prev_sample,
pred_original_sample)`. `x0_hook` (e.g. Imagen thresholding, snapping text embeddings to the vocabulary) edits
the x0 estimate and the velocity is re-derived from it, as diffusers does for `thresholding`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from textdiff.samplers.base import Sampler, StepOutput
from textdiff.samplers.parameterization import flow_alpha_sigma, from_x0_eps, to_x0_eps
from textdiff.schedules import flow_model_timesteps, flow_sigmas

__all__ = ["FlowDPMSolverSampler", "FlowEulerSampler", "FlowHeunSampler", "FlowSD3DPMSolverSampler", "FlowSampler",
           "flow_lambda"]


def flow_lambda(sigma: float) -> float:
    """Half log-SNR of the flow path, lambda = log((1 - sigma) / sigma): the time variable of diffusers' DPM-Solver++
    and UniPC with flow sigmas; -inf at sigma = 1 (no signal), +inf at sigma = 0 (their first-order limits)."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for half / bfloat16 / float32 outputs (diffusers up-casts inside the step), float64 stays."""
    return torch.promote_types(t.dtype, torch.float32)


class FlowSampler(Sampler):
    """Shared state: the sigma grid, the step counter, parameterisation and the x0 hook."""

    kind = "continuous"
    order: int = 1

    def __init__(
        self,
        *,
        shift: float = 1.0,
        schedule: str = "diffusers",
        num_train_timesteps: int = 1000,
        prediction_type: str = "flow",
        integer_timesteps: bool = False,
        x0_hook: Callable[[Tensor], Tensor] | None = None,
    ):
        """
        Args:
            shift: static timestep shift (SD3: 3.0, Wan T2V: 5.0 at 720p).
            schedule: grid mode of `textdiff.schedules.flow_sigmas` ("diffusers", "single_shift", "wan", ...).
            num_train_timesteps: timesteps = sigma * num_train_timesteps (what SD3-style models are fed).
            prediction_type: "flow" (velocity), "sample" (x0) or "epsilon".
            integer_timesteps: feed the model int64 timesteps (sigma * T truncated, as diffusers' UniPC / DPM-Solver
                and Wan do) instead of float sigma * T; the step itself always uses the exact sigmas.
            x0_hook: applied to every x0 estimate (thresholding, clamping to an embedding table, ...).
        """
        if prediction_type not in ("flow", "sample", "epsilon"):
            raise ValueError(f"flow samplers take prediction_type flow | sample | epsilon, got {prediction_type!r}")
        self.shift, self.schedule, self.num_train_timesteps = shift, schedule, num_train_timesteps
        self.prediction_type, self.x0_hook, self.integer_timesteps = prediction_type, x0_hook, integer_timesteps
        self.sigmas: Tensor | None = None
        self.timesteps: Tensor | None = None
        self.step_index = 0

    # -- schedule --------------------------------------------------------------------------------------------
    def set_timesteps(self, num_steps: int, *, mu: float | None = None, sigmas: Tensor | None = None) -> None:
        """Build the grid for `num_steps` solver steps (`sigmas` overrides it: decreasing, ending in 0)."""
        if sigmas is None:
            sigmas = flow_sigmas(num_steps, shift=self.shift, mu=mu, mode=self.schedule,
                                 num_train_timesteps=self.num_train_timesteps)
        else:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
            if sigmas.numel() != num_steps + 1 or sigmas[-1] != 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
                raise ValueError("custom sigmas must be num_steps + 1 strictly decreasing values ending in 0")
        self.sigmas = self._adjust_sigmas(sigmas)
        self.timesteps = flow_model_timesteps(self.eval_sigmas(), self.num_train_timesteps, self.integer_timesteps)
        self.step_index = 0
        self._reset()

    def _adjust_sigmas(self, sigmas: Tensor) -> Tensor:
        """A rule's last word on the grid (UniPC moves a leading sigma = 1 off 1, as diffusers does)."""
        return sigmas

    def eval_sigmas(self) -> Tensor:
        """Sigmas at which the model is evaluated, one per entry of `timesteps`."""
        return self.sigmas[:-1]

    def sigma_of(self, timestep: Tensor | float) -> float:
        return float(timestep) / self.num_train_timesteps

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def add_noise(self, x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
        """Forward process (diffusers `scale_noise`): sigma * noise + (1 - sigma) * x0; sigma [B] broadcasts."""
        sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
        sigma = sigma.reshape(-1, *([1] * (x0.dim() - 1))) if sigma.dim() == 1 else sigma
        return sigma * noise + (1.0 - sigma) * x0

    # -- step ------------------------------------------------------------------------------------------------
    def _velocity(self, model_output: Tensor, sample: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """(velocity, x0) in float32, after the parameterisation conversion and the x0 hook."""
        dtype = _compute_dtype(model_output)
        out, x = model_output.to(dtype), sample.to(dtype)
        if self.prediction_type == "flow":
            v, x0 = out, x - sigma * out
        else:
            alpha, s = flow_alpha_sigma(sigma)
            x0, eps = to_x0_eps(out, x, alpha, s, self.prediction_type)
            v = from_x0_eps(x0, eps, alpha, s, "flow")
        if self.x0_hook is not None:
            x0 = self.x0_hook(x0)
            v = (x - x0) / sigma
        return v, x0

    def _check_timestep(self, timestep) -> None:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(n) before step()")
        if self.step_index >= len(self.timesteps):
            raise RuntimeError(f"step() called {self.step_index + 1} times for {len(self.timesteps)} timesteps")
        expected = float(self.timesteps[self.step_index])
        if abs(float(timestep) - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ValueError(f"step() got timestep {float(timestep)} but the next one is {expected} "
                             f"(index {self.step_index}); iterate over sampler.timesteps in order")

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator: torch.Generator | None = None
             ) -> StepOutput:
        self._check_timestep(timestep)
        prev, x0 = self._step(model_output, sample)
        self.step_index += 1
        return StepOutput(prev_sample=prev.to(model_output.dtype), pred_original_sample=x0.to(model_output.dtype))

    def _reset(self) -> None:
        pass

    @abstractmethod
    def _step(self, model_output: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """One solver step: (prev_sample, x0 prediction) from the model output at the current sigma."""


class FlowEulerSampler(FlowSampler):
    """diffusers FlowMatchEulerDiscreteScheduler: x' = x + (sigma' - sigma) v (float32 inside the step).
    `stochastic=True` re-noises instead: x' = (1 - sigma') x0 + sigma' z, z ~ N(0, I)."""

    order = 1

    def __init__(self, *, stochastic: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stochastic = stochastic

    def _step(self, model_output, sample):
        i = self.step_index
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        v, x0 = self._velocity(model_output, sample, sigma)
        if self.stochastic:
            noise = torch.randn(x0.shape, generator=self._generator, device=x0.device, dtype=x0.dtype)
            return (1.0 - sigma_next) * x0 + sigma_next * noise, x0
        dt = self.sigmas[i + 1] - self.sigmas[i]  # float32 like diffusers
        return sample.to(v.dtype) + dt.to(v.dtype) * v, x0

    def step(self, model_output, timestep, sample, generator=None):
        self._generator = generator
        return super().step(model_output, timestep, sample, generator)


class FlowHeunSampler(FlowSampler):
    """Heun's 2nd-order method (EDM / k-diffusion `sample_heun`) on the flow ODE: per solver step an Euler
    predictor and a trapezoidal corrector, two model calls (the last step, to sigma = 0, is plain Euler).
    `timesteps` lists every evaluation point: [t0, t1, t1, t2, t2, ..., t_{n-1}] (2n - 1 entries); after a
    predictor call `prev_sample` is the Euler guess at the next sigma, which the loop feeds back."""

    order = 2

    def eval_sigmas(self) -> Tensor:
        inner = self.sigmas[1:-1].repeat_interleave(2)
        return torch.cat([self.sigmas[:1], inner])

    def _reset(self):
        self._pending = None  # (x_i, v_i, dt) between predictor and corrector
        self._solver_step = 0

    def _step(self, model_output, sample):
        i = self._solver_step
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        if self._pending is None:  # predictor at sigma_i
            v, x0 = self._velocity(model_output, sample, sigma)
            dt = self.sigmas[i + 1] - self.sigmas[i]
            x_euler = sample.to(v.dtype) + dt.to(v.dtype) * v
            if sigma_next == 0:
                self._solver_step += 1
                return x_euler, x0
            self._pending = (sample.to(v.dtype), v, dt.to(v.dtype))
            return x_euler, x0
        x_i, v_i, dt = self._pending  # corrector at sigma_{i+1}
        v_next, x0 = self._velocity(model_output, sample, sigma_next)
        self._pending = None
        self._solver_step += 1
        return x_i + dt * 0.5 * (v_i + v_next), x0


class FlowDPMSolverSampler(FlowSampler):
    """DPM-Solver++(2M) of diffusers: `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2,
    solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")`.

    Time is the half log-SNR of the flow path, lambda = log((1 - sigma) / sigma) (`flow_lambda`), so with
    alpha = 1 - sigma and h = lambda' - lambda:
        x' = (sigma'/sigma) x - alpha' (e^-h - 1) D
    D = x0 (order 1: exactly Euler / DDIM) or, from the second step on,
        midpoint: D = x0 + (x0 - x0_prev) / (2 r)                      r = (lambda - lambda_prev) / h
        heun:     x' = (sigma'/sigma) x - alpha' (e^-h - 1) x0 + alpha' ((e^-h - 1)/h + 1)(x0 - x0_prev) / r
    The first step and the step to sigma = 0 (which returns x0) are first order. The default grid ("wan":
    shift(linspace(1 - 1/T, 0, n + 1)[:-1]), then 0) equals diffusers' `use_flow_sigmas` grid of this scheduler
    in float32. `FlowSD3DPMSolverSampler` is the other DPM-Solver++(2M) form (Stability's SD3 reference)."""

    def __init__(self, *, solver_order: int = 2, solver_type: str = "midpoint", schedule: str = "wan", **kwargs):
        super().__init__(schedule=schedule, **kwargs)
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        self.order, self.solver_type = solver_order, solver_type

    def _reset(self):
        self._previous_x0 = None

    def _step(self, model_output, sample):
        i = self.step_index
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        _, x0 = self._velocity(model_output, sample, sigma)
        lam, lam_next = flow_lambda(sigma), flow_lambda(sigma_next)
        h = lam_next - lam
        alpha_next = 1.0 - sigma_next
        phi = math.exp(-h) - 1.0  # e^-h - 1 (diffusers' spelling, not expm1)
        prev = (sigma_next / sigma) * sample.to(x0.dtype) - (alpha_next * phi) * x0
        if self.order == 2 and self._previous_x0 is not None and sigma_next > 0:
            r = (lam - flow_lambda(float(self.sigmas[i - 1]))) / h
            d1 = (1.0 / r) * (x0 - self._previous_x0)
            if self.solver_type == "midpoint":
                prev = prev - (0.5 * alpha_next * phi) * d1
            else:
                prev = prev + (alpha_next * (phi / h + 1.0)) * d1
        self._previous_x0 = x0
        return prev, x0


class FlowSD3DPMSolverSampler(FlowSampler):
    """DPM-Solver++(2M) as Stability's SD3 reference runs it (`sd3_impls.sample_dpmpp_2m`, k-diffusion's
    `sample_dpmpp_2m` applied to the flow sigmas directly, time lambda = -log sigma as for a VE model):
    x' = (sigma'/sigma) x - expm1(-h) D with D = x0 (order 1 == Euler) or the multistep
    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i. The first step and the step to sigma = 0 are
    first order (the last returns x0). Same order of accuracy as `FlowDPMSolverSampler` (diffusers), different
    numbers; default grid: FlowMatchEuler's ("diffusers")."""

    order = 2

    def _reset(self):
        self._previous_x0 = None

    def _step(self, model_output, sample):
        i = self.step_index
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        _, x0 = self._velocity(model_output, sample, sigma)
        if sigma_next == 0:
            prev = x0
        else:
            h = math.log(sigma) - math.log(sigma_next)
            denoised = x0
            if self._previous_x0 is not None:
                h_last = math.log(float(self.sigmas[i - 1])) - math.log(sigma)
                r = h_last / h
                denoised = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._previous_x0
            prev = (sigma_next / sigma) * sample.to(x0.dtype) - math.expm1(-h) * denoised
        self._previous_x0 = x0
        return prev, x0
