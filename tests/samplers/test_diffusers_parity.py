"""The same names compute the same numbers as diffusers (issue 15, items 1, 3, 4): DDIM grids for every spacing and
n = 1..1000, DDIM loops where clip_sample / thresholding bind (with and without use_clipped_model_output), and the
flow DPM-Solver++(2M) / UniPC trajectories. Golden values come from diffusers itself
(tests/fixtures/make_diffusers_golden.py, diffusers version in the JSON); diffusers is not needed here."""

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from textdiff.samplers.ddim import DDIMSampler
from textdiff.samplers.guidance import dynamic_threshold
from textdiff.samplers.registry import build_continuous_sampler

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "diffusers_golden.json").read_text())
T = 1000


def _grid_hash(timesteps: torch.Tensor) -> str:
    return hashlib.sha256(np.asarray(timesteps.tolist(), dtype="<i8").tobytes()).hexdigest()[:12]


# -- 1. DDIM timestep grids ---------------------------------------------------------------------------------------
SPACINGS = {"leading": ("leading", 0), "leading_offset1": ("leading", 1), "trailing": ("trailing", 0),
            "linspace": ("linspace", 0)}


@pytest.mark.parametrize("name", sorted(SPACINGS))
def test_ddim_grids_equal_diffusers_for_every_step_count(name):
    spacing, offset = SPACINGS[name]
    sampler = DDIMSampler(timestep_spacing=spacing, steps_offset=offset)
    wrong = []
    for n, expected in enumerate(GOLDEN["ddim_grids"][name], start=1):
        sampler.set_timesteps(n)
        if _grid_hash(sampler.timesteps) != expected:
            wrong.append(n)
    assert not wrong, f"{name}: {len(wrong)} step counts differ from diffusers, first {wrong[:10]}"


@pytest.mark.parametrize("key", sorted(GOLDEN["ddim_grids"]["examples"]))
def test_ddim_grid_examples(key):
    """Full grids, readable on failure: linspace n = 27 has 499 (not 500) at index 13, trailing n = 48 has 936."""
    name, n = key.rsplit("_", 1)
    spacing, offset = SPACINGS[name]
    sampler = DDIMSampler(timestep_spacing=spacing, steps_offset=offset)
    sampler.set_timesteps(int(n))
    assert sampler.timesteps.tolist() == GOLDEN["ddim_grids"]["examples"][key]
    assert sampler.timesteps.dtype == torch.int64


# -- 3. DDIM loops where clipping / thresholding bind -------------------------------------------------------------
def _ddim_harness() -> torch.Tensor:
    n = 2 * 3 * 4 * 4
    return (torch.arange(n, dtype=torch.float32) / (n - 1) * 4.0 - 2.0).reshape(2, 3, 4, 4)


def _ddim_model(x, t):
    return x * (t / (t + 1)) * 0.5 + 0.25


