"""Model-output parameterisations in one place: x0, epsilon, v and flow velocity.

Every Gaussian / flow forward process here is x_t = a * x0 + s * eps with a scalar (or broadcastable) signal
scale a and noise scale s:
  rectified flow (SD3, Wan):  a = 1 - sigma, s = sigma
  VP (DDPM / DDIM / Imagen):  a = sqrt(abar_t), s = sqrt(1 - abar_t)
A model predicts one of
  "sample"        x0
  "epsilon"       eps
  "v_prediction"  v = a eps - s x0            (Salimans & Ho; Imagen Video)
  "flow"          u = eps - x0                (rectified-flow velocity; d x / d sigma on the flow path)
and the samplers convert through `to_x0_eps` / `from_x0_eps`, never by re-deriving the algebra themselves.
"""

from __future__ import annotations

from torch import Tensor

PREDICTION_TYPES = ("sample", "epsilon", "v_prediction", "flow")

__all__ = ["PREDICTION_TYPES", "flow_alpha_sigma", "from_x0_eps", "to_x0_eps"]


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def flow_alpha_sigma(sigma: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
    """(a, s) of the rectified-flow path at noise level sigma."""
    return 1 - sigma, sigma


def to_x0_eps(model_output: Tensor, sample: Tensor, alpha, sigma, prediction_type: str) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by `model_output` at x_t = sample, for x_t = alpha x0 + sigma eps."""
    _check(prediction_type)
    if prediction_type == "sample":
        x0 = model_output
        return x0, (sample - alpha * x0) / sigma
    if prediction_type == "epsilon":
        eps = model_output
        return (sample - sigma * eps) / alpha, eps
    if prediction_type == "v_prediction":
        norm = alpha * alpha + sigma * sigma  # 1 on VP paths
        return (alpha * sample - sigma * model_output) / norm, (sigma * sample + alpha * model_output) / norm
    # flow: x_t = alpha x0 + sigma (u + x0)  =>  x0 = (x_t - sigma u) / (alpha + sigma)
    x0 = (sample - sigma * model_output) / (alpha + sigma)
    return x0, model_output + x0


def from_x0_eps(x0: Tensor, eps: Tensor, alpha, sigma, prediction_type: str) -> Tensor:
    """The model output of type `prediction_type` that corresponds to (x0, eps)."""
    _check(prediction_type)
    if prediction_type == "sample":
        return x0
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    return eps - x0

