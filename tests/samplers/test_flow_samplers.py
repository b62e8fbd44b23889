"""Continuous samplers: diffusers full-loop golden values, the first-order identities, convergence order with an
exact oracle denoiser, shape-agnosticism (image / video / embedding tensors), DDIM, parameterisations."""

import math

import pytest
import torch

from textdiff.samplers.continuous import build_continuous_sampler, sample_continuous
from textdiff.samplers.ddim import DDIMSampler
from textdiff.samplers.flow import FlowDPMSolverSampler, FlowEulerSampler, FlowHeunSampler
from textdiff.samplers.guidance import static_threshold
from textdiff.samplers.parameterization import PREDICTION_TYPES, from_x0_eps, to_x0_eps
from textdiff.samplers.unipc import FlowUniPCSampler


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' SchedulerCommonTest fixture: arange(4*3*8*8) laid out as (3, 8, 8, 4) / 768 -> (4, 3, 8, 8)."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    return sample * t / (t + 1)


def _full_loop(sampler, steps=10):
    sampler.set_timesteps(steps)
    x = dummy_sample_deter()
    for t in sampler.timesteps:
        x = sampler.step(dummy_model(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("shift, total, mean", [(1.0, 133.362030, 0.173648), (3.0, 129.349457, 0.168424)])
def test_flow_euler_full_loop_equals_diffusers(shift, total, mean):
    """FlowMatchEulerDiscreteScheduler on diffusers' scheduler-test harness (golden values, reference 4)."""
    x = _full_loop(FlowEulerSampler(shift=shift))
    assert abs(x.abs().sum().item() - total) < 1e-3 and abs(x.abs().mean().item() - mean) < 1e-5


def test_ddim_full_loop_with_static_threshold_equals_diffusers():
    """DDIMScheduler(linear betas, clip_sample=True) full loop: sum 172.0067, mean 0.223967
    (diffusers tests/schedulers/test_scheduler_ddim.py::test_full_loop_no_noise). Clipping never binds on this
    harness; tests/samplers/test_diffusers_parity.py has the loops where it does."""
    x = _full_loop(DDIMSampler(clip_sample=True))
    assert abs(x.abs().sum().item() - 172.0067) < 1e-2 and abs(x.abs().mean().item() - 0.223967) < 1e-3


def test_first_order_multistep_equals_euler_and_ddim_form():
    """Order-1 DPM-Solver++ == order-1 UniPC without corrector == flow Euler == DDIM(eta=0) in the flow
    parameterisation (on the same grid: the multistep rules default to their own diffusers grids)."""
    euler = _full_loop(FlowEulerSampler(shift=3.0))
    dpm1 = _full_loop(FlowDPMSolverSampler(shift=3.0, solver_order=1, schedule="diffusers"))
    unipc1 = _full_loop(FlowUniPCSampler(shift=3.0, solver_order=1, schedule="diffusers",
                                         disable_corrector=range(10)))
    torch.testing.assert_close(dpm1, euler, atol=2e-6, rtol=0)
    torch.testing.assert_close(unipc1, euler, atol=2e-6, rtol=0)
    sampler = FlowEulerSampler(shift=3.0)
    sampler.set_timesteps(10)
    x = dummy_sample_deter()
    for i, t in enumerate(sampler.timesteps):
        v = dummy_model(x, t)
        sigma, sigma_next = sampler.sigmas[i], sampler.sigmas[i + 1]
        x0, eps = x - sigma * v, x - sigma * v + v
        ddim_form = (1 - sigma_next) * x0 + sigma_next * eps
        x = sampler.step(v, t, x).prev_sample
        torch.testing.assert_close(x, ddim_form, atol=1e-6, rtol=0)


def test_second_order_multistep_starts_with_an_euler_step():
    x, t = dummy_sample_deter(), None
    a, b = FlowEulerSampler(shift=3.0), FlowDPMSolverSampler(shift=3.0, schedule="diffusers")
    a.set_timesteps(10), b.set_timesteps(10)
    t = a.timesteps[0]
    torch.testing.assert_close(b.step(dummy_model(x, t), t, x).prev_sample, a.step(dummy_model(x, t), t, x).prev_sample,
                               atol=1e-6, rtol=0)


# -- exact oracle: Gaussian data N(mu, diag(s^2)) ------------------------------------------------------------------
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
STD = torch.tensor([0.3, 1.0, 2.0, 0.1], dtype=torch.float64)


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact v(x, sigma) = (x - E[x0 | x_sigma]) / sigma for x0 ~ N(MU, STD^2), broadcast over the last dim."""
    sigma = (t / 1000).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    var = (1 - sigma) ** 2 * STD**2 + sigma**2
    x0 = MU + (1 - sigma) * STD**2 / var * (x - (1 - sigma) * MU)
    return (x - x0) / sigma


def _errors(name: str, steps: list[int], z: torch.Tensor) -> list[float]:
    exact = MU + STD * z  # the probability-flow ODE maps noise z to MU + STD z
    errors = []
    for n in steps:
        out = sample_continuous(gaussian_velocity, build_continuous_sampler(name), z.clone(), num_steps=n,
                                sigmas=torch.linspace(1, 0, n + 1))
        errors.append((out.sample - exact).abs().max().item())
    return errors


@pytest.mark.parametrize("name, low, high", [("euler", -1.2, -0.8), ("heun", -2.6, -1.7), ("dpmpp_2m", -2.6, -1.7),
                                             ("dpmpp_2m_sd3", -2.6, -1.7), ("unipc", -2.6, -1.8)])
def test_convergence_order_with_exact_gaussian_oracle(name, low, high):
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = [16, 32, 64]
    errors = _errors(name, steps, z)
    slope = math.log(errors[-1] / errors[0]) / math.log(steps[-1] / steps[0])
    assert low < slope < high, (name, errors, slope)


def test_samplers_are_shape_agnostic_image_video_embeddings():
    """The same oracle integrated as [B, 4], video [B, 1, 2, 2, 4]-shaped and embedding [B, 2, 4] tensors gives
    the same numbers: the steps only broadcast sigma over the batch."""
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name in ("euler", "heun", "dpmpp_2m", "unipc"):
        flat = sample_continuous(gaussian_velocity, build_continuous_sampler(name), z, num_steps=8).sample
        for shape in ((6, 1, 1, 1, 4), (3, 2, 4), (6, 1, 1, 4)):
            out = sample_continuous(gaussian_velocity, build_continuous_sampler(name), z.reshape(shape), num_steps=8)
            torch.testing.assert_close(out.sample.reshape(6, 4), flat)


def test_heun_evaluates_twice_per_step_except_the_last():
    sampler = FlowHeunSampler()
    out = sample_continuous(gaussian_velocity, sampler, torch.zeros(2, 4, dtype=torch.float64), num_steps=5)
    assert len(sampler.timesteps) == 9 and out.nfe == 9
    assert sampler.timesteps[1] == sampler.timesteps[2]


def test_step_order_and_setup_errors():
    sampler = FlowEulerSampler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(torch.zeros(1), 1000.0, torch.zeros(1))
    sampler.set_timesteps(4)
    with pytest.raises(ValueError, match="next one"):
        sampler.step(torch.zeros(1), sampler.timesteps[1], torch.zeros(1))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampler.set_timesteps(2, sigmas=torch.tensor([1.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="unknown flow sampler"):
        build_continuous_sampler("lms")


def test_x0_hook_bounds_the_prediction_and_rederives_the_velocity():
    """With a static-threshold hook the step equals Euler on v' = (x - clip(x0)) / sigma (diffusers thresholding)."""
    sampler, plain = FlowEulerSampler(x0_hook=static_threshold), FlowEulerSampler()
    sampler.set_timesteps(4), plain.set_timesteps(4)
    x = torch.full((1, 3), 0.5)
    v = torch.full((1, 3), -4.0)  # x0 = x - sigma v = 4.5 at sigma = 1
    t = sampler.timesteps[0]
    out = sampler.step(v, t, x)
    assert out.pred_original_sample.max().item() == 1.0
    v_hooked = (x - 1.0) / sampler.sigmas[0]
    torch.testing.assert_close(out.prev_sample, plain.step(v_hooked, t, x).prev_sample)


def test_x0_and_eps_prediction_types_match_velocity():
    """A model that predicts x0 (or eps) drives the flow samplers to the same result as its velocity."""
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = torch.linspace(0.99, 0, 7)  # eps-prediction cannot give x0 at sigma = 1 (x carries no signal)
    ref = sample_continuous(gaussian_velocity, FlowEulerSampler(), z, num_steps=6, sigmas=sigmas).sample
    for kind in ("sample", "epsilon"):
        def model(x, t, kind=kind):
            sigma = (t / 1000).reshape(-1, 1).to(x.dtype)
            x0, eps = to_x0_eps(gaussian_velocity(x, t), x, 1 - sigma, sigma, "flow")
            return from_x0_eps(x0, eps, 1 - sigma, sigma, kind)

        out = sample_continuous(model, FlowEulerSampler(prediction_type=kind), z, num_steps=6, sigmas=sigmas).sample
        torch.testing.assert_close(out, ref)


def test_finite_set_oracle_with_snapping_hook_lands_on_the_set():
    """Continuous text: embedding sequences [B, L, D] from a finite set; E[x0 | x] is the softmax-weighted mean of
    the set, and a hook that snaps each position to the nearest vocabulary embedding (Diffusion-LM's clamping)
    makes every sample a sequence of vocabulary vectors."""
    vocab = torch.randn(6, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    data = vocab[torch.tensor([[0, 1, 2], [3, 4, 5], [1, 1, 0]])]  # 3 sequences [3, L=3, D=8]

    def velocity(x, t):
        sigma = (t / 1000).reshape(-1, 1, 1, 1).to(x.dtype)
        d2 = ((x[:, None] - (1 - sigma) * data[None]) ** 2).sum((-1, -2))  # [B, 3]
        w = torch.softmax(-d2 / (2 * sigma[:, :, 0, 0] ** 2), dim=1)
        x0 = torch.einsum("bn,nld->bld", w, data)
        return (x - x0) / sigma[:, 0]

    def snap(x0):
        return vocab[torch.cdist(x0, vocab.expand(x0.shape[0], -1, -1)).argmin(-1)]

    z = torch.randn(16, 3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = sample_continuous(velocity, FlowEulerSampler(x0_hook=snap), z, num_steps=20).sample
    dist_to_set = ((out[:, None] - data[None]) ** 2).sum((-1, -2)).min(1).values
    assert dist_to_set.max().item() < 1e-8


def test_ddim_eta_one_is_the_ddpm_posterior_and_spacings():
    sampler = DDIMSampler(eta=1.0)
    sampler.set_timesteps(10)
    abar = sampler.alphas_cumprod
    t, prev = 500, 400
    x = torch.zeros(20000, 1)
    noise_free = DDIMSampler(eta=0.0)
    noise_free.set_timesteps(10)
    out = sampler.step(torch.zeros_like(x), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    expected_var = (1 - abar[prev]) / (1 - abar[t]) * (1 - abar[t] / abar[prev])
    assert out.var().item() == pytest.approx(expected_var.item(), rel=0.05)
    assert torch.equal(noise_free.step(torch.zeros_like(x), t, x).prev_sample, torch.zeros_like(x))
    trailing = DDIMSampler(timestep_spacing="trailing")
    trailing.set_timesteps(10)
    assert trailing.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMSampler(prediction_type="flow")


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_parameterisation_round_trip(kind):
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    for alpha, sigma in ((0.6, 0.8), (0.3, 0.7)):  # a VP point and a flow point
        x = alpha * x0 + sigma * eps
        out = from_x0_eps(x0, eps, alpha, sigma, kind)
        if kind == "v_prediction" and alpha**2 + sigma**2 != 1:
            continue  # v is defined for the VP path
        got_x0, got_eps = to_x0_eps(out, x, alpha, sigma, kind)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)
    with pytest.raises(ValueError, match="prediction_type"):
        to_x0_eps(x0, x0, 0.5, 0.5, "score")