def _ddim_loop(case: dict, **overrides) -> torch.Tensor:
    sampler = DDIMSampler(**{**case["config"], "use_clipped_model_output": case["use_clipped_model_output"],
                             **overrides})
    sampler.set_timesteps(case["steps"])
    x = _ddim_harness()
    for t in sampler.timesteps:
        x = sampler.step(_ddim_model(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", sorted(GOLDEN["ddim_loops"]))
def test_ddim_full_loop_equals_diffusers(name):
    case = GOLDEN["ddim_loops"][name]
    expected = torch.tensor(case["final"]).reshape(2, 3, 4, 4)
    torch.testing.assert_close(_ddim_loop(case), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in sorted(GOLDEN["ddim_loops"]) if not n.startswith("plain")])
def test_ddim_golden_loops_are_ones_where_the_edit_binds(name):
    """Clipping / thresholding changes the result of these loops (so the goldens pin the edit), and
    use_clipped_model_output changes it again (so they pin which eps the step uses)."""
    case = GOLDEN["ddim_loops"][name]
    assert case["steps_where_x0_exceeds_the_range"] > 0
    expected = torch.tensor(case["final"]).reshape(2, 3, 4, 4)
    unedited = _ddim_loop(case, clip_sample=False, thresholding=False)
    other_eps = _ddim_loop(case, use_clipped_model_output=not case["use_clipped_model_output"])
    assert (unedited - expected).abs().max() > 1e-2 and (other_eps - expected).abs().max() > 1e-2


def test_ddim_x0_hook_static_threshold_is_diffusers_clip_sample():
    """The generic hook follows use_clipped_model_output like diffusers' own options do."""
    for name in ("clip_eps", "clip_eps_clipped_output"):
        case = GOLDEN["ddim_loops"][name]
        expected = torch.tensor(case["final"]).reshape(2, 3, 4, 4)
        hooked = _ddim_loop(case, clip_sample=False, x0_hook=lambda x0: x0.clamp(-1, 1))
        torch.testing.assert_close(hooked, expected, atol=2e-5, rtol=1e-5)


# -- 4. flow DPM-Solver++(2M) and UniPC -----------------------------------------------------------------------------
FLOW = GOLDEN["flow_loops"]
MU, STD = torch.tensor(FLOW["MU"], dtype=torch.float64), torch.tensor(FLOW["STD"], dtype=torch.float64)
FLOW_CASES = sorted(k for k, v in FLOW.items() if isinstance(v, dict))


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact velocity for x0 ~ N(MU, diag(STD^2)), in float64, returned in x's dtype (as the generator's)."""
    x64 = x.double()
    var = (1 - sigma) ** 2 * STD**2 + sigma**2
    x0 = MU + (1 - sigma) * STD**2 / var * (x64 - (1 - sigma) * MU)
    return ((x64 - x0) / sigma).to(x.dtype)


def _flow_sampler(case: dict):
    config = dict(case["config"])
    options = {"shift": config.pop("flow_shift"), "integer_timesteps": True}
    if config.pop("thresholding", False):
        options["x0_hook"] = functools.partial(dynamic_threshold, percentile=config.pop("dynamic_thresholding_ratio"),
                                               max_value=config.pop("sample_max_value"))
    options.update(config)  # solver_type / solver_order
    return build_continuous_sampler("dpmpp_2m" if case["scheduler"].startswith("DPM") else "unipc", **options)


@pytest.mark.parametrize("name", FLOW_CASES)
def test_flow_multistep_trajectory_equals_diffusers(name):
    case = FLOW[name]
    sampler = _flow_sampler(case)
    sampler.set_timesteps(case["steps"])
    assert torch.equal(sampler.sigmas, torch.tensor(case["sigmas"], dtype=torch.float32))  # the grid, bit for bit
    assert sampler.timesteps.tolist() == case["timesteps"]  # what diffusers feeds the model (int64)
    x = torch.tensor(FLOW["noise"]).reshape(FLOW["shape"])
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(gaussian_velocity(x, float(sampler.sigmas[i])), t, x).prev_sample
        expected = torch.tensor(case["trajectory"][i]).reshape(FLOW["shape"])
        if name.startswith("unipc_bh1") and i == len(sampler.timesteps) - 1:
            # diffusers 0.42.1 returns NaN here: B(h) = -h = -inf at sigma' = 0 times an empty residual 0;
            # the order-1 step to sigma = 0 is x0, which is what textdiff returns
            assert expected.isnan().all() and torch.isfinite(x).all()
            continue
        torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5, msg=lambda m, i=i: f"{name} step {i}: {m}")


def test_flow_threshold_goldens_bind():
    for name in ("dpmpp_2m_threshold_shift3_n10", "unipc_threshold_shift3_n10"):
        assert FLOW[name]["steps_where_x0_exceeds_sample_max_value"] > 0
        unhooked = {**FLOW[name], "config": {k: v for k, v in FLOW[name]["config"].items()
                                             if k in ("flow_shift",)}}
        sampler = _flow_sampler(unhooked)
        sampler.set_timesteps(FLOW[name]["steps"])
        x = torch.tensor(FLOW["noise"]).reshape(FLOW["shape"])
        for i, t in enumerate(sampler.timesteps):
            x = sampler.step(gaussian_velocity(x, float(sampler.sigmas[i])), t, x).prev_sample
        expected = torch.tensor(FLOW[name]["trajectory"][-1]).reshape(FLOW["shape"])
        assert (x - expected).abs().max() > 1e-2


def test_sd3_reference_dpm_form_is_kept_under_its_own_name():
    """The k-diffusion / SD3-reference DPM-Solver++(2M) (lambda = -log sigma) differs from diffusers' on the same
    grid: the two names compute different numbers."""
    z = torch.tensor(FLOW["noise"]).reshape(FLOW["shape"]).double()
    outs = {}
    for name in ("dpmpp_2m", "dpmpp_2m_sd3"):
        sampler = build_continuous_sampler(name, shift=3.0, schedule="wan")
        sampler.set_timesteps(10)
        x = z
        for i, t in enumerate(sampler.timesteps):
            x = sampler.step(gaussian_velocity(x, float(sampler.sigmas[i])), t, x).prev_sample
        outs[name] = x
    assert (outs["dpmpp_2m"] - outs["dpmpp_2m_sd3"]).abs().max() > 1e-3
